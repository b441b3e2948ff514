//! Counter-based randomness: every draw of a sample is a pure function of
//! `(seed, epoch, sample index, stream)`.
//!
//! A shared generator advanced by whichever thread gets there first would make the
//! augmentation of a sample depend on thread scheduling, worker count and what else is
//! in its batch. Hashing the sample's coordinates into the starting state of a small
//! SplitMix64 stream instead gives each sample (and each kind of draw, `Stream`) its own
//! sequence, so a run is reproducible however it is split up.

/// Which decision a stream feeds. Separate streams keep the crop boxes the same whether
/// or not colour jitter or grayscale are switched on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stream {
    CropBox = 1,
    Flip = 2,
    Jitter = 3,
    Grayscale = 4,
}

const GOLDEN: u64 = 0x9e37_79b9_7f4a_7c15;

/// SplitMix64's output function (Steele, Lea, Flood 2014): a bijective 64-bit mixer.
#[inline]
fn mix(mut z: u64) -> u64 {
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// The random stream of one sample for one kind of decision.
#[derive(Debug, Clone)]
pub struct SampleRng {
    state: u64,
}

impl SampleRng {
    #[must_use]
    pub fn new(seed: u64, epoch: u64, index: u64, stream: Stream) -> Self {
        // Chained mixing: each coordinate passes through a full avalanche before the next
        // is folded in, so nearby (epoch, index) pairs start far apart.
        let mut h = mix(seed.wrapping_add(GOLDEN));
        h = mix(h ^ epoch.wrapping_mul(GOLDEN));
        h = mix(h ^ index);
        h = mix(h ^ (stream as u64).wrapping_mul(0xd6e8_feb8_6659_fd93));
        Self { state: h }
    }

    #[inline]
    pub fn next_u64(&mut self) -> u64 {
        self.state = self.state.wrapping_add(GOLDEN);
        mix(self.state)
    }

    /// Uniform in `[0, 1)` with 53 random bits.
    #[inline]
    pub fn uniform(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 * (1.0 / (1u64 << 53) as f64)
    }

    /// Uniform in `[lo, hi)` (`lo` when they are equal).
    #[inline]
    pub fn uniform_in(&mut self, lo: f64, hi: f64) -> f64 {
        lo + (hi - lo) * self.uniform()
    }

    /// Uniform integer in `[0, n)`, without modulo bias (Lemire's multiply-and-reject).
    pub fn below(&mut self, n: u64) -> u64 {
        assert!(n > 0, "below(0)");
        let threshold = n.wrapping_neg() % n;
        loop {
            let m = u128::from(self.next_u64()) * u128::from(n);
            if (m as u64) >= threshold {
                return (m >> 64) as u64;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn streams_depend_only_on_their_coordinates() {
        let a: Vec<u64> = (0..4).map(|_| SampleRng::new(1, 2, 3, Stream::CropBox).next_u64()).collect();
        assert!(a.windows(2).all(|w| w[0] == w[1]));
        let base = SampleRng::new(1, 2, 3, Stream::CropBox).next_u64();
        for other in [
            SampleRng::new(0, 2, 3, Stream::CropBox),
            SampleRng::new(1, 3, 3, Stream::CropBox),
            SampleRng::new(1, 2, 4, Stream::CropBox),
            SampleRng::new(1, 2, 3, Stream::Flip),
            SampleRng::new(1, 3, 2, Stream::CropBox),
        ] {
            assert_ne!(other.clone().next_u64(), base);
        }
    }

    #[test]
    fn below_is_in_range_and_roughly_uniform() {
        let mut rng = SampleRng::new(7, 0, 0, Stream::CropBox);
        let mut counts = [0u32; 7];
        for _ in 0..70_000 {
            counts[rng.below(7) as usize] += 1;
        }
        assert!(counts.iter().all(|&c| (9_400..10_600).contains(&c)), "{counts:?}");
        assert_eq!(rng.below(1), 0);
        let u = (0..10_000).map(|_| rng.uniform()).fold(0.0, f64::max);
        assert!(u < 1.0 && u > 0.99);
    }
}
