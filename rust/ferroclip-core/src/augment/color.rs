//! Photometric augmentations on the resized uint8 RGB window, as torchvision computes them
//! on PIL images (so, as Pillow's C code does, down to its float/double mix).
//!
//! * horizontal flip: `transpose(FLIP_LEFT_RIGHT)`.
//! * grayscale: `convert("L")` (ITU-R 601-2 luma in 16-bit fixed point, `L24` in
//!   `Convert.c`) replicated to three channels, as `RandomGrayscale` does.
//! * brightness, contrast, saturation: `ImageEnhance.{Brightness, Contrast, Color}`, i.e.
//!   `Image.blend(degenerate, image, factor)` (`Blend.c`) against black, the rounded mean
//!   luma, and the pixel's own luma.
//! * hue: `F.adjust_hue`: `convert("HSV")`, the hue byte shifted by
//!   `uint8(int32(factor * 255))` modulo 256, `convert("RGB")` (`rgb2hsv_row`, `hsv2rgb`).

/// Mirror every row of a packed RGB `width`-pixel image.
pub fn flip_horizontal(pixels: &mut [u8], width: usize) {
    for row in pixels.chunks_exact_mut(width * 3) {
        let (mut a, mut b) = (0, width.saturating_sub(1));
        while a < b {
            for c in 0..3 {
                row.swap(a * 3 + c, b * 3 + c);
            }
            a += 1;
            b -= 1;
        }
    }
}

/// Pillow's RGB -> L.
#[inline]
pub fn luma(r: u8, g: u8, b: u8) -> u8 {
    ((u32::from(r) * 19595 + u32::from(g) * 38470 + u32::from(b) * 7471 + 0x8000) >> 16) as u8
}

pub fn grayscale(pixels: &mut [u8]) {
    for px in pixels.chunks_exact_mut(3) {
        let l = luma(px[0], px[1], px[2]);
        px.fill(l);
    }
}

/// `ImagingBlend` for one byte: `in1 + alpha * (in2 - in1)` in C `float`, truncated;
/// clipped only outside `0 <= alpha <= 1` (inside, the value cannot leave 0..=255).
#[inline]
fn blend(degenerate: u8, v: u8, alpha: f32) -> u8 {
    let t = f32::from(degenerate) + alpha * (i32::from(v) - i32::from(degenerate)) as f32;
    if (0.0..=1.0).contains(&alpha) {
        t as u8
    } else if t <= 0.0 {
        0
    } else if t >= 255.0 {
        255
    } else {
        t as u8
    }
}

/// `ImageEnhance.Brightness(img).enhance(factor)`.
pub fn brightness(pixels: &mut [u8], factor: f64) {
    let alpha = factor as f32;
    for v in pixels.iter_mut() {
        *v = blend(0, *v, alpha);
    }
}

/// `ImageEnhance.Contrast(img).enhance(factor)`: against the mean luma, rounded as
/// `int(ImageStat.Stat(img.convert("L")).mean[0] + 0.5)`.
pub fn contrast(pixels: &mut [u8], factor: f64) {
    let n = pixels.len() / 3;
    if n == 0 {
        return;
    }
    let sum: u64 = pixels.chunks_exact(3).map(|p| u64::from(luma(p[0], p[1], p[2]))).sum();
    let mean = (sum as f64 / n as f64 + 0.5) as u8;
    let alpha = factor as f32;
    for v in pixels.iter_mut() {
        *v = blend(mean, *v, alpha);
    }
}

/// `ImageEnhance.Color(img).enhance(factor)`: against the pixel's own luma.
pub fn saturation(pixels: &mut [u8], factor: f64) {
    let alpha = factor as f32;
    for px in pixels.chunks_exact_mut(3) {
        let l = luma(px[0], px[1], px[2]);
        for v in px.iter_mut() {
            *v = blend(l, *v, alpha);
        }
    }
}

/// Pillow's `rgb2hsv_row` for one pixel. C evaluates `float` expressions in `float` and
/// anything touching a `double` literal in `double`; each step below says which.
fn rgb_to_hsv(r: u8, g: u8, b: u8) -> [u8; 3] {
    let maxc = r.max(g).max(b);
    let minc = r.min(g).min(b);
    if minc == maxc {
        return [0, 0, maxc];
    }
    let cr = f32::from(maxc - minc);
    let s = cr / f32::from(maxc);
    let rc = f32::from(maxc - r) / cr;
    let gc = f32::from(maxc - g) / cr;
    let bc = f32::from(maxc - b) / cr;
    let h: f32 = if r == maxc {
        bc - gc
    } else if g == maxc {
        (2.0 + f64::from(rc) - f64::from(bc)) as f32
    } else {
        (4.0 + f64::from(gc) - f64::from(rc)) as f32
    };
    let h = ((f64::from(h) / 6.0 + 1.0) % 1.0) as f32;
    let clip8 = |x: f64| (x as i32).clamp(0, 255) as u8;
    [clip8(f64::from(h) * 255.0), clip8(f64::from(s) * 255.0), maxc]
}

/// Pillow's `hsv2rgb` for one pixel.
fn hsv_to_rgb(h: u8, s: u8, v: u8) -> [u8; 3] {
    if s == 0 {
        return [v, v, v];
    }
    let h6 = f64::from(h) * 6.0 / 255.0;
    let i = h6.floor() as i32;
    let f = (h6 - f64::from(i)) as f32;
    let fs = (f64::from(s) / 255.0) as f32;
    let vf = f64::from(v);
    // C `round`: half away from zero, as `f64::round`.
    let clip8 = |x: f64| (x.round() as i32).clamp(0, 255) as u8;
    let p = clip8(vf * (1.0 - f64::from(fs)));
    let q = clip8(vf * (1.0 - f64::from(fs * f)));
    let t = clip8(vf * (1.0 - f64::from(fs) * (1.0 - f64::from(f))));
    match i % 6 {
        0 => [v, t, p],
        1 => [q, v, p],
        2 => [p, v, t],
        3 => [p, q, v],
        4 => [t, p, v],
        _ => [v, p, q],
    }
}

/// torchvision `F.adjust_hue` on a PIL RGB image (`factor` in `[-0.5, 0.5]`).
pub fn hue(pixels: &mut [u8], factor: f64) {
    let shift = (factor * 255.0) as i32 as u8;
    for px in pixels.chunks_exact_mut(3) {
        let [h, s, v] = rgb_to_hsv(px[0], px[1], px[2]);
        px.copy_from_slice(&hsv_to_rgb(h.wrapping_add(shift), s, v));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flip_reverses_pixels_not_channels() {
        let mut px = vec![1, 2, 3, 4, 5, 6, 7, 8, 9];
        flip_horizontal(&mut px, 3);
        assert_eq!(px, vec![7, 8, 9, 4, 5, 6, 1, 2, 3]);
        let mut one = vec![1, 2, 3];
        flip_horizontal(&mut one, 1);
        assert_eq!(one, vec![1, 2, 3]);
    }

    #[test]
    fn luma_matches_pillow_values() {
        assert_eq!(luma(255, 255, 255), 255);
        assert_eq!(luma(0, 0, 0), 0);
        assert_eq!(luma(255, 0, 0), 76);
        assert_eq!(luma(0, 255, 0), 150);
        assert_eq!(luma(0, 0, 255), 29);
    }

    #[test]
    fn blend_identity_and_extremes() {
        for v in 0..=255u8 {
            assert_eq!(blend(17, v, 1.0), v);
            assert_eq!(blend(17, v, 0.0), 17);
            assert!(blend(0, v, 2.0) >= v);
        }
        assert_eq!(blend(0, 200, 2.0), 255);
        assert_eq!(blend(100, 0, 1.5), 0);
    }

    #[test]
    fn hsv_round_trip_is_close_and_gray_is_exact() {
        for &(r, g, b) in &[(10u8, 200u8, 30u8), (255, 0, 0), (0, 0, 255), (128, 128, 128), (3, 250, 250)] {
            let [h, s, v] = rgb_to_hsv(r, g, b);
            let back = hsv_to_rgb(h, s, v);
            for (x, y) in back.iter().zip([r, g, b]) {
                assert!((i32::from(*x) - i32::from(y)).abs() <= 4, "{r},{g},{b} -> {back:?}");
            }
        }
        assert_eq!(hsv_to_rgb(40, 0, 99), [99, 99, 99]);
    }
}
