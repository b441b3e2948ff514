//! Many-query tile products (AVX2 + FMA): ferroclip's own sgemm micro-kernel.
//!
//! Why our own: ferroclip promises that a score depends only on its two vectors, not on
//! the tile it lands in, so `similarity`, `topk`, `recall_at_k` and `near_duplicates` agree
//! bit for bit. A BLAS splits the sum over k differently depending on the call's shape;
//! `matrixmultiply` keeps that promise but reaches ~80-90% of OpenBLAS. Here
//! every score is one sequential FMA chain over `k = 0..dim` (`dot_sequential`), whatever
//! the tile, the block remainder or the thread.
//!
//! Layout: the classic 6 x 16 register block (12 ymm accumulators: 6 query rows x 16
//! database rows, 2 loads + 6 broadcasts per 12 FMAs). The database block is packed once
//! per tile into 16-row panels (`panel[k * 16 + t] = row_t[k]`, 8 x 8 register
//! transposes); the 6 query rows are broadcast straight from the caller's row-major
//! matrix (they stay in L1 while a block of panels, sized for L2, streams past them).
//! On ferroclip's tile shapes this runs 1.08-1.16x `matrixmultiply` on Zen 3 (best of 15:
//! 89-92 vs 80-84 GFLOP/s; numpy's OpenBLAS does 90-92 on 2048^3), `examples/tile_bench.rs`.

#[cfg(target_arch = "x86_64")]
pub(crate) use avx2::{product, supported};

/// Whether this kernel is the built-in product here: AVX2 + FMA without AVX-512 (where
/// `matrixmultiply`'s AVX-512 kernel has twice the width).
#[cfg(target_arch = "x86_64")]
pub(crate) fn preferred() -> bool {
    static PREFERRED: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *PREFERRED.get_or_init(|| supported() && !is_x86_feature_detected!("avx512f"))
}

/// The evaluation order of every score this kernel computes: one FMA chain from 0.
#[cfg(test)]
pub(crate) fn dot_sequential(a: &[f32], b: &[f32]) -> f32 {
    a.iter().zip(b).fold(0.0f32, |s, (x, y)| x.mul_add(*y, s))
}

#[cfg(target_arch = "x86_64")]
mod avx2 {
    use std::arch::x86_64::{
        __m256, _mm256_broadcast_ss, _mm256_fmadd_ps, _mm256_loadu_ps, _mm256_permute2f128_ps,
        _mm256_setzero_ps, _mm256_shuffle_ps, _mm256_storeu_ps, _mm256_unpackhi_ps,
        _mm256_unpacklo_ps, _mm_prefetch, _MM_HINT_T0,
    };
    use std::cell::RefCell;

    /// Query rows per register block.
    const MR: usize = 6;
    /// Database rows per packed panel (two ymm).
    const NR: usize = 16;
    /// Most elements of k per pass. A dimension up to this is one pass, longer ones are split
    /// into equal passes (768 = 2 x 384): a group's 6 query rows (at most 12 KiB) stay in
    /// L1 while the block's packed panels stream past them from L2, one sequential read
    /// each. (The BLIS order, a panel in L1 and query groups streamed from L2 as six row
    /// streams, ran ~8% slower on Zen 3.) Between passes, partial sums are stored and
    /// reloaded, which leaves each FMA chain's bits unchanged but sends the output through
    /// the caches once more. D = 768 ran ~7% faster in two passes than in one (an 18 KiB
    /// group crowds L1).
    const KC_MAX: usize = 512;
    /// Packed database bytes per block: a quarter of Zen 3's 512 KiB L2, so the panels
    /// survive the query rows and output lines that stream through L2 beside them.
    /// (Measured against the earlier 256-element passes over 256 KiB blocks: two processes
    /// running top-k at once kept 84-89 GFLOP/s each instead of falling to ~78, numpy's
    /// OpenBLAS 87; recall on two threads 0.75 s instead of 0.79, min of 6 interleaved runs.)
    const BLOCK_BYTES: usize = 128 * 1024;

    /// Elements of k per pass for `dim`: equal passes of at most `KC_MAX`, multiples of 8
    /// (the transposes' width) where `dim` allows.
    fn pass_len(dim: usize) -> usize {
        let passes = dim.div_ceil(KC_MAX).max(1);
        dim.div_ceil(passes).next_multiple_of(8).min(dim)
    }

    thread_local! {
        /// Packed panels, reused across calls on this thread.
        static PACKED: RefCell<Vec<f32>> = const { RefCell::new(Vec::new()) };
    }

    pub(crate) fn supported() -> bool {
        static AVX2: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
        *AVX2.get_or_init(|| is_x86_feature_detected!("avx2") && is_x86_feature_detected!("fma"))
    }

    /// Transpose 8 rows of 8 floats (in registers).
    #[inline(always)]
    unsafe fn transpose8(r: [__m256; 8]) -> [__m256; 8] {
        let t0 = _mm256_unpacklo_ps(r[0], r[1]);
        let t1 = _mm256_unpackhi_ps(r[0], r[1]);
        let t2 = _mm256_unpacklo_ps(r[2], r[3]);
        let t3 = _mm256_unpackhi_ps(r[2], r[3]);
        let t4 = _mm256_unpacklo_ps(r[4], r[5]);
        let t5 = _mm256_unpackhi_ps(r[4], r[5]);
        let t6 = _mm256_unpacklo_ps(r[6], r[7]);
        let t7 = _mm256_unpackhi_ps(r[6], r[7]);
        let s0 = _mm256_shuffle_ps::<0x44>(t0, t2);
        let s1 = _mm256_shuffle_ps::<0xEE>(t0, t2);
        let s2 = _mm256_shuffle_ps::<0x44>(t1, t3);
        let s3 = _mm256_shuffle_ps::<0xEE>(t1, t3);
        let s4 = _mm256_shuffle_ps::<0x44>(t4, t6);
        let s5 = _mm256_shuffle_ps::<0xEE>(t4, t6);
        let s6 = _mm256_shuffle_ps::<0x44>(t5, t7);
        let s7 = _mm256_shuffle_ps::<0xEE>(t5, t7);
        [
            _mm256_permute2f128_ps::<0x20>(s0, s4),
            _mm256_permute2f128_ps::<0x20>(s1, s5),
            _mm256_permute2f128_ps::<0x20>(s2, s6),
            _mm256_permute2f128_ps::<0x20>(s3, s7),
            _mm256_permute2f128_ps::<0x31>(s0, s4),
            _mm256_permute2f128_ps::<0x31>(s1, s5),
            _mm256_permute2f128_ps::<0x31>(s2, s6),
            _mm256_permute2f128_ps::<0x31>(s3, s7),
        ]
    }

    /// Pack elements `k0..k0 + kc` of database rows `j0..j0 + rows` (rows <= NR) into one
    /// panel, `panel[k * NR + t] = d[j0 + t][k0 + k]`; missing rows are 0.
    #[inline(always)]
    unsafe fn pack_panel(
        d: *const f32,
        dim: usize,
        j0: usize,
        rows: usize,
        k0: usize,
        kc: usize,
        panel: *mut f32,
    ) {
        if rows == NR {
            let body = kc / 8 * 8;
            for h in 0..2 {
                let base = d.add((j0 + h * 8) * dim + k0);
                for k in (0..body).step_by(8) {
                    let r = std::array::from_fn(|t| _mm256_loadu_ps(base.add(t * dim + k)));
                    let c = transpose8(r);
                    for (kk, v) in c.iter().enumerate() {
                        _mm256_storeu_ps(panel.add((k + kk) * NR + h * 8), *v);
                    }
                }
            }
            for k in body..kc {
                for t in 0..NR {
                    *panel.add(k * NR + t) = *d.add((j0 + t) * dim + k0 + k);
                }
            }
        } else {
            for k in 0..kc {
                for t in 0..NR {
                    *panel.add(k * NR + t) = if t < rows {
                        *d.add((j0 + t) * dim + k0 + k)
                    } else {
                        0.0
                    };
                }
            }
        }
    }

    /// 6 query rows (pointers at element k0) x one packed panel of `kc` elements: 12 FMA
    /// chains, continued from `out` unless `first` (storing and reloading a partial sum
    /// does not change the chain's bits).
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
        for k in 0..kc {
            let b0 = _mm256_loadu_ps(panel.add(k * NR));
            let b1 = _mm256_loadu_ps(panel.add(k * NR + 8));
            for r in 0..MR {
                let a = _mm256_broadcast_ss(&*qr[r].add(k));
                acc[2 * r] = _mm256_fmadd_ps(a, b0, acc[2 * r]);
                acc[2 * r + 1] = _mm256_fmadd_ps(a, b1, acc[2 * r + 1]);
            }
        }
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

    /// Prefetch query group `g`'s share (of `groups`) of the database rows, elements
    /// `k0..k0 + kc`, that the next packing will read, so it reads them from cache: packing
    /// from memory stalled the FMAs (perf: packing 3.7% of the product in recall, 2.8%
    /// with this; recall 5k x 25k on 2 threads ~3% faster, medians of 8 interleaved runs).
    #[inline(always)]
    unsafe fn prefetch_next(d: *const f32, dim: usize, (rows, k0, kc): &(std::ops::Range<usize>, usize, usize), g: usize, groups: usize) {
        let share = rows.len().div_ceil(groups);
        let lines = (kc * 4).div_ceil(64);
        for r in (rows.start + g * share)..(rows.start + (g + 1) * share).min(rows.end) {
            let row = d.add(r * dim + k0).cast::<i8>();
            for l in 0..lines {
                // A prefetch never faults; the address only has to be computed without UB.
                _mm_prefetch::<_MM_HINT_T0>(row.wrapping_add(64 * l));
            }
        }
    }

    /// `out[i * ldc + j] = <q_i, d_j>` for `i < m`, `j < n`, with `dot_sequential`'s bits.
    ///
    /// Rows of `d` beyond `n` are not scored; the first block of them is prefetched, as the
    /// caller's next tile (see `prefetch_next`).
    ///
    /// # Safety
    /// `supported()`; `q` holds m rows and `d` n rows of `dim`; `out` is valid for writes
    /// at `i * ldc + j` for `i < m`, `j < n`, and nothing else accesses those elements
    /// meanwhile.
    #[target_feature(enable = "avx2,fma")]
    pub(crate) unsafe fn product(
        q: &[f32],
        m: usize,
        d: &[f32],
        n: usize,
        dim: usize,
        out: *mut f32,
        ldc: usize,
    ) {
        debug_assert!(q.len() >= m * dim && d.len() >= n * dim && dim > 0);
        if m == 0 || n == 0 {
            return;
        }
        let panels = n.div_ceil(NR);
        let kc_max = pass_len(dim);
        let panel_len = NR * kc_max;
        let block_panels = (BLOCK_BYTES / (panel_len * 4)).max(1).min(panels);
        let (qp, dp) = (q.as_ptr(), d.as_ptr());
        let rows_held = d.len() / dim;
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
                        pack_panel(
                            dp,
                            dim,
                            j,
                            (n - j).min(NR),
                            k0,
                            kc,
                            pp.add((p - p0) * panel_len),
                        );
                    }
                    // What the next packing reads: this block's next pass, else the next
                    // block (or the caller's next tile).
                    let next = if k0 + kc < dim {
                        (p0 * NR..(p1 * NR).min(n), k0 + kc, kc_max.min(dim - k0 - kc))
                    } else {
                        (p1 * NR..((p1 + block_panels) * NR).min(rows_held), 0, kc_max)
                    };
                    let groups = m.div_ceil(MR);
                    // Each query group (L1) meets every panel of the block (L2).
                    for i in (0..m).step_by(MR) {
                        prefetch_next(dp, dim, &next, i / MR, groups);
                        let rows = (m - i).min(MR);
                        let qr: [*const f32; MR] =
                            std::array::from_fn(|r| qp.add((i + r.min(rows - 1)) * dim + k0));
                        for p in p0..p1 {
                            let (j, panel) = (p * NR, pp.add((p - p0) * panel_len));
                            micro(
                                &qr,
                                panel,
                                kc,
                                out.add(i * ldc + j),
                                ldc,
                                rows,
                                (n - j).min(NR),
                                k0 == 0,
                            );
                        }
                    }
                }
            }
        });
    }
}

#[cfg(all(test, target_arch = "x86_64"))]
mod tests {
    use super::*;

    /// Same bits as one sequential FMA chain for every block remainder, tail and block
    /// boundary; rows of `d` past `n` are not read into the result.
    #[test]
    fn matches_dot_sequential_bit_for_bit() {
        if !supported() {
            return;
        }
        for dim in [1, 5, 8, 33, 512, 520, 1100] {
            // dim 520: two k passes (264 + 256), 1100 three (368 + 368 + 364); at dim 512 a
            // packed block holds 4 panels (64 rows), so n = 150 and 300 span several blocks.
            for (m, n) in [(1, 1), (6, 16), (7, 17), (13, 40), (5, 150), (7, 300)] {
                let q = crate::test_data::noise(m * dim, dim as u64 * 7 + m as u64);
                let mut d = crate::test_data::noise(n * dim, dim as u64 * 13 + n as u64);
                // Rows past n are only prefetched (the next tile): NaN there must not show.
                d.extend(std::iter::repeat(f32::NAN).take(70 * dim));
                let ldc = n + 3;
                let mut got = vec![f32::NAN; m * ldc];
                unsafe { product(&q, m, &d, n, dim, got.as_mut_ptr(), ldc) };
                for i in 0..m {
                    for j in 0..n {
                        let want =
                            dot_sequential(&q[i * dim..(i + 1) * dim], &d[j * dim..(j + 1) * dim]);
                        assert_eq!(
                            got[i * ldc + j].to_bits(),
                            want.to_bits(),
                            "dim={dim} m={m} n={n} ({i},{j})"
                        );
                    }
                    assert!(
                        got[i * ldc + n..(i + 1) * ldc].iter().all(|x| x.is_nan()),
                        "wrote outside the tile"
                    );
                }
            }
        }
    }
}
