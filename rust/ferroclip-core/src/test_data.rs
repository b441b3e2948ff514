//! Deterministic test matrices shared by the retrieval modules' tests.

/// `len` small integers in `[-levels/2, levels/2)` from a 64-bit LCG: every product and
/// sum of a short dot product is exact in f32, so any summation order gives one answer,
/// and few levels give many exact ties.
pub(crate) fn small_ints(len: usize, seed: u64, levels: u64) -> Vec<f32> {
    const A: u64 = 6_364_136_223_846_793_005;
    const C: u64 = 1_442_695_040_888_963_407;
    let mut x = seed.wrapping_mul(A).wrapping_add(C);
    (0..len)
        .map(|_| {
            x = x.wrapping_mul(A).wrapping_add(C);
            ((x >> 33) % levels) as f32 - (levels / 2) as f32
        })
        .collect()
}
