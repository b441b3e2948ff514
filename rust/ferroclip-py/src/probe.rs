//! Bindings for the machine-limit probes (`ferroclip_core::probe`), used by the benchmarks
//! to print each ratio's floor: not part of the public API.

use numpy::{PyReadonlyArray1, PyUntypedArrayMethods};
use pyo3::prelude::*;
use pyo3::types::PyDict;

use crate::errors::ShapeError;

/// One core's clock (GHz) and f32 FMA peak (measured and theoretical GFLOP/s), or None
/// without AVX2 + FMA.
#[pyfunction]
#[pyo3(signature = (rounds=5))]
fn cpu_peak(py: Python<'_>, rounds: usize) -> PyResult<Option<Bound<'_, PyDict>>> {
    let Some(p) = py.detach(|| ferroclip_core::probe::cpu_peak(rounds)) else { return Ok(None) };
    let d = PyDict::new(py);
    d.set_item("clock_ghz", p.clock_ghz)?;
    d.set_item("lanes", p.lanes)?;
    d.set_item("fma_per_cycle", p.fma_per_cycle)?;
    d.set_item("measured_gflops", p.measured_gflops)?;
    d.set_item("theoretical_gflops", p.theoretical_gflops)?;
    Ok(Some(d))
}

/// Read bandwidth (GB/s) over a large contiguous float32 array on `threads` threads: the
/// best access pattern, best of `rounds`.
#[pyfunction]
#[pyo3(signature = (data, threads=1, rounds=3))]
fn read_bandwidth(py: Python<'_>, data: PyReadonlyArray1<'_, f32>, threads: usize, rounds: usize) -> PyResult<f64> {
    if !data.is_c_contiguous() {
        return Err(ShapeError::new_err("data must be C-contiguous"));
    }
    let slice = data.as_slice().map_err(|e| ShapeError::new_err(e.to_string()))?;
    Ok(py.detach(|| ferroclip_core::probe::read_bandwidth(slice, threads, rounds)))
}

pub fn register(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_function(wrap_pyfunction!(cpu_peak, m)?)?;
    m.add_function(wrap_pyfunction!(read_bandwidth, m)?)?;
    Ok(())
}
