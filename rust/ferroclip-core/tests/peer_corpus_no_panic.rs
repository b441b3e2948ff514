//! Panics are bugs: every file of the shared peer corpus (Pillow's test images) and every
//! fuzzing regression input goes through the batch entry point, and none may come back as
//! an `Internal` error (a panic that `catch_unwind` caught). Pixels or a typed error only.

use std::path::{Path, PathBuf};

use ferroclip_core::batch::preprocess_batch;
use ferroclip_core::decode::DecodeOptions;
use ferroclip_core::geometry::{CropRounding, CropSpec, ResizeSpec};
use ferroclip_core::normalize::{NormalizeSpec, Rescale};
use ferroclip_core::resize::{Filter, PassOrder};
use ferroclip_core::{Error, PreprocessSpec, Source};

fn files_under(dir: &Path, out: &mut Vec<PathBuf>) {
    let mut entries: Vec<_> = std::fs::read_dir(dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display())).collect();
    entries.sort_by_key(|e| e.as_ref().map(std::fs::DirEntry::path).ok());
    for entry in entries {
        let path = entry.expect("directory entry").path();
        if path.is_dir() {
            files_under(&path, out);
        } else if path.is_file() {
            out.push(path);
        }
    }
}

fn spec(jpeg_draft: bool) -> PreprocessSpec {
    PreprocessSpec::new(
        ResizeSpec::ShortestEdge(224),
        Some(CropSpec { height: 224, width: 224, rounding: CropRounding::Floor }),
        Filter::Bicubic,
        PassOrder::default(),
        NormalizeSpec { rescale: Rescale::MulF64(1.0 / 255.0), mean_std: None },
        [0, 0, 0],
        DecodeOptions::default(),
        jpeg_draft,
        1 << 30,
    )
    .expect("valid spec")
}

/// Every file of `files` through decode + preprocess (exact mode, and fast mode for the
/// JPEGs: the only format it changes); returns the items that panicked, with their messages.
fn caught_panics(files: &[PathBuf]) -> Vec<String> {
    let jpegs: Vec<PathBuf> =
        files.iter().filter(|p| std::fs::read(p).is_ok_and(|b| b.starts_with(&[0xFF, 0xD8]))).cloned().collect();
    let mut panics = Vec::new();
    for (draft, files) in [(false, files), (true, &jpegs[..])] {
        let sources: Vec<Source<'_>> = files.iter().map(|p| Source::Path(p)).collect();
        let mut out = vec![0f32; files.len() * 3 * 224 * 224];
        let errors = preprocess_batch(&sources, &spec(draft), &mut out, Some(1)).expect("batch runs").errors;
        panics.extend(
            errors.iter().filter(|e| matches!(e.error, Error::Internal(_))).map(|e| format!("jpeg_draft={draft}: {e}")),
        );
    }
    panics
}

#[test]
fn no_peer_image_panics() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../../shared/peer-images/pillow");
    let mut files = Vec::new();
    files_under(&dir, &mut files);
    assert!(files.len() > 700, "peer corpus at {} has {} files, expected Pillow's 723", dir.display(), files.len());
    let panics = caught_panics(&files);
    assert!(panics.is_empty(), "{} caught panics:\n{}", panics.len(), panics.join("\n"));
}

#[test]
fn no_fuzz_regression_panics() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tests/fuzz_regressions");
    let mut files = Vec::new();
    files_under(&dir, &mut files);
    files.retain(|p| p.extension().is_none_or(|e| e != "md"));
    assert!(!files.is_empty(), "no regression inputs in {}", dir.display());
    let panics = caught_panics(&files);
    assert!(panics.is_empty(), "{} caught panics:\n{}", panics.len(), panics.join("\n"));
}
