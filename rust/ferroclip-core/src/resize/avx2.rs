//! AVX2 kernels for the two passes, integer-identical to the portable ones.
//!
//! Pillow's taps are 22-bit fixed point and do not fit the 16-bit lanes of
//! `_mm256_madd_epi16` (16 multiply-adds per instruction). Each tap is therefore split
//! exactly as `k = hi * 2^16 + lo` with `lo` the sign-extended low 16 bits (so `|hi|` is
//! tiny), both halves go through `madd` separately, and the sums are joined as
//! `(sum_hi << 16) + sum_lo`. Every step is a ring operation on `i32` (wrapping), so the
//! result equals the scalar `acc += p * k` bit for bit, whatever the order, even where the
//! scalar sum itself would wrap. `madd` cannot overflow its own pair sum:
//! `2 * 255 * 32768 < 2^31`.

use std::arch::x86_64::{
    __m256i, _mm256_add_epi32, _mm256_castsi256_si128, _mm256_extracti128_si256, _mm256_madd_epi16,
    _mm256_packs_epi32, _mm256_packus_epi16, _mm256_set1_epi32, _mm256_setr_epi8, _mm256_setzero_si256,
    _mm256_shuffle_epi8, _mm256_slli_epi32, _mm256_srai_epi32, _mm256_storeu_si256, _mm256_unpackhi_epi8,
    _mm256_unpacklo_epi8, _mm_cvtsi128_si32, _mm_extract_epi32, _mm_cvtsi128_si64, _mm_extract_epi64, _mm256_loadu_si256, _mm256_inserti128_si256,
    _mm256_castsi128_si256, _mm_loadu_si128, __m128i, _mm256_add_epi16, _mm256_maddubs_epi16, _mm256_unpacklo_epi16, _mm256_unpackhi_epi16,
};

use super::{clip8, Coeffs, HALF, PRECISION_BITS};
use crate::decode::RgbImage;
use crate::geometry::Span;

/// One tap pair `(k[2j], k[2j+1])` as two packed `(i16, i16)` words: low and high halves.
#[derive(Clone, Copy, Default)]
pub(super) struct Pair {
    pub(super) lo: i32,
    pub(super) hi: i32,
    /// The two high halves as `i8` bytes, twice (for `maddubs`); valid when `hi_bytes_ok`.
    pub(super) hb: i32,
    /// Whether `maddubs(pixels, hb)` is exact for this pair: both high halves fit `i8` and
    /// no pixel pair can saturate the `i16` pair sum (`255 * (|a| + |b|)` within range).
    pub(super) hi_bytes_ok: bool,
}

fn split(k: i32) -> (u16, u16) {
    let lo = k as i16;
    let hi = (k - i32::from(lo)) >> 16;
    (lo as u16, hi as u16)
}

fn pair(a: i32, b: i32) -> Pair {
    let (alo, ahi) = split(a);
    let (blo, bhi) = split(b);
    let (ha, hb) = (i32::from(ahi as i16), i32::from(bhi as i16));
    let pos = ha.max(0) + hb.max(0);
    let neg = (-ha).max(0) + (-hb).max(0);
    let hi_bytes_ok =
        (-128..=127).contains(&ha) && (-128..=127).contains(&hb) && 255 * pos <= 32767 && 255 * neg <= 32768;
    let bytes = u32::from(ha as u8) | (u32::from(hb as u8) << 8);
    Pair {
        lo: (u32::from(alo) | (u32::from(blo) << 16)) as i32,
        hi: (u32::from(ahi) | (u32::from(bhi) << 16)) as i32,
        hb: (bytes | (bytes << 16)) as i32,
        hi_bytes_ok,
    }
}

/// Append the taps `k` as pairs (an odd count gets a zero partner).
pub(super) fn push_pairs(k: &[i32], out: &mut Vec<Pair>) {
    for c in k.chunks(2) {
        out.push(pair(c[0], c.get(1).copied().unwrap_or(0)));
    }
}

/// Per-call setup shared by the horizontal kernels: output columns as runs of tap pairs
/// over pixel pairs counted from `base`.
pub(super) struct HPlan {
    /// First pixel (frame coordinates) of pixel pair 0.
    pub base: usize,
    /// Pixel pairs touched.
    pub n_m: usize,
    /// Per output column: (first pixel pair, pair count, index of its first tap pair).
    pub cols_meta: Vec<(usize, usize, usize)>,
    pub pairs: Vec<Pair>,
    /// The high halves of the taps can go through one `maddubs` on the packed pixel bytes
    /// instead of two `madd`s: exact for every pair (see `column_bytes`).
    pub bytes: bool,
}

impl HPlan {
    /// `x0` is the frame column where the source's pixels start.
    pub fn new(coeffs: &Coeffs, cols: Span, x0: usize) -> Self {
        let ow = cols.len;
        // Pairs start at even pixels from `base` on (in frame coordinates; the source
        // starts at frame column `x0`, so a pixel's bytes are at `(x - x0) * 3`).
        let first_tap = (cols.src..cols.src + ow)
            .filter(|&i| coeffs.bounds[i].1 > 0)
            .map(|i| coeffs.bounds[i].0)
            .min()
            .unwrap_or(x0);
        let base = (first_tap & !1).max(x0);
        let mut cols_meta = Vec::with_capacity(ow);
        let mut pairs = Vec::with_capacity(ow * (coeffs.ksize / 2 + 2));
        let mut padded = Vec::with_capacity(coeffs.ksize + 2);
        let mut n_m = 0usize;
        for ox in 0..ow {
            let (start, k) = coeffs.taps(cols.src + ox);
            let first = pairs.len();
            if k.is_empty() {
                cols_meta.push((0, 0, first));
                continue;
            }
            padded.clear();
            if (start - base) % 2 == 1 {
                padded.push(0);
            }
            padded.extend_from_slice(k);
            push_pairs(&padded, &mut pairs);
            let np = pairs.len() - first;
            let m0 = (start - base) / 2;
            n_m = n_m.max(m0 + np);
            cols_meta.push((m0, np, first));
        }
        let bytes = pairs.iter().all(|p| p.hi_bytes_ok);
        Self { base, n_m, cols_meta, pairs, bytes }
    }
}

/// Source rows for 16-byte loads at byte offsets up to `(start + 2 (n_m - 1)) * 3`: rows
/// whose loads would run past the end of the image are read from a padded copy.
pub(super) struct RowSource<'a> {
    data: &'a [u8],
    stride: usize,
    tail_from: usize,
    tail: Vec<u8>,
}

impl<'a> RowSource<'a> {
    pub fn new(src: &'a RgbImage, rows: std::ops::Range<usize>, start: usize, n_m: usize) -> Self {
        // The last 16-byte load starts at pixel start + 2 (n_m - 1).
        let reach = if n_m > 0 { (start + 2 * (n_m - 1)) * 3 + 16 } else { 0 };
        let stride = src.width * 3;
        let data = &src.data[..];
        let safe_rows = if data.len() >= reach { (data.len() - reach) / stride + 1 } else { 0 }.min(src.height);
        let tail_from = safe_rows.min(rows.end).max(rows.start);
        let mut tail = Vec::new();
        if tail_from < rows.end {
            tail.extend_from_slice(&data[tail_from * stride..rows.end * stride]);
            tail.resize(tail.len() + reach + 32, 0);
        }
        Self { data, stride, tail_from, tail }
    }

    #[inline]
    pub fn ptr(&self, y: usize) -> *const u8 {
        if y < self.tail_from {
            self.data[y * self.stride..].as_ptr()
        } else {
            self.tail[(y - self.tail_from) * self.stride..].as_ptr()
        }
    }
}

/// Horizontal pass, four source rows at a time.
///
/// Each 128-bit lane holds one row: a 16-byte load at an even pixel `2m` is shuffled
/// into `(R_2m, R_2m+1), (G, G'), (B, B'), 0` so one `madd` gives the three channels'
/// partial sums of a tap pair; a 256-bit register carries two rows that share the taps.
/// Pairs are aligned to even pixels (a column starting at an odd pixel gets a leading
/// zero tap), so the shuffled operands of the four rows are built once per pixel pair
/// and shared by the three or four output columns whose windows cover it.
/// Output pixels go straight to their row-major place, so no transposition is needed.
#[target_feature(enable = "avx2")]
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
    // Every byte is written below: no clear, so a reused buffer is not zeroed first.
    out.resize(n_rows * ow * 3, 0);
    if ow == 0 || n_rows == 0 {
        return;
    }
    let HPlan { base, n_m, cols_meta, pairs, bytes } = HPlan::new(coeffs, cols, x0);
    let rows_src = RowSource::new(src, rows.clone(), base - x0, n_m);
    let row_ptr = |y: usize| rows_src.ptr(y);
    let mask = _mm256_setr_epi8(
        0, -1, 3, -1, 1, -1, 4, -1, 2, -1, 5, -1, -1, -1, -1, -1, //
        0, -1, 3, -1, 1, -1, 4, -1, 2, -1, 5, -1, -1, -1, -1, -1,
    );
    // RGB0 RGB0 -> RGBRGB (two junk bytes) in each 8-byte group.
    let compact = _mm256_setr_epi8(
        0, 1, 2, 4, 5, 6, -1, -1, 8, 9, 10, 12, 13, 14, -1, -1, //
        0, 1, 2, 4, 5, 6, -1, -1, 8, 9, 10, 12, 13, 14, -1, -1,
    );
    let zero = _mm256_setzero_si256();
    let per = if bytes { 1 } else { 2 };
    // Shuffled operands per pixel pair: rows 0 and 1, rows 2 and 3 (16-bit), or with
    // `bytes` the same four rows packed to bytes (lane 0: rows 0, 2; lane 1: rows 1, 3),
    // half the footprint, widened again in the column loop.
    let mut ops: Vec<__m256i> = vec![zero; per * n_m];
    let opp = ops.as_mut_ptr();
    let out_row = ow * 3;
    let optr = out.as_mut_ptr();
    let mut r = 0;
    while r < n_rows {
        let last = n_rows - 1;
        let p = [0, 1, 2, 3].map(|i| row_ptr(rows.start + (r + i).min(last)));
        let valid = (n_rows - r).min(4);
        for m in 0..n_m {
            let off = (base - x0 + 2 * m) * 3;
            let v0 = _mm256_shuffle_epi8(load2(p[0].add(off), p[1].add(off)), mask);
            let v1 = _mm256_shuffle_epi8(load2(p[2].add(off), p[3].add(off)), mask);
            if bytes {
                *opp.add(m) = _mm256_packus_epi16(v0, v1);
            } else {
                *opp.add(2 * m) = v0;
                *opp.add(2 * m + 1) = v1;
            }
        }
        let mut ox = 0;
        while ox < ow {
            let (m0, np, first) = *cols_meta.get_unchecked(ox);
            let (ta0, ta1) = if bytes {
                column_bytes(opp.add(m0), pairs.as_ptr().add(first), np)
            } else {
                column(opp.add(2 * m0), pairs.as_ptr().add(first), np)
            };
            if ox + 1 < ow {
                let (m0, np, first) = *cols_meta.get_unchecked(ox + 1);
                let (tb0, tb1) = if bytes {
                    column_bytes(opp.add(m0), pairs.as_ptr().add(first), np)
                } else {
                    column(opp.add(2 * m0), pairs.as_ptr().add(first), np)
                };
                // Lane 0: rows 0 and 2, lane 1: rows 1 and 3, each as RGBRGB.. for both columns.
                let b = _mm256_packus_epi16(_mm256_packs_epi32(ta0, tb0), _mm256_packs_epi32(ta1, tb1));
                let b = _mm256_shuffle_epi8(b, compact);
                let lo = _mm256_castsi256_si128(b);
                let hi = _mm256_extracti128_si256(b, 1);
                let px = [
                    _mm_cvtsi128_si64(lo) as u64,
                    _mm_cvtsi128_si64(hi) as u64,
                    _mm_extract_epi64(lo, 1) as u64,
                    _mm_extract_epi64(hi, 1) as u64,
                ];
                for (i, &v) in px.iter().enumerate().take(valid) {
                    let dst = optr.add((r + i) * out_row + ox * 3);
                    if ox + 2 < ow {
                        // The two junk bytes land on the next pixel, written right after.
                        dst.cast::<u64>().write_unaligned(v);
                    } else {
                        std::ptr::copy_nonoverlapping(v.to_le_bytes().as_ptr(), dst, 6);
                    }
                }
                ox += 2;
            } else {
                // Lane 0: rows 0 and 2, lane 1: rows 1 and 3, each as R G B 0 bytes.
                let b = _mm256_packus_epi16(_mm256_packs_epi32(ta0, ta1), zero);
                let lo = _mm256_castsi256_si128(b);
                let hi = _mm256_extracti128_si256(b, 1);
                let px = [
                    _mm_cvtsi128_si32(lo) as u32,
                    _mm_cvtsi128_si32(hi) as u32,
                    _mm_extract_epi32(lo, 1) as u32,
                    _mm_extract_epi32(hi, 1) as u32,
                ];
                for (i, &v) in px.iter().enumerate().take(valid) {
                    let dst = optr.add((r + i) * out_row + ox * 3);
                    std::ptr::copy_nonoverlapping(v.to_le_bytes().as_ptr(), dst, 3);
                }
                ox += 1;
            }
        }
        r += 4;
    }
}

/// One output column over four rows: the shuffled operands from `ops` (two per pixel
/// pair) against `np` tap pairs, rounded and shifted back to pixel scale.
#[inline]
#[target_feature(enable = "avx2")]
unsafe fn column(ops: *const __m256i, pairs: *const Pair, np: usize) -> (__m256i, __m256i) {
    let half = _mm256_set1_epi32(HALF);
    let (mut l0, mut h0, mut l1, mut h1) = (half, _mm256_setzero_si256(), half, _mm256_setzero_si256());
    for j in 0..np {
        let pr = *pairs.add(j);
        let kl = _mm256_set1_epi32(pr.lo);
        let kh = _mm256_set1_epi32(pr.hi);
        let v0 = *ops.add(2 * j);
        let v1 = *ops.add(2 * j + 1);
        l0 = _mm256_add_epi32(l0, _mm256_madd_epi16(v0, kl));
        h0 = _mm256_add_epi32(h0, _mm256_madd_epi16(v0, kh));
        l1 = _mm256_add_epi32(l1, _mm256_madd_epi16(v1, kl));
        h1 = _mm256_add_epi32(h1, _mm256_madd_epi16(v1, kh));
    }
    (fin(l0, h0), fin(l1, h1))
}

#[inline]
#[target_feature(enable = "avx2")]
unsafe fn load2(lo: *const u8, hi: *const u8) -> __m256i {
    let a = _mm256_castsi128_si256(_mm_loadu_si128(lo.cast::<__m128i>()));
    _mm256_inserti128_si256(a, _mm_loadu_si128(hi.cast::<__m128i>()), 1)
}

/// `column` with the high halves through `maddubs`: `ops` holds one operand per pixel
/// pair, the four rows' pixel bytes packed as `(p_2m, p_2m+1)` pairs per channel, which
/// `unpack` widens back to the 16-bit operands of the low halves.
///
/// `maddubs(bytes, hb)` gives `p_a * hi_a + p_b * hi_b` per channel and row as `i16`, with
/// no saturation (`hi_bytes_ok`). Those sums are accumulated with wrapping `i16` adds:
/// only `sum_hi mod 2^16` matters, since it is shifted left by 16 into a wrapping `i32`
/// (`(sum_hi << 16) + sum_lo`), so the result is the scalar `acc` bit for bit.
#[inline]
#[target_feature(enable = "avx2")]
unsafe fn column_bytes(ops: *const __m256i, pairs: *const Pair, np: usize) -> (__m256i, __m256i) {
    let half = _mm256_set1_epi32(HALF);
    let zero = _mm256_setzero_si256();
    let (mut l0, mut l1, mut h) = (half, half, zero);
    for j in 0..np {
        let pr = *pairs.add(j);
        let kl = _mm256_set1_epi32(pr.lo);
        let kb = _mm256_set1_epi32(pr.hb);
        let b = *ops.add(j);
        l0 = _mm256_add_epi32(l0, _mm256_madd_epi16(_mm256_unpacklo_epi8(b, zero), kl));
        l1 = _mm256_add_epi32(l1, _mm256_madd_epi16(_mm256_unpackhi_epi8(b, zero), kl));
        h = _mm256_add_epi16(h, _mm256_maddubs_epi16(b, kb));
    }
    // `h` lane 0: rows 0 and 2, lane 1: rows 1 and 3; as `hi << 16` next to `l0`, `l1`.
    let t0 = _mm256_add_epi32(_mm256_unpacklo_epi16(zero, h), l0);
    let t1 = _mm256_add_epi32(_mm256_unpackhi_epi16(zero, h), l1);
    (_mm256_srai_epi32(t0, PRECISION_BITS as i32), _mm256_srai_epi32(t1, PRECISION_BITS as i32))
}

/// Vertical pass: `src` holds `src_w * 3`-byte rows starting at source row `row0`.
///
/// 32 bytes of a row at a time: the two rows of a tap pair are byte-interleaved and
/// widened to `(row_t, row_t+1)` 16-bit pairs, so one `madd` covers two taps for eight
/// bytes; the four results pack back to 32 bytes in order.
#[target_feature(enable = "avx2")]
pub(super) unsafe fn vertical(src: &[u8], src_w: usize, row0: usize, coeffs: &Coeffs, rows: Span, out: &mut [u8]) {
    // SAFETY: this function only runs with AVX2 (its own target feature).
    vertical_rows(src, src_w, row0, coeffs, rows, out, 32, &|ptrs, pairs, at, dst| unsafe {
        vertical_chunk(ptrs, pairs, at, dst)
    });
}

/// A vertical kernel's work on `width` bytes of one output row: the source row pairs,
/// their tap pairs, the byte offset in the row and where the result goes.
pub(super) type VerticalChunk<'a> = &'a dyn Fn(&[(*const u8, *const u8)], &[Pair], usize, *mut u8);

/// The row loop shared by the vertical kernels: per output row, its tap pairs and source
/// row pairs, then `chunk` over the row `width` bytes at a time (rows narrower than that
/// go through the scalar sum).
#[inline(always)]
#[allow(clippy::too_many_arguments)]
pub(super) unsafe fn vertical_rows(
    src: &[u8],
    src_w: usize,
    row0: usize,
    coeffs: &Coeffs,
    rows: Span,
    out: &mut [u8],
    width: usize,
    chunk: VerticalChunk<'_>,
) {
    let stride = src_w * 3;
    assert!(out.len() >= rows.len * stride);
    let mut pairs = Vec::with_capacity(coeffs.ksize.div_ceil(2));
    let mut ptrs: Vec<(*const u8, *const u8)> = Vec::with_capacity(coeffs.ksize.div_ceil(2));
    for oy in 0..rows.len {
        let (start, k) = coeffs.taps(rows.src + oy);
        let dst = &mut out[oy * stride..(oy + 1) * stride];
        if stride < width {
            for (x, o) in dst.iter_mut().enumerate() {
                let mut acc = HALF;
                for (t, &c) in k.iter().enumerate() {
                    acc = acc.wrapping_add(i32::from(src[(start + t - row0) * stride + x]).wrapping_mul(c));
                }
                *o = clip8(acc);
            }
            continue;
        }
        pairs.clear();
        ptrs.clear();
        push_pairs(k, &mut pairs);
        for j in 0..pairs.len() {
            let a = start + 2 * j - row0;
            // An odd tap count pairs the last row with itself under a zero tap.
            let b = if 2 * j + 1 < k.len() { a + 1 } else { a };
            let ra = &src[a * stride..(a + 1) * stride];
            let rb = &src[b * stride..(b + 1) * stride];
            ptrs.push((ra.as_ptr(), rb.as_ptr()));
        }
        let mut x = 0;
        while x < stride {
            // The last chunk overlaps the previous one rather than running past the row.
            let at = x.min(stride - width);
            chunk(&ptrs, &pairs, at, dst.as_mut_ptr().add(at));
            x += width;
        }
    }
}

#[inline]
#[target_feature(enable = "avx2")]
pub(super) unsafe fn vertical_chunk(ptrs: &[(*const u8, *const u8)], pairs: &[Pair], at: usize, dst: *mut u8) {
    let zero = _mm256_setzero_si256();
    let half = _mm256_set1_epi32(HALF);
    let (mut l0, mut l1, mut l2, mut l3) = (half, half, half, half);
    let (mut h0, mut h1, mut h2, mut h3) = (zero, zero, zero, zero);
    for (&(ra, rb), pr) in ptrs.iter().zip(pairs) {
        let a = _mm256_loadu_si256(ra.add(at).cast::<__m256i>());
        let b = _mm256_loadu_si256(rb.add(at).cast::<__m256i>());
        let kl = _mm256_set1_epi32(pr.lo);
        let kh = _mm256_set1_epi32(pr.hi);
        let lo = _mm256_unpacklo_epi8(a, b);
        let hi = _mm256_unpackhi_epi8(a, b);
        let p0 = _mm256_unpacklo_epi8(lo, zero);
        let p1 = _mm256_unpackhi_epi8(lo, zero);
        let p2 = _mm256_unpacklo_epi8(hi, zero);
        let p3 = _mm256_unpackhi_epi8(hi, zero);
        l0 = _mm256_add_epi32(l0, _mm256_madd_epi16(p0, kl));
        h0 = _mm256_add_epi32(h0, _mm256_madd_epi16(p0, kh));
        l1 = _mm256_add_epi32(l1, _mm256_madd_epi16(p1, kl));
        h1 = _mm256_add_epi32(h1, _mm256_madd_epi16(p1, kh));
        l2 = _mm256_add_epi32(l2, _mm256_madd_epi16(p2, kl));
        h2 = _mm256_add_epi32(h2, _mm256_madd_epi16(p2, kh));
        l3 = _mm256_add_epi32(l3, _mm256_madd_epi16(p3, kl));
        h3 = _mm256_add_epi32(h3, _mm256_madd_epi16(p3, kh));
    }
    // Per lane: bytes 0-3 | 4-7 and 8-11 | 12-15 pack back in order.
    let a = _mm256_packs_epi32(fin(l0, h0), fin(l1, h1));
    let b = _mm256_packs_epi32(fin(l2, h2), fin(l3, h3));
    _mm256_storeu_si256(dst.cast::<__m256i>(), _mm256_packus_epi16(a, b));
}

/// `(hi << 16) + lo`, rounded (`lo` started at `HALF`) and shifted back to pixel scale.
#[inline]
#[target_feature(enable = "avx2")]
unsafe fn fin(lo: __m256i, hi: __m256i) -> __m256i {
    _mm256_srai_epi32(_mm256_add_epi32(_mm256_slli_epi32(hi, 16), lo), PRECISION_BITS as i32)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn split_is_exact() {
        let mut k = -(1i64 << 24);
        while k <= 1 << 24 {
            let (lo, hi) = split(k as i32);
            assert_eq!(i64::from(hi as i16) * 65536 + i64::from(lo as i16), k);
            k += 4099;
        }
        for k in [0, 1, -1, 32767, 32768, -32768, -32769, 65535, 65536, 1 << 22, -(1 << 22)] {
            let (lo, hi) = split(k);
            assert_eq!(i32::from(hi as i16) * 65536 + i32::from(lo as i16), k);
        }
    }

    /// The byte path's precondition, checked exhaustively over the pixel extremes: when a
    /// pair says `hi_bytes_ok`, `maddubs` (u8 x i8, saturating pair sum) gives the exact sum.
    #[test]
    fn byte_high_halves_are_exact_when_allowed() {
        let limit = 64 * 65536 + 32767;
        let mut seen = (0, 0);
        let ks = [0, 1, -1, 32767, 32768, -32768, -32769, 1 << 21, 1 << 22, -(1 << 22), limit, limit + 1, -limit, -limit - 1, 65 * 65536, 127 * 65536, 200 * 65536];
        for &a in &ks {
            for &b in &ks {
                let p = pair(a, b);
                let (ha, hb) = (i32::from((p.hi & 0xffff) as i16), i32::from((p.hi >> 16) as i16));
                if !p.hi_bytes_ok {
                    seen.1 += 1;
                    continue;
                }
                seen.0 += 1;
                assert_eq!(i32::from(p.hb as u8 as i8), ha);
                assert_eq!(i32::from((p.hb >> 8) as u8 as i8), hb);
                assert_eq!(p.hb as u32 >> 16, p.hb as u32 & 0xffff);
                for pa in [0, 1, 128, 254, 255] {
                    for pb in [0, 1, 128, 254, 255] {
                        let exact = pa * ha + pb * hb;
                        let sat = exact.clamp(-32768, 32767);
                        assert_eq!(exact, sat, "pair ({a}, {b}) saturates at pixels ({pa}, {pb})");
                    }
                }
            }
        }
        // Both outcomes occur among these taps; the usual downscale taps all take the byte path.
        assert!(seen.0 > 0 && seen.1 > 0, "{seen:?}");
        assert!(!pair(limit + 1, limit).hi_bytes_ok && pair(limit, limit).hi_bytes_ok);
        for (i, o) in [(640, 298), (480, 224), (4000, 298), (1920, 398), (224, 224 * 3)] {
            for f in [super::super::Filter::Bicubic, super::super::Filter::Bilinear, super::super::Filter::Lanczos] {
                let c = Coeffs::new(i, o, f);
                let mut pairs = Vec::new();
                for x in 0..o {
                    push_pairs(c.taps(x).1, &mut pairs);
                }
                if i > o {
                    assert!(pairs.iter().all(|p| p.hi_bytes_ok), "{i} -> {o} {f:?}");
                }
            }
        }
    }
}
