//! Output-size and crop arithmetic of the reference pipelines, to the integer.
//!
//! * HF `get_resize_output_image_size(default_to_square=False)`: the short side becomes
//!   `size`, the long side `int(size * long / short)` (truncated, not rounded).
//! * HF `center_crop`: top-left at `(orig - crop) // 2` (floor); a too-small image is
//!   zero-padded with the image placed at `ceil((crop - orig) / 2)`.
//! * torchvision `CenterCrop` / open_clip `CenterCropOrPad`: top-left at
//!   `round((orig - crop) / 2)` (Python's half-to-even), padding at `(crop - orig) // 2`.
//! * open_clip `ResizeKeepRatio(longest=1)`: `round(side / max(h / th, w / tw))`.

use crate::error::{Error, Result};

/// How the decoded image is resized before cropping.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ResizeSpec {
    /// Keep the image size (no resampling).
    None,
    /// Shortest edge to `size`, long edge truncated (HF CLIP, torchvision `Resize(int)`).
    ShortestEdge(u32),
    /// Squash to exactly `height` x `width` (HF SigLIP, MobileCLIP, open_clip `squash`).
    Exact { height: u32, width: u32 },
    /// Fit the longest edge inside `height` x `width`, keeping the aspect ratio (open_clip `longest`).
    Longest { height: u32, width: u32 },
}

/// Which reference's rounding the centre crop follows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CropRounding {
    /// HF `center_crop`.
    Floor,
    /// torchvision / open_clip.
    RoundHalfEven,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CropSpec {
    pub height: u32,
    pub width: u32,
    pub rounding: CropRounding,
}

/// Where the resized image lands in the output canvas: `len` pixels starting at `src` in
/// the resized image go to `dst` in the output; the rest of the output is padding.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Span {
    pub src: usize,
    pub dst: usize,
    pub len: usize,
}

/// The whole geometry of one image: resampled size, output size and the copied window.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Layout {
    pub resized_w: usize,
    pub resized_h: usize,
    pub out_w: usize,
    pub out_h: usize,
    pub x: Span,
    pub y: Span,
}

impl ResizeSpec {
    pub fn validate(&self) -> Result<()> {
        let bad = match *self {
            ResizeSpec::None => false,
            ResizeSpec::ShortestEdge(s) => s == 0,
            ResizeSpec::Exact { height, width } | ResizeSpec::Longest { height, width } => {
                height == 0 || width == 0
            }
        };
        if bad {
            return Err(Error::InvalidArgument(format!("resize size must be positive, got {self:?}")));
        }
        Ok(())
    }
}

/// Python's `round()` of `num / den` for non-negative integers (ties to even).
fn round_half_even_div(num: u64, den: u64) -> u64 {
    let q = num / den;
    let r2 = 2 * (num % den);
    if r2 > den || (r2 == den && q % 2 == 1) {
        q + 1
    } else {
        q
    }
}

/// Size `(width, height)` the decoded image is resampled to.
#[must_use]
pub fn resized_size(w: usize, h: usize, spec: &ResizeSpec) -> (usize, usize) {
    match *spec {
        ResizeSpec::None => (w, h),
        ResizeSpec::ShortestEdge(size) => {
            let size = size as usize;
            let (short, long) = if w <= h { (w, h) } else { (h, w) };
            // Python: int(size * long / short), a correctly rounded float division, truncated.
            let new_long = ((size * long) as f64 / short as f64) as usize;
            if w <= h { (size, new_long) } else { (new_long, size) }
        }
        ResizeSpec::Exact { height, width } => (width as usize, height as usize),
        ResizeSpec::Longest { height, width } => {
            let ratio_h = h as f64 / f64::from(height);
            let ratio_w = w as f64 / f64::from(width);
            let ratio = ratio_h.max(ratio_w);
            let r = |x: usize| {
                let v = x as f64 / ratio;
                // Python round(): half to even on the float value.
                let f = v.floor();
                let diff = v - f;
                let out = if diff > 0.5 || (diff == 0.5 && f % 2.0 == 1.0) { f + 1.0 } else { f };
                out as usize
            };
            (r(w).max(1), r(h).max(1))
        }
    }
    .max_each(1)
}

trait MaxEach {
    fn max_each(self, m: usize) -> Self;
}
impl MaxEach for (usize, usize) {
    fn max_each(self, m: usize) -> Self {
        (self.0.max(m), self.1.max(m))
    }
}

fn crop_span(orig: usize, crop: usize, rounding: CropRounding) -> Span {
    if orig >= crop {
        let off = match rounding {
            CropRounding::Floor => (orig - crop) / 2,
            CropRounding::RoundHalfEven => round_half_even_div((orig - crop) as u64, 2) as usize,
        };
        Span { src: off, dst: 0, len: crop }
    } else {
        let pad = match rounding {
            CropRounding::Floor => (crop - orig).div_ceil(2),
            CropRounding::RoundHalfEven => (crop - orig) / 2,
        };
        Span { src: 0, dst: pad, len: orig }
    }
}

/// Full layout for an image of `w` x `h`.
#[must_use]
pub fn layout(w: usize, h: usize, resize: &ResizeSpec, crop: Option<&CropSpec>) -> Layout {
    let (rw, rh) = resized_size(w, h, resize);
    match crop {
        None => Layout {
            resized_w: rw,
            resized_h: rh,
            out_w: rw,
            out_h: rh,
            x: Span { src: 0, dst: 0, len: rw },
            y: Span { src: 0, dst: 0, len: rh },
        },
        Some(c) => Layout {
            resized_w: rw,
            resized_h: rh,
            out_w: c.width as usize,
            out_h: c.height as usize,
            x: crop_span(rw, c.width as usize, c.rounding),
            y: crop_span(rh, c.height as usize, c.rounding),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shortest_edge_truncates_like_hf() {
        assert_eq!(resized_size(640, 480, &ResizeSpec::ShortestEdge(224)), (298, 224));
        assert_eq!(resized_size(480, 640, &ResizeSpec::ShortestEdge(224)), (224, 298));
        // 224 * 1001 / 1000 = 224.224 -> 224
        assert_eq!(resized_size(1001, 1000, &ResizeSpec::ShortestEdge(224)), (224, 224));
        assert_eq!(resized_size(1, 2000, &ResizeSpec::ShortestEdge(224)), (224, 448_000));
    }

    #[test]
    fn crop_offsets_follow_each_reference() {
        let hf = CropSpec { height: 224, width: 224, rounding: CropRounding::Floor };
        let tv = CropSpec { rounding: CropRounding::RoundHalfEven, ..hf };
        // 227 - 224 = 3: HF floor(1.5) = 1, torchvision round(1.5) = 2.
        assert_eq!(layout(227, 224, &ResizeSpec::None, Some(&hf)).x.src, 1);
        assert_eq!(layout(227, 224, &ResizeSpec::None, Some(&tv)).x.src, 2);
        // 225 - 224 = 1: round(0.5) = 0 (half to even).
        assert_eq!(layout(225, 224, &ResizeSpec::None, Some(&tv)).x.src, 0);
        // Padding: 221 in 224 -> HF puts it at ceil(1.5) = 2, torchvision at 1.
        assert_eq!(layout(221, 224, &ResizeSpec::None, Some(&hf)).x, Span { src: 0, dst: 2, len: 221 });
        assert_eq!(layout(221, 224, &ResizeSpec::None, Some(&tv)).x, Span { src: 0, dst: 1, len: 221 });
    }

    #[test]
    fn longest_keeps_ratio() {
        let spec = ResizeSpec::Longest { height: 224, width: 224 };
        assert_eq!(resized_size(640, 480, &spec), (224, 168));
        assert_eq!(resized_size(100, 50, &spec), (224, 112));
    }

    #[test]
    fn python_round_half_even() {
        assert_eq!(round_half_even_div(1, 2), 0);
        assert_eq!(round_half_even_div(3, 2), 2);
        assert_eq!(round_half_even_div(5, 2), 2);
        assert_eq!(round_half_even_div(7, 2), 4);
    }
}
