//! The pieces of an IOMMU domain's scatter-gather mappings, in room allocated when the
//! domain is made.
//!
//! A list mapped in one IOVA range remembers where each of its buffers lies (IOVA,
//! physical address, length), so that its unmap and syncs can maintain the caller's
//! memory. Map, unmap and sync run in interrupt context, where nothing may allocate, so the
//! pieces live in a table of [`super::DomainConfig::max_sg_pieces`] slots allocated with
//! the domain. A mapping's pieces are a chain of slots linked by index: any free slots
//! will do, so free room never fragments; taking a chain of `n` slots costs `n` steps and
//! giving one back costs one.
//!
//! A map takes its chain ([`PieceLease`]) before it takes IOVA space or touches page
//! tables, so a full table refuses the map with nothing to undo; a lease dropped unused
//! gives its slots back.

use alloc::boxed::Box;

use crate::addr::PhysAddr;
use crate::sync::Mutex;

/// One buffer of a scatter-gather mapping (or one run of pages of a DMA allocation):
/// `len` bytes at IOVA `dma`, physical `phys`.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Piece {
    pub(crate) dma: u64,
    pub(crate) phys: PhysAddr,
    pub(crate) len: u64,
}

/// The end of a chain (no next slot).
const END: u32 = u32::MAX;

/// One slot: a piece, and the next slot of its chain (or of the free list).
struct Slot {
    piece: Piece,
    next: u32,
}

/// The pieces of one mapping: `len` slots linked from `head` to `tail`.
#[derive(Debug)]
pub(crate) struct PieceChain {
    head: u32,
    tail: u32,
    len: usize,
}

/// The slots of one domain, each in one chain or in the free list.
pub(crate) struct PieceTable {
    slots: Box<[Slot]>,
    /// The first free slot ([`END`] when none is).
    free: u32,
    free_len: usize,
}

impl PieceTable {
    /// Room for `capacity` pieces (at most `u32::MAX - 1`; more is clamped to that).
    /// Allocates: called when the domain is created.
    pub(crate) fn with_capacity(capacity: usize) -> Self {
        let capacity = capacity.min(END as usize - 1);
        let slots: Box<[Slot]> = (0..capacity)
            .map(|i| Slot {
                piece: Piece {
                    dma: 0,
                    phys: PhysAddr::new(0),
                    len: 0,
                },
                // `i + 1 <= capacity < END`; the last slot ends the free list.
                next: if i + 1 == capacity { END } else { i as u32 + 1 },
            })
            .collect();
        Self {
            free: if capacity == 0 { END } else { 0 },
            free_len: capacity,
            slots,
        }
    }

    /// Pieces the table holds at once.
    pub(crate) fn capacity(&self) -> usize {
        self.slots.len()
    }

    /// Slots in no chain.
    pub(crate) fn free(&self) -> usize {
        self.free_len
    }

    /// Takes `n` free slots (at least one) as a chain, or `None` when fewer are free.
    fn take(&mut self, n: usize) -> Option<PieceChain> {
        if n == 0 || n > self.free_len {
            return None;
        }
        let head = self.free;
        let mut tail = head;
        for _ in 1..n {
            tail = self.slots[tail as usize].next;
        }
        self.free = core::mem::replace(&mut self.slots[tail as usize].next, END);
        self.free_len -= n;
        Some(PieceChain { head, tail, len: n })
    }

    /// The slot indices of `chain`, in order.
    fn indices<'a>(&'a self, chain: &PieceChain) -> impl Iterator<Item = usize> + 'a {
        let mut at = chain.head;
        let mut left = chain.len;
        core::iter::from_fn(move || {
            if left == 0 {
                return None;
            }
            let i = at as usize;
            at = self.slots[i].next;
            left -= 1;
            Some(i)
        })
    }

    /// Gives the slots of `chain` back.
    fn give_back(&mut self, chain: PieceChain) {
        self.slots[chain.tail as usize].next = self.free;
        self.free = chain.head;
        self.free_len += chain.len;
    }
}

/// Free slots taken for a map under way; given back when dropped unused.
#[must_use = "dropping a lease gives its slots back"]
pub(crate) struct PieceLease<'a> {
    table: &'a Mutex<PieceTable>,
    chain: Option<PieceChain>,
}

impl<'a> PieceLease<'a> {
    /// Takes `n` free slots of `table` (at least one), or `None` when fewer are free.
    pub(crate) fn take(table: &'a Mutex<PieceTable>, n: usize) -> Option<Self> {
        let chain = table.lock().take(n)?;
        Some(Self {
            table,
            chain: Some(chain),
        })
    }

    /// Writes `pieces` to the leased slots, in order, and keeps them: the chain now
    /// belongs to the mapping it is recorded in, which gives it back with
    /// [`give_back`] when it ends.
    pub(crate) fn fill(mut self, pieces: impl Iterator<Item = Piece>) -> PieceChain {
        let Some(chain) = self.chain.take() else {
            unreachable!("a lease holds its chain until it is filled or dropped")
        };
        let mut t = self.table.lock();
        let mut at = chain.head;
        for pc in pieces.take(chain.len) {
            let slot = &mut t.slots[at as usize];
            slot.piece = pc;
            at = slot.next;
        }
        chain
    }
}

impl Drop for PieceLease<'_> {
    fn drop(&mut self) {
        if let Some(chain) = self.chain.take() {
            self.table.lock().give_back(chain);
        }
    }
}

/// Runs `f` on each piece of `chain`, in order, under the table's lock (so `f` must not
/// take it again).
pub(crate) fn for_each(table: &Mutex<PieceTable>, chain: &PieceChain, mut f: impl FnMut(Piece)) {
    let t = table.lock();
    for i in t.indices(chain) {
        f(t.slots[i].piece);
    }
}

/// Gives the slots of an ended mapping's chain back.
pub(crate) fn give_back(table: &Mutex<PieceTable>, chain: PieceChain) {
    table.lock().give_back(chain);
}

#[cfg(test)]
mod tests {
    use super::*;

    fn piece(i: u64) -> Piece {
        Piece {
            dma: i * 0x1000,
            phys: PhysAddr::new(i * 0x2000),
            len: i,
        }
    }

    fn pieces(t: &Mutex<PieceTable>, chain: &PieceChain) -> alloc::vec::Vec<u64> {
        let mut got = alloc::vec::Vec::new();
        for_each(t, chain, |pc| got.push(pc.len));
        got
    }

    #[test]
    fn chains_take_any_free_slots_and_come_back_whole() {
        let t = Mutex::new(PieceTable::with_capacity(6));
        let a = PieceLease::take(&t, 2).unwrap().fill((1..=2).map(piece));
        let b = PieceLease::take(&t, 3).unwrap().fill((3..=5).map(piece));
        assert_eq!(t.lock().free(), 1);
        assert!(PieceLease::take(&t, 2).is_none(), "only one slot is free");
        give_back(&t, a);
        // The two slots given back and the one never used: not adjacent, one chain.
        let c = PieceLease::take(&t, 3).unwrap().fill((6..=8).map(piece));
        assert_eq!(pieces(&t, &b), [3, 4, 5]);
        assert_eq!(pieces(&t, &c), [6, 7, 8]);
        assert_eq!(t.lock().free(), 0);
        give_back(&t, b);
        give_back(&t, c);
        let t = t.lock();
        assert_eq!(t.free(), t.capacity());
    }

    #[test]
    fn a_dropped_lease_gives_its_slots_back_and_zero_is_refused() {
        let t = Mutex::new(PieceTable::with_capacity(4));
        let lease = PieceLease::take(&t, 4).unwrap();
        assert_eq!(t.lock().free(), 0);
        drop(lease);
        assert_eq!(t.lock().free(), 4);
        assert!(PieceLease::take(&t, 0).is_none());
        assert!(PieceLease::take(&t, 5).is_none());
        let empty = Mutex::new(PieceTable::with_capacity(0));
        assert!(PieceLease::take(&empty, 1).is_none());
    }
}
