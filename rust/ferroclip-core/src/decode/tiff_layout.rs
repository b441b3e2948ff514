//! TIFF layouts that the `tiff` crate (0.11) cannot decode, refused before it is called.
//!
//! Tiled images with separate planes (PlanarConfiguration 2 + TileWidth) trip an
//! assertion inside `tiff`'s chunk expansion (`buf.len() >= layout.row_stride * ...`):
//! a panic, not an error. Reading the first IFD's tags is cheap and exact, so such a file
//! gets a typed `Unsupported` error instead.

use std::io::Cursor;

use tiff::decoder::Decoder;
use tiff::tags::Tag;

use crate::error::{Error, Result};

/// `Err(Unsupported)` for a layout the decoder would panic on; `Ok` for everything else,
/// including a header the `tiff` crate rejects (image-rs reports that error itself).
pub(super) fn check(data: &[u8]) -> Result<()> {
    let Ok(mut decoder) = Decoder::new(Cursor::new(data)) else {
        return Ok(());
    };
    let planar = decoder.find_tag_unsigned::<u16>(Tag::PlanarConfiguration).ok().flatten();
    let tiled = decoder.find_tag(Tag::TileWidth).ok().flatten().is_some();
    if tiled && planar == Some(2) {
        return Err(Error::Unsupported("unsupported TIFF layout: tiled planar (separate planes in tiles)".into()));
    }
    Ok(())
}
