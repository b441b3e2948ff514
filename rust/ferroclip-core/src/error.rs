//! One error type for the core. Variants are split by whose fault it is (image-rs habit):
//! the input's (`Decode`, `Unsupported`), the resource limits' (`TooLarge`), the
//! environment's (`Io`, `NotAFile`), the caller's (`InvalidArgument`, `Shape`) and ours
//! (`Internal`). Messages never name the file: the batch layer prefixes the origin once.

use std::fmt;
use std::path::PathBuf;

pub type Result<T, E = Error> = std::result::Result<T, E>;

#[derive(Debug, Clone, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The OS refused to read the file (missing, permission, I/O failure).
    #[error("{message}")]
    Io { kind: std::io::ErrorKind, message: String },
    /// The path exists but is a directory, FIFO, socket or device: reading it could hang.
    #[error("not a regular file ({what})")]
    NotAFile { what: &'static str },
    /// The bytes are not a valid image of a format we read (corrupt, truncated, empty).
    #[error("cannot decode image: {0}")]
    Decode(String),
    /// The bytes are of a format (or variant) we do not read.
    #[error("unsupported image: {0}")]
    Unsupported(String),
    /// The header announces more pixels than allowed; nothing large was allocated.
    #[error("{width}x{height} image is over the {max_pixels}-pixel limit")]
    TooLarge { width: u64, height: u64, max_pixels: u64 },
    /// A decoder refused the size itself (its memory limit, or a per-side limit such as
    /// image-rs's BMP soft limit), before `TooLarge`'s header check could see it.
    #[error("over the decoder's size limit ({0})")]
    DecoderLimit(String),
    /// The file is larger than the byte cap.
    #[error("file of {size} bytes is over the {max_bytes}-byte limit")]
    FileTooLarge { size: u64, max_bytes: u64 },
    /// An argument is invalid (a bad preprocessing spec, an unknown option).
    #[error("{0}")]
    InvalidArgument(String),
    /// An array has the wrong shape or length.
    #[error("{0}")]
    Shape(String),
    /// A bug in ferroclip or a decoder (a caught panic). Please report it.
    #[error("internal error: {0}")]
    Internal(String),
}

impl Error {
    /// Stable machine-readable name used across the Python boundary.
    #[must_use]
    pub fn kind_name(&self) -> &'static str {
        match self {
            Error::Io { kind, .. } => match kind {
                std::io::ErrorKind::NotFound => "not_found",
                std::io::ErrorKind::PermissionDenied => "permission_denied",
                _ => "io",
            },
            Error::NotAFile { .. } => "not_a_file",
            Error::Decode(_) => "decode",
            Error::Unsupported(_) => "unsupported",
            Error::TooLarge { .. } | Error::FileTooLarge { .. } | Error::DecoderLimit(_) => "too_large",
            Error::InvalidArgument(_) => "invalid_argument",
            Error::Shape(_) => "shape",
            Error::Internal(_) => "internal",
        }
    }

    pub(crate) fn io(err: &std::io::Error) -> Self {
        Error::Io { kind: err.kind(), message: err.to_string() }
    }
}

/// Where a failed batch item came from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Origin {
    Path(PathBuf),
    Bytes,
    Array,
}

impl fmt::Display for Origin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Origin::Path(p) => write!(f, "{}", p.display()),
            Origin::Bytes => f.write_str("<bytes>"),
            Origin::Array => f.write_str("<array>"),
        }
    }
}

/// One failed item of a batch: its position, where it came from and why it failed.
#[derive(Debug, Clone)]
pub struct ItemError {
    pub index: usize,
    pub origin: Origin,
    pub error: Error,
}

impl fmt::Display for ItemError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.origin {
            Origin::Path(p) => write!(f, "{}: {}", p.display(), self.error),
            other => write!(f, "item {} ({other}): {}", self.index, self.error),
        }
    }
}
