//! One small deterministic random number generator for everything in raftwal that needs
//! reproducible randomness: election timeouts in the Raft core, crash outcomes in `CrashFs`,
//! fuzz seeds, and the tests' and simulators' schedules. A seed replays a run exactly.
//!
//! It is SplitMix64 (Steele, Lea and Flood, "Fast splittable pseudorandom number generators",
//! OOPSLA 2014): one `u64` of state, a fixed increment and a 64-bit finalizer. It is not for
//! cryptography and makes no promise beyond a well-mixed, full-period stream.

/// A SplitMix64 generator.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Rng(u64);

impl Rng {
    /// The generator whose stream is determined by `seed` (any value, zero included).
    pub const fn new(seed: u64) -> Rng {
        Rng(seed)
    }

    /// The next 64 random bits.
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// A number in `0..n`, by multiply-shift (Lemire): no division, and a bias below 2^-32 for
    /// any `n` a test uses. Panics if `n` is 0, which has no possible value.
    pub fn below(&mut self, n: u64) -> u64 {
        assert!(n > 0, "below(0) has no possible value");
        ((u128::from(self.next_u64()) * u128::from(n)) >> 64) as u64
    }

    /// A number in `range` (half open; must not be empty).
    pub fn in_range(&mut self, range: std::ops::Range<u64>) -> u64 {
        assert!(range.start < range.end, "in_range of an empty range {range:?}");
        range.start + self.below(range.end - range.start)
    }

    /// True with probability `percent` / 100.
    pub fn chance(&mut self, percent: u64) -> bool {
        self.below(100) < percent
    }

    /// Fills `buf` with random bytes.
    pub fn fill(&mut self, buf: &mut [u8]) {
        for chunk in buf.chunks_mut(8) {
            let bytes = self.next_u64().to_le_bytes();
            chunk.copy_from_slice(&bytes[..chunk.len()]);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_stream_is_splitmix64() {
        // The first outputs for seed 0 published with the reference implementation.
        let mut rng = Rng::new(0);
        assert_eq!(rng.next_u64(), 0xE220_A839_7B1D_CDAF);
        assert_eq!(rng.next_u64(), 0x6E78_9E6A_A1B9_65F4);
        assert_eq!(rng.next_u64(), 0x06C4_5D18_8009_454F);
    }

    #[test]
    fn below_stays_in_range_and_reaches_every_value() {
        let mut rng = Rng::new(7);
        let mut seen = [0u32; 10];
        for _ in 0..10_000 {
            let v = rng.below(10);
            assert!(v < 10);
            seen[v as usize] += 1;
        }
        assert!(seen.iter().all(|&n| (800..1200).contains(&n)), "uneven: {seen:?}");
        assert_eq!(rng.in_range(5..6), 5);
    }

    #[test]
    fn the_same_seed_replays_the_same_stream() {
        let (mut a, mut b) = (Rng::new(42), Rng::new(42));
        let mut buf_a = [0u8; 13];
        let mut buf_b = [0u8; 13];
        a.fill(&mut buf_a);
        b.fill(&mut buf_b);
        assert_eq!(buf_a, buf_b);
        assert_eq!(a.next_u64(), b.next_u64());
        assert_ne!(Rng::new(43).next_u64(), Rng::new(42).next_u64());
    }
}
