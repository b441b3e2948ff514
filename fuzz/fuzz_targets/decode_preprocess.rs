//! Bytes in, CLIP-preprocessed pixels or a typed error out: any panic, hang or memory
//! blow-up is a finding. Calls `preprocess_one` directly (not the batch layer, whose
//! `catch_unwind` would turn a panic into an `Internal` error the fuzzer cannot see).
//!
//! The pixel budget is capped far below the library default so one input cannot take
//! more memory than libFuzzer's `-rss_limit_mb` allows; the options (alpha rule, EXIF,
//! fast JPEG mode, strict damage handling) are chosen from the input's length so every path gets inputs.
#![no_main]

use ferroclip_core::decode::{AlphaMode, DecodeOptions};
use ferroclip_core::geometry::{CropRounding, CropSpec, ResizeSpec};
use ferroclip_core::normalize::{NormalizeSpec, Rescale};
use ferroclip_core::pipeline::{preprocess_one, PreprocessSpec, Source};
use ferroclip_core::resize::{Filter, PassOrder};
use ferroclip_core::Error;
use libfuzzer_sys::fuzz_target;

/// 16 Mpx: about 64 MB of RGBA at the decoder, well inside a 2 GB RSS limit.
const FUZZ_MAX_PIXELS: u64 = 1 << 24;
const SIZE: u32 = 32;

fn spec(len: usize) -> PreprocessSpec {
    let decode = DecodeOptions {
        apply_exif_orientation: len % 3 != 0,
        alpha: if len % 2 == 0 { AlphaMode::White } else { AlphaMode::Drop },
        max_pixels: FUZZ_MAX_PIXELS,
        strict: len % 7 == 0,
        ..DecodeOptions::default()
    };
    PreprocessSpec::new(
        ResizeSpec::ShortestEdge(SIZE),
        Some(CropSpec { height: SIZE, width: SIZE, rounding: CropRounding::Floor }),
        Filter::Bicubic,
        PassOrder::default(),
        NormalizeSpec {
            rescale: Rescale::MulF64(1.0 / 255.0),
            mean_std: Some(([0.481_454_66, 0.457_827_5, 0.408_210_73], [0.268_629_54, 0.261_302_58, 0.275_777_11])),
        },
        [0, 0, 0],
        decode,
        len % 5 < 2,
        1 << 26,
    )
    .expect("valid spec")
}

fuzz_target!(|data: &[u8]| {
    let spec = spec(data.len());
    let mut out = vec![0f32; 3 * (SIZE * SIZE) as usize];
    match preprocess_one(&Source::Bytes(data), &spec, &mut out) {
        Ok(_warnings) => assert!(out.iter().all(|v| v.is_finite()), "non-finite output"),
        Err(Error::Internal(m)) => panic!("internal error: {m}"),
        Err(_) => {}
    }
});
