//! Bytes or a path in, an 8-bit RGB image out, the way the reference (PIL + HF
//! `convert_to_rgb` after `ImageOps.exif_transpose`) would see it.
//!
//! JPEG goes through libjpeg-turbo (the mozjpeg build of it), the decoder PIL itself uses,
//! so JPEG pixels are bit-exact with PIL. Everything else goes through image-rs, whose
//! lossless decoders give the same pixels as PIL's. Mode handling follows PIL to the
//! integer (`color.rs`).

mod color;
mod jpeg;
mod source;

use image::metadata::Orientation;

pub use color::AlphaMode;
pub use source::read_file;
pub(crate) use color::rgba_to_rgb;

use crate::error::{Error, Result};

/// Default pixel cap: twice Pillow's `MAX_IMAGE_PIXELS` (89,478,485), where Pillow raises.
pub const DEFAULT_MAX_PIXELS: u64 = 2 * 89_478_485;
/// libjpeg-turbo's own default scan limit for TurboJPEG: no real progressive file has more.
pub const DEFAULT_MAX_SCANS: u32 = 500;

/// A packed 8-bit RGB image (`height` rows of `width * 3` bytes).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RgbImage {
    pub width: usize,
    pub height: usize,
    pub data: Vec<u8>,
}

impl RgbImage {
    #[must_use]
    pub fn row(&self, y: usize) -> &[u8] {
        &self.data[y * self.width * 3..(y + 1) * self.width * 3]
    }
}

/// How to turn encoded bytes into RGB.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct DecodeOptions {
    /// Apply the EXIF orientation tag (what `ImageOps.exif_transpose` does).
    pub apply_exif_orientation: bool,
    pub alpha: AlphaMode,
    pub max_pixels: u64,
    pub max_scans: u32,
}

impl Default for DecodeOptions {
    fn default() -> Self {
        Self {
            apply_exif_orientation: true,
            alpha: AlphaMode::White,
            max_pixels: DEFAULT_MAX_PIXELS,
            max_scans: DEFAULT_MAX_SCANS,
        }
    }
}

/// Image container formats recognised from their first bytes (never from a file name).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    Jpeg,
    Png,
    Gif,
    WebP,
    Bmp,
    Tiff,
}

/// Identify the format from magic bytes.
#[must_use]
pub fn sniff_format(data: &[u8]) -> Option<Format> {
    match data {
        [0xFF, 0xD8, 0xFF, ..] => Some(Format::Jpeg),
        [0x89, b'P', b'N', b'G', 0x0D, 0x0A, 0x1A, 0x0A, ..] => Some(Format::Png),
        [b'G', b'I', b'F', b'8', b'7' | b'9', b'a', ..] => Some(Format::Gif),
        [b'R', b'I', b'F', b'F', _, _, _, _, b'W', b'E', b'B', b'P', ..] => Some(Format::WebP),
        [b'B', b'M', ..] => Some(Format::Bmp),
        [b'I', b'I', 42, 0, ..] | [b'M', b'M', 0, 42, ..] => Some(Format::Tiff),
        _ => None,
    }
}

/// Chooses the libjpeg DCT scale denominator (1, 2, 4 or 8) from the full image size.
/// `None` means decode at full size (the exact path).
pub type ScaleChooser<'a> = Option<&'a dyn Fn(usize, usize) -> u32>;

/// A decoded image and the size it has at full resolution (after EXIF orientation), which
/// differs from `image`'s only when fast mode decoded a JPEG at reduced scale.
#[derive(Debug, Clone)]
pub struct Decoded {
    pub image: RgbImage,
    pub full_width: usize,
    pub full_height: usize,
}

/// Whether an orientation swaps width and height.
#[must_use]
pub fn swaps_axes(o: Orientation) -> bool {
    matches!(
        o,
        Orientation::Rotate90 | Orientation::Rotate270 | Orientation::Rotate90FlipH | Orientation::Rotate270FlipH
    )
}

/// Decode an encoded image to RGB8, honouring `opts`.
///
/// `scale` only affects JPEG: it lets fast mode decode at 1/2, 1/4 or 1/8 size in the DCT domain.
pub fn decode(data: &[u8], opts: &DecodeOptions, scale: ScaleChooser<'_>) -> Result<Decoded> {
    if data.is_empty() {
        return Err(Error::Decode("empty input (0 bytes)".into()));
    }
    let format = sniff_format(data).ok_or_else(|| {
        Error::Unsupported(format!(
            "unrecognised format (first bytes {})",
            hex_prefix(data)
        ))
    })?;
    let (image, orientation, (full_w, full_h)) = match format {
        Format::Jpeg => jpeg::decode_jpeg(data, opts, scale)?,
        other => {
            let (img, o) = color::decode_with_image_rs(data, other, opts)?;
            let dims = (img.width, img.height);
            (img, o, dims)
        }
    };
    let (image, full_width, full_height) = match orientation {
        Some(o) if opts.apply_exif_orientation && o != Orientation::NoTransforms => {
            let (fw, fh) = if swaps_axes(o) { (full_h, full_w) } else { (full_w, full_h) };
            (apply_orientation(image, o), fw, fh)
        }
        _ => (image, full_w, full_h),
    };
    Ok(Decoded { image, full_width, full_height })
}

fn hex_prefix(data: &[u8]) -> String {
    data.iter().take(8).map(|b| format!("{b:02x}")).collect::<Vec<_>>().join(" ")
}

/// Rotate/flip as PIL's `exif_transpose` does for orientations 2..8.
#[must_use]
pub fn apply_orientation(image: RgbImage, orientation: Orientation) -> RgbImage {
    let buf = image::RgbImage::from_raw(image.width as u32, image.height as u32, image.data)
        .expect("buffer length matches dimensions");
    let mut dynamic = image::DynamicImage::ImageRgb8(buf);
    dynamic.apply_orientation(orientation);
    let out = dynamic.into_rgb8();
    RgbImage { width: out.width() as usize, height: out.height() as usize, data: out.into_raw() }
}

/// Decoded size check done from the header, before any pixel buffer exists.
pub(crate) fn check_pixels(width: u64, height: u64, max_pixels: u64) -> Result<()> {
    if width == 0 || height == 0 {
        return Err(Error::Decode(format!("invalid image size {width}x{height}")));
    }
    if width.saturating_mul(height) > max_pixels {
        return Err(Error::TooLarge { width, height, max_pixels });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sniffs_formats_from_content() {
        assert_eq!(sniff_format(b"\xFF\xD8\xFF\xE0rest"), Some(Format::Jpeg));
        assert_eq!(sniff_format(b"\x89PNG\r\n\x1a\nxx"), Some(Format::Png));
        assert_eq!(sniff_format(b"GIF89a"), Some(Format::Gif));
        assert_eq!(sniff_format(b"RIFF\0\0\0\0WEBPVP8 "), Some(Format::WebP));
        assert_eq!(sniff_format(b"hello world"), None);
    }

    #[test]
    fn empty_and_garbage_are_errors() {
        let o = DecodeOptions::default();
        assert!(matches!(decode(b"", &o, None), Err(Error::Decode(_))));
        assert!(matches!(decode(b"not an image", &o, None), Err(Error::Unsupported(_))));
    }
}
