//! The machine's limits, measured, for the benchmarks' floors: the clock, the FMA peak,
//! and the read bandwidth of the memory bus.
//!
//! A benchmark ratio means little without the limit beside it: "90% of what this core can
//! do" survives a change of machine, "1.2x numpy" does not. These loops are the simplest
//! code that reaches each limit; nothing in the library depends on them.

use std::time::Instant;

/// What `cpu_peak` measured.
#[derive(Clone, Copy, Debug)]
pub struct CpuPeak {
    /// Core clock while running the FMA loop's neighbour, from a chain of dependent
    /// register adds (1 cycle each on every x86-64 core).
    pub clock_ghz: f64,
    /// f32 lanes of the widest vector the kernels use here (16 with AVX-512, 8 with AVX2).
    pub lanes: usize,
    /// Vector FMAs retired per cycle by independent chains (the FMA units), rounded.
    pub fma_per_cycle: usize,
    /// Measured f32 GFLOP/s of independent FMA chains on one core.
    pub measured_gflops: f64,
    /// `clock_ghz * lanes * 2 * fma_per_cycle`: the core's arithmetic limit.
    pub theoretical_gflops: f64,
}

#[cfg(target_arch = "x86_64")]
fn clock_ghz() -> f64 {
    let adds: u64 = 400_000_000;
    let t = Instant::now();
    // SAFETY: register arithmetic only. Register-register adds: an add of an immediate may
    // be folded at rename on recent Intel cores, which would count twice the clock.
    unsafe {
        std::arch::asm!(
            "2:",
            "add {x}, {one}", "add {x}, {one}", "add {x}, {one}", "add {x}, {one}",
            "add {x}, {one}", "add {x}, {one}", "add {x}, {one}", "add {x}, {one}",
            "sub {n}, 8",
            "jnz 2b",
            x = inout(reg) 0u64 => _,
            one = in(reg) 1u64,
            n = inout(reg) adds => _,
            options(nomem, nostack),
        );
    }
    adds as f64 / t.elapsed().as_secs_f64() / 1e9
}

/// Seconds for `iters` x 12 independent FMAs on 16-lane registers.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
unsafe fn fma_loop_avx512(iters: u64) -> f64 {
    let t = Instant::now();
    std::arch::asm!(
        "vxorps zmm0, zmm0, zmm0", "vxorps zmm1, zmm1, zmm1",
        "2:",
        "vfmadd231ps zmm2, zmm0, zmm1", "vfmadd231ps zmm3, zmm0, zmm1", "vfmadd231ps zmm4, zmm0, zmm1",
        "vfmadd231ps zmm5, zmm0, zmm1", "vfmadd231ps zmm6, zmm0, zmm1", "vfmadd231ps zmm7, zmm0, zmm1",
        "vfmadd231ps zmm8, zmm0, zmm1", "vfmadd231ps zmm9, zmm0, zmm1", "vfmadd231ps zmm10, zmm0, zmm1",
        "vfmadd231ps zmm11, zmm0, zmm1", "vfmadd231ps zmm12, zmm0, zmm1", "vfmadd231ps zmm13, zmm0, zmm1",
        "sub {n}, 1",
        "jnz 2b",
        n = inout(reg) iters => _,
        out("zmm0") _, out("zmm1") _, out("zmm2") _, out("zmm3") _, out("zmm4") _, out("zmm5") _, out("zmm6") _,
        out("zmm7") _, out("zmm8") _, out("zmm9") _, out("zmm10") _, out("zmm11") _, out("zmm12") _, out("zmm13") _,
        options(nomem, nostack),
    );
    t.elapsed().as_secs_f64()
}

/// Seconds for `iters` x 12 independent FMAs on 8-lane registers.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn fma_loop_avx2(iters: u64) -> f64 {
    let t = Instant::now();
    std::arch::asm!(
        "vxorps ymm0, ymm0, ymm0", "vxorps ymm1, ymm1, ymm1",
        "2:",
        "vfmadd231ps ymm2, ymm0, ymm1", "vfmadd231ps ymm3, ymm0, ymm1", "vfmadd231ps ymm4, ymm0, ymm1",
        "vfmadd231ps ymm5, ymm0, ymm1", "vfmadd231ps ymm6, ymm0, ymm1", "vfmadd231ps ymm7, ymm0, ymm1",
        "vfmadd231ps ymm8, ymm0, ymm1", "vfmadd231ps ymm9, ymm0, ymm1", "vfmadd231ps ymm10, ymm0, ymm1",
        "vfmadd231ps ymm11, ymm0, ymm1", "vfmadd231ps ymm12, ymm0, ymm1", "vfmadd231ps ymm13, ymm0, ymm1",
        "sub {n}, 1",
        "jnz 2b",
        n = inout(reg) iters => _,
        out("ymm0") _, out("ymm1") _, out("ymm2") _, out("ymm3") _, out("ymm4") _, out("ymm5") _, out("ymm6") _,
        out("ymm7") _, out("ymm8") _, out("ymm9") _, out("ymm10") _, out("ymm11") _, out("ymm12") _, out("ymm13") _,
        options(nomem, nostack),
    );
    t.elapsed().as_secs_f64()
}

/// The clock and the FMA peak of one core, best of `rounds` (each ~0.1 s): `None` without
/// AVX2 + FMA (or off x86-64).
#[must_use]
pub fn cpu_peak(rounds: usize) -> Option<CpuPeak> {
    #[cfg(target_arch = "x86_64")]
    {
        let avx512 = is_x86_feature_detected!("avx512f");
        if !(avx512 || (is_x86_feature_detected!("avx2") && is_x86_feature_detected!("fma"))) {
            return None;
        }
        let lanes = if avx512 { 16 } else { 8 };
        let iters = 30_000_000u64;
        let (mut clock, mut best) = (0.0f64, f64::INFINITY);
        for _ in 0..rounds.max(1) {
            clock = clock.max(clock_ghz());
            // SAFETY: the features were detected above.
            let t = unsafe { if avx512 { fma_loop_avx512(iters) } else { fma_loop_avx2(iters) } };
            best = best.min(t);
        }
        let measured = (iters * 12 * lanes as u64 * 2) as f64 / best / 1e9;
        let fma_per_cycle = ((measured / (clock * lanes as f64 * 2.0)).round() as usize).max(1);
        Some(CpuPeak {
            clock_ghz: clock,
            lanes,
            fma_per_cycle,
            measured_gflops: measured,
            theoretical_gflops: clock * lanes as f64 * 2.0 * fma_per_cycle as f64,
        })
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        let _ = rounds;
        None
    }
}

/// Sum of `data` read as `S` sequential streams (equal parts), each prefetching `ahead`
/// bytes ahead of itself (0: none): two 64-byte lines per stream per step, each element
/// added to its own lane of the stream's 32 accumulators, so the adds vectorise into
/// independent chains and the loop is never what limits the rate.
#[inline(always)]
fn read_streams<const S: usize>(data: &[f32], ahead: usize) -> f32 {
    const STEP: usize = 32; // two 64-byte lines
    let part = data.len() / S / STEP * STEP;
    let mut acc = [[0.0f32; STEP]; S];
    let mut i = 0;
    while i < part {
        for (s, a) in acc.iter_mut().enumerate() {
            let at = s * part + i;
            #[cfg(target_arch = "x86_64")]
            if ahead > 0 {
                // SAFETY: a prefetch never faults; the address is computed without UB.
                unsafe {
                    std::arch::x86_64::_mm_prefetch::<{ std::arch::x86_64::_MM_HINT_T0 }>(
                        data.as_ptr().wrapping_add(at).cast::<i8>().wrapping_add(ahead),
                    );
                }
            }
            let x: &[f32; STEP] = data[at..at + STEP].try_into().expect("STEP elements");
            for l in 0..STEP {
                a[l] += x[l];
            }
        }
        i += STEP;
    }
    acc.iter().flatten().sum()
}

#[inline(always)]
fn read_portable(data: &[f32], streams: usize, ahead: usize) -> f32 {
    match streams {
        1 => read_streams::<1>(data, ahead),
        2 => read_streams::<2>(data, ahead),
        _ => read_streams::<4>(data, ahead),
    }
}

/// `read_portable` compiled for AVX2: 256-bit loads and adds.
///
/// # Safety
/// The CPU supports AVX2.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
unsafe fn read_avx2(data: &[f32], streams: usize, ahead: usize) -> f32 {
    read_portable(data, streams, ahead)
}

/// `read_portable` compiled for AVX-512: 512-bit loads and adds.
///
/// # Safety
/// The CPU supports AVX-512F.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
unsafe fn read_avx512(data: &[f32], streams: usize, ahead: usize) -> f32 {
    read_portable(data, streams, ahead)
}

/// The widest read loop the CPU runs (the lanes only change how many bytes one load
/// takes, never the sum: every element is added to the same accumulator in the same order).
fn read_once(data: &[f32], streams: usize, ahead: usize) -> f32 {
    #[cfg(target_arch = "x86_64")]
    {
        if std::arch::is_x86_feature_detected!("avx512f") {
            // SAFETY: AVX-512F was just detected.
            return unsafe { read_avx512(data, streams, ahead) };
        }
        if std::arch::is_x86_feature_detected!("avx2") {
            // SAFETY: AVX2 was just detected.
            return unsafe { read_avx2(data, streams, ahead) };
        }
    }
    read_portable(data, streams, ahead)
}

/// Read bandwidth in GB/s over `data` (make it far larger than the last-level cache) on
/// `threads` threads, each reading its share: the best over `rounds` and over the access
/// patterns a simple loop can use (1, 2 or 4 streams per thread, with and without software
/// prefetch 512 or 1024 bytes ahead), since which one the hardware serves best differs
/// between CPUs (see `dot::prefetch`).
#[must_use]
pub fn read_bandwidth(data: &[f32], threads: usize, rounds: usize) -> f64 {
    let threads = threads.max(1);
    let share = data.len() / threads / 128 * 128; // whole steps of 4 streams
    if share == 0 {
        return 0.0;
    }
    let mut best = f64::INFINITY;
    for _ in 0..rounds.max(1) {
        for (streams, ahead) in [(1, 0), (2, 0), (4, 0), (1, 512), (1, 1024), (2, 512), (2, 1024), (4, 512)] {
            let t = Instant::now();
            let sum: f32 = std::thread::scope(|s| {
                let parts: Vec<_> = (0..threads)
                    .map(|p| {
                        let chunk = &data[p * share..(p + 1) * share];
                        s.spawn(move || read_once(chunk, streams, ahead))
                    })
                    .collect();
                parts.into_iter().map(|h| h.join().unwrap_or(0.0)).sum()
            });
            std::hint::black_box(sum);
            best = best.min(t.elapsed().as_secs_f64());
        }
    }
    (share * threads * 4) as f64 / best / 1e9
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn peak_is_consistent_with_its_parts() {
        let Some(p) = cpu_peak(1) else { return };
        assert!(p.clock_ghz > 0.3 && p.clock_ghz < 10.0, "{p:?}");
        // Up to 4 FMA units exist; a host loaded during the clock loop reads the clock low
        // and the unit count high (6 seen under load), so the bound is loose: the formula is the test.
        assert!(p.fma_per_cycle >= 1 && p.fma_per_cycle <= 8, "{p:?}");
        let want = p.clock_ghz * p.lanes as f64 * 2.0 * p.fma_per_cycle as f64;
        assert!((p.theoretical_gflops - want).abs() < 1e-9, "{p:?}");
    }

    #[test]
    fn read_sums_every_element_once() {
        let data = vec![1.0f32; 64 * 40];
        for (streams, ahead) in [(1, 0), (4, 0), (4, 512)] {
            assert_eq!(read_once(&data, streams, ahead), (64 * 40) as f32, "{streams} {ahead}");
        }
        assert!(read_bandwidth(&data, 2, 1) > 0.0);
    }

    #[test]
    fn wide_read_loops_give_the_portable_sum_bit_for_bit() {
        // Values whose sums round: any change of order would show in the bits.
        let data: Vec<f32> = (0..64 * 97u32).map(|i| ((i.wrapping_mul(2_654_435_761) >> 7) as f32).sqrt() * 1e-3).collect();
        for streams in [1, 2, 4] {
            let want = read_portable(&data, streams, 0);
            assert_ne!(want, 0.0);
            #[cfg(target_arch = "x86_64")]
            {
                if std::arch::is_x86_feature_detected!("avx2") {
                    // SAFETY: detected.
                    assert_eq!(unsafe { read_avx2(&data, streams, 512) }.to_bits(), want.to_bits());
                }
                if std::arch::is_x86_feature_detected!("avx512f") {
                    // SAFETY: detected.
                    assert_eq!(unsafe { read_avx512(&data, streams, 0) }.to_bits(), want.to_bits());
                }
            }
            assert_eq!(read_once(&data, streams, 1024).to_bits(), want.to_bits());
        }
    }
}
