//! Single-thread read bandwidth over a 2 GB buffer (1M x 512 f32, the size of the top-k
//! single-query benchmark), read as one stream, with software prefetches of each hint and
//! distance, and as K streams far apart: which access pattern the few-query dot kernel
//! (`dot.rs`) should use on this machine.
//!
//! `cargo run --release -p ferroclip-core --example stream_bench [nothp]`
#[cfg(target_arch = "x86_64")]
use std::arch::x86_64::*;
use std::time::Instant;

/// Prefetch the four cache lines from `a` with hint `H`.
#[cfg(target_arch = "x86_64")]
#[inline(always)]
unsafe fn prefetch4<const H: i32>(a: *const i8) {
    for l in 0..4 {
        _mm_prefetch::<H>(a.wrapping_add(64 * l));
    }
}

/// Sum of eight accumulators (the result only keeps the loads from being optimised away).
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn hsum(acc: [__m256; 8]) -> f32 {
    let s = acc
        .iter()
        .fold(_mm256_setzero_ps(), |s, &v| _mm256_add_ps(s, v));
    let mut o = [0f32; 8];
    _mm256_storeu_ps(o.as_mut_ptr(), s);
    o.iter().sum()
}

#[allow(clippy::needless_range_loop, reason = "eight SIMD accumulators indexed by lane group, unrolled on purpose")]
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn sum_plain(p: *const f32, n: usize, dist: usize, hint: i32) -> f32 {
    let mut acc = [_mm256_setzero_ps(); 8];
    let mut i = 0;
    while i + 64 <= n {
        if dist > 0 {
            let a = (p.add(i) as *const i8).wrapping_add(dist);
            match hint {
                0 => prefetch4::<_MM_HINT_T0>(a),
                1 => prefetch4::<_MM_HINT_T1>(a),
                _ => prefetch4::<_MM_HINT_NTA>(a),
            }
        }
        for t in 0..8 {
            acc[t] = _mm256_add_ps(acc[t], _mm256_loadu_ps(p.add(i + t * 8)));
        }
        i += 64;
    }
    hsum(acc)
}

/// Stream in K separate regions concurrently (K streams), each 1/K of the buffer, each
/// prefetching `dist` bytes ahead of itself (hint T0; 0: no software prefetch).
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn sum_split(p: *const f32, n: usize, k: usize, dist: usize) -> f32 {
    let part = n / k / 64 * 64;
    let mut acc = [_mm256_setzero_ps(); 8];
    let mut i = 0;
    while i < part {
        for s in 0..k {
            let q = p.add(s * part + i);
            if dist > 0 && i % 64 == 0 {
                prefetch4::<_MM_HINT_T0>((q as *const i8).wrapping_add(dist));
            }
            acc[s % 8] = _mm256_add_ps(acc[s % 8], _mm256_loadu_ps(q));
            acc[(s + 1) % 8] = _mm256_add_ps(acc[(s + 1) % 8], _mm256_loadu_ps(q.add(8)));
        }
        i += 16;
    }
    hsum(acc)
}

#[derive(Clone, Copy)]
struct Buf(*const f32);
unsafe impl Send for Buf {}
unsafe impl Sync for Buf {}

/// `f` over the two halves of the buffer on two threads.
#[cfg(target_arch = "x86_64")]
fn two_threads(p: *const f32, n: usize, f: &(dyn Fn(*const f32, usize) -> f32 + Sync)) -> f32 {
    let b = Buf(p);
    std::thread::scope(|s| {
        let h = s.spawn(move || {
            let b = b;
            f(unsafe { b.0.add(n / 2) }, n / 2)
        });
        f(b.0, n / 2) + h.join().unwrap()
    })
}

#[cfg(target_arch = "x86_64")]
fn main() {
    let n = 512usize * 1_000_000;
    let bytes = n * 4;
    let layout = std::alloc::Layout::from_size_align(bytes, 2 << 20).unwrap();
    let p = unsafe { std::alloc::alloc(layout) as *mut f32 };
    unsafe { libc::madvise(p as *mut libc::c_void, bytes, libc::MADV_HUGEPAGE) };
    let thp = std::env::args().nth(1).is_none_or(|s| s != "nothp");
    if !thp {
        unsafe { libc::madvise(p as *mut libc::c_void, bytes, libc::MADV_NOHUGEPAGE) };
    }
    for i in 0..n {
        unsafe { *p.add(i) = (i % 7) as f32 };
    }
    let run = |name: &str, f: &dyn Fn() -> f32| {
        let mut best = f64::INFINITY;
        let mut v = Vec::new();
        for _ in 0..5 {
            let t = Instant::now();
            std::hint::black_box(f());
            let e = t.elapsed().as_secs_f64();
            best = best.min(e);
            v.push(e);
        }
        v.sort_by(|a, b| a.partial_cmp(b).unwrap());
        println!(
            "{name:28} best {:6.1} ms ({:5.1} GB/s) median {:6.1} ms",
            best * 1e3,
            bytes as f64 / best / 1e9,
            v[2] * 1e3
        );
    };
    run("plain", &|| unsafe { sum_plain(p, n, 0, 0) });
    for d in [1024, 2048, 4096, 8192] {
        for h in [0, 1, 2] {
            run(&format!("prefetch d={d} hint={h}"), &|| unsafe {
                sum_plain(p, n, d, h)
            });
        }
    }
    for k in [2, 4, 8] {
        run(&format!("split {k}"), &|| unsafe { sum_split(p, n, k, 0) });
    }
    for k in [1, 2, 4] {
        for d in [512, 1024, 2048] {
            run(&format!("split {k} prefetch d={d}"), &|| unsafe { sum_split(p, n, k, d) });
        }
    }
    run("2 threads: plain", &|| two_threads(p, n, &|p, n| unsafe { sum_plain(p, n, 0, 0) }));
    run("2 threads: split 4", &|| two_threads(p, n, &|p, n| unsafe { sum_split(p, n, 4, 0) }));
    for d in [512, 1024] {
        run(&format!("2 threads: prefetch d={d}"), &|| two_threads(p, n, &|p, n| unsafe { sum_plain(p, n, d, 0) }));
        run(&format!("2 threads: split 2 prefetch d={d}"), &|| two_threads(p, n, &|p, n| unsafe { sum_split(p, n, 2, d) }));
    }
}

#[cfg(not(target_arch = "x86_64"))]
fn main() {
    println!("x86-64 only");
}
