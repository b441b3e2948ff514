//! Few-query scoring (GEMV): one streaming pass over the database, read in its own dtype.
//!
//! A single query against a large database does 2 FLOP per 4 bytes read, so the memory
//! bus is the limit, not arithmetic. The AVX2 kernel scores four database rows at a time,
//! one from each quarter of the rows it is given (eight independent FMA chains, four
//! sequential read streams far apart, which the hardware prefetchers follow best: on Zen 3,
//! one thread reads 22 GB/s this way against 19 GB/s as one stream and 15-17 GB/s with
//! software prefetches, `examples/stream_bench.rs`), and widens float16 rows in registers
//! with F16C, so an f16 database is read once at half the bytes with no f32 copy. On Intel
//! CPUs with AVX-512, a kernel with one zmm register per row reads eight rows at once.
//!
//! Every score has one fixed evaluation order, whatever the kernel: 16 lanes, lane `l`
//! accumulating elements `l, l + 16, ...` with FMA, a fixed pairwise lane reduction, then
//! the `dim % 16` tail. The AVX2 and AVX-512 kernels and the portable `dot_lanes::<true>`
//! therefore give the same bits (tested below); float16 rows give exactly the scores of their f32 widening.

use half::slice::HalfFloatSliceExt;

use crate::similarity::Rows;

/// Dot product with 16 independent lanes (vectorised by LLVM; FMA when `FMA`).
#[inline(always)]
pub(crate) fn dot_lanes<const FMA: bool>(a: &[f32], b: &[f32]) -> f32 {
    const L: usize = 16;
    let mut acc = [0.0f32; L];
    let (ac, bc) = (a.chunks_exact(L), b.chunks_exact(L));
    let (ar, br) = (ac.remainder(), bc.remainder());
    for (x, y) in ac.zip(bc) {
        for l in 0..L {
            acc[l] = if FMA { x[l].mul_add(y[l], acc[l]) } else { acc[l] + x[l] * y[l] };
        }
    }
    let mut tail = 0.0f32;
    for (x, y) in ar.iter().zip(br) {
        tail = if FMA { x.mul_add(*y, tail) } else { tail + x * y };
    }
    // Fixed pairwise reduction: the result does not depend on anything but the inputs.
    let mut width = L;
    while width > 1 {
        width /= 2;
        for l in 0..width {
            acc[l] += acc[l + width];
        }
    }
    acc[0] + tail
}

/// Portable kernel: `out[i * ldc + j] = dot(q_i, d_j)`.
///
/// # Safety
/// `out` must be valid for writes at `i * ldc + j` for `i < m`, `j < n`.
unsafe fn dots_portable<const FMA: bool>(q: &[f32], m: usize, d: &[f32], n: usize, dim: usize, out: *mut f32, ldc: usize) {
    for (j, row) in d.chunks_exact(dim).take(n).enumerate() {
        for (i, qi) in q.chunks_exact(dim).take(m).enumerate() {
            out.add(i * ldc + j).write(dot_lanes::<FMA>(qi, row));
        }
    }
}

#[cfg(target_arch = "x86_64")]
mod avx2 {
    use std::arch::x86_64::{
        __m128i, __m256, _mm256_add_ps, _mm256_castps256_ps128, _mm256_cvtph_ps, _mm256_extractf128_ps,
        _mm256_fmadd_ps, _mm256_loadu_ps, _mm256_setzero_ps, _mm_add_ps, _mm_add_ss, _mm_cvtss_f32,
        _mm_loadu_si128, _mm_movehl_ps, _mm_shuffle_ps, _mm_prefetch, _MM_HINT_T0,
    };

    use half::f16;

    /// `dot_lanes`' reduction: lanes l + (l + 8), then + 4, + 2, + 1.
    #[inline]
    #[target_feature(enable = "avx2,fma,f16c")]
    pub(super) unsafe fn reduce(lo: __m256, hi: __m256) -> f32 {
        let v8 = _mm256_add_ps(lo, hi);
        let v4 = _mm_add_ps(_mm256_castps256_ps128(v8), _mm256_extractf128_ps::<1>(v8));
        let v2 = _mm_add_ps(v4, _mm_movehl_ps(v4, v4));
        _mm_cvtss_f32(_mm_add_ss(v2, _mm_shuffle_ps::<1>(v2, v2)))
    }

    #[inline]
    #[target_feature(enable = "avx2,fma,f16c")]
    unsafe fn load_f32(p: *const f32) -> __m256 {
        _mm256_loadu_ps(p)
    }

    #[inline]
    #[target_feature(enable = "avx2,fma,f16c")]
    unsafe fn load_f16(p: *const f16) -> __m256 {
        _mm256_cvtph_ps(_mm_loadu_si128(p.cast::<__m128i>()))
    }

    /// The element conversion of f32 rows (none), beside `f16::to_f32` for the kernels' macros.
    #[inline]
    pub(super) fn widen_f32(x: f32) -> f32 {
        x
    }

    macro_rules! kernel {
        ($name:ident, $elem:ty, $load8:ident, $to_f32:path) => {
            /// Four rows at a time, one from each quarter of `d`; each query re-reads those
            /// rows from L1.
            ///
            /// # Safety
            /// AVX2, FMA and F16C present; `q` holds m rows and `d` n rows of `dim`; `out`
            /// is valid for writes at `i * ldc + j` for `i < m`, `j < n`.
            /// `PF > 0`: each stream also prefetches `PF` bytes ahead of itself (see `prefetch`).
            #[target_feature(enable = "avx2,fma,f16c")]
            pub(super) unsafe fn $name<const PF: usize>(q: &[f32], m: usize, d: &[$elem], n: usize, dim: usize, out: *mut f32, ldc: usize) {
                let chunks = dim / 16;
                let body = chunks * 16;
                let dp = d.as_ptr();
                let quarter = n.div_ceil(4);
                for s in 0..quarter {
                    // Row s of each quarter; past the end, row s again (results dropped).
                    let rows: [usize; 4] = std::array::from_fn(|t| s + t * quarter);
                    let r = rows.map(|j| dp.add(if j < n { j } else { s } * dim));
                    for i in 0..m {
                        let qp = q.as_ptr().add(i * dim);
                        let mut lo = [_mm256_setzero_ps(); 4];
                        let mut hi = [_mm256_setzero_ps(); 4];
                        for c in 0..chunks {
                            let (ql, qh) = (_mm256_loadu_ps(qp.add(c * 16)), _mm256_loadu_ps(qp.add(c * 16 + 8)));
                            if PF > 0 && i == 0 {
                                for row in &r {
                                    // Never faults; only the address must be computed without UB.
                                    _mm_prefetch::<_MM_HINT_T0>(row.add(c * 16).cast::<i8>().wrapping_add(PF));
                                }
                            }
                            for t in 0..4 {
                                lo[t] = _mm256_fmadd_ps(ql, $load8(r[t].add(c * 16)), lo[t]);
                                hi[t] = _mm256_fmadd_ps(qh, $load8(r[t].add(c * 16 + 8)), hi[t]);
                            }
                        }
                        for t in 0..4 {
                            if rows[t] >= n {
                                continue;
                            }
                            let mut tail = 0.0f32;
                            for e in body..dim {
                                tail = (*qp.add(e)).mul_add($to_f32(*r[t].add(e)), tail);
                            }
                            out.add(i * ldc + rows[t]).write(reduce(lo[t], hi[t]) + tail);
                        }
                    }
                }
            }
        };
    }

    kernel!(dots_f32, f32, load_f32, widen_f32);
    kernel!(dots_f16, f16, load_f16, f16::to_f32);
}

/// The AVX-512 kernel: one zmm register holds a row's 16 lanes, so each 64-byte line is one
/// load and one FMA (the AVX2 kernel issues two of each), and `S` rows are read at once,
/// one from each `S`-th of the rows given. Lane `l` of a row's register accumulates elements
/// `l, l + 16, ...` in order, and the two 8-lane halves go through the AVX2 kernel's
/// reduction: the scores are `dot_lanes::<true>`'s bits.
#[cfg(target_arch = "x86_64")]
mod avx512 {
    use std::arch::x86_64::{
        __m256i, __m512, _mm512_castps512_ps256, _mm512_castps_pd, _mm512_cvtph_ps,
        _mm512_extractf64x4_pd, _mm512_fmadd_ps, _mm512_loadu_ps, _mm512_setzero_ps, _mm256_castpd_ps,
        _mm256_loadu_si256, _mm_prefetch, _MM_HINT_T0,
    };

    use half::f16;

    #[inline]
    #[target_feature(enable = "avx512f,avx2,fma,f16c")]
    unsafe fn reduce(v: __m512) -> f32 {
        let hi = _mm256_castpd_ps(_mm512_extractf64x4_pd::<1>(_mm512_castps_pd(v)));
        super::avx2::reduce(_mm512_castps512_ps256(v), hi)
    }

    #[inline]
    #[target_feature(enable = "avx512f,avx2,fma,f16c")]
    unsafe fn load_f32(p: *const f32) -> __m512 {
        _mm512_loadu_ps(p)
    }

    #[inline]
    #[target_feature(enable = "avx512f,avx2,fma,f16c")]
    unsafe fn load_f16(p: *const f16) -> __m512 {
        _mm512_cvtph_ps(_mm256_loadu_si256(p.cast::<__m256i>()))
    }

    macro_rules! kernel {
        ($name:ident, $elem:ty, $load16:ident, $to_f32:path) => {
            /// `S` rows at a time, one from each `S`-th of `d`; each query re-reads them from L1.
            ///
            /// # Safety
            /// AVX-512F, AVX2, FMA and F16C present; `q` holds m rows and `d` n rows of
            /// `dim`; `out` is valid for writes at `i * ldc + j` for `i < m`, `j < n`.
            /// `PF > 0`: each stream also prefetches `PF` bytes ahead of itself.
            #[target_feature(enable = "avx512f,avx2,fma,f16c")]
            pub(super) unsafe fn $name<const S: usize, const PF: usize>(q: &[f32], m: usize, d: &[$elem], n: usize, dim: usize, out: *mut f32, ldc: usize) {
                let chunks = dim / 16;
                let body = chunks * 16;
                let dp = d.as_ptr();
                let part = n.div_ceil(S);
                for s in 0..part {
                    // Row s of each part; past the end, row s again (results dropped).
                    let rows: [usize; S] = std::array::from_fn(|t| s + t * part);
                    let r = rows.map(|j| dp.add(if j < n { j } else { s } * dim));
                    for i in 0..m {
                        let qp = q.as_ptr().add(i * dim);
                        let mut acc = [_mm512_setzero_ps(); S];
                        for c in 0..chunks {
                            let qc = _mm512_loadu_ps(qp.add(c * 16));
                            if PF > 0 && i == 0 {
                                for row in &r {
                                    // Never faults; only the address must be computed without UB.
                                    _mm_prefetch::<_MM_HINT_T0>(row.add(c * 16).cast::<i8>().wrapping_add(PF));
                                }
                            }
                            for t in 0..S {
                                acc[t] = _mm512_fmadd_ps(qc, $load16(r[t].add(c * 16)), acc[t]);
                            }
                        }
                        for t in 0..S {
                            if rows[t] >= n {
                                continue;
                            }
                            let mut tail = 0.0f32;
                            for e in body..dim {
                                tail = (*qp.add(e)).mul_add($to_f32(*r[t].add(e)), tail);
                            }
                            out.add(i * ldc + rows[t]).write(reduce(acc[t]) + tail);
                        }
                    }
                }
            }
        };
    }

    kernel!(dots_f32, f32, load_f32, super::avx2::widen_f32);
    kernel!(dots_f16, f16, load_f16, f16::to_f32);
}

/// Bytes each stream prefetches ahead of itself on CPUs where that helps.
#[cfg(target_arch = "x86_64")]
const PREFETCH_AHEAD: usize = 512;

/// Whether the dot kernel prefetches ahead in software: on Intel, yes; elsewhere, only the
/// hardware prefetchers. Measured with `examples/stream_bench.rs`, one thread over 2 GB:
/// on an AVX2-only Zen 3 EPYC, four streams far apart read 22 GB/s and one stream with
/// software prefetches 15-17 (see the module doc); on a Sapphire Rapids-class Xeon four
/// streams read 15-16 GB/s and 18.6 with each stream prefetching 512 bytes ahead (T0).
/// Four streams with prefetches were not measured on Zen 3, hence the vendor check.
/// `FERROCLIP_DOT_PREFETCH=0|1` overrides.
#[cfg(target_arch = "x86_64")]
fn prefetch() -> bool {
    static PREFETCH: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *PREFETCH.get_or_init(|| match std::env::var("FERROCLIP_DOT_PREFETCH").as_deref().map(str::trim) {
        Ok("0") => false,
        Ok("1") => true,
        _ => is_intel(),
    })
}

/// The AVX2 kernel for `d`'s dtype, built with or without software prefetch.
///
/// # Safety
/// As `dots`, and `has_avx2()`.
#[cfg(target_arch = "x86_64")]
#[allow(clippy::too_many_arguments)]
unsafe fn dots_avx2(q: &[f32], m: usize, d: Rows<'_>, n: usize, dim: usize, out: *mut f32, ldc: usize, prefetch: bool) {
    match (d, prefetch) {
        (Rows::F32(d), false) => avx2::dots_f32::<0>(q, m, &d[..n * dim], n, dim, out, ldc),
        (Rows::F32(d), true) => avx2::dots_f32::<PREFETCH_AHEAD>(q, m, &d[..n * dim], n, dim, out, ldc),
        (Rows::F16(d), false) => avx2::dots_f16::<0>(q, m, &d[..n * dim], n, dim, out, ldc),
        (Rows::F16(d), true) => avx2::dots_f16::<PREFETCH_AHEAD>(q, m, &d[..n * dim], n, dim, out, ldc),
    }
}

/// Rows the AVX-512 kernel reads at once. Its 32 registers hold eight rows' accumulators
/// (the AVX2 kernel's 16 fit four); on a Sapphire Rapids-class Xeon, one query against
/// 100k x 512 rows, the calls paired with the AVX2 kernel's (the `dot_kernel_timing` test
/// below, 31 pairs, twice): 0.90-0.91x its time in f32, 0.87-0.96x in f16; two and four
/// AVX-512 streams measured 1.11-1.21x and 0.94-1.02x.
#[cfg(target_arch = "x86_64")]
const AVX512_STREAMS: usize = 8;

/// The AVX-512 kernel for `d`'s dtype, built with or without software prefetch.
///
/// # Safety
/// As `dots`, and `has_avx512()`.
#[cfg(target_arch = "x86_64")]
#[allow(clippy::too_many_arguments)]
unsafe fn dots_avx512(q: &[f32], m: usize, d: Rows<'_>, n: usize, dim: usize, out: *mut f32, ldc: usize, prefetch: bool) {
    const S: usize = AVX512_STREAMS;
    match (d, prefetch) {
        (Rows::F32(d), false) => avx512::dots_f32::<S, 0>(q, m, &d[..n * dim], n, dim, out, ldc),
        (Rows::F32(d), true) => avx512::dots_f32::<S, PREFETCH_AHEAD>(q, m, &d[..n * dim], n, dim, out, ldc),
        (Rows::F16(d), false) => avx512::dots_f16::<S, 0>(q, m, &d[..n * dim], n, dim, out, ldc),
        (Rows::F16(d), true) => avx512::dots_f16::<S, PREFETCH_AHEAD>(q, m, &d[..n * dim], n, dim, out, ldc),
    }
}

#[cfg(target_arch = "x86_64")]
fn has_avx512() -> bool {
    static AVX512: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *AVX512.get_or_init(|| is_x86_feature_detected!("avx512f") && has_avx2())
}

#[cfg(target_arch = "x86_64")]
fn is_intel() -> bool {
    // SAFETY: CPUID leaf 0 exists on every x86-64 CPU (the call is safe in newer Rust).
    #[allow(unused_unsafe)]
    let id = unsafe { std::arch::x86_64::__cpuid(0) };
    let vendor: Vec<u8> = [id.ebx, id.edx, id.ecx].iter().flat_map(|r| r.to_le_bytes()).collect();
    vendor == b"GenuineIntel"
}

/// Whether the AVX-512 kernel runs: on Intel CPUs that have AVX-512. On AMD Zen 4, which
/// executes 512-bit operations as two 256-bit halves, an AVX-512 few-query kernel measured
/// slower than the AVX2 one, so AMD keeps AVX2. `FERROCLIP_DOT_KERNEL=avx2|avx512` overrides
/// (avx512 only where the CPU has it). Either way the scores have the same bits.
#[cfg(target_arch = "x86_64")]
fn use_avx512() -> bool {
    static WIDE: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *WIDE.get_or_init(|| {
        has_avx512()
            && match std::env::var("FERROCLIP_DOT_KERNEL").as_deref().map(str::trim) {
                Ok("avx2") => false,
                Ok("avx512") => true,
                _ => is_intel(),
            }
    })
}

#[cfg(target_arch = "x86_64")]
fn has_avx2() -> bool {
    static AVX2: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *AVX2.get_or_init(|| {
        is_x86_feature_detected!("avx2") && is_x86_feature_detected!("fma") && is_x86_feature_detected!("f16c")
    })
}

/// `out[i * ldc + j] = <q_i, d_j>` for m f32 queries and the n rows of `d` (f32 or f16).
///
/// `scratch` widens f16 rows only on CPUs without AVX2/F16C.
///
/// # Safety
/// `q` holds at least m rows and `d` at least n rows of `dim`; `out` is valid for writes at
/// `i * ldc + j` for `i < m`, `j < n`, and nothing else accesses those elements meanwhile.
#[allow(clippy::too_many_arguments, reason = "a BLAS-style kernel signature: matrix pointers, sizes and strides")]
pub(crate) unsafe fn dots(q: &[f32], m: usize, d: Rows<'_>, n: usize, dim: usize, out: *mut f32, ldc: usize, scratch: &mut Vec<f32>) {
    debug_assert!(dim > 0 && q.len() >= m * dim);
    #[cfg(target_arch = "x86_64")]
    if has_avx2() {
        if use_avx512() {
            return dots_avx512(q, m, d, n, dim, out, ldc, prefetch());
        }
        return dots_avx2(q, m, d, n, dim, out, ldc, prefetch());
    }
    match d {
        Rows::F32(d) => dots_portable::<false>(q, m, &d[..n * dim], n, dim, out, ldc),
        Rows::F16(d) => {
            scratch.resize(n * dim, 0.0);
            d[..n * dim].convert_to_f32_slice(scratch);
            dots_portable::<false>(q, m, scratch, n, dim, out, ldc);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use half::f16;

    /// The SIMD kernels give exactly the bits of the portable FMA evaluation order, for
    /// every row-group remainder and dimension tail, f32 and f16 storage.
    #[test]
    #[cfg(target_arch = "x86_64")]
    fn simd_kernels_match_portable_fma_bit_for_bit() {
        if !has_avx2() {
            return;
        }
        for dim in [1, 7, 16, 33, 512] {
            for n in [1, 3, 4, 5, 11, 17] {
                let d32 = crate::test_data::noise(n * dim, dim as u64 * 31 + n as u64);
                let d16: Vec<f16> = d32.iter().map(|&x| f16::from_f32(x)).collect();
                let widened: Vec<f32> = d16.iter().map(|x| x.to_f32()).collect();
                for m in [1, 3] {
                    let q = crate::test_data::noise(m * dim, 99 + m as u64);
                    for (rows, reference) in [(Rows::F32(&d32), &d32), (Rows::F16(&d16), &widened)] {
                        let mut want = vec![f32::NAN; m * n];
                        unsafe { dots_portable::<true>(&q, m, reference, n, dim, want.as_mut_ptr(), n) };
                        let w: Vec<u32> = want.iter().map(|x| x.to_bits()).collect();
                        // Both builds of the kernel, with and without software prefetch.
                        for pf in [false, true] {
                            let mut got = vec![f32::NAN; m * n];
                            unsafe { dots_avx2(&q, m, rows, n, dim, got.as_mut_ptr(), n, pf) };
                            let g: Vec<u32> = got.iter().map(|x| x.to_bits()).collect();
                            assert_eq!(g, w, "dim={dim} n={n} m={m} prefetch={pf}");
                            if has_avx512() {
                                let mut got = vec![f32::NAN; m * n];
                                unsafe { dots_avx512(&q, m, rows, n, dim, got.as_mut_ptr(), n, pf) };
                                let g: Vec<u32> = got.iter().map(|x| x.to_bits()).collect();
                                assert_eq!(g, w, "avx512 dim={dim} n={n} m={m} prefetch={pf}");
                            }
                        }
                    }
                }
            }
        }
    }

    #[test]
    fn portable_matches_naive_on_exact_data() {
        let (m, n, dim) = (2, 6, 37);
        let q: Vec<f32> = (0..m * dim).map(|x| (x % 5) as f32 - 2.0).collect();
        let d: Vec<f32> = (0..n * dim).map(|x| (x % 7) as f32 - 3.0).collect();
        let d16: Vec<f16> = d.iter().map(|&x| f16::from_f32(x)).collect();
        for rows in [Rows::F32(&d), Rows::F16(&d16)] {
            let mut out = vec![0.0; m * n];
            unsafe { dots(&q, m, rows, n, dim, out.as_mut_ptr(), n, &mut Vec::new()) };
            for i in 0..m {
                for j in 0..n {
                    let want: f32 = (0..dim).map(|t| q[i * dim + t] * d[j * dim + t]).sum();
                    assert_eq!(out[i * n + j], want);
                }
            }
        }
    }

    /// Paired timing of the kernels (not a test: `cargo test --release -p ferroclip-core
    /// --lib dot_kernel_timing -- --ignored --nocapture`).
    #[test]
    #[ignore]
    #[cfg(target_arch = "x86_64")]
    fn dot_kernel_timing() {
        if !has_avx512() {
            return;
        }
        let (n, dim) = (100_000, 512);
        let d32 = crate::test_data::noise(n * dim, 5);
        let d16: Vec<f16> = d32.iter().map(|&x| f16::from_f32(x)).collect();
        let q = crate::test_data::noise(dim, 9);
        let mut out = vec![0.0f32; n];
        for (label, rows) in [("f32", Rows::F32(&d32)), ("f16", Rows::F16(&d16))] {
            for pf in [false, true] {
                let names = ["avx2", "avx512"];
                let mut t: Vec<Vec<f64>> = vec![Vec::new(); 2];
                for _ in 0..31 {
                    for (v, times) in t.iter_mut().enumerate() {
                        let start = std::time::Instant::now();
                        unsafe {
                            if v == 0 {
                                dots_avx2(&q, 1, rows, n, dim, out.as_mut_ptr(), n, pf);
                            } else {
                                dots_avx512(&q, 1, rows, n, dim, out.as_mut_ptr(), n, pf);
                            }
                        }
                        times.push(start.elapsed().as_secs_f64());
                    }
                }
                let med = |mut x: Vec<f64>| {
                    x.sort_by(f64::total_cmp);
                    x[x.len() / 2]
                };
                for v in 0..2 {
                    let ratio = med(t[v].iter().zip(&t[0]).map(|(a, b)| a / b).collect());
                    println!("{label} pf={pf} {:10} median {:6.2} ms  best {:6.2} ms  vs avx2 {ratio:.3}", names[v], med(t[v].clone()) * 1e3, t[v].iter().copied().fold(f64::INFINITY, f64::min) * 1e3);
                }
            }
        }
    }
}
