//! Database panels for the micro-kernels: packing and the prefetch of the next packing's
//! rows. Shared by the AVX2 and AVX-512 kernels (packing is a small share of the product,
//! so 256-bit transposes serve both).

use std::arch::x86_64::{
    __m256, _mm256_loadu_ps, _mm256_permute2f128_ps, _mm256_shuffle_ps, _mm256_storeu_ps, _mm256_unpackhi_ps,
    _mm256_unpacklo_ps, _mm_prefetch,
};

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

/// Pack elements `k0..k0 + kc` of database rows `j0..j0 + rows` (rows <= NR, NR a
/// multiple of 8) into one panel, `panel[k * NR + t] = d[j0 + t][k0 + k]`; missing rows
/// are 0.
///
/// # Safety
/// AVX available (inlined into the kernels' `target_feature` functions); rows
/// `j0..j0 + rows` of `d` exist; `panel` holds `kc * NR` floats.
#[inline(always)]
pub(super) unsafe fn pack_panel<const NR: usize>(
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
        for h in 0..NR / 8 {
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
                *panel.add(k * NR + t) = if t < rows { *d.add((j0 + t) * dim + k0 + k) } else { 0.0 };
            }
        }
    }
}

/// Database rows and elements of k that a packing will read.
pub(super) struct NextPack {
    pub(super) rows: std::ops::Range<usize>,
    pub(super) k0: usize,
    pub(super) kc: usize,
}

/// Prefetch query group `g`'s share (of `groups`) of the rows the next packing will read,
/// so it reads them from cache: packing from memory stalled the FMAs (perf on Zen 3:
/// packing 3.7% of the product in recall, 2.8% with this; recall 5k x 25k on 2 threads
/// ~3% faster, medians of 8 interleaved runs). `HINT`: the `_mm_prefetch` level.
#[inline(always)]
pub(super) unsafe fn prefetch_next<const HINT: i32>(d: *const f32, dim: usize, next: &NextPack, g: usize, groups: usize) {
    let share = next.rows.len().div_ceil(groups);
    let lines = (next.kc * 4).div_ceil(64);
    let start = next.rows.start + g * share;
    for r in start..(start + share).min(next.rows.end) {
        let row = d.add(r * dim + next.k0).cast::<i8>();
        for l in 0..lines {
            // A prefetch never faults; the address only has to be computed without UB.
            _mm_prefetch::<HINT>(row.wrapping_add(64 * l));
        }
    }
}
