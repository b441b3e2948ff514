//! Reading image files without ever blocking on something that is not a file.

use std::fs::File;
use std::io::Read;
use std::os::unix::fs::{FileTypeExt, OpenOptionsExt};
use std::path::Path;

use crate::error::{Error, Result};

/// Read a regular file into memory, refusing directories, FIFOs, sockets and devices.
///
/// The file is opened with `O_NONBLOCK` so that opening a FIFO with no writer returns at
/// once; `fstat` on the open descriptor then decides, so there is no check-then-open race.
pub fn read_file(path: &Path, max_bytes: u64) -> Result<Vec<u8>> {
    let mut file = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NONBLOCK)
        .open(path)
        .map_err(|e| Error::io(&e))?;
    let meta = file.metadata().map_err(|e| Error::io(&e))?;
    let ft = meta.file_type();
    if !ft.is_file() {
        let what = if ft.is_dir() {
            "a directory"
        } else if ft.is_fifo() {
            "a FIFO"
        } else if ft.is_socket() {
            "a socket"
        } else if ft.is_block_device() || ft.is_char_device() {
            "a device"
        } else {
            "not a regular file"
        };
        return Err(Error::NotAFile { what });
    }
    if meta.len() > max_bytes {
        return Err(Error::FileTooLarge { size: meta.len(), max_bytes });
    }
    read_to_end_capped(&mut file, meta.len(), max_bytes)
}

fn read_to_end_capped(file: &mut File, hint: u64, max_bytes: u64) -> Result<Vec<u8>> {
    let mut buf = Vec::with_capacity(usize::try_from(hint).unwrap_or(0));
    // The file may grow after fstat; never read past the cap.
    file.take(max_bytes + 1).read_to_end(&mut buf).map_err(|e| Error::io(&e))?;
    if buf.len() as u64 > max_bytes {
        return Err(Error::FileTooLarge { size: buf.len() as u64, max_bytes });
    }
    Ok(buf)
}
