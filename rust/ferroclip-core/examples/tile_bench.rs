//! Tile-product micro-benchmark: `matrixmultiply::sgemm` on the tile shapes ferroclip uses
//! (row-major queries m x k times database rows n x k, transposed), against the product the
//! library uses in this process (`blas::backend`: ferroclip's own AVX2 kernel on AVX2 CPUs
//! without AVX-512). Medians and best-of-N (the best is steadier on a shared host);
//! `TILE_BENCH_K` sets k (default 512). (Measured and dropped: the `gemm` crate,
//! at 0.55-0.7x of matrixmultiply on these shapes; pre-transposed operands, same bits and
//! +5-15% here on repeated calls, but 3-10% slower inside top-k and recall.)
//!
//! Also times the product through the process's BLAS (`ferroclip_core::blas`) when one is
//! loaded and `FERROCLIP_BLAS=1`: a plain Rust process has none, so
//! `FERROCLIP_BENCH_BLAS=/path/to/libopenblas.so` loads one first (numpy's: `python -c "import numpy, glob, os; print(glob.glob(os.path.join(
//! os.path.dirname(numpy.__file__) + '.libs', '*openblas*'))[0])"`).
//!
//! `env -u OPENBLAS_CORETYPE FERROCLIP_BLAS=1 FERROCLIP_BENCH_BLAS=... cargo run -p ferroclip-core --release --example tile_bench -- [reps]`

use std::time::Instant;

fn data(len: usize, seed: u32) -> Vec<f32> {
    let mut x = seed.wrapping_mul(2_654_435_761).wrapping_add(12345);
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 17;
            x ^= x << 5;
            (x % 2001) as f32 / 1000.0 - 1.0
        })
        .collect()
}

unsafe fn mm(m: usize, n: usize, k: usize, q: &[f32], d: &[f32], out: &mut [f32], ldc: usize) {
    matrixmultiply::sgemm(m, k, n, 1.0, q.as_ptr(), k as isize, 1, d.as_ptr(), 1, k as isize, 0.0, out.as_mut_ptr(), ldc as isize, 1);
}

/// Seconds on this thread's CPU clock when `TILE_BENCH_CPU=1` (steadier than the wall
/// clock on a host where other processes take turns on the cores), else wall seconds.
fn clock() -> f64 {
    if std::env::var("TILE_BENCH_CPU").is_ok_and(|v| v == "1") {
        let mut ts = libc::timespec { tv_sec: 0, tv_nsec: 0 };
        // SAFETY: a valid timespec to write into.
        unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut ts) };
        ts.tv_sec as f64 + ts.tv_nsec as f64 * 1e-9
    } else {
        static START: std::sync::OnceLock<Instant> = std::sync::OnceLock::new();
        START.get_or_init(Instant::now).elapsed().as_secs_f64()
    }
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.partial_cmp(b).unwrap());
    v[v.len() / 2]
}

fn main() {
    let reps: usize = std::env::args().nth(1).map_or(15, |s| s.parse().unwrap());
    if let Ok(path) = std::env::var("FERROCLIP_BENCH_BLAS") {
        let c = std::ffi::CString::new(path.clone()).unwrap();
        // SAFETY: loading a shared library by path; kept loaded for the whole run.
        let handle = unsafe { libc::dlopen(c.as_ptr(), libc::RTLD_NOW | libc::RTLD_LOCAL) };
        assert!(!handle.is_null(), "cannot load {path}");
    }
    println!("backend: {}", ferroclip_core::blas::backend());
    let k: usize = std::env::var("TILE_BENCH_K").map_or(512, |s| s.parse().unwrap());
    // (m queries, n db rows, ldc, label)
    let shapes = [
        (1024, 128, 128, "1024x128 (topk scan tile)"),
        (512, 128, 128, "512x128 (recall scan tile)"),
        (256, 1024, 1024, "256x1024 (similarity, dedup tile)"),
        (256, 1024, 25_000, "recall tile 256x1024, ldc 25000"),
        (1024, 1024, 1024, "1024x1024 (topk tile)"),
        (256, 2048, 2048, "256x2048"),
        (512, 1024, 1024, "512x1024"),
        (512, 2048, 2048, "512x2048"),
        (1024, 2048, 2048, "1024x2048"),
        (1024, 4096, 4096, "1024x4096"),
        (128, 1024, 1024, "128x1024"),
        (8, 48, 48, "8x48 (L1/L2 resident)"),
        (64, 96, 96, "64x96 (L2 resident)"),
        (120, 16, 16, "120x16 (one panel)"),
    ];
    for &(m, n, ldc, label) in &shapes {
        let q = data(m * k, 1);
        let d = data(n * k, 2);
        let mut o1 = vec![0.0f32; (m - 1) * ldc + n];
        let mut o2 = o1.clone();
        let flop = 2.0 * (m * n * k) as f64;
        // Calls per timing so each sample is ~20 ms.
        let calls = ((2e-2 * 1.3e11) / flop).ceil() as usize;
        let (mut t_mm, mut t_backend) = (Vec::new(), Vec::new());
        // Interleaved, so a neighbour's load hits both alike.
        for _ in 0..reps {
            let t = clock();
            for _ in 0..calls {
                unsafe { mm(m, n, k, &q, &d, &mut o1, ldc) };
            }
            t_mm.push((clock() - t) / calls as f64);
            let t = clock();
            for _ in 0..calls {
                ferroclip_core::similarity::bench_block_product(&q, m, &d, n, k, &mut o2, ldc);
            }
            t_backend.push((clock() - t) / calls as f64);
        }
        let max_diff = o1.iter().zip(&o2).map(|(a, b)| (a - b).abs()).fold(0.0f32, f32::max);
        let best = |v: &[f64]| v.iter().copied().fold(f64::INFINITY, f64::min);
        let (ba, bb) = (best(&t_mm), best(&t_backend));
        let (a, b) = (median(t_mm), median(t_backend));
        println!(
            "{label:36} matrixmultiply {:6.1}  ferroclip {:6.1} GFLOP/s  ({:.2}x; best {:6.1} / {:6.1}, {:.2}x; max |diff| {max_diff:.1e})",
            flop / a / 1e9,
            flop / b / 1e9,
            a / b,
            flop / ba / 1e9,
            flop / bb / 1e9,
            ba / bb
        );
    }
}
