//! Times only the exact resize + normalise stage (no decode) for the CLIP 224 recipe.
//!
//! Decode is the floor and is timed elsewhere (`benches/bench_preprocess.py`); this loop
//! isolates the part the resize kernels own, so a change can be judged in seconds.
//! Run: `cargo run --release -p ferroclip-core --example resize_bench [reps]`.

use std::time::Instant;

use ferroclip_core::decode::RgbImage;
use ferroclip_core::geometry::{self, CropRounding, CropSpec, ResizeSpec};
use ferroclip_core::normalize::{write_chw, Lut, NormalizeSpec, Rescale};
use ferroclip_core::resize::{resize_window, Filter, PassOrder};

/// Photo-ish content: smooth ramps plus a little xorshift noise.
fn image(w: usize, h: usize) -> RgbImage {
    let mut s = 0x9e37_79b9_u32;
    let mut data = Vec::with_capacity(w * h * 3);
    for y in 0..h {
        for x in 0..w {
            for c in 0..3 {
                s ^= s << 13;
                s ^= s >> 17;
                s ^= s << 5;
                let v = (x * 255 / w + y * 255 / h + c * 40) / 2 + (s % 16) as usize;
                data.push(v.min(255) as u8);
            }
        }
    }
    RgbImage { width: w, height: h, data }
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn main() {
    let reps: usize = std::env::args().nth(1).and_then(|a| a.parse().ok()).unwrap_or(200);
    let spec = NormalizeSpec {
        rescale: Rescale::MulF64(1.0 / 255.0),
        mean_std: Some(([0.48145466, 0.4578275, 0.40821073], [0.26862954, 0.26130258, 0.27577711])),
    };
    let lut = Lut::new(&spec);
    let crop = CropSpec { height: 224, width: 224, rounding: CropRounding::Floor };
    let mut tc = Vec::new();
    for _ in 0..reps {
        let t0 = Instant::now();
        let a = ferroclip_core::resize::Coeffs::new(640, 298, Filter::Bicubic);
        let b = ferroclip_core::resize::Coeffs::new(480, 224, Filter::Bicubic);
        tc.push(t0.elapsed().as_secs_f64() * 1e6);
        std::hint::black_box((a, b));
    }
    println!("coefficients for 640x480 -> 298x224: {:.1} us", median(tc));
    for (w, h) in [(640, 480), (1920, 1080), (4000, 3000)] {
        let img = image(w, h);
        let layout = geometry::layout(w, h, &ResizeSpec::ShortestEdge(224), Some(&crop));
        let mut window = Vec::new();
        let mut out = vec![0f32; 3 * 224 * 224];
        let n = if w > 2000 { reps / 10 + 3 } else { reps };
        let (mut tr, mut tn, mut tt) = (Vec::new(), Vec::new(), Vec::new());
        for _ in 0..n {
            let t0 = Instant::now();
            resize_window(&img, layout.resized_w, layout.resized_h, layout.x, layout.y, Filter::Bicubic, PassOrder::Pillow13, &mut window)
                .unwrap();
            let t1 = Instant::now();
            write_chw(&window, &layout, [0; 3], &lut, &mut out);
            let t2 = Instant::now();
            tr.push((t1 - t0).as_secs_f64() * 1e6);
            tn.push((t2 - t1).as_secs_f64() * 1e6);
            tt.push((t2 - t0).as_secs_f64() * 1e6);
        }
        let check = window.iter().fold(0u64, |a, &b| a.wrapping_mul(31).wrapping_add(u64::from(b)))
            ^ out.iter().fold(0u64, |a, &f| a.wrapping_mul(31).wrapping_add(u64::from(f.to_bits())));
        println!(
            "{w}x{h}: resize {:8.1} us  normalise {:6.1} us  total {:8.1} us  (check {check:x})",
            median(tr),
            median(tn),
            median(tt)
        );
    }
}
