//! One door out of the GIL (polars' `enter_polars`): run core work detached, map its error.

use pyo3::prelude::*;

use crate::errors::PyCoreError;

pub fn run_detached<T: Send>(
    py: Python<'_>,
    work: impl Send + FnOnce() -> ferroclip_core::Result<T>,
) -> PyResult<T> {
    py.detach(work).map_err(|e| PyCoreError(e).into())
}
