//! torchvision's `RandomResizedCrop.get_params`, step for step.
//!
//! Ten attempts: a target area `area * U(scale)` and an aspect ratio `exp(U(log ratio))`
//! give a `w` x `h` box (Python's `round`, ties to even); the first that fits is placed
//! uniformly (`randint` over every valid offset, inclusive). If none fits, the fallback is
//! torchvision's central crop: the whole image, narrowed to the nearest ratio in range.
//!
//! The procedure, and so the distribution of boxes, is torchvision's; the draws come from
//! `SampleRng` (in float64) rather than torch's generator (which draws the two uniforms
//! in float32), so individual boxes differ from torch's for the same seed.

use super::rng::SampleRng;
use crate::decode::Rect;
use crate::error::{Error, Result};

/// `scale` and `ratio` of `RandomResizedCrop`, checked.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct CropParams {
    pub scale: (f64, f64),
    pub ratio: (f64, f64),
}

impl CropParams {
    pub fn new(scale: (f64, f64), ratio: (f64, f64)) -> Result<Self> {
        let ok = |(lo, hi): (f64, f64)| lo.is_finite() && hi.is_finite() && lo > 0.0 && lo <= hi;
        if !ok(scale) {
            return Err(Error::InvalidArgument(format!("scale must satisfy 0 < min <= max, got {scale:?}")));
        }
        if !ok(ratio) {
            return Err(Error::InvalidArgument(format!("ratio must satisfy 0 < min <= max, got {ratio:?}")));
        }
        Ok(Self { scale, ratio })
    }
}

/// Python's `int(round(x))` for a non-negative float.
fn py_round(x: f64) -> usize {
    x.round_ties_even() as usize
}

/// The crop box `(x0, y0, x1, y1)` of a `width` x `height` image.
pub fn sample_box(width: usize, height: usize, p: &CropParams, rng: &mut SampleRng) -> Rect {
    let area = (width * height) as f64;
    let (log_lo, log_hi) = (p.ratio.0.ln(), p.ratio.1.ln());
    for _ in 0..10 {
        let target_area = area * rng.uniform_in(p.scale.0, p.scale.1);
        let aspect = rng.uniform_in(log_lo, log_hi).exp();
        let w = py_round((target_area * aspect).sqrt());
        let h = py_round((target_area / aspect).sqrt());
        if 0 < w && w <= width && 0 < h && h <= height {
            let i = rng.below((height - h + 1) as u64) as usize;
            let j = rng.below((width - w + 1) as u64) as usize;
            return Rect { x0: j, y0: i, x1: j + w, y1: i + h };
        }
    }
    let in_ratio = width as f64 / height as f64;
    let (w, h) = if in_ratio < p.ratio.0 {
        (width, py_round(width as f64 / p.ratio.0))
    } else if in_ratio > p.ratio.1 {
        (py_round(height as f64 * p.ratio.1), height)
    } else {
        (width, height)
    };
    // A 1-pixel side can round to 0 (torchvision would then crop nothing and fail in
    // resize); keep at least one pixel.
    let (w, h) = (w.clamp(1, width), h.clamp(1, height));
    let (i, j) = ((height - h) / 2, (width - w) / 2);
    Rect { x0: j, y0: i, x1: j + w, y1: i + h }
}

#[cfg(test)]
mod tests {
    use super::super::rng::Stream;
    use super::*;

    fn params() -> CropParams {
        CropParams::new((0.08, 1.0), (3.0 / 4.0, 4.0 / 3.0)).unwrap()
    }

    #[test]
    fn boxes_lie_inside_the_image_and_respect_the_ranges() {
        for (w, h) in [(640, 480), (1, 1), (3, 500), (500, 3), (224, 224)] {
            for i in 0..2000 {
                let b = sample_box(w, h, &params(), &mut SampleRng::new(0, 0, i, Stream::CropBox));
                assert!(b.x0 < b.x1 && b.x1 <= w && b.y0 < b.y1 && b.y1 <= h, "{w}x{h}: {b:?}");
            }
        }
    }

    #[test]
    fn elongated_images_take_the_central_fallback() {
        // 1000x10: no box of area >= 0.08 * 10^4 with ratio <= 4/3 fits 10 rows... except
        // small ones; with scale (0.9, 1) none fits, so the fallback always runs.
        let p = CropParams::new((0.9, 1.0), (3.0 / 4.0, 4.0 / 3.0)).unwrap();
        let b = sample_box(1000, 10, &p, &mut SampleRng::new(0, 0, 0, Stream::CropBox));
        // h = 10, w = round(10 * 4/3) = 13, centred: j = (1000 - 13) // 2.
        assert_eq!(b, Rect { x0: 493, y0: 0, x1: 506, y1: 10 });
        let b = sample_box(10, 1000, &p, &mut SampleRng::new(0, 0, 0, Stream::CropBox));
        // w = 10, h = round(10 / 0.75) = 13.
        assert_eq!(b, Rect { x0: 0, y0: 493, x1: 10, y1: 506 });
        let b = sample_box(100, 100, &CropParams::new((1.0, 1.0), (2.0, 3.0)).unwrap(), &mut SampleRng::new(0, 0, 0, Stream::CropBox));
        assert_eq!(b, Rect { x0: 0, y0: 25, x1: 100, y1: 75 });
    }

    #[test]
    fn rounding_is_pythons() {
        assert_eq!(py_round(2.5), 2);
        assert_eq!(py_round(3.5), 4);
        assert_eq!(py_round(0.5), 0);
        assert_eq!(py_round(2.4999), 2);
    }

    #[test]
    fn bad_ranges_are_rejected() {
        assert!(CropParams::new((0.5, 0.1), (0.75, 1.33)).is_err());
        assert!(CropParams::new((0.0, 1.0), (0.75, 1.33)).is_err());
        assert!(CropParams::new((0.1, 1.0), (1.33, 0.75)).is_err());
        assert!(CropParams::new((0.1, 1.0), (f64::NAN, 1.0)).is_err());
    }
}
