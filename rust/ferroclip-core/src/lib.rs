//! ferroclip-core: reference-exact CLIP-family image preprocessing and retrieval maths.
//!
//! Plain Rust, no Python: `ferroclip-py` is the thin binding on top. The preprocessing
//! reproduces PIL + Hugging Face image processors (and torchvision/open_clip transforms)
//! bit for bit, computing only the pixels that survive the crop.

pub mod augment;
pub mod batch;
pub mod blas;
pub mod decode;
pub mod dedup;
mod dot;
#[cfg(target_arch = "x86_64")]
mod gemm;
pub mod error;
pub mod geometry;
pub mod normalize;
pub mod pipeline;
pub mod probe;
pub mod resize;
pub mod similarity;
pub mod topk;
pub mod recall;
#[cfg(test)]
mod test_data;

pub use error::{Error, ItemError, Origin, Result};
pub use pipeline::{PreprocessSpec, Source};
