//! The shared depot of one IOVA size class: magazines of cached page-frame numbers that
//! no CPU holds, kept in one buffer allocated when the domain is created.
//!
//! Frees and allocations move magazines between a CPU and the depot on unmap and map
//! paths, in interrupt context. Moving a `Vec` per magazine would need a fresh empty
//! magazine (an allocation) each time one goes in; here a magazine going in is copied
//! onto the top of the stack of magazines (at most a few hundred numbers) and one coming
//! out is copied back into the CPU's own magazine, so nothing is ever allocated after
//! creation.

use alloc::vec::Vec;

/// At most `magazines` magazines of at most `magazine_size` page-frame numbers each, newest
/// on top.
pub(crate) struct Depot {
    /// The magazines' contents, oldest first, back to back. Room for one magazine more
    /// than the depot holds: an exchange puts one in before it takes one out.
    pfns: Vec<u64>,
    /// How many numbers each magazine holds, oldest first.
    lens: Vec<usize>,
    magazines: usize,
}

impl Depot {
    /// An empty depot for `magazines` magazines of `magazine_size`. Allocates: called when
    /// the domain is created.
    pub(crate) fn new(magazines: usize, magazine_size: usize) -> Self {
        Self {
            pfns: Vec::with_capacity(magazines.saturating_add(1).saturating_mul(magazine_size)),
            lens: Vec::with_capacity(magazines),
            magazines,
        }
    }

    /// Page-frame numbers held.
    pub(crate) fn ranges(&self) -> usize {
        self.pfns.len()
    }

    /// Moves the contents of `mag` (at most `magazine_size` numbers) into the depot as its
    /// newest magazine, leaving `mag` empty. `false`, `mag` untouched, when the depot is
    /// full.
    pub(crate) fn put(&mut self, mag: &mut Vec<u64>) -> bool {
        if self.lens.len() >= self.magazines {
            return false;
        }
        self.pfns.extend_from_slice(mag);
        self.lens.push(mag.len());
        mag.clear();
        true
    }

    /// Exchanges the contents of `mag` for the depot's newest magazine; what `mag` held
    /// (if anything) stays in the depot in its place. `false`, nothing changed, when the
    /// depot is empty.
    pub(crate) fn exchange(&mut self, mag: &mut Vec<u64>) -> bool {
        let Some(top) = self.lens.pop() else {
            return false;
        };
        let start = self.pfns.len() - top;
        let own = mag.len();
        if own > 0 {
            // [.., top] + own  ->  [.., own, top]: the magazine going out ends last.
            self.pfns.extend_from_slice(mag);
            self.pfns[start..].rotate_left(top);
            self.lens.push(own);
        }
        let end = self.pfns.len();
        mag.clear();
        mag.extend_from_slice(&self.pfns[end - top..]);
        self.pfns.truncate(end - top);
        true
    }

    /// Empties the depot: its numbers, oldest first.
    pub(crate) fn drain(&mut self) -> impl Iterator<Item = u64> + '_ {
        self.lens.clear();
        self.pfns.drain(..)
    }
}

#[cfg(test)]
mod tests {
    use super::Depot;
    use alloc::vec;
    use alloc::vec::Vec;

    #[test]
    fn magazines_go_in_and_come_out_newest_first_without_growing() {
        let mut d = Depot::new(2, 4);
        let room = d.pfns.capacity();
        let mut mag = Vec::with_capacity(4);
        mag.extend([1, 2, 3, 4]);
        assert!(d.put(&mut mag));
        assert!(mag.is_empty());
        mag.extend([5, 6]);
        assert!(d.put(&mut mag));
        mag.extend([7]);
        assert!(!d.put(&mut mag), "full: two magazines");
        assert_eq!(mag, [7]);
        // The newest magazine comes out; the one held goes in in its place.
        assert!(d.exchange(&mut mag));
        assert_eq!(mag, [5, 6]);
        assert_eq!(d.ranges(), 5);
        mag.clear();
        assert!(d.exchange(&mut mag));
        assert_eq!(mag, [7]);
        mag.clear();
        assert!(d.exchange(&mut mag));
        assert_eq!(mag, [1, 2, 3, 4]);
        assert!(!d.exchange(&mut mag), "empty");
        assert_eq!(d.pfns.capacity(), room, "never reallocated");
        assert_eq!(mag.capacity(), 4);
        mag.clear();
        mag.extend([8, 9]);
        assert!(d.put(&mut mag));
        assert_eq!(d.drain().collect::<Vec<_>>(), vec![8, 9]);
        assert_eq!(d.ranges(), 0);
    }
}
