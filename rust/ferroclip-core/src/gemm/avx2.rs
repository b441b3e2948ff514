//! The AVX2 + FMA micro-kernel: 6 query rows x 16 database rows (12 ymm accumulators,
//! 2 loads + 6 broadcasts per 12 FMAs).

use std::arch::x86_64::{_MM_HINT_T0, _mm256_broadcast_ss, _mm256_fmadd_ps, _mm256_loadu_ps, _mm256_setzero_ps, _mm256_storeu_ps};

use super::pack::Prefetcher;
use super::Blocking;

/// Query rows per register block.
pub(super) const MR: usize = 6;
/// Database rows per packed panel (two ymm).
pub(super) const NR: usize = 16;

/// Zen 3 (512 KiB L2): one k pass up to 512; a block of packed panels is a quarter of
/// L2, so the panels survive the query rows and output lines that stream through L2
/// beside them. (Measured against 256-element passes over 256 KiB blocks: two processes
/// running top-k at once kept 84-89 GFLOP/s each instead of falling to ~78, numpy's
/// OpenBLAS 87; recall on two threads 0.75 s instead of 0.79, min of 6 interleaved runs.)
/// D = 768 ran ~7% faster in two passes than in one (an 18 KiB group crowds L1).
pub(super) const BLOCKING: Blocking = Blocking { kc_max: 512, block_bytes: 128 * 1024 };

/// AVX2 and FMA for the kernel, F16C for f16 rows widened as they are packed (every
/// CPU with FMA has it).
pub(crate) fn supported() -> bool {
    static AVX2: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *AVX2.get_or_init(|| is_x86_feature_detected!("avx2") && is_x86_feature_detected!("fma") && is_x86_feature_detected!("f16c"))
}

/// MR query rows (pointers at element k0) x one packed panel of `kc` elements: 12 FMA
/// chains, continued from `out` unless `first` (storing and reloading a partial sum
/// does not change the chain's bits); one line of the next packing's rows is prefetched
/// every 8 elements of k.
#[allow(clippy::too_many_arguments, reason = "a BLAS-style kernel signature: matrix pointers, sizes and strides")]
#[inline(always)]
unsafe fn micro(
    qr: &[*const f32; MR],
    panel: *const f32,
    kc: usize,
    out: *mut f32,
    ldc: usize,
    rows: usize,
    cols: usize,
    first: bool,
    prefetch: &mut Prefetcher<{ _MM_HINT_T0 }>,
) {
    let mut acc = [_mm256_setzero_ps(); 2 * MR];
    let mut tmp = [0.0f32; NR];
    if !first {
        for r in 0..rows {
            if cols == NR {
                acc[2 * r] = _mm256_loadu_ps(out.add(r * ldc));
                acc[2 * r + 1] = _mm256_loadu_ps(out.add(r * ldc + 8));
            } else {
                std::ptr::copy_nonoverlapping(out.add(r * ldc), tmp.as_mut_ptr(), cols);
                acc[2 * r] = _mm256_loadu_ps(tmp.as_ptr());
                acc[2 * r + 1] = _mm256_loadu_ps(tmp.as_ptr().add(8));
            }
        }
    }
    // No software prefetch of the next group's query rows: measured slower here, as in
    // `dot` (Zen 3's hardware prefetchers do better on their own).
    prefetch.k_loop(kc, |k| {
        let b0 = _mm256_loadu_ps(panel.add(k * NR));
        let b1 = _mm256_loadu_ps(panel.add(k * NR + 8));
        for r in 0..MR {
            let a = _mm256_broadcast_ss(&*qr[r].add(k));
            acc[2 * r] = _mm256_fmadd_ps(a, b0, acc[2 * r]);
            acc[2 * r + 1] = _mm256_fmadd_ps(a, b1, acc[2 * r + 1]);
        }
    });
    for r in 0..rows {
        if cols == NR {
            _mm256_storeu_ps(out.add(r * ldc), acc[2 * r]);
            _mm256_storeu_ps(out.add(r * ldc + 8), acc[2 * r + 1]);
        } else {
            _mm256_storeu_ps(tmp.as_mut_ptr(), acc[2 * r]);
            _mm256_storeu_ps(tmp.as_mut_ptr().add(8), acc[2 * r + 1]);
            std::ptr::copy_nonoverlapping(tmp.as_ptr(), out.add(r * ldc), cols);
        }
    }
}

/// The product of query rows read in place and any panel source.
#[inline(always)]
unsafe fn rows_in_place(q: &[f32], m: usize, source: &mut impl super::PanelSource, n: usize, dim: usize, out: *mut f32, ldc: usize) {
    debug_assert!(q.len() >= m * dim);
    super::drive::<MR, NR, _MM_HINT_T0, _>(
        m,
        source,
        n,
        dim,
        out,
        ldc,
        BLOCKING,
        |i, rows, k0| super::row_group::<MR>(q, dim, i, rows, k0),
        |qr, panel, kc, out, ldc, rows, cols, first, prefetch| micro(qr, panel, kc, out, ldc, rows, cols, first, prefetch),
    );
}

/// `super::product` with this kernel.
///
/// # Safety
/// `supported()`, and `super::product`'s contract.
#[target_feature(enable = "avx2,fma,f16c")]
pub(super) unsafe fn product<T: super::Elem>(q: &[f32], m: usize, d: &[T], n: usize, dim: usize, out: *mut f32, ldc: usize) {
    debug_assert!(d.len() >= n * dim);
    super::with_packing::<NR, T, _>(d, n, dim, BLOCKING.kc_max, |source| rows_in_place(q, m, source, n, dim, out, ldc));
}

/// `super::product_prepacked` with this kernel: `n` database rows from `source`.
///
/// # Safety
/// `supported()`, and `super::product_prepacked`'s contract.
#[target_feature(enable = "avx2,fma")]
pub(super) unsafe fn product_prepacked(q: &[f32], m: usize, source: &mut super::Prepacked<'_>, n: usize, dim: usize, out: *mut f32, ldc: usize) {
    rows_in_place(q, m, source, n, dim, out, ldc);
}
