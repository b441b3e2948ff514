//! Retrieval bindings: similarity, exact top-k, Recall@K and near-duplicate pairs over 2-d
//! float arrays.
//!
//! The Python layer (`ferroclip/retrieval.py`) validates and converts once; here arrays
//! must already be C-contiguous float32 (float16 allowed for the database side). Inputs
//! are borrowed, never copied; outputs are Rust `Vec`s handed to numpy without a copy.

use ferroclip_core::similarity::Embeddings;
use ferroclip_core::{dedup, recall, similarity as core_similarity, topk as core_topk};
use half::f16;
use numpy::ndarray::{Array1, Array2};
use numpy::{IntoPyArray, PyArray1, PyArray2, PyReadonlyArray1, PyReadonlyArray2, PyUntypedArrayMethods};
use pyo3::exceptions::PyTypeError;
use pyo3::prelude::*;
use pyo3::types::PyDict;

use crate::detach::run_detached;
use crate::errors::ShapeError;

/// A borrowed 2-d array of either supported dtype.
enum Held<'py> {
    F32(PyReadonlyArray2<'py, f32>),
    F16(PyReadonlyArray2<'py, f16>),
}

fn hold<'py>(obj: &Bound<'py, PyAny>, name: &str, allow_f16: bool) -> PyResult<Held<'py>> {
    if let Ok(a) = obj.extract::<PyReadonlyArray2<'py, f32>>() {
        return Ok(Held::F32(a));
    }
    if allow_f16 {
        if let Ok(a) = obj.extract::<PyReadonlyArray2<'py, f16>>() {
            return Ok(Held::F16(a));
        }
    }
    let want = if allow_f16 { "float32 or float16" } else { "float32" };
    Err(PyTypeError::new_err(format!("{name} must be a 2-d numpy array of {want}")))
}

fn view<'a>(held: &'a Held<'_>, name: &str) -> PyResult<Embeddings<'a>> {
    let contiguous = || ShapeError::new_err(format!("{name} must be C-contiguous"));
    let core = match held {
        Held::F32(a) => {
            let [rows, dim] = [a.shape()[0], a.shape()[1]];
            Embeddings::f32(a.as_slice().map_err(|_| contiguous())?, rows, dim, name)
        }
        Held::F16(a) => {
            let [rows, dim] = [a.shape()[0], a.shape()[1]];
            Embeddings::f16(a.as_slice().map_err(|_| contiguous())?, rows, dim, name)
        }
    };
    core.map_err(|e| crate::errors::PyCoreError(e).into())
}

fn to_array2<T: numpy::Element>(rows: usize, cols: usize, data: Vec<T>) -> PyResult<Array2<T>> {
    Array2::from_shape_vec((rows, cols), data).map_err(|e| crate::errors::InternalError::new_err(e.to_string()))
}

/// `a @ b.T` as a new float32 array (`b` may be float16).
#[pyfunction]
#[pyo3(signature = (a, b, *, num_threads=None))]
fn similarity<'py>(
    py: Python<'py>,
    a: Bound<'py, PyAny>,
    b: Bound<'py, PyAny>,
    num_threads: Option<usize>,
) -> PyResult<Bound<'py, PyArray2<f32>>> {
    let (ha, hb) = (hold(&a, "a", true)?, hold(&b, "b", true)?);
    let (ea, eb) = (view(&ha, "a")?, view(&hb, "b")?);
    let out = run_detached(py, || core_similarity::similarity(&ea, &eb, num_threads))?;
    Ok(to_array2(ea.rows(), eb.rows(), out)?.into_pyarray(py))
}

/// The `k` best database rows per query: `(scores float32 (Q, k'), indices int64 (Q, k'))`
/// with `k' = min(k, N)`.
#[allow(clippy::type_complexity, reason = "the tuple of arrays the Python stub declares")]
#[pyfunction]
#[pyo3(signature = (queries, database, k, *, num_threads=None))]
fn topk<'py>(
    py: Python<'py>,
    queries: Bound<'py, PyAny>,
    database: Bound<'py, PyAny>,
    k: usize,
    num_threads: Option<usize>,
) -> PyResult<(Bound<'py, PyArray2<f32>>, Bound<'py, PyArray2<i64>>)> {
    let (hq, hd) = (hold(&queries, "queries", false)?, hold(&database, "database", true)?);
    let (eq, ed) = (view(&hq, "queries")?, view(&hd, "database")?);
    let r = run_detached(py, || core_topk::topk(&eq, &ed, k, num_threads))?;
    let rows = eq.rows();
    Ok((to_array2(rows, r.k, r.scores)?.into_pyarray(py), to_array2(rows, r.k, r.indices)?.into_pyarray(py)))
}

/// Recall@K both ways: `(metrics dict, i2t_ranks int64 (I,), t2i_ranks int64 (T,))`, ranks
/// 0-based, -1 for an image without captions.
#[allow(clippy::type_complexity, reason = "the tuple of arrays the Python stub declares")]
#[pyfunction]
#[pyo3(signature = (image_emb, text_emb, text_to_image, ks, *, num_threads=None))]
fn recall_at_k<'py>(
    py: Python<'py>,
    image_emb: Bound<'py, PyAny>,
    text_emb: Bound<'py, PyAny>,
    text_to_image: PyReadonlyArray1<'py, i64>,
    ks: Vec<usize>,
    num_threads: Option<usize>,
) -> PyResult<(Bound<'py, PyDict>, Bound<'py, PyArray1<i64>>, Bound<'py, PyArray1<i64>>)> {
    let (hi, ht) = (hold(&image_emb, "image_emb", true)?, hold(&text_emb, "text_emb", true)?);
    let (ei, et) = (view(&hi, "image_emb")?, view(&ht, "text_emb")?);
    let mapping =
        text_to_image.as_slice().map_err(|_| ShapeError::new_err("text_to_image must be C-contiguous"))?;
    let report = run_detached(py, || recall::recall_at_k(&ei, &et, mapping, &ks, num_threads))?;
    let metrics = PyDict::new(py);
    for (key, value) in &report.metrics {
        if key == "i2t_skipped_images" {
            metrics.set_item(key, report.skipped_images)?;
        } else {
            metrics.set_item(key, *value)?;
        }
    }
    Ok((
        metrics,
        Array1::from_vec(report.i2t_ranks).into_pyarray(py),
        Array1::from_vec(report.t2i_ranks).into_pyarray(py),
    ))
}

/// Pairs `i < j` with `emb[i] . emb[j] >= threshold`: `(i int64, j int64, scores float32)`,
/// sorted by (i, j).
#[allow(clippy::type_complexity, reason = "the tuple of arrays the Python stub declares")]
#[pyfunction]
#[pyo3(signature = (emb, threshold, *, max_pairs, num_threads=None))]
fn near_duplicates<'py>(
    py: Python<'py>,
    emb: Bound<'py, PyAny>,
    threshold: f32,
    max_pairs: usize,
    num_threads: Option<usize>,
) -> PyResult<(Bound<'py, PyArray1<i64>>, Bound<'py, PyArray1<i64>>, Bound<'py, PyArray1<f32>>)> {
    let held = hold(&emb, "emb", true)?;
    let e = view(&held, "emb")?;
    let pairs = run_detached(py, || dedup::near_duplicates(&e, threshold, max_pairs, num_threads))?;
    Ok((
        Array1::from_vec(pairs.left).into_pyarray(py),
        Array1::from_vec(pairs.right).into_pyarray(py),
        Array1::from_vec(pairs.scores).into_pyarray(py),
    ))
}

/// The product backend of this process: the CBLAS sgemm in use (library, symbol, integer
/// width), or the built-in product (`ferroclip-avx2` or `matrixmultiply`) and why.
/// Looked up on first use, then fixed.
#[pyfunction]
fn gemm_backend(py: Python<'_>) -> String {
    py.detach(ferroclip_core::blas::backend)
}

pub fn register(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_function(wrap_pyfunction!(gemm_backend, m)?)?;
    m.add_function(wrap_pyfunction!(similarity, m)?)?;
    m.add_function(wrap_pyfunction!(topk, m)?)?;
    m.add_function(wrap_pyfunction!(recall_at_k, m)?)?;
    m.add_function(wrap_pyfunction!(near_duplicates, m)?)?;
    Ok(())
}
