//! Recall@K micro-benchmark: `recall::recall_at_k` on I images x 5I captions (D = 512),
//! caption = image + noise, unit rows; prints each run's seconds.
//!
//! `cargo run -p ferroclip-core --release --example recall_bench -- [images] [threads] [reps]`

use ferroclip_core::recall::recall_at_k;
use ferroclip_core::similarity::Embeddings;
use std::time::Instant;

fn normal(state: &mut u64) -> f32 {
    // Sum of 4 uniforms: close enough to a normal for timing.
    (0..4)
        .map(|_| {
            *state ^= *state << 13;
            *state ^= *state >> 7;
            *state ^= *state << 17;
            (*state >> 40) as f32 / (1u64 << 24) as f32 - 0.5
        })
        .sum::<f32>()
        * 1.7
}

fn unit_rows(v: &mut [f32], dim: usize) {
    for row in v.chunks_exact_mut(dim) {
        let n = row.iter().map(|x| x * x).sum::<f32>().sqrt();
        row.iter_mut().for_each(|x| *x /= n);
    }
}

fn main() {
    let arg = |i: usize, default: usize| std::env::args().nth(i).map_or(default, |s| s.parse().unwrap());
    let (ni, threads, reps, dim) = (arg(1, 5000), arg(2, 1), arg(3, 5), 512);
    let mut state = 0x9E37_79B9_7F4A_7C15u64;
    let mut img: Vec<f32> = (0..ni * dim).map(|_| normal(&mut state)).collect();
    let mut txt: Vec<f32> = (0..5 * ni * dim).map(|i| img[(i / dim / 5) * dim + i % dim] + 8.0 * normal(&mut state)).collect();
    unit_rows(&mut img, dim);
    unit_rows(&mut txt, dim);
    let t2i: Vec<i64> = (0..5 * ni as i64).map(|t| t / 5).collect();
    let (a, b) = (Embeddings::f32(&img, ni, dim, "image_emb").unwrap(), Embeddings::f32(&txt, 5 * ni, dim, "text_emb").unwrap());
    for _ in 0..reps {
        let t = Instant::now();
        let r = recall_at_k(&a, &b, &t2i, &[1, 5, 10], Some(threads)).unwrap();
        println!("{:.4} {}", t.elapsed().as_secs_f64(), r.i2t_ranks.iter().sum::<i64>());
    }
}
