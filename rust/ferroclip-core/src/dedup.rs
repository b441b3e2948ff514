//! Near-duplicate pairs: every `i < j` with `<e_i, e_j> >= threshold`, in blocks.
//!
//! A self-join over N embeddings has N^2/2 scores: 500 GB as an f32 matrix for N = 1M.
//! Instead each task takes one block of `QUERY_BLOCK` rows and scores it against the rows
//! from its own first row on, one L2-sized `QUERY_BLOCK x DB_BLOCK` tile at a time, with
//! the same kernel as `similarity` (so a pair's score equals `similarity(e, e)[i, j]` bit
//! for bit), and keeps only the pairs at or above the threshold. Memory is one tile per
//! thread plus the pairs found, which `max_pairs` caps so a low threshold cannot exhaust it.
//!
//! Output order is by `i`, then `j`, whatever the thread count.

use std::sync::atomic::{AtomicUsize, Ordering};

use crate::batch::run_parallel;
use crate::error::{Error, Result};
use crate::similarity::{check_finite_tile, map_range, score_block, Embeddings, Kernel, Queries, DB_BLOCK, QUERY_BLOCK};

/// Pairs `(left[p], right[p])` with `left[p] < right[p]` and their score `scores[p]`.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Pairs {
    pub left: Vec<i64>,
    pub right: Vec<i64>,
    pub scores: Vec<f32>,
}

/// All pairs `i < j` of rows of `emb` whose dot product is `>= threshold`, sorted by (i, j).
///
/// Errors when the threshold is not finite, when more than `max_pairs` pairs qualify
/// (nothing is returned then), and on non-finite scores (naming the pair).
pub fn near_duplicates(emb: &Embeddings<'_>, threshold: f32, max_pairs: usize, num_threads: Option<usize>) -> Result<Pairs> {
    if !threshold.is_finite() {
        return Err(Error::InvalidArgument(format!("threshold must be a finite number, got {threshold}")));
    }
    let n = emb.rows();
    let _blas = crate::blas::SingleThreaded::new();
    let kernel = Kernel::for_queries(n); // what `similarity(emb, emb)` uses: same bits
    let found = AtomicUsize::new(0);
    let too_many = || {
        Error::InvalidArgument(format!(
            "more than max_pairs={max_pairs} pairs score >= {threshold}: raise the threshold or max_pairs"
        ))
    };
    let blocks = n.div_ceil(QUERY_BLOCK);
    let per_block = run_parallel(num_threads, |parallel| {
        map_range(parallel, blocks, |b| -> Result<Vec<(u32, usize, f32)>> {
            let (r0, r1) = (b * QUERY_BLOCK, ((b + 1) * QUERY_BLOCK).min(n));
            let h = r1 - r0;
            let (mut scratch_q, mut scratch_d) = (Vec::new(), Vec::new());
            let qb = emb.block(r0, r1, &mut scratch_q);
            let prepared = Queries::new(kernel, &qb, h, emb.dim());
            let mut tile = vec![0.0f32; h * DB_BLOCK];
            // (row offset in block, column, score): compact while scanning.
            let mut pairs = Vec::new();
            let mut c0 = r0;
            while c0 < n {
                if found.load(Ordering::Relaxed) > max_pairs {
                    return Err(too_many());
                }
                let c1 = (c0 + DB_BLOCK).min(n);
                let w = c1 - c0;
                score_block(kernel, &prepared, emb, (c0, c1), &mut tile, w, &mut scratch_d);
                check_finite_tile(&tile, h, w, w, r0, c0, ("embeddings", "embeddings"))?;
                let before = pairs.len();
                for (i, row) in tile.chunks(w).take(h).enumerate() {
                    // Only the upper triangle: columns after row r0 + i.
                    let from = (r0 + i + 1).saturating_sub(c0).min(w);
                    for (j, &s) in row.iter().enumerate().skip(from) {
                        if s >= threshold {
                            pairs.push((i as u32, c0 + j, s));
                        }
                    }
                }
                found.fetch_add(pairs.len() - before, Ordering::Relaxed);
                c0 = c1;
            }
            pairs.sort_unstable_by_key(|&(i, j, _)| (i, j));
            Ok(pairs)
        })
    })?;
    if found.load(Ordering::Relaxed) > max_pairs {
        return Err(too_many());
    }
    let mut out = Pairs::default();
    for (b, block) in per_block.into_iter().enumerate() {
        for (i, j, s) in block? {
            out.left.push((b * QUERY_BLOCK) as i64 + i64::from(i));
            out.right.push(j as i64);
            out.scores.push(s);
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::similarity::similarity;
    use crate::test_data::small_ints;

    fn brute(emb: &Embeddings<'_>, threshold: f32) -> Pairs {
        let n = emb.rows();
        let s = similarity(emb, emb, Some(1)).unwrap();
        let mut out = Pairs::default();
        for i in 0..n {
            for j in i + 1..n {
                if s[i * n + j] >= threshold {
                    out.left.push(i as i64);
                    out.right.push(j as i64);
                    out.scores.push(s[i * n + j]);
                }
            }
        }
        out
    }

    #[test]
    fn matches_brute_force_across_blocks() {
        // Rows span several row and column blocks; few levels make many equal scores.
        for (n, dim) in [(QUERY_BLOCK + 37, 3), (2, 5), (DB_BLOCK + QUERY_BLOCK + 1, 4)] {
            let data = small_ints(n * dim, n as u64, 3);
            let emb = Embeddings::f32(&data, n, dim, "embeddings").unwrap();
            for threshold in [3.0, 4.0, 100.0] {
                let want = brute(&emb, threshold);
                for threads in [1, 3] {
                    assert_eq!(near_duplicates(&emb, threshold, usize::MAX, Some(threads)).unwrap(), want, "n={n} t={threshold}");
                }
            }
        }
    }

    #[test]
    fn threshold_is_inclusive_and_max_pairs_caps() {
        let data = [1.0f32, 0.0, 1.0, 0.0, 0.0, 1.0];
        let emb = Embeddings::f32(&data, 3, 2, "embeddings").unwrap();
        let p = near_duplicates(&emb, 1.0, 10, None).unwrap();
        assert_eq!((p.left, p.right, p.scores), (vec![0], vec![1], vec![1.0]));
        let p = near_duplicates(&emb, 0.0, 3, None).unwrap();
        assert_eq!(p.left.len(), 3);
        let err = near_duplicates(&emb, 0.0, 2, None).unwrap_err().to_string();
        assert!(err.contains("max_pairs=2"), "{err}");
        assert!(near_duplicates(&emb, f32::NAN, 2, None).is_err());
        let none = Embeddings::f32(&[], 0, 2, "embeddings").unwrap();
        assert_eq!(near_duplicates(&none, 0.5, 1, None).unwrap(), Pairs::default());
    }
}
