//! Training-augmentation bindings: the frozen spec class, its sampled parameters (for
//! tests and inspection) and the batch call.

use ferroclip_core::augment::{self, AugmentSpec, ColorJitter, ColorOp, CropParams, SampleKey};
use ferroclip_core::decode;
use ferroclip_core::pipeline;
use numpy::PyUntypedArray;
use pyo3::exceptions::PyValueError;
use pyo3::prelude::*;

use crate::errors::{ItemErrorTuple, PyCoreError};
use crate::preprocess::{decode_options, fill_batch, hold, parse_filter, parse_normalize, parse_pass_order, source, ItemWarnings};

#[pyclass(name = "AugmentSpec", module = "ferroclip._native", frozen)]
pub struct PyAugmentSpec {
    inner: AugmentSpec,
}

/// `(x0, y0, x1, y1)`, flipped, grayscale, `[(op, factor), ...]` in applied order.
type ParamsTuple = ((usize, usize, usize, usize), bool, bool, Vec<(&'static str, f64)>);

#[pymethods]
impl PyAugmentSpec {
    #[new]
    #[pyo3(signature = (
        *, scale=(0.08, 1.0), ratio=(3.0/4.0, 4.0/3.0), hflip=0.5, color_jitter=None, grayscale=0.0,
        seed=0, resample="bicubic", pil_version="13", rescale="mul", rescale_factor=1.0/255.0,
        mean=None, std=None, exif_transpose=true, alpha="white",
        max_pixels=decode::DEFAULT_MAX_PIXELS, max_scans=decode::DEFAULT_MAX_SCANS,
        max_file_bytes=pipeline::DEFAULT_MAX_FILE_BYTES, strict=false, sixteen_bit="scale"
    ))]
    #[allow(clippy::too_many_arguments)]
    fn new(
        scale: (f64, f64),
        ratio: (f64, f64),
        hflip: f64,
        color_jitter: Option<(f64, f64, f64, f64)>,
        grayscale: f64,
        seed: u64,
        resample: &str,
        pil_version: &str,
        rescale: &str,
        rescale_factor: f64,
        mean: Option<[f64; 3]>,
        std: Option<[f64; 3]>,
        exif_transpose: bool,
        alpha: &str,
        max_pixels: u64,
        max_scans: u32,
        max_file_bytes: u64,
        strict: bool,
        sixteen_bit: &str,
    ) -> PyResult<Self> {
        let jitter = match color_jitter {
            Some((b, c, s, h)) => ColorJitter::from_strengths(b, c, s, h).map_err(PyCoreError)?,
            None => ColorJitter::default(),
        };
        let decode = decode_options(exif_transpose, alpha, max_pixels, max_scans, strict, sixteen_bit, pil_version)?;
        let inner = AugmentSpec::new(
            CropParams::new(scale, ratio).map_err(PyCoreError)?,
            hflip,
            jitter,
            grayscale,
            seed,
            parse_filter(resample)?,
            parse_pass_order(pil_version)?,
            parse_normalize(rescale, rescale_factor, mean, std)?,
            decode,
            max_file_bytes,
        )
        .map_err(PyCoreError)?;
        Ok(Self { inner })
    }

    /// The random decisions for samples `indices` of `epoch` on a `width` x `height` image.
    fn params(&self, width: usize, height: usize, epoch: u64, indices: Vec<u64>) -> PyResult<Vec<ParamsTuple>> {
        if width == 0 || height == 0 {
            return Err(PyValueError::new_err(format!("image size must be positive, got {width}x{height}")));
        }
        Ok(indices
            .into_iter()
            .map(|index| {
                let p = self.inner.params(width, height, SampleKey { epoch, index });
                let ops = p
                    .jitter
                    .iter()
                    .map(|op| match *op {
                        ColorOp::Brightness(f) => ("brightness", f),
                        ColorOp::Contrast(f) => ("contrast", f),
                        ColorOp::Saturation(f) => ("saturation", f),
                        ColorOp::Hue(f) => ("hue", f),
                    })
                    .collect();
                ((p.crop.x0, p.crop.y0, p.crop.x1, p.crop.y1), p.flip, p.grayscale, ops)
            })
            .collect())
    }

    fn __repr__(&self) -> String {
        format!("AugmentSpec({:?})", self.inner)
    }
}

/// Augment a batch at one output size: `(pixel_values, [(index, path, kind, reason), ...], [(index, [warning, ...]), ...])`.
#[pyfunction]
#[pyo3(signature = (items, spec, *, epoch, indices, size, out=None, dtype="float32", num_threads=None))]
#[allow(clippy::too_many_arguments)]
fn augment_batch<'py>(
    py: Python<'py>,
    items: Vec<Bound<'py, PyAny>>,
    spec: &PyAugmentSpec,
    epoch: u64,
    indices: Vec<u64>,
    size: (usize, usize),
    out: Option<Bound<'py, PyUntypedArray>>,
    dtype: &str,
    num_threads: Option<usize>,
) -> PyResult<(Bound<'py, PyUntypedArray>, Vec<ItemErrorTuple>, ItemWarnings)> {
    if indices.len() != items.len() {
        return Err(PyValueError::new_err(format!("indices has {} entries for {} images", indices.len(), items.len())));
    }
    if size.0 == 0 || size.1 == 0 {
        return Err(PyValueError::new_err(format!("size must be positive, got {size:?}")));
    }
    let held = items.iter().enumerate().map(|(i, it)| hold(i, it)).collect::<PyResult<Vec<_>>>()?;
    let sources = held.iter().enumerate().map(|(i, h)| source(i, h)).collect::<PyResult<Vec<_>>>()?;
    let keys: Vec<SampleKey> = indices.into_iter().map(|index| SampleKey { epoch, index }).collect();
    let spec = &spec.inner;
    let n = sources.len();
    match dtype {
        "float32" => fill_batch::<f32>(py, n, size, out.as_ref(), |s| augment::augment_batch(&sources, &keys, spec, size, s, num_threads)),
        "float16" => fill_batch::<half::f16>(py, n, size, out.as_ref(), |s| {
            augment::augment_batch(&sources, &keys, spec, size, s, num_threads)
        }),
        other => Err(PyValueError::new_err(format!("dtype must be 'float32' or 'float16', got {other:?}"))),
    }
}

pub fn register(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_class::<PyAugmentSpec>()?;
    m.add_function(wrap_pyfunction!(augment_batch, m)?)?;
    Ok(())
}
