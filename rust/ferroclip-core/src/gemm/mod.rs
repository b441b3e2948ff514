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
//! panels (`panel[k * NR + t] = row_t[k]`, 8 x 8 register transposes); the MR query rows
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

use std::cell::RefCell;

use pack::{pack_panel, NextPack, Prefetcher};

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
/// `None`: no AVX2 + FMA, or `matrixmultiply` asked for.
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
pub(crate) unsafe fn product(isa: Isa, q: &[f32], m: usize, d: &[f32], n: usize, dim: usize, out: *mut f32, ldc: usize) {
    match isa {
        Isa::Avx512 => avx512::product(q, m, d, n, dim, out, ldc),
        Isa::Avx2 => avx2::product(q, m, d, n, dim, out, ldc),
    }
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
                for r in 0..mr {
                    let row = &q[(g * mr + r.min(rows - 1)) * dim + k0..][..kc];
                    for (k, &x) in row.iter().enumerate() {
                        block[k * mr + r] = x;
                    }
                }
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
pub(crate) unsafe fn product_packed(pq: &PackedQueries, d: &[f32], n: usize, dim: usize, out: *mut f32, ldc: usize) {
    debug_assert_eq!(dim, pq.dim);
    match pq.isa {
        Isa::Avx512 => avx512::product_packed(pq, d, n, dim, out, ldc),
        Isa::Avx2 => unreachable!("queries are packed for the AVX-512 kernel only"),
    }
}

thread_local! {
    /// Packed panels, reused across calls on this thread.
    static PACKED: RefCell<Vec<f32>> = const { RefCell::new(Vec::new()) };
}

/// The blocked product around one micro-kernel `micro(query group, panel, kc, out, ldc,
/// rows, cols, first, prefetcher)`, where `group(i, rows, k0)` gives the micro-kernel's
/// view of query rows `i..i + rows` from element `k0` (row pointers, or a packed block)
/// and the prefetcher holds the group's share of the next packing's rows, which the
/// micro-kernel prefetches as it goes (`HINT`: the kernel's prefetch level). Inlined
/// into each kernel's `target_feature` function, so the packing and the micro-kernel are
/// compiled for that kernel's instruction set.
#[inline(always)]
#[allow(clippy::too_many_arguments)]
unsafe fn drive<const MR: usize, const NR: usize, const HINT: i32, A>(
    m: usize,
    d: &[f32],
    n: usize,
    dim: usize,
    out: *mut f32,
    ldc: usize,
    blocking: Blocking,
    group: impl Fn(usize, usize, usize) -> A,
    micro: impl Fn(&A, *const f32, usize, *mut f32, usize, usize, usize, bool, &mut Prefetcher<HINT>),
) {
    debug_assert!(d.len() >= n * dim && dim > 0);
    if m == 0 || n == 0 {
        return;
    }
    let panels = n.div_ceil(NR);
    let kc_max = pass_len(dim, blocking.kc_max);
    let panel_len = NR * kc_max;
    let block_panels = (blocking.block_bytes / (panel_len * 4)).max(1).min(panels);
    let dp = d.as_ptr();
    let rows_held = d.len() / dim;
    let groups = m.div_ceil(MR);
    PACKED.with(|cell| {
        let mut packed = cell.borrow_mut();
        if packed.len() < block_panels * panel_len {
            packed.resize(block_panels * panel_len, 0.0);
        }
        let pp = packed.as_mut_ptr();
        for p0 in (0..panels).step_by(block_panels) {
            let p1 = (p0 + block_panels).min(panels);
            for k0 in (0..dim).step_by(kc_max) {
                let kc = kc_max.min(dim - k0);
                for p in p0..p1 {
                    let j = p * NR;
                    pack_panel::<NR>(dp, dim, j, (n - j).min(NR), k0, kc, pp.add((p - p0) * panel_len));
                }
                // What the next packing reads: this block's next pass, else the next
                // block (or the caller's next tile).
                let next = if k0 + kc < dim {
                    NextPack { rows: p0 * NR..(p1 * NR).min(n), k0: k0 + kc, kc: kc_max.min(dim - k0 - kc) }
                } else {
                    NextPack { rows: p1 * NR..((p1 + block_panels) * NR).min(rows_held), k0: 0, kc: kc_max }
                };
                // Each query group (L1) meets every panel of the block (L2).
                for i in (0..m).step_by(MR) {
                    let mut prefetch = Prefetcher::<HINT>::share(dp, dim, &next, i / MR, groups);
                    let rows = (m - i).min(MR);
                    let qg = group(i, rows, k0);
                    for p in p0..p1 {
                        let (j, panel) = (p * NR, pp.add((p - p0) * panel_len));
                        micro(&qg, panel, kc, out.add(i * ldc + j), ldc, rows, (n - j).min(NR), k0 == 0, &mut prefetch);
                    }
                    prefetch.finish();
                }
            }
        }
    });
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
                }
            }
        }
    }
}
