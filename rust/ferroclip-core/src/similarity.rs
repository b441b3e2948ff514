//! Dot-product similarity between two sets of embeddings, block by block.
//!
//! Every score in ferroclip (here, in `topk` and in `recall`) comes out of the same
//! `block_product`, one built-in product call per tile (`builtin_product`: ferroclip's own
//! AVX-512 or AVX2 kernel in `gemm`, or `matrixmultiply` on CPUs without AVX2). The
//! value of one score depends only on its two vectors, not on the tile it was computed in
//! (the kernel and its k order are fixed per machine), so `topk` and `recall` agree bit
//! for bit with the materialised `similarity` matrix: sorting that matrix gives the same
//! order. (Opt-in `FERROCLIP_BLAS=1` trades that for the process's BLAS sgemm; see `blas`
//! and `Kernel`.)
//!
//! A float16 matrix is widened to f32 one block at a time (F16C when the CPU has it), so
//! an f16 database costs half the memory and no full-size f32 copy.
//!
//! Non-finite inputs are caught on the scores, not on the inputs: a NaN or Inf anywhere in
//! a vector makes every score of that vector non-finite, so checking each finished tile
//! (cheap, in cache) finds it without a separate pass over a large database.

use std::borrow::Cow;

use half::f16;
use half::slice::HalfFloatSliceExt;
use rayon::prelude::*;

use crate::batch::{resolve_num_threads, run_parallel};
use crate::error::{Error, Result};

/// Queries per tile: enough rows that sgemm's packing of the database block pays off.
pub(crate) const QUERY_BLOCK: usize = 256;
/// Database rows per tile: a 256 x 1024 f32 score tile is 1 MiB, inside a 2 MiB L2.
pub(crate) const DB_BLOCK: usize = 1024;
/// Database rows per tile, for ferroclip's own kernel, where each tile is read once right
/// after it is scored (see `Kernel::scan_width`).
#[cfg_attr(not(target_arch = "x86_64"), allow(dead_code))]
const SCAN_BLOCK: usize = 128;

/// Row-major storage of an embedding matrix.
#[derive(Clone, Copy, Debug)]
pub enum Rows<'a> {
    F32(&'a [f32]),
    F16(&'a [f16]),
}

/// A borrowed row-major `rows x dim` embedding matrix.
#[derive(Clone, Copy, Debug)]
pub struct Embeddings<'a> {
    data: Rows<'a>,
    rows: usize,
    dim: usize,
}

impl<'a> Embeddings<'a> {
    /// Wrap `data` as `rows x dim`; `name` names the argument in the error.
    pub fn new(data: Rows<'a>, rows: usize, dim: usize, name: &str) -> Result<Self> {
        let len = match data {
            Rows::F32(d) => d.len(),
            Rows::F16(d) => d.len(),
        };
        if rows.checked_mul(dim) != Some(len) {
            return Err(Error::Shape(format!("{name}: {len} values cannot be {rows} rows of dimension {dim}")));
        }
        Ok(Self { data, rows, dim })
    }

    pub fn f32(data: &'a [f32], rows: usize, dim: usize, name: &str) -> Result<Self> {
        Self::new(Rows::F32(data), rows, dim, name)
    }

    pub fn f16(data: &'a [f16], rows: usize, dim: usize, name: &str) -> Result<Self> {
        Self::new(Rows::F16(data), rows, dim, name)
    }

    #[must_use]
    pub fn rows(&self) -> usize {
        self.rows
    }

    #[must_use]
    pub fn dim(&self) -> usize {
        self.dim
    }

    /// Bytes of the stored matrix.
    #[must_use]
    pub fn bytes(&self) -> usize {
        match self.data {
            Rows::F32(d) => d.len() * 4,
            Rows::F16(d) => d.len() * 2,
        }
    }

    /// Rows `start..end` in their stored dtype.
    pub(crate) fn rows_slice(&self, start: usize, end: usize) -> Rows<'a> {
        let (lo, hi) = (start * self.dim, end * self.dim);
        match self.data {
            Rows::F32(d) => Rows::F32(&d[lo..hi]),
            Rows::F16(d) => Rows::F16(&d[lo..hi]),
        }
    }

    /// Rows `start..end` as f32: borrowed for f32 storage, a widened copy for f16.
    pub(crate) fn rows_f32(&self, start: usize, end: usize) -> Cow<'a, [f32]> {
        let (lo, hi) = (start * self.dim, end * self.dim);
        match self.data {
            Rows::F32(d) => Cow::Borrowed(&d[lo..hi]),
            Rows::F16(d) => {
                let mut wide = vec![0.0f32; hi - lo];
                d[lo..hi].convert_to_f32_slice(&mut wide);
                Cow::Owned(wide)
            }
        }
    }

    /// Rows `start..end` as f32: borrowed for f32 storage, widened into `scratch` for f16.
    pub(crate) fn block<'s>(&'s self, start: usize, end: usize, scratch: &'s mut Vec<f32>) -> Cow<'s, [f32]> {
        let (lo, hi) = (start * self.dim, end * self.dim);
        match self.data {
            Rows::F32(d) => Cow::Borrowed(&d[lo..hi]),
            Rows::F16(d) => {
                scratch.resize(hi - lo, 0.0);
                d[lo..hi].convert_to_f32_slice(scratch);
                Cow::Borrowed(&scratch[..])
            }
        }
    }
}

/// Check that two matrices can be multiplied (same dimension), naming both arguments.
pub(crate) fn check_dims(a: &Embeddings<'_>, a_name: &str, b: &Embeddings<'_>, b_name: &str) -> Result<()> {
    if a.dim != b.dim {
        return Err(Error::Shape(format!(
            "{a_name} has dimension {} but {b_name} has dimension {}",
            a.dim, b.dim
        )));
    }
    Ok(())
}

/// Calls with at most this many queries use the dot-product kernel: sgemm's 8-row micro
/// kernel would compute mostly padding for one query, and the work is memory-bound anyway.
pub(crate) const SMALL_QUERY_COUNT: usize = 3;

/// How a call computes its scores. Chosen once per call from the total query count, so
/// one call never mixes kernels: `similarity` and `topk` on the same queries agree bit for
/// bit, but a query scored alone (dot kernel: 16 lanes) may differ by a few ulps from the
/// same query scored in a large batch (one FMA chain per score), as with any BLAS.
///
/// `Blas` (opt-in, `FERROCLIP_BLAS=1`, see `blas`) gives up that agreement: OpenBLAS's
/// value for a pair depends on the shape of the call and the pair's place in it, so with
/// it `topk` and `near_duplicates` scores may differ from `similarity` in the last bit.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Kernel {
    /// `builtin_product`: a pair's value does not depend on the tile.
    Gemm,
    /// The process's CBLAS sgemm (falls back to `Gemm` for a call it cannot take).
    Blas,
    Dot,
}

impl Kernel {
    pub(crate) fn for_queries(rows: usize) -> Self {
        if rows <= SMALL_QUERY_COUNT {
            Kernel::Dot
        } else if crate::blas::get().is_some() {
            Kernel::Blas
        } else {
            Kernel::Gemm
        }
    }

    /// Database rows per tile where each tile is read once right after it is scored (top-k
    /// selection, recall counting). ferroclip's own kernel reads the queries in place, so
    /// narrow tiles cost it nothing, and tiles of 256-512 KiB (512 or 1024 rows x 128) are
    /// read back from L2 where 1024-wide ones (2-4 MiB) came from L3. Measured on Zen 3
    /// (min of 5 interleaved runs, 1 thread): top-k 1000 x 100k 1.13 s at 128 or 256 wide,
    /// 1.17 s at 1024; recall 5k x 25k 1.49 s at 128, 1.55 s at 256, 1.59 s at 1024.
    /// Kernels that pack the query block on every call (`matrixmultiply`, a BLAS) keep
    /// `DB_BLOCK`, which amortises that packing.
    pub(crate) fn scan_width(self) -> usize {
        #[cfg(target_arch = "x86_64")]
        if self == Kernel::Gemm && crate::gemm::isa().is_some() {
            return SCAN_BLOCK;
        }
        DB_BLOCK
    }
}

/// `out[i * ldc + j] = <q_i, d_j>` for row-major `q` (m x dim) and `d` (n x dim).
#[allow(clippy::too_many_arguments, reason = "a BLAS-style kernel signature: matrix pointers, sizes and strides")]
pub(crate) fn block_product(kernel: Kernel, q: &[f32], m: usize, d: &[f32], n: usize, dim: usize, out: &mut [f32], ldc: usize) {
    assert!(q.len() >= m * dim && d.len() >= n * dim, "block_product: inputs too short");
    if m == 0 || n == 0 {
        return;
    }
    assert!(ldc >= n && out.len() >= (m - 1) * ldc + n, "block_product: output too short");
    // SAFETY: the asserts keep every access in bounds; `out` is a unique borrow.
    unsafe { block_product_raw(kernel, q, m, d, n, dim, out.as_mut_ptr(), ldc) }
}

/// `block_product` writing through a raw pointer, for tiles of a shared output matrix.
///
/// # Safety
/// `out` must be valid for writes at `i * ldc + j` for `i < m`, `j < n`, and no other
/// thread may access those elements during the call. `q`/`d` hold m/n rows of `dim`.
#[allow(clippy::too_many_arguments, reason = "a BLAS-style kernel signature: matrix pointers, sizes and strides")]
pub(crate) unsafe fn block_product_raw(
    kernel: Kernel,
    q: &[f32],
    m: usize,
    d: &[f32],
    n: usize,
    dim: usize,
    out: *mut f32,
    ldc: usize,
) {
    debug_assert!(q.len() >= m * dim && d.len() >= n * dim);
    if m == 0 || n == 0 {
        return;
    }
    if dim == 0 {
        for i in 0..m {
            for j in 0..n {
                out.add(i * ldc + j).write(0.0);
            }
        }
        return;
    }
    if kernel == Kernel::Dot {
        return crate::dot::dots(q, m, Rows::F32(d), n, dim, out, ldc, &mut Vec::new());
    }
    if let (Kernel::Blas, Some(blas)) = (kernel, crate::blas::get()) {
        debug_assert!(crate::blas::is_single_threaded(), "BLAS product outside a SingleThreaded scope");
        // `None` only for an LP64 library and a dimension beyond 2^31.
        if blas.product(q.as_ptr(), m, d.as_ptr(), n, dim, out, ldc).is_some() {
            return;
        }
    }
    builtin_product(q, m, d, n, dim, out, ldc);
}

/// The built-in product (no BLAS): ferroclip's own kernel (`gemm`, AVX-512 or AVX2) where
/// the CPU has one, else `matrixmultiply`.
///
/// # Safety
/// As `block_product_raw`; `dim > 0`.
pub(crate) unsafe fn builtin_product(q: &[f32], m: usize, d: &[f32], n: usize, dim: usize, out: *mut f32, ldc: usize) {
    #[cfg(target_arch = "x86_64")]
    if let Some(isa) = crate::gemm::isa() {
        return crate::gemm::product(isa, q, m, d, n, dim, out, ldc);
    }
    // Elsewhere (no AVX2 + FMA, or not x86_64): matrixmultiply.
    // q is m x k row-major; d seen column-major is k x n, i.e. d transposed; out has row
    // stride ldc. matrixmultiply picks its kernel at run time (AVX-512 16x16 where present,
    // else AVX2/FMA 8x8); the packing is a strided gather per element from these layouts.
    matrixmultiply::sgemm(
        m,
        dim,
        n,
        1.0,
        q.as_ptr(),
        dim as isize,
        1,
        d.as_ptr(),
        1,
        dim as isize,
        0.0,
        out,
        ldc as isize,
        1,
    );
}

/// The built-in product in words (see `builtin_product`).
pub(crate) fn builtin_backend() -> &'static str {
    #[cfg(target_arch = "x86_64")]
    if let Some(isa) = crate::gemm::isa() {
        return isa.name();
    }
    "matrixmultiply"
}

/// `block_product` with the sgemm of this process (BLAS or `matrixmultiply`, see
/// `blas::backend`), for the tile micro-benchmark (`examples/tile_bench.rs`) only.
#[doc(hidden)]
pub fn bench_block_product(q: &[f32], m: usize, d: &[f32], n: usize, dim: usize, out: &mut [f32], ldc: usize) {
    let _blas = crate::blas::SingleThreaded::new();
    let kernel = if crate::blas::get().is_some() { Kernel::Blas } else { Kernel::Gemm };
    block_product(kernel, q, m, d, n, dim, out, ldc);
}

/// A block of f32 queries prepared once for the many tiles it is scored against: packed
/// for the AVX-512 kernel (`gemm::PackedQueries`), else read in place.
pub(crate) struct Queries<'q> {
    rows: &'q [f32],
    m: usize,
    #[cfg(target_arch = "x86_64")]
    packed: Option<crate::gemm::PackedQueries>,
}

impl<'q> Queries<'q> {
    /// `rows` holds `m` queries of `dim`, to be scored with `kernel`.
    pub(crate) fn new(kernel: Kernel, rows: &'q [f32], m: usize, dim: usize) -> Self {
        assert!(rows.len() >= m * dim, "Queries: rows too short");
        #[cfg(target_arch = "x86_64")]
        let packed = match (kernel, crate::gemm::isa()) {
            (Kernel::Gemm, Some(isa)) => crate::gemm::PackedQueries::new(isa, rows, m, dim),
            _ => None,
        };
        #[cfg(not(target_arch = "x86_64"))]
        let _ = (kernel, dim);
        Self {
            rows,
            m,
            #[cfg(target_arch = "x86_64")]
            packed,
        }
    }

    pub(crate) fn rows(&self) -> usize {
        self.m
    }
}

/// Scores of the queries against database rows `c0..c1`: `out[i * ldc + (j - c0)]`, with
/// the same bits whether the queries were packed or not.
///
/// The dot kernel reads the rows in their stored dtype (f16 widened in registers, one
/// pass), and so do ferroclip's sgemm kernels (f16 widened as they pack, `gemm::Elem`);
/// for a BLAS or `matrixmultiply` an f16 block is widened into `scratch` first.
pub(crate) fn score_block(
    kernel: Kernel,
    queries: &Queries<'_>,
    db: &Embeddings<'_>,
    (c0, c1): (usize, usize),
    out: &mut [f32],
    ldc: usize,
    scratch: &mut Vec<f32>,
) {
    let (q, m) = (queries.rows, queries.m);
    let (n, dim) = (c1 - c0, db.dim);
    assert!(q.len() >= m * dim && c1 <= db.rows && c0 <= c1, "score_block: inputs too short");
    if m == 0 || n == 0 {
        return;
    }
    assert!(ldc >= n && out.len() >= (m - 1) * ldc + n, "score_block: output too short");
    if kernel == Kernel::Dot && dim > 0 {
        // SAFETY: bounds asserted above; `out` is a unique borrow.
        unsafe { crate::dot::dots(q, m, db.rows_slice(c0, c1), n, dim, out.as_mut_ptr(), ldc, scratch) }
    } else {
        // Rows go with the next tile's rows after them, which the built-in kernel
        // prefetches while it scores these (`gemm::product`); the products read only n.
        #[cfg(target_arch = "x86_64")]
        if let (Kernel::Gemm, Some(isa), true) = (kernel, crate::gemm::isa(), dim > 0) {
            let (lo, hi) = (c0 * dim, (c1 + n).min(db.rows) * dim);
            // SAFETY: bounds asserted above; `out` is a unique borrow.
            return unsafe {
                match db.data {
                    Rows::F32(d) => gemm_tile(isa, queries, &d[lo..hi], n, dim, out, ldc),
                    Rows::F16(d) => gemm_tile(isa, queries, &d[lo..hi], n, dim, out, ldc),
                }
            };
        }
        let block = db.block(c0, c1, scratch);
        block_product(kernel, q, m, &block, n, dim, out, ldc);
    }
}

/// `score_block` on ferroclip's own kernel: packed queries where `Queries` packed them,
/// else read in place; rows `n` and beyond are only prefetched.
///
/// # Safety
/// `isa` is supported; `d` holds at least n rows of `dim` (> 0); `out` holds the m x n
/// tile at stride `ldc`.
#[cfg(target_arch = "x86_64")]
unsafe fn gemm_tile<T: crate::gemm::Elem>(isa: crate::gemm::Isa, queries: &Queries<'_>, d: &[T], n: usize, dim: usize, out: &mut [f32], ldc: usize) {
    match &queries.packed {
        Some(packed) => crate::gemm::product_packed(packed, d, n, dim, out.as_mut_ptr(), ldc),
        None => crate::gemm::product(isa, queries.rows, queries.m, d, n, dim, out.as_mut_ptr(), ldc),
    }
}

/// A range of database rows (`prepare`, one chunk after another into the same buffer)
/// prepared once for scans that score it against many query blocks (recall's image
/// strips): packed for the built-in kernel (`gemm::PackedRows`), else read in place by
/// `score_block`.
pub(crate) struct PackedDb<'e, 'a> {
    rows: &'e Embeddings<'a>,
    start: usize,
    #[cfg(target_arch = "x86_64")]
    packed: Option<crate::gemm::PackedRows>,
}

impl<'e, 'a> PackedDb<'e, 'a> {
    /// For rows of `db` and `kernel`; no rows prepared yet (see `prepare`).
    pub(crate) fn new(kernel: Kernel, db: &'e Embeddings<'a>) -> Self {
        #[cfg(target_arch = "x86_64")]
        let packed = match (kernel, crate::gemm::isa()) {
            (Kernel::Gemm, Some(isa)) if db.dim > 0 => Some(crate::gemm::PackedRows::new(isa, db.dim)),
            _ => None,
        };
        #[cfg(not(target_arch = "x86_64"))]
        let _ = kernel;
        Self {
            rows: db,
            start: 0,
            #[cfg(target_arch = "x86_64")]
            packed,
        }
    }

    /// Prepare rows `c0..c1` in place of the ones held, packed on the current rayon pool
    /// when `parallel`.
    pub(crate) fn prepare(&mut self, (c0, c1): (usize, usize), parallel: bool) {
        assert!(c0 <= c1 && c1 <= self.rows.rows, "PackedDb: rows out of range");
        self.start = c0;
        #[cfg(target_arch = "x86_64")]
        if let Some(packed) = &mut self.packed {
            let db = self.rows;
            let rows = |r0: usize, r1: usize, pack: &mut dyn FnMut(&[f32])| pack(&db.block(c0 + r0, c0 + r1, &mut Vec::new()));
            packed.repack(c1 - c0, parallel, rows);
        }
        #[cfg(not(target_arch = "x86_64"))]
        let _ = (c1, parallel);
    }
}

/// `score_block` of rows `c0..c1` of the database `db` was prepared from (`c0` a multiple
/// of `Kernel::scan_width` from its first row, as the scans' tiles are): the same bits.
#[allow(clippy::too_many_arguments, reason = "score_block's arguments")]
pub(crate) fn score_packed(
    kernel: Kernel,
    queries: &Queries<'_>,
    db: &PackedDb<'_, '_>,
    (c0, c1): (usize, usize),
    out: &mut [f32],
    ldc: usize,
    scratch: &mut Vec<f32>,
) {
    #[cfg(target_arch = "x86_64")]
    if let Some(packed) = &db.packed {
        let (m, n) = (queries.m, c1 - c0);
        assert!(c0 >= db.start && c1 - db.start <= packed.rows(), "score_packed: rows not prepared");
        if m == 0 || n == 0 {
            return;
        }
        assert!(ldc >= n && out.len() >= (m - 1) * ldc + n, "score_packed: output too short");
        let cols = (c0 - db.start, c1 - db.start);
        // SAFETY: bounds asserted above (`product_prepacked` checks the columns and the
        // queries); `out` is a unique borrow.
        return unsafe { crate::gemm::product_prepacked(queries.rows, queries.packed.as_ref(), m, packed, cols, out.as_mut_ptr(), ldc) };
    }
    score_block(kernel, queries, db.rows, (c0, c1), out, ldc, scratch);
}

/// Where the first non-finite score of a tile is, as an error naming both arguments.
pub(crate) fn check_finite_tile(
    tile: &[f32],
    m: usize,
    n: usize,
    ldc: usize,
    row0: usize,
    col0: usize,
    names: (&str, &str),
) -> Result<()> {
    // Fast vectorisable test first; only a bad tile pays for finding the position.
    let all_finite = tile.chunks(ldc).take(m).all(|row| row[..n].iter().fold(true, |ok, s| ok & s.is_finite()));
    if all_finite {
        return Ok(());
    }
    for (i, row) in tile.chunks(ldc).take(m).enumerate() {
        if let Some(j) = row[..n].iter().position(|s| !s.is_finite()) {
            return Err(non_finite(row0 + i, col0 + j, names));
        }
    }
    Ok(())
}

pub(crate) fn non_finite(i: usize, j: usize, (a, b): (&str, &str)) -> Error {
    Error::InvalidArgument(format!(
        "non-finite similarity between {a}[{i}] and {b}[{j}]: one of them holds NaN or Inf, \
         or the dot product overflowed float32"
    ))
}

/// Part `p` of `parts` over `0..n` cut at multiples of `block` (`blocks` of them cover n):
/// `(start, end)`, parts differing by at most one block, so the threads finish together.
pub(crate) fn block_part(p: usize, parts: usize, blocks: usize, block: usize, n: usize) -> (usize, usize) {
    ((p * blocks / parts) * block, ((p + 1) * blocks / parts * block).min(n))
}

/// Run `f(i)` for `i in 0..n`, on the current rayon pool when `parallel`, in order otherwise.
pub(crate) fn map_range<R: Send>(parallel: bool, n: usize, f: impl Fn(usize) -> R + Sync + Send) -> Vec<R> {
    if parallel {
        (0..n).into_par_iter().with_max_len(1).map(f).collect()
    } else {
        (0..n).map(f).collect()
    }
}

/// Raw pointer to the output matrix shared by tiles that write disjoint rectangles.
#[derive(Clone, Copy)]
struct OutPtr(*mut f32);
// SAFETY: each tile writes only its own rectangle of the output (see `similarity`).
unsafe impl Send for OutPtr {}
unsafe impl Sync for OutPtr {}

/// The full `a.rows x b.rows` similarity matrix `a @ b.T`, row-major.
///
/// Tiles of `QUERY_BLOCK x DB_BLOCK` run in parallel; each checks its scores for NaN/Inf.
pub fn similarity(a: &Embeddings<'_>, b: &Embeddings<'_>, num_threads: Option<usize>) -> Result<Vec<f32>> {
    check_dims(a, "a", b, "b")?;
    let _blas = crate::blas::SingleThreaded::new();
    let (m, n) = (a.rows, b.rows);
    let len = m.checked_mul(n).ok_or_else(|| Error::Shape(format!("a {m} x {n} similarity matrix is too large")))?;
    let mut out = vec![0.0f32; len];
    if len == 0 {
        return Ok(out);
    }
    let row_blocks = m.div_ceil(QUERY_BLOCK);
    let col_blocks = n.div_ceil(DB_BLOCK);
    // One task per (column block, group of row blocks): each task widens its f16 column
    // block once, and there are enough tasks to keep every thread busy.
    let row_groups = row_blocks.min((4 * resolve_num_threads(num_threads)).div_ceil(col_blocks)).max(1);
    let blocks_per_group = row_blocks.div_ceil(row_groups);
    let kernel = Kernel::for_queries(m);
    let ptr = OutPtr(out.as_mut_ptr());
    let task = |t: usize| -> Result<()> {
        #[allow(clippy::redundant_locals, reason = "moves the whole Send wrapper into the closure, not its raw-pointer field")]
        let ptr = ptr;
        let (cb, group) = (t / row_groups, t % row_groups);
        let (c0, c1) = (cb * DB_BLOCK, ((cb + 1) * DB_BLOCK).min(n));
        let (mut scratch_a, mut scratch_b, mut scratch_dot) = (Vec::new(), Vec::new(), Vec::new());
        // The dot kernel reads `b` in its stored dtype; sgemm needs the block as f32.
        let use_dot = kernel == Kernel::Dot && a.dim > 0;
        let bb = if use_dot { Cow::Borrowed(&[][..]) } else { b.block(c0, c1, &mut scratch_b) };
        let first = group * blocks_per_group;
        for rb in first..(first + blocks_per_group).min(row_blocks) {
            let (r0, r1) = (rb * QUERY_BLOCK, ((rb + 1) * QUERY_BLOCK).min(m));
            let ab = a.block(r0, r1, &mut scratch_a);
            let (h, w) = (r1 - r0, c1 - c0);
            // SAFETY: rows r0..r1 x columns c0..c1 of `out` belong to this task alone
            // (tasks own disjoint column blocks x row groups); `out` outlives the call
            // and nothing else reads or writes it meanwhile.
            unsafe {
                let corner = ptr.0.add(r0 * n + c0);
                if use_dot {
                    crate::dot::dots(&ab, h, b.rows_slice(c0, c1), w, a.dim, corner, n, &mut scratch_dot);
                } else {
                    block_product_raw(kernel, &ab, h, &bb, w, a.dim, corner, n);
                }
                for i in 0..h {
                    let row = std::slice::from_raw_parts(corner.add(i * n), w);
                    check_finite_tile(row, 1, w, w, r0 + i, c0, ("a", "b"))?;
                }
            }
        }
        Ok(())
    };
    let tasks = col_blocks * row_groups;
    // Few queries stream `b` once: shared with the caller working (see `run_shared`).
    let results = if kernel == Kernel::Dot && resolve_num_threads(num_threads) > 1 {
        crate::batch::run_shared(num_threads, tasks, task)?
    } else {
        run_parallel(num_threads, |parallel| map_range(parallel, tasks, task))?
    };
    // Report the error of the first failing task, so the message does not depend on timing.
    results.into_iter().collect::<Result<Vec<()>>>()?;
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn naive(a: &[f32], m: usize, b: &[f32], n: usize, d: usize) -> Vec<f32> {
        let mut out = vec![0.0; m * n];
        for i in 0..m {
            for j in 0..n {
                out[i * n + j] = (0..d).map(|t| a[i * d + t] * b[j * d + t]).sum();
            }
        }
        out
    }

    /// Small integers (7 levels): every product and sum is exact in f32, so any order gives one answer.
    fn ints(len: usize, seed: u64) -> Vec<f32> {
        crate::test_data::small_ints(len, seed, 7)
    }

    #[test]
    fn matches_naive_across_tile_edges() {
        let (m, n, d) = (QUERY_BLOCK + 3, DB_BLOCK + 5, 17);
        let a = ints(m * d, 1);
        let b = ints(n * d, 2);
        let ea = Embeddings::f32(&a, m, d, "a").unwrap();
        let eb = Embeddings::f32(&b, n, d, "b").unwrap();
        for threads in [1, 3] {
            assert_eq!(similarity(&ea, &eb, Some(threads)).unwrap(), naive(&a, m, &b, n, d));
        }
    }

    #[test]
    fn dot_kernel_matches_gemm_on_exact_data() {
        let (n, d) = (DB_BLOCK + 9, 37); // 37: two 16-lane chunks and a tail
        let b = ints(n * d, 7);
        let eb = Embeddings::f32(&b, n, d, "b").unwrap();
        for m in [1, SMALL_QUERY_COUNT, SMALL_QUERY_COUNT + 1] {
            let a = ints(m * d, 8);
            let ea = Embeddings::f32(&a, m, d, "a").unwrap();
            assert_eq!(similarity(&ea, &eb, Some(2)).unwrap(), naive(&a, m, &b, n, d), "m={m}");
        }
        let mut out = vec![0.0; n];
        let a = ints(d, 9);
        block_product(Kernel::Gemm, &a, 1, &b, n, d, &mut out, n);
        let mut out_dot = vec![0.0; n];
        block_product(Kernel::Dot, &a, 1, &b, n, d, &mut out_dot, n);
        assert_eq!(out, out_dot);
    }

    #[test]
    fn f16_database_is_widened_exactly() {
        let (m, n, d) = (5, 40, 9);
        let a = ints(m * d, 3);
        let b = ints(n * d, 4);
        let b16: Vec<f16> = b.iter().map(|&x| f16::from_f32(x)).collect();
        let ea = Embeddings::f32(&a, m, d, "a").unwrap();
        let eb = Embeddings::f16(&b16, n, d, "b").unwrap();
        assert_eq!(similarity(&ea, &eb, Some(2)).unwrap(), naive(&a, m, &b, n, d));
    }

    #[test]
    fn empty_and_zero_dim() {
        let ea = Embeddings::f32(&[], 0, 4, "a").unwrap();
        let b = [1.0; 8];
        let eb = Embeddings::f32(&b, 2, 4, "b").unwrap();
        assert!(similarity(&ea, &eb, None).unwrap().is_empty());
        let za = Embeddings::f32(&[], 3, 0, "a").unwrap();
        let zb = Embeddings::f32(&[], 2, 0, "b").unwrap();
        assert_eq!(similarity(&za, &zb, None).unwrap(), vec![0.0; 6]);
    }

    #[test]
    fn shape_errors_name_the_argument() {
        let err = Embeddings::f32(&[1.0; 5], 2, 3, "database").unwrap_err().to_string();
        assert!(err.contains("database"), "{err}");
        let a = Embeddings::f32(&[1.0; 6], 2, 3, "a").unwrap();
        let b = Embeddings::f32(&[1.0; 8], 2, 4, "b").unwrap();
        let err = similarity(&a, &b, None).unwrap_err().to_string();
        assert!(err.contains("dimension 3") && err.contains("dimension 4"), "{err}");
    }

    #[test]
    fn nan_in_database_is_reported_with_its_row() {
        let a = [1.0f32, 0.0];
        let mut b = vec![0.5f32; 2 * 2000];
        b[2 * 1500 + 1] = f32::NAN; // multiplied by 0.0 in the query, still NaN
        let ea = Embeddings::f32(&a, 1, 2, "a").unwrap();
        let eb = Embeddings::f32(&b, 2000, 2, "b").unwrap();
        let err = similarity(&ea, &eb, Some(2)).unwrap_err().to_string();
        assert!(err.contains("b[1500]"), "{err}");
    }
}
