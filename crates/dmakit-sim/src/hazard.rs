//! Seeded cache misbehaviour: evictions and speculative fills at arbitrary moments.
//!
//! Real caches evict lines whenever they like and pull lines in speculatively; a DMA layer
//! is only correct if it survives both at any moment. Rolling the dice over the whole cache
//! would almost never hit the few lines a transfer cares about, so the hazards aim at lines
//! near recent CPU activity: a small window of recently touched lines and their ±1
//! neighbours. That makes missing maintenance show up at a testable frequency. Rates of zero
//! give a well-behaved cache (and consume no randomness).

use crate::error::SimError;
use crate::rng::SimRng;

/// How often the cache misbehaves. Each roll (one per CPU access, device operation or tick)
/// fires an eviction with probability `evict_rate` and, independently, a speculative fill
/// with probability `speculate_rate`.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct HazardConfig {
    /// Probability per roll of evicting a line near recent activity.
    pub evict_rate: f64,
    /// Probability per roll of speculatively filling a line near recent activity.
    pub speculate_rate: f64,
    /// How many recently touched lines are remembered as targets (at least 1).
    pub window: usize,
}

impl Default for HazardConfig {
    /// Eviction and speculation each on one roll in five, over the last 16 lines.
    fn default() -> Self {
        Self {
            evict_rate: 0.2,
            speculate_rate: 0.2,
            window: 16,
        }
    }
}

impl HazardConfig {
    /// A cache that never misbehaves (natural capacity evictions still happen).
    pub const NONE: HazardConfig = HazardConfig {
        evict_rate: 0.0,
        speculate_rate: 0.0,
        window: 16,
    };

    /// Checks the rates.
    ///
    /// # Errors
    /// [`SimError::BadRate`] when a rate is not in `[0, 1]` (or is NaN).
    pub fn validate(&self) -> Result<(), SimError> {
        for r in [self.evict_rate, self.speculate_rate] {
            if !(0.0..=1.0).contains(&r) {
                return Err(SimError::BadRate(r));
            }
        }
        Ok(())
    }
}

/// One misbehaviour the cache should perform now.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Hazard {
    /// Evict the line at this address.
    Evict(u64),
    /// Speculatively fill the line at this address.
    Speculate(u64),
}

/// The window of recent lines and the dice.
#[derive(Clone, Debug)]
pub struct Hazards {
    cfg: HazardConfig,
    line: u64,
    recent: Vec<u64>,
    next: usize,
}

impl Hazards {
    /// Hazards for a cache with `line`-byte lines.
    pub fn new(cfg: HazardConfig, line: u64) -> Self {
        let window = cfg.window.max(1);
        Self {
            cfg,
            line,
            recent: Vec::with_capacity(window),
            next: 0,
        }
    }

    /// The configuration.
    pub fn config(&self) -> HazardConfig {
        self.cfg
    }

    /// Records that the CPU touched `[addr, addr + len)`.
    #[inline]
    pub fn touch(&mut self, addr: u64, len: u64) {
        if len == 0 {
            return;
        }
        let first = addr & !(self.line - 1);
        let last = addr.saturating_add(len - 1) & !(self.line - 1);
        self.note(first);
        if last != first {
            self.note(last);
        }
    }

    #[inline]
    fn note(&mut self, line: u64) {
        let window = self.cfg.window.max(1);
        // The most recent entry is `next - 1`; skip repeats of it. `next` stays below
        // `window`, so stepping back or on wraps around without a division.
        let prev_slot = if self.next == 0 {
            window - 1
        } else {
            self.next - 1
        };
        if let Some(&prev) = self.recent.get(prev_slot) {
            if prev == line && !self.recent.is_empty() {
                return;
            }
        }
        let wrap = |i: usize| if i == window { 0 } else { i };
        if self.recent.len() < window {
            self.recent.push(line);
            self.next = wrap(self.recent.len());
        } else {
            self.recent[self.next] = line;
            self.next = wrap(self.next + 1);
        }
    }

    fn target(&self, rng: &mut SimRng) -> Option<u64> {
        let base = *rng.pick(&self.recent)?;
        Some(match rng.below(3) {
            0 => base.checked_sub(self.line)?,
            1 => base,
            _ => base.checked_add(self.line)?,
        })
    }

    /// Rolls the dice once; returns up to two hazards to perform, in order.
    #[inline]
    pub fn roll(&self, rng: &mut SimRng) -> [Option<Hazard>; 2] {
        let mut out = [None, None];
        if self.recent.is_empty() {
            return out;
        }
        if rng.chance(self.cfg.evict_rate) {
            out[0] = self.target(rng).map(Hazard::Evict);
        }
        if rng.chance(self.cfg.speculate_rate) {
            out[1] = self.target(rng).map(Hazard::Speculate);
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rates_are_validated() {
        assert!(HazardConfig::default().validate().is_ok());
        let bad = HazardConfig {
            evict_rate: 1.5,
            ..HazardConfig::default()
        };
        assert_eq!(bad.validate(), Err(SimError::BadRate(1.5)));
        let nan = HazardConfig {
            speculate_rate: f64::NAN,
            ..HazardConfig::default()
        };
        assert!(nan.validate().is_err());
    }

    #[test]
    fn targets_stay_near_recent_lines() {
        let mut h = Hazards::new(
            HazardConfig {
                evict_rate: 1.0,
                speculate_rate: 1.0,
                window: 4,
            },
            64,
        );
        let mut rng = SimRng::new(3);
        assert_eq!(h.roll(&mut rng), [None, None], "nothing touched yet");
        h.touch(0x1010, 8);
        h.touch(0x1010, 8);
        h.touch(0x2000, 0x41);
        assert_eq!(h.recent, vec![0x1000, 0x2000, 0x2040]);
        for _ in 0..200 {
            for hz in h.roll(&mut rng).into_iter().flatten() {
                let (Hazard::Evict(a) | Hazard::Speculate(a)) = hz;
                assert!(
                    [0xfc0, 0x1000, 0x1040, 0x1fc0, 0x2000, 0x2040, 0x2080].contains(&a),
                    "{a:#x}"
                );
            }
        }
        // The window is a ring of 4.
        for l in 0..6u64 {
            h.touch(0x10000 + l * 64, 1);
        }
        assert_eq!(h.recent.len(), 4);
        assert!(h.recent.contains(&(0x10000 + 5 * 64)));
        assert!(!h.recent.contains(&0x1000));
    }

    #[test]
    fn zero_rates_never_fire() {
        let mut h = Hazards::new(HazardConfig::NONE, 64);
        h.touch(0x1000, 1);
        let mut rng = SimRng::new(1);
        let before = rng.clone().next_u64();
        for _ in 0..100 {
            assert_eq!(h.roll(&mut rng), [None, None]);
        }
        assert_eq!(rng.next_u64(), before, "no randomness consumed");
    }
}
