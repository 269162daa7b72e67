//! The model's only source of randomness.
//!
//! Every random decision the model and the workloads take (which line to evict, where a
//! buffer goes, what the device writes) comes from one [`SimRng`] seeded by the caller, so a
//! run is reproducible byte for byte from its seed. The generator is PCG (`rand_pcg`), which
//! is small, fast and stable across platforms and releases.

use rand::{Rng, RngExt, SeedableRng};
use rand_pcg::Pcg64Mcg;

/// A seeded, deterministic random number generator with the few helpers the model needs.
#[derive(Clone, Debug)]
pub struct SimRng {
    inner: Pcg64Mcg,
}

impl SimRng {
    /// A generator whose whole output sequence is determined by `seed`.
    pub fn new(seed: u64) -> Self {
        Self {
            inner: Pcg64Mcg::seed_from_u64(seed),
        }
    }

    /// A new generator seeded from this one (for an independent stream that is still
    /// determined by the parent's seed).
    pub fn fork(&mut self) -> Self {
        Self::new(self.inner.next_u64())
    }

    /// A uniformly random `u64`.
    #[inline]
    pub fn next_u64(&mut self) -> u64 {
        self.inner.next_u64()
    }

    /// A uniformly random value in `0..n`; `0` when `n` is zero.
    #[inline]
    pub fn below(&mut self, n: u64) -> u64 {
        if n == 0 {
            0
        } else {
            self.inner.random_range(0..n)
        }
    }

    /// A uniformly random value in `lo..=hi`; `lo` when `hi < lo`.
    #[inline]
    pub fn between(&mut self, lo: u64, hi: u64) -> u64 {
        if hi <= lo {
            lo
        } else {
            self.inner.random_range(lo..=hi)
        }
    }

    /// `true` with probability `p` (values outside `[0, 1]` are clamped; `0` never fires,
    /// and consumes no randomness, so a zero rate leaves the sequence untouched).
    #[inline]
    pub fn chance(&mut self, p: f64) -> bool {
        if p <= 0.0 {
            return false;
        }
        if p >= 1.0 {
            return true;
        }
        // 53 random bits give a uniform f64 in [0, 1).
        let x = (self.inner.next_u64() >> 11) as f64 * (1.0 / (1u64 << 53) as f64);
        x < p
    }

    /// Fills `dst` with random bytes.
    #[inline]
    pub fn fill_bytes(&mut self, dst: &mut [u8]) {
        self.inner.fill_bytes(dst);
    }

    /// A uniformly chosen element of `items`; `None` when it is empty.
    #[inline]
    pub fn pick<'a, T>(&mut self, items: &'a [T]) -> Option<&'a T> {
        if items.is_empty() {
            None
        } else {
            items.get(self.below(items.len() as u64) as usize)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn same_seed_same_sequence() {
        let mut a = SimRng::new(7);
        let mut b = SimRng::new(7);
        let mut c = SimRng::new(8);
        let va: Vec<u64> = (0..16).map(|_| a.next_u64()).collect();
        let vb: Vec<u64> = (0..16).map(|_| b.next_u64()).collect();
        let vc: Vec<u64> = (0..16).map(|_| c.next_u64()).collect();
        assert_eq!(va, vb);
        assert_ne!(va, vc);
    }

    #[test]
    fn helpers_respect_bounds() {
        let mut r = SimRng::new(1);
        assert_eq!(r.below(0), 0);
        assert_eq!(r.between(5, 5), 5);
        assert_eq!(r.between(9, 3), 9);
        for _ in 0..1000 {
            assert!(r.below(10) < 10);
            let v = r.between(3, 6);
            assert!((3..=6).contains(&v));
        }
        assert!(!r.chance(0.0));
        assert!(r.chance(1.0));
        let hits = (0..10_000).filter(|_| r.chance(0.25)).count();
        assert!((2_000..3_000).contains(&hits), "{hits}");
        let mut buf = [0u8; 64];
        r.fill_bytes(&mut buf);
        assert!(buf.iter().any(|&b| b != 0));
        assert_eq!(r.pick::<u8>(&[]), None);
        assert_eq!(r.pick(&[4]), Some(&4));
    }
}
