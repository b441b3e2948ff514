//! The AVX-512 micro-kernel: 14 query rows x 32 database rows (28 zmm accumulators,
//! 2 loads + 14 broadcasts per 28 FMAs); column remainders through masked loads and
//! stores instead of a bounce buffer.

use std::arch::x86_64::{
    __mmask16, _mm512_fmadd_ps, _mm512_loadu_ps, _mm512_mask_storeu_ps, _mm512_maskz_loadu_ps, _mm512_set1_ps,
    _mm512_setzero_ps, _MM_HINT_T1,
};

use super::pack::Prefetcher;
use super::Blocking;

/// Query rows per register block: 28 accumulators, 2 panel registers and a broadcast in
/// the 32 zmm registers. (On a Sapphire Rapids-class Xeon, thread CPU time, scan tiles
/// 1024 x 128 and 512 x 128 at D = 512: 157-160 GFLOP/s best at 14 rows, 148-155 at 12,
/// 148-150 at 8; `matrixmultiply` 125-130.)
pub(super) const MR: usize = 14;
/// Database rows per packed panel (two zmm).
pub(super) const NR: usize = 32;

/// A 14-row query group of 512 elements is 28 KiB, in a 48 KiB L1d; the panels
/// (64 KiB each at D = 512) stream from a 2 MiB L2.
pub(super) const BLOCKING: Blocking = Blocking { kc_max: 512, block_bytes: 512 * 1024 };

pub(crate) fn supported() -> bool {
    static AVX512: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *AVX512.get_or_init(|| is_x86_feature_detected!("avx512f") && super::avx2::supported())
}

/// Lanes `lo..lo + 16` of the first `cols` columns, as a load/store mask.
#[inline(always)]
fn lanes(cols: usize, lo: usize) -> __mmask16 {
    let live = cols.saturating_sub(lo).min(16);
    ((1u32 << live) - 1) as __mmask16
}

/// MR query rows x one packed panel of `kc` elements: 28 FMA chains, continued from `out`
/// unless `first`, the same chain per score as the AVX2 kernel (each lane accumulates its
/// own pair over k in order). `query(r, k)` is row r's element k (in place or packed);
/// one line of the next packing's rows is prefetched (to L2) every 8 elements of k
/// (`Prefetcher::k_loop`).
#[allow(clippy::too_many_arguments, reason = "a BLAS-style kernel signature: matrix pointers, sizes and strides")]
#[inline(always)]
unsafe fn micro(
    query: impl Fn(usize, usize) -> *const f32,
    panel: *const f32,
    kc: usize,
    out: *mut f32,
    ldc: usize,
    rows: usize,
    cols: usize,
    first: bool,
    prefetch: &mut Prefetcher<{ _MM_HINT_T1 }>,
) {
    let (m0, m1) = (lanes(cols, 0), lanes(cols, 16));
    let mut acc = [_mm512_setzero_ps(); 2 * MR];
    if !first {
        for r in 0..rows {
            acc[2 * r] = _mm512_maskz_loadu_ps(m0, out.add(r * ldc));
            acc[2 * r + 1] = _mm512_maskz_loadu_ps(m1, out.add(r * ldc + 16));
        }
    }
    prefetch.k_loop(kc, |k| {
        let b0 = _mm512_loadu_ps(panel.add(k * NR));
        let b1 = _mm512_loadu_ps(panel.add(k * NR + 16));
        for r in 0..MR {
            let a = _mm512_set1_ps(*query(r, k));
            acc[2 * r] = _mm512_fmadd_ps(a, b0, acc[2 * r]);
            acc[2 * r + 1] = _mm512_fmadd_ps(a, b1, acc[2 * r + 1]);
        }
    });
    for r in 0..rows {
        _mm512_mask_storeu_ps(out.add(r * ldc), m0, acc[2 * r]);
        _mm512_mask_storeu_ps(out.add(r * ldc + 16), m1, acc[2 * r + 1]);
    }
}

/// `super::product` with this kernel, reading the query rows in place.
///
/// # Safety
/// `supported()`, and `super::product`'s contract.
#[target_feature(enable = "avx512f,avx2,fma,f16c")]
pub(super) unsafe fn product<T: super::Elem>(q: &[f32], m: usize, d: &[T], n: usize, dim: usize, out: *mut f32, ldc: usize) {
    debug_assert!(q.len() >= m * dim && d.len() >= n * dim);
    super::with_packing::<NR, T, _>(d, n, dim, BLOCKING.kc_max, |source| {
        super::drive::<MR, NR, _MM_HINT_T1, _>(
            m,
            source,
            n,
            dim,
            out,
            ldc,
            BLOCKING,
            |i, rows, k0| super::row_group::<MR>(q, dim, i, rows, k0),
            |qr, panel, kc, out, ldc, rows, cols, first, prefetch| micro(|r, k| qr[r].add(k), panel, kc, out, ldc, rows, cols, first, prefetch),
        )
    });
}

/// The product of packed queries and any panel source.
#[inline(always)]
unsafe fn packed_queries(pq: &super::PackedQueries, source: &mut impl super::PanelSource, n: usize, dim: usize, out: *mut f32, ldc: usize) {
    super::drive::<MR, NR, _MM_HINT_T1, _>(
        pq.rows(),
        source,
        n,
        dim,
        out,
        ldc,
        BLOCKING,
        |i, _, k0| pq.block(i, k0),
        |block, panel, kc, out, ldc, rows, cols, first, prefetch| micro(|r, k| block.add(k * MR + r), panel, kc, out, ldc, rows, cols, first, prefetch),
    );
}

/// `super::product_packed` with this kernel.
///
/// # Safety
/// `supported()`, and `super::product_packed`'s contract.
#[target_feature(enable = "avx512f,avx2,fma,f16c")]
pub(super) unsafe fn product_packed<T: super::Elem>(pq: &super::PackedQueries, d: &[T], n: usize, dim: usize, out: *mut f32, ldc: usize) {
    debug_assert!(d.len() >= n * dim);
    super::with_packing::<NR, T, _>(d, n, dim, BLOCKING.kc_max, |source| packed_queries(pq, source, n, dim, out, ldc));
}

/// `super::product_prepacked` with this kernel: `n` database rows from `source`.
///
/// # Safety
/// `supported()`, and `super::product_prepacked`'s contract.
#[target_feature(enable = "avx512f,avx2,fma")]
pub(super) unsafe fn product_prepacked(pq: &super::PackedQueries, source: &mut super::Prepacked<'_>, n: usize, dim: usize, out: *mut f32, ldc: usize) {
    packed_queries(pq, source, n, dim, out, ldc);
}
