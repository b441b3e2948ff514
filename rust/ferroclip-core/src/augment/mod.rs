//! Training augmentation fused into decode -> resize -> normalise: torchvision's
//! `RandomResizedCrop` + `RandomHorizontalFlip` + `ColorJitter` + `RandomGrayscale` on PIL
//! images, then the model's normalisation, for any output size.
//!
//! The crop box is drawn first, from the image's header size alone, so the decoder is
//! asked only for the pixels under the box's resize taps (`Hints::region`) and the resize
//! computes only the output. The crop and resize together are one
//! `Image.resize(size, filter, box=box)`, byte for byte; torchvision's PIL path instead
//! crops first (`img.crop(box).resize(size)`), which differs from it only within a
//! kernel's reach of the box edges, where `resize(box=)` reads the real neighbours and
//! the cropped image repeats its border.
//!
//! Every random decision of sample `index` in `epoch` comes from `rng::SampleRng`, a
//! function of `(seed, epoch, index)` only: the output does not depend on the thread
//! count, the batch a sample is in, or its position there.
//!
//! Order per sample: crop+resize, flip, colour jitter (its enabled ops in a random order,
//! as `ColorJitter`), grayscale, normalise.

mod color;
mod crop_box;
mod rng;

use std::cell::RefCell;

pub use crop_box::{sample_box, CropParams};
pub use rng::{SampleRng, Stream};

use crate::batch::{run_items, BatchReport};
use crate::decode::{self, DecodeOptions, Decoded, Hints, Rect};
use crate::error::{Error, Result};
use crate::geometry::{Layout, Span};
use crate::normalize::{write_chw, Lut, NormalizeSpec, OutElem};
use crate::pipeline::{array_part_to_rgb, Source};
use crate::resize::{self, box_source_window, resize_box, Filter, PassOrder};

/// `ColorJitter`'s ranges, as torchvision resolves them: factors are drawn uniformly from
/// each range; `None` leaves that op out (torchvision's `None` for a zero argument).
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct ColorJitter {
    pub brightness: Option<(f64, f64)>,
    pub contrast: Option<(f64, f64)>,
    pub saturation: Option<(f64, f64)>,
    pub hue: Option<(f64, f64)>,
}

impl ColorJitter {
    /// torchvision's `ColorJitter(brightness, contrast, saturation, hue)` with scalar
    /// arguments: `[max(0, 1 - v), 1 + v]` for the first three, `[-v, v]` for hue
    /// (`v <= 0.5`); zero disables an op.
    pub fn from_strengths(brightness: f64, contrast: f64, saturation: f64, hue: f64) -> Result<Self> {
        let around_one = |v: f64, name: &str| -> Result<Option<(f64, f64)>> {
            if !(v.is_finite() && v >= 0.0) {
                return Err(Error::InvalidArgument(format!("color_jitter {name} must be a finite value >= 0, got {v}")));
            }
            Ok((v > 0.0).then(|| ((1.0 - v).max(0.0), 1.0 + v)))
        };
        if !(hue.is_finite() && (0.0..=0.5).contains(&hue)) {
            return Err(Error::InvalidArgument(format!("color_jitter hue must be in [0, 0.5], got {hue}")));
        }
        Ok(Self {
            brightness: around_one(brightness, "brightness")?,
            contrast: around_one(contrast, "contrast")?,
            saturation: around_one(saturation, "saturation")?,
            hue: (hue > 0.0).then_some((-hue, hue)),
        })
    }

    fn is_off(&self) -> bool {
        *self == Self::default()
    }
}

/// One photometric op with its drawn factor.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum ColorOp {
    Brightness(f64),
    Contrast(f64),
    Saturation(f64),
    Hue(f64),
}

impl ColorOp {
    fn apply(self, pixels: &mut [u8]) {
        match self {
            ColorOp::Brightness(f) => color::brightness(pixels, f),
            ColorOp::Contrast(f) => color::contrast(pixels, f),
            ColorOp::Saturation(f) => color::saturation(pixels, f),
            ColorOp::Hue(f) => color::hue(pixels, f),
        }
    }
}

/// Everything random about one sample, drawn before any pixel is touched.
#[derive(Debug, Clone, PartialEq)]
pub struct SampleParams {
    /// Crop box in the (EXIF-oriented) image, `x1`/`y1` exclusive.
    pub crop: Rect,
    pub flip: bool,
    /// Enabled jitter ops in the order they are applied.
    pub jitter: Vec<ColorOp>,
    pub grayscale: bool,
}

/// Which sample of which epoch: the coordinates its randomness is a function of.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SampleKey {
    pub epoch: u64,
    pub index: u64,
}

/// The augmentation and the preprocessing it feeds.
#[derive(Debug, Clone)]
pub struct AugmentSpec {
    pub crop: CropParams,
    /// Probability of a horizontal flip.
    pub hflip: f64,
    pub jitter: ColorJitter,
    /// Probability of converting to grayscale.
    pub grayscale: f64,
    pub seed: u64,
    pub filter: Filter,
    pub pass_order: PassOrder,
    pub normalize: NormalizeSpec,
    pub decode: DecodeOptions,
    pub max_file_bytes: u64,
    lut: Lut,
}

impl AugmentSpec {
    /// Build and validate a spec.
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        crop: CropParams,
        hflip: f64,
        jitter: ColorJitter,
        grayscale: f64,
        seed: u64,
        filter: Filter,
        pass_order: PassOrder,
        normalize: NormalizeSpec,
        decode: DecodeOptions,
        max_file_bytes: u64,
    ) -> Result<Self> {
        for (name, p) in [("hflip", hflip), ("grayscale", grayscale)] {
            if !(0.0..=1.0).contains(&p) {
                return Err(Error::InvalidArgument(format!("{name} probability must be in [0, 1], got {p}")));
            }
        }
        normalize.validate()?;
        if decode.max_pixels == 0 {
            return Err(Error::InvalidArgument("max_pixels must be positive".into()));
        }
        let lut = Lut::new(&normalize);
        Ok(Self { crop, hflip, jitter, grayscale, seed, filter, pass_order, normalize, decode, max_file_bytes, lut })
    }

    fn rng(&self, key: SampleKey, stream: Stream) -> SampleRng {
        SampleRng::new(self.seed, key.epoch, key.index, stream)
    }

    /// The crop box of sample `key` of a `width` x `height` image.
    #[must_use]
    pub fn crop_box(&self, width: usize, height: usize, key: SampleKey) -> Rect {
        sample_box(width, height, &self.crop, &mut self.rng(key, Stream::CropBox))
    }

    /// Every random decision for sample `key` of a `width` x `height` image.
    #[must_use]
    pub fn params(&self, width: usize, height: usize, key: SampleKey) -> SampleParams {
        // `rand() < p`, as torchvision's RandomHorizontalFlip / RandomGrayscale.
        let coin = |p: f64, stream| p > 0.0 && self.rng(key, stream).uniform() < p;
        let mut jitter = Vec::new();
        if !self.jitter.is_off() {
            let mut rng = self.rng(key, Stream::Jitter);
            // `torch.randperm(4)`: a uniform permutation (Fisher-Yates), then the factors.
            let mut order = [0usize, 1, 2, 3];
            for i in (1..4).rev() {
                order.swap(i, rng.below(i as u64 + 1) as usize);
            }
            let j = &self.jitter;
            let mut draw = |r: Option<(f64, f64)>| r.map(|(lo, hi)| rng.uniform_in(lo, hi));
            let factors = [draw(j.brightness), draw(j.contrast), draw(j.saturation), draw(j.hue)];
            for op in order {
                if let Some(f) = factors[op] {
                    jitter.push([ColorOp::Brightness, ColorOp::Contrast, ColorOp::Saturation, ColorOp::Hue][op](f));
                }
            }
        }
        SampleParams {
            crop: self.crop_box(width, height, key),
            flip: coin(self.hflip, Stream::Flip),
            jitter,
            grayscale: coin(self.grayscale, Stream::Grayscale),
        }
    }
}

thread_local! {
    /// Per-thread scratch for the resized output, reused across samples.
    static WINDOW: RefCell<Vec<u8>> = const { RefCell::new(Vec::new()) };
}

/// Decode `source`, asking only for the part under the taps of its crop box's resize to
/// `out_w` x `out_h`.
fn load(source: &Source<'_>, spec: &AugmentSpec, key: SampleKey, out_w: usize, out_h: usize) -> Result<Decoded> {
    let region = |full: (usize, usize), frame: (usize, usize)| -> Rect {
        let whole = Rect::whole(frame.0, frame.1);
        if full != frame {
            return whole; // never asked for (no DCT scaling here); be safe anyway
        }
        let bx = spec.crop_box(full.0, full.1, key);
        let (xs, ys) = (Span { src: 0, dst: 0, len: out_w }, Span { src: 0, dst: 0, len: out_h });
        box_source_window(frame.0, frame.1, bx, out_w, out_h, xs, ys, spec.filter).unwrap_or(whole)
    };
    let hints = Hints { scale: None, region: Some(&region) };
    match *source {
        Source::Path(p) => decode::decode(&decode::read_file(p, spec.max_file_bytes)?, &spec.decode, hints),
        Source::Bytes(b) => decode::decode(b, &spec.decode, hints),
        Source::Array { data, height, width, channels } => {
            let part = if height == 0 || width == 0 { Rect::whole(width, height) } else { region((width, height), (width, height)) };
            array_part_to_rgb(data, height, width, channels, spec.decode.alpha, part)
        }
    }
}

/// Augment one source into `out` (`3 * out_h * out_w` values, CHW); returns the decoder's
/// warnings.
pub fn augment_one<T: OutElem>(
    source: &Source<'_>,
    spec: &AugmentSpec,
    key: SampleKey,
    (out_h, out_w): (usize, usize),
    out: &mut [T],
) -> Result<Vec<String>> {
    if out.len() != 3 * out_h * out_w {
        return Err(Error::Shape(format!("output slot holds {} values, sample needs 3x{out_h}x{out_w}", out.len())));
    }
    let decoded = load(source, spec, key, out_w, out_h)?;
    let params = spec.params(decoded.full_width, decoded.full_height, key);
    WINDOW.with(|w| -> Result<()> {
        let mut window = w.borrow_mut();
        let src = resize::Source {
            image: &decoded.image,
            placed: decoded.placed,
            frame_w: decoded.frame_width,
            frame_h: decoded.frame_height,
        };
        resize_box(src, params.crop, out_w, out_h, spec.filter, spec.pass_order, &mut window)?;
        if params.flip {
            color::flip_horizontal(&mut window, out_w);
        }
        for op in &params.jitter {
            op.apply(&mut window);
        }
        if params.grayscale {
            color::grayscale(&mut window);
        }
        let all = |n| Span { src: 0, dst: 0, len: n };
        let layout = Layout { resized_w: out_w, resized_h: out_h, out_w, out_h, x: all(out_w), y: all(out_h) };
        write_chw(&window, &layout, [0; 3], &spec.lut, out);
        Ok(())
    })?;
    Ok(decoded.warnings)
}

/// Augment `sources[i]` as sample `keys[i]` into row `i` of `out`
/// (`len * 3 * out_h * out_w`), all at one output size (pick a size per batch for
/// multi-resolution training). Failed items are zero rows with an `ItemError`.
pub fn augment_batch<T: OutElem>(
    sources: &[Source<'_>],
    keys: &[SampleKey],
    spec: &AugmentSpec,
    out_hw: (usize, usize),
    out: &mut [T],
    num_threads: Option<usize>,
) -> Result<BatchReport> {
    if keys.len() != sources.len() {
        return Err(Error::InvalidArgument(format!("{} sample keys for {} sources", keys.len(), sources.len())));
    }
    if out_hw.0 == 0 || out_hw.1 == 0 {
        return Err(Error::InvalidArgument(format!("output size must be positive, got {}x{}", out_hw.0, out_hw.1)));
    }
    run_items(sources, 3 * out_hw.0 * out_hw.1, out, num_threads, |i, src, slot| {
        augment_one(src, spec, keys[i], out_hw, slot)
    })
}

#[cfg(test)]
mod tests;
