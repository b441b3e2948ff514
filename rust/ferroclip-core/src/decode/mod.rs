//! Bytes or a path in, an 8-bit RGB image out, the way the reference (PIL + HF
//! `convert_to_rgb` after `ImageOps.exif_transpose`) would see it.
//!
//! JPEG goes through libjpeg-turbo (the mozjpeg build of it), the decoder PIL itself uses,
//! so JPEG pixels are bit-exact with PIL. Everything else goes through image-rs, whose
//! lossless decoders give the same pixels as PIL's, except the BMP variants PIL reads its
//! own way (16-bit, RLE, paletted), which `bmp.rs` decodes as PIL does. HEIF/HEIC goes
//! through libheif (the `heif` feature), the library pillow-heif wraps (`heif.rs`). Mode
//! handling follows PIL to the integer (`color.rs`).

mod bmp;
mod color;
#[cfg(feature = "heif")]
mod heif;
mod jpeg;
mod orientation;
mod source;
mod tiff_layout;
mod tiff_tags;

use image::metadata::Orientation;

pub use color::{AlphaMode, SixteenBit};
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
    /// Refuse recoverable damage (corrupt JPEG entropy data, which libjpeg only warns
    /// about and PIL decodes) instead of decoding it with a warning in `Decoded::warnings`.
    pub strict: bool,
    /// 16-bit grayscale: scaled by its high byte (default) or clipped at 255 as PIL does.
    pub sixteen_bit: SixteenBit,
    /// Read BMP as Pillow 12 and older do (odd RLE4 absolute runs, one-grey palettes;
    /// `bmp.rs`), for a reference on those releases. Off: Pillow 13's rules.
    pub pillow12_bmp: bool,
}

impl Default for DecodeOptions {
    fn default() -> Self {
        Self {
            apply_exif_orientation: true,
            alpha: AlphaMode::White,
            max_pixels: DEFAULT_MAX_PIXELS,
            max_scans: DEFAULT_MAX_SCANS,
            strict: false,
            sixteen_bit: SixteenBit::Scale,
            pillow12_bmp: false,
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
    /// HEIF still images (HEVC-coded HEIC, and the generic `mif1`/`msf1` brands).
    Heif,
}

/// ISO-BMFF major brands of HEIF files (ISO/IEC 23008-12 Annex B, and Apple's `heic`).
const HEIF_BRANDS: [&[u8; 4]; 10] =
    [b"heic", b"heix", b"heim", b"heis", b"hevc", b"hevx", b"hevm", b"hevs", b"mif1", b"msf1"];

/// Whether the crate was built with HEIF decoding (the `heif` feature, which needs libheif).
#[must_use]
pub const fn heif_supported() -> bool {
    cfg!(feature = "heif")
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
        [_, _, _, _, b'f', b't', b'y', b'p', b0, b1, b2, b3, ..] if HEIF_BRANDS.contains(&&[*b0, *b1, *b2, *b3]) => {
            Some(Format::Heif)
        }
        _ => None,
    }
}

/// A half-open pixel rectangle `[x0, x1) x [y0, y1)`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Rect {
    pub x0: usize,
    pub y0: usize,
    pub x1: usize,
    pub y1: usize,
}

impl Rect {
    #[must_use]
    pub fn whole(width: usize, height: usize) -> Self {
        Self { x0: 0, y0: 0, x1: width, y1: height }
    }

    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.x1 <= self.x0 || self.y1 <= self.y0
    }
}

/// Maps (image width, height) and (target width, height) to the region of the image to decode.
pub type RegionFn<'a> = dyn Fn((usize, usize), (usize, usize)) -> Rect + 'a;

/// What the caller will do with the pixels, so the decoder can skip work it would throw
/// away. Only JPEG uses them; other formats are always decoded whole at full size.
#[derive(Clone, Copy, Default)]
pub struct Hints<'a> {
    /// Fast mode: the libjpeg DCT scale denominator (1, 2, 4 or 8) for an image of this
    /// displayed (EXIF-oriented) full size. `None` decodes at full size (the exact path).
    pub scale: Option<&'a dyn Fn(usize, usize) -> u32>,
    /// The part of the decoded frame the caller reads, given the displayed full size and
    /// the displayed frame size (smaller in fast mode). Everything the caller computes
    /// from that part must be the same as from the whole frame: the resize only reads the
    /// columns and rows under its taps, so a centre crop of a wide photo needs ~75% of
    /// its columns, and libjpeg can skip the IDCT, upsampling and colour conversion of
    /// the rest (`jpeg_crop_scanline`, `jpeg_skip_scanlines`) without changing a pixel
    /// of the part it does produce.
    pub region: Option<&'a RegionFn<'a>>,
}

/// A decoded image: `image` covers `placed` of a `frame_width` x `frame_height` frame
/// (the whole frame unless the decoder honoured `Hints::region`), and the image is
/// `full_width` x `full_height` at full resolution (after EXIF orientation), which differs
/// from the frame only when fast mode decoded a JPEG at reduced scale.
#[derive(Debug, Clone)]
pub struct Decoded {
    pub image: RgbImage,
    pub placed: Rect,
    pub frame_width: usize,
    pub frame_height: usize,
    pub full_width: usize,
    pub full_height: usize,
    /// Recoverable damage the decoder worked around (libjpeg's warnings), for the caller
    /// to attach to the item; empty for a clean file.
    pub warnings: Vec<String>,
}

impl Decoded {
    /// A whole image at full resolution.
    #[must_use]
    pub fn whole(image: RgbImage) -> Self {
        let (w, h) = (image.width, image.height);
        Self {
            image,
            placed: Rect::whole(w, h),
            frame_width: w,
            frame_height: h,
            full_width: w,
            full_height: h,
            warnings: Vec::new(),
        }
    }
}

/// Where the pixels of `r`, a rectangle of a stored `w` x `h` image, land once `o` is
/// applied (as `apply_orientation` does it).
#[must_use]
pub fn oriented_rect(o: Orientation, r: Rect, w: usize, h: usize) -> Rect {
    let flip_x = |r: Rect, w: usize| Rect { x0: w - r.x1, x1: w - r.x0, ..r };
    let flip_y = |r: Rect, h: usize| Rect { y0: h - r.y1, y1: h - r.y0, ..r };
    let transpose = |r: Rect| Rect { x0: r.y0, x1: r.y1, y0: r.x0, y1: r.x1 };
    match o {
        Orientation::NoTransforms => r,
        Orientation::FlipHorizontal => flip_x(r, w),
        Orientation::FlipVertical => flip_y(r, h),
        Orientation::Rotate180 => flip_y(flip_x(r, w), h),
        // Displayed (x, y) = (h - 1 - y_s, x_s): transpose, then mirror the new x (width h).
        Orientation::Rotate90 => flip_x(transpose(r), h),
        // Displayed (x, y) = (y_s, w - 1 - x_s).
        Orientation::Rotate270 => flip_y(transpose(r), w),
        // EXIF 5, the transpose.
        Orientation::Rotate90FlipH => transpose(r),
        // EXIF 7, the transverse.
        Orientation::Rotate270FlipH => flip_y(flip_x(transpose(r), h), w),
    }
}

/// The inverse of `oriented_rect`: the stored rectangle whose pixels display as `r`
/// (`w` x `h` is the stored size).
#[must_use]
pub fn stored_rect(o: Orientation, r: Rect, w: usize, h: usize) -> Rect {
    let inverse = match o {
        Orientation::Rotate90 => Orientation::Rotate270,
        Orientation::Rotate270 => Orientation::Rotate90,
        other => other,
    };
    let (dw, dh) = if swaps_axes(o) { (h, w) } else { (w, h) };
    oriented_rect(inverse, r, dw, dh)
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
/// `hints` only affect JPEG (see `Hints`); the pixels produced are the same either way.
pub fn decode(data: &[u8], opts: &DecodeOptions, hints: Hints<'_>) -> Result<Decoded> {
    if data.is_empty() {
        return Err(Error::Decode("empty input (0 bytes)".into()));
    }
    let format = sniff_format(data).ok_or_else(|| {
        Error::Unsupported(format!(
            "unrecognised format (first bytes {})",
            hex_prefix(data)
        ))
    })?;
    let stored = match format {
        Format::Jpeg => jpeg::decode_jpeg(data, opts, hints)?,
        // The HEIF transforms are applied by libheif and the EXIF tag is not read (heif.rs).
        #[cfg(feature = "heif")]
        Format::Heif => (Decoded::whole(heif::decode_heif(data, opts)?), None),
        #[cfg(not(feature = "heif"))]
        Format::Heif => {
            return Err(Error::Unsupported(
                "HEIF/HEIC: this build of ferroclip has no HEIF decoder (built without the `heif` \
                 feature; install libheif and rebuild with it)"
                    .into(),
            ))
        }
        Format::Bmp => match bmp::decode(data, opts)? {
            Some(img) => (Decoded::whole(img), None),
            None => {
                let (img, o) = color::decode_with_image_rs(data, Format::Bmp, opts)?;
                (Decoded::whole(img), o)
            }
        },
        other => {
            let (img, o) = color::decode_with_image_rs(data, other, opts)?;
            (Decoded::whole(img), o)
        }
    };
    Ok(match stored {
        (d, Some(o)) if opts.apply_exif_orientation && o != Orientation::NoTransforms => {
            let swap = swaps_axes(o);
            let placed = oriented_rect(o, d.placed, d.frame_width, d.frame_height);
            let (frame_width, frame_height) = if swap { (d.frame_height, d.frame_width) } else { (d.frame_width, d.frame_height) };
            let (full_width, full_height) = if swap { (d.full_height, d.full_width) } else { (d.full_width, d.full_height) };
            let image = apply_orientation(d.image, o);
            Decoded { image, placed, frame_width, frame_height, full_width, full_height, warnings: d.warnings }
        }
        (d, _) => d,
    })
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
        assert_eq!(sniff_format(b"\0\0\0\x18ftypheic\0\0\0\0mif1heic"), Some(Format::Heif));
        assert_eq!(sniff_format(b"\0\0\0\x18ftypmif1\0\0\0\0mif1heic"), Some(Format::Heif));
        // Other ISO-BMFF files (MP4 video, AVIF) are not HEIF stills.
        assert_eq!(sniff_format(b"\0\0\0\x18ftypisom\0\0\x02\0isomiso2"), None);
        assert_eq!(sniff_format(b"\0\0\0\x1cftypavif\0\0\0\0avifmif1"), None);
        assert_eq!(sniff_format(b"hello world"), None);
    }

    #[test]
    fn empty_and_garbage_are_errors() {
        let o = DecodeOptions::default();
        assert!(matches!(decode(b"", &o, Hints::default()), Err(Error::Decode(_))));
        assert!(matches!(decode(b"not an image", &o, Hints::default()), Err(Error::Unsupported(_))));
    }

    /// A truncated or damaged HEIF is a `Decode` error from libheif, never a panic.
    #[cfg(feature = "heif")]
    #[test]
    fn broken_heif_is_a_decode_error() {
        let o = DecodeOptions::default();
        let header: &[u8] = b"\0\0\0\x18ftypheic\0\0\0\0mif1heic";
        let mut long = header.to_vec();
        long.extend_from_slice(&[0u8; 64]);
        for data in [header, &long[..]] {
            match decode(data, &o, Hints::default()) {
                Err(Error::Decode(m)) => assert!(m.starts_with("HEIF: "), "{m}"),
                other => panic!("{other:?}"),
            }
        }
    }

    /// Built without libheif, HEIF input is recognised and refused, naming the feature.
    #[cfg(not(feature = "heif"))]
    #[test]
    fn heif_without_the_feature_is_unsupported() {
        let data = b"\0\0\0\x18ftypheic\0\0\0\0mif1heic";
        match decode(data, &DecodeOptions::default(), Hints::default()) {
            Err(Error::Unsupported(m)) => assert!(m.contains("`heif` feature"), "{m}"),
            other => panic!("{other:?}"),
        }
        assert!(!heif_supported());
    }

    /// `oriented_rect` against `apply_orientation` itself: every pixel of a stored
    /// rectangle (marked) must land inside the predicted rectangle, which it fills.
    #[test]
    fn rects_follow_apply_orientation() {
        let (w, h) = (7usize, 5usize);
        let r = Rect { x0: 1, y0: 2, x1: 5, y1: 4 };
        for o in [
            Orientation::NoTransforms,
            Orientation::FlipHorizontal,
            Orientation::FlipVertical,
            Orientation::Rotate180,
            Orientation::Rotate90,
            Orientation::Rotate270,
            Orientation::Rotate90FlipH,
            Orientation::Rotate270FlipH,
        ] {
            let mut data = vec![0u8; w * h * 3];
            for y in r.y0..r.y1 {
                for x in r.x0..r.x1 {
                    data[(y * w + x) * 3] = 1;
                }
            }
            let out = apply_orientation(RgbImage { width: w, height: h, data }, o);
            let got = oriented_rect(o, r, w, h);
            for y in 0..out.height {
                for x in 0..out.width {
                    let inside = (got.x0..got.x1).contains(&x) && (got.y0..got.y1).contains(&y);
                    assert_eq!(out.data[(y * out.width + x) * 3] == 1, inside, "{o:?} at {x},{y}: {got:?}");
                }
            }
            assert_eq!(stored_rect(o, got, w, h), r, "{o:?}");
        }
    }
}
