//! uint8 HWC window -> float CHW planes, with the reference's exact float arithmetic.
//!
//! Both references compute `(rescale(v) - mean) / std` in float32 per pixel; there are only
//! 256 possible inputs per channel, so a lookup table built with the very same operations
//! gives bit-identical floats at the cost of one load per sample.

use crate::error::{Error, Result};
use crate::geometry::Layout;

/// How `uint8 -> [0, 1]` is computed; the two references round differently in the last bit.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Rescale {
    /// No rescale: the float value of the byte.
    None,
    /// HF `rescale`: `float32(float64(v) * factor)`.
    MulF64(f64),
    /// torchvision `ToTensor`: `float32(v) / 255` in float32.
    DivF32(f32),
}

#[derive(Debug, Clone, Copy, PartialEq)]
pub struct NormalizeSpec {
    pub rescale: Rescale,
    /// Mean and std per channel; `None` skips normalisation. Cast to float32 as numpy/torch do.
    pub mean_std: Option<([f64; 3], [f64; 3])>,
}

impl NormalizeSpec {
    pub fn validate(&self) -> Result<()> {
        if let Some((mean, std)) = self.mean_std {
            if std.iter().any(|&s| s == 0.0 || !s.is_finite()) || mean.iter().any(|m| !m.is_finite()) {
                return Err(Error::InvalidArgument(format!(
                    "image_std must be finite and non-zero and image_mean finite, got mean={mean:?} std={std:?}"
                )));
            }
        }
        match self.rescale {
            Rescale::MulF64(f) if !f.is_finite() => Err(Error::InvalidArgument("rescale_factor must be finite".into())),
            Rescale::DivF32(d) if d == 0.0 || !d.is_finite() => {
                Err(Error::InvalidArgument("rescale divisor must be finite and non-zero".into()))
            }
            _ => Ok(()),
        }
    }
}

/// Per-channel lookup table: `lut[c][v]` is the output float for byte `v` in channel `c`.
#[derive(Debug, Clone)]
pub struct Lut(pub Box<[[f32; 256]; 3]>);

impl Lut {
    #[must_use]
    pub fn new(spec: &NormalizeSpec) -> Self {
        let mut t = Box::new([[0f32; 256]; 3]);
        for (c, plane) in t.iter_mut().enumerate() {
            for (v, out) in plane.iter_mut().enumerate() {
                let x = match spec.rescale {
                    Rescale::None => v as f32,
                    Rescale::MulF64(f) => (v as f64 * f) as f32,
                    Rescale::DivF32(d) => v as f32 / d,
                };
                *out = match spec.mean_std {
                    Some((mean, std)) => (x - mean[c] as f32) / std[c] as f32,
                    None => x,
                };
            }
        }
        Self(t)
    }
}

/// Output element types (`f32`, `f16`).
pub trait OutElem: Copy + Send + Sync + Default + 'static {
    fn from_f32(v: f32) -> Self;
}
impl OutElem for f32 {
    #[inline]
    fn from_f32(v: f32) -> Self {
        v
    }
}
impl OutElem for half::f16 {
    #[inline]
    fn from_f32(v: f32) -> Self {
        half::f16::from_f32(v)
    }
}

/// Write the CHW output for one image: `window` (packed RGB, `layout.x.len` x `layout.y.len`)
/// at its place, and the padding colour `pad` everywhere else.
pub fn write_chw<T: OutElem>(window: &[u8], layout: &Layout, pad: [u8; 3], lut: &Lut, out: &mut [T]) {
    let (ow, oh) = (layout.out_w, layout.out_h);
    let (xs, ys) = (layout.x, layout.y);
    debug_assert_eq!(out.len(), 3 * ow * oh);
    for (c, plane) in out.chunks_exact_mut(ow * oh).enumerate() {
        let table = &lut.0[c];
        let pad_v = T::from_f32(table[usize::from(pad[c])]);
        let full_window = xs.len == ow && ys.len == oh;
        if !full_window {
            plane.fill(pad_v);
        }
        for wy in 0..ys.len {
            let row = &mut plane[(ys.dst + wy) * ow + xs.dst..(ys.dst + wy) * ow + xs.dst + xs.len];
            let src = &window[wy * xs.len * 3..(wy + 1) * xs.len * 3];
            for (o, px) in row.iter_mut().zip(src.chunks_exact(3)) {
                *o = T::from_f32(table[usize::from(px[c])]);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[allow(clippy::excessive_precision, reason = "CLIP's std exactly as the reference config writes it")]
    #[test]
    fn lut_matches_hf_formula() {
        let spec = NormalizeSpec {
            rescale: Rescale::MulF64(1.0 / 255.0),
            mean_std: Some(([0.48145466, 0.4578275, 0.40821073], [0.26862954, 0.26130258, 0.27577711])),
        };
        let lut = Lut::new(&spec);
        let v = 200u8;
        let x = (f64::from(v) * (1.0 / 255.0)) as f32;
        assert_eq!(lut.0[1][200], (x - 0.4578275f32) / 0.26130258f32);
    }

    #[test]
    fn zero_std_is_rejected() {
        let spec = NormalizeSpec { rescale: Rescale::None, mean_std: Some(([0.0; 3], [1.0, 0.0, 1.0])) };
        assert!(spec.validate().is_err());
    }
}
