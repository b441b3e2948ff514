//! HEIF/HEIC (the iPhone default) through the system libheif, via libheif-rs.
//!
//! The reference for a `.heic` is PIL with `pillow_heif.register_heif_opener()`: libheif
//! decodes the primary image to 8-bit RGB(A) with the file's own geometry (`irot`, `imir`,
//! `clap`) applied, and pillow-heif then resets the EXIF orientation to 1, so
//! `ImageOps.exif_transpose` never rotates a second time. We do the same: libheif applies
//! the HEIF transforms (whatever `apply_exif_orientation` says, as PIL does without
//! `exif_transpose` too) and the EXIF tag is never read.
//!
//! Built only with the `heif` cargo feature; without it `decode` reports HEIF input as
//! unsupported, naming the feature.

use std::sync::OnceLock;

use libheif_rs::{ColorSpace, HeifContext, HeifError, LibHeif, RgbChroma};

use super::color::rgba_to_rgb;
use super::{check_pixels, DecodeOptions, RgbImage};
use crate::error::{Error, Result};

/// `heif_init` once per process (it is reference counted and mutex guarded in libheif, but
/// there is no reason to take that lock per image).
fn lib() -> &'static LibHeif {
    static LIB: OnceLock<LibHeif> = OnceLock::new();
    LIB.get_or_init(LibHeif::new)
}

fn decode_error(e: &HeifError) -> Error {
    Error::Decode(format!("HEIF: {}", e.message))
}

/// Decode the primary image of a HEIF file to packed RGB8.
pub(super) fn decode_heif(data: &[u8], opts: &DecodeOptions) -> Result<RgbImage> {
    let ctx = HeifContext::read_from_bytes(data).map_err(|e| decode_error(&e))?;
    let handle = ctx.primary_image_handle().map_err(|e| decode_error(&e))?;
    // The coded size (`ispe`, before `clap` cropping) is what libheif allocates; check it
    // (and the displayed size) before a single pixel buffer exists.
    let (dw, dh) = (u64::from(handle.width()), u64::from(handle.height()));
    check_pixels(dw, dh, opts.max_pixels)?;
    let (iw, ih) = (handle.ispe_width(), handle.ispe_height());
    if iw > 0 && ih > 0 {
        check_pixels(iw.unsigned_abs().into(), ih.unsigned_abs().into(), opts.max_pixels)?;
    }
    let alpha = handle.has_alpha_channel();
    let chroma = if alpha { RgbChroma::Rgba } else { RgbChroma::Rgb };
    // No `DecodingOptions`: libheif's defaults are what pillow-heif uses (transforms
    // applied), and libheif-rs 0.20 frees the options before the call that reads them
    // (fixed in 1.0.1, which needs libheif 1.17).
    let image = lib().decode(&handle, ColorSpace::Rgb(chroma), None).map_err(|e| decode_error(&e))?;
    let planes = image.planes();
    let plane = planes
        .interleaved
        .ok_or_else(|| Error::Internal("libheif returned no interleaved RGB plane".into()))?;
    let (w, h) = (plane.width as usize, plane.height as usize);
    let channels = if alpha { 4 } else { 3 };
    if plane.storage_bits_per_pixel != 8 * channels as u8 || plane.stride < w * channels {
        return Err(Error::Internal(format!(
            "libheif returned {} bits per pixel with stride {} for a {w}-pixel row",
            plane.storage_bits_per_pixel, plane.stride
        )));
    }
    let mut packed = Vec::with_capacity(w * h * channels);
    for row in plane.data.chunks(plane.stride).take(h) {
        packed.extend_from_slice(&row[..w * channels]);
    }
    if packed.len() != w * h * channels {
        return Err(Error::Internal("libheif returned a short pixel plane".into()));
    }
    let data = if alpha { rgba_to_rgb(&packed, opts.alpha) } else { packed };
    Ok(RgbImage { width: w, height: h, data })
}
