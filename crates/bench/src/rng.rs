//! A tiny deterministic generator: scenarios must be the same for every run with one seed.
//!
//! `storage::sim` and the crash tests carry their own SplitMix64 too; this one stays separate
//! on purpose: its exact output fixes the pristine images kept on disk between runs, and a
//! crash simulator is no home for a benchmark's data generator (20 lines are cheaper than
//! that coupling).

/// SplitMix64 (Steele, Lea, Flood 2014): fast, seedable, and good enough to scatter writes and
/// fill a disk with bytes that no contestant can compress or skip as zeros.
#[derive(Debug, Clone)]
pub struct Rng(u64);

impl Rng {
    /// A generator whose whole output is fixed by `seed`.
    pub fn new(seed: u64) -> Self {
        Self(seed)
    }

    /// The next 64 pseudo-random bits.
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// A value in `0..n`; `n` must not be zero. The modulo bias is irrelevant at these sizes.
    pub fn below(&mut self, n: u64) -> u64 {
        self.next_u64() % n
    }

    /// Fills `buf` (a multiple of 8 bytes long) with pseudo-random bytes.
    pub fn fill(&mut self, buf: &mut [u8]) {
        for word in buf.chunks_exact_mut(8) {
            word.copy_from_slice(&self.next_u64().to_le_bytes());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn same_seed_gives_same_sequence() {
        let (mut a, mut b) = (Rng::new(7), Rng::new(7));

        let (xs, ys): (Vec<u64>, Vec<u64>) = (0..4).map(|_| (a.next_u64(), b.next_u64())).unzip();

        assert_eq!(xs, ys);
    }

    #[test]
    fn below_stays_in_range() {
        let mut rng = Rng::new(1);

        let all_below = (0..1000).all(|_| rng.below(3) < 3);

        assert!(all_below);
    }
}
