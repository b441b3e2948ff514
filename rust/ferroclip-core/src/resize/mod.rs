//! Pillow's `Image.resize` (`libImaging/Resample.c`) for 8-bit RGB, integer for integer.
//!
//! Pillow resamples separably with an antialiasing kernel whose support grows with the
//! downscale factor, in 22-bit fixed point, with a uint8 (rounded, clamped) intermediate
//! between the two passes. Because of that rounding the order of the passes shows in the
//! bytes, and Pillow releases order them differently ([`PassOrder`]). Every output pixel
//! depends only on its own row and column coefficients, so computing just the output
//! window that survives the centre crop gives the very same bytes as resizing the whole
//! image and cropping afterwards, at a fraction of the cost, in either order.

use crate::decode::{Rect, RgbImage};
use crate::error::{Error, Result};
use crate::geometry::Span;

#[cfg(target_arch = "x86_64")]
mod avx2;
#[cfg(target_arch = "x86_64")]
mod avx512;

/// Resampling filters, with Pillow's kernels.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Filter {
    /// `Image.BICUBIC`: Keys cubic, a = -0.5, support 2.
    Bicubic,
    /// `Image.BILINEAR`: triangle, support 1.
    Bilinear,
    /// `Image.LANCZOS`: windowed sinc, support 3.
    Lanczos,
}

const PRECISION_BITS: u32 = 32 - 8 - 2;

/// Which Pillow release's choice of pass order a resize reproduces.
///
/// The intermediate between the passes is rounded to uint8, so running the vertical pass
/// first gives other bytes (up to several levels) than running the horizontal one first.
/// Pillow has changed that choice twice; each variant names the releases it matches.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum PassOrder {
    /// Pillow 10.0 to 12.1: always the horizontal pass first.
    HorizontalFirst,
    /// Pillow 12.2 to 12.x: `Image.resize` runs the vertical pass first for images more
    /// than 100 times taller than wide that shrink vertically
    /// (`if self.size[1] > self.size[0] * 100 and size[1] < self.size[1]`).
    Pillow12,
    /// Pillow 13 (python-pillow/Pillow#9549), in `ImagingResampleInner`: vertical first
    /// when the height loses more than twice as many pixels as the width,
    /// `(in_h - out_h) > 0 && (in_h - out_h) > (in_w - out_w) * 2` in C `int`s.
    #[default]
    Pillow13,
}

impl PassOrder {
    /// Whether a `in_w` x `in_h` to `out_w` x `out_h` resize runs its vertical pass first
    /// (only meaningful when both passes run).
    #[must_use]
    pub fn vertical_first(self, in_w: usize, in_h: usize, out_w: usize, out_h: usize) -> bool {
        match self {
            PassOrder::HorizontalFirst => false,
            PassOrder::Pillow12 => in_h > in_w.saturating_mul(100) && out_h < in_h,
            PassOrder::Pillow13 => {
                // Signed, as Pillow's ints: a width that grows makes `dw` negative.
                let dh = in_h as i64 - out_h as i64;
                let dw = in_w as i64 - out_w as i64;
                dh > 0 && dh > dw * 2
            }
        }
    }
}

impl Filter {
    fn support(self) -> f64 {
        match self {
            Filter::Bicubic => 2.0,
            Filter::Bilinear => 1.0,
            Filter::Lanczos => 3.0,
        }
    }

    fn eval(self, x: f64) -> f64 {
        match self {
            Filter::Bicubic => {
                const A: f64 = -0.5;
                let x = x.abs();
                if x < 1.0 {
                    ((A + 2.0) * x - (A + 3.0)) * x * x + 1.0
                } else if x < 2.0 {
                    (((x - 5.0) * x + 8.0) * x - 4.0) * A
                } else {
                    0.0
                }
            }
            Filter::Bilinear => {
                let x = x.abs();
                if x < 1.0 { 1.0 - x } else { 0.0 }
            }
            Filter::Lanczos => {
                if (-3.0..3.0).contains(&x) { sinc(x) * sinc(x / 3.0) } else { 0.0 }
            }
        }
    }
}

fn sinc(x: f64) -> f64 {
    if x == 0.0 {
        return 1.0;
    }
    let x = x * std::f64::consts::PI;
    x.sin() / x
}

/// Fixed-point taps for every output position along one axis.
#[derive(Debug, Clone)]
pub struct Coeffs {
    /// Taps per output position (stride of `k`).
    pub ksize: usize,
    /// `(first input index, number of taps)` per output position.
    pub bounds: Vec<(usize, usize)>,
    pub k: Vec<i32>,
}

impl Coeffs {
    /// Pillow's `precompute_coeffs` + `normalize_coeffs_8bpc` for the box `[0, in_size)`.
    #[must_use]
    pub fn new(in_size: usize, out_size: usize, filter: Filter) -> Self {
        Self::for_box(in_size, 0.0, in_size as f64, out_size, filter)
    }

    /// The same for the box `[in0, in1)` of an axis of `in_size` pixels, as
    /// `Image.resize(box=...)`: the kernel is centred over the box, but its taps still read
    /// (and are clamped to) the whole axis, so pixels just outside the box contribute.
    /// Pillow receives the box as C `float`s and subtracts them in `float`; so does this.
    #[allow(clippy::needless_range_loop, reason = "Pillow's coefficient loops, ported as written: indices shared by w, k and the taps")]
    #[must_use]
    pub fn for_box(in_size: usize, in0: f64, in1: f64, out_size: usize, filter: Filter) -> Self {
        let (in0, in1) = (in0 as f32, in1 as f32);
        let scale = f64::from(in1 - in0) / out_size as f64;
        let in0 = f64::from(in0);
        let filterscale = scale.max(1.0);
        let support = filter.support() * filterscale;
        let ksize = support.ceil() as usize * 2 + 1;
        let mut bounds = Vec::with_capacity(out_size);
        let mut k = vec![0i32; out_size * ksize];
        let mut w = vec![0f64; ksize];
        for xx in 0..out_size {
            let center = in0 + (xx as f64 + 0.5) * scale;
            let ss = 1.0 / filterscale;
            let xmin = ((center - support + 0.5) as i64).max(0) as usize;
            let xmax = ((center + support + 0.5) as i64).min(in_size as i64) as usize;
            let n = xmax.saturating_sub(xmin).min(ksize);
            let mut ww = 0.0;
            for x in 0..n {
                let v = filter.eval(((x + xmin) as f64 - center + 0.5) * ss);
                w[x] = v;
                ww += v;
            }
            let row = &mut k[xx * ksize..xx * ksize + ksize];
            for x in 0..n {
                let v = if ww == 0.0 { w[x] } else { w[x] / ww };
                let fixed = v * f64::from(1u32 << PRECISION_BITS);
                row[x] = if v < 0.0 { (-0.5 + fixed) as i32 } else { (0.5 + fixed) as i32 };
            }
            bounds.push((xmin, n));
        }
        Self { ksize, bounds, k }
    }

    #[inline]
    fn taps(&self, i: usize) -> (usize, &[i32]) {
        let (start, n) = self.bounds[i];
        (start, &self.k[i * self.ksize..i * self.ksize + n])
    }
}

#[inline]
fn clip8(acc: i32) -> u8 {
    (acc >> PRECISION_BITS).clamp(0, 255) as u8
}

const HALF: i32 = 1 << (PRECISION_BITS - 1);

/// Horizontal pass over source rows `rows`, for output columns `cols` of `coeffs`.
///
/// Rows are processed eight at a time: the needed columns of the eight rows are first
/// interleaved (`block[(x * 3 + c) * 8 + r]`), so each tap becomes one 8-lane
/// multiply-add across rows, which the compiler vectorises; leftover rows go one by one.
#[inline(always)]
fn horizontal(
    src: &RgbImage,
    x0: usize,
    rows: std::ops::Range<usize>,
    coeffs: &Coeffs,
    cols: Span,
    out: &mut Vec<u8>,
) {
    let ow = cols.len;
    out.clear();
    out.resize(rows.len() * ow * 3, 0);
    if ow == 0 {
        return;
    }
    // Input columns touched by the window.
    let x_lo = coeffs.bounds[cols.src].0;
    let x_hi = (cols.src..cols.src + ow).map(|i| coeffs.bounds[i].0 + coeffs.bounds[i].1).max().unwrap_or(x_lo);
    let span = x_hi - x_lo;
    let mut block = vec![0u8; span * 3 * 8];
    let n_rows = rows.len();
    let full_blocks = n_rows / 8;
    for b in 0..full_blocks {
        let y0 = rows.start + b * 8;
        for r in 0..8 {
            let line = &src.row(y0 + r)[(x_lo - x0) * 3..(x_hi - x0) * 3];
            for (i, &v) in line.iter().enumerate() {
                block[i * 8 + r] = v;
            }
        }
        let out_block = &mut out[b * 8 * ow * 3..(b + 1) * 8 * ow * 3];
        for ox in 0..ow {
            let (start, k) = coeffs.taps(cols.src + ox);
            let base0 = (start - x_lo) * 3 * 8;
            for c in 0..3 {
                // Wrapping i32, as Pillow's C `int` sum in practice and exactly as the SIMD
                // kernels: real tap sets never overflow, and debug builds must not panic on
                // the synthetic extreme sets the kernel tests use.
                let mut acc = [HALF; 8];
                for (t, &kv) in k.iter().enumerate() {
                    let px: &[u8; 8] = block[base0 + (t * 3 + c) * 8..base0 + (t * 3 + c) * 8 + 8].try_into().unwrap();
                    for r in 0..8 {
                        acc[r] = acc[r].wrapping_add(i32::from(px[r]).wrapping_mul(kv));
                    }
                }
                for r in 0..8 {
                    out_block[(r * ow + ox) * 3 + c] = clip8(acc[r]);
                }
            }
        }
    }
    for (oy, y) in rows.clone().enumerate().skip(full_blocks * 8) {
        let line = src.row(y);
        let dst = &mut out[oy * ow * 3..(oy + 1) * ow * 3];
        for (ox, px) in dst.chunks_exact_mut(3).enumerate() {
            let (start, k) = coeffs.taps(cols.src + ox);
            let taps = &line[(start - x0) * 3..(start - x0 + k.len()) * 3];
            let (mut r, mut g, mut b) = (HALF, HALF, HALF);
            for (p, &c) in taps.chunks_exact(3).zip(k) {
                r = r.wrapping_add(i32::from(p[0]).wrapping_mul(c));
                g = g.wrapping_add(i32::from(p[1]).wrapping_mul(c));
                b = b.wrapping_add(i32::from(p[2]).wrapping_mul(c));
            }
            px[0] = clip8(r);
            px[1] = clip8(g);
            px[2] = clip8(b);
        }
    }
}

/// Vertical pass: `src` holds `src_w * 3`-byte rows starting at source row `row0`.
#[inline(always)]
fn vertical(src: &[u8], src_w: usize, row0: usize, coeffs: &Coeffs, rows: Span, out: &mut [u8]) {
    let stride = src_w * 3;
    let mut acc = vec![0i32; stride];
    for oy in 0..rows.len {
        let (start, k) = coeffs.taps(rows.src + oy);
        acc.fill(HALF);
        for (t, &c) in k.iter().enumerate() {
            let line = &src[(start + t - row0) * stride..(start + t - row0 + 1) * stride];
            for (a, &p) in acc.iter_mut().zip(line) {
                *a = a.wrapping_add(i32::from(p).wrapping_mul(c));
            }
        }
        for (o, &a) in out[oy * stride..(oy + 1) * stride].iter_mut().zip(&acc) {
            *o = clip8(a);
        }
    }
}

thread_local! {
    /// The intermediate image between the two passes, kept per thread: a fresh buffer of a
    /// few hundred KB costs an mmap, page faults and a memset on every image.
    static INTER: std::cell::Cell<Vec<u8>> = const { std::cell::Cell::new(Vec::new()) };
}

/// Coefficient sets kept per thread (most recent first): in a batch most images share
/// their size, and computing the taps costs about a tenth of the resize itself.
const COEFF_CACHE_LEN: usize = 8;
/// Larger sets (huge upscales) are rebuilt each time rather than pinned in memory.
const COEFF_CACHE_MAX_TAPS: usize = 1 << 18;

/// `(in_size, box start, box end, out_size, filter)`.
type CoeffKey = (usize, usize, usize, usize, Filter);

thread_local! {
    static COEFFS: std::cell::RefCell<Vec<(CoeffKey, std::rc::Rc<Coeffs>)>> =
        const { std::cell::RefCell::new(Vec::new()) };
}

/// `Coeffs::for_box` over an integer box `[b0, b1)` (`(0, in_size)`: `Coeffs::new`),
/// memoised per thread.
fn cached_box_coeffs(in_size: usize, (b0, b1): (usize, usize), out_size: usize, filter: Filter) -> std::rc::Rc<Coeffs> {
    let key = (in_size, b0, b1, out_size, filter);
    COEFFS.with(|cache| {
        let mut cache = cache.borrow_mut();
        if let Some(pos) = cache.iter().position(|(k, _)| *k == key) {
            let hit = cache.remove(pos);
            let c = std::rc::Rc::clone(&hit.1);
            cache.insert(0, hit);
            return c;
        }
        let c = std::rc::Rc::new(Coeffs::for_box(in_size, b0 as f64, b1 as f64, out_size, filter));
        if c.k.len() <= COEFF_CACHE_MAX_TAPS {
            cache.insert(0, (key, std::rc::Rc::clone(&c)));
            cache.truncate(COEFF_CACHE_LEN);
        }
        c
    })
}

/// Which pass kernels run; `Avx2` is only built after the CPU was checked.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kernels {
    Portable,
    #[cfg(target_arch = "x86_64")]
    Avx2,
    /// AVX-512 kernels (falling back to AVX2 per call or row where the taps need it).
    #[cfg(target_arch = "x86_64")]
    Avx512,
}

impl Kernels {
    fn detect() -> Self {
        #[cfg(target_arch = "x86_64")]
        {
            use std::arch::is_x86_feature_detected as has;
            if has!("avx2") && has!("avx512f") && has!("avx512bw") {
                return Kernels::Avx512;
            }
            if has!("avx2") {
                return Kernels::Avx2;
            }
        }
        Kernels::Portable
    }

    /// `src` holds columns `x0..` of the frame; `rows` index `src`.
    fn horizontal(
        self,
        src: &RgbImage,
        x0: usize,
        rows: std::ops::Range<usize>,
        coeffs: &Coeffs,
        cols: Span,
        out: &mut Vec<u8>,
    ) {
        match self {
            Kernels::Portable => horizontal(src, x0, rows, coeffs, cols, out),
            // SAFETY: `Avx2` exists only when the CPU has AVX2 (`detect`).
            #[cfg(target_arch = "x86_64")]
            Kernels::Avx2 => unsafe { avx2::horizontal(src, x0, rows, coeffs, cols, out) },
            // SAFETY: `Avx512` exists only when the CPU has AVX-512F/BW and AVX2 (`detect`).
            #[cfg(target_arch = "x86_64")]
            Kernels::Avx512 => unsafe { avx512::horizontal(src, x0, rows, coeffs, cols, out) },
        }
    }

    fn vertical(self, src: &[u8], src_w: usize, row0: usize, coeffs: &Coeffs, rows: Span, out: &mut [u8]) {
        match self {
            Kernels::Portable => vertical(src, src_w, row0, coeffs, rows, out),
            // SAFETY: as above.
            #[cfg(target_arch = "x86_64")]
            Kernels::Avx2 => unsafe { avx2::vertical(src, src_w, row0, coeffs, rows, out) },
            // SAFETY: `Avx512` exists only when the CPU has AVX-512F/BW and AVX2 (`detect`).
            #[cfg(target_arch = "x86_64")]
            Kernels::Avx512 => unsafe { avx512::vertical(src, src_w, row0, coeffs, rows, out) },
        }
    }
}

/// A decoded image that may hold only part of its frame: `image` is the rectangle
/// `placed` of a `frame_w` x `frame_h` image (see `decode::Hints::region`).
#[derive(Debug, Clone, Copy)]
pub struct Source<'a> {
    pub image: &'a RgbImage,
    pub placed: Rect,
    pub frame_w: usize,
    pub frame_h: usize,
}

impl<'a> Source<'a> {
    /// The whole of `image`.
    #[must_use]
    pub fn whole(image: &'a RgbImage) -> Self {
        Self { image, placed: Rect::whole(image.width, image.height), frame_w: image.width, frame_h: image.height }
    }
}

/// The rectangle of a `frame_w` x `frame_h` source that producing the window `xs` x `ys`
/// of its `out_w` x `out_h` resize reads: the union of the taps of the window's columns
/// and rows. `None` when the window is empty.
#[must_use]
pub fn source_window(frame_w: usize, frame_h: usize, out_w: usize, out_h: usize, xs: Span, ys: Span, filter: Filter) -> Option<Rect> {
    box_source_window(frame_w, frame_h, Rect::whole(frame_w, frame_h), out_w, out_h, xs, ys, filter)
}

/// `source_window` for the resize of the box `bx` of the frame (`Image.resize(box=...)`):
/// the taps reach a little past the box where the frame has pixels there.
#[must_use]
#[allow(clippy::too_many_arguments)]
pub fn box_source_window(
    frame_w: usize,
    frame_h: usize,
    bx: Rect,
    out_w: usize,
    out_h: usize,
    xs: Span,
    ys: Span,
    filter: Filter,
) -> Option<Rect> {
    if xs.len == 0 || ys.len == 0 || xs.src + xs.len > out_w || ys.src + ys.len > out_h {
        return None;
    }
    let span = |in_size: usize, b: (usize, usize), out_size: usize, w: Span| -> (usize, usize) {
        if !needs_pass(in_size, b, out_size) {
            return (w.src, w.src + w.len);
        }
        let c = cached_box_coeffs(in_size, b, out_size, filter);
        let taps = (w.src..w.src + w.len).map(|i| c.bounds[i]).filter(|&(_, n)| n > 0);
        let lo = taps.clone().map(|(s, _)| s).min().unwrap_or(0);
        let hi = taps.map(|(s, n)| s + n).max().unwrap_or(in_size);
        (lo, hi.max(lo))
    };
    let (x0, x1) = span(frame_w, (bx.x0, bx.x1), out_w, xs);
    let (y0, y1) = span(frame_h, (bx.y0, bx.y1), out_h, ys);
    Some(Rect { x0, y0, x1, y1 })
}

/// Whether an axis resamples at all: Pillow's `need_horizontal` / `need_vertical`
/// (`xsize != imIn->xsize || box[0] || box[2] != xsize`), i.e. unless the box is the whole
/// axis and the size is kept.
fn needs_pass(in_size: usize, (b0, b1): (usize, usize), out_size: usize) -> bool {
    out_size != in_size || b0 != 0 || b1 != out_size
}

/// Resize `src` to `out_w` x `out_h` as Pillow would, but produce only the window
/// `xs` x `ys` of the result, packed RGB, into `out` (resized to fit). `order` says which
/// Pillow release's pass order to follow: the bytes differ between them.
///
/// Uses the AVX2 kernels when the CPU has them; their integer arithmetic is the portable
/// path's (checked against it in tests).
#[allow(clippy::too_many_arguments)]
pub fn resize_window(
    src: &RgbImage,
    out_w: usize,
    out_h: usize,
    xs: Span,
    ys: Span,
    filter: Filter,
    order: PassOrder,
    out: &mut Vec<u8>,
) -> Result<()> {
    let whole = Rect::whole(src.width, src.height);
    resize_impl(Source::whole(src), whole, out_w, out_h, xs, ys, filter, order, out, Kernels::detect())
}

/// `resize_window` over a source that may hold only part of its frame; the window's
/// `source_window` must lie inside `src.placed`.
#[allow(clippy::too_many_arguments)]
pub fn resize_source(
    src: Source<'_>,
    out_w: usize,
    out_h: usize,
    xs: Span,
    ys: Span,
    filter: Filter,
    order: PassOrder,
    out: &mut Vec<u8>,
) -> Result<()> {
    let whole = Rect::whole(src.frame_w, src.frame_h);
    resize_impl(src, whole, out_w, out_h, xs, ys, filter, order, out, Kernels::detect())
}

/// `Image.resize((out_w, out_h), filter, box=bx)` of the frame `src` belongs to, whole
/// (packed RGB into `out`); `src.placed` must hold what `box_source_window` names.
///
/// The pass order follows `order` with the rule reading the frame's sizes, not the
/// box's: Pillow 12's `Image.resize` tests `self.size`, and Pillow 13's
/// `ImagingResampleInner` compares `imIn`'s C `int` sizes with the output's.
#[allow(clippy::too_many_arguments)]
pub fn resize_box(
    src: Source<'_>,
    bx: Rect,
    out_w: usize,
    out_h: usize,
    filter: Filter,
    order: PassOrder,
    out: &mut Vec<u8>,
) -> Result<()> {
    let (xs, ys) = (Span { src: 0, dst: 0, len: out_w }, Span { src: 0, dst: 0, len: out_h });
    resize_impl(src, bx, out_w, out_h, xs, ys, filter, order, out, Kernels::detect())
}

#[allow(clippy::too_many_arguments)]
fn resize_impl(
    src: Source<'_>,
    bx: Rect,
    out_w: usize,
    out_h: usize,
    xs: Span,
    ys: Span,
    filter: Filter,
    order: PassOrder,
    out: &mut Vec<u8>,
    kernels: Kernels,
) -> Result<()> {
    if xs.src + xs.len > out_w || ys.src + ys.len > out_h {
        return Err(Error::InvalidArgument(format!(
            "window {xs:?} x {ys:?} is outside the {out_w}x{out_h} output"
        )));
    }
    let Source { image, placed, frame_w, frame_h } = src;
    if bx.is_empty() || bx.x1 > frame_w || bx.y1 > frame_h {
        return Err(Error::InvalidArgument(format!("box {bx:?} is empty or outside the {frame_w}x{frame_h} image")));
    }
    if image.width != placed.x1 - placed.x0 || image.height != placed.y1 - placed.y0 {
        return Err(Error::InvalidArgument(format!("image {}x{} does not fill {placed:?}", image.width, image.height)));
    }
    // Every byte of the window is written below; resizing without clearing skips a memset
    // when the buffer is reused for an image of the same size.
    out.resize(xs.len * ys.len * 3, 0);
    if xs.len == 0 || ys.len == 0 {
        return Ok(());
    }
    let need = box_source_window(frame_w, frame_h, bx, out_w, out_h, xs, ys, filter).unwrap_or(placed);
    if need.x0 < placed.x0 || need.x1 > placed.x1 || need.y0 < placed.y0 || need.y1 > placed.y1 {
        return Err(Error::InvalidArgument(format!("the window reads {need:?}, the source holds only {placed:?}")));
    }
    let (x0, y0) = (placed.x0, placed.y0);
    let (bx_x, bx_y) = ((bx.x0, bx.x1), (bx.y0, bx.y1));
    let need_h = needs_pass(frame_w, bx_x, out_w);
    let need_v = needs_pass(frame_h, bx_y, out_h);
    // Vertical pass first where the chosen Pillow does so (see `PassOrder`). The window
    // is still all that is computed: the vertical pass makes only the window's rows (over
    // the columns the source holds), the horizontal pass only the window's columns. The
    // decision uses the whole frame's sizes, as Pillow sees the whole image.
    if need_h && need_v && order.vertical_first(frame_w, frame_h, out_w, out_h) {
        let vcoeffs = cached_box_coeffs(frame_h, bx_y, out_h, filter);
        let mut rows = INTER.take();
        rows.resize(image.width * ys.len * 3, 0);
        kernels.vertical(&image.data, image.width, y0, &vcoeffs, ys, &mut rows);
        let tall = RgbImage { width: image.width, height: ys.len, data: rows };
        let hcoeffs = cached_box_coeffs(frame_w, bx_x, out_w, filter);
        kernels.horizontal(&tall, x0, 0..ys.len, &hcoeffs, xs, out);
        INTER.set(tall.data);
        return Ok(());
    }
    let vcoeffs = need_v.then(|| cached_box_coeffs(frame_h, bx_y, out_h, filter));
    // Source rows (of the frame) the window needs.
    let (row0, row1) = match &vcoeffs {
        Some(c) => {
            let first = c.bounds[ys.src].0;
            let (ls, ln) = c.bounds[ys.src + ys.len - 1];
            (first, (ls + ln).max(first))
        }
        None => (ys.src, ys.src + ys.len),
    };
    let mut tmp = INTER.take();
    let (inter, inter_w): (&[u8], usize) = if need_h {
        let hcoeffs = cached_box_coeffs(frame_w, bx_x, out_w, filter);
        kernels.horizontal(image, x0, row0 - y0..row1 - y0, &hcoeffs, xs, &mut tmp);
        (&tmp, xs.len)
    } else {
        // No horizontal pass: the window's columns come straight from the source.
        tmp.clear();
        tmp.reserve((row1 - row0) * xs.len * 3);
        for y in row0..row1 {
            tmp.extend_from_slice(&image.row(y - y0)[(xs.src - x0) * 3..(xs.src - x0 + xs.len) * 3]);
        }
        (&tmp, xs.len)
    };
    match &vcoeffs {
        Some(c) => kernels.vertical(inter, inter_w, row0, c, ys, out),
        None => out.copy_from_slice(&inter[..ys.len * inter_w * 3]),
    }
    INTER.set(tmp);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn gradient(w: usize, h: usize) -> RgbImage {
        let data = (0..w * h * 3).map(|i| ((i * 37) % 251) as u8).collect();
        RgbImage { width: w, height: h, data }
    }

    #[test]
    fn coefficients_sum_to_one_in_fixed_point() {
        for (i, o) in [(640, 224), (224, 640), (7, 3), (3, 7), (1000, 1)] {
            let c = Coeffs::new(i, o, Filter::Bicubic);
            for x in 0..o {
                let (_, k) = c.taps(x);
                let s: i64 = k.iter().map(|&v| i64::from(v)).sum();
                assert!((s - (1 << PRECISION_BITS)).abs() <= k.len() as i64, "{i}->{o} at {x}: {s}");
            }
        }
    }

    #[test]
    fn window_equals_crop_of_full_resize() {
        // The second shape runs vertical first under Pillow 13 only, the third under both.
        for (w, h, ow, oh) in [(97, 61, 40, 30), (61, 197, 40, 90), (2, 301, 40, 30)] {
            let src = gradient(w, h);
            for order in ORDERS {
                let mut full = Vec::new();
                let all_x = Span { src: 0, dst: 0, len: ow };
                let all_y = Span { src: 0, dst: 0, len: oh };
                resize_window(&src, ow, oh, all_x, all_y, Filter::Bicubic, order, &mut full).unwrap();
                let xs = Span { src: 7, dst: 0, len: 20 };
                let ys = Span { src: 5, dst: 0, len: 11 };
                let mut win = Vec::new();
                resize_window(&src, ow, oh, xs, ys, Filter::Bicubic, order, &mut win).unwrap();
                for y in 0..ys.len {
                    let a = &full[((y + ys.src) * ow + xs.src) * 3..((y + ys.src) * ow + xs.src + xs.len) * 3];
                    assert_eq!(a, &win[y * xs.len * 3..(y + 1) * xs.len * 3], "{w}x{h} -> {ow}x{oh} {order:?}");
                }
            }
        }
    }

    #[test]
    fn tall_images_take_the_vertical_first_path_consistently() {
        // Window of a vertical-first resize must equal the crop of the full one too.
        let src = gradient(2, 301);
        let mut full = Vec::new();
        let all = |n| Span { src: 0, dst: 0, len: n };
        resize_window(&src, 50, 40, all(50), all(40), Filter::Bicubic, PassOrder::Pillow13, &mut full).unwrap();
        let mut win = Vec::new();
        let (xs, ys) = (Span { src: 3, dst: 0, len: 10 }, Span { src: 4, dst: 0, len: 9 });
        resize_window(&src, 50, 40, xs, ys, Filter::Bicubic, PassOrder::Pillow13, &mut win).unwrap();
        for y in 0..9 {
            assert_eq!(&full[((y + 4) * 50 + 3) * 3..((y + 4) * 50 + 13) * 3], &win[y * 30..(y + 1) * 30]);
        }
    }

    #[test]
    fn dispatched_path_equals_portable_path() {
        for (w, h, ow, oh) in [(97, 61, 40, 30), (640, 480, 298, 224), (30, 17, 90, 50), (2, 301, 50, 40)] {
            let src = gradient(w, h);
            let all = |n| Span { src: 0, dst: 0, len: n };
            let (mut a, mut b) = (Vec::new(), Vec::new());
            for order in ORDERS {
                resize_window(&src, ow, oh, all(ow), all(oh), Filter::Bicubic, order, &mut a).unwrap();
                resize_impl(Source::whole(&src), Rect::whole(w, h), ow, oh, all(ow), all(oh), Filter::Bicubic, order, &mut b, Kernels::Portable).unwrap();
                assert_eq!(a, b, "{w}x{h} -> {ow}x{oh} {order:?}");
            }
        }
    }

    /// xorshift64*: a seeded stream for the randomised comparisons (no extra dependency).
    struct Rng(u64);
    impl Rng {
        fn next(&mut self) -> u64 {
            self.0 ^= self.0 >> 12;
            self.0 ^= self.0 << 25;
            self.0 ^= self.0 >> 27;
            self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
        }
        fn below(&mut self, n: usize) -> usize {
            (self.next() % n as u64) as usize
        }
        fn between(&mut self, lo: usize, hi: usize) -> usize {
            lo + self.below(hi - lo + 1)
        }
    }

    /// Noise, hard 0/255 edges (the worst case for overshoot and clipping) or flat extremes.
    #[allow(clippy::collapsible_match, reason = "one arm per kind of test image reads best")]
    fn random_image(rng: &mut Rng, w: usize, h: usize) -> RgbImage {
        let kind = rng.below(4);
        let data = (0..w * h * 3)
            .map(|i| match kind {
                0 => rng.next() as u8,
                1 => if rng.below(2) == 0 { 0 } else { 255 },
                2 => if (i / 3 + i / (3 * w)).is_multiple_of(2) { 255 } else { 0 },
                _ => 255,
            })
            .collect();
        RgbImage { width: w, height: h, data }
    }

    fn random_span(rng: &mut Rng, n: usize) -> Span {
        if rng.below(3) == 0 {
            return Span { src: 0, dst: 0, len: n };
        }
        let src = rng.below(n);
        Span { src, dst: 0, len: rng.between(1, n - src) }
    }

    fn assert_same(src: &RgbImage, ow: usize, oh: usize, xs: Span, ys: Span, filter: Filter, order: PassOrder) {
        let (mut a, mut b) = (Vec::new(), Vec::new());
        resize_window(src, ow, oh, xs, ys, filter, order, &mut a).unwrap();
        resize_impl(Source::whole(src), Rect::whole(src.width, src.height), ow, oh, xs, ys, filter, order, &mut b, Kernels::Portable).unwrap();
        if a != b {
            let at = a.iter().zip(&b).position(|(x, y)| x != y);
            panic!(
                "{}x{} -> {ow}x{oh} window {xs:?} x {ys:?} {filter:?} {order:?}: first difference at byte {at:?}",
                src.width, src.height
            );
        }
    }

    #[test]
    fn simd_kernels_equal_portable_on_random_cases() {
        let mut rng = Rng(0x5eed_cafe_f00d_0001);
        let filters = [Filter::Bicubic, Filter::Bilinear, Filter::Lanczos];
        for case in 0..1500 {
            // Mostly small sides (every tail and edge case), some medium, a few 1-pixel ones.
            let side = |rng: &mut Rng| match rng.below(10) {
                0 => 1,
                1..=6 => rng.between(1, 70),
                _ => rng.between(70, 400),
            };
            let (w, h) = (side(&mut rng), side(&mut rng));
            // Up to 4x up and down to 1 pixel; sometimes the same size on one axis.
            let out = |rng: &mut Rng, n: usize| match rng.below(8) {
                0 => n,
                1 => 1,
                _ => rng.between(1, 4 * n + 3),
            };
            let (ow, oh) = (out(&mut rng, w), out(&mut rng, h));
            let src = random_image(&mut rng, w, h);
            let (xs, ys) = (random_span(&mut rng, ow), random_span(&mut rng, oh));
            assert_same(&src, ow, oh, xs, ys, filters[case % 3], ORDERS[rng.below(3)]);
        }
    }

    /// `Image.resize(box=...)`: the dispatched kernels equal the portable ones on random
    /// boxes (taps reaching past the box edges), in every pass order; the whole-image box
    /// is the plain resize.
    #[test]
    fn simd_kernels_equal_portable_on_boxes() {
        let mut rng = Rng(0x5eed_cafe_f00d_0006);
        let filters = [Filter::Bicubic, Filter::Bilinear, Filter::Lanczos];
        for case in 0..600 {
            let (w, h) = (rng.between(1, 300), rng.between(1, 300));
            let (x0, y0) = (rng.below(w), rng.below(h));
            let bx = Rect { x0, y0, x1: rng.between(x0 + 1, w), y1: rng.between(y0 + 1, h) };
            let (ow, oh) = (rng.between(1, 260), rng.between(1, 260));
            let src = random_image(&mut rng, w, h);
            let all = |n| Span { src: 0, dst: 0, len: n };
            let (filter, order) = (filters[case % 3], ORDERS[rng.below(3)]);
            let (mut a, mut b) = (Vec::new(), Vec::new());
            resize_box(Source::whole(&src), bx, ow, oh, filter, order, &mut a).unwrap();
            resize_impl(Source::whole(&src), bx, ow, oh, all(ow), all(oh), filter, order, &mut b, Kernels::Portable).unwrap();
            assert_eq!(a, b, "{w}x{h} box {bx:?} -> {ow}x{oh} {filter:?} {order:?}");
            // The source part `box_source_window` names is enough.
            let need = box_source_window(w, h, bx, ow, oh, all(ow), all(oh), filter).unwrap();
            let mut data = Vec::new();
            for y in need.y0..need.y1 {
                data.extend_from_slice(&src.row(y)[need.x0 * 3..need.x1 * 3]);
            }
            let part = RgbImage { width: need.x1 - need.x0, height: need.y1 - need.y0, data };
            let mut c = Vec::new();
            resize_box(Source { image: &part, placed: need, frame_w: w, frame_h: h }, bx, ow, oh, filter, order, &mut c).unwrap();
            assert_eq!(a, c, "partial source {need:?}");
        }
        let src = random_image(&mut rng, 90, 70);
        let (mut a, mut b) = (Vec::new(), Vec::new());
        resize_box(Source::whole(&src), Rect::whole(90, 70), 40, 30, Filter::Bicubic, PassOrder::Pillow13, &mut a).unwrap();
        resize_window(&src, 40, 30, Span { src: 0, dst: 0, len: 40 }, Span { src: 0, dst: 0, len: 30 }, Filter::Bicubic, PassOrder::Pillow13, &mut b).unwrap();
        assert_eq!(a, b);
        assert!(resize_box(Source::whole(&src), Rect { x0: 5, y0: 5, x1: 5, y1: 9 }, 4, 4, Filter::Bicubic, PassOrder::Pillow13, &mut a).is_err());
        assert!(resize_box(Source::whole(&src), Rect { x0: 0, y0: 0, x1: 91, y1: 9 }, 4, 4, Filter::Bicubic, PassOrder::Pillow13, &mut a).is_err());
    }

    #[test]
    fn box_coefficients_of_the_whole_axis_are_the_plain_ones() {
        for (i, o) in [(640, 224), (224, 640), (7, 3), (1, 5)] {
            let (a, b) = (Coeffs::new(i, o, Filter::Lanczos), Coeffs::for_box(i, 0.0, i as f64, o, Filter::Lanczos));
            assert_eq!((a.ksize, &a.bounds, &a.k), (b.ksize, &b.bounds, &b.k));
        }
        // A box's taps reach outside it, but never outside the axis.
        let c = Coeffs::for_box(100, 40.0, 60.0, 10, Filter::Bicubic);
        assert!(c.bounds[0].0 < 40 && c.bounds[9].0 + c.bounds[9].1 > 60);
        let c = Coeffs::for_box(100, 0.0, 10.0, 10, Filter::Bicubic);
        assert_eq!(c.bounds[0].0, 0);
    }

    #[test]
    fn simd_kernels_equal_portable_on_big_factors_and_tall_images() {
        let mut rng = Rng(0x5eed_cafe_f00d_0002);
        let all = |n| Span { src: 0, dst: 0, len: n };
        // Large taps counts (4000 -> 224 is ~73 taps), CLIP-like sizes, very tall/wide inputs.
        let cases = [
            (4000, 60, 224, 3),
            (60, 4000, 5, 224),
            (4000, 3000, 298, 224),
            (640, 480, 298, 224),
            (1920, 1080, 398, 224),
            (3, 900, 50, 40),
            (2, 301, 50, 40),
            (1, 250, 7, 2),
            (250, 1, 2, 7),
            (33, 17, 1000, 9),
        ];
        for (i, &(w, h, ow, oh)) in cases.iter().enumerate() {
            let src = random_image(&mut rng, w, h);
            let filter = [Filter::Bicubic, Filter::Bilinear, Filter::Lanczos][i % 3];
            for order in ORDERS {
                assert_same(&src, ow, oh, all(ow), all(oh), filter, order);
                assert_same(&src, ow, oh, random_span(&mut rng, ow), random_span(&mut rng, oh), filter, order);
            }
        }
    }

    /// Hand-made tap sets straddling the `maddubs` limit for the high halves (a pair is
    /// fine up to `255 * (hi_a + hi_b) <= 32767`, i.e. taps a little above 2^22): the AVX2
    /// horizontal pass must take its byte path only where exact, and match either way.
    #[cfg(target_arch = "x86_64")]
    #[test]
    fn avx2_horizontal_high_halves_near_the_byte_limit() {
        if !std::arch::is_x86_feature_detected!("avx2") {
            return;
        }
        let mut rng = Rng(0x5eed_cafe_f00d_0003);
        let limit: i32 = 64 * 65536 + 32767; // the largest tap whose high half is 64
        let picks = [limit, limit + 1, limit - 1, -limit, 65 * 65536, -(65 * 65536), 1 << 22, 0, 1, -1, 32767, 32768];
        for case in 0..300 {
            let (w, h) = (rng.between(2, 40), rng.between(1, 9));
            let n_taps = rng.between(1, 3);
            let ow = rng.between(1, 12);
            let mut bounds = Vec::new();
            let mut k = vec![0i32; ow * n_taps];
            // Window starts never decrease along the axis, as in every real set.
            let mut starts: Vec<usize> = (0..ow).map(|_| rng.below(w)).collect();
            starts.sort_unstable();
            for (ox, &s0) in starts.iter().enumerate() {
                let n = rng.between(1, n_taps.min(w - s0));
                let start = s0;
                for t in 0..n {
                    // Keep the scalar sum in i32 range (255 * sum |k| < 2^31).
                    k[ox * n_taps + t] = if rng.below(2) == 0 {
                        picks[rng.below(picks.len())]
                    } else {
                        rng.below(2 * limit as usize + 1) as i32 - limit
                    };
                }
                bounds.push((start, n));
            }
            let coeffs = Coeffs { ksize: n_taps, bounds, k };
            let src = if case % 3 == 0 {
                RgbImage { width: w, height: h, data: vec![255; w * h * 3] }
            } else {
                random_image(&mut rng, w, h)
            };
            let cols = Span { src: 0, dst: 0, len: ow };
            let (mut a, mut b) = (Vec::new(), Vec::new());
            horizontal(&src, 0, 0..h, &coeffs, cols, &mut a);
            // SAFETY: checked above that the CPU has AVX2.
            unsafe { avx2::horizontal(&src, 0, 0..h, &coeffs, cols, &mut b) };
            assert_eq!(a, b, "case {case}: {w}x{h}, taps {:?}", coeffs.k);
            if Kernels::detect() == Kernels::Avx512 {
                let mut c = Vec::new();
                // SAFETY: `detect` saw AVX-512F/BW.
                unsafe { avx512::horizontal(&src, 0, 0..h, &coeffs, cols, &mut c) };
                assert_eq!(a, c, "avx512 case {case}: {w}x{h}, taps {:?}", coeffs.k);
            }
        }
    }

    #[test]
    fn same_size_is_a_copy() {
        let src = gradient(13, 9);
        let mut out = Vec::new();
        let xs = Span { src: 0, dst: 0, len: 13 };
        let ys = Span { src: 0, dst: 0, len: 9 };
        resize_window(&src, 13, 9, xs, ys, Filter::Bicubic, PassOrder::Pillow13, &mut out).unwrap();
        assert_eq!(out, src.data);
    }

    /// A source holding only the part of its frame that `source_window` names (plus some
    /// slack, at odd and even offsets) resizes to the same bytes as the whole frame, with
    /// either kernel set and in either pass order; one column or row less is refused.
    #[test]
    fn partial_sources_resize_like_the_whole_frame() {
        let cases = [
            (640, 480, 298, 224, 37, 224, 0, 224),
            (480, 640, 224, 298, 0, 224, 37, 224),
            (1920, 1080, 398, 224, 87, 224, 0, 224),
            (300, 200, 150, 100, 10, 50, 20, 60),
            (40, 30, 80, 60, 5, 60, 7, 40),
            // Vertical first under Pillow 13: a 1:3 portrait (CLIP crop) and a squash.
            (300, 900, 224, 672, 0, 224, 224, 224),
            (300, 800, 224, 224, 0, 224, 0, 224),
            (4, 500, 224, 224, 30, 100, 50, 120),
        ];
        for order in ORDERS {
            for (fw, fh, ow, oh, xsrc, xlen, ysrc, ylen) in cases {
                partial_source_case(order, fw, fh, ow, oh, Span { src: xsrc, dst: 0, len: xlen }, Span { src: ysrc, dst: 0, len: ylen });
            }
        }
    }

    #[allow(clippy::too_many_arguments)]
    fn partial_source_case(order: PassOrder, fw: usize, fh: usize, ow: usize, oh: usize, xs: Span, ys: Span) {
        let frame = gradient(fw, fh);
        let mut want = Vec::new();
        resize_window(&frame, ow, oh, xs, ys, Filter::Bicubic, order, &mut want).unwrap();
        let need = source_window(fw, fh, ow, oh, xs, ys, Filter::Bicubic).unwrap();
        assert!(need.x1 <= fw && need.y1 <= fh);
        let part = |placed: Rect| -> RgbImage {
            let mut data = Vec::new();
            for y in placed.y0..placed.y1 {
                data.extend_from_slice(&frame.row(y)[placed.x0 * 3..placed.x1 * 3]);
            }
            RgbImage { width: placed.x1 - placed.x0, height: placed.y1 - placed.y0, data }
        };
        for slack in [0usize, 1, 8] {
            let placed = Rect {
                x0: need.x0.saturating_sub(slack),
                y0: need.y0.saturating_sub(slack),
                x1: (need.x1 + slack).min(fw),
                y1: (need.y1 + slack).min(fh),
            };
            let image = part(placed);
            let src = Source { image: &image, placed, frame_w: fw, frame_h: fh };
            for kernels in [Kernels::Portable, Kernels::detect()] {
                let mut got = Vec::new();
                resize_impl(src, Rect::whole(fw, fh), ow, oh, xs, ys, Filter::Bicubic, order, &mut got, kernels).unwrap();
                assert_eq!(got, want, "{fw}x{fh} -> {ow}x{oh}, slack {slack}, {kernels:?}, {order:?}");
            }
        }
        if need.x0 + 1 < need.x1 && need.x1 < fw {
            let placed = Rect { x1: need.x1 - 1, ..need };
            let image = part(placed);
            let src = Source { image: &image, placed, frame_w: fw, frame_h: fh };
            assert!(resize_source(src, ow, oh, xs, ys, Filter::Bicubic, order, &mut Vec::new()).is_err());
        }
    }

    const ORDERS: [PassOrder; 3] = [PassOrder::HorizontalFirst, PassOrder::Pillow12, PassOrder::Pillow13];

    /// The three rules, case by case, at their boundaries (read off Pillow 12.1's, 12.3's
    /// and 13.0's `Image.py` / `Resample.c`).
    #[test]
    fn pass_order_rules_match_the_pillow_sources() {
        // (in_w, in_h, out_w, out_h, Pillow12 vertical first, Pillow13 vertical first)
        let cases = [
            (2, 301, 50, 40, true, true),     // > 100x taller, shrinking: both
            (3, 300, 2, 40, false, true),     // exactly 100x: not Pillow 12's
            (3, 301, 3, 301, false, false),   // no resize at all
            (3, 301, 2, 301, false, false),   // height kept: never vertical first
            (3, 301, 2, 400, false, false),   // height grows
            (357, 912, 224, 571, false, true), // a 1:2.55 portrait to CLIP's shortest edge
            (480, 640, 224, 298, false, false), // 3:4 portrait: width shrinks more than half as much
            (400, 800, 224, 448, false, false), // exactly 1:2: dh == 2 * dw is not enough
            (400, 801, 224, 448, false, true),  // dh = 353 > 2 * 176
            (100, 500, 224, 224, false, true),  // width grows (dw < 0), height shrinks
            (1000, 300, 224, 224, false, false), // landscape
            (500, 500, 224, 223, false, false), // dh = 277 < 2 * 276
        ];
        for (iw, ih, ow, oh, v12, v13) in cases {
            assert!(!PassOrder::HorizontalFirst.vertical_first(iw, ih, ow, oh));
            assert_eq!(PassOrder::Pillow12.vertical_first(iw, ih, ow, oh), v12, "Pillow12 {iw}x{ih} -> {ow}x{oh}");
            assert_eq!(PassOrder::Pillow13.vertical_first(iw, ih, ow, oh), v13, "Pillow13 {iw}x{ih} -> {ow}x{oh}");
        }
        assert_eq!(PassOrder::default(), PassOrder::Pillow13);
    }

    /// Either order equals its definition: two one-axis resizes in that order, each
    /// rounding to uint8 (Pillow 12.2+ literally makes two `im.resize` calls).
    #[test]
    fn each_order_equals_two_single_axis_resizes() {
        let mut rng = Rng(0x5eed_cafe_f00d_0004);
        let all = |n| Span { src: 0, dst: 0, len: n };
        for &(w, h, ow, oh) in &[(357, 912, 224, 571), (2, 301, 50, 40), (300, 800, 224, 224), (640, 480, 298, 224), (100, 500, 224, 224)] {
            let src = random_image(&mut rng, w, h);
            for filter in [Filter::Bicubic, Filter::Bilinear, Filter::Lanczos] {
                let (mut tmp, mut hv, mut vh) = (Vec::new(), Vec::new(), Vec::new());
                resize_window(&src, ow, h, all(ow), all(h), filter, PassOrder::HorizontalFirst, &mut tmp).unwrap();
                let mid = RgbImage { width: ow, height: h, data: std::mem::take(&mut tmp) };
                resize_window(&mid, ow, oh, all(ow), all(oh), filter, PassOrder::HorizontalFirst, &mut hv).unwrap();
                resize_window(&src, w, oh, all(w), all(oh), filter, PassOrder::HorizontalFirst, &mut tmp).unwrap();
                let mid = RgbImage { width: w, height: oh, data: tmp };
                resize_window(&mid, ow, oh, all(ow), all(oh), filter, PassOrder::HorizontalFirst, &mut vh).unwrap();
                for order in ORDERS {
                    let mut got = Vec::new();
                    resize_window(&src, ow, oh, all(ow), all(oh), filter, order, &mut got).unwrap();
                    let want = if order.vertical_first(w, h, ow, oh) { &vh } else { &hv };
                    assert_eq!(&got, want, "{w}x{h} -> {ow}x{oh} {filter:?} {order:?}");
                }
            }
        }
    }

    /// The change is visible: on noise the two orders give other bytes where only Pillow 13
    /// goes vertical first, and the same bytes where both agree.
    #[test]
    fn pillow_12_and_13_differ_only_where_their_rules_do() {
        let mut rng = Rng(0x5eed_cafe_f00d_0005);
        let all = |n| Span { src: 0, dst: 0, len: n };
        let noise = |rng: &mut Rng, w: usize, h: usize| RgbImage { width: w, height: h, data: (0..w * h * 3).map(|_| rng.next() as u8).collect() };
        for &(w, h, ow, oh, differs) in &[(357, 912, 224, 571, true), (300, 800, 224, 224, true), (480, 640, 224, 298, false), (2, 301, 50, 40, false)] {
            let src = noise(&mut rng, w, h);
            let (mut a, mut b) = (Vec::new(), Vec::new());
            resize_window(&src, ow, oh, all(ow), all(oh), Filter::Bicubic, PassOrder::Pillow12, &mut a).unwrap();
            resize_window(&src, ow, oh, all(ow), all(oh), Filter::Bicubic, PassOrder::Pillow13, &mut b).unwrap();
            assert_eq!(a != b, differs, "{w}x{h} -> {ow}x{oh}");
        }
    }
}
