//! Database panels for the micro-kernels: packing and the prefetch of the next packing's
//! rows. Shared by the AVX2 and AVX-512 kernels (packing is a small share of the product,
//! so 256-bit transposes serve both).

use std::arch::x86_64::{
    __m256, _mm256_cmpgt_epi32, _mm256_cvtph_ps, _mm256_loadu_ps, _mm256_maskstore_ps, _mm256_permute2f128_ps, _mm256_set1_epi32,
    _mm256_setr_epi32, _mm256_shuffle_ps, _mm256_storeu_ps, _mm256_unpackhi_ps,
    _mm256_unpacklo_ps, _mm_loadu_si128, _mm_prefetch,
};

use half::f16;

/// A stored element type of database rows the kernels pack from: f32, or f16 widened
/// while packing (exact, so the same bits as packing a widened copy, without the copy's
/// extra pass: an f16 top-k widened each tile into a scratch buffer first).
pub(crate) trait Elem: Copy + Sync {
    /// Eight consecutive elements as f32.
    ///
    /// # Safety
    /// `p` points at 8 elements; AVX (and F16C for f16) available, inlined into the
    /// kernels' `target_feature` functions.
    unsafe fn load8(p: *const Self) -> __m256;
    /// One element as f32.
    ///
    /// # Safety
    /// `p` points at an element.
    unsafe fn get(p: *const Self) -> f32;
}

impl Elem for f32 {
    #[inline(always)]
    unsafe fn load8(p: *const Self) -> __m256 {
        _mm256_loadu_ps(p)
    }
    #[inline(always)]
    unsafe fn get(p: *const Self) -> f32 {
        *p
    }
}

impl Elem for f16 {
    #[inline(always)]
    unsafe fn load8(p: *const Self) -> __m256 {
        _mm256_cvtph_ps(_mm_loadu_si128(p.cast()))
    }
    #[inline(always)]
    unsafe fn get(p: *const Self) -> f32 {
        (*p).to_f32()
    }
}

/// Transpose 8 rows of 8 floats (in registers).
#[inline(always)]
pub(super) unsafe fn transpose8(r: [__m256; 8]) -> [__m256; 8] {
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
pub(super) unsafe fn pack_panel<const NR: usize, T: Elem>(
    d: *const T,
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
                let r = std::array::from_fn(|t| T::load8(base.add(t * dim + k)));
                let c = transpose8(r);
                for (kk, v) in c.iter().enumerate() {
                    _mm256_storeu_ps(panel.add((k + kk) * NR + h * 8), *v);
                }
            }
        }
        for k in body..kc {
            for t in 0..NR {
                *panel.add(k * NR + t) = T::get(d.add((j0 + t) * dim + k0 + k));
            }
        }
    } else {
        for k in 0..kc {
            for t in 0..NR {
                *panel.add(k * NR + t) = if t < rows { T::get(d.add((j0 + t) * dim + k0 + k)) } else { 0.0 };
            }
        }
    }
}

/// Pack elements `0..kc` of MR query rows into `out[k * MR + r] = rows[r][k]` (the
/// layout of `super::PackedQueries`), eight rows by eight elements per transpose: element
/// by element, this was 0.46% of recall 5k x 25k (perf, Sapphire Rapids class).
///
/// # Safety
/// The CPU supports AVX2; each of `rows` points at `kc` floats; `out` holds `kc * MR`.
#[target_feature(enable = "avx2")]
pub(super) unsafe fn pack_query_group<const MR: usize>(rows: [*const f32; MR], kc: usize, out: &mut [f32]) {
    debug_assert!(out.len() >= kc * MR);
    let o = out.as_mut_ptr();
    let body = kc / 8 * 8;
    for k in (0..body).step_by(8) {
        for h in (0..MR).step_by(8) {
            let live = (MR - h).min(8);
            let r = std::array::from_fn(|t| _mm256_loadu_ps(rows[h + t.min(live - 1)].add(k)));
            let c = transpose8(r);
            // Lanes below `live` (the group's last rows when MR is not a multiple of 8).
            let mask = _mm256_cmpgt_epi32(_mm256_set1_epi32(live as i32), _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7));
            for (kk, v) in c.iter().enumerate() {
                let dst = o.add((k + kk) * MR + h);
                if live == 8 {
                    _mm256_storeu_ps(dst, *v);
                } else {
                    _mm256_maskstore_ps(dst, mask, *v);
                }
            }
        }
    }
    for k in body..kc {
        for (r, row) in rows.iter().enumerate() {
            *o.add(k * MR + r) = *row.add(k);
        }
    }
}

/// Pack rows `0..n` of `d` (n x dim) into `out`, panel after panel and, within a panel,
/// k pass after k pass (`passes` of `kc_max`, the last one `dim - (passes - 1) * kc_max`):
/// `out[(p * passes + pass) * NR * kc_max..]` is what `pack_panel` makes of panel p's pass.
/// The layout of `super::PackedRows`.
///
/// # Safety
/// The CPU supports AVX; `d` holds n rows of `dim`; `out` holds `n.div_ceil(NR) * passes *
/// NR * kc_max` floats.
#[target_feature(enable = "avx2")]
pub(super) unsafe fn pack_rows<const NR: usize>(d: &[f32], n: usize, dim: usize, kc_max: usize, passes: usize, out: &mut [f32]) {
    debug_assert!(d.len() >= n * dim && out.len() >= n.div_ceil(NR) * passes * NR * kc_max);
    let panel_len = NR * kc_max;
    for p in 0..n.div_ceil(NR) {
        let j = p * NR;
        for pass in 0..passes {
            let k0 = pass * kc_max;
            let panel = out.as_mut_ptr().add((p * passes + pass) * panel_len);
            pack_panel::<NR, f32>(d.as_ptr(), dim, j, (n - j).min(NR), k0, kc_max.min(dim - k0), panel);
        }
    }
}

/// One query group's share of the rows the next packing will read, prefetched a cache
/// line at a time from inside the micro-kernel's k loop (`step` every 8 elements of k),
/// so the packing reads them from cache. Why spread out: the same prefetches issued in a
/// burst before the group's micro-kernel calls (~115 lines per 14-row group at D = 512)
/// stalled on the line-fill buffers; perf on the Sapphire Rapids-class Xeon showed the
/// burst loop at ~45% of the driver's time, ~4.5% of recall 5k x 25k. Spread out: recall
/// 2500 x 12500 on 1 thread, best of 20 runs in alternating processes, 0.295 -> 0.281 s
/// (AVX-512) and 0.522 -> 0.504 s (AVX2 kernel on the same CPU). (Packing from memory
/// with no prefetch at all stalled the FMAs instead: Zen 3, packing 3.7% of recall time.)
/// `HINT`: the `_mm_prefetch` level.
pub(super) struct Prefetcher<const HINT: i32> {
    row: *const i8,
    row_bytes: usize,
    line: usize,
    lines: usize,
    lines_left: usize,
}

impl<const HINT: i32> Prefetcher<HINT> {
    /// Query group `g`'s share (of `groups`) of `rows`, each `len` elements from `base +
    /// row * stride`: database rows from element k0 (packing from rows), or packed panels'
    /// passes (panels packed beforehand). The shares are equal in lines, not rows: four
    /// 64 KiB panels shared by rows among 36 groups left a burst of 768 lines after each
    /// of the first four groups.
    pub(super) fn share<T>(base: *const T, stride: usize, len: usize, rows: std::ops::Range<usize>, g: usize, groups: usize) -> Self {
        let size = std::mem::size_of::<T>();
        let lines = (len * size).div_ceil(64);
        let total = rows.len() * lines;
        let share = total.div_ceil(groups);
        let start = (g * share).min(total);
        Self {
            // A prefetch never faults; the address only has to be computed without UB.
            row: base.wrapping_add((rows.start + start / lines) * stride).cast::<i8>(),
            row_bytes: stride * size,
            line: start % lines,
            lines,
            lines_left: share.min(total - start),
        }
    }

    /// The micro-kernel's loop over `0..kc`: `step(k)` for each k, and the next line of
    /// the share after every 8.
    #[inline(always)]
    pub(super) unsafe fn k_loop(&mut self, kc: usize, mut step: impl FnMut(usize)) {
        let body = kc / 8 * 8;
        for k0 in (0..body).step_by(8) {
            for k in k0..k0 + 8 {
                step(k);
            }
            self.step();
        }
        for k in body..kc {
            step(k);
        }
    }

    /// Prefetch the next line of the share, if any is left.
    #[inline(always)]
    unsafe fn step(&mut self) {
        if self.lines_left == 0 {
            return;
        }
        _mm_prefetch::<HINT>(self.row.wrapping_add(64 * self.line));
        self.lines_left -= 1;
        self.line += 1;
        if self.line == self.lines {
            self.line = 0;
            self.row = self.row.wrapping_add(self.row_bytes);
        }
    }

    /// Prefetch what the k loops left of the share (few query groups, so few steps for
    /// many lines).
    #[inline(always)]
    pub(super) unsafe fn finish(&mut self) {
        while self.lines_left > 0 {
            self.step();
        }
    }
}
