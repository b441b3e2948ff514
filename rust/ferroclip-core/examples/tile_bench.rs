//! Tile-product micro-benchmark: `matrixmultiply::sgemm` on the tile shapes ferroclip uses
//! (row-major queries m x k times database rows n x k, transposed), from row-major and from
//! pre-transposed operands. (The `gemm` crate was measured here too, at 0.55-0.7x of
//! matrixmultiply on these shapes; it was dropped as a dependency.)
//!
//! `cargo run -p ferroclip-core --release --example tile_bench -- [reps]`

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

/// Same product from pre-transposed inputs (qt: k x m, dt: k x n, row-major): matrixmultiply
/// then packs by contiguous copies instead of element gathers.
unsafe fn mm_t(m: usize, n: usize, k: usize, qt: &[f32], dt: &[f32], out: &mut [f32], ldc: usize) {
    matrixmultiply::sgemm(m, k, n, 1.0, qt.as_ptr(), 1, m as isize, dt.as_ptr(), n as isize, 1, 0.0, out.as_mut_ptr(), ldc as isize, 1);
}

fn transpose(x: &[f32], rows: usize, cols: usize) -> Vec<f32> {
    let mut t = vec![0.0; x.len()];
    for r in 0..rows {
        for c in 0..cols {
            t[c * rows + r] = x[r * cols + c];
        }
    }
    t
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.partial_cmp(b).unwrap());
    v[v.len() / 2]
}

fn main() {
    let reps: usize = std::env::args().nth(1).map_or(15, |s| s.parse().unwrap());
    let k = 512;
    // (m queries, n db rows, ldc, label)
    let shapes = [
        (256, 1024, 1024, "topk tile 256x1024"),
        (256, 1024, 25_000, "recall tile 256x1024, ldc 25000"),
        (256, 2048, 2048, "256x2048"),
        (512, 1024, 1024, "512x1024"),
        (128, 1024, 1024, "128x1024"),
        (256, 512, 512, "256x512"),
        (1000, 4096, 4096, "1000x4096 (bigger call)"),
    ];
    for &(m, n, ldc, label) in &shapes {
        let q = data(m * k, 1);
        let d = data(n * k, 2);
        let mut o1 = vec![0.0f32; (m - 1) * ldc + n];
        let flop = 2.0 * (m * n * k) as f64;
        // Calls per timing so each sample is ~20 ms.
        let calls = ((2e-2 * 1.3e11) / flop).ceil() as usize;
        let mut t_mm = Vec::new();
        let mut t_mt = Vec::new();
        let (qt, dt) = (transpose(&q, m, k), transpose(&d, n, k));
        let mut o3 = o1.clone();
        for _ in 0..reps {
            let t = Instant::now();
            for _ in 0..calls {
                unsafe { mm(m, n, k, &q, &d, &mut o1, ldc) };
            }
            t_mm.push(t.elapsed().as_secs_f64() / calls as f64);
            let t = Instant::now();
            for _ in 0..calls {
                unsafe { mm_t(m, n, k, &qt, &dt, &mut o3, ldc) };
            }
            t_mt.push(t.elapsed().as_secs_f64() / calls as f64);
        }
        assert!(o1 == o3, "pre-transposed inputs changed the bits");
        let (a, c) = (median(t_mm), median(t_mt));
        println!("{label:34} matrixmultiply {:6.1}  pre-transposed {:6.1} GFLOP/s", flop / a / 1e9, flop / c / 1e9);
    }
}
