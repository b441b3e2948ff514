//! Many images in parallel into one preallocated buffer, one result per item.
//!
//! Row `i` of the output always belongs to input `i`; a failed item leaves zeros and an
//! `ItemError`, a decoded one may leave warnings (`BatchReport`). Each item runs under `catch_unwind`, so a panic anywhere below becomes
//! that item's `Internal` error instead of tearing down the batch.

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use rayon::prelude::*;

use crate::error::{Error, ItemError, Origin, Result};
use crate::normalize::OutElem;
use crate::pipeline::{preprocess_one, PreprocessSpec, Source};

/// Bumped in the child after `fork()`: pools built before belong to threads that no longer exist.
static FORK_GENERATION: AtomicU64 = AtomicU64::new(0);
/// Pools by size, valid for one fork generation.
type PoolCache<T> = Mutex<(u64, Vec<(usize, T)>)>;
static POOLS: PoolCache<Arc<rayon::ThreadPool>> = Mutex::new((0, Vec::new()));

/// The entry of `cache` for `n` threads, built by `build` the first time in this process.
fn cached<T: Clone>(cache: &PoolCache<T>, n: usize, build: impl FnOnce() -> Result<T>) -> Result<T> {
    let mut cache = cache.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
    let generation = FORK_GENERATION.load(Ordering::SeqCst);
    if cache.0 != generation {
        // Worker threads of these pools did not survive the fork; dropping them would
        // wait for threads that are gone, so leak them instead.
        std::mem::forget(std::mem::take(&mut cache.1));
        cache.0 = generation;
    }
    if let Some((_, p)) = cache.1.iter().find(|(k, _)| *k == n) {
        return Ok(p.clone());
    }
    let p = build()?;
    cache.1.push((n, p.clone()));
    Ok(p)
}

fn build_pool(n: usize, name: &'static str, builder: rayon::ThreadPoolBuilder) -> Result<rayon::ThreadPool> {
    builder
        .num_threads(n)
        .thread_name(move |i| format!("{name}-{i}"))
        .build()
        .map_err(|e| Error::Internal(format!("cannot start {n} threads: {e}")))
}

/// Call in the child process right after `fork()` (async-signal-safe: one atomic add).
pub fn mark_forked() {
    FORK_GENERATION.fetch_add(1, Ordering::SeqCst);
}

/// Threads to use: the argument, else `FERROCLIP_NUM_THREADS`, else the available cores.
#[must_use]
pub fn resolve_num_threads(requested: Option<usize>) -> usize {
    requested
        .filter(|&n| n > 0)
        .or_else(|| std::env::var("FERROCLIP_NUM_THREADS").ok().and_then(|v| v.trim().parse().ok()).filter(|&n| n > 0))
        .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, std::num::NonZero::get))
}

fn pool(n: usize) -> Result<Arc<rayon::ThreadPool>> {
    cached(&POOLS, n, || Ok(Arc::new(build_pool(n, "ferroclip", rayon::ThreadPoolBuilder::new())?)))
}

/// Run `f` over `0..n` items with `num_threads` threads (inline when 1).
pub fn run_parallel<R: Send>(num_threads: Option<usize>, f: impl FnOnce(bool) -> R + Send) -> Result<R> {
    let n = resolve_num_threads(num_threads);
    if n == 1 {
        return Ok(f(false));
    }
    Ok(pool(n)?.install(|| f(true)))
}

/// The workers of `shared_pool`: its pool and their thread ids (to pin them, see `run_shared`).
type SharedPool = (Arc<rayon::ThreadPool>, Arc<Mutex<Vec<i32>>>);
static SHARED_POOLS: PoolCache<SharedPool> = Mutex::new((0, Vec::new()));

/// A pool of `n` workers for `run_shared` only (so re-pinning them never slows another
/// user's batch), built once per size and per fork generation.
fn shared_pool(n: usize) -> Result<SharedPool> {
    cached(&SHARED_POOLS, n, || {
        let tids = Arc::new(Mutex::new(Vec::with_capacity(n)));
        let record = Arc::clone(&tids);
        let builder = rayon::ThreadPoolBuilder::new().start_handler(move |_| {
            if let Some(tid) = affinity::current_tid() {
                record.lock().unwrap_or_else(std::sync::PoisonError::into_inner).push(tid);
            }
        });
        Ok((Arc::new(build_pool(n, "ferroclip-shared", builder)?), tids))
    })
}

/// Run `f(i)` for every `i in 0..n` on `num_threads` threads of which the caller is one,
/// results in index order.
///
/// For work of a few milliseconds (one query streaming the database). `run_parallel`
/// hands everything to the pool and waits, so nothing starts before a worker wakes. Here
/// the caller starts on item 0 at once and the helpers join as they wake, each taking the
/// next item from a shared counter, so a late helper costs only the items it did not take.
///
/// Each helper is first pinned to a CPU other than the caller's. Without that, a woken
/// thread may queue behind its waker on the same CPU until the load balancer moves it:
/// on the project's KVM guests (whose kernel packs wakeups onto busy vCPUs) a helper woken
/// this way started after a median 1-2 ms, pinned after 40-120 us (30 wakeups each, after
/// 0 and 100 ms idle). The pinning is one `sched_setaffinity` per helper and call; it is
/// skipped where the caller's CPU or affinity cannot be read, and off Linux.
pub fn run_shared<R: Send>(num_threads: Option<usize>, n: usize, f: impl Fn(usize) -> R + Sync) -> Result<Vec<R>> {
    let threads = resolve_num_threads(num_threads).min(n);
    if threads <= 1 {
        return Ok((0..n).map(f).collect());
    }
    let (pool, tids) = shared_pool(threads - 1)?;
    affinity::pin_away_from_caller(&tids.lock().unwrap_or_else(std::sync::PoisonError::into_inner));
    let next = std::sync::atomic::AtomicUsize::new(0);
    let slots: Vec<Mutex<Option<R>>> = (0..n).map(|_| Mutex::new(None)).collect();
    let work = || loop {
        let i = next.fetch_add(1, Ordering::Relaxed);
        if i >= n {
            break;
        }
        let r = f(i);
        *slots[i].lock().unwrap_or_else(std::sync::PoisonError::into_inner) = Some(r);
    };
    pool.in_place_scope(|s| {
        for _ in 1..threads {
            s.spawn(|_| work());
        }
        work();
    });
    // The scope returns after every spawned task; a task's panic is re-raised by it, so
    // each slot is filled here.
    Ok(slots
        .into_iter()
        .map(|m| m.into_inner().unwrap_or_else(std::sync::PoisonError::into_inner).expect("every item ran"))
        .collect())
}

/// Thread placement for `run_shared` (Linux; elsewhere these do nothing).
mod affinity {
    #[cfg(target_os = "linux")]
    pub(super) fn current_tid() -> Option<i32> {
        // SAFETY: gettid has no preconditions.
        Some(unsafe { libc::gettid() })
    }

    #[cfg(not(target_os = "linux"))]
    pub(super) fn current_tid() -> Option<i32> {
        None
    }

    /// Pin helper `j` to the j-th CPU (cycling) of the caller's affinity set other than
    /// the one the caller runs on.
    #[cfg(target_os = "linux")]
    pub(super) fn pin_away_from_caller(tids: &[i32]) {
        // SAFETY: plain syscalls on a zeroed cpu_set_t of the size they are told.
        unsafe {
            let size = std::mem::size_of::<libc::cpu_set_t>();
            let here = libc::sched_getcpu();
            let mut allowed: libc::cpu_set_t = std::mem::zeroed();
            if here < 0 || libc::sched_getaffinity(0, size, &mut allowed) != 0 {
                return;
            }
            let others: Vec<usize> = (0..libc::CPU_SETSIZE as usize).filter(|&c| c != here as usize && libc::CPU_ISSET(c, &allowed)).collect();
            if others.is_empty() {
                return;
            }
            for (j, &tid) in tids.iter().enumerate() {
                let mut one: libc::cpu_set_t = std::mem::zeroed();
                libc::CPU_SET(others[j % others.len()], &mut one);
                libc::sched_setaffinity(tid, size, &one); // best effort: a refusal only costs speed
            }
        }
    }

    #[cfg(not(target_os = "linux"))]
    pub(super) fn pin_away_from_caller(_tids: &[i32]) {}
}

fn origin_of(source: &Source<'_>) -> Origin {
    match source {
        Source::Path(p) => Origin::Path(p.to_path_buf()),
        Source::Bytes(_) => Origin::Bytes,
        Source::Array { .. } => Origin::Array,
    }
}

fn panic_message(payload: &(dyn std::any::Any + Send)) -> String {
    payload
        .downcast_ref::<&str>()
        .map(|s| (*s).to_string())
        .or_else(|| payload.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "panic with a non-string payload".into())
}

/// What a batch reports besides its pixels: the failed items (zero rows), and for the
/// items that decoded, the recoverable damage their decoder worked around, both by index.
#[derive(Debug, Default)]
pub struct BatchReport {
    pub errors: Vec<ItemError>,
    pub warnings: Vec<(usize, Vec<String>)>,
}

/// One item's outcome, `None` for a clean success (most items: nothing to collect).
type Outcome = Option<std::result::Result<(usize, Vec<String>), ItemError>>;

fn one<T: OutElem>(
    index: usize,
    source: &Source<'_>,
    slot: &mut [T],
    work: &(impl Fn(usize, &Source<'_>, &mut [T]) -> Result<Vec<String>> + Sync),
) -> Outcome {
    let result = catch_unwind(AssertUnwindSafe(|| work(index, source, slot)))
        .unwrap_or_else(|p| Err(Error::Internal(panic_message(&*p))));
    match result {
        Ok(warnings) if warnings.is_empty() => None,
        Ok(warnings) => Some(Ok((index, warnings))),
        Err(error) => {
            slot.fill(T::default());
            Some(Err(ItemError { index, origin: origin_of(source), error }))
        }
    }
}

/// Preprocess `sources` into `out` (`len * 3 * H * W`, row i = source i).
pub fn preprocess_batch<T: OutElem>(
    sources: &[Source<'_>],
    spec: &PreprocessSpec,
    out: &mut [T],
    num_threads: Option<usize>,
) -> Result<BatchReport> {
    let (h, w) = spec.output_hw()?;
    run_items(sources, 3 * h * w, out, num_threads, |_, src, slot| preprocess_one(src, spec, slot))
}

/// Run `work(i, source_i, slot_i)` for every source, in parallel, where slot `i` is the
/// `per` values of `out` at row `i`: the shared frame of every batch entry point. A
/// failed or panicking item gets zeros and an `ItemError`; the others are unaffected.
/// `work` returns the item's warnings.
pub fn run_items<T: OutElem>(
    sources: &[Source<'_>],
    per: usize,
    out: &mut [T],
    num_threads: Option<usize>,
    work: impl Fn(usize, &Source<'_>, &mut [T]) -> Result<Vec<String>> + Sync,
) -> Result<BatchReport> {
    if out.len() != sources.len() * per {
        return Err(Error::Shape(format!(
            "output buffer holds {} values, {} images of {per} values need {}",
            out.len(),
            sources.len(),
            sources.len() * per
        )));
    }
    if sources.is_empty() || per == 0 {
        return Ok(BatchReport::default());
    }
    run_parallel(num_threads, |parallel| {
        let outcomes: Vec<_> = if parallel {
            out.par_chunks_mut(per)
                .zip(sources.par_iter())
                .enumerate()
                .with_max_len(1)
                .filter_map(|(i, (slot, src))| one(i, src, slot, &work))
                .collect()
        } else {
            out.chunks_mut(per).zip(sources).enumerate().filter_map(|(i, (slot, src))| one(i, src, slot, &work)).collect()
        };
        let mut report = BatchReport::default();
        for outcome in outcomes {
            match outcome {
                Ok(w) => report.warnings.push(w),
                Err(e) => report.errors.push(e),
            }
        }
        report.errors.sort_by_key(|e| e.index);
        report.warnings.sort_by_key(|w| w.0);
        report
    })
}
