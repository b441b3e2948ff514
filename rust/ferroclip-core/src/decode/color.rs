//! Every pixel mode to RGB8, integer for integer what PIL does.
//!
//! The reference (`transformers.image_transforms.convert_to_rgb`) composites an image that
//! has alpha (or a tRNS transparency) onto opaque white with `Image.alpha_composite`, and
//! converts everything else with `Image.convert("RGB")`. 16-bit samples keep their high
//! byte, as PIL's `RGB;16B` raw mode does; unlike PIL's `I;16 -> RGB` (which clips at 255)
//! this also scales 16-bit grayscale instead of saturating it, unless `SixteenBit::Clip`
//! asks for PIL's rule (`DecodeOptions::sixteen_bit`).

use std::io::Cursor;

use image::metadata::Orientation;
use image::{DynamicImage, ImageDecoder, ImageError};

use super::{check_pixels, orientation, DecodeOptions, Format, RgbImage};
use crate::error::{Error, Result};

/// What to do with transparency.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AlphaMode {
    /// Composite onto opaque white, as HF's `convert_to_rgb` does (default).
    White,
    /// Drop the alpha channel and keep the stored colour, as `Image.convert("RGB")` does.
    Drop,
}

/// What 16-bit grayscale becomes (16-bit colour always keeps its high byte, as in PIL).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum SixteenBit {
    /// The high byte: the whole 16-bit range scaled to 8 bits (default; a 16-bit scan or
    /// depth map keeps its contrast).
    #[default]
    Scale,
    /// PIL's `I;16 -> RGB`: values above 255 become 255 (most 16-bit content turns white).
    Clip,
}

/// Pillow's `ImagingAlphaComposite` of `(c, a)` over opaque white, one channel.
#[inline]
#[must_use]
pub fn composite_over_white(c: u8, a: u8) -> u8 {
    const PRECISION_BITS: u32 = 7;
    if a == 0 {
        return 255;
    }
    let a = u32::from(a);
    let blend = 255 * (255 - a);
    let outa255 = a * 255 + blend;
    let coef1 = a * 255 * 255 * (1 << PRECISION_BITS) / outa255;
    let coef2 = 255 * (1 << PRECISION_BITS) - coef1;
    let tmp = u32::from(c) * coef1 + 255 * coef2 + (0x80 << PRECISION_BITS);
    (((tmp >> 8) + tmp) >> 8 >> PRECISION_BITS) as u8
}

/// Pillow's `cmyk2rgb` (after the `CMYK;I` inversion PIL applies to every 4-channel JPEG).
#[inline]
#[must_use]
pub fn cmyk_to_rgb(c: u8, m: u8, y: u8, k: u8) -> [u8; 3] {
    let nk = 255 - i32::from(k);
    let f = |v: u8| {
        let tmp = i32::from(v) * nk + 128;
        let muldiv = ((tmp >> 8) + tmp) >> 8;
        (nk - muldiv).clamp(0, 255) as u8
    };
    [f(c), f(m), f(y)]
}

/// Convert interleaved RGBA (or gray+alpha expanded by the caller) to RGB.
pub(crate) fn rgba_to_rgb(rgba: &[u8], alpha: AlphaMode) -> Vec<u8> {
    let mut out = Vec::with_capacity(rgba.len() / 4 * 3);
    match alpha {
        AlphaMode::Drop => {
            for px in rgba.chunks_exact(4) {
                out.extend_from_slice(&px[..3]);
            }
        }
        AlphaMode::White => {
            for px in rgba.chunks_exact(4) {
                let a = px[3];
                if a == 255 {
                    out.extend_from_slice(&px[..3]);
                } else {
                    out.extend_from_slice(&[
                        composite_over_white(px[0], a),
                        composite_over_white(px[1], a),
                        composite_over_white(px[2], a),
                    ]);
                }
            }
        }
    }
    out
}

fn gray_to_rgb(gray: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(gray.len() * 3);
    for &g in gray {
        out.extend_from_slice(&[g, g, g]);
    }
    out
}

fn gray_alpha_to_rgb(la: &[u8], alpha: AlphaMode) -> Vec<u8> {
    let mut out = Vec::with_capacity(la.len() / 2 * 3);
    for px in la.chunks_exact(2) {
        let (g, a) = (px[0], px[1]);
        let v = if alpha == AlphaMode::White { composite_over_white(g, a) } else { g };
        out.extend_from_slice(&[v, v, v]);
    }
    out
}

fn high_bytes(samples: &[u16]) -> Vec<u8> {
    samples.iter().map(|&v| (v >> 8) as u8).collect()
}

fn float_to_u8(samples: &[f32]) -> Vec<u8> {
    samples.iter().map(|&v| (v.clamp(0.0, 1.0) * 255.0).round() as u8).collect()
}

/// One 16-bit grey sample to 8 bits: the one place `SixteenBit` is applied.
#[inline]
fn grey16(v: u16, sixteen: SixteenBit) -> u8 {
    match sixteen {
        SixteenBit::Scale => (v >> 8) as u8,
        SixteenBit::Clip => v.min(255) as u8,
    }
}

fn grey16_to_u8(samples: &[u16], sixteen: SixteenBit) -> Vec<u8> {
    samples.iter().map(|&v| grey16(v, sixteen)).collect()
}

/// Whether image-rs's `LumaA16` for this file is PIL's `I;16` with a tRNS grey rather
/// than a true grey+alpha. A 16-bit grey PNG with a tRNS grey comes from image-rs as
/// `LumaA16`, while PIL keeps it `I;16` with `info["transparency"]`, so its grey follows
/// `SixteenBit` like any `I;16` and the tRNS pixels stay transparent. A grey+alpha PNG
/// (colour type 4) is PIL's `LA`, read by its high bytes, so only colour type 0 (grey,
/// IHDR byte 25) counts.
fn lumaa16_is_trns_grey(format: Format, data: &[u8]) -> bool {
    format == Format::Png && data.get(25) == Some(&0)
}

/// `DynamicImage` (any mode image-rs produces) to RGB8 with PIL's rules. `trns_grey`:
/// a `LumaA16` is a 16-bit grey with a tRNS grey (`lumaa16_is_trns_grey`), whose grey
/// follows `sixteen` as `Luma16`'s does.
pub(crate) fn dynamic_to_rgb(img: DynamicImage, alpha: AlphaMode, sixteen: SixteenBit, trns_grey: bool) -> RgbImage {
    let (width, height) = (img.width() as usize, img.height() as usize);
    let data = match img {
        DynamicImage::ImageRgb8(b) => b.into_raw(),
        DynamicImage::ImageRgba8(b) => rgba_to_rgb(b.as_raw(), alpha),
        DynamicImage::ImageLuma8(b) => gray_to_rgb(b.as_raw()),
        DynamicImage::ImageLumaA8(b) => gray_alpha_to_rgb(b.as_raw(), alpha),
        DynamicImage::ImageRgb16(b) => high_bytes(b.as_raw()),
        DynamicImage::ImageRgba16(b) => rgba_to_rgb(&high_bytes(b.as_raw()), alpha),
        DynamicImage::ImageLuma16(b) => gray_to_rgb(&grey16_to_u8(b.as_raw(), sixteen)),
        DynamicImage::ImageLumaA16(b) if trns_grey => {
            let la: Vec<u8> = b.as_raw().chunks_exact(2).flat_map(|p| [grey16(p[0], sixteen), (p[1] >> 8) as u8]).collect();
            gray_alpha_to_rgb(&la, alpha)
        }
        DynamicImage::ImageLumaA16(b) => gray_alpha_to_rgb(&high_bytes(b.as_raw()), alpha),
        DynamicImage::ImageRgb32F(b) => float_to_u8(b.as_raw()),
        DynamicImage::ImageRgba32F(b) => rgba_to_rgb(&float_to_u8(b.as_raw()), alpha),
        other => rgba_to_rgb(other.to_rgba8().as_raw(), alpha),
    };
    RgbImage { width, height, data }
}

fn map_image_error(err: ImageError) -> Error {
    match err {
        ImageError::Unsupported(e) => Error::Unsupported(e.to_string()),
        ImageError::Limits(e) => Error::DecoderLimit(e.to_string()),
        // image-rs's BMP decoder reports its per-side soft limit as a format error.
        ImageError::Decoding(e) if e.to_string().contains("soft limit") => Error::DecoderLimit(e.to_string()),
        ImageError::IoError(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => {
            Error::Decode("truncated file (unexpected end of data)".into())
        }
        other => Error::Decode(other.to_string()),
    }
}

/// PNG, GIF (first frame), WebP, BMP and TIFF through image-rs.
pub(super) fn decode_with_image_rs(
    data: &[u8],
    format: Format,
    opts: &DecodeOptions,
) -> Result<(RgbImage, Option<Orientation>)> {
    let fmt = match format {
        Format::Png => image::ImageFormat::Png,
        Format::Gif => image::ImageFormat::Gif,
        Format::WebP => image::ImageFormat::WebP,
        Format::Bmp => image::ImageFormat::Bmp,
        Format::Tiff => image::ImageFormat::Tiff,
        Format::Jpeg | Format::Heif => unreachable!("JPEG and HEIF have their own decoders"),
    };
    if format == Format::Tiff {
        super::tiff_layout::check(data)?;
    }
    let mut reader = image::ImageReader::with_format(Cursor::new(data), fmt);
    let mut limits = image::Limits::default();
    // Room for the largest allowed image at 16 bits x 4 channels, plus decoder scratch.
    limits.max_alloc = Some(opts.max_pixels.saturating_mul(8).saturating_add(64 << 20));
    reader.limits(limits);
    let mut decoder = reader.into_decoder().map_err(map_image_error)?;
    let (w, h) = decoder.dimensions();
    check_pixels(u64::from(w), u64::from(h), opts.max_pixels)?;
    let orientation = if opts.apply_exif_orientation { reference_orientation(format, data, &mut decoder) } else { None };
    let img = DynamicImage::from_decoder(decoder).map_err(map_image_error)?;
    let img = if format == Format::Tiff { super::tiff_tags::apply(data, img) } else { img };
    let trns_grey = lumaa16_is_trns_grey(format, data);
    Ok((dynamic_to_rgb(img, opts.alpha, opts.sixteen_bit, trns_grey), orientation))
}

/// The orientation PIL applies (`orientation.rs`). GIF and BMP carry none that PIL reads.
fn reference_orientation(format: Format, data: &[u8], decoder: &mut impl ImageDecoder) -> Option<Orientation> {
    match format {
        Format::Png => {
            let (exif, xmp) = orientation::png_metadata(data);
            orientation::resolve(exif.as_deref(), xmp.as_deref())
        }
        Format::WebP => {
            let (exif, xmp) = orientation::webp_metadata(data);
            orientation::resolve(exif, xmp)
        }
        // The tag of the TIFF's own IFD0, else its XMP (tag 700). image-rs reports a
        // missing tag and an explicit 1 alike, so an explicit 1 beside an XMP orientation
        // (never seen in practice) would take the XMP's.
        Format::Tiff => match decoder.orientation().ok() {
            Some(Orientation::NoTransforms) | None => {
                orientation::resolve(None, decoder.xmp_metadata().ok().flatten().as_deref())
            }
            some => some,
        },
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn composite_is_identity_when_opaque_and_white_when_transparent() {
        for c in 0..=255u8 {
            assert_eq!(composite_over_white(c, 255), c);
            assert_eq!(composite_over_white(c, 0), 255);
        }
        // Half-transparent black over white is mid grey, as in Pillow.
        assert_eq!(composite_over_white(0, 128), 127);
    }

    #[test]
    fn trns_grey16_png_follows_sixteen_bit_and_keeps_its_transparency() {
        // Grey 300 opaque, grey 100 transparent (a tRNS grey is all or nothing).
        let la = || DynamicImage::ImageLumaA16(image::ImageBuffer::from_raw(2, 1, vec![300u16, 65535, 100, 0]).unwrap());
        let rgb = |trns, alpha, sixteen| dynamic_to_rgb(la(), alpha, sixteen, trns).data;
        assert_eq!(rgb(true, AlphaMode::Drop, SixteenBit::Clip), [255, 255, 255, 100, 100, 100]);
        assert_eq!(rgb(true, AlphaMode::White, SixteenBit::Clip), [255; 6]);
        assert_eq!(rgb(true, AlphaMode::Drop, SixteenBit::Scale), [1, 1, 1, 0, 0, 0]);
        // A true grey+alpha is PIL's LA: its high bytes, whatever `sixteen` says.
        assert_eq!(rgb(false, AlphaMode::Drop, SixteenBit::Clip), [1, 1, 1, 0, 0, 0]);
        assert_eq!(rgb(false, AlphaMode::White, SixteenBit::Clip), [1, 1, 1, 255, 255, 255]);
        // Luma16 follows `sixteen` the same way.
        let luma = || DynamicImage::ImageLuma16(image::ImageBuffer::from_raw(2, 1, vec![300u16, 100]).unwrap());
        assert_eq!(dynamic_to_rgb(luma(), AlphaMode::White, SixteenBit::Clip, false).data, [255, 255, 255, 100, 100, 100]);
        assert_eq!(dynamic_to_rgb(luma(), AlphaMode::White, SixteenBit::Scale, false).data, [1, 1, 1, 0, 0, 0]);
    }

    #[test]
    fn only_a_grey_pngs_lumaa16_is_a_trns_grey() {
        let mut png = b"\x89PNG\r\n\x1a\n\0\0\0\x0dIHDR\0\0\0\x02\0\0\0\x01\x10".to_vec();
        png.push(0); // colour type 0: grey (its alpha can only be a tRNS grey)
        assert!(lumaa16_is_trns_grey(Format::Png, &png));
        *png.last_mut().unwrap() = 4; // grey + alpha: PIL's LA
        assert!(!lumaa16_is_trns_grey(Format::Png, &png));
        assert!(!lumaa16_is_trns_grey(Format::Png, &png[..25]));
        *png.last_mut().unwrap() = 0;
        assert!(!lumaa16_is_trns_grey(Format::Tiff, &png));
    }

    #[test]
    fn cmyk_extremes() {
        assert_eq!(cmyk_to_rgb(0, 0, 0, 0), [255, 255, 255]);
        assert_eq!(cmyk_to_rgb(0, 0, 0, 255), [0, 0, 0]);
        assert_eq!(cmyk_to_rgb(255, 0, 0, 0), [0, 255, 255]);
    }
}
