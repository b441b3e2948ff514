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

/// `len` values in `[-1, 1)` from xorshift64: products and sums round, so a change of
/// summation order shows in the bits.
pub(crate) fn noise(len: usize, seed: u64) -> Vec<f32> {
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            ((x >> 40) as f32 / (1u64 << 24) as f32) * 2.0 - 1.0
        })
        .collect()
}
