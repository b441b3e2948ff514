//! Exact top-k by dot product, fused with the blocked product.
//!
//! Each task scores one block of up to `TOPK_QUERY_BLOCK` queries against one slice of the
//! database, one tile of `Kernel::scan_width` rows at a time, and keeps a k-element heap
//! per query; the `Q x N` score matrix never exists. Slices are merged at the end. Few
//! queries (one, typically) are split over database slices so every thread has work.
//!
//! Order is a stable descending sort: higher score first, equal scores by lower database
//! index, exactly numpy's `argsort(-scores, kind="stable")[:k]` on the scores that
//! `similarity` returns (the same kernel computes them, bit for bit).

use crate::batch::{resolve_num_threads, run_parallel};
use crate::error::Result;
use crate::similarity::{block_part, check_dims, check_finite_tile, map_range, score_block, Embeddings, Kernel, Queries, DB_BLOCK, QUERY_BLOCK};

/// Queries per task: more than `QUERY_BLOCK`, so each database block is packed for sgemm
/// (a strided gather, see `similarity::block_product_raw`) fewer times per FLOP.
const TOPK_QUERY_BLOCK: usize = 4 * QUERY_BLOCK;

/// Database rows per block for the few-query dot kernel (a 64 KiB score row per query).
const DOT_BLOCK: usize = 16 * DB_BLOCK;

/// Few queries against a database smaller than this run on one thread: the work (a read
/// of the database) is shorter than waking a second thread and merging its lists costs.
const PARALLEL_MIN_BYTES: usize = 8 << 20;

/// Bytes of database per item when few queries share it between threads (`run_shared`):
/// small enough that the thread that finishes last waits at most ~0.2 ms for the other,
/// large enough that each item's four read streams run long.
const SHARED_ITEM_BYTES: usize = 4 << 20;

/// Database parts per thread when many queries split the database (see `topk_tuned`):
/// enough that a thread finishing early has a part to take, few enough that little time
/// goes to per-part work (each part's heaps start empty and take most of their pushes
/// while the threshold is low). 1000 x 100k x 512 on 2 threads, Sapphire Rapids class, 10
/// alternating rounds: 16 parts per thread ran 15-24% slower than 2-8, which were within
/// 5% of each other.
const PARTS_PER_THREAD: usize = 4;

/// Heap entries allowed per task before query blocks shrink (large k).
const MAX_HEAP_ENTRIES: usize = 1 << 22;

/// `scores[q * k + r]` / `indices[q * k + r]`: the r-th best database row for query q.
#[derive(Debug, Clone, PartialEq)]
pub struct TopK {
    /// Results per query: the requested k, capped at the database size.
    pub k: usize,
    pub scores: Vec<f32>,
    pub indices: Vec<i64>,
}

#[derive(Clone, Copy, Debug)]
struct Cand {
    score: f32,
    index: usize,
}

/// `a` ranks before `b`: higher score, ties to the lower index (scores are finite here,
/// and `0.0 == -0.0` as in numpy's sort).
#[inline]
fn before(a: Cand, b: Cand) -> bool {
    a.score > b.score || (a.score == b.score && a.index < b.index)
}

/// The best `k` candidates seen so far: a binary heap whose root ranks last.
struct Selector {
    k: usize,
    heap: Vec<Cand>,
}

impl Selector {
    fn new(k: usize) -> Self {
        Self { k, heap: Vec::new() }
    }

    /// Scores below this cannot enter (scores equal to it may, on a lower index).
    #[inline]
    fn threshold(&self) -> f32 {
        if self.heap.len() < self.k {
            f32::NEG_INFINITY
        } else {
            self.heap[0].score
        }
    }

    fn push(&mut self, c: Cand) {
        if self.heap.len() < self.k {
            self.heap.push(c);
            let mut i = self.heap.len() - 1;
            while i > 0 {
                let parent = (i - 1) / 2;
                if before(self.heap[parent], self.heap[i]) {
                    self.heap.swap(parent, i);
                    i = parent;
                } else {
                    break;
                }
            }
        } else if self.k > 0 && before(c, self.heap[0]) {
            self.heap[0] = c;
            let n = self.heap.len();
            let mut i = 0;
            loop {
                let (l, r) = (2 * i + 1, 2 * i + 2);
                let mut last = i;
                if l < n && before(self.heap[last], self.heap[l]) {
                    last = l;
                }
                if r < n && before(self.heap[last], self.heap[r]) {
                    last = r;
                }
                if last == i {
                    break;
                }
                self.heap.swap(i, last);
                i = last;
            }
        }
    }

    fn into_sorted(mut self) -> Vec<Cand> {
        self.heap.sort_unstable_by(|a, b| if before(*a, *b) { std::cmp::Ordering::Less } else { std::cmp::Ordering::Greater });
        self.heap
    }
}

/// Offer every score of a finished tile (`w` candidates from `c0` per row) to its row's
/// selector, in index order. Most scores fall below the threshold once the heap is full,
/// so 32 at a time are first tested together (vectorised), and only a chunk holding a
/// candidate is walked one by one. Returns whether every score is finite: tested on the
/// same chunks while they are in L1, instead of a separate pass over the tile (a NaN never
/// enters a heap, an Inf may, and the caller reports the error either way).
#[inline(always)]
fn select_tile_generic(selectors: &mut [Selector], tile: &[f32], w: usize, c0: usize) -> bool {
    const CHUNK: usize = 32;
    let mut finite = true;
    for (sel, row) in selectors.iter_mut().zip(tile.chunks_exact(w)) {
        let mut thresh = sel.threshold();
        for (ci, chunk) in row.chunks(CHUNK).enumerate() {
            finite &= chunk.iter().fold(true, |ok, s| ok & s.is_finite());
            if !chunk.iter().fold(false, |hit, &s| hit | (s >= thresh)) {
                continue;
            }
            for (j, &s) in chunk.iter().enumerate() {
                if s >= thresh {
                    sel.push(Cand { score: s, index: c0 + ci * CHUNK + j });
                    thresh = sel.threshold();
                }
            }
        }
    }
    finite
}

/// `select_tile_generic` compiled for AVX2.
///
/// # Safety
/// The CPU supports AVX2.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
unsafe fn select_tile_avx2(selectors: &mut [Selector], tile: &[f32], w: usize, c0: usize) -> bool {
    select_tile_generic(selectors, tile, w, c0)
}

fn select_tile(selectors: &mut [Selector], tile: &[f32], w: usize, c0: usize) -> bool {
    #[cfg(target_arch = "x86_64")]
    if std::arch::is_x86_feature_detected!("avx2") {
        // SAFETY: AVX2 was just detected.
        return unsafe { select_tile_avx2(selectors, tile, w, c0) };
    }
    select_tile_generic(selectors, tile, w, c0)
}

/// Score queries `q0..q1` against database rows `d0..d1`; one sorted list per query.
fn scan(kernel: Kernel, queries: &Embeddings<'_>, database: &Embeddings<'_>, k: usize, (q0, q1): (usize, usize), rows: (usize, usize)) -> Result<Vec<Vec<Cand>>> {
    let mut scratch_q = Vec::new();
    let qb = queries.block(q0, q1, &mut scratch_q);
    let prepared = Queries::new(kernel, &qb, q1 - q0, queries.dim());
    scan_prepared(kernel, &prepared, q0, database, k, rows)
}

/// `scan` for a query block prepared by the caller (packed once, shared by the tasks that
/// split the database between them), its first row being query `q0`.
fn scan_prepared(kernel: Kernel, prepared: &Queries<'_>, q0: usize, database: &Embeddings<'_>, k: usize, (d0, d1): (usize, usize)) -> Result<Vec<Vec<Cand>>> {
    let m = prepared.rows();
    let mut selectors: Vec<Selector> = (0..m).map(|_| Selector::new(k)).collect();
    let mut scratch_d = Vec::new();
    // The dot kernel reads each block as four streams; longer blocks keep them going.
    let block = if kernel == Kernel::Dot { DOT_BLOCK } else { kernel.scan_width() };
    let mut tile = vec![0.0f32; m * block.min(d1 - d0)];
    let mut c0 = d0;
    while c0 < d1 {
        let c1 = (c0 + block).min(d1);
        let w = c1 - c0;
        score_block(kernel, prepared, database, (c0, c1), &mut tile, w, &mut scratch_d);
        if !select_tile(&mut selectors, &tile[..m * w], w, c0) {
            check_finite_tile(&tile, m, w, w, q0, c0, ("queries", "database"))?;
        }
        c0 = c1;
    }
    Ok(selectors.into_iter().map(Selector::into_sorted).collect())
}

/// The `k` highest-scoring database rows for every query, best first.
///
/// `k` larger than the database returns every row. Errors on a dimension mismatch and on
/// non-finite scores (NaN/Inf in either input, or float32 overflow), naming the pair.
pub fn topk(queries: &Embeddings<'_>, database: &Embeddings<'_>, k: usize, num_threads: Option<usize>) -> Result<TopK> {
    topk_tuned(queries, database, k, num_threads, PARALLEL_MIN_BYTES, SHARED_ITEM_BYTES)
}

/// `topk` with its few-query thresholds as arguments, so tests reach the shared path on
/// small inputs.
fn topk_tuned(queries: &Embeddings<'_>, database: &Embeddings<'_>, k: usize, num_threads: Option<usize>, parallel_min_bytes: usize, shared_item_bytes: usize) -> Result<TopK> {
    check_dims(queries, "queries", database, "database")?;
    let _blas = crate::blas::SingleThreaded::new();
    let (nq, n) = (queries.rows(), database.rows());
    let k = k.min(n);
    if nq == 0 || k == 0 {
        return Ok(TopK { k, scores: Vec::new(), indices: Vec::new() });
    }
    let qb_size = TOPK_QUERY_BLOCK.min((MAX_HEAP_ENTRIES / k).max(1));
    let q_blocks = nq.div_ceil(qb_size);
    let q_block = |b: usize| (b * qb_size, ((b + 1) * qb_size).min(nq));
    let kernel = Kernel::for_queries(nq);
    let num_threads = if kernel == Kernel::Dot && database.bytes() < parallel_min_bytes { Some(1) } else { num_threads };
    let threads = resolve_num_threads(num_threads);
    let (parts, lists) = if kernel == Kernel::Dot && threads > 1 {
        // One pass over the database, shared item by item (see `run_shared`): the caller
        // starts at once, so a second thread can only add bandwidth, never wake-up latency.
        let row_bytes = (database.bytes() / n).max(1);
        let item_rows = (shared_item_bytes / row_bytes / DB_BLOCK).max(1) * DB_BLOCK;
        let parts = n.div_ceil(item_rows);
        let lists = crate::batch::run_shared(num_threads, q_blocks * parts, |t| {
            let (b, p) = (t / parts, t % parts);
            scan(kernel, queries, database, k, q_block(b), (p * item_rows, ((p + 1) * item_rows).min(n)))
        })?;
        (parts, lists)
    } else {
        // Split the database only when query blocks alone cannot feed the threads, into
        // PARTS_PER_THREAD parts per thread that differ by at most one scan tile. Each query
        // block is then packed once for all its parts; with one part per block, each task
        // packs its own, so only the running tasks' packed blocks exist at once.
        let unit = kernel.scan_width();
        let units = n.div_ceil(unit);
        let parts = if threads == 1 { 1 } else { units.min((PARTS_PER_THREAD * threads).div_ceil(q_blocks)).max(1) };
        let lists = if parts == 1 {
            run_parallel(num_threads, |parallel| map_range(parallel, q_blocks, |b| scan(kernel, queries, database, k, q_block(b), (0, n))))?
        } else {
            let mut scratch: Vec<Vec<f32>> = (0..q_blocks).map(|_| Vec::new()).collect();
            let blocks: Vec<_> = scratch.iter_mut().enumerate().map(|(b, s)| queries.block(q_block(b).0, q_block(b).1, s)).collect();
            let prepared: Vec<Queries<'_>> =
                blocks.iter().enumerate().map(|(b, qb)| Queries::new(kernel, qb, q_block(b).1 - q_block(b).0, queries.dim())).collect();
            run_parallel(num_threads, |parallel| {
                map_range(parallel, q_blocks * parts, |t| {
                    let (b, p) = (t / parts, t % parts);
                    scan_prepared(kernel, &prepared[b], q_block(b).0, database, k, block_part(p, parts, units, unit, n))
                })
            })?
        };
        (parts, lists)
    };
    let lists = lists.into_iter().collect::<Result<Vec<_>>>()?;

    let mut scores = Vec::with_capacity(nq * k);
    let mut indices = Vec::with_capacity(nq * k);
    for (b, block_lists) in lists.chunks(parts).enumerate() {
        let (q0, q1) = q_block(b);
        for i in 0..q1 - q0 {
            let mut merged: Vec<Cand>;
            if parts == 1 {
                merged = block_lists[0][i].clone();
            } else {
                merged = block_lists.iter().flat_map(|l| l[i].iter().copied()).collect();
                merged.sort_unstable_by(|a, b| if before(*a, *b) { std::cmp::Ordering::Less } else { std::cmp::Ordering::Greater });
                merged.truncate(k);
            }
            debug_assert_eq!(merged.len(), k);
            scores.extend(merged.iter().map(|c| c.score));
            indices.extend(merged.iter().map(|c| c.index as i64));
        }
    }
    Ok(TopK { k, scores, indices })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::similarity::similarity;
    use crate::test_data::small_ints;
    use half::f16;

    /// Reference: full similarity matrix, stable sort by descending score.
    fn reference(q: &Embeddings<'_>, d: &Embeddings<'_>, k: usize) -> (Vec<f32>, Vec<i64>) {
        let n = d.rows();
        let s = similarity(q, d, Some(1)).unwrap();
        let (mut scores, mut idx) = (Vec::new(), Vec::new());
        for row in s.chunks(n.max(1)).take(q.rows()) {
            let mut order: Vec<usize> = (0..n).collect();
            order.sort_by(|&a, &b| row[b].partial_cmp(&row[a]).unwrap()); // stable
            for &j in order.iter().take(k.min(n)) {
                scores.push(row[j]);
                idx.push(j as i64);
            }
        }
        (scores, idx)
    }

    fn check(nq: usize, n: usize, dim: usize, k: usize, levels: u64, threads: usize) {
        let q = small_ints(nq * dim, 1, levels);
        let d = small_ints(n * dim, 2, levels);
        let eq = Embeddings::f32(&q, nq, dim, "queries").unwrap();
        let ed = Embeddings::f32(&d, n, dim, "database").unwrap();
        let got = topk(&eq, &ed, k, Some(threads)).unwrap();
        let (scores, indices) = reference(&eq, &ed, k);
        assert_eq!(got.k, k.min(n));
        assert_eq!(got.indices, indices, "nq={nq} n={n} dim={dim} k={k} threads={threads}");
        assert_eq!(got.scores, scores);
    }

    #[test]
    fn matches_stable_sort_with_many_ties() {
        // levels=3 over dim 2 leaves few distinct scores: ties decide most of the order.
        for threads in [1, 2, 5] {
            check(3, 2 * DB_BLOCK + 7, 2, 10, 3, threads);
            check(QUERY_BLOCK + 1, DB_BLOCK + 1, 3, 4, 3, threads);
        }
    }

    #[test]
    fn few_queries_shared_between_threads_match_one_thread() {
        // The shared path (few queries, several threads) on inputs small enough for a
        // test: no size threshold, items of one DB_BLOCK, so many items per thread, ties
        // across item boundaries and a NaN reported from the item that holds it.
        let (n, dim) = (7 * DB_BLOCK + 13, 4);
        for (nq, levels) in [(1, 3), (3, 1000)] {
            let q = small_ints(nq * dim, 1, levels);
            let mut d = small_ints(n * dim, 2, levels);
            let eq = Embeddings::f32(&q, nq, dim, "queries").unwrap();
            let ed = Embeddings::f32(&d, n, dim, "database").unwrap();
            assert_eq!(Kernel::for_queries(nq), Kernel::Dot);
            let (scores, indices) = reference(&eq, &ed, 10);
            for threads in [2, 3, 8] {
                let got = topk_tuned(&eq, &ed, 10, Some(threads), 0, 1).unwrap();
                assert_eq!((&got.scores, &got.indices), (&scores, &indices), "nq={nq} threads={threads}");
            }
            d[(5 * DB_BLOCK + 2) * dim] = f32::NAN;
            d[(6 * DB_BLOCK + 2) * dim] = f32::NAN;
            let ed = Embeddings::f32(&d, n, dim, "database").unwrap();
            let err = topk_tuned(&eq, &ed, 10, Some(2), 0, 1).unwrap_err().to_string();
            assert!(err.contains(&format!("database[{}]", 5 * DB_BLOCK + 2)), "{err}");
        }
    }

    #[test]
    fn many_queries_split_over_parts_match_one_thread() {
        // Several query blocks, each packed once and shared by the database parts, f16 on
        // both sides (the blocks are widened into per-block scratch first): every thread
        // count gives one thread's bits, and a NaN names its pair from any part.
        let (nq, n, dim) = (2 * TOPK_QUERY_BLOCK + 5, 9 * DB_BLOCK / 8 + 3, 8);
        let q: Vec<f16> = small_ints(nq * dim, 3, 1000).iter().map(|&x| f16::from_f32(x / 64.0)).collect();
        let mut d: Vec<f16> = small_ints(n * dim, 4, 1000).iter().map(|&x| f16::from_f32(x / 64.0)).collect();
        let eq = Embeddings::f16(&q, nq, dim, "queries").unwrap();
        let ed = Embeddings::f16(&d, n, dim, "database").unwrap();
        let one = topk(&eq, &ed, 7, Some(1)).unwrap();
        let (scores, indices) = reference(&eq, &ed, 7);
        assert_eq!((&one.scores, &one.indices), (&scores, &indices));
        for threads in [2, 3] {
            let got = topk(&eq, &ed, 7, Some(threads)).unwrap();
            assert_eq!((&got.scores, &got.indices), (&one.scores, &one.indices), "threads={threads}");
        }
        d[(n - 2) * dim + 1] = f16::NAN;
        let ed = Embeddings::f16(&d, n, dim, "database").unwrap();
        let err = topk(&eq, &ed, 7, Some(2)).unwrap_err().to_string();
        assert!(err.contains(&format!("database[{}]", n - 2)), "{err}");
    }

    #[test]
    fn matches_stable_sort_on_distinct_scores() {
        check(7, 3000, 16, 25, 1000, 3);
        check(1, 5000, 8, 1, 1000, 2);
    }

    #[test]
    fn k_over_n_and_empty() {
        check(4, 5, 3, 10, 5, 2);
        check(4, 0, 3, 10, 5, 2);
        check(0, 5, 3, 10, 5, 2);
        check(2, 5, 3, 0, 5, 1);
        check(2, 5, 0, 3, 5, 1); // zero dimension: all ties, index order
    }

    #[test]
    fn large_k_shrinks_query_blocks() {
        check(3, 2 * DB_BLOCK, 4, 2 * DB_BLOCK, 50, 2);
    }

    #[test]
    fn selector_keeps_lowest_index_on_ties() {
        let mut s = Selector::new(2);
        for index in [5, 1, 3, 0] {
            s.push(Cand { score: 1.0, index });
        }
        s.push(Cand { score: -0.0, index: 0 });
        let got: Vec<usize> = s.into_sorted().iter().map(|c| c.index).collect();
        assert_eq!(got, vec![0, 1]);
    }

    #[test]
    fn nan_in_a_later_block_is_reported_with_its_pair() {
        // The finiteness test rides on the selection pass: a NaN never enters a heap, but
        // the call must still fail and name the first bad pair (query 0 meets it first).
        let (n, dim) = (2 * DB_BLOCK + 10, 3);
        let q = small_ints(5 * dim, 1, 3);
        let mut d = small_ints(n * dim, 2, 3);
        d[(DB_BLOCK + 7) * dim + 1] = f32::NAN;
        let eq = Embeddings::f32(&q, 5, dim, "queries").unwrap();
        let ed = Embeddings::f32(&d, n, dim, "database").unwrap();
        for threads in [1, 2] {
            let err = topk(&eq, &ed, 3, Some(threads)).unwrap_err().to_string();
            assert!(err.contains("queries[0]") && err.contains(&format!("database[{}]", DB_BLOCK + 7)), "{err}");
        }
    }

    #[test]
    fn inf_query_is_an_error() {
        let q = [f32::INFINITY, 0.0];
        let d = [1.0f32, 1.0];
        let eq = Embeddings::f32(&q, 1, 2, "queries").unwrap();
        let ed = Embeddings::f32(&d, 1, 2, "database").unwrap();
        let err = topk(&eq, &ed, 1, None).unwrap_err().to_string();
        assert!(err.contains("queries[0]") && err.contains("database[0]"), "{err}");
    }
}
