//! Scores of given pairs with the kernels' bits: `out[j] = <a_j, b_j>` as the one FMA
//! chain over k from 0 that every product here computes (`dot_sequential`), eight pairs
//! per vector.
//!
//! Why: recall needs each caption's score with its own image before it scans (see
//! `recall::one_pass`), bit for bit the value the product will put in the tile. Small
//! products of a few images by their captions gave those bits, at ~13x the FLOPs of the
//! pairs and with a kernel call per 64 captions: 1.5% of recall 5k x 25k on one thread
//! (perf, Sapphire Rapids class). Pairs need no more FLOPs than the pairs; the cost is
//! the 8 x 8 transposes that put eight pairs' elements in one vector, and the read.

use std::arch::x86_64::{
    __m256i, _mm256_and_si256, _mm256_castps_si256, _mm256_fmadd_ps, _mm256_loadu_ps, _mm256_max_epu32, _mm256_set1_epi32, _mm256_setzero_ps,
    _mm256_setzero_si256, _mm256_storeu_ps, _mm256_storeu_si256,
};

use super::pack::transpose8;

/// Groups of eight pairs in flight: independent FMA chains that cover the FMA latency.
const GROUPS: usize = 4;

/// `out[j] = dot_sequential(a[j], b[j * dim..][..dim])` for `j < a.len()`; returns the
/// largest magnitude's bits (`x.to_bits() & 0x7fff_ffff`, which order like |x|, NaN and
/// Inf above all finite values) of those rows of `b`, taken from the loads the scores
/// make: a separate pass first read `b` from memory once more (recall needs both).
///
/// # Safety
/// The CPU supports AVX2 and FMA; every `a[j]` holds `dim` floats, `b` holds `a.len()`
/// rows of `dim`, `out` `a.len()` floats.
#[target_feature(enable = "avx2,fma")]
pub(super) unsafe fn pair_dots(a: &[&[f32]], b: &[f32], dim: usize, out: &mut [f32]) -> u32 {
    let n = a.len();
    debug_assert!(b.len() >= n * dim && out.len() >= n && a.iter().all(|r| r.len() >= dim));
    let body = dim / 8 * 8;
    let magnitude = _mm256_set1_epi32(0x7fff_ffff);
    let mut max: __m256i = _mm256_setzero_si256();
    let mut max_tail = 0u32;
    for base in (0..n).step_by(8 * GROUPS) {
        // Pairs past n repeat the last one; their results are dropped.
        let pair = |g: usize, l: usize| (base + 8 * g + l).min(n - 1);
        let pa: [[*const f32; 8]; GROUPS] = std::array::from_fn(|g| std::array::from_fn(|l| a[pair(g, l)].as_ptr()));
        let pb: [[*const f32; 8]; GROUPS] = std::array::from_fn(|g| std::array::from_fn(|l| b.as_ptr().add(pair(g, l) * dim)));
        let mut acc = [_mm256_setzero_ps(); GROUPS];
        for k in (0..body).step_by(8) {
            for g in 0..GROUPS {
                let ta = transpose8(std::array::from_fn(|l| _mm256_loadu_ps(pa[g][l].add(k))));
                let rows = std::array::from_fn(|l| _mm256_loadu_ps(pb[g][l].add(k)));
                for v in rows {
                    max = _mm256_max_epu32(max, _mm256_and_si256(_mm256_castps_si256(v), magnitude));
                }
                let tb = transpose8(rows);
                for s in 0..8 {
                    acc[g] = _mm256_fmadd_ps(ta[s], tb[s], acc[g]);
                }
            }
        }
        for g in 0..GROUPS {
            let mut lanes = [0.0f32; 8];
            _mm256_storeu_ps(lanes.as_mut_ptr(), acc[g]);
            for (l, sum) in lanes.iter_mut().enumerate() {
                for k in body..dim {
                    let x = pb[g][l].add(k).read();
                    max_tail = max_tail.max(x.to_bits() & 0x7fff_ffff);
                    *sum = pa[g][l].add(k).read().mul_add(x, *sum);
                }
                let j = base + 8 * g + l;
                if j < n {
                    out[j] = *sum;
                }
            }
        }
    }
    let mut lanes = [0u32; 8];
    _mm256_storeu_si256(lanes.as_mut_ptr().cast(), max);
    lanes.into_iter().fold(max_tail, u32::max)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::gemm::dot_sequential;

    #[test]
    fn pairs_match_dot_sequential_bit_for_bit() {
        if !super::super::avx2::supported() {
            eprintln!("no AVX2 + FMA: pair_dots not tested on this CPU");
            return;
        }
        for dim in [1, 7, 8, 9, 33, 512, 515] {
            for n in [1, 5, 8, 31, 32, 33, 70] {
                let a_rows = crate::test_data::noise(13 * dim, dim as u64 + 3);
                let b = crate::test_data::noise(n * dim, dim as u64 * 5 + n as u64);
                // Each pair's image is any of 13 rows, in no order (as captions' images are).
                let a: Vec<&[f32]> = (0..n).map(|j| &a_rows[(j * 7 % 13) * dim..][..dim]).collect();
                let mut b = b;
                // The largest magnitude, negative, somewhere in b's rows (in a tail for some sizes).
                let at = (n * dim * 5 / 7) % (n * dim);
                b[at] = -3.5;
                let mut out = vec![f32::NAN; n + 1];
                let max = unsafe { pair_dots(&a, &b, dim, &mut out[..n]) };
                assert_eq!(max, 3.5f32.to_bits(), "dim {dim}, n {n}: largest magnitude at {at}");
                for j in 0..n {
                    let want = dot_sequential(a[j], &b[j * dim..][..dim]);
                    assert_eq!(out[j].to_bits(), want.to_bits(), "dim {dim}, n {n}, pair {j}");
                }
                assert!(out[n].is_nan(), "wrote past n");
                b[at] = f32::NAN;
                let max = unsafe { pair_dots(&a, &b, dim, &mut out[..n]) };
                assert!(max > f32::INFINITY.to_bits(), "dim {dim}, n {n}: NaN at {at} not seen");
            }
        }
    }
}
