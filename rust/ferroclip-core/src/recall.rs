//! Retrieval metrics for paired image/caption embeddings: Recall@K and mAP@K both ways,
//! median and mean rank, with any number of captions per image (COCO has five).
//!
//! A positive's rank is the number of candidates that a stable descending sort puts before
//! it: candidates scoring strictly higher, plus those scoring equal with a lower index.
//! That is one linear pass over the query's scores, no sort, and it matches
//! `argsort(-scores, kind="stable")` on the `similarity` scores exactly (same kernel).
//! Image-to-text counts an image as found at K if ANY of its captions is within K, i.e.
//! the rank of its best-placed caption; images without captions are skipped and counted.
//!
//! mAP@K averages, over queries, `AP@K = (1 / min(K, P)) * sum over positives ranked
//! r < K (0-based) of (positives ranked at or before r) / (r + 1)`, P = the query's
//! positives (the `apk` of ml_metrics). With one positive (text-to-image) it is 1/(r + 1)
//! within K, i.e. MRR@K. A handful of positives (COCO: 5) take one vectorised counting
//! pass each; many take one pass with a binary search per candidate, O(N log P).
//!
//! `recall_at_k` computes ONE image x text product for both directions (see `one_pass`):
//! image rows are ranked directly, and each caption's rank among images is counted over
//! image strips against its positive score.

use crate::batch::run_parallel;
use crate::error::{Error, Result};
use crate::similarity::{
    block_part, block_product, check_dims, check_finite_tile, map_range, score_block, score_packed, Embeddings, Kernel, PackedDb, Queries, DB_BLOCK,
    QUERY_BLOCK,
};

/// Per-query ranks, image-to-text and text-to-image.
type RanksPair = (Vec<Vec<i64>>, Vec<Vec<i64>>);

/// Scores held per task: queries are processed in strips of at most this many (64 MiB).
const STRIP_ELEMS: usize = 1 << 24;

/// Metrics in a fixed order plus the per-query ranks they were computed from.
#[derive(Debug, Clone)]
pub struct RecallReport {
    /// `("i2t_R@1", ..), .., ("i2t_mAP@1", ..), .., ("i2t_median_rank", ..),
    /// ("i2t_mean_rank", ..), then the same for "t2i", then ("i2t_skipped_images", count)`. Recall is a fraction in `[0, 1]`;
    /// ranks are 1-based (1 = the positive came first), the median as `numpy.median`.
    pub metrics: Vec<(String, f64)>,
    /// 0-based rank of each image's best caption; -1 for an image without captions.
    pub i2t_ranks: Vec<i64>,
    /// 0-based rank of each caption's image.
    pub t2i_ranks: Vec<i64>,
    pub skipped_images: usize,
}

/// Rank of each query's best positive among all candidates (-1 when it has none).
///
/// `positives(q)` lists the candidate indices that count as correct for query q.
pub fn ranks<'p>(
    queries: &Embeddings<'_>,
    candidates: &Embeddings<'_>,
    positives: &(dyn Fn(usize) -> &'p [usize] + Sync),
    names: (&str, &str),
    num_threads: Option<usize>,
) -> Result<Vec<i64>> {
    let all = positive_ranks(queries, candidates, positives, names, num_threads)?;
    Ok(all.iter().map(|r| r.first().copied().unwrap_or(-1)).collect())
}

/// The ranks of all of each query's positives, ascending (empty when it has none).
pub fn positive_ranks<'p>(
    queries: &Embeddings<'_>,
    candidates: &Embeddings<'_>,
    positives: &(dyn Fn(usize) -> &'p [usize] + Sync),
    names: (&str, &str),
    num_threads: Option<usize>,
) -> Result<Vec<Vec<i64>>> {
    check_dims(queries, names.0, candidates, names.1)?;
    let _blas = crate::blas::SingleThreaded::new();
    let (nq, n) = (queries.rows(), candidates.rows());
    if nq == 0 {
        return Ok(Vec::new());
    }
    let strip = QUERY_BLOCK.min((STRIP_ELEMS / n.max(1)).max(1));
    let blocks = nq.div_ceil(strip);
    let kernel = Kernel::for_queries(nq);
    let per_block = run_parallel(num_threads, |parallel| {
        map_range(parallel, blocks, |b| -> Result<Vec<Vec<i64>>> {
            let (q0, q1) = (b * strip, ((b + 1) * strip).min(nq));
            let m = q1 - q0;
            let (mut scratch_q, mut scratch_c) = (Vec::new(), Vec::new());
            let qb = queries.block(q0, q1, &mut scratch_q);
            let prepared = Queries::new(kernel, &qb, m, queries.dim());
            let mut scores = vec![0.0f32; m * n];
            let mut c0 = 0;
            while c0 < n {
                let c1 = (c0 + DB_BLOCK).min(n);
                score_block(kernel, &prepared, candidates, (c0, c1), &mut scores[c0..], n, &mut scratch_c);
                check_finite_tile(&scores[c0..], m, c1 - c0, n, q0, c0, names)?;
                c0 = c1;
            }
            Ok((0..m).map(|i| ranks_of(&scores[i * n..(i + 1) * n], positives(q0 + i))).collect())
        })
    })?;
    let mut out = Vec::with_capacity(nq);
    for block in per_block {
        out.extend(block?);
    }
    Ok(out)
}

/// `a` sorts before `b` in a stable descending sort of `row`.
#[inline]
fn precedes(row: &[f32], a: usize, b: usize) -> bool {
    row[a] > row[b] || (row[a] == row[b] && a < b)
}

/// Stable-descending-sort position of the best of `positives` in `row`; -1 if none.
#[cfg(test)]
fn rank_of(row: &[f32], positives: &[usize]) -> i64 {
    ranks_of(row, positives).first().copied().unwrap_or(-1)
}

/// Stable-descending-sort positions of all `positives` in `row`, ascending.
fn ranks_of(row: &[f32], positives: &[usize]) -> Vec<i64> {
    // One vectorised counting pass per positive is fastest for a handful (COCO: 5); the
    // binary search below is O(N log P) for the rare query with very many positives.
    let single = |p: usize| {
        let s = row[p];
        let above = row.iter().fold(0usize, |n, &x| n + usize::from(x > s));
        let tied_before = row[..p].iter().fold(0usize, |n, &x| n + usize::from(x == s));
        (above + tied_before) as i64
    };
    match positives {
        [] => Vec::new(),
        _ if positives.len() <= 32 => {
            let mut sorted = positives.to_vec();
            sorted.sort_unstable();
            sorted.dedup();
            let mut r: Vec<i64> = sorted.into_iter().map(single).collect();
            r.sort_unstable();
            r
        }
        _ => {
            // Positives in sorted order; candidate j lands before positives first..P, where
            // `first` is found by binary search, so one pass counts them all (difference
            // array). A positive before another is counted like any other candidate.
            let mut sorted = positives.to_vec();
            sorted.sort_unstable_by(|&a, &b| if precedes(row, a, b) { std::cmp::Ordering::Less } else { std::cmp::Ordering::Greater });
            sorted.dedup();
            let last = *sorted.last().expect("non-empty");
            let mut starts = vec![0i64; sorted.len() + 1];
            for (j, &x) in row.iter().enumerate() {
                if x < row[last] {
                    continue; // below every positive: precedes none
                }
                let first = sorted.partition_point(|&p| !precedes(row, j, p));
                starts[first] += 1;
            }
            let mut acc = 0;
            sorted.iter().enumerate().map(|(k, _)| {
                acc += starts[k];
                acc
            }).collect()
        }
    }
}

/// AP@K of one query from its positives' ascending 0-based ranks (see the module doc).
fn average_precision(ranks: &[i64], k: usize) -> f64 {
    let sum: f64 = ranks
        .iter()
        .enumerate()
        .take_while(|&(_, &r)| (r as u64) < k as u64)
        .map(|(hit, &r)| (hit + 1) as f64 / (r + 1) as f64)
        .sum();
    sum / ranks.len().min(k) as f64
}

/// Recall@K (fraction), mAP@K, median and mean 1-based rank over the queries that have
/// positives (`ranks[q]`: all of query q's positive ranks, ascending).
fn summarize(prefix: &str, ranks: &[Vec<i64>], ks: &[usize], out: &mut Vec<(String, f64)>) {
    let with_pos: Vec<&Vec<i64>> = ranks.iter().filter(|r| !r.is_empty()).collect();
    let mut valid: Vec<i64> = with_pos.iter().map(|r| r[0]).collect();
    let count = valid.len() as f64;
    for &k in ks {
        let hits = valid.iter().filter(|&&r| (r as u64) < k as u64).count();
        out.push((format!("{prefix}_R@{k}"), hits as f64 / count));
    }
    for &k in ks {
        let ap: f64 = with_pos.iter().map(|r| average_precision(r, k)).sum();
        out.push((format!("{prefix}_mAP@{k}"), ap / count));
    }
    valid.sort_unstable();
    let median = match valid.len() {
        0 => f64::NAN,
        len if len % 2 == 1 => valid[len / 2] as f64 + 1.0,
        len => (valid[len / 2 - 1] + valid[len / 2]) as f64 / 2.0 + 1.0,
    };
    let mean = valid.iter().map(|&r| r as f64 + 1.0).sum::<f64>() / count;
    out.push((format!("{prefix}_median_rank"), median));
    out.push((format!("{prefix}_mean_rank"), mean));
}

/// Most positives a row may have for the fused counting pass (`fused::count_row`); COCO
/// and Flickr30k have 5 captions per image, a few COCO images 6 or 7.
const FUSED_MAX: usize = 8;

/// Ranks of one query's positives, counted tile by tile from the positives' scores known
/// up front, with exactly the result of `ranks_of` on the full row when those scores are
/// the row's (which `one_pass` verifies bit for bit).
struct RankCounter {
    /// Few positives (`<= 32`): ascending index, one counting pass per positive and tile.
    /// Many: in stable-descending-sort order, one pass with a binary search per candidate.
    positives: Vec<(usize, f32)>,
    /// Few: the rank so far of each positive. Many: difference array (see `ranks_of`).
    counts: Vec<i64>,
    many: bool,
    /// What the fused pass reads, inline: counters sit in one array that the hardware
    /// prefetches as the pass walks a tile's rows; reaching each row's `positives` through
    /// its own heap allocation (cache misses on every row of every tile) made the pass's
    /// bookkeeping 1.6% of recall time, now 0.7% (perf, 5k x 25k).
    fused: FusedPositives,
}

/// A row's positives (at most `FUSED_MAX`, see `RankCounter::fused_len`) as the fused pass
/// needs them.
struct FusedPositives {
    index: [usize; FUSED_MAX],
    score: [f32; FUSED_MAX],
    /// Strict lower bounds for the candidates from the last `refresh` up to `next`: a
    /// candidate precedes positive p when its score is above p's, or equal with a lower
    /// index; outside p's own tile that is `x > limit`, with limit = the score (candidates
    /// after p) or the next float below it (candidates before p: `x >= s` is
    /// `x > s.next_down()` for finite s). Kept across tiles: rebuilding them for every row
    /// and tile was half of the pass's time (perf, 5k x 25k).
    limits: [f32; FUSED_MAX],
    /// The first positive at or after the candidates the limits hold for (`usize::MAX`: none).
    next: usize,
    /// Per-lane counts of the fused pass, one set per positive; `finish` adds them.
    lanes: [[u32; 8]; FUSED_MAX],
}

impl FusedPositives {
    /// Limits for the candidates from `c` on (the first `len` positives).
    fn refresh(&mut self, len: usize, c: usize) {
        for k in 0..len {
            self.limits[k] = if self.index[k] < c { self.score[k] } else { self.score[k].next_down() };
        }
        self.next = self.index[..len].iter().copied().filter(|&p| p >= c).min().unwrap_or(usize::MAX);
    }
}

impl RankCounter {
    /// Counter for candidates from `c_start` on.
    fn new(positives: &[usize], score: &[f32], c_start: usize) -> Self {
        let mut p: Vec<(usize, f32)> = positives.iter().map(|&t| (t, score[t])).collect();
        let many = p.len() > 32;
        if many {
            let precedes = |a: &(usize, f32), b: &(usize, f32)| a.1 > b.1 || (a.1 == b.1 && a.0 < b.0);
            p.sort_unstable_by(|a, b| if precedes(a, b) { std::cmp::Ordering::Less } else { std::cmp::Ordering::Greater });
            p.dedup_by_key(|x| x.0);
        } else {
            p.sort_unstable_by_key(|x| x.0);
            p.dedup_by_key(|x| x.0);
        }
        let counts = vec![0i64; p.len() + usize::from(many)];
        let mut fused = FusedPositives {
            index: [0; FUSED_MAX],
            score: [0.0; FUSED_MAX],
            limits: [0.0; FUSED_MAX],
            next: usize::MAX,
            lanes: [[0; 8]; FUSED_MAX],
        };
        for (k, &(t, s)) in p.iter().take(FUSED_MAX).enumerate() {
            (fused.index[k], fused.score[k]) = (t, s);
        }
        let mut counter = Self { positives: p, counts, many, fused };
        if let Some(len) = counter.fused_len() {
            counter.fused.refresh(len, c_start);
        }
        counter
    }

    /// Continue with candidates from `c` on (after those counted so far; a chunked scan
    /// skips the candidates other parts count).
    fn seek(&mut self, c: usize) {
        if let Some(len) = self.fused_len() {
            self.fused.refresh(len, c);
        }
    }

    /// Add the counts of `other`, the same query's counter over other candidates.
    fn merge(&mut self, other: &Self) {
        for (c, o) in self.counts.iter_mut().zip(&other.counts) {
            *c += o;
        }
        for (lanes, o) in self.fused.lanes.iter_mut().zip(&other.fused.lanes) {
            for (l, o) in lanes.iter_mut().zip(o) {
                *l += o;
            }
        }
    }

    /// How many positives the fused pass counts, or None when there are too many for it.
    /// (Reads only the `Vec` header, which sits inline in the counter.)
    #[inline(always)]
    fn fused_len(&self) -> Option<usize> {
        let n = self.positives.len();
        (!self.many && n <= FUSED_MAX).then_some(n)
    }

    /// Count candidates `c0..c0 + seg.len()` (scores `seg`, all finite).
    #[inline(always)]
    fn add(&mut self, seg: &[f32], c0: usize) {
        if !self.many {
            for (count, &(p, s)) in self.counts.iter_mut().zip(&self.positives) {
                // Candidates before p precede it when >= its score, from p on when >.
                let split = p.saturating_sub(c0).min(seg.len());
                let ge = seg[..split].iter().fold(0u32, |n, &x| n + u32::from(x >= s));
                let gt = seg[split..].iter().fold(0u32, |n, &x| n + u32::from(x > s));
                *count += i64::from(ge + gt);
            }
            return;
        }
        let worst = self.positives.last().expect("many positives").1;
        for (jj, &x) in seg.iter().enumerate() {
            if x < worst {
                continue; // below every positive: precedes none
            }
            let j = c0 + jj;
            let first = self.positives.partition_point(|&(p, s)| !(x > s || (x == s && j < p)));
            self.counts[first] += 1;
        }
    }

    /// The fused pass's positives for candidates up to `c1` (the tiles advance in order),
    /// or None when it does not apply: many positives, or one of them inside the tile (whose
    /// row then counts with `add`, and the limits move past the tile).
    #[inline(always)]
    fn fused_for(&mut self, c1: usize) -> Option<(&mut FusedPositives, usize)> {
        let len = self.fused_len()?;
        if self.fused.next < c1 {
            self.fused.refresh(len, c1);
            return None;
        }
        Some((&mut self.fused, len))
    }

    /// The positives' ranks, ascending.
    fn finish(self) -> Vec<i64> {
        let fused = self.fused_len().unwrap_or(0);
        let mut counts = self.counts;
        if self.many {
            let mut acc = 0;
            counts.pop();
            for c in &mut counts {
                acc += *c;
                *c = acc;
            }
        } else {
            for (count, lanes) in counts.iter_mut().zip(&self.fused.lanes[..fused]) {
                *count += lanes.iter().map(|&c| i64::from(c)).sum::<i64>();
            }
            counts.sort_unstable();
        }
        counts
    }
}

/// What `one_pass` updates from one tile: the strip's counters (one per row) and, per text
/// of the tile, its t2i threshold and count of preceding images.
struct TileCounts<'a, 'p> {
    counters: &'a mut [RankCounter],
    captions_of: &'a (dyn Fn(usize) -> &'p [usize] + Sync),
    positive: &'a [f32],
    threshold: &'a mut [f32],
    before: &'a mut [u32],
}

/// Everything `one_pass` counts on one finished tile (rows `r0..`, texts `c0..c0 + w`):
/// each row's i2t ranks and each text's count of preceding images (t2i). Returns whether
/// every positive score equals its value in the tile.
///
/// Rows whose captions all lie outside the tile (all but a few) take the fused pass
/// compiled for `FUSED` (a `fused` ISA, or `fused::NONE`); the others count with
/// `RankCounter::add`, set their captions' t2i thresholds and check the positive scores.
/// Scores are known finite here (see `one_pass`).
#[inline(always)]
fn count_tile_rows<const FUSED: u8>(tile: &[f32], w: usize, (r0, c0): (usize, usize), counts: &mut TileCounts<'_, '_>) -> bool {
    let TileCounts { counters, captions_of, positive, threshold, before } = counts;
    let mut consistent = true;
    for (r, (row, counter)) in tile.chunks_exact(w).zip(counters.iter_mut()).enumerate() {
        if FUSED != fused::NONE {
            if let Some((positives, len)) = counter.fused_for(c0 + w) {
                // SAFETY: `FUSED` is an ISA the CPU has (`count_tile`); lengths are the tile's width.
                unsafe { fused::count_row::<FUSED>(row, positives, len, threshold, before) };
                continue;
            }
        }
        counter.add(row, c0);
        for &t in captions_of(r0 + r) {
            if let Some(j) = t.checked_sub(c0).filter(|&j| j < w) {
                consistent &= row[j].to_bits() == positive[t].to_bits();
                threshold[j] = positive[t];
            }
        }
        for ((count, &x), &th) in before.iter_mut().zip(row).zip(&**threshold) {
            *count += u32::from(x > th);
        }
    }
    consistent
}

/// `count_tile_rows` compiled for AVX2, with the fused pass (the per-positive loops of
/// rows with more than `FUSED_MAX` captions are vectorised for AVX2 too).
///
/// # Safety
/// The CPU supports AVX2.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
unsafe fn count_tile_avx2(tile: &[f32], w: usize, at: (usize, usize), counts: &mut TileCounts<'_, '_>) -> bool {
    count_tile_rows::<{ fused::AVX2 }>(tile, w, at, counts)
}

/// `count_tile_rows` compiled for AVX-512, with its fused pass.
///
/// # Safety
/// The CPU supports AVX-512F and AVX2.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx2")]
unsafe fn count_tile_avx512(tile: &[f32], w: usize, at: (usize, usize), counts: &mut TileCounts<'_, '_>) -> bool {
    count_tile_rows::<{ fused::AVX512 }>(tile, w, at, counts)
}

fn count_tile(tile: &[f32], w: usize, at: (usize, usize), counts: &mut TileCounts<'_, '_>) -> bool {
    match fused::isa() {
        // SAFETY: `fused::isa` detected the ISA.
        #[cfg(target_arch = "x86_64")]
        fused::AVX512 => unsafe { count_tile_avx512(tile, w, at, counts) },
        #[cfg(target_arch = "x86_64")]
        fused::AVX2 => unsafe { count_tile_avx2(tile, w, at, counts) },
        _ => count_tile_rows::<{ fused::NONE }>(tile, w, at, counts),
    }
}

/// One pass over a score row for all of its (at most `FUSED_MAX`) positives and the t2i
/// counts: each score is loaded once and compared with every limit and with its column's
/// threshold. A pass per positive plus a t2i pass and a finiteness pass cost 5.1% on top
/// of the product in recall; this one 3.1%, bookkeeping included, and 2.2% since the limits
/// are kept across tiles (perf, 5k x 25k, D = 512, 1 thread; Zen 3). On the Sapphire
/// Rapids-class Xeon the AVX2 pass took 3.6% and the AVX-512 one takes 2.75%.
mod fused {
    use super::FusedPositives;

    /// The instruction sets of the fused pass (a const parameter of `count_row`).
    pub(super) const NONE: u8 = 0;
    pub(super) const AVX2: u8 = 1;
    pub(super) const AVX512: u8 = 2;

    /// The widest fused pass for this process: AVX-512 where the product runs the AVX-512
    /// kernel (so `FERROCLIP_GEMM=avx2` runs all of recall as on an AVX2 CPU), else AVX2
    /// where the CPU has it.
    pub(super) fn isa() -> u8 {
        #[cfg(target_arch = "x86_64")]
        {
            if crate::gemm::isa() == Some(crate::gemm::Isa::Avx512) {
                return AVX512;
            }
            if std::arch::is_x86_feature_detected!("avx2") {
                return AVX2;
            }
        }
        NONE
    }

    /// `lanes[k]` += candidates of `row` above `limits[k]` (spread over 8 lanes) for the
    /// first `len` positives, and `before[j] += row[j] > threshold[j]`.
    ///
    /// # Safety
    /// The CPU supports `ISA` (AVX2 or AVX512, as `isa()` returns them); `len <=
    /// FUSED_MAX`; `threshold` and `before` are at least as long as `row`.
    #[cfg(target_arch = "x86_64")]
    pub(super) unsafe fn count_row<const ISA: u8>(row: &[f32], p: &mut FusedPositives, len: usize, threshold: &[f32], before: &mut [u32]) {
        debug_assert!(threshold.len() >= row.len() && before.len() >= row.len());
        macro_rules! by_len {
            ($f:ident) => {
                match len {
                    0 => $f::<0>(row, p, threshold, before),
                    1 => $f::<1>(row, p, threshold, before),
                    2 => $f::<2>(row, p, threshold, before),
                    3 => $f::<3>(row, p, threshold, before),
                    4 => $f::<4>(row, p, threshold, before),
                    5 => $f::<5>(row, p, threshold, before),
                    6 => $f::<6>(row, p, threshold, before),
                    7 => $f::<7>(row, p, threshold, before),
                    8 => $f::<8>(row, p, threshold, before),
                    n => unreachable!("{n} positives exceed FUSED_MAX"),
                }
            };
        }
        match ISA {
            AVX512 => by_len!(avx512),
            AVX2 => by_len!(avx2),
            _ => unreachable!("no fused pass for ISA {ISA}"),
        }
    }

    #[cfg(not(target_arch = "x86_64"))]
    pub(super) unsafe fn count_row<const ISA: u8>(_: &[f32], _: &mut FusedPositives, _: usize, _: &[f32], _: &mut [u32]) {
        unreachable!("fused counting needs AVX2");
    }

    #[allow(clippy::needless_range_loop, reason = "SIMD lanes: acc[k], limit[k] and p.lanes[k] move together; the unrolled index shape is the intended code")]
    #[cfg(target_arch = "x86_64")]
    #[target_feature(enable = "avx2")]
    unsafe fn avx2<const P: usize>(row: &[f32], p: &mut FusedPositives, threshold: &[f32], before: &mut [u32]) {
        use std::arch::x86_64::{
            __m256i, _mm256_castps_si256, _mm256_cmp_ps, _mm256_loadu_ps, _mm256_loadu_si256, _mm256_set1_ps, _mm256_storeu_si256,
            _mm256_sub_epi32, _CMP_GT_OQ,
        };
        let limit = std::array::from_fn::<_, P, _>(|k| _mm256_set1_ps(p.limits[k]));
        let mut acc: [__m256i; P] = std::array::from_fn(|k| _mm256_loadu_si256(p.lanes[k].as_ptr().cast()));
        let (x, th, b) = (row.as_ptr(), threshold.as_ptr(), before.as_mut_ptr());
        let body = row.len() / 8 * 8;
        for j in (0..body).step_by(8) {
            let v = _mm256_loadu_ps(x.add(j));
            // A true compare is all ones (-1): subtracting it counts one.
            for k in 0..P {
                acc[k] = _mm256_sub_epi32(acc[k], _mm256_castps_si256(_mm256_cmp_ps::<_CMP_GT_OQ>(v, limit[k])));
            }
            let above = _mm256_castps_si256(_mm256_cmp_ps::<_CMP_GT_OQ>(v, _mm256_loadu_ps(th.add(j))));
            _mm256_storeu_si256(b.add(j).cast(), _mm256_sub_epi32(_mm256_loadu_si256(b.add(j).cast()), above));
        }
        for k in 0..P {
            _mm256_storeu_si256(p.lanes[k].as_mut_ptr().cast(), acc[k]);
        }
        for j in body..row.len() {
            let v = row[j];
            for k in 0..P {
                p.lanes[k][0] += u32::from(v > p.limits[k]);
            }
            before[j] += u32::from(v > threshold[j]);
        }
    }

    /// `avx2` in 16 lanes: compares into mask registers and masked adds (one instruction
    /// per count instead of a compare and a subtract), the tail under a mask; the 16 lanes
    /// fold into the 8 stored ones at the end of the row.
    #[allow(clippy::needless_range_loop, reason = "SIMD lanes: acc[k], limit[k] and p.lanes[k] move together; the unrolled index shape is the intended code")]
    #[cfg(target_arch = "x86_64")]
    #[target_feature(enable = "avx512f,avx2")]
    unsafe fn avx512<const P: usize>(row: &[f32], p: &mut FusedPositives, threshold: &[f32], before: &mut [u32]) {
        use std::arch::x86_64::{
            __m512i, __mmask16, _mm256_add_epi32, _mm256_loadu_si256, _mm256_storeu_si256, _mm512_castsi512_si256, _mm512_extracti64x4_epi64,
            _mm512_mask_add_epi32, _mm512_mask_cmp_ps_mask, _mm512_mask_storeu_epi32, _mm512_maskz_loadu_epi32, _mm512_maskz_loadu_ps,
            _mm512_set1_epi32, _mm512_set1_ps, _mm512_zextsi256_si512, _CMP_GT_OQ,
        };
        let limit = std::array::from_fn::<_, P, _>(|k| _mm512_set1_ps(p.limits[k]));
        let mut acc: [__m512i; P] = std::array::from_fn(|k| _mm512_zextsi256_si512(_mm256_loadu_si256(p.lanes[k].as_ptr().cast())));
        let one = _mm512_set1_epi32(1);
        let (x, th, b) = (row.as_ptr(), threshold.as_ptr(), before.as_mut_ptr());
        let mut step = |j: usize, live: __mmask16| {
            let v = _mm512_maskz_loadu_ps(live, x.add(j));
            for k in 0..P {
                acc[k] = _mm512_mask_add_epi32(acc[k], _mm512_mask_cmp_ps_mask::<_CMP_GT_OQ>(live, v, limit[k]), acc[k], one);
            }
            let above = _mm512_mask_cmp_ps_mask::<_CMP_GT_OQ>(live, v, _mm512_maskz_loadu_ps(live, th.add(j)));
            let count = _mm512_maskz_loadu_epi32(live, b.add(j).cast());
            _mm512_mask_storeu_epi32(b.add(j).cast(), live, _mm512_mask_add_epi32(count, above, count, one));
        };
        let body = row.len() / 16 * 16;
        for j in (0..body).step_by(16) {
            step(j, !0);
        }
        if body < row.len() {
            step(body, ((1u32 << (row.len() - body)) - 1) as __mmask16);
        }
        for k in 0..P {
            let folded = _mm256_add_epi32(_mm512_castsi512_si256(acc[k]), _mm512_extracti64x4_epi64::<1>(acc[k]));
            _mm256_storeu_si256(p.lanes[k].as_mut_ptr().cast(), folded);
        }
    }
}

/// Captions scored per sgemm call in `positive_scores`: enough to amortise a call's fixed
/// cost (packing buffers, one 16-row micro-tile for a single image), few enough that the
/// cross pairs computed for nothing stay small.
const POSITIVE_GROUP_CAPTIONS: usize = 64;

/// The largest magnitude in `x`, or None when an element is NaN or infinite. (The
/// magnitude bits of a float order like its magnitude, NaN and Inf above all finite
/// values; an integer max vectorises where `f32::max` does not.)
fn max_magnitude(x: &[f32]) -> Option<f32> {
    let max = x.iter().fold(0u32, |m, v| m.max(v.to_bits() & 0x7fff_ffff));
    (max < 0x7f80_0000).then(|| f32::from_bits(max))
}

/// What `one_pass` needs before scanning: each text's score with its image, and the
/// largest magnitude in the images and in the texts (None where an element is not finite),
/// which bounds every score.
struct Positives {
    score: Vec<f32>,
    max_image: Option<f32>,
    max_text: Option<f32>,
}

/// Texts per task in `positive_pairs` (512 KiB of f32 at D = 512).
#[cfg(target_arch = "x86_64")]
const PAIR_TEXTS: usize = 256;

/// `Positives` for `one_pass`, by the kernels' own pair scores (`gemm::pair_dots`) where
/// they run, else by small products (`positive_products`). `image_row(i)` is image i as
/// f32 (the strips `one_pass` prepared).
fn positive_scores<'p, 'r>(
    images: &Embeddings<'_>,
    texts: &Embeddings<'_>,
    image_of: &[usize],
    captions_of: &(dyn Fn(usize) -> &'p [usize] + Sync),
    image_row: &(dyn Fn(usize) -> &'r [f32] + Sync),
    num_threads: Option<usize>,
) -> Result<Positives> {
    #[cfg(target_arch = "x86_64")]
    if let Some(p) = positive_pairs(images, texts, image_of, image_row, num_threads)? {
        return Ok(p);
    }
    let _ = (image_of, image_row);
    positive_products(images, texts, captions_of, num_threads)
}

/// `Positives` from each text and its image only, `PAIR_TEXTS` texts per task (None where
/// `gemm::pair_dots` does not run). The texts' magnitudes come from the loads that score
/// them, the images' from a pass over their f32 rows (10 MB for 5k images at D = 512, a
/// tenth of the texts' bytes, and then in cache for the scores).
#[cfg(target_arch = "x86_64")]
fn positive_pairs<'r>(
    images: &Embeddings<'_>,
    texts: &Embeddings<'_>,
    image_of: &[usize],
    image_row: &(dyn Fn(usize) -> &'r [f32] + Sync),
    num_threads: Option<usize>,
) -> Result<Option<Positives>> {
    if crate::gemm::isa().is_none() {
        return Ok(None);
    }
    let (ni, nt, dim) = (images.rows(), texts.rows(), images.dim());
    let tasks = nt.div_ceil(PAIR_TEXTS);
    let worst = |a: Option<f32>, b: Option<f32>| a.zip(b).map(|(a, b)| a.max(b));
    let images_parts = run_parallel(num_threads, |parallel| {
        map_range(parallel, ni.div_ceil(PAIR_TEXTS), |b| {
            (b * PAIR_TEXTS..((b + 1) * PAIR_TEXTS).min(ni)).map(|i| max_magnitude(image_row(i))).fold(Some(0.0f32), worst)
        })
    })?;
    let per_task = run_parallel(num_threads, |parallel| {
        map_range(parallel, tasks, |task| {
            let (t0, t1) = (task * PAIR_TEXTS, ((task + 1) * PAIR_TEXTS).min(nt));
            let mut scratch = Vec::new();
            let block = texts.block(t0, t1, &mut scratch);
            let rows: Vec<&[f32]> = image_of[t0..t1].iter().map(|&i| image_row(i)).collect();
            let mut score = vec![0.0f32; t1 - t0];
            let max_text = crate::gemm::pair_dots(&rows, &block, dim, &mut score).expect("a kernel runs (checked above)");
            (score, max_text)
        })
    })?;
    let mut positives = Positives { score: Vec::with_capacity(nt), max_image: Some(0.0), max_text: Some(0.0) };
    for (score, max_text) in per_task {
        positives.score.extend(score);
        positives.max_text = worst(positives.max_text, max_text);
    }
    positives.max_image = images_parts.into_iter().fold(Some(0.0), worst);
    Ok(Some(positives))
}

/// `Positives` by the same sgemm as the tiles (for `matrixmultiply`, the product where
/// no kernel of ours runs), in one parallel pass over both inputs:
/// consecutive images are grouped until their captions reach `POSITIVE_GROUP_CAPTIONS`,
/// and one `images x their captions` product per group gives every pair of the group; only
/// the image-caption pairs are kept. For COCO's 5 captions that is ~13x the FLOPs of the
/// positives alone (still ~1% of the main product), against 5k one-row calls at ~9 us
/// each before. Captions stored in image order (the usual layout) are read in place;
/// others are gathered. The magnitudes come from the rows the products read, so the inputs
/// are read once here (a separate pass for them took 5 ms of a 0.85 s recall on 2 threads).
fn positive_products<'p>(
    images: &Embeddings<'_>,
    texts: &Embeddings<'_>,
    captions_of: &(dyn Fn(usize) -> &'p [usize] + Sync),
    num_threads: Option<usize>,
) -> Result<Positives> {
    let (ni, dim) = (images.rows(), images.dim());
    let mut groups = Vec::new(); // image ranges
    let mut i0 = 0;
    while i0 < ni {
        let (mut i1, mut caps) = (i0, 0);
        while i1 < ni && (i1 == i0 || caps + captions_of(i1).len() <= POSITIVE_GROUP_CAPTIONS) {
            caps += captions_of(i1).len();
            i1 += 1;
        }
        groups.push((i0, i1));
        i0 = i1;
    }
    let per_group = run_parallel(num_threads, |parallel| {
        map_range(parallel, groups.len(), |g| {
            let (i0, i1) = groups[g];
            let (mut img_scratch, mut txt_scratch) = (Vec::new(), Vec::new());
            let q = images.block(i0, i1, &mut img_scratch);
            let max_image = max_magnitude(&q);
            let caps: Vec<usize> = (i0..i1).flat_map(|i| captions_of(i).iter().copied()).collect();
            let Some(&first) = caps.first() else {
                return (Vec::new(), max_image, Some(0.0));
            };
            let in_place = caps.iter().enumerate().all(|(c, &t)| t == first + c);
            let txt = if in_place {
                texts.block(first, first + caps.len(), &mut txt_scratch)
            } else {
                let mut one = Vec::new();
                for &t in &caps {
                    txt_scratch.extend_from_slice(&texts.block(t, t + 1, &mut one));
                }
                std::borrow::Cow::Borrowed(&txt_scratch[..])
            };
            let max_text = max_magnitude(&txt);
            let mut out = vec![0.0f32; (i1 - i0) * caps.len()];
            block_product(Kernel::Gemm, &q, i1 - i0, &txt, caps.len(), dim, &mut out, caps.len());
            // Image i's captions are the columns from `col` on, in `captions_of(i)` order.
            let mut col = 0;
            let mut kept = Vec::with_capacity(caps.len());
            for i in i0..i1 {
                for &t in captions_of(i) {
                    kept.push((t, out[(i - i0) * caps.len() + col]));
                    col += 1;
                }
            }
            (kept, max_image, max_text)
        })
    })?;
    let mut positives = Positives { score: vec![0.0f32; texts.rows()], max_image: Some(0.0), max_text: Some(0.0) };
    // Every text is a caption of one image (checked by the caller), so the groups read all rows.
    let worst = |a: Option<f32>, b: Option<f32>| a.zip(b).map(|(a, b)| a.max(b));
    for (kept, max_image, max_text) in per_group {
        for (t, v) in kept {
            positives.score[t] = v;
        }
        positives.max_image = worst(positives.max_image, max_image);
        positives.max_text = worst(positives.max_text, max_text);
    }
    Ok(positives)
}

thread_local! {
    /// `one_pass`'s score tile, reused by the tasks a thread runs.
    static TILE: std::cell::Cell<Vec<f32>> = const { std::cell::Cell::new(Vec::new()) };
}

/// Parts of the texts per strip in `one_pass` on more than one thread.
const TEXT_PARTS: usize = 4;

/// Most bytes of texts `one_pass` packs for the product at once (4096 texts at D = 512),
/// in one buffer reused chunk after chunk: a packed copy of all 25k texts of a 5k x 25k
/// recall (51 MB) cost ~1% of its time in page faults, and a large caption set's would
/// double its memory.
const PACKED_TEXT_BYTES: usize = 8 << 20;

/// Images per strip in `one_pass`: about two `QUERY_BLOCK`s when that still leaves every
/// thread four strips, one otherwise, in a number of equal strips that is a multiple of
/// the thread count, so the threads finish together (5000 images on 2 threads: 10 strips
/// of 500, not 9 of 512 and one of 392). The taller strip halves how often the product
/// packs each text block (measured with matrixmultiply, whose strided gather was ~20% of
/// the product at 256 rows: recall 5k x 25k, 1 thread, AVX-512, 0.75 -> 0.72-0.73 s; with
/// ferroclip's own kernels the texts are now packed once per call, and the height sets how
/// often the packed texts stream past). Any height gives the same scores (the built-in
/// product is tile-independent).
fn one_pass_strip(ni: usize, num_threads: Option<usize>) -> usize {
    let threads = crate::batch::resolve_num_threads(num_threads);
    let tall = 2 * QUERY_BLOCK;
    let target = if ni >= 4 * tall * threads { tall } else { QUERY_BLOCK };
    let strips = ni.div_ceil(target).next_multiple_of(threads);
    ni.div_ceil(strips).max(1)
}

/// Both directions from ONE image x text product (half the FLOPs of scoring each way).
///
/// Image strips (`one_pass_strip`) are scored against the texts (all of them, or one of
/// `TEXT_PARTS` parts per task on several threads) one tile of `Kernel::scan_width` texts at
/// a time, and both directions are counted while the tile is in cache (a strip's scores
/// never exist as a whole): each image's ranks of its captions (i2t, `RankCounter`, summed
/// over parts), and each text's count, over strips, of the images that precede its own
/// (t2i): scoring above its positive score, or equal with a lower index. Both need each
/// text's positive score up front, with the product's bits (`positive_scores`: the kernels'
/// pair scores, or small products on `matrixmultiply`). sgemm's value for a pair does not depend on the tile (fixed k
/// order), and we verify it: every positive score is compared bit for bit with the one in
/// its tile, and on any difference (or for tiny inputs that use the dot kernel) this
/// returns `None` and the caller scores each direction separately.
///
/// The texts are packed for the product once per call (`PackedDb`), chunk after chunk of
/// at most `packed_bytes` in one reused buffer, not once per strip; each strip's images
/// are packed once, for all chunks and parts.
fn one_pass<'p>(
    images: &Embeddings<'_>,
    texts: &Embeddings<'_>,
    image_of: &[usize],
    captions_of: &(dyn Fn(usize) -> &'p [usize] + Sync),
    num_threads: Option<usize>,
    packed_bytes: usize,
) -> Result<Option<RanksPair>> {
    let (ni, nt, dim) = (images.rows(), texts.rows(), images.dim());
    // Always the built-in product here, even when a BLAS serves the other products: the positive
    // scores below must equal their values inside the tiles bit for bit, and a BLAS sgemm
    // does not promise that (OpenBLAS's edge kernels sum in another order, see `blas`).
    if Kernel::for_queries(ni) == Kernel::Dot || Kernel::for_queries(nt) == Kernel::Dot || dim == 0 {
        return Ok(None);
    }
    let strip = one_pass_strip(ni, num_threads);
    let blocks = ni.div_ceil(strip);
    // Each strip's images prepared once (widened from f16, packed for the kernel), for all
    // of its parts and chunks: packed per task, the images were 1.4% of recall 5k x 25k on
    // 2 threads (4 parts per strip; perf). Costs a copy of the images.
    let strip_rows = |b: usize| (b * strip, ((b + 1) * strip).min(ni));
    let rows: Vec<_> = run_parallel(num_threads, |parallel| {
        map_range(parallel, blocks, |b| {
            let (r0, r1) = strip_rows(b);
            images.rows_f32(r0, r1)
        })
    })?;
    let image_row = |i: usize| &rows[i / strip][(i % strip) * dim..][..dim];
    let Positives { score: positive, max_image, max_text } = positive_scores(images, texts, image_of, captions_of, &image_row, num_threads)?;
    // When no score can overflow, the tiles need no finiteness test: |score| <= dim * max|a|
    // * max|b| * (1 + eps)^dim, and the factor 2 covers the rounding for any dim below ~10^7.
    let surely_finite = match (max_image, max_text) {
        (Some(a), Some(b)) => 2.0 * dim as f64 * f64::from(a) * f64::from(b) < f64::from(f32::MAX),
        _ => false,
    };
    let width = Kernel::Gemm.scan_width().min(nt);
    let threads = crate::batch::resolve_num_threads(num_threads);
    // Chunks of whole tiles, at least one.
    let chunk = (packed_bytes / (4 * dim)).max(width) / width * width;
    let prepared: Vec<Queries<'_>> = run_parallel(num_threads, |parallel| {
        map_range(parallel, blocks, |b| {
            let (r0, r1) = strip_rows(b);
            Queries::new(Kernel::Gemm, &rows[b], r1 - r0, dim)
        })
    })?;
    // Each (strip, part)'s counters, carried from chunk to chunk (`RankCounter::seek`) and
    // merged at the end; a slot is empty until its first task.
    let slots: Vec<std::sync::Mutex<Vec<RankCounter>>> = (0..blocks * TEXT_PARTS).map(|_| Default::default()).collect();
    let mut before = vec![0i64; nt];
    let mut packed = PackedDb::new(Kernel::Gemm, texts);
    for t0 in (0..nt).step_by(chunk) {
        let t1 = (t0 + chunk).min(nt);
        // Each strip's texts in a few parts, counted as separate tasks and merged: a
        // thread that finishes early takes a part of a strip rather than waiting for a
        // whole one (a shared host's neighbours, or unequal cores, slow one thread at a
        // time). Query reads stay per tile, so the parts cost only their counters. Recall
        // 5k x 25k on 2 threads: 0.81-0.88 s instead of 0.88-0.93 (medians of 16
        // interleaved runs).
        let tiles = (t1 - t0).div_ceil(width);
        let parts = if threads > 1 { TEXT_PARTS.min(tiles) } else { 1 };
        let part_range = |part: usize| {
            let (lo, hi) = block_part(part, parts, tiles, width, t1 - t0);
            (t0 + lo, t0 + hi)
        };
        let per_task = run_parallel(num_threads, |parallel| {
            packed.prepare((t0, t1), parallel);
            let packed = &packed;
            map_range(parallel, blocks * parts, |task| -> Result<(Vec<u32>, bool)> {
                let (b, part) = (task / parts, task % parts);
                let (c_lo, c_hi) = part_range(part);
                let ((r0, r1), prepared) = (strip_rows(b), &prepared[b]);
                let m = r1 - r0;
                let mut scratch_c = Vec::new();
                let mut slot = slots[b * TEXT_PARTS + part].lock().unwrap_or_else(std::sync::PoisonError::into_inner);
                if slot.is_empty() {
                    *slot = (r0..r1).map(|i| RankCounter::new(captions_of(i), &positive, c_lo)).collect();
                } else {
                    slot.iter_mut().for_each(|c| c.seek(c_lo));
                }
                let counters = &mut *slot;
                // This thread's tile buffer, reused by its tasks (a fresh 256 KiB tile per
                // task was a page-faulted or zeroed allocation 70 times per 5k x 25k recall).
                let mut tile_buf = TILE.with(std::cell::Cell::take);
                if tile_buf.len() < m * width {
                    tile_buf.resize(m * width, 0.0);
                }
                let tile = &mut tile_buf[..m * width];
                let mut threshold = vec![0.0f32; width];
                let mut before = vec![0u32; c_hi - c_lo];
                let mut consistent = true;
                let mut c0 = c_lo;
                while c0 < c_hi {
                    let c1 = (c0 + width).min(c_hi);
                    let w = c1 - c0;
                    score_packed(Kernel::Gemm, prepared, packed, (c0, c1), tile, w, &mut scratch_c);
                    if !surely_finite {
                        if let Err(e) = check_finite_tile(tile, m, w, w, r0, c0, ("image_emb", "text_emb")) {
                            TILE.with(|t| t.set(tile_buf));
                            return Err(e);
                        }
                    }
                    // Image i precedes text t's image when it scores above it, or equal
                    // with i lower: `x > threshold[t]`, the threshold being one float below
                    // the positive score while i < image_of[t] (so equal counts), the score
                    // itself from then on (set when the tile reaches t's image row).
                    for (th, (&p, &img)) in threshold.iter_mut().zip(positive[c0..c1].iter().zip(&image_of[c0..c1])) {
                        *th = if r0 < img { p.next_down() } else { p };
                    }
                    let mut counts = TileCounts {
                        counters: &mut *counters,
                        captions_of,
                        positive: &positive,
                        threshold: &mut threshold[..w],
                        before: &mut before[c0 - c_lo..c1 - c_lo],
                    };
                    consistent &= count_tile(&tile[..m * w], w, (r0, c0), &mut counts);
                    c0 = c1;
                }
                TILE.with(|t| t.set(tile_buf));
                Ok((before, consistent))
            })
        })?;
        for (task, result) in per_task.into_iter().enumerate() {
            let (counts, consistent) = result?;
            if !consistent {
                return Ok(None);
            }
            let (c_lo, _) = part_range(task % parts);
            for (total, c) in before[c_lo..].iter_mut().zip(counts) {
                *total += i64::from(c);
            }
        }
    }
    let mut i2t = Vec::with_capacity(ni);
    let mut slots = slots.into_iter().map(|s| s.into_inner().unwrap_or_else(std::sync::PoisonError::into_inner));
    for _ in 0..blocks {
        let mut parts = slots.by_ref().take(TEXT_PARTS);
        let mut counters = parts.next().expect("part 0 counts every strip");
        for other in parts.filter(|o| !o.is_empty()) {
            for (c, o) in counters.iter_mut().zip(&other) {
                c.merge(o);
            }
        }
        i2t.extend(counters.into_iter().map(RankCounter::finish));
    }
    Ok(Some((i2t, before.into_iter().map(|r| vec![r]).collect())))
}

/// Image-to-text and text-to-image retrieval metrics.
///
/// `text_to_image[t]` is the image that caption `t` describes. Errors on an empty caption
/// set, a caption pointing outside `0..images.rows()`, a K of 0, a dimension mismatch or
/// non-finite scores.
pub fn recall_at_k(
    images: &Embeddings<'_>,
    texts: &Embeddings<'_>,
    text_to_image: &[i64],
    ks: &[usize],
    num_threads: Option<usize>,
) -> Result<RecallReport> {
    check_dims(images, "image_emb", texts, "text_emb")?;
    let _blas = crate::blas::SingleThreaded::new();
    let (ni, nt) = (images.rows(), texts.rows());
    if nt == 0 {
        return Err(Error::Shape("text_emb holds no captions: recall is undefined".into()));
    }
    if text_to_image.len() != nt {
        return Err(Error::Shape(format!(
            "text_to_image has {} entries but text_emb has {nt} captions",
            text_to_image.len()
        )));
    }
    if let Some(&k) = ks.iter().find(|&&k| k == 0) {
        return Err(Error::InvalidArgument(format!("ks must be positive, got {k}")));
    }
    let mut image_of = Vec::with_capacity(nt);
    for (t, &i) in text_to_image.iter().enumerate() {
        match usize::try_from(i) {
            Ok(i) if i < ni => image_of.push([i]),
            _ => {
                return Err(Error::InvalidArgument(format!(
                    "text_to_image[{t}] = {i} is not an image index (image_emb has {ni} rows)"
                )))
            }
        }
    }
    // Captions of each image, in text order (CSR layout).
    let mut start = vec![0usize; ni + 1];
    for &[i] in &image_of {
        start[i + 1] += 1;
    }
    for i in 0..ni {
        start[i + 1] += start[i];
    }
    let mut fill = start.clone();
    let mut captions = vec![0usize; nt];
    for (t, &[i]) in image_of.iter().enumerate() {
        captions[fill[i]] = t;
        fill[i] += 1;
    }
    let captions_of = |i: usize| &captions[start[i]..start[i + 1]];
    let image_of_text = |t: usize| &image_of[t][..];

    let image_index: Vec<usize> = image_of.iter().map(|&[i]| i).collect();
    let (i2t, t2i) = match one_pass(images, texts, &image_index, &captions_of, num_threads, PACKED_TEXT_BYTES)? {
        Some(both) => both,
        None => (
            positive_ranks(images, texts, &captions_of, ("image_emb", "text_emb"), num_threads)?,
            positive_ranks(texts, images, &image_of_text, ("text_emb", "image_emb"), num_threads)?,
        ),
    };
    let skipped = i2t.iter().filter(|r| r.is_empty()).count();
    let mut metrics = Vec::new();
    summarize("i2t", &i2t, ks, &mut metrics);
    summarize("t2i", &t2i, ks, &mut metrics);
    metrics.push(("i2t_skipped_images".into(), skipped as f64));
    let best = |r: &Vec<Vec<i64>>| r.iter().map(|p| p.first().copied().unwrap_or(-1)).collect();
    Ok(RecallReport { metrics, i2t_ranks: best(&i2t), t2i_ranks: best(&t2i), skipped_images: skipped })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::similarity::similarity;
    use half::f16;

    fn metric(r: &RecallReport, key: &str) -> f64 {
        r.metrics.iter().find(|(k, _)| k == key).unwrap_or_else(|| panic!("no {key}")).1
    }

    #[test]
    fn rank_counts_higher_and_earlier_ties() {
        let row = [0.5, 0.9, 0.5, 0.1, 0.5];
        assert_eq!(rank_of(&row, &[2]), 2); // 0.9 above, index 0 ties before
        assert_eq!(rank_of(&row, &[4, 2]), 2); // best positive: equal score, lower index
        assert_eq!(rank_of(&row, &[3, 1]), 0);
        assert_eq!(rank_of(&row, &[]), -1);
        assert_eq!(rank_of(&[0.0, -0.0], &[1]), 1); // 0.0 == -0.0, as numpy sorts them
    }

    /// Brute force: sort each similarity row (stable), find the first positive.
    fn brute(s: &[f32], n: usize, positives: &dyn Fn(usize) -> Vec<usize>, nq: usize) -> Vec<i64> {
        (0..nq)
            .map(|q| {
                let row = &s[q * n..(q + 1) * n];
                let mut order: Vec<usize> = (0..n).collect();
                order.sort_by(|&a, &b| row[b].partial_cmp(&row[a]).unwrap());
                let pos = positives(q);
                order.iter().position(|j| pos.contains(j)).map_or(-1, |r| r as i64)
            })
            .collect()
    }

    #[test]
    fn matches_brute_force_with_multi_captions() {
        let (ni, nt, d) = (7, 13, 3);
        let img: Vec<f32> = (0..ni * d).map(|x| ((x * 7 + 3) % 5) as f32 - 2.0).collect();
        let txt: Vec<f32> = (0..nt * d).map(|x| ((x * 11 + 1) % 5) as f32 - 2.0).collect();
        let t2i: Vec<i64> = (0..nt as i64).map(|t| (t * 5) % 6).collect(); // image 6: none
        let ei = Embeddings::f32(&img, ni, d, "image_emb").unwrap();
        let et = Embeddings::f32(&txt, nt, d, "text_emb").unwrap();
        let r = recall_at_k(&ei, &et, &t2i, &[1, 3], Some(2)).unwrap();
        let s_it = similarity(&ei, &et, Some(1)).unwrap();
        let s_ti = similarity(&et, &ei, Some(1)).unwrap();
        let caps = |i: usize| (0..nt).filter(|&t| t2i[t] as usize == i).collect::<Vec<_>>();
        assert_eq!(r.i2t_ranks, brute(&s_it, nt, &caps, ni));
        assert_eq!(r.t2i_ranks, brute(&s_ti, ni, &|t| vec![t2i[t] as usize], nt));
        assert_eq!(r.skipped_images, 1);
        assert_eq!(r.i2t_ranks[6], -1);
        let hits = r.t2i_ranks.iter().filter(|&&x| x < 3).count() as f64;
        assert_eq!(metric(&r, "t2i_R@3"), hits / nt as f64);
        assert_eq!(metric(&r, "i2t_skipped_images"), 1.0);
    }

    /// Brute force: every positive's position in a full stable sort.
    fn brute_all(row: &[f32], positives: &[usize]) -> Vec<i64> {
        let mut order: Vec<usize> = (0..row.len()).collect();
        order.sort_by(|&a, &b| row[b].partial_cmp(&row[a]).unwrap());
        let mut r: Vec<i64> = positives.iter().map(|p| order.iter().position(|j| j == p).unwrap() as i64).collect();
        r.sort_unstable();
        r
    }

    #[test]
    fn all_positive_ranks_match_a_full_sort_with_ties() {
        let mut x = 12345u32;
        for trial in 0..300 {
            let n = 1 + trial % 40;
            let row: Vec<f32> = (0..n)
                .map(|_| {
                    x = x.wrapping_mul(1_103_515_245).wrapping_add(12345);
                    ((x >> 16) % 4) as f32 - 1.5
                })
                .collect();
            let positives: Vec<usize> = (0..n).filter(|j| (j * 7 + trial) % 3 == 0).collect();
            assert_eq!(ranks_of(&row, &positives), brute_all(&row, &positives), "{row:?} {positives:?}");
            let n = n + 60; // more than 32 positives: the binary-search path
            let row: Vec<f32> = (0..n).map(|j| ((j * 5 + trial) % 4) as f32).collect();
            let positives: Vec<usize> = (0..n).filter(|j| (j + trial) % 2 == 0).collect();
            assert_eq!(ranks_of(&row, &positives), brute_all(&row, &positives), "{row:?} {positives:?}");
        }
    }

    #[test]
    fn average_precision_by_hand() {
        // Positives at 0-based ranks 0, 2, 3 (P = 3): precision 1/1, 2/3, 3/4.
        assert_eq!(average_precision(&[0, 2, 3], 10), (1.0 + 2.0 / 3.0 + 0.75) / 3.0);
        assert_eq!(average_precision(&[0, 2, 3], 3), (1.0 + 2.0 / 3.0) / 3.0);
        assert_eq!(average_precision(&[0, 2, 3], 1), 1.0); // min(K, P) = 1
        assert_eq!(average_precision(&[4], 5), 0.2);
        assert_eq!(average_precision(&[5], 5), 0.0);
    }

    /// The fused pass of each instruction set this CPU has counts exactly what scalar
    /// comparisons count, for every number of positives and row lengths with and without
    /// a tail, with ties (and -0.0 beside 0.0) at the limits and thresholds.
    #[test]
    fn fused_passes_match_scalar_counts() {
        #[allow(unused_mut)]
        let mut isas: Vec<u8> = Vec::new();
        #[cfg(target_arch = "x86_64")]
        {
            if std::arch::is_x86_feature_detected!("avx2") {
                isas.push(fused::AVX2);
                if std::arch::is_x86_feature_detected!("avx512f") {
                    isas.push(fused::AVX512);
                }
            }
        }
        eprintln!("fused passes tested on this CPU: {isas:?} (1 = AVX2, 2 = AVX-512)");
        let level = |x: usize| [-1.0f32, -0.0, 0.0, 0.5, 1.0][(x * 2_654_435_761) % 5];
        for &isa in &isas {
            for len in 0..=FUSED_MAX {
                for n in [0, 1, 7, 8, 9, 15, 16, 17, 31, 128, 133, 300] {
                    let row: Vec<f32> = (0..n).map(|j| level(j * 3 + len)).collect();
                    let threshold: Vec<f32> = (0..n).map(|j| level(j * 7 + 1)).collect();
                    let mut before: Vec<u32> = (0..n).map(|j| (j % 4) as u32).collect();
                    let mut p = FusedPositives { index: [0; FUSED_MAX], score: [0.0; FUSED_MAX], limits: [0.0; FUSED_MAX], next: usize::MAX, lanes: [[0; 8]; FUSED_MAX] };
                    for k in 0..FUSED_MAX {
                        p.limits[k] = level(k + 2);
                        p.lanes[k] = std::array::from_fn(|l| (k + l) as u32);
                    }
                    let want_lanes: Vec<u64> = (0..FUSED_MAX)
                        .map(|k| {
                            let start: u64 = p.lanes[k].iter().map(|&c| u64::from(c)).sum();
                            start + if k < len { row.iter().filter(|&&x| x > p.limits[k]).count() as u64 } else { 0 }
                        })
                        .collect();
                    let want_before: Vec<u32> = before.iter().zip(&row).zip(&threshold).map(|((&c, &x), &t)| c + u32::from(x > t)).collect();
                    #[cfg(target_arch = "x86_64")]
                    unsafe {
                        match isa {
                            fused::AVX512 => fused::count_row::<{ fused::AVX512 }>(&row, &mut p, len, &threshold, &mut before),
                            _ => fused::count_row::<{ fused::AVX2 }>(&row, &mut p, len, &threshold, &mut before),
                        }
                    }
                    let got_lanes: Vec<u64> = p.lanes.iter().map(|l| l.iter().map(|&c| u64::from(c)).sum()).collect();
                    assert_eq!(got_lanes, want_lanes, "ISA {isa}, {len} positives, row of {n}");
                    assert_eq!(before, want_before, "ISA {isa}, {len} positives, row of {n}");
                }
            }
        }
    }

    #[test]
    fn one_pass_equals_scoring_each_direction() {
        // Strips of images x all texts, ties everywhere (3 levels), images without captions.
        // Then real values of a long dimension: sgemm must give a pair the same bits alone
        // (positive scores) as inside a tile, or `one_pass` would return None.
        for (d, real) in [(5, false), (300, true)] {
            check_one_pass(2 * QUERY_BLOCK + 9, 600, d, real, &|t, ni| (t * 31) % (ni - 4));
        }
        // Several text tiles, and images with many captions (over 32: the binary-search
        // counter) next to images with a few, with and without ties.
        let many = |t: usize, ni: usize| if t.is_multiple_of(3) { (t / 3) % 7 } else { (t * 31) % (ni - 4) };
        for (d, real) in [(3, false), (40, true)] {
            check_one_pass(QUERY_BLOCK + 9, 2 * DB_BLOCK + 50, d, real, &many);
        }
        // Images with 1, 3, 5, .. captions: the fused counting pass (up to 8), the
        // per-positive passes (9 to 32) and the binary search (over 32), with ties.
        let growing = |t: usize, ni: usize| (3 * (t as f64).sqrt() as usize) % ni;
        for (d, real) in [(2, false), (16, true)] {
            check_one_pass(QUERY_BLOCK + 9, 1203, d, real, &growing);
        }
        // Enough images for the tall strips on one thread (two threads keep short ones).
        for (d, real) in [(3, false), (24, true)] {
            check_one_pass(8 * QUERY_BLOCK + 9, 700, d, real, &|t, ni| (t * 7) % ni);
        }
    }

    fn check_one_pass(ni: usize, nt: usize, d: usize, real: bool, image_of: &dyn Fn(usize, usize) -> usize) {
        let value = |x: usize, a: usize, b: usize| if real { ((x * a + b) as f32 * 0.618).sin() } else { ((x * a + b) % 3) as f32 - 1.0 };
        let img: Vec<f32> = (0..ni * d).map(|x| value(x, 7, 3)).collect();
        let txt: Vec<f32> = (0..nt * d).map(|x| value(x, 13, 5)).collect();
        let t2i: Vec<usize> = (0..nt).map(|t| image_of(t, ni)).collect();
        let ei = Embeddings::f32(&img, ni, d, "image_emb").unwrap();
        let et = Embeddings::f32(&txt, nt, d, "text_emb").unwrap();
        let mut caps = vec![Vec::new(); ni];
        for (t, &i) in t2i.iter().enumerate() {
            caps[i].push(t);
        }
        let captions_of = |i: usize| &caps[i][..];
        let single: Vec<[usize; 1]> = t2i.iter().map(|&i| [i]).collect();
        let image_of_text = |t: usize| &single[t][..];
        // And with float16 storage (widened for the product, strip by strip and chunk by chunk).
        let (img16, txt16): (Vec<f16>, Vec<f16>) = (img.iter().map(|&x| f16::from_f32(x)).collect(), txt.iter().map(|&x| f16::from_f32(x)).collect());
        let ei16 = Embeddings::f16(&img16, ni, d, "image_emb").unwrap();
        let et16 = Embeddings::f16(&txt16, nt, d, "text_emb").unwrap();
        for (ei, et, dtype) in [(&ei, &et, "f32"), (&ei16, &et16, "f16")] {
            let want_i2t = positive_ranks(ei, et, &captions_of, ("a", "b"), Some(1)).unwrap();
            let want_t2i = positive_ranks(et, ei, &image_of_text, ("b", "a"), Some(1)).unwrap();
            // The texts packed at once, a tile at a time, and in chunks of two tiles.
            let two_tiles = 2 * Kernel::Gemm.scan_width() * 4 * d + 1;
            for packed_bytes in [PACKED_TEXT_BYTES, 1, two_tiles] {
                for threads in [1, 2] {
                    let got = one_pass(ei, et, &t2i, &captions_of, Some(threads), packed_bytes).unwrap();
                    let (i2t, t2i_r) = got.expect("sgemm is tile-independent");
                    assert_eq!(i2t, want_i2t, "i2t, {dtype}, {packed_bytes} bytes packed, {threads} threads");
                    assert_eq!(t2i_r, want_t2i, "t2i, {dtype}, {packed_bytes} bytes packed, {threads} threads");
                }
            }
        }
    }

    #[test]
    fn perfect_retrieval_and_median() {
        // Orthogonal one-hot pairs: every query finds its positive first.
        let e = [1.0f32, 0.0, 0.0, 1.0];
        let ei = Embeddings::f32(&e, 2, 2, "image_emb").unwrap();
        let et = Embeddings::f32(&e, 2, 2, "text_emb").unwrap();
        let r = recall_at_k(&ei, &et, &[0, 1], &[1], None).unwrap();
        assert_eq!(metric(&r, "i2t_R@1"), 1.0);
        assert_eq!(metric(&r, "t2i_median_rank"), 1.0);
        assert_eq!(metric(&r, "t2i_mean_rank"), 1.0);
        let mut out = Vec::new();
        summarize("x", &[vec![0], vec![3], vec![], vec![1], vec![5]], &[2], &mut out);
        let want = [("x_R@2", 0.5), ("x_mAP@2", (1.0 + 0.5) / 4.0), ("x_median_rank", 3.0), ("x_mean_rank", 3.25)];
        assert_eq!(out, want.map(|(k, v)| (k.to_string(), v)).to_vec());
    }

    #[test]
    fn inf_in_a_text_is_reported_with_its_pair() {
        // Found by the counting pass (one_pass), reported as the first bad pair of its tile.
        let (ni, nt, d) = (QUERY_BLOCK + 5, DB_BLOCK + 20, 4);
        let img: Vec<f32> = (0..ni * d).map(|x| (x % 3) as f32 - 1.0).collect();
        let mut txt: Vec<f32> = (0..nt * d).map(|x| (x % 5) as f32 - 2.0).collect();
        txt[(DB_BLOCK + 3) * d + 2] = f32::INFINITY;
        let t2i: Vec<i64> = (0..nt as i64).map(|t| t % ni as i64).collect();
        let ei = Embeddings::f32(&img, ni, d, "image_emb").unwrap();
        let et = Embeddings::f32(&txt, nt, d, "text_emb").unwrap();
        for threads in [1, 2] {
            let err = recall_at_k(&ei, &et, &t2i, &[1], Some(threads)).unwrap_err().to_string();
            assert!(err.contains("image_emb[0]") && err.contains(&format!("text_emb[{}]", DB_BLOCK + 3)), "{err}");
        }
    }

    #[test]
    fn large_finite_scores_pass_and_overflow_is_reported() {
        // Magnitudes whose bound (dim * max|a| * max|b|) exceeds f32::MAX send every tile
        // through the finiteness test; finite scores must pass it, an overflow must not.
        let (ni, nt, d) = (QUERY_BLOCK + 5, 600, 4);
        let mut img: Vec<f32> = (0..ni * d).map(|x| (x % 3) as f32 - 1.0).collect();
        let mut txt: Vec<f32> = (0..nt * d).map(|x| (x % 5) as f32 - 2.0).collect();
        img[0] = 1e20; // image 0, coordinate 0
        txt[3 * d + 1] = 1e20; // text 3, coordinate 1: never multiplied by image 0's 1e20
        let t2i: Vec<i64> = (0..nt as i64).map(|t| t % ni as i64).collect();
        let et = Embeddings::f32(&txt, nt, d, "text_emb").unwrap();
        let ei = Embeddings::f32(&img, ni, d, "image_emb").unwrap();
        let r = recall_at_k(&ei, &et, &t2i, &[1], Some(1)).unwrap();
        let s_it = similarity(&ei, &et, Some(1)).unwrap();
        assert!(s_it.iter().all(|s| s.is_finite()));
        let caps = |i: usize| (0..nt).filter(|&t| t2i[t] as usize == i).collect::<Vec<_>>();
        assert_eq!(r.i2t_ranks, brute(&s_it, nt, &caps, ni));
        txt[5 * d] = 1e20; // text 5, coordinate 0: 1e40 with image 0
        let et = Embeddings::f32(&txt, nt, d, "text_emb").unwrap();
        let err = recall_at_k(&ei, &et, &t2i, &[1], Some(1)).unwrap_err().to_string();
        assert!(err.contains("image_emb[0]") && err.contains("text_emb[5]"), "{err}");
    }

    #[test]
    fn bad_mapping_and_ks_are_errors() {
        let e = [1.0f32, 0.0, 0.0, 1.0];
        let ei = Embeddings::f32(&e, 2, 2, "image_emb").unwrap();
        let et = Embeddings::f32(&e, 2, 2, "text_emb").unwrap();
        let err = recall_at_k(&ei, &et, &[0, 2], &[1], None).unwrap_err().to_string();
        assert!(err.contains("text_to_image[1] = 2"), "{err}");
        let err = recall_at_k(&ei, &et, &[0, -1], &[1], None).unwrap_err().to_string();
        assert!(err.contains("text_to_image[1] = -1"), "{err}");
        assert!(recall_at_k(&ei, &et, &[0], &[1], None).is_err());
        assert!(recall_at_k(&ei, &et, &[0, 1], &[0], None).is_err());
        let none = Embeddings::f32(&[], 0, 2, "text_emb").unwrap();
        assert!(recall_at_k(&ei, &none, &[], &[1], None).is_err());
    }
}
