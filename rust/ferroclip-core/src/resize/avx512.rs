//! AVX-512 kernels: the AVX2 byte-path horizontal kernel (`avx2::horizontal`) on eight
//! rows at a time, one 128-bit lane per row pair, and a vertical kernel on 64 bytes at a
//! time whose tap high halves go through `maddubs` on the interleaved row bytes (as the
//! horizontal byte path does) instead of a second `madd`. Same integer operations in the
//! same ring, so the bytes are identical (tested against the portable kernels). Tap sets
//! that need the 16-bit high-half path (strong upscales) go to the AVX2 kernels.

use std::arch::x86_64::{
    __m128i, __m512i, _mm512_add_epi16, _mm512_add_epi32, _mm512_broadcast_i32x4, _mm512_castsi128_si512,
    _mm512_extracti32x4_epi32, _mm512_inserti32x4, _mm512_madd_epi16, _mm512_maddubs_epi16, _mm512_packs_epi32,
    _mm512_packus_epi16, _mm512_set1_epi32, _mm512_setzero_si512, _mm512_shuffle_epi8, _mm512_srai_epi32,
    _mm512_unpackhi_epi16, _mm512_unpackhi_epi8, _mm512_unpacklo_epi16, _mm512_unpacklo_epi8, _mm_cvtsi128_si32,
    _mm512_loadu_si512, _mm512_storeu_si512,
    _mm_cvtsi128_si64, _mm_extract_epi32, _mm_extract_epi64, _mm_loadu_si128, _mm_setr_epi8,
};

use super::avx2::{self, HPlan, Pair, RowSource};
use super::{Coeffs, HALF, PRECISION_BITS};
use crate::decode::RgbImage;
use crate::geometry::Span;

/// Horizontal pass, eight source rows at a time (see `avx2::horizontal` for the scheme).
///
/// Lane `i` of a pixel-pair operand holds rows `i` (low 8 bytes) and `i + 4` (high 8
/// bytes) as packed `(p_2m, p_2m+1)` channel pairs.
///
/// # Safety
/// The CPU must have AVX-512F and AVX-512BW (and AVX2, for the fallback).
#[target_feature(enable = "avx512f,avx512bw,avx2")]
pub(super) unsafe fn horizontal(
    src: &RgbImage,
    x0: usize,
    rows: std::ops::Range<usize>,
    coeffs: &Coeffs,
    cols: Span,
    out: &mut Vec<u8>,
) {
    let ow = cols.len;
    let n_rows = rows.len();
    let plan = HPlan::new(coeffs, cols, x0);
    if !plan.bytes {
        return super::avx2::horizontal(src, x0, rows, coeffs, cols, out);
    }
    // Every byte is written below: no clear, so a reused buffer is not zeroed first.
    out.resize(n_rows * ow * 3, 0);
    if ow == 0 || n_rows == 0 {
        return;
    }
    let HPlan { base, n_m, cols_meta, pairs, .. } = plan;
    let rows_src = RowSource::new(src, rows.clone(), base - x0, n_m);
    let mask = _mm512_broadcast_i32x4(_mm_setr_epi8(0, -1, 3, -1, 1, -1, 4, -1, 2, -1, 5, -1, -1, -1, -1, -1));
    // RGB0 RGB0 -> RGBRGB (two junk bytes) in each 8-byte group.
    let compact = _mm512_broadcast_i32x4(_mm_setr_epi8(0, 1, 2, 4, 5, 6, -1, -1, 8, 9, 10, 12, 13, 14, -1, -1));
    let zero = _mm512_setzero_si512();
    let mut ops: Vec<__m512i> = vec![zero; n_m];
    let opp = ops.as_mut_ptr();
    let out_row = ow * 3;
    let optr = out.as_mut_ptr();
    let last = n_rows - 1;
    let mut r = 0;
    while r < n_rows {
        let p: [*const u8; 8] = std::array::from_fn(|i| rows_src.ptr(rows.start + (r + i).min(last)));
        let valid = (n_rows - r).min(8);
        for m in 0..n_m {
            let off = (base - x0 + 2 * m) * 3;
            let v0 = _mm512_shuffle_epi8(load4(p[0].add(off), p[1].add(off), p[2].add(off), p[3].add(off)), mask);
            let v1 = _mm512_shuffle_epi8(load4(p[4].add(off), p[5].add(off), p[6].add(off), p[7].add(off)), mask);
            *opp.add(m) = _mm512_packus_epi16(v0, v1);
        }
        // Row `r + i` of output column `ox` lives at `dst(i, ox)`; rows past `valid` are dropped.
        let dst = |i: usize, ox: usize| optr.add((r + i) * out_row + ox * 3);
        let mut ox = 0;
        while ox < ow {
            let (m0, np, first) = *cols_meta.get_unchecked(ox);
            let (ta0, ta1) = column(opp.add(m0), pairs.as_ptr().add(first), np);
            if ox + 1 < ow {
                let (m0, np, first) = *cols_meta.get_unchecked(ox + 1);
                let (tb0, tb1) = column(opp.add(m0), pairs.as_ptr().add(first), np);
                // Lane i: row i then row i + 4, each as RGBRGB.. for both columns.
                let b = _mm512_packus_epi16(_mm512_packs_epi32(ta0, tb0), _mm512_packs_epi32(ta1, tb1));
                let b = _mm512_shuffle_epi8(b, compact);
                let lanes = lanes(b);
                for i in 0..valid {
                    let lane = lanes[i % 4];
                    let v = if i < 4 { _mm_cvtsi128_si64(lane) } else { _mm_extract_epi64::<1>(lane) } as u64;
                    if ox + 2 < ow {
                        // The two junk bytes land on the next pixel, written right after.
                        dst(i, ox).cast::<u64>().write_unaligned(v);
                    } else {
                        std::ptr::copy_nonoverlapping(v.to_le_bytes().as_ptr(), dst(i, ox), 6);
                    }
                }
                ox += 2;
            } else {
                // Lane i: row i then row i + 4, each as R G B 0 bytes.
                let b = _mm512_packus_epi16(_mm512_packs_epi32(ta0, ta1), zero);
                let lanes = lanes(b);
                for i in 0..valid {
                    let lane = lanes[i % 4];
                    let v = if i < 4 { _mm_cvtsi128_si32(lane) } else { _mm_extract_epi32::<1>(lane) } as u32;
                    std::ptr::copy_nonoverlapping(v.to_le_bytes().as_ptr(), dst(i, ox), 3);
                }
                ox += 1;
            }
        }
        r += 8;
    }
}

#[inline]
#[target_feature(enable = "avx512f,avx512bw")]
unsafe fn load4(a: *const u8, b: *const u8, c: *const u8, d: *const u8) -> __m512i {
    let v = _mm512_castsi128_si512(_mm_loadu_si128(a.cast::<__m128i>()));
    let v = _mm512_inserti32x4::<1>(v, _mm_loadu_si128(b.cast::<__m128i>()));
    let v = _mm512_inserti32x4::<2>(v, _mm_loadu_si128(c.cast::<__m128i>()));
    _mm512_inserti32x4::<3>(v, _mm_loadu_si128(d.cast::<__m128i>()))
}

#[inline]
#[target_feature(enable = "avx512f,avx512bw")]
unsafe fn lanes(v: __m512i) -> [__m128i; 4] {
    [
        _mm512_extracti32x4_epi32::<0>(v),
        _mm512_extracti32x4_epi32::<1>(v),
        _mm512_extracti32x4_epi32::<2>(v),
        _mm512_extracti32x4_epi32::<3>(v),
    ]
}

/// One output column over eight rows (`avx2::column_bytes` twice as wide): lanes of the
/// first result are rows 0-3, of the second rows 4-7, each `R, G, B, junk` as `i32`.
#[inline]
#[target_feature(enable = "avx512f,avx512bw")]
unsafe fn column(ops: *const __m512i, pairs: *const Pair, np: usize) -> (__m512i, __m512i) {
    let half = _mm512_set1_epi32(HALF);
    let zero = _mm512_setzero_si512();
    let (mut l0, mut l1, mut h) = (half, half, zero);
    for j in 0..np {
        let pr = *pairs.add(j);
        let kl = _mm512_set1_epi32(pr.lo);
        let kb = _mm512_set1_epi32(pr.hb);
        let b = *ops.add(j);
        l0 = _mm512_add_epi32(l0, _mm512_madd_epi16(_mm512_unpacklo_epi8(b, zero), kl));
        l1 = _mm512_add_epi32(l1, _mm512_madd_epi16(_mm512_unpackhi_epi8(b, zero), kl));
        h = _mm512_add_epi16(h, _mm512_maddubs_epi16(b, kb));
    }
    let t0 = _mm512_add_epi32(_mm512_unpacklo_epi16(zero, h), l0);
    let t1 = _mm512_add_epi32(_mm512_unpackhi_epi16(zero, h), l1);
    (_mm512_srai_epi32::<{ PRECISION_BITS }>(t0), _mm512_srai_epi32::<{ PRECISION_BITS }>(t1))
}

/// Vertical pass (see `avx2::vertical`), 64 bytes at a time.
///
/// # Safety
/// The CPU must have AVX-512F, AVX-512BW and AVX2.
#[target_feature(enable = "avx512f,avx512bw,avx2")]
pub(super) unsafe fn vertical(src: &[u8], src_w: usize, row0: usize, coeffs: &Coeffs, rows: Span, out: &mut [u8]) {
    // SAFETY (closure): this function only runs with AVX-512F/BW and AVX2.
    avx2::vertical_rows(src, src_w, row0, coeffs, rows, out, 64, &|ptrs, pairs, at, dst| unsafe {
        if pairs.iter().all(|p| p.hi_bytes_ok) {
            vertical_chunk(ptrs, pairs, at, dst);
        } else {
            avx2::vertical_chunk(ptrs, pairs, at, dst);
            avx2::vertical_chunk(ptrs, pairs, at + 32, dst.add(32));
        }
    });
}

/// 64 output bytes of one row: `madd` on the widened `(row_a, row_b)` byte pairs for the
/// low tap halves, one `maddubs` per 32 interleaved bytes for the high halves (wrapping
/// `i16` sums: only their value mod 2^16 reaches the total, as in `avx2::column_bytes`).
#[inline]
#[target_feature(enable = "avx512f,avx512bw")]
unsafe fn vertical_chunk(ptrs: &[(*const u8, *const u8)], pairs: &[Pair], at: usize, dst: *mut u8) {
    let zero = _mm512_setzero_si512();
    let half = _mm512_set1_epi32(HALF);
    let (mut l0, mut l1, mut l2, mut l3) = (half, half, half, half);
    let (mut hl, mut hh) = (zero, zero);
    for (&(ra, rb), pr) in ptrs.iter().zip(pairs) {
        let a = _mm512_loadu_si512(ra.add(at).cast());
        let b = _mm512_loadu_si512(rb.add(at).cast());
        let kl = _mm512_set1_epi32(pr.lo);
        let kb = _mm512_set1_epi32(pr.hb);
        let lo = _mm512_unpacklo_epi8(a, b);
        let hi = _mm512_unpackhi_epi8(a, b);
        l0 = _mm512_add_epi32(l0, _mm512_madd_epi16(_mm512_unpacklo_epi8(lo, zero), kl));
        l1 = _mm512_add_epi32(l1, _mm512_madd_epi16(_mm512_unpackhi_epi8(lo, zero), kl));
        l2 = _mm512_add_epi32(l2, _mm512_madd_epi16(_mm512_unpacklo_epi8(hi, zero), kl));
        l3 = _mm512_add_epi32(l3, _mm512_madd_epi16(_mm512_unpackhi_epi8(hi, zero), kl));
        hl = _mm512_add_epi16(hl, _mm512_maddubs_epi16(lo, kb));
        hh = _mm512_add_epi16(hh, _mm512_maddubs_epi16(hi, kb));
    }
    let fin = |h: __m512i, l: __m512i| _mm512_srai_epi32::<{ PRECISION_BITS }>(_mm512_add_epi32(h, l));
    let t0 = fin(_mm512_unpacklo_epi16(zero, hl), l0);
    let t1 = fin(_mm512_unpackhi_epi16(zero, hl), l1);
    let t2 = fin(_mm512_unpacklo_epi16(zero, hh), l2);
    let t3 = fin(_mm512_unpackhi_epi16(zero, hh), l3);
    // Per lane: bytes 0-3 | 4-7 and 8-11 | 12-15 pack back in order.
    let packed = _mm512_packus_epi16(_mm512_packs_epi32(t0, t1), _mm512_packs_epi32(t2, t3));
    _mm512_storeu_si512(dst.cast(), packed);
}
