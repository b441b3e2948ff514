//! TIFF tags the `tiff` crate leaves to its caller, applied as libtiff and PIL apply them.
//!
//! - ExtraSamples = 1, associated (premultiplied) alpha: the file stores `colour * alpha`.
//!   PIL opens RGB + one associated alpha sample as mode RGBA through the raw modes
//!   `RGBa`, `RGBa;16L` and `RGBa;16B` (TiffImagePlugin `OPEN_INFO`), whose unpackers
//!   (`unpackRGBa`, `unpackRGBa16L`/`B` in src/libImaging/Unpack.c) divide back: on the
//!   8-bit samples, or the high bytes of the 16-bit ones, `a == 0` gives `(0, 0, 0, 0)`,
//!   `a == 255` keeps the pixel, anything else is `min(c * 255 / a, 255)`, truncated. PIL
//!   does the same for separate planes. The `tiff` crate hands the premultiplied samples
//!   over unchanged, so without this step the colours are too dark.
//! - FillOrder = 2: the bits of every byte are stored lowest first. libtiff reverses them
//!   (`TIFFReverseBits`) and PIL's raw modes for it (`L;R`, `I;16R`, `RGB;R`) do the same;
//!   the `tiff` crate ignores the tag. For uncompressed 8- and 16-bit samples reversing
//!   each decoded byte is the same thing; compressed files (where libtiff reverses the
//!   compressed stream) and packed 1/2/4-bit samples are left as the crate decodes them.

use std::io::Cursor;

use image::{DynamicImage, RgbaImage};
use tiff::decoder::Decoder;
use tiff::tags::Tag;

/// `img` with the ExtraSamples and FillOrder tags of the TIFF in `data` applied.
pub(super) fn apply(data: &[u8], img: DynamicImage) -> DynamicImage {
    let Ok(mut decoder) = Decoder::new(Cursor::new(data)) else { return img };
    let mut tag = |t| decoder.find_tag_unsigned_vec::<u16>(t).ok().flatten().unwrap_or_default();
    let (fill_order, compression, extra) = (tag(Tag::FillOrder), tag(Tag::Compression), tag(Tag::ExtraSamples));
    let img = if fill_order == [2] && compression == [1] { reverse_bits(img) } else { img };
    if extra.first() == Some(&1) {
        unassociate(img)
    } else {
        img
    }
}

/// Every byte of every 8- or 16-bit sample with its bits reversed; other images as is.
fn reverse_bits(img: DynamicImage) -> DynamicImage {
    let r16 = |v: &mut u16| *v = u16::from_le_bytes(v.to_le_bytes().map(u8::reverse_bits));
    let mut img = img;
    match &mut img {
        DynamicImage::ImageLuma8(b) => b.iter_mut().for_each(|v| *v = v.reverse_bits()),
        DynamicImage::ImageLumaA8(b) => b.iter_mut().for_each(|v| *v = v.reverse_bits()),
        DynamicImage::ImageRgb8(b) => b.iter_mut().for_each(|v| *v = v.reverse_bits()),
        DynamicImage::ImageRgba8(b) => b.iter_mut().for_each(|v| *v = v.reverse_bits()),
        DynamicImage::ImageLuma16(b) => b.iter_mut().for_each(r16),
        DynamicImage::ImageLumaA16(b) => b.iter_mut().for_each(r16),
        DynamicImage::ImageRgb16(b) => b.iter_mut().for_each(r16),
        DynamicImage::ImageRgba16(b) => b.iter_mut().for_each(r16),
        _ => {}
    }
    img
}

/// `img` with straight alpha if image-rs decoded it as RGBA; anything else as is.
fn unassociate(img: DynamicImage) -> DynamicImage {
    if !matches!(img, DynamicImage::ImageRgba8(_) | DynamicImage::ImageRgba16(_)) {
        return img;
    }
    let (w, h) = (img.width(), img.height());
    // 16-bit samples keep their high byte first (PIL's unpacker and color.rs agree).
    let mut rgba = match img {
        DynamicImage::ImageRgba16(b) => b.as_raw().iter().map(|&v| (v >> 8) as u8).collect(),
        other => other.into_rgba8().into_raw(),
    };
    for px in rgba.chunks_exact_mut(4) {
        unpremultiply(px);
    }
    DynamicImage::ImageRgba8(RgbaImage::from_raw(w, h, rgba).expect("same size as the decoded image"))
}

/// PIL's `unpackRGBa` on one pixel.
fn unpremultiply(px: &mut [u8]) {
    let a = u32::from(px[3]);
    match a {
        0 => px.fill(0),
        255 => {}
        _ => {
            for c in &mut px[..3] {
                *c = (u32::from(*c) * 255 / a).min(255) as u8;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use image::{ImageBuffer, Rgba};

    #[test]
    fn unpremultiply_follows_unpack_rgba() {
        let mut px = [1, 0, 200, 1];
        unpremultiply(&mut px);
        assert_eq!(px, [255, 0, 255, 1]); // clipped at 255
        let mut px = [2, 1, 0, 3];
        unpremultiply(&mut px);
        assert_eq!(px, [170, 85, 0, 3]); // 255 * 2 / 3 = 170 (truncated)
        let mut px = [9, 9, 9, 0];
        unpremultiply(&mut px);
        assert_eq!(px, [0; 4]);
        let mut px = [9, 8, 7, 255];
        unpremultiply(&mut px);
        assert_eq!(px, [9, 8, 7, 255]);
    }

    /// A little-endian uncompressed RGBA 16-bit TIFF of one pixel, with these
    /// ExtraSamples and FillOrder values.
    fn tiff_rgba16(px: [u16; 4], extra: u16, fill_order: u16) -> Vec<u8> {
        let (n, bits_at) = (11u16, 8 + 2 + 11 * 12 + 4);
        let entries: [(u16, u16, u32, u32); 11] = [
            (256, 3, 1, 1),                     // width
            (257, 3, 1, 1),                     // height
            (258, 3, 4, bits_at),               // bits per sample: 4 values, stored below
            (259, 3, 1, 1),                     // no compression
            (262, 3, 1, 2),                     // RGB
            (266, 3, 1, u32::from(fill_order)), // fill order
            (273, 4, 1, bits_at + 8),           // strip offset
            (277, 3, 1, 4),                     // samples per pixel
            (278, 3, 1, 1),                     // rows per strip
            (279, 4, 1, 8),                     // strip byte count
            (338, 3, 1, u32::from(extra)),      // extra samples
        ];
        let mut v = b"II*\0\x08\0\0\0".to_vec();
        v.extend(n.to_le_bytes());
        for (tag, kind, count, value) in entries {
            v.extend(tag.to_le_bytes());
            v.extend(kind.to_le_bytes());
            v.extend(count.to_le_bytes());
            v.extend(value.to_le_bytes());
        }
        v.extend([0; 4]);
        assert_eq!(v.len(), bits_at as usize);
        v.extend([16u16; 4].iter().flat_map(|b| b.to_le_bytes()));
        v.extend(px.iter().flat_map(|s| s.to_le_bytes()));
        v
    }

    fn decoded(data: &[u8]) -> DynamicImage {
        image::load_from_memory_with_format(data, image::ImageFormat::Tiff).unwrap()
    }

    #[test]
    fn associated_alpha_tiff_is_unpremultiplied_on_high_bytes() {
        let stored = [0x0280, 0x01FF, 0, 0x03FF];
        let data = tiff_rgba16(stored, 1, 1);
        let img = decoded(&data);
        assert_eq!(img.to_rgba16().get_pixel(0, 0).0, stored, "image-rs keeps the stored samples");
        let out = apply(&data, img);
        assert_eq!(out.as_rgba8().unwrap().get_pixel(0, 0).0, [170, 85, 0, 3]);
        // Unassociated alpha (2) stays as stored.
        let data = tiff_rgba16(stored, 2, 1);
        let img = decoded(&data);
        assert!(matches!(apply(&data, img), DynamicImage::ImageRgba16(_)));
        // Not a TIFF, or not RGBA: untouched.
        let rgba: ImageBuffer<Rgba<u8>, _> = ImageBuffer::from_raw(1, 1, vec![1, 2, 3, 4]).unwrap();
        let out = apply(b"not a tiff", DynamicImage::ImageRgba8(rgba));
        assert_eq!(out.as_rgba8().unwrap().get_pixel(0, 0).0, [1, 2, 3, 4]);
    }

    #[test]
    fn fill_order_2_reverses_the_bits_of_each_byte() {
        // 0x0102 is the bytes 02 01, reversed 40 80: 0x8040 (what PIL's I;16R reads).
        let data = tiff_rgba16([0x0102, 0x0100, 0, 0xFFFF], 2, 2);
        let out = apply(&data, decoded(&data));
        assert_eq!(out.as_rgba16().unwrap().get_pixel(0, 0).0, [0x8040, 0x8000, 0, 0xFFFF]);
        // Fill order 1 is left alone.
        let data = tiff_rgba16([0x0102, 0x0100, 0, 0xFFFF], 2, 1);
        assert_eq!(apply(&data, decoded(&data)).as_rgba16().unwrap().get_pixel(0, 0).0, [0x0102, 0x0100, 0, 0xFFFF]);
    }
}
