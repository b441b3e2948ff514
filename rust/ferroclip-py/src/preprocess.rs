//! Preprocessing bindings: the frozen spec class, the batch call and stage hooks for tests.

use std::path::PathBuf;

use ferroclip_core::decode::{self, AlphaMode, DecodeOptions, SixteenBit};
use ferroclip_core::geometry::{CropRounding, CropSpec, ResizeSpec};
use ferroclip_core::normalize::{NormalizeSpec, OutElem, Rescale};
use ferroclip_core::resize::{resize_box, resize_window, Filter, PassOrder};
use ferroclip_core::{batch, pipeline, PreprocessSpec, Source};
use numpy::ndarray::Array3;
use numpy::{
    Element, IntoPyArray, PyArray3, PyArray4, PyArrayMethods, PyReadonlyArrayDyn, PyReadwriteArray4,
    PyUntypedArray, PyUntypedArrayMethods,
};
use pyo3::exceptions::{PyTypeError, PyValueError};
use pyo3::prelude::*;
use pyo3::types::PyBytes;

use crate::detach::run_detached;
use crate::errors::{item_error_tuple, to_pyerr, ItemErrorTuple, PyCoreError};

#[pyclass(name = "PreprocessSpec", module = "ferroclip._native", frozen)]
pub struct PyPreprocessSpec {
    pub inner: PreprocessSpec,
}

pub(crate) fn parse_filter(s: &str) -> PyResult<Filter> {
    match s {
        "bicubic" => Ok(Filter::Bicubic),
        "bilinear" => Ok(Filter::Bilinear),
        "lanczos" => Ok(Filter::Lanczos),
        _ => Err(PyValueError::new_err(format!("resample must be 'bicubic', 'bilinear' or 'lanczos', got {s:?}"))),
    }
}

/// The Python layer's `pil_version` values (`PreprocessConfig` resolves versions to these).
pub(crate) fn parse_pass_order(s: &str) -> PyResult<PassOrder> {
    match s {
        "12.1" => Ok(PassOrder::HorizontalFirst),
        "12" => Ok(PassOrder::Pillow12),
        "13" => Ok(PassOrder::Pillow13),
        _ => Err(PyValueError::new_err(format!("pil_version must be '12.1', '12' or '13', got {s:?}"))),
    }
}

/// Whether a `pil_version` rule names a Pillow whose BMP reader is 12's (`bmp.rs`).
pub(crate) fn pillow12_bmp(pil_version: &str) -> bool {
    pil_version != "13"
}

pub(crate) fn parse_alpha(s: &str) -> PyResult<AlphaMode> {
    match s {
        "white" => Ok(AlphaMode::White),
        "drop" => Ok(AlphaMode::Drop),
        _ => Err(PyValueError::new_err(format!("alpha must be 'white' or 'drop', got {s:?}"))),
    }
}

pub(crate) fn parse_sixteen_bit(s: &str) -> PyResult<SixteenBit> {
    match s {
        "scale" => Ok(SixteenBit::Scale),
        "clip" => Ok(SixteenBit::Clip),
        _ => Err(PyValueError::new_err(format!("sixteen_bit must be 'scale' or 'clip', got {s:?}"))),
    }
}

/// The decode options every spec binding takes, from its keyword arguments.
pub(crate) fn decode_options(
    exif_transpose: bool,
    alpha: &str,
    max_pixels: u64,
    max_scans: u32,
    strict: bool,
    sixteen_bit: &str,
    pil_version: &str,
) -> PyResult<DecodeOptions> {
    Ok(DecodeOptions {
        apply_exif_orientation: exif_transpose,
        alpha: parse_alpha(alpha)?,
        max_pixels,
        max_scans,
        strict,
        sixteen_bit: parse_sixteen_bit(sixteen_bit)?,
        pillow12_bmp: pillow12_bmp(pil_version),
    })
}

/// A batch's warnings as the Python layer takes them: `[(index, [message, ...]), ...]`.
pub type ItemWarnings = Vec<(usize, Vec<String>)>;

/// `rescale` / `rescale_factor` / `mean` / `std` as the Python layer passes them.
pub(crate) fn parse_normalize(
    rescale: &str,
    rescale_factor: f64,
    mean: Option<[f64; 3]>,
    std: Option<[f64; 3]>,
) -> PyResult<NormalizeSpec> {
    let rescale = match rescale {
        "mul" => Rescale::MulF64(rescale_factor),
        "div255" => Rescale::DivF32(255.0),
        "none" => Rescale::None,
        other => return Err(PyValueError::new_err(format!("rescale must be 'mul', 'div255' or 'none', got {other:?}"))),
    };
    let mean_std = match (mean, std) {
        (Some(m), Some(s)) => Some((m, s)),
        (None, None) => None,
        _ => return Err(PyValueError::new_err("mean and std must be given together")),
    };
    Ok(NormalizeSpec { rescale, mean_std })
}

#[pymethods]
impl PyPreprocessSpec {
    #[new]
    #[pyo3(signature = (
        *, resize_mode, size, crop_size=None, crop_rounding="floor", resample="bicubic", pil_version="13",
        rescale="mul", rescale_factor=1.0/255.0, mean=None, std=None, pad_value=(0, 0, 0),
        exif_transpose=true, alpha="white", max_pixels=decode::DEFAULT_MAX_PIXELS,
        max_scans=decode::DEFAULT_MAX_SCANS, jpeg_draft=false,
        max_file_bytes=pipeline::DEFAULT_MAX_FILE_BYTES, strict=false, sixteen_bit="scale"
    ))]
    #[allow(clippy::too_many_arguments)]
    fn new(
        resize_mode: &str,
        size: (u32, u32),
        crop_size: Option<(u32, u32)>,
        crop_rounding: &str,
        resample: &str,
        pil_version: &str,
        rescale: &str,
        rescale_factor: f64,
        mean: Option<[f64; 3]>,
        std: Option<[f64; 3]>,
        pad_value: (u8, u8, u8),
        exif_transpose: bool,
        alpha: &str,
        max_pixels: u64,
        max_scans: u32,
        jpeg_draft: bool,
        max_file_bytes: u64,
        strict: bool,
        sixteen_bit: &str,
    ) -> PyResult<Self> {
        let (h, w) = size;
        let resize = match resize_mode {
            "none" => ResizeSpec::None,
            "shortest" => {
                if h != w {
                    return Err(PyValueError::new_err("shortest-edge resize takes one size"));
                }
                ResizeSpec::ShortestEdge(h)
            }
            "squash" => ResizeSpec::Exact { height: h, width: w },
            "longest" => ResizeSpec::Longest { height: h, width: w },
            other => {
                return Err(PyValueError::new_err(format!(
                    "resize_mode must be 'shortest', 'squash', 'longest' or 'none', got {other:?}"
                )))
            }
        };
        let rounding = match crop_rounding {
            "floor" => CropRounding::Floor,
            "round" => CropRounding::RoundHalfEven,
            other => return Err(PyValueError::new_err(format!("crop_rounding must be 'floor' or 'round', got {other:?}"))),
        };
        let crop = crop_size.map(|(height, width)| CropSpec { height, width, rounding });
        let decode = decode_options(exif_transpose, alpha, max_pixels, max_scans, strict, sixteen_bit, pil_version)?;
        let inner = PreprocessSpec::new(
            resize,
            crop,
            parse_filter(resample)?,
            parse_pass_order(pil_version)?,
            parse_normalize(rescale, rescale_factor, mean, std)?,
            [pad_value.0, pad_value.1, pad_value.2],
            decode,
            jpeg_draft,
            max_file_bytes,
        )
        .map_err(PyCoreError)?;
        Ok(Self { inner })
    }

    /// (height, width) of each output image.
    fn output_hw(&self) -> PyResult<(usize, usize)> {
        Ok(self.inner.output_hw().map_err(PyCoreError)?)
    }

    fn __repr__(&self) -> String {
        format!("PreprocessSpec({:?})", self.inner)
    }
}

/// Python objects kept alive (and borrowed) while the batch runs without the GIL.
pub(crate) enum Held<'py> {
    Path(PathBuf),
    Bytes(Bound<'py, PyBytes>),
    Array(PyReadonlyArrayDyn<'py, u8>),
}

pub(crate) fn hold<'py>(index: usize, item: &Bound<'py, PyAny>) -> PyResult<Held<'py>> {
    if let Ok(b) = item.cast::<PyBytes>() {
        return Ok(Held::Bytes(b.clone()));
    }
    if let Ok(a) = item.extract::<PyReadonlyArrayDyn<'py, u8>>() {
        if !a.is_c_contiguous() {
            return Err(PyValueError::new_err(format!("item {index}: array must be C-contiguous")));
        }
        return Ok(Held::Array(a));
    }
    item.extract::<PathBuf>().map(Held::Path).map_err(|_| {
        PyTypeError::new_err(format!(
            "item {index}: expected a path, bytes or a uint8 numpy array, got {}",
            item.get_type().name().map_or_else(|_| "?".into(), |n| n.to_string())
        ))
    })
}

pub(crate) fn source<'a>(index: usize, held: &'a Held<'_>) -> PyResult<Source<'a>> {
    Ok(match held {
        Held::Path(p) => Source::Path(p),
        Held::Bytes(b) => Source::Bytes(b.as_bytes()),
        Held::Array(a) => {
            let shape = a.shape();
            let (height, width, channels) = match *shape {
                [h, w] => (h, w, 1),
                [h, w, c] => (h, w, c),
                _ => {
                    return Err(crate::errors::ShapeError::new_err(format!(
                        "item {index}: image array must be HW or HWC, got shape {shape:?}"
                    )))
                }
            };
            let data = a.as_slice().map_err(|e| PyValueError::new_err(format!("item {index}: {e}")))?;
            Source::Array { data, height, width, channels }
        }
    })
}

fn fill<'py, T: OutElem + Element>(
    py: Python<'py>,
    sources: &[Source<'_>],
    spec: &PreprocessSpec,
    out: Option<&Bound<'py, PyUntypedArray>>,
    num_threads: Option<usize>,
) -> PyResult<(Bound<'py, PyUntypedArray>, Vec<ItemErrorTuple>, ItemWarnings)> {
    let hw = spec.output_hw().map_err(PyCoreError)?;
    fill_batch::<T>(py, sources.len(), hw, out, |slice| batch::preprocess_batch(sources, spec, slice, num_threads))
}

/// The `(n, 3, h, w)` output (`out` when given, checked, else a new array) filled by
/// `work` without the GIL: the frame every batch binding shares.
pub(crate) fn fill_batch<'py, T: OutElem + Element>(
    py: Python<'py>,
    n: usize,
    (h, w): (usize, usize),
    out: Option<&Bound<'py, PyUntypedArray>>,
    work: impl Send + FnOnce(&mut [T]) -> ferroclip_core::Result<batch::BatchReport>,
) -> PyResult<(Bound<'py, PyUntypedArray>, Vec<ItemErrorTuple>, ItemWarnings)> {
    let shape = [n, 3, h, w];
    let array: Bound<'py, PyArray4<T>> = match out {
        Some(o) => {
            let a = o.cast::<PyArray4<T>>().map_err(|_| {
                PyTypeError::new_err(format!("out must be a 4-d numpy array of {}", std::any::type_name::<T>()))
            })?;
            if a.shape() != shape {
                return Err(crate::errors::ShapeError::new_err(format!(
                    "out has shape {:?}, expected {shape:?}",
                    a.shape()
                )));
            }
            a.clone()
        }
        None => PyArray4::<T>::zeros(py, shape, false),
    };
    let report = {
        let mut rw: PyReadwriteArray4<'py, T> = array.try_readwrite().map_err(|e| PyValueError::new_err(format!("out: {e}")))?;
        let slice = rw.as_slice_mut().map_err(|_| PyValueError::new_err("out must be C-contiguous"))?;
        run_detached(py, || work(slice))?
    };
    let errors = report.errors.iter().map(item_error_tuple).collect();
    Ok((array.into_any().cast_into::<PyUntypedArray>()?, errors, report.warnings))
}

/// Preprocess a batch: `(pixel_values, [(index, path, kind, reason), ...], [(index, [warning, ...]), ...])`.
#[pyfunction]
#[pyo3(signature = (items, spec, *, out=None, dtype="float32", num_threads=None))]
fn preprocess_batch<'py>(
    py: Python<'py>,
    items: Vec<Bound<'py, PyAny>>,
    spec: &PyPreprocessSpec,
    out: Option<Bound<'py, PyUntypedArray>>,
    dtype: &str,
    num_threads: Option<usize>,
) -> PyResult<(Bound<'py, PyUntypedArray>, Vec<ItemErrorTuple>, ItemWarnings)> {
    let held = items.iter().enumerate().map(|(i, it)| hold(i, it)).collect::<PyResult<Vec<_>>>()?;
    let sources = held.iter().enumerate().map(|(i, h)| source(i, h)).collect::<PyResult<Vec<_>>>()?;
    match dtype {
        "float32" => fill::<f32>(py, &sources, &spec.inner, out.as_ref(), num_threads),
        "float16" => fill::<half::f16>(py, &sources, &spec.inner, out.as_ref(), num_threads),
        other => Err(PyValueError::new_err(format!("dtype must be 'float32' or 'float16', got {other:?}"))),
    }
}

/// Decode one image to RGB8 HWC as the reference sees it (stage hook for parity tests).
#[pyfunction]
#[pyo3(signature = (
    item, *, exif_transpose=true, alpha="white", max_pixels=decode::DEFAULT_MAX_PIXELS, sixteen_bit="scale",
    pil_version="13"
))]
fn decode_image<'py>(
    py: Python<'py>,
    item: Bound<'py, PyAny>,
    exif_transpose: bool,
    alpha: &str,
    max_pixels: u64,
    sixteen_bit: &str,
    pil_version: &str,
) -> PyResult<Bound<'py, PyArray3<u8>>> {
    // Checked as the spec bindings check it: a typo must not quietly pick Pillow 12's BMP reading.
    parse_pass_order(pil_version)?;
    let opts = decode_options(exif_transpose, alpha, max_pixels, decode::DEFAULT_MAX_SCANS, false, sixteen_bit, pil_version)?;
    let held = hold(0, &item)?;
    let (result, path) = match &held {
        Held::Path(p) => {
            let p2 = p.clone();
            let r = py.detach(|| {
                decode::read_file(&p2, pipeline::DEFAULT_MAX_FILE_BYTES).and_then(|b| decode::decode(&b, &opts, decode::Hints::default()))
            });
            (r, Some(p.clone()))
        }
        Held::Bytes(b) => {
            let data = b.as_bytes();
            (py.detach(|| decode::decode(data, &opts, decode::Hints::default())), None)
        }
        Held::Array(_) => return Err(PyTypeError::new_err("decode_image takes a path or bytes")),
    };
    let img = result.map_err(|e| to_pyerr(&e, path.as_deref()))?.image;
    let arr = Array3::from_shape_vec((img.height, img.width, 3), img.data)
        .map_err(|e| PyValueError::new_err(e.to_string()))?;
    Ok(arr.into_pyarray(py))
}

/// Resize an RGB8 HWC array exactly as `PIL.Image.resize`, optionally of an integer
/// `box=(x0, y0, x1, y1)` (stage hook for parity tests).
#[pyfunction]
#[pyo3(signature = (image, width, height, *, resample="bicubic", pil_version="13", r#box=None))]
#[allow(clippy::too_many_arguments)]
fn resize_image<'py>(
    py: Python<'py>,
    image: PyReadonlyArrayDyn<'py, u8>,
    width: usize,
    height: usize,
    resample: &str,
    pil_version: &str,
    r#box: Option<(usize, usize, usize, usize)>,
) -> PyResult<Bound<'py, PyArray3<u8>>> {
    let filter = parse_filter(resample)?;
    let order = parse_pass_order(pil_version)?;
    let shape = image.shape().to_vec();
    let [h, w, 3] = shape[..] else {
        return Err(crate::errors::ShapeError::new_err(format!("image must be HxWx3, got {shape:?}")));
    };
    if width == 0 || height == 0 || h == 0 || w == 0 {
        return Err(PyValueError::new_err("sizes must be positive"));
    }
    let data = image.as_slice().map_err(|_| PyValueError::new_err("image must be C-contiguous"))?.to_vec();
    let src = decode::RgbImage { width: w, height: h, data };
    let xs = ferroclip_core::geometry::Span { src: 0, dst: 0, len: width };
    let ys = ferroclip_core::geometry::Span { src: 0, dst: 0, len: height };
    let mut out = Vec::new();
    match r#box {
        None => run_detached(py, || resize_window(&src, width, height, xs, ys, filter, order, &mut out))?,
        Some((x0, y0, x1, y1)) => {
            let bx = decode::Rect { x0, y0, x1, y1 };
            run_detached(py, || resize_box(ferroclip_core::resize::Source::whole(&src), bx, width, height, filter, order, &mut out))?;
        }
    }
    let arr = Array3::from_shape_vec((height, width, 3), out).map_err(|e| PyValueError::new_err(e.to_string()))?;
    Ok(arr.into_pyarray(py))
}

/// Threads a call will use when `num_threads` is None.
#[pyfunction]
#[pyo3(signature = (num_threads=None))]
fn resolve_num_threads(num_threads: Option<usize>) -> usize {
    batch::resolve_num_threads(num_threads)
}

pub fn register(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_class::<PyPreprocessSpec>()?;
    m.add_function(wrap_pyfunction!(preprocess_batch, m)?)?;
    m.add_function(wrap_pyfunction!(decode_image, m)?)?;
    m.add_function(wrap_pyfunction!(resize_image, m)?)?;
    m.add_function(wrap_pyfunction!(resolve_num_threads, m)?)?;
    Ok(())
}
