//! Many-query tile products: ferroclip's own sgemm micro-kernels (AVX-512, AVX2 + FMA).
//!
//! Why our own: ferroclip promises that a score depends only on its two vectors, not on
//! the tile it lands in, so `similarity`, `topk`, `recall_at_k` and `near_duplicates` agree
//! bit for bit. A BLAS splits the sum over k differently depending on the call's shape;
//! `matrixmultiply` keeps that promise but reaches ~75-90% of OpenBLAS. Here every score
//! is one sequential FMA chain over `k = 0..dim` (`dot_sequential`), whatever the tile,
//! the block remainder, the thread **or the kernel**: the AVX-512 and the AVX2 kernel give
//! the same bits (tested), so results do not change with the CPU's vector width.
//!
//! Layout: a register block of MR query rows x NR database rows (AVX2 6 x 16 in 12 ymm,
//! AVX-512 14 x 32 in 28 zmm). The database block is packed once per tile into NR-row
//! panels (`panel[k * NR + t] = row_t[k]`, 8 x 8 register transposes), or once per scan
//! for rows that many query blocks meet (`PackedRows`); f16 rows are widened as they are
//! packed (`Elem`), exactly, so they score like their f32 copy; the MR query rows
//! are broadcast from the caller's row-major matrix (AVX2) or from a block packed once per
//! scan (`PackedQueries`, AVX-512). A query group stays in L1 while a block of panels,
//! sized for L2, streams past it (the BLIS order, a panel in L1 and query groups streamed
//! from L2, ran ~8% slower on Zen 3 and no faster on Sapphire Rapids). A dimension
//! up to `kc_max` is one pass; longer ones are split into equal passes whose partial sums
//! are stored and reloaded, which leaves each FMA chain's bits unchanged.
//! Measured with `examples/tile_bench.rs` (see the retrieval report for the full runs).

mod avx2;
mod avx512;
mod pack;
mod pairs;

use std::cell::RefCell;

pub(crate) use pack::Elem;
use pack::{pack_panel, Prefetcher};

/// Per-kernel cache blocking.
#[derive(Clone, Copy)]
struct Blocking {
    /// Most elements of k per pass.
    kc_max: usize,
    /// Packed database bytes per block of panels.
    block_bytes: usize,
}

/// The built-in product's kernel on this machine.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Isa {
    Avx512,
    Avx2,
}

impl Isa {
    pub(crate) fn name(self) -> &'static str {
        match self {
            Isa::Avx512 => "ferroclip-avx512",
            Isa::Avx2 => "ferroclip-avx2",
        }
    }
}

/// The kernel for this process: the widest the CPU has, unless `FERROCLIP_GEMM` asks for
/// a narrower one (`avx2`, or `matrixmultiply` for none; for benchmarks and bisecting).
/// `None`: no AVX2 + FMA + F16C, or `matrixmultiply` asked for.
pub(crate) fn isa() -> Option<Isa> {
    static ISA: std::sync::OnceLock<Option<Isa>> = std::sync::OnceLock::new();
    *ISA.get_or_init(|| {
        let asked = std::env::var("FERROCLIP_GEMM").unwrap_or_default().trim().to_ascii_lowercase();
        let widest = if avx512::supported() {
            Some(Isa::Avx512)
        } else if avx2::supported() {
            Some(Isa::Avx2)
        } else {
            None
        };
        match asked.as_str() {
            "matrixmultiply" => None,
            "avx2" => avx2::supported().then_some(Isa::Avx2),
            _ => widest,
        }
    })
}

/// `out[i * ldc + j] = <q_i, d_j>` for `i < m`, `j < n`, with `dot_sequential`'s bits.
///
/// Rows of `d` beyond `n` are not scored; the first block of them is prefetched, as the
/// caller's next tile (see `pack::prefetch_next`).
///
/// # Safety
/// `isa` is supported (as `isa()` returns it); `q` holds m rows and `d` n rows of `dim`;
/// `out` is valid for writes at `i * ldc + j` for `i < m`, `j < n`, and nothing else
/// accesses those elements meanwhile.
#[allow(clippy::too_many_arguments, reason = "a BLAS-style kernel signature: matrix pointers, sizes and strides")]
pub(crate) unsafe fn product<T: Elem>(isa: Isa, q: &[f32], m: usize, d: &[T], n: usize, dim: usize, out: *mut f32, ldc: usize) {
    match isa {
        Isa::Avx512 => avx512::product(q, m, d, n, dim, out, ldc),
        Isa::Avx2 => avx2::product(q, m, d, n, dim, out, ldc),
    }
}

/// `out[j] = <a[j], b_j>` (`b_j`: row j of `b`, n x dim) with the bits the kernels give
/// the pair in any tile, and the largest magnitude in those rows of `b` (None when one is
/// NaN or infinite); `Err(())` where no kernel runs (`isa()` is None: the products then
/// come from `matrixmultiply`, whose bits these are not).
pub(crate) fn pair_dots(a: &[&[f32]], b: &[f32], dim: usize, out: &mut [f32]) -> Result<Option<f32>, ()> {
    if isa().is_none() {
        return Err(());
    }
    assert!(b.len() >= a.len() * dim && out.len() >= a.len() && a.iter().all(|r| r.len() >= dim), "pair_dots: inputs too short");
    if a.is_empty() {
        return Ok(Some(0.0));
    }
    // SAFETY: both kernels need AVX2 + FMA, which `isa()` checked; lengths checked above.
    let max = unsafe { pairs::pair_dots(a, b, dim, out) };
    Ok((max < f32::INFINITY.to_bits()).then(|| f32::from_bits(max)))
}

/// The evaluation order of every score these kernels compute: one FMA chain from 0.
#[cfg(test)]
pub(crate) fn dot_sequential(a: &[f32], b: &[f32]) -> f32 {
    a.iter().zip(b).fold(0.0f32, |s, (x, y)| x.mul_add(*y, s))
}

/// Elements of k per pass for `dim`: equal passes of at most `kc_max`, multiples of 8
/// (the transposes' width) where `dim` allows.
fn pass_len(dim: usize, kc_max: usize) -> usize {
    let passes = dim.div_ceil(kc_max).max(1);
    dim.div_ceil(passes).next_multiple_of(8).min(dim)
}

/// The MR row pointers of query rows `i..i + rows` at element `k0`, the last row repeated
/// past `rows` (those results are not stored).
#[inline(always)]
unsafe fn row_group<const MR: usize>(q: &[f32], dim: usize, i: usize, rows: usize, k0: usize) -> [*const f32; MR] {
    std::array::from_fn(|r| q.as_ptr().add((i + r.min(rows - 1)) * dim + k0))
}

/// A query block packed once for many products (top-k and recall score the same queries
/// against every tile of the database): per group of the kernel's MR rows and per k pass,
/// `kc x MR` floats with `block[k * MR + r] = q[i + r][k0 + k]`, so the micro-kernel reads
/// its broadcasts as one sequential stream instead of MR rows `dim` apart. Built only for
/// the AVX-512 kernel (the AVX2 kernel, tuned on Zen 3, reads the rows in place).
pub(crate) struct PackedQueries {
    isa: Isa,
    m: usize,
    dim: usize,
    kc_max: usize,
    passes: usize,
    data: Vec<f32>,
}

impl PackedQueries {
    /// `q` holds `m` rows of `dim`; `None` where the kernel reads rows in place.
    pub(crate) fn new(isa: Isa, q: &[f32], m: usize, dim: usize) -> Option<Self> {
        if isa != Isa::Avx512 || m == 0 || dim == 0 {
            return None;
        }
        assert!(q.len() >= m * dim, "PackedQueries: q too short");
        let mr = avx512::MR;
        let kc_max = pass_len(dim, avx512::BLOCKING.kc_max);
        let passes = dim.div_ceil(kc_max);
        let groups = m.div_ceil(mr);
        let mut data = vec![0.0f32; groups * passes * kc_max * mr];
        for g in 0..groups {
            let rows = (m - g * mr).min(mr);
            for pass in 0..passes {
                let (k0, kc) = (pass * kc_max, kc_max.min(dim - pass * kc_max));
                let block = &mut data[(g * passes + pass) * kc_max * mr..][..kc * mr];
                let group = std::array::from_fn(|r| q[(g * mr + r.min(rows - 1)) * dim + k0..][..kc].as_ptr());
                // SAFETY: the AVX-512 kernel's CPUs have AVX2 (`avx512::supported`); each
                // row holds kc floats (sliced above), `block` kc * MR.
                unsafe { pack::pack_query_group::<{ avx512::MR }>(group, kc, block) };
            }
        }
        Some(Self { isa, m, dim, kc_max, passes, data })
    }

    pub(crate) fn rows(&self) -> usize {
        self.m
    }

    /// The packed block of the group starting at row `i`, pass starting at `k0`.
    #[inline(always)]
    fn block(&self, i: usize, k0: usize) -> *const f32 {
        let (g, pass) = (i / avx512::MR, k0 / self.kc_max);
        // In bounds: g < groups and pass < passes for every (i, k0) the driver visits.
        self.data[(g * self.passes + pass) * self.kc_max * avx512::MR..].as_ptr()
    }
}

/// `product` for packed queries: the same bits as `product` on the rows they were packed
/// from.
///
/// # Safety
/// As `product`, with `q` = the packed rows (`pq.rows()` of `dim`).
pub(crate) unsafe fn product_packed<T: Elem>(pq: &PackedQueries, d: &[T], n: usize, dim: usize, out: *mut f32, ldc: usize) {
    debug_assert_eq!(dim, pq.dim);
    match pq.isa {
        Isa::Avx512 => avx512::product_packed(pq, d, n, dim, out, ldc),
        Isa::Avx2 => unreachable!("queries are packed for the AVX-512 kernel only"),
    }
}

/// Database rows packed once into a kernel's panels, for scans that score the same rows
/// against many query blocks: recall scores every text against each image strip, and
/// packing each text tile again for every strip was ~4.6% of recall 5k x 25k on one
/// thread; packed once it is 0.5-1% (perf, Sapphire Rapids class). Layout
/// (`pack::pack_rows`): panel after panel, each panel's k passes after one another,
/// `NR * kc_max` floats per pass; the same panels `pack_panel` makes as the driver goes,
/// so the same bits.
pub(crate) struct PackedRows {
    isa: Isa,
    n: usize,
    dim: usize,
    kc_max: usize,
    passes: usize,
    data: Vec<f32>,
}

impl PackedRows {
    /// Database rows of the kernel's panel width per packing task (16 KiB a row at D = 4096).
    const PIECE_ROWS: usize = 256;

    /// No rows yet, for `dim`-element rows and `isa`'s kernel (see `repack`).
    pub(crate) fn new(isa: Isa, dim: usize) -> Self {
        let kc_max = match isa {
            Isa::Avx512 => avx512::BLOCKING.kc_max,
            Isa::Avx2 => avx2::BLOCKING.kc_max,
        };
        let kc_max = pass_len(dim.max(1), kc_max);
        Self { isa, n: 0, dim, kc_max, passes: dim.div_ceil(kc_max), data: Vec::new() }
    }

    /// Pack `n` rows in place of the ones held (the buffer is reused: a scan in chunks
    /// page-faults one chunk's worth of memory, not the whole database's), in pieces on the
    /// current rayon pool when `parallel`; `rows(r0, r1, pack)` calls `pack` with rows
    /// `r0..r1` as f32 (f16 storage widens them a piece at a time).
    pub(crate) fn repack(&mut self, n: usize, parallel: bool, rows: impl Fn(usize, usize, &mut dyn FnMut(&[f32])) + Sync) {
        use rayon::prelude::*;
        let Self { isa, dim, kc_max, passes, .. } = *self;
        let nr = match isa {
            Isa::Avx512 => avx512::NR,
            Isa::Avx2 => avx2::NR,
        };
        let panel_floats = passes * nr * kc_max;
        let len = n.div_ceil(nr) * panel_floats;
        if self.data.len() < len {
            self.data.resize(len, 0.0);
        }
        self.n = n;
        let pack = |(piece, out): (usize, &mut [f32])| {
            let r0 = piece * Self::PIECE_ROWS;
            let r1 = (r0 + Self::PIECE_ROWS).min(n);
            rows(r0, r1, &mut |d| {
                assert!(d.len() >= (r1 - r0) * dim, "PackedRows: rows too short");
                // SAFETY: the kernels imply AVX; `out` holds this piece's panels (the
                // chunks below), and `d` its rows.
                unsafe {
                    match isa {
                        Isa::Avx512 => pack::pack_rows::<{ avx512::NR }>(d, r1 - r0, dim, kc_max, passes, out),
                        Isa::Avx2 => pack::pack_rows::<{ avx2::NR }>(d, r1 - r0, dim, kc_max, passes, out),
                    }
                }
            });
        };
        if dim > 0 {
            let piece = Self::PIECE_ROWS / nr * panel_floats;
            let data = &mut self.data[..len];
            if parallel {
                data.par_chunks_mut(piece).with_max_len(1).enumerate().for_each(pack);
            } else {
                data.chunks_mut(piece).enumerate().for_each(pack);
            }
        }
    }

    pub(crate) fn rows(&self) -> usize {
        self.n
    }
}

thread_local! {
    /// Packed panels, reused across calls on this thread.
    static PACKED: RefCell<Vec<f32>> = const { RefCell::new(Vec::new()) };
}

/// Where `drive` gets a product's panels: packed from the database rows block by block,
/// or packed beforehand (`PackedRows`).
trait PanelSource {
    /// Panels `p0..p1` of the product for the k pass at `k0` (`kc` long): the first
    /// panel's address and the distance in floats between consecutive panels.
    unsafe fn block(&mut self, p0: usize, p1: usize, k0: usize, kc: usize) -> (*const f32, usize);
    /// Query group `g`'s share (of `groups`) of what `block(p0, p1, k0, kc)` will read;
    /// `p1` may run past the product into the caller's next tile, as far as rows are held.
    fn next<const HINT: i32>(&self, p0: usize, p1: usize, k0: usize, kc: usize, g: usize, groups: usize) -> Prefetcher<HINT>;
}

/// Panels packed from row-major rows (`d`: the product's `n` rows, then whatever of the
/// caller's next tile it holds) into this thread's buffer.
struct Packing<'a, const NR: usize, T> {
    d: &'a [T],
    n: usize,
    dim: usize,
    panel_len: usize,
    buf: &'a mut Vec<f32>,
}

impl<const NR: usize, T: Elem> PanelSource for Packing<'_, NR, T> {
    #[inline(always)]
    unsafe fn block(&mut self, p0: usize, p1: usize, k0: usize, kc: usize) -> (*const f32, usize) {
        if self.buf.len() < (p1 - p0) * self.panel_len {
            self.buf.resize((p1 - p0) * self.panel_len, 0.0);
        }
        let pp = self.buf.as_mut_ptr();
        for p in p0..p1 {
            let j = p * NR;
            pack_panel::<NR, T>(self.d.as_ptr(), self.dim, j, (self.n - j).min(NR), k0, kc, pp.add((p - p0) * self.panel_len));
        }
        (pp, self.panel_len)
    }

    #[inline(always)]
    fn next<const HINT: i32>(&self, p0: usize, p1: usize, k0: usize, kc: usize, g: usize, groups: usize) -> Prefetcher<HINT> {
        let held = self.d.len() / self.dim;
        let rows = (p0 * NR).min(held)..(p1 * NR).min(held);
        Prefetcher::share(self.d.as_ptr().wrapping_add(k0), self.dim, kc, rows, g, groups)
    }
}

/// The panels of `PackedRows` from panel `first` on.
struct Prepacked<'a> {
    db: &'a PackedRows,
    /// Panel width (the kernel's NR).
    nr: usize,
    first: usize,
    panels: usize,
}

impl PanelSource for Prepacked<'_> {
    #[inline(always)]
    unsafe fn block(&mut self, p0: usize, _: usize, k0: usize, _: usize) -> (*const f32, usize) {
        let panel_len = self.nr * self.db.kc_max;
        let at = ((self.first + p0) * self.db.passes + k0 / self.db.kc_max) * panel_len;
        (self.db.data.as_ptr().add(at), self.db.passes * panel_len)
    }

    #[inline(always)]
    fn next<const HINT: i32>(&self, p0: usize, p1: usize, k0: usize, kc: usize, g: usize, groups: usize) -> Prefetcher<HINT> {
        let panel_len = self.nr * self.db.kc_max;
        let rows = (self.first + p0).min(self.panels)..(self.first + p1).min(self.panels);
        let base = self.db.data.as_ptr().wrapping_add(k0 / self.db.kc_max * panel_len);
        Prefetcher::share(base, self.db.passes * panel_len, kc * self.nr, rows, g, groups)
    }
}

/// `product_packed`'s scores for database rows `c0..c1` of `db` (`c0` a multiple of the
/// panel width: the callers' tiles), from panels packed beforehand: the same bits.
///
/// # Safety
/// As `product`, with `q` = the `m` query rows (read in place by the AVX2 kernel) and `pq`
/// the same rows packed (for the AVX-512 kernel; required there); `db.isa` is supported.
pub(crate) unsafe fn product_prepacked(
    q: &[f32],
    pq: Option<&PackedQueries>,
    m: usize,
    db: &PackedRows,
    (c0, c1): (usize, usize),
    out: *mut f32,
    ldc: usize,
) {
    assert!(c0 <= c1 && c1 <= db.n, "product_prepacked: columns out of range");
    let dim = db.dim;
    match db.isa {
        Isa::Avx512 => {
            let pq = pq.expect("the AVX-512 kernel reads packed queries");
            assert!(pq.rows() == m && pq.dim == dim && c0 % avx512::NR == 0, "product_prepacked: mismatched inputs");
            let mut source = Prepacked { db, nr: avx512::NR, first: c0 / avx512::NR, panels: db.n.div_ceil(avx512::NR) };
            avx512::product_prepacked(pq, &mut source, c1 - c0, dim, out, ldc);
        }
        Isa::Avx2 => {
            assert!(q.len() >= m * dim && c0 % avx2::NR == 0, "product_prepacked: mismatched inputs");
            let mut source = Prepacked { db, nr: avx2::NR, first: c0 / avx2::NR, panels: db.n.div_ceil(avx2::NR) };
            avx2::product_prepacked(q, m, &mut source, c1 - c0, dim, out, ldc);
        }
    }
}

/// Run `f` with the panel source that packs rows `d` (the product's `n` and the caller's
/// next tile) into this thread's buffer.
#[inline(always)]
unsafe fn with_packing<const NR: usize, T: Elem, R>(d: &[T], n: usize, dim: usize, kc_max: usize, f: impl FnOnce(&mut Packing<'_, NR, T>) -> R) -> R {
    PACKED.with(|cell| {
        let mut buf = cell.borrow_mut();
        let panel_len = NR * pass_len(dim, kc_max);
        f(&mut Packing { d, n, dim, panel_len, buf: &mut buf })
    })
}

/// The blocked product around one micro-kernel `micro(query group, panel, kc, out, ldc,
/// rows, cols, first, prefetcher)` over `n` database rows from `source`, where `group(i,
/// rows, k0)` gives the micro-kernel's view of query rows `i..i + rows` from element `k0`
/// (row pointers, or a packed block) and the prefetcher holds the group's share of the
/// next block's rows or panels, which the micro-kernel prefetches as it goes (`HINT`:
/// the kernel's prefetch level). Inlined into each kernel's `target_feature` function,
/// so the packing and the micro-kernel are compiled for that kernel's instruction set.
#[inline(always)]
#[allow(clippy::too_many_arguments)]
unsafe fn drive<const MR: usize, const NR: usize, const HINT: i32, A>(
    m: usize,
    source: &mut impl PanelSource,
    n: usize,
    dim: usize,
    out: *mut f32,
    ldc: usize,
    blocking: Blocking,
    group: impl Fn(usize, usize, usize) -> A,
    micro: impl Fn(&A, *const f32, usize, *mut f32, usize, usize, usize, bool, &mut Prefetcher<HINT>),
) {
    debug_assert!(dim > 0);
    if m == 0 || n == 0 {
        return;
    }
    let panels = n.div_ceil(NR);
    let kc_max = pass_len(dim, blocking.kc_max);
    let block_panels = (blocking.block_bytes / (NR * kc_max * 4)).max(1).min(panels);
    let groups = m.div_ceil(MR);
    for p0 in (0..panels).step_by(block_panels) {
        let p1 = (p0 + block_panels).min(panels);
        for k0 in (0..dim).step_by(kc_max) {
            let kc = kc_max.min(dim - k0);
            let (base, stride) = source.block(p0, p1, k0, kc);
            // What the next block reads: this block's next pass, else the next block (or
            // the caller's next tile).
            let next = if k0 + kc < dim { (p0, p1, k0 + kc, kc_max.min(dim - k0 - kc)) } else { (p1, p1 + block_panels, 0, kc_max) };
            // Each query group (L1) meets every panel of the block (L2).
            for i in (0..m).step_by(MR) {
                let mut prefetch = source.next::<HINT>(next.0, next.1, next.2, next.3, i / MR, groups);
                let rows = (m - i).min(MR);
                let qg = group(i, rows, k0);
                for p in p0..p1 {
                    let (j, panel) = (p * NR, base.add((p - p0) * stride));
                    micro(&qg, panel, kc, out.add(i * ldc + j), ldc, rows, (n - j).min(NR), k0 == 0, &mut prefetch);
                }
                prefetch.finish();
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every kernel this CPU has (`cfg` names them) against `dot_sequential`.
    fn kernels() -> Vec<Isa> {
        let mut v = Vec::new();
        if avx512::supported() {
            v.push(Isa::Avx512);
        }
        if avx2::supported() {
            v.push(Isa::Avx2);
        }
        v
    }

    /// Same bits as one sequential FMA chain for every block remainder, tail and block
    /// boundary, for each kernel the CPU has (so the AVX-512 and AVX2 kernels agree bit
    /// for bit); rows of `d` past `n` are not read into the result.
    #[test]
    fn matches_dot_sequential_bit_for_bit() {
        let isas = kernels();
        eprintln!("gemm kernels tested on this CPU: {isas:?}");
        for isa in isas {
            for dim in [1, 5, 8, 33, 512, 520, 1100] {
                // dim 520: two k passes (264 + 256), 1100 three (368 + 368 + 364); at dim
                // 512 an AVX2 block holds 4 panels (64 rows), an AVX-512 one 8 (256 rows), so
                // n = 150, 300 and 700 span several blocks; m = 13, 25 leave a group remainder.
                for (m, n) in [(1, 1), (6, 16), (7, 17), (12, 32), (13, 40), (25, 33), (5, 150), (7, 300), (3, 700)] {
                    let q = crate::test_data::noise(m * dim, dim as u64 * 7 + m as u64);
                    let mut d = crate::test_data::noise(n * dim, dim as u64 * 13 + n as u64);
                    // Rows past n are only prefetched (the next tile): NaN there must not show.
                    d.extend(std::iter::repeat_n(f32::NAN, 70 * dim));
                    let ldc = n + 3;
                    let mut got = vec![f32::NAN; m * ldc];
                    unsafe { product(isa, &q, m, &d, n, dim, got.as_mut_ptr(), ldc) };
                    if let Some(pq) = PackedQueries::new(isa, &q, m, dim) {
                        let mut packed = vec![f32::NAN; m * ldc];
                        unsafe { product_packed(&pq, &d, n, dim, packed.as_mut_ptr(), ldc) };
                        let bits = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
                        assert_eq!(bits(&packed), bits(&got), "{isa:?} packed dim={dim} m={m} n={n}");
                    }
                    for i in 0..m {
                        for j in 0..n {
                            let want = dot_sequential(&q[i * dim..(i + 1) * dim], &d[j * dim..(j + 1) * dim]);
                            assert_eq!(got[i * ldc + j].to_bits(), want.to_bits(), "{isa:?} dim={dim} m={m} n={n} ({i},{j})");
                        }
                        assert!(got[i * ldc + n..(i + 1) * ldc].iter().all(|x| x.is_nan()), "{isa:?} wrote outside the tile");
                    }
                    // f16 rows, widened as they are packed: the bits of the widened f32 rows
                    // (NaN rows past n again, prefetched only).
                    let d16: Vec<half::f16> = d.iter().map(|&x| half::f16::from_f32(x)).collect();
                    let wide: Vec<f32> = d16.iter().map(|x| x.to_f32()).collect();
                    let mut want16 = vec![f32::NAN; m * ldc];
                    unsafe { product(isa, &q, m, &wide, n, dim, want16.as_mut_ptr(), ldc) };
                    let mut got16 = vec![f32::NAN; m * ldc];
                    unsafe { product(isa, &q, m, &d16, n, dim, got16.as_mut_ptr(), ldc) };
                    let bits = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
                    assert_eq!(bits(&got16), bits(&want16), "{isa:?} f16 dim={dim} m={m} n={n}");
                    assert_eq!(
                        want16[..n].iter().map(|x| x.to_bits()).collect::<Vec<_>>(),
                        (0..n).map(|j| dot_sequential(&q[..dim], &wide[j * dim..(j + 1) * dim]).to_bits()).collect::<Vec<_>>(),
                        "{isa:?} widened f16 rows dim={dim} m={m} n={n}"
                    );
                    if let Some(pq) = PackedQueries::new(isa, &q, m, dim) {
                        let mut packed16 = vec![f32::NAN; m * ldc];
                        unsafe { product_packed(&pq, &d16, n, dim, packed16.as_mut_ptr(), ldc) };
                        assert_eq!(bits(&packed16), bits(&want16), "{isa:?} packed f16 dim={dim} m={m} n={n}");
                    }
                }
            }
        }
    }

    /// Panels packed beforehand (`PackedRows`, serially and in parallel pieces) give each
    /// score the same bits as one sequential FMA chain, for tiles of columns that start at a
    /// panel boundary inside the packed rows; the rows around the tile (NaN) must not show.
    #[test]
    fn prepacked_rows_match_dot_sequential_bit_for_bit() {
        for isa in kernels() {
            let nr = match isa {
                Isa::Avx512 => avx512::NR,
                Isa::Avx2 => avx2::NR,
            };
            for dim in [1, 8, 33, 512, 1100] {
                // (queries, first column, last column, rows packed): a partial last panel,
                // tiles after other panels, several blocks, and more rows than one packing
                // piece (`PackedRows::PIECE_ROWS`).
                for (m, c0, c1, total) in [(1, 0, 1, 1), (13, 0, 40, 40), (25, nr, nr + 33, 3 * nr + 40), (7, 2 * nr, 2 * nr + 300, 2 * nr + 370), (3, 0, 700, 700)] {
                    let q = crate::test_data::noise(m * dim, dim as u64 * 5 + m as u64);
                    let mut d = vec![f32::NAN; total * dim];
                    d[c0 * dim..c1 * dim].copy_from_slice(&crate::test_data::noise((c1 - c0) * dim, dim as u64 * 11 + c1 as u64));
                    let pq = PackedQueries::new(isa, &q, m, dim);
                    let n = c1 - c0;
                    let ldc = n + 3;
                    // Packed over a buffer that held other rows (longer ones, NaN).
                    let mut db = PackedRows::new(isa, dim);
                    db.repack(total + 90, false, |r0, r1, pack| pack(&vec![f32::NAN; (r1 - r0) * dim]));
                    for parallel in [false, true] {
                        db.repack(total, parallel, |r0, r1, pack| pack(&d[r0 * dim..r1 * dim]));
                        let mut got = vec![f32::NAN; m * ldc];
                        unsafe { product_prepacked(&q, pq.as_ref(), m, &db, (c0, c1), got.as_mut_ptr(), ldc) };
                        for i in 0..m {
                            for j in 0..n {
                                let want = dot_sequential(&q[i * dim..(i + 1) * dim], &d[(c0 + j) * dim..(c0 + j + 1) * dim]);
                                assert_eq!(got[i * ldc + j].to_bits(), want.to_bits(), "{isa:?} dim={dim} m={m} cols {c0}..{c1} ({i},{j})");
                            }
                            assert!(got[i * ldc + n..(i + 1) * ldc].iter().all(|x| x.is_nan()), "{isa:?} wrote outside the tile");
                        }
                    }
                }
            }
        }
    }
}
