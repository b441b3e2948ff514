//! Retrieval metrics for paired image/caption embeddings: Recall@K both ways, median and
//! mean rank, with any number of captions per image (COCO has five, Flickr30k five).
//!
//! A query's rank is the number of candidates that a stable descending sort puts before
//! its best positive: candidates scoring strictly higher, plus those scoring equal with a
//! lower index. That is one linear pass over the query's scores, no sort, and it matches
//! `argsort(-scores, kind="stable")` on the `similarity` scores exactly (same kernel).
//! Image-to-text counts an image as found at K if ANY of its captions is within K, i.e.
//! the rank of its best-placed caption; images without captions are skipped and counted.

use crate::batch::run_parallel;
use crate::error::{Error, Result};
use crate::similarity::{block_product, check_dims, check_finite_tile, map_range, Embeddings, Kernel, DB_BLOCK, QUERY_BLOCK};

/// Scores held per task: queries are processed in strips of at most this many (64 MiB).
const STRIP_ELEMS: usize = 1 << 24;

/// Metrics in a fixed order plus the per-query ranks they were computed from.
#[derive(Debug, Clone)]
pub struct RecallReport {
    /// `("i2t_R@1", ..), .., ("i2t_median_rank", ..), ("i2t_mean_rank", ..), then the same
    /// for "t2i", then ("i2t_skipped_images", count)`. Recall is a fraction in `[0, 1]`;
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
    check_dims(queries, names.0, candidates, names.1)?;
    let (nq, n) = (queries.rows(), candidates.rows());
    if nq == 0 {
        return Ok(Vec::new());
    }
    let strip = QUERY_BLOCK.min((STRIP_ELEMS / n.max(1)).max(1));
    let blocks = nq.div_ceil(strip);
    let per_block = run_parallel(num_threads, |parallel| {
        map_range(parallel, blocks, |b| -> Result<Vec<i64>> {
            let (q0, q1) = (b * strip, ((b + 1) * strip).min(nq));
            let m = q1 - q0;
            let (mut scratch_q, mut scratch_c) = (Vec::new(), Vec::new());
            let qb = queries.block(q0, q1, &mut scratch_q);
            let mut scores = vec![0.0f32; m * n];
            let mut c0 = 0;
            while c0 < n {
                let c1 = (c0 + DB_BLOCK).min(n);
                let cb = candidates.block(c0, c1, &mut scratch_c);
                block_product(Kernel::for_queries(nq), &qb, m, &cb, c1 - c0, queries.dim(), &mut scores[c0..], n);
                check_finite_tile(&scores[c0..], m, c1 - c0, n, q0, c0, names)?;
                c0 = c1;
            }
            Ok((0..m).map(|i| rank_of(&scores[i * n..(i + 1) * n], positives(q0 + i))).collect())
        })
    })?;
    let mut out = Vec::with_capacity(nq);
    for block in per_block {
        out.extend(block?);
    }
    Ok(out)
}

/// Stable-descending-sort position of the best of `positives` in `row`; -1 if none.
fn rank_of(row: &[f32], positives: &[usize]) -> i64 {
    let Some(&first) = positives.first() else { return -1 };
    // The best positive: highest score, ties to the lowest index (it sorts first).
    let best = positives[1..].iter().fold(first, |b, &p| {
        if row[p] > row[b] || (row[p] == row[b] && p < b) {
            p
        } else {
            b
        }
    });
    let s = row[best];
    let above = row.iter().filter(|&&x| x > s).count();
    let tied_before = row[..best].iter().filter(|&&x| x == s).count();
    (above + tied_before) as i64
}

/// Recall@K (fraction), median and mean 1-based rank over `ranks` (negatives skipped).
fn summarize(prefix: &str, ranks: &[i64], ks: &[usize], out: &mut Vec<(String, f64)>) {
    let mut valid: Vec<i64> = ranks.iter().copied().filter(|&r| r >= 0).collect();
    let count = valid.len() as f64;
    for &k in ks {
        let hits = valid.iter().filter(|&&r| (r as u64) < k as u64).count();
        out.push((format!("{prefix}_R@{k}"), hits as f64 / count));
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

    let i2t = ranks(images, texts, &captions_of, ("image_emb", "text_emb"), num_threads)?;
    let t2i = ranks(texts, images, &image_of_text, ("text_emb", "image_emb"), num_threads)?;
    let skipped = i2t.iter().filter(|&&r| r < 0).count();
    let mut metrics = Vec::new();
    summarize("i2t", &i2t, ks, &mut metrics);
    summarize("t2i", &t2i, ks, &mut metrics);
    metrics.push(("i2t_skipped_images".into(), skipped as f64));
    Ok(RecallReport { metrics, i2t_ranks: i2t, t2i_ranks: t2i, skipped_images: skipped })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::similarity::similarity;

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
        summarize("x", &[0, 3, -1, 1, 5], &[2], &mut out);
        assert_eq!(out, vec![("x_R@2".into(), 0.5), ("x_median_rank".into(), 3.0), ("x_mean_rank".into(), 3.25)]);
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
