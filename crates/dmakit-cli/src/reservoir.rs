//! A fixed-size uniform sample of a stream of latencies (reservoir sampling), so a
//! benchmark of any length takes bounded memory.

/// Most samples `dmakit bench` keeps over all threads: 2^20 map and 2^20 unmap latencies
/// (8 MiB); percentiles of a uniform sample this large are as good as of all of them.
pub const MAX_SAMPLES: usize = 1 << 20;

/// A uniform sample of at most `cap` `(map, unmap)` latency pairs out of all offered.
pub struct Reservoir {
    cap: usize,
    seen: u64,
    state: u64,
    /// Sampled map latencies (ns).
    pub maps: Vec<u32>,
    /// Sampled unmap latencies (ns), the pair of `maps` at the same index.
    pub unmaps: Vec<u32>,
}

impl Reservoir {
    /// An empty sample of at most `cap` pairs (at least 1); `seed` varies the choice.
    pub fn new(cap: usize, seed: u64) -> Self {
        Self {
            cap: cap.max(1),
            seen: 0,
            state: seed | 1,
            maps: Vec::new(),
            unmaps: Vec::new(),
        }
    }

    /// Offers one pair: kept while there is room, then in place of a random earlier one
    /// with probability `cap / offered`, so every pair offered is equally likely kept.
    pub fn offer(&mut self, map: u32, unmap: u32) {
        self.seen += 1;
        if self.maps.len() < self.cap {
            self.maps.push(map);
            self.unmaps.push(unmap);
            return;
        }
        // xorshift64: deterministic and cheap, enough for picking slots.
        self.state ^= self.state << 13;
        self.state ^= self.state >> 7;
        self.state ^= self.state << 17;
        let j = self.state % self.seen;
        if let Some(i) = usize::try_from(j).ok().filter(|&i| i < self.cap) {
            self.maps[i] = map;
            self.unmaps[i] = unmap;
        }
    }

    /// Pairs offered so far (kept or not).
    pub fn offered(&self) -> u64 {
        self.seen
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keeps_at_most_cap_and_counts_everything() {
        let mut r = Reservoir::new(1000, 7);
        for i in 0..100_000u32 {
            r.offer(i, i);
        }
        assert_eq!(r.offered(), 100_000);
        assert_eq!((r.maps.len(), r.unmaps.len()), (1000, 1000));
        assert_eq!(r.maps, r.unmaps, "pairs stay together");
        // Uniform: the sample's median of 0..100,000 is near 50,000, not near the start.
        let mut m = r.maps.clone();
        m.sort_unstable();
        assert!((40_000..60_000).contains(&m[500]), "median {}", m[500]);
    }
}
