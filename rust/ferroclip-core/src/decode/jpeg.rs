//! JPEG through libjpeg-turbo (as built by mozjpeg-sys): the decoder PIL uses, with PIL's
//! settings (ISLOW IDCT, fancy upsampling), so the pixels are bit-exact with PIL.
//!
//! libjpeg reports errors through a callback that must not return; ours unwinds (the C
//! code is compiled with `-fexceptions` by mozjpeg-sys' `unwinding` feature) and the
//! unwind is caught right here, so it never crosses into the caller. Warnings that mean
//! "the data is corrupt" are kept with the image (`Decoded::warnings`), since PIL decodes
//! such files as libjpeg leaves them, or promoted to errors under `DecodeOptions::strict`.
//! Truncation ("Premature end of JPEG file") is always an error: PIL feeds libjpeg through
//! a suspending source and raises "image file is truncated" where our in-memory source
//! would pad the rest with grey.

use std::mem;
use std::os::raw::{c_int, c_long, c_ulong};
use std::panic::{catch_unwind, AssertUnwindSafe};

use image::metadata::Orientation;
use mozjpeg_sys as ffi;

use super::color::cmyk_to_rgb;
use super::{check_pixels, stored_rect, DecodeOptions, Decoded, Hints, Rect, RgbImage};
use crate::error::{Error, Result};

/// Pixels kept beyond the requested region on each side (see `run`).
const EDGE_MARGIN: usize = 2;

/// Payload of the unwind raised by our libjpeg error handler.
struct JpegFailure(String);

/// State reachable from the libjpeg callbacks through `client_data`.
struct Ctx {
    max_scans: c_int,
    strict: bool,
    /// Distinct damage warnings and how often each came (libjpeg repeats them per MCU row).
    warnings: Vec<(String, usize)>,
}

/// Warnings kept per image; later distinct ones are counted into the last.
const MAX_WARNINGS: usize = 8;

/// libjpeg warnings that mean the entropy-coded data is damaged.
const DAMAGE_WARNINGS: &[c_int] = &[
    ffi::JWRN_HIT_MARKER as c_int,
    ffi::JWRN_HUFF_BAD_CODE as c_int,
    ffi::JWRN_JPEG_EOF as c_int,
    ffi::JWRN_MUST_RESYNC as c_int,
    ffi::JWRN_NOT_SEQUENTIAL as c_int,
    ffi::JWRN_BOGUS_PROGRESSION as c_int,
    ffi::JWRN_TOO_MUCH_DATA as c_int,
];

unsafe fn format_message(cinfo: &mut ffi::jpeg_common_struct) -> String {
    let err = &*cinfo.err;
    let Some(fmt) = err.format_message else { return format!("libjpeg error {}", err.msg_code) };
    let mut buffer = [0u8; 80];
    // libjpeg writes into the buffer; the binding declares it `&[u8; 80]`.
    let fmt: unsafe extern "C-unwind" fn(&mut ffi::jpeg_common_struct, *mut u8) = mem::transmute(fmt);
    fmt(cinfo, buffer.as_mut_ptr());
    let end = buffer.iter().position(|&c| c == 0).unwrap_or(buffer.len());
    String::from_utf8_lossy(&buffer[..end]).into_owned()
}

unsafe extern "C-unwind" fn error_exit(cinfo: &mut ffi::jpeg_common_struct) {
    let msg = format_message(cinfo);
    std::panic::resume_unwind(Box::new(JpegFailure(msg)));
}

unsafe extern "C-unwind" fn emit_message(cinfo: &mut ffi::jpeg_common_struct, level: c_int) {
    let code = (*cinfo.err).msg_code;
    if level >= 0 || !DAMAGE_WARNINGS.contains(&code) {
        return;
    }
    let msg = format_message(cinfo);
    let ctx = &mut *cinfo.client_data.cast::<Ctx>();
    if ctx.strict || code == ffi::JWRN_JPEG_EOF as c_int {
        std::panic::resume_unwind(Box::new(JpegFailure(msg)));
    }
    if let Some(seen) = ctx.warnings.iter_mut().find(|(m, _)| *m == msg) {
        seen.1 += 1;
    } else if ctx.warnings.len() < MAX_WARNINGS {
        ctx.warnings.push((msg, 1));
    } else if let Some(last) = ctx.warnings.last_mut() {
        last.1 += 1;
    }
}

unsafe extern "C-unwind" fn progress_monitor(cinfo: &mut ffi::jpeg_common_struct) {
    if cinfo.is_decompressor == 0 {
        return;
    }
    let d = &*(cinfo as *mut ffi::jpeg_common_struct as *const ffi::jpeg_decompress_struct);
    let ctx = &*(cinfo.client_data as *const Ctx);
    if d.input_scan_number > ctx.max_scans {
        let msg = format!("more than {} progressive scans (scan bomb)", ctx.max_scans);
        std::panic::resume_unwind(Box::new(JpegFailure(msg)));
    }
}

/// Owns the libjpeg state; destroys it on every exit path.
struct Decompress {
    cinfo: Box<ffi::jpeg_decompress_struct>,
    _err: Box<ffi::jpeg_error_mgr>,
    _progress: Box<ffi::jpeg_progress_mgr>,
    ctx: Box<Ctx>,
}

impl Decompress {
    fn new(max_scans: u32, strict: bool) -> Self {
        unsafe {
            let mut err: Box<ffi::jpeg_error_mgr> = Box::new(mem::zeroed());
            ffi::jpeg_std_error(&mut err);
            err.error_exit = Some(error_exit);
            err.emit_message = Some(emit_message);
            let mut progress: Box<ffi::jpeg_progress_mgr> = Box::new(mem::zeroed());
            progress.progress_monitor = Some(progress_monitor);
            let max_scans = c_int::try_from(max_scans).unwrap_or(c_int::MAX);
            let mut ctx = Box::new(Ctx { max_scans, strict, warnings: Vec::new() });
            let mut cinfo: Box<ffi::jpeg_decompress_struct> = Box::new(mem::zeroed());
            cinfo.common.err = &mut *err;
            ffi::jpeg_create_decompress(&mut *cinfo);
            cinfo.common.progress = &mut *progress;
            cinfo.common.client_data = (&mut *ctx as *mut Ctx).cast();
            Self { cinfo, _err: err, _progress: progress, ctx }
        }
    }
}

impl Drop for Decompress {
    fn drop(&mut self) {
        unsafe { ffi::jpeg_destroy_decompress(&mut self.cinfo) };
    }
}

/// The orientation PIL applies, from the APP1 segments before the first scan (the first
/// `Exif` one, else the last XMP one: `orientation.rs`), read here without letting libjpeg
/// buffer markers (many large APP segments would otherwise all be kept in memory).
fn exif_orientation(data: &[u8]) -> Option<Orientation> {
    const XMP: &[u8] = b"http://ns.adobe.com/xap/1.0/\0";
    let (mut exif, mut xmp) = (None, None);
    let mut pos = 2;
    while pos + 4 <= data.len() {
        if data[pos] != 0xFF {
            break;
        }
        let marker = data[pos + 1];
        if marker == 0xFF {
            pos += 1; // fill byte
            continue;
        }
        if marker == 0xDA || marker == 0xD9 {
            break; // start of scan / end of image: no more metadata
        }
        let len = usize::from(u16::from_be_bytes([data[pos + 2], data[pos + 3]]));
        if len < 2 {
            break;
        }
        let Some(body) = data.get(pos + 4..pos + 2 + len) else { break };
        if marker == 0xE1 && body.starts_with(b"Exif\0\0") && exif.is_none() {
            exif = Some(body);
        } else if marker == 0xE1 && body.starts_with(XMP) {
            xmp = Some(&body[XMP.len()..]);
        }
        pos += 2 + len;
    }
    super::orientation::resolve(exif, xmp)
}

/// Decode in stored orientation; the caller applies the returned EXIF orientation.
pub(super) fn decode_jpeg(
    data: &[u8],
    opts: &DecodeOptions,
    hints: Hints<'_>,
) -> Result<(Decoded, Option<Orientation>)> {
    let orientation = if opts.apply_exif_orientation { exif_orientation(data) } else { None };
    let mut dec = Decompress::new(opts.max_scans, opts.strict);
    let result = catch_unwind(AssertUnwindSafe(|| unsafe { run(&mut dec, data, opts, hints, orientation) }));
    let warnings = std::mem::take(&mut dec.ctx.warnings);
    drop(dec);
    match result {
        Ok(r) => r.map(|mut d| {
            d.warnings = warnings
                .into_iter()
                .map(|(m, n)| if n == 1 { m } else { format!("{m} ({n} times)") })
                .collect();
            (d, orientation)
        }),
        Err(payload) => match payload.downcast::<JpegFailure>() {
            // libjpeg's own size refusals (JERR_IMAGE_TOO_BIG, and the memory cap set in
            // `run`: JERR_OUT_OF_MEMORY, JERR_NO_BACKING_STORE) are bombs, like `TooLarge`.
            Ok(f) if ["Maximum supported image dimension", "Insufficient memory", "Backing store not supported"]
                .iter()
                .any(|m| f.0.starts_with(m)) =>
            {
                Err(Error::DecoderLimit(f.0))
            }
            Ok(f) => Err(Error::Decode(f.0)),
            Err(p) => std::panic::resume_unwind(p),
        },
    }
}

unsafe fn run(
    dec: &mut Decompress,
    data: &[u8],
    opts: &DecodeOptions,
    hints: Hints<'_>,
    orientation: Option<Orientation>,
) -> Result<Decoded> {
    let swap = orientation.is_some_and(super::swaps_axes);
    let cinfo = &mut *dec.cinfo;
    ffi::jpeg_mem_src(cinfo, data.as_ptr(), data.len() as c_ulong);
    ffi::jpeg_read_header(cinfo, 1);
    let (w, h) = (cinfo.image_width as usize, cinfo.image_height as usize);
    check_pixels(w as u64, h as u64, opts.max_pixels)?;
    // Bound libjpeg's own allocations (whole-image coefficient buffers of progressive files).
    let mem_cap = opts.max_pixels.saturating_mul(8).min(c_long::MAX as u64) as c_long;
    (*cinfo.common.mem).max_memory_to_use = mem_cap;

    let cmyk = matches!(cinfo.jpeg_color_space, ffi::J_COLOR_SPACE::JCS_CMYK | ffi::J_COLOR_SPACE::JCS_YCCK);
    let gray = cinfo.jpeg_color_space == ffi::J_COLOR_SPACE::JCS_GRAYSCALE;
    cinfo.out_color_space = if cmyk {
        ffi::J_COLOR_SPACE::JCS_CMYK
    } else if gray {
        ffi::J_COLOR_SPACE::JCS_GRAYSCALE
    } else {
        ffi::J_COLOR_SPACE::JCS_RGB
    };
    cinfo.dct_method = ffi::J_DCT_METHOD::JDCT_ISLOW;
    cinfo.do_fancy_upsampling = 1;
    if let Some(choose) = hints.scale {
        // The chooser reasons about the displayed (EXIF-oriented) size.
        let denom = if swap { choose(h, w) } else { choose(w, h) };
        if matches!(denom, 2 | 4 | 8) {
            cinfo.scale_num = 1;
            cinfo.scale_denom = denom;
        }
    }
    ffi::jpeg_start_decompress(cinfo);
    let (fw, fh) = (cinfo.output_width as usize, cinfo.output_height as usize);
    let want = match hints.region {
        Some(region) => {
            let (full, frame) = if swap { ((h, w), (fh, fw)) } else { ((w, h), (fw, fh)) };
            let r = region(full, frame);
            let r = match orientation {
                Some(o) => stored_rect(o, r, fw, fh),
                None => r,
            };
            if r.is_empty() || r.x1 > fw || r.y1 > fh {
                Rect::whole(fw, fh)
            } else {
                // Fancy upsampling treats the edges of a cropped span like image edges,
                // so the outermost produced columns differ from a full decode: keep them
                // out of what the caller reads.
                Rect {
                    x0: r.x0.saturating_sub(EDGE_MARGIN),
                    y0: r.y0.saturating_sub(EDGE_MARGIN),
                    x1: (r.x1 + EDGE_MARGIN).min(fw),
                    y1: (r.y1 + EDGE_MARGIN).min(fh),
                }
            }
        }
        None => Rect::whole(fw, fh),
    };
    let mut x0 = 0;
    if want.x0 > 0 || want.x1 < fw {
        // libjpeg widens the span to whole iMCU columns; inside the margin the columns
        // it produces are those of a full decode (checked against PIL in the parity tests).
        let (mut xoff, mut width) = (want.x0 as ffi::JDIMENSION, (want.x1 - want.x0) as ffi::JDIMENSION);
        ffi::jpeg_crop_scanline(cinfo, &mut xoff, &mut width);
        x0 = xoff as usize;
    }
    let ow = cinfo.output_width as usize;
    let comps = cinfo.output_components as usize;
    if want.y0 > 0 {
        ffi::jpeg_skip_scanlines(cinfo, want.y0 as ffi::JDIMENSION);
    }
    let rows = want.y1 - want.y0;
    let mut raw = vec![0u8; ow * rows * comps];
    while (cinfo.output_scanline as usize) < want.y1 {
        let y = cinfo.output_scanline as usize - want.y0;
        let mut row = raw[y * ow * comps..].as_mut_ptr();
        ffi::jpeg_read_scanlines(cinfo, &mut row, 1);
    }
    if want.y1 < fh {
        // Skipping up to the last row still entropy-decodes the skipped rows; reading
        // that last row makes libjpeg decode to the end of the data (a skip to the end
        // would stop at once), so corrupt or truncated data below the region is
        // reported exactly as a full decode reports it.
        let rest = (fh - want.y1) as ffi::JDIMENSION;
        if rest > 1 {
            ffi::jpeg_skip_scanlines(cinfo, rest - 1);
        }
        let mut last = vec![0u8; ow * comps];
        let mut row = last.as_mut_ptr();
        ffi::jpeg_read_scanlines(cinfo, &mut row, 1);
    }
    ffi::jpeg_finish_decompress(cinfo);

    let data = match comps {
        3 => raw,
        1 => raw.iter().flat_map(|&g| [g, g, g]).collect(),
        4 => raw
            .chunks_exact(4)
            // PIL reads every 4-channel JPEG as inverted (Adobe) CMYK, then `cmyk2rgb`.
            .flat_map(|p| cmyk_to_rgb(255 - p[0], 255 - p[1], 255 - p[2], 255 - p[3]))
            .collect(),
        n => return Err(Error::Unsupported(format!("JPEG with {n} output components"))),
    };
    Ok(Decoded {
        image: RgbImage { width: ow, height: rows, data },
        placed: Rect { x0, y0: want.y0, x1: x0 + ow, y1: want.y1 },
        frame_width: fw,
        frame_height: fh,
        full_width: w,
        full_height: h,
        warnings: Vec::new(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exif_scan_stops_at_sos_and_survives_garbage() {
        assert_eq!(exif_orientation(b"\xFF\xD8\xFF\xDA\x00\x02"), None);
        assert_eq!(exif_orientation(b"\xFF\xD8\xFF\xE1\xFF\xFF"), None);
        let mut jpeg = b"\xFF\xD8\xFF\xE1".to_vec();
        let tiff = b"MM\x00\x2a\x00\x00\x00\x08\x00\x01\x01\x12\x00\x03\x00\x00\x00\x01\x00\x06\x00\x00\x00\x00\x00\x00";
        let len = (2 + 6 + tiff.len()) as u16;
        jpeg.extend_from_slice(&len.to_be_bytes());
        jpeg.extend_from_slice(b"Exif\0\0");
        jpeg.extend_from_slice(tiff);
        assert_eq!(exif_orientation(&jpeg), Some(Orientation::Rotate90));
    }

    #[test]
    fn xmp_orientation_counts_without_an_exif_tag() {
        let mut jpeg = b"\xFF\xD8".to_vec();
        for xmp in [b"<tiff:Orientation>6<".as_slice(), b"tiff:Orientation=\"3\"".as_slice()] {
            let body = [b"http://ns.adobe.com/xap/1.0/\0".as_slice(), xmp].concat();
            jpeg.extend_from_slice(b"\xFF\xE1");
            jpeg.extend_from_slice(&u16::try_from(body.len() + 2).unwrap().to_be_bytes());
            jpeg.extend_from_slice(&body);
        }
        // PIL keeps the last XMP segment.
        assert_eq!(exif_orientation(&jpeg), Some(Orientation::Rotate180));
        jpeg.extend_from_slice(b"\xFF\xDA\x00\x02");
        assert_eq!(exif_orientation(&jpeg), Some(Orientation::Rotate180));
    }
}
