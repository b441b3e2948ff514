//! The one place core errors become Python exceptions. The classes live in
//! `ferroclip/errors.py` (so they can also subclass `ValueError`, `OSError`, ...).

use std::path::Path;

use ferroclip_core::{Error, ItemError, Origin};
use pyo3::exceptions::PyValueError;
use pyo3::prelude::*;

pyo3::import_exception!(ferroclip.errors, ImageDecodeError);
pyo3::import_exception!(ferroclip.errors, UnsupportedFormatError);
pyo3::import_exception!(ferroclip.errors, ImageTooLargeError);
pyo3::import_exception!(ferroclip.errors, ImageReadError);
pyo3::import_exception!(ferroclip.errors, ImageNotFoundError);
pyo3::import_exception!(ferroclip.errors, NotAFileError);
pyo3::import_exception!(ferroclip.errors, ShapeError);
pyo3::import_exception!(ferroclip.errors, InternalError);

/// Newtype so `?` works on core results (orphan rule; polars' `PyPolarsErr`).
pub struct PyCoreError(pub Error);

impl From<Error> for PyCoreError {
    fn from(e: Error) -> Self {
        Self(e)
    }
}

/// Build the exception for `err` about `path` (if any).
pub fn to_pyerr(err: &Error, path: Option<&Path>) -> PyErr {
    let reason = err.to_string();
    let path_s = path.map(|p| p.display().to_string());
    let message = match &path_s {
        Some(p) => format!("{p}: {reason}"),
        None => reason.clone(),
    };
    let args = (message, path_s, reason, err.kind_name());
    match err {
        Error::Decode(_) => ImageDecodeError::new_err(args),
        Error::Unsupported(_) => UnsupportedFormatError::new_err(args),
        Error::TooLarge { .. } | Error::FileTooLarge { .. } | Error::DecoderLimit(_) => {
            ImageTooLargeError::new_err(args)
        }
        Error::Io { kind: std::io::ErrorKind::NotFound, .. } => ImageNotFoundError::new_err(args),
        Error::Io { .. } => ImageReadError::new_err(args),
        Error::NotAFile { .. } => NotAFileError::new_err(args),
        Error::Shape(m) => ShapeError::new_err(m.clone()),
        Error::InvalidArgument(m) => PyValueError::new_err(m.clone()),
        Error::Internal(_) => InternalError::new_err(args),
        _ => InternalError::new_err(args),
    }
}

impl From<PyCoreError> for PyErr {
    fn from(e: PyCoreError) -> Self {
        to_pyerr(&e.0, None)
    }
}

/// Per-item failure as plain data: `(index, path or None, kind, reason)`.
pub type ItemErrorTuple = (usize, Option<String>, &'static str, String);

pub fn item_error_tuple(e: &ItemError) -> ItemErrorTuple {
    let path = match &e.origin {
        Origin::Path(p) => Some(p.display().to_string()),
        _ => None,
    };
    (e.index, path, e.error.kind_name(), e.error.to_string())
}
