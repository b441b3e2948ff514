//! BMP the way Pillow's `BmpImagePlugin` reads it, for the variants where image-rs's
//! pixels differ from PIL's; every other BMP still goes through image-rs.
//!
//! Why a decoder of our own: image-rs is a faithful BMP reader, but PIL, the reference,
//! reads some files differently, and those differences are PIL's contract, not bugs to
//! argue with:
//! - 16-bit pixels (`BGR;15` for uncompressed and 5-5-5 bitfields, `BGR;16` for 5-6-5):
//!   PIL expands a 5-bit channel as `v * 255 / 31` and a 6-bit one as `v * 255 / 63`
//!   (`ImagingUnpackBGR15` / `ImagingUnpackBGR16`, src/libImaging/Unpack.c); image-rs
//!   rounds instead. PIL also ignores a 16-bit alpha mask (it matches the RGB masks only).
//! - RLE4/RLE8 (`BmpRleDecoder`): pixels an RLE stream skips (delta, end of line) are
//!   palette index 0, not transparent, and PIL's exact stream rules are followed
//!   (absolute-mode runs are not clipped at the row end, word alignment is taken from the
//!   file position, a stream that does not fill the image is an error, as in
//!   `ImageFile.set_as_raw`). Pillow 12 and older read `n // 2` bytes for an odd RLE4
//!   absolute run of `n` pixels, dropping a pixel and desynchronising the stream; Pillow
//!   13 reads `(n + 1) // 2`. `DecodeOptions::pillow12_bmp` picks the release to match.
//! - 1/4/8-bit palettes: when the pixel-data offset points right after the header (at the
//!   palette), PIL takes the pixels to start after the palette; a palette of pure greys
//!   (`0..colors`, or black and white) makes the image `L` (or `1`), whose values are the
//!   indices themselves and whose unpacker reads 8 (or 1) bits per pixel. (A palette of
//!   one black entry is `1` from Pillow 13 on, `L` before.)
//!
//! `decode` answers `Ok(None)` for what it does not take (24/32-bit, other header sizes
//! and bitfield layouts, JPEG/PNG inside BMP), so those keep image-rs's behaviour.

use super::{check_pixels, DecodeOptions, RgbImage};
use crate::error::{Error, Result};

const RAW: u32 = 0;
const RLE8: u32 = 1;
const RLE4: u32 = 2;
const BITFIELDS: u32 = 3;

/// What a pixel is, after PIL has chosen its mode and raw mode.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Pixels {
    /// `1`: one bit per pixel, 0 or 255 (a black-and-white palette).
    Bilevel,
    /// `L`: one byte per pixel, the grey value (a palette of pure greys `0..colors`).
    Gray,
    /// `P;1`, `P;4`, `P`: palette indices of this many bits.
    Palette(u32),
    /// `BGR;15`: 5-5-5, blue in the low bits.
    Bgr15,
    /// `BGR;16`: 5-6-5, blue in the low bits.
    Bgr16,
}

impl Pixels {
    /// Bits PIL's unpacker consumes per pixel (its raw mode's, not the file's).
    fn unpack_bits(self) -> u64 {
        match self {
            Pixels::Bilevel => 1,
            Pixels::Gray => 8,
            Pixels::Palette(bits) => u64::from(bits),
            Pixels::Bgr15 | Pixels::Bgr16 => 16,
        }
    }
}

/// A BMP header as `BmpImageFile._bitmap` reads it, for the variants this module takes.
#[derive(Debug)]
struct Header {
    width: u64,
    height: u64,
    top_down: bool,
    bits: u32,
    compression: u32,
    /// Where the pixels start (`bfOffBits`, moved past the palette as PIL does).
    offset: usize,
    pixels: Pixels,
    /// RGB of each palette entry PIL keeps (at most 256; unlisted indices are black).
    palette: Vec<[u8; 3]>,
}

fn u16_at(data: &[u8], at: usize) -> Option<u32> {
    Some(u32::from(u16::from_le_bytes(data.get(at..at + 2)?.try_into().ok()?)))
}

fn u32_at(data: &[u8], at: usize) -> Option<u32> {
    Some(u32::from_le_bytes(data.get(at..at + 4)?.try_into().ok()?))
}

/// Decode `data` (which starts with `BM`) if it is a variant PIL reads differently from
/// image-rs; `Ok(None)` hands it to image-rs unchanged.
pub(super) fn decode(data: &[u8], opts: &DecodeOptions) -> Result<Option<RgbImage>> {
    let Some(header) = parse(data, opts.pillow12_bmp)? else { return Ok(None) };
    check_pixels(header.width, header.height, opts.max_pixels)?;
    let (w, h) = (header.width as usize, header.height as usize);
    let image = if matches!(header.compression, RLE4 | RLE8) {
        let indices = rle_indices(data, &header, w, h, opts.pillow12_bmp)?;
        to_rgb(&header, w, h, |y| &indices[y * w..(y + 1) * w], 8)
    } else {
        let file_bits = u64::from(header.bits);
        let stride = (((header.width * file_bits + 31) >> 3) & !3) as usize;
        let row_bytes = (header.width * header.pixels.unpack_bits()).div_ceil(8) as usize;
        if row_bytes > stride {
            // PIL's raw decoder refuses a row wider than the stride (IMAGING_CODEC_CONFIG).
            return Err(Error::Decode(format!(
                "BMP: {row_bytes}-byte rows of a {:?} image do not fit the {stride}-byte stride",
                header.pixels
            )));
        }
        // The last row needs only its own bytes, not a whole stride (ImagingRawDecode).
        let need = (h - 1) * stride + row_bytes;
        let rows = data.get(header.offset..).filter(|rest| rest.len() >= need).ok_or_else(|| {
            Error::Decode("truncated file (BMP pixel data ends early)".into())
        })?;
        let bits = header.pixels.unpack_bits() as u32;
        to_rgb(&header, w, h, |y| &rows[y * stride..y * stride + row_bytes], bits)
    };
    Ok(Some(image))
}

/// The header and palette, or `None` where this module leaves the file to image-rs.
fn parse(data: &[u8], pillow12: bool) -> Result<Option<Header>> {
    let (Some(mut offset), Some(header_size)) = (u32_at(data, 10), u32_at(data, 14)) else {
        return Ok(None);
    };
    let header_size = header_size as usize;
    // PIL's _safe_read refuses a header cut short; image-rs says so in its own words.
    if data.len() < 14 + header_size || header_size < 12 {
        return Ok(None);
    }
    let (width, height, top_down, bits, compression, colors, padding);
    let mut masks = None;
    if header_size == 12 {
        // BITMAPCOREHEADER: 16-bit sizes, 3-byte palette entries, never compressed.
        let field = |at| u16_at(data, at).unwrap_or(0);
        (width, height, bits) = (u64::from(field(18)), u64::from(field(20)), field(24));
        (top_down, compression, colors, padding) = (false, RAW, 0, 3);
    } else if matches!(header_size, 40 | 52 | 56 | 64 | 108 | 124) {
        let field = |at| u32_at(data, at).unwrap_or(0);
        // PIL's test for a negative (top-down) height is "its top byte is 0xFF".
        top_down = data[25] == 0xFF;
        width = u64::from(field(18));
        height = if top_down { (1u64 << 32) - u64::from(field(22)) } else { u64::from(field(22)) };
        bits = u16_at(data, 28).unwrap_or(0);
        (compression, colors, padding) = (field(30), field(46), 4);
        if compression == BITFIELDS {
            // The three masks follow a 40-byte header and sit inside longer ones: the
            // same file offsets either way. A 16-bit alpha mask (56+ bytes) is ignored.
            let rgb = (u32_at(data, 54), u32_at(data, 58), u32_at(data, 62));
            let (Some(r), Some(g), Some(b)) = rgb else { return Ok(None) };
            masks = Some((r, g, b));
        }
    } else {
        return Ok(None);
    }
    // The palette follows the header (and, for a 40-byte header, the bitfield masks).
    let palette_at = 14 + header_size + if header_size == 40 && compression == BITFIELDS { 12 } else { 0 };
    let colors = if colors == 0 { 1u64.checked_shl(bits).unwrap_or(0) } else { u64::from(colors) };
    if offset as usize == 14 + header_size && bits <= 8 {
        offset = offset.saturating_add((colors * padding).min(u64::from(u32::MAX)) as u32);
    }
    let pixels = match (bits, compression, masks) {
        (16, RAW, _) | (16, BITFIELDS, Some((0x7C00, 0x3E0, 0x1F))) => Pixels::Bgr15,
        (16, BITFIELDS, Some((0xF800, 0x7E0, 0x1F))) => Pixels::Bgr16,
        (1 | 4 | 8, RAW | RLE4 | RLE8, _) => Pixels::Palette(bits),
        _ => return Ok(None),
    };
    let mut header = Header {
        width,
        height,
        top_down,
        bits,
        compression,
        offset: offset as usize,
        pixels,
        palette: Vec::new(),
    };
    let mut after = palette_at;
    if let Pixels::Palette(_) = pixels {
        read_palette(data, palette_at, colors, padding as usize, pillow12, &mut header)?;
        after = data.len().min(palette_at + colors as usize * padding as usize);
    }
    if offset == 0 {
        // `offset or self.fp.tell()`: no offset means the pixels follow what was read.
        header.offset = after;
    }
    Ok(Some(header))
}

/// PIL's palette step: read `colors` entries (fewer if the file ends), turn an all-grey
/// palette into mode `1` or `L`, and refuse more than 256 entries (`putpalette`).
fn read_palette(data: &[u8], at: usize, colors: u64, padding: usize, pillow12: bool, header: &mut Header) -> Result<()> {
    if !(1..=65536).contains(&colors) {
        return Err(Error::Decode(format!("BMP: unsupported palette size ({colors})")));
    }
    let colors = colors as usize;
    let end = data.len().min(at.saturating_add(colors * padding));
    let raw = data.get(at..end).unwrap_or(&[]);
    let entry = |i: usize| raw.get(i * padding..i * padding + 3);
    let grey = |i: usize, v: usize| entry(i) == Some(&[v as u8; 3][..]);
    let grayscale = if colors == 2 { grey(0, 0) && grey(1, 255) } else { (0..colors).all(|i| grey(i, i & 255)) };
    if grayscale {
        // Pillow 13 makes `colors <= 2` mode 1; Pillow 12 only `colors == 2`.
        let bilevel = if pillow12 { colors == 2 } else { colors <= 2 };
        if header.compression != RAW && bilevel {
            // Neither release has an unpacker from its RLE raw mode into mode 1.
            return Err(Error::Unsupported("BMP: RLE with a black-and-white palette".into()));
        }
        header.pixels = if bilevel { Pixels::Bilevel } else { Pixels::Gray };
        return Ok(());
    }
    if raw.len() / padding > 256 {
        return Err(Error::Decode(format!("BMP: invalid palette size ({} entries)", raw.len() / padding)));
    }
    header.palette = raw.chunks_exact(padding).map(|c| [c[2], c[1], c[0]]).collect();
    Ok(())
}

/// Pillow's `BmpRleDecoder`: the palette indices of the whole image, in file row order.
fn rle_indices(data: &[u8], header: &Header, w: usize, h: usize, pillow12: bool) -> Result<Vec<u8>> {
    let rle4 = header.compression == RLE4;
    let dest = w * h;
    let mut out: Vec<u8> = Vec::with_capacity(dest);
    let mut pos = header.offset;
    let mut x = 0usize;
    while out.len() < dest {
        let (Some(&count), Some(&byte)) = (data.get(pos), data.get(pos + 1)) else { break };
        pos += 2;
        let count = usize::from(count);
        if count > 0 {
            // Encoded run, clipped at the row end (by PIL's column, which may be past it).
            let n = count.min(w.saturating_sub(x));
            if rle4 {
                out.extend((0..n).map(|i| if i % 2 == 0 { byte >> 4 } else { byte & 0x0F }));
            } else {
                out.extend(std::iter::repeat_n(byte, n));
            }
            x += n;
            continue;
        }
        match byte {
            0 => {
                // End of line: the rest of the row is index 0.
                out.resize(out.len().next_multiple_of(w), 0);
                x = 0;
            }
            1 => break,
            2 => {
                let (Some(&right), Some(&up)) = (data.get(pos), data.get(pos + 1)) else { break };
                pos += 2;
                let skip = usize::from(right) + usize::from(up) * w;
                out.resize(out.len() + skip.min(dest - out.len()), 0);
                x = out.len() % w;
            }
            n if rle4 && pillow12 => {
                // Pillow 12: `n // 2` bytes, both nibbles of each (an odd run loses its
                // last pixel and the stream its step). Reading past the image is harmless:
                // the loop stops and the excess is cut below.
                let want = usize::from(n) / 2;
                let got = data.get(pos..).map_or(&[][..], |rest| &rest[..want.min(rest.len())]);
                pos += got.len();
                out.extend(got.iter().flat_map(|&b| [b >> 4, b & 0x0F]));
                if got.len() < want {
                    break;
                }
                x += usize::from(n);
                pos += pos % 2;
            }
            n => {
                // Absolute run of `n` pixels, not clipped at the row end.
                let take = (dest - out.len()).min(usize::from(n));
                let want = if rle4 { take.div_ceil(2) } else { take };
                let got = data.get(pos..).map_or(&[][..], |rest| &rest[..want.min(rest.len())]);
                pos += got.len();
                if rle4 {
                    for (i, &b) in got.iter().enumerate() {
                        out.push(b >> 4);
                        if i * 2 + 1 < take {
                            out.push(b & 0x0F);
                        }
                    }
                } else {
                    out.extend_from_slice(got);
                }
                if got.len() < want || out.len() == dest {
                    break;
                }
                x += usize::from(n);
                // Word alignment, counted from the start of the file as PIL's fd.tell() is.
                pos += pos % 2;
            }
        }
    }
    if out.len() < dest {
        // `ImageFile.set_as_raw` refuses a stream that does not fill the image.
        return Err(Error::Decode("BMP: RLE data ends before the image is filled (not enough image data)".into()));
    }
    out.truncate(dest);
    Ok(out)
}

/// Expand rows (file order, `bits` per pixel) to RGB, bottom-up unless `top_down`.
fn to_rgb<'a>(header: &Header, w: usize, h: usize, row: impl Fn(usize) -> &'a [u8], bits: u32) -> RgbImage {
    let mut out = vec![0u8; w * h * 3];
    let colour = |i: u8| header.palette.get(usize::from(i)).copied().unwrap_or([0; 3]);
    for file_y in 0..h {
        let y = if header.top_down { file_y } else { h - 1 - file_y };
        let src = row(file_y);
        let dst = &mut out[y * w * 3..(y + 1) * w * 3];
        for (x, px) in dst.chunks_exact_mut(3).enumerate() {
            let sample = || match bits {
                1 => (src[x / 8] >> (7 - x % 8)) & 1,
                4 => (src[x / 2] >> if x % 2 == 0 { 4 } else { 0 }) & 0x0F,
                _ => src[x],
            };
            px.copy_from_slice(&match header.pixels {
                Pixels::Bilevel => [if sample() != 0 { 255 } else { 0 }; 3],
                Pixels::Gray => [sample(); 3],
                Pixels::Palette(_) => colour(sample()),
                Pixels::Bgr15 | Pixels::Bgr16 => {
                    let p = u32::from(src[2 * x]) | u32::from(src[2 * x + 1]) << 8;
                    expand_16(p, header.pixels == Pixels::Bgr16)
                }
            });
        }
    }
    RgbImage { width: w, height: h, data: out }
}

/// `ImagingUnpackBGR15` / `ImagingUnpackBGR16`: truncating `v * 255 / max` per channel.
fn expand_16(p: u32, six_bit_green: bool) -> [u8; 3] {
    let five = |v: u32| ((v & 31) * 255 / 31) as u8;
    if six_bit_green {
        [five(p >> 11), (((p >> 5) & 63) * 255 / 63) as u8, five(p)]
    } else {
        [five(p >> 10), five(p >> 5), five(p)]
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::decode::Hints;

    /// A BMP file: `header_size`-byte info header (fields past 40 bytes hold `masks`), then
    /// `after` (40-byte-header masks, palette), then `pixels`, which start at `offset`
    /// (default: right after `after`).
    #[allow(clippy::too_many_arguments)]
    fn bmp(
        header_size: u32,
        (width, height): (i32, i32),
        bits: u16,
        compression: u32,
        colors: u32,
        masks: [u32; 4],
        after: &[u8],
        pixels: &[u8],
        offset: Option<u32>,
    ) -> Vec<u8> {
        let start = 14 + header_size + after.len() as u32;
        let mut v = b"BM".to_vec();
        v.extend((start + pixels.len() as u32).to_le_bytes());
        v.extend([0; 4]);
        v.extend(offset.unwrap_or(start).to_le_bytes());
        v.extend(header_size.to_le_bytes());
        v.extend(width.to_le_bytes());
        v.extend(height.to_le_bytes());
        v.extend(1u16.to_le_bytes());
        v.extend(bits.to_le_bytes());
        v.extend(compression.to_le_bytes());
        v.extend([0; 12]); // image size, pixels per metre
        v.extend(colors.to_le_bytes());
        v.extend([0; 4]); // important colours
        for m in masks.iter().take((header_size as usize).saturating_sub(40) / 4) {
            v.extend(m.to_le_bytes());
        }
        v.resize(14 + header_size as usize, 0);
        v.extend(after);
        v.extend(pixels);
        v
    }

    fn bgrx(colours: &[[u8; 3]]) -> Vec<u8> {
        colours.iter().flat_map(|&[r, g, b]| [b, g, r, 0]).collect()
    }

    fn run(data: &[u8]) -> RgbImage {
        decode(data, &DecodeOptions::default()).unwrap().expect("taken by bmp.rs")
    }

    fn px(img: &RgbImage, x: usize, y: usize) -> [u8; 3] {
        let i = (y * img.width + x) * 3;
        [img.data[i], img.data[i + 1], img.data[i + 2]]
    }

    const NO_MASKS: [u32; 4] = [0; 4];

    #[test]
    fn sixteen_bit_555_expands_by_truncating_division() {
        // r=3, g=1, b=30, then all ones with the unused top bit set; 4-byte stride.
        let p0: u16 = (3 << 10) | (1 << 5) | 30;
        let pixels = [p0.to_le_bytes(), 0xFFFFu16.to_le_bytes()].concat();
        let img = run(&bmp(40, (2, 1), 16, RAW, 0, NO_MASKS, &[], &pixels, None));
        // 3*255/31 = 24.7 and 30*255/31 = 246.8: PIL truncates (image-rs rounds to 25, 247).
        assert_eq!(px(&img, 0, 0), [24, 8, 246]);
        assert_eq!(px(&img, 1, 0), [255, 255, 255]);
    }

    #[test]
    fn sixteen_bit_565_bitfields() {
        let p: u16 = (3 << 11) | (5 << 5) | 1;
        let masks: Vec<u8> = [0xF800u32, 0x7E0, 0x1F].iter().flat_map(|m| m.to_le_bytes()).collect();
        let data = bmp(40, (1, 1), 16, BITFIELDS, 0, NO_MASKS, &masks, &[p.to_le_bytes(), [0, 0]].concat(), None);
        // 5*255/63 = 20.2 for the 6-bit green.
        assert_eq!(px(&run(&data), 0, 0), [24, 20, 8]);
    }

    #[test]
    fn sixteen_bit_alpha_mask_is_ignored() {
        // A1R5G5B5 in a 56-byte header: PIL matches the RGB masks only, so a clear alpha
        // bit still gives the stored colour, not white.
        let p: u16 = 31 << 10;
        let data = bmp(56, (1, 1), 16, BITFIELDS, 0, [0x7C00, 0x3E0, 0x1F, 0x8000], &[], &[p.to_le_bytes(), [0, 0]].concat(), None);
        assert_eq!(px(&run(&data), 0, 0), [255, 0, 0]);
    }

    #[test]
    fn four_bit_palette_rows_are_bottom_up_and_unlisted_indices_black() {
        let pal = bgrx(&[[1, 2, 3], [4, 5, 6], [7, 8, 9]]);
        // 3 pixels of 4 bits, 4-byte stride; file row 0 is the bottom row.
        let pixels = [0x01, 0x20, 0, 0, 0x21, 0xF0, 0, 0];
        let img = run(&bmp(40, (3, 2), 4, RAW, 3, NO_MASKS, &pal, &pixels, None));
        assert_eq!([px(&img, 0, 1), px(&img, 1, 1), px(&img, 2, 1)], [[1, 2, 3], [4, 5, 6], [7, 8, 9]]);
        assert_eq!([px(&img, 0, 0), px(&img, 1, 0), px(&img, 2, 0)], [[7, 8, 9], [4, 5, 6], [0, 0, 0]]);
    }

    #[test]
    fn top_down_height() {
        let pal = bgrx(&[[9, 9, 8], [1, 1, 2]]);
        let pixels = [0x00, 0, 0, 0, 0x80, 0, 0, 0];
        let img = run(&bmp(40, (1, -2), 1, RAW, 2, NO_MASKS, &pal, &pixels, None));
        assert_eq!((img.width, img.height), (1, 2));
        assert_eq!([px(&img, 0, 0), px(&img, 0, 1)], [[9, 9, 8], [1, 1, 2]]);
    }

    #[test]
    fn pixel_offset_at_the_palette_means_after_it() {
        // bfOffBits = 14 + 40 points at the palette; PIL reads the pixels after it.
        let pal = bgrx(&[[10, 0, 0], [0, 20, 0]]);
        let img = run(&bmp(40, (2, 1), 8, RAW, 2, NO_MASKS, &pal, &[1, 0, 0, 0], Some(54)));
        assert_eq!([px(&img, 0, 0), px(&img, 1, 0)], [[0, 20, 0], [10, 0, 0]]);
    }

    #[test]
    fn zero_pixel_offset_means_right_after_the_palette() {
        let pal = bgrx(&[[10, 0, 0], [0, 20, 0]]);
        let img = run(&bmp(40, (2, 1), 8, RAW, 2, NO_MASKS, &pal, &[1, 0, 0, 0], Some(0)));
        assert_eq!([px(&img, 0, 0), px(&img, 1, 0)], [[0, 20, 0], [10, 0, 0]]);
        let p: u16 = 31 << 10;
        let img = run(&bmp(40, (1, 1), 16, RAW, 0, NO_MASKS, &[], &[p.to_le_bytes(), [0, 0]].concat(), Some(0)));
        assert_eq!(px(&img, 0, 0), [255, 0, 0]);
    }

    #[test]
    fn grey_palettes_read_as_l_and_bilevel() {
        // Greys 0..3: mode L, so index 200 is grey 200 (not an unlisted, black entry).
        let pal = bgrx(&[[0; 3], [1; 3], [2; 3], [3; 3]]);
        let img = run(&bmp(40, (2, 1), 8, RAW, 4, NO_MASKS, &pal, &[3, 200, 0, 0], None));
        assert_eq!([px(&img, 0, 0), px(&img, 1, 0)], [[3; 3], [200; 3]]);
        // Black and white in an 8-bit file: mode 1, whose unpacker reads one bit a pixel.
        let pal = bgrx(&[[0; 3], [255; 3]]);
        let img = run(&bmp(40, (2, 1), 8, RAW, 2, NO_MASKS, &pal, &[0b0100_0000, 0, 0, 0], None));
        assert_eq!([px(&img, 0, 0), px(&img, 1, 0)], [[0; 3], [255; 3]]);
    }

    #[test]
    fn rle8_skipped_pixels_are_index_0() {
        let pal = bgrx(&[[10, 20, 30], [1, 1, 1], [2, 2, 2]]);
        // Pixels start at 14 + 40 + 12 = 66 (even): run of 2, end of line, delta (1, 1),
        // absolute run of 3 (ending at the odd offset 79, so one pad byte), end of bitmap.
        let stream = [2, 1, 0, 0, 0, 2, 1, 1, 0, 3, 2, 2, 2, 0, 0, 1];
        let img = run(&bmp(40, (4, 3), 8, RLE8, 3, NO_MASKS, &pal, &stream, None));
        let row = |y| (0..4).map(|x| px(&img, x, y)).collect::<Vec<_>>();
        let (z, one, two) = ([10, 20, 30], [1; 3], [2; 3]);
        assert_eq!(row(2), [one, one, z, z]);
        assert_eq!(row(1), [z; 4]);
        assert_eq!(row(0), [z, two, two, two]);
    }

    #[test]
    fn rle4_odd_absolute_run_keeps_the_stream_in_step() {
        let pal = bgrx(&(0..6).map(|i| [i * 10 + 1, 0, 0]).collect::<Vec<_>>());
        // Absolute run of 3 nibbles in 2 bytes (Pillow 12 read only 1), end of line, then
        // a run of 3 (PIL's column is not reset by a full row, only by the end of line).
        let stream = [0, 3, 0x12, 0x30, 0, 0, 3, 0x45];
        let img = run(&bmp(40, (3, 2), 4, RLE4, 6, NO_MASKS, &pal, &stream, None));
        let red = |y| (0..3).map(|x| px(&img, x, y)[0]).collect::<Vec<_>>();
        assert_eq!(red(1), [11, 21, 31]);
        assert_eq!(red(0), [41, 51, 41]);
    }

    #[test]
    fn rle4_odd_absolute_run_under_pillow_12() {
        let pal = bgrx(&(0..6).map(|i| [i * 10 + 1, 0, 0]).collect::<Vec<_>>());
        // Pillow 12 reads one byte for the 3-nibble run (pixels 1, 2), skips 0x30 as the
        // word-alignment pad (its file position is odd), so the end of line leaves the
        // row's last pixel at index 0; Pillow 13 gives [1, 2, 3] (the test above).
        let stream = [0, 3, 0x12, 0x30, 0, 0, 3, 0x45];
        let data = bmp(40, (3, 2), 4, RLE4, 6, NO_MASKS, &pal, &stream, None);
        let opts = DecodeOptions { pillow12_bmp: true, ..DecodeOptions::default() };
        let img = decode(&data, &opts).unwrap().unwrap();
        let red = |y| (0..3).map(|x| px(&img, x, y)[0]).collect::<Vec<_>>();
        assert_eq!(red(1), [11, 21, 1]);
        assert_eq!(red(0), [41, 51, 41]);
    }

    #[test]
    fn damaged_files_are_typed_errors() {
        let pal = bgrx(&[[1, 2, 3], [4, 5, 6]]);
        let opts = DecodeOptions::default();
        // An RLE stream that stops before the image is full (PIL: not enough image data).
        let early = bmp(40, (2, 2), 8, RLE8, 2, NO_MASKS, &pal, &[2, 1, 0, 1], None);
        assert!(matches!(decode(&early, &opts), Err(Error::Decode(_))));
        // Raw rows cut short.
        let short = bmp(40, (2, 2), 16, RAW, 0, NO_MASKS, &[], &[0; 6], None);
        assert!(matches!(decode(&short, &opts), Err(Error::Decode(_))));
        // More than 256 palette entries (PIL's putpalette refuses them).
        let big = bmp(40, (1, 1), 8, RAW, 300, NO_MASKS, &[7; 1200], &[0; 4], None);
        assert!(matches!(decode(&big, &opts), Err(Error::Decode(_))));
        // Pixel limits are checked from the header, before any buffer is made.
        let huge = bmp(40, (100_000, 100_000), 16, RAW, 0, NO_MASKS, &[], &[], None);
        assert!(matches!(decode(&huge, &opts), Err(Error::TooLarge { .. })));
        let small = DecodeOptions { max_pixels: 3, ..DecodeOptions::default() };
        assert!(matches!(decode(&short, &small), Err(Error::TooLarge { .. })));
        for cut in 0..early.len() {
            let _ = decode(&early[..cut], &opts); // never panics
        }
    }

    /// Corrupted headers, palettes and streams give errors or pixels, never a panic.
    #[test]
    fn mutated_files_never_panic() {
        let pal = bgrx(&[[1, 2, 3], [4, 5, 6], [7, 8, 9]]);
        let seeds = [
            bmp(40, (4, 3), 8, RLE8, 3, NO_MASKS, &pal, &[2, 1, 0, 0, 0, 2, 1, 1, 0, 3, 2, 2, 2, 0, 0, 1], None),
            bmp(40, (3, 2), 4, RLE4, 3, NO_MASKS, &pal, &[0, 3, 0x12, 0x30, 0, 0, 3, 0x45], None),
            bmp(40, (3, 2), 4, RAW, 3, NO_MASKS, &pal, &[0x01, 0x20, 0, 0, 0x21, 0xF0, 0, 0], None),
            bmp(56, (1, 1), 16, BITFIELDS, 0, [0x7C00, 0x3E0, 0x1F, 0x8000], &[], &[0, 0x7C, 0, 0], None),
        ];
        let opts = DecodeOptions { max_pixels: 1 << 16, ..DecodeOptions::default() };
        let mut state = 0x9E37_79B9_7F4A_7C15u64;
        for seed in &seeds {
            for _ in 0..2000 {
                let mut data = seed.clone();
                for _ in 0..3 {
                    state ^= state << 13;
                    state ^= state >> 7;
                    state ^= state << 17;
                    let at = (state as usize) % data.len();
                    data[at] = (state >> 32) as u8;
                }
                for pillow12_bmp in [false, true] {
                    let _ = decode(&data, &DecodeOptions { pillow12_bmp, ..opts });
                }
            }
        }
    }

    #[test]
    fn other_variants_are_left_to_image_rs() {
        let opts = DecodeOptions::default();
        let rgb24 = bmp(40, (1, 1), 24, RAW, 0, NO_MASKS, &[], &[1, 2, 3, 0], None);
        assert!(decode(&rgb24, &opts).unwrap().is_none());
        let masks: Vec<u8> = [0xF00u32, 0xF0, 0xF].iter().flat_map(|m| m.to_le_bytes()).collect();
        let rgb444 = bmp(40, (1, 1), 16, BITFIELDS, 0, NO_MASKS, &masks, &[0; 4], None);
        assert!(decode(&rgb444, &opts).unwrap().is_none());
        assert!(decode(b"BM", &opts).unwrap().is_none());
    }

    #[test]
    fn public_decode_dispatches_here() {
        let p0: u16 = 3 << 10;
        let data = bmp(40, (1, 1), 16, RAW, 0, NO_MASKS, &[], &[p0.to_le_bytes(), [0, 0]].concat(), None);
        let d = crate::decode::decode(&data, &DecodeOptions::default(), Hints::default()).unwrap();
        assert_eq!(d.image.data, [24, 0, 0]);
    }
}
