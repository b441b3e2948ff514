//! The process's own CBLAS `sgemm`, when one is already loaded: opt-in (`FERROCLIP_BLAS=1`).
//!
//! Under Python, numpy has loaded its OpenBLAS (`libscipy_openblas64_*.so`, symbols
//! prefixed `scipy_` and suffixed `64_`, 64-bit integers) before any retrieval call runs.
//! On the tile shapes its sgemm ran 1.06-1.11x faster than `matrixmultiply` (1 thread,
//! AVX-512; `examples/tile_bench.rs`); on AVX2-only CPUs ferroclip's own kernel (`gemm`)
//! matches OpenBLAS, so there this option buys nothing. Nothing is linked at build time
//! and nothing is loaded: we only look among the libraries already in the process
//! (`RTLD_NOLOAD`), once.
//! Linux only (`dl_iterate_phdr`); elsewhere the backend is the built-in product.
//!
//! Why opt-in: ferroclip promises that `topk`, `recall_at_k` and `near_duplicates` see the
//! very scores `similarity` returns, bit for bit, because the built-in product computes a
//! pair the same way in every tile. OpenBLAS does not: its value for a pair depends on the
//! call shape and on where the pair falls in it (edge micro-tiles and small-matrix kernels sum
//! in another order). Measured with numpy's OpenBLAS 0.3.31 (SkylakeX kernels), D = 512:
//! a 200 x 1000 call differs from the same pairs inside 256 x 1024 tiles in 2% of the
//! scores, a 64 x 64 call in 10%, by an ulp or two; aligned 256 x 1024, 512 x 1024 and
//! 1024 x 1024 calls agree. So with `FERROCLIP_BLAS=1` the selections stay exact on the
//! scores each call computes, but those scores may differ in the last bit from
//! `similarity`'s; `recall_at_k`'s one-pass counting keeps the built-in product (it checks
//! exactly that agreement). Exact data (small integers) gives the same results either way.
//!
//! A library is used only with its thread control (OpenBLAS's `set_num_threads`, MKL's
//! `MKL_Set_Num_Threads`), and an OpenMP build of OpenBLAS is skipped: see
//! [`SingleThreaded`]. A candidate that fails a small self-check is skipped too, and so is
//! one below 9/10 of the built-in product's speed on a test tile (an old OpenBLAS that does not
//! know the CPU can run at a third of it).

use std::ffi::{c_int, c_void, CStr, CString};
use std::sync::{Mutex, OnceLock};

const ROW_MAJOR: c_int = 101;
const NO_TRANS: c_int = 111;
const TRANS: c_int = 112;

type SgemmLp64 = unsafe extern "C" fn(c_int, c_int, c_int, i32, i32, i32, f32, *const f32, i32, *const f32, i32, f32, *mut f32, i32);
type SgemmIlp64 = unsafe extern "C" fn(c_int, c_int, c_int, i64, i64, i64, f32, *const f32, i64, *const f32, i64, f32, *mut f32, i64);
type GetInt = unsafe extern "C" fn() -> c_int;
type SetInt = unsafe extern "C" fn(c_int);

#[derive(Clone, Copy)]
enum Sgemm {
    Lp64(SgemmLp64),
    Ilp64(SgemmIlp64),
}

/// Symbols to look for in one library: the sgemm, its integer width, its thread control.
struct Candidate {
    sgemm: &'static CStr,
    ilp64: bool,
    get_threads: &'static CStr,
    set_threads: &'static CStr,
    /// OpenBLAS's `get_parallel`: 0 sequential, 1 pthreads, 2 OpenMP (skipped).
    parallel: Option<&'static CStr>,
    vendor: &'static str,
}

/// In order of preference: numpy's OpenBLAS first (what numpy's matmul uses), then
/// scipy's, then a plain OpenBLAS (ILP64, LP64), then MKL.
const CANDIDATES: [Candidate; 5] = [
    Candidate {
        sgemm: c"scipy_cblas_sgemm64_",
        ilp64: true,
        get_threads: c"scipy_openblas_get_num_threads64_",
        set_threads: c"scipy_openblas_set_num_threads64_",
        parallel: Some(c"scipy_openblas_get_parallel64_"),
        vendor: "OpenBLAS",
    },
    Candidate {
        sgemm: c"scipy_cblas_sgemm",
        ilp64: false,
        get_threads: c"scipy_openblas_get_num_threads",
        set_threads: c"scipy_openblas_set_num_threads",
        parallel: Some(c"scipy_openblas_get_parallel"),
        vendor: "OpenBLAS",
    },
    Candidate {
        sgemm: c"cblas_sgemm64_",
        ilp64: true,
        get_threads: c"openblas_get_num_threads64_",
        set_threads: c"openblas_set_num_threads64_",
        parallel: Some(c"openblas_get_parallel64_"),
        vendor: "OpenBLAS",
    },
    Candidate {
        sgemm: c"cblas_sgemm",
        ilp64: false,
        get_threads: c"openblas_get_num_threads",
        set_threads: c"openblas_set_num_threads",
        parallel: Some(c"openblas_get_parallel"),
        vendor: "OpenBLAS",
    },
    // mkl_rt's cblas_sgemm is LP64 unless MKL_INTERFACE_LAYER selects ILP64 (checked below).
    Candidate {
        sgemm: c"cblas_sgemm",
        ilp64: false,
        get_threads: c"MKL_Get_Max_Threads",
        set_threads: c"MKL_Set_Num_Threads",
        parallel: None,
        vendor: "MKL",
    },
];

/// A CBLAS sgemm found in the process, with its thread control.
pub(crate) struct Blas {
    sgemm: Sgemm,
    get_threads: GetInt,
    set_threads: SetInt,
    description: String,
}

// SAFETY: plain function pointers into a library that is never unloaded (the handle from
// `dlopen` is kept for the life of the process).
unsafe impl Send for Blas {}
unsafe impl Sync for Blas {}

/// The BLAS in use (if any) and the backend in words, decided once per process.
static BLAS: OnceLock<(Option<Blas>, String)> = OnceLock::new();

/// `FERROCLIP_BLAS=1` (or `on`, `true`, `yes`) asks for a loaded BLAS that is not far
/// slower than the built-in product; `force` skips that timing (tests, benchmarks). Read once.
fn env_setting() -> Option<bool> {
    let v = std::env::var("FERROCLIP_BLAS").ok()?.trim().to_ascii_lowercase();
    match v.as_str() {
        "1" | "on" | "true" | "yes" => Some(false),
        "force" => Some(true),
        _ => None,
    }
}

fn decide() -> &'static (Option<Blas>, String) {
    BLAS.get_or_init(|| match env_setting() {
        Some(force) => discover(force),
        None => (None, crate::similarity::builtin_backend().into()),
    })
}

/// The BLAS in use, looked up on first use.
pub(crate) fn get() -> Option<&'static Blas> {
    decide().0.as_ref()
}

/// Which product backend this process uses, in words: the library, symbol and integer
/// width when a BLAS sgemm is in use, else the built-in product (`ferroclip-avx2` or
/// `matrixmultiply`) and why.
#[must_use]
pub fn backend() -> String {
    decide().1.clone()
}

#[cfg(target_os = "linux")]
fn loaded_libraries() -> Vec<CString> {
    unsafe extern "C" fn collect(info: *mut libc::dl_phdr_info, _size: libc::size_t, data: *mut c_void) -> c_int {
        // SAFETY: the loader passes a valid info; `data` is the Vec below.
        let (info, out) = unsafe { (&*info, &mut *data.cast::<Vec<CString>>()) };
        if !info.dlpi_name.is_null() {
            // SAFETY: a NUL-terminated path owned by the loader for this call.
            let name = unsafe { CStr::from_ptr(info.dlpi_name) };
            if !name.is_empty() {
                out.push(name.to_owned());
            }
        }
        0
    }
    let mut out: Vec<CString> = Vec::new();
    // SAFETY: the callback only reads `info` and pushes to `out`, which outlives the call.
    // No dlopen happens inside the callback (the loader lock is held there).
    unsafe { libc::dl_iterate_phdr(Some(collect), (&raw mut out).cast()) };
    out
}

/// Look for a usable sgemm among loaded libraries whose file name says BLAS or MKL: the
/// first that passes its self-check and is not far slower than the built-in product on a tile.
#[cfg(target_os = "linux")]
fn discover(force: bool) -> (Option<Blas>, String) {
    let libraries: Vec<(CString, *mut c_void)> = loaded_libraries()
        .into_iter()
        .filter(|path| {
            let p = path.to_string_lossy();
            let file = p.rsplit('/').next().unwrap_or(&p).to_ascii_lowercase();
            // GPU BLAS front-ends (cuBLAS, NVBLAS) are not what a CPU tile wants.
            (file.contains("blas") || file.contains("mkl")) && !file.contains("cublas") && !file.contains("nvblas")
        })
        .filter_map(|path| {
            // SAFETY: RTLD_NOLOAD only returns a handle to an already-loaded library (and
            // raises its reference count, so it is never unloaded under us).
            let handle = unsafe { libc::dlopen(path.as_ptr(), libc::RTLD_NOW | libc::RTLD_NOLOAD) };
            (!handle.is_null()).then_some((path, handle))
        })
        .collect();
    let mut found = None;
    let mut why_not = "no usable CBLAS sgemm is loaded".to_string();
    'search: for candidate in &CANDIDATES {
        for (k, (path, handle)) in libraries.iter().enumerate() {
            // SAFETY: a valid handle from dlopen above.
            if let Some(blas) = unsafe { try_candidate(*handle, path, candidate) } {
                // An old or mis-detected build can be far slower than the built-in product (the
                // OpenBLAS 0.3.15 that opencv bundles ran 54 GFLOP/s here, against 180).
                // The margin keeps a noisy timing (another process busy) from turning away
                // a good library: numpy's is ~1.08x matrixmultiply on this tile, ~0.6x with
                // OPENBLAS_CORETYPE=Haswell on an AVX-512 machine.
                let (blas_gflops, mm_gflops) = if force { (1.0, 0.0) } else { blas.race() };
                if blas_gflops >= 0.9 * mm_gflops {
                    found = Some((k, blas));
                    break 'search;
                }
                why_not = format!("{} is too slow here: {blas_gflops:.0} vs {mm_gflops:.0} GFLOP/s", blas.description);
            }
        }
    }
    // Give back the references taken on the libraries not used; the one in use keeps its
    // reference for the life of the process (its function pointers are stored).
    for (k, (_, handle)) in libraries.iter().enumerate() {
        if found.as_ref().is_none_or(|(used, _)| *used != k) {
            // SAFETY: a handle from dlopen above, closed once.
            unsafe { libc::dlclose(*handle) };
        }
    }
    match found {
        Some((_, blas)) => {
            let text = blas.description.clone();
            (Some(blas), text)
        }
        None => (None, format!("{} (FERROCLIP_BLAS set, but {why_not})", crate::similarity::builtin_backend())),
    }
}

#[cfg(not(target_os = "linux"))]
fn discover(_force: bool) -> (Option<Blas>, String) {
    (None, format!("{} (FERROCLIP_BLAS set, but only Linux looks for a loaded BLAS)", crate::similarity::builtin_backend()))
}

/// # Safety
/// `handle` is a valid dlopen handle.
#[cfg(target_os = "linux")]
unsafe fn try_candidate(handle: *mut c_void, path: &CStr, c: &Candidate) -> Option<Blas> {
    let sym = |name: &CStr| {
        // SAFETY: valid handle and NUL-terminated name.
        let p = unsafe { libc::dlsym(handle, name.as_ptr()) };
        (!p.is_null()).then_some(p)
    };
    let sgemm_ptr = sym(c.sgemm)?;
    let get_ptr = sym(c.get_threads)?;
    let set_ptr = sym(c.set_threads)?;
    if c.vendor == "MKL" && std::env::var("MKL_INTERFACE_LAYER").is_ok_and(|v| v.to_ascii_uppercase().contains("ILP64")) {
        return None; // cblas_sgemm would take 64-bit integers
    }
    if let Some(parallel) = c.parallel {
        let get_parallel: GetInt = std::mem::transmute::<*mut c_void, GetInt>(sym(parallel)?);
        if get_parallel() == 2 {
            return None; // OpenMP build: its thread count is per OpenMP thread, see SingleThreaded
        }
    }
    // SAFETY: the symbols have these C signatures in OpenBLAS / MKL (ints are `int`
    // except the sgemm's dimensions and strides, 64-bit in ILP64 builds).
    let sgemm = if c.ilp64 {
        Sgemm::Ilp64(std::mem::transmute::<*mut c_void, SgemmIlp64>(sgemm_ptr))
    } else {
        Sgemm::Lp64(std::mem::transmute::<*mut c_void, SgemmLp64>(sgemm_ptr))
    };
    let blas = Blas {
        sgemm,
        get_threads: std::mem::transmute::<*mut c_void, GetInt>(get_ptr),
        set_threads: std::mem::transmute::<*mut c_void, SetInt>(set_ptr),
        description: format!(
            "{} {} ({}) in {}",
            c.vendor,
            c.sgemm.to_string_lossy(),
            if c.ilp64 { "ILP64" } else { "LP64" },
            path.to_string_lossy()
        ),
    };
    blas.self_check().then_some(blas)
}

impl Blas {
    /// `out[i * ldc + j] = <q_i, d_j>`: row-major q (m x k) times d (n x k) transposed.
    /// `None` when a dimension does not fit the library's integers (LP64 beyond 2^31).
    ///
    /// # Safety
    /// `q`, `d` hold m, n rows of k values; `out` is writable at `i * ldc + j` for
    /// `i < m, j < n` and not accessed by anyone else during the call.
    #[allow(clippy::too_many_arguments, reason = "a BLAS-style kernel signature: matrix pointers, sizes and strides")]
    pub(crate) unsafe fn product(&self, q: *const f32, m: usize, d: *const f32, n: usize, k: usize, out: *mut f32, ldc: usize) -> Option<()> {
        match self.sgemm {
            Sgemm::Ilp64(f) => {
                let [m, n, k, ldc] = [m, n, k, ldc].map(|x| i64::try_from(x).ok());
                f(ROW_MAJOR, NO_TRANS, TRANS, m?, n?, k?, 1.0, q, k?, d, k?, 0.0, out, ldc?);
            }
            Sgemm::Lp64(f) => {
                let [m, n, k, ldc] = [m, n, k, ldc].map(|x| i32::try_from(x).ok());
                f(ROW_MAJOR, NO_TRANS, TRANS, m?, n?, k?, 1.0, q, k?, d, k?, 0.0, out, ldc?);
            }
        }
        Some(())
    }

    /// GFLOP/s of this sgemm and of the built-in product on one 256 x 1024 x 256 tile, best of
    /// three each after a warm-up, interleaved (a few ms, once per process).
    fn race(&self) -> (f64, f64) {
        let (m, n, k) = (256usize, 1024usize, 256usize);
        let q: Vec<f32> = (0..m * k).map(|x| ((x * 7) % 13) as f32 * 0.1).collect();
        let d: Vec<f32> = (0..n * k).map(|x| ((x * 5) % 11) as f32 * 0.1).collect();
        let mut out = vec![0.0f32; m * n];
        let mut best = [f64::INFINITY; 2];
        SingleThreaded::hold(self);
        for round in 0..4 {
            for (which, slot) in best.iter_mut().enumerate() {
                let t = std::time::Instant::now();
                // SAFETY: sizes as declared above; `out` is m x n.
                unsafe {
                    if which == 0 {
                        let _ = self.product(q.as_ptr(), m, d.as_ptr(), n, k, out.as_mut_ptr(), n);
                    } else {
                        crate::similarity::builtin_product(&q, m, &d, n, k, out.as_mut_ptr(), n);
                    }
                }
                if round > 0 {
                    *slot = slot.min(t.elapsed().as_secs_f64());
                }
            }
        }
        SingleThreaded::release(self);
        let flop = 2.0 * (m * n * k) as f64;
        (flop / best[0] / 1e9, flop / best[1] / 1e9)
    }

    /// A small exact product (with a row stride wider than the tile) must come out right:
    /// a library that exports the names but misbehaves is not used.
    fn self_check(&self) -> bool {
        let (m, n, k, ldc) = (3usize, 5usize, 7usize, 6usize);
        let q: Vec<f32> = (0..m * k).map(|x| (x % 5) as f32 - 2.0).collect();
        let d: Vec<f32> = (0..n * k).map(|x| (x % 3) as f32 - 1.0).collect();
        let mut out = vec![f32::NAN; m * ldc];
        SingleThreaded::hold(self);
        // SAFETY: sizes as declared above.
        let done = unsafe { self.product(q.as_ptr(), m, d.as_ptr(), n, k, out.as_mut_ptr(), ldc) };
        SingleThreaded::release(self);
        if done.is_none() {
            return false;
        }
        (0..m).all(|i| {
            (0..n).all(|j| out[i * ldc + j] == (0..k).map(|t| q[i * k + t] * d[j * k + t]).sum::<f32>())
                && out[i * ldc + n].is_nan()
        })
    }
}

/// Holders of the one-thread setting, and the library's thread count to restore.
static THREADS: Mutex<(usize, c_int)> = Mutex::new((0, 0));

/// While alive, the BLAS runs each sgemm on its calling thread only.
///
/// Our own rayon workers each compute whole tiles (with the selection fused right after,
/// while the tile is in cache); a BLAS that also split each call over its threads would
/// oversubscribe the cores. OpenBLAS's (pthreads) and MKL's thread count is process-wide
/// (`openblas_set_num_threads_local` is thread-local only in OpenMP builds), so the first
/// holder sets it to 1 and the last one restores it; the count is reference-counted so
/// that overlapping calls from several Python threads restore the right value. Effect on
/// the user's numpy: a numpy matmul run from another thread WHILE a ferroclip retrieval
/// call is running uses one thread; before and after, numpy's setting is untouched.
///
/// The alternative, one rayon thread issuing tiles and OpenBLAS threading each product, was
/// measured on 2 cores (top-k, 100k x 1000, D = 512): 253 ms on an idle machine against
/// 256-267 ms here, but 1.3-1.7 s whenever another process was busy (OpenBLAS's workers
/// spin-wait for each other), and it would ignore `num_threads`.
pub(crate) struct SingleThreaded(Option<&'static Blas>);

impl SingleThreaded {
    fn hold(blas: &Blas) {
        let mut t = THREADS.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        if t.0 == 0 {
            // SAFETY: thread-count calls of the library, valid function pointers.
            t.1 = unsafe { (blas.get_threads)() };
            if t.1 != 1 {
                unsafe { (blas.set_threads)(1) };
            }
        }
        t.0 += 1;
    }

    fn release(blas: &Blas) {
        let mut t = THREADS.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        t.0 -= 1;
        if t.0 == 0 && t.1 != 1 {
            // SAFETY: as in `hold`.
            unsafe { (blas.set_threads)(t.1) };
        }
    }

    /// Hold the one-thread setting for the current scope (a no-op without a BLAS).
    pub(crate) fn new() -> Self {
        let blas = get();
        if let Some(b) = blas {
            Self::hold(b);
        }
        Self(blas)
    }
}

impl Drop for SingleThreaded {
    fn drop(&mut self) {
        if let Some(b) = self.0 {
            Self::release(b);
        }
    }
}

/// `blas.product` only while the one-thread setting is held (debug check).
pub(crate) fn is_single_threaded() -> bool {
    THREADS.lock().unwrap_or_else(std::sync::PoisonError::into_inner).0 > 0
}
