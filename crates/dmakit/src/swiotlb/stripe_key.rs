//! The key an area's state is reached with: a proof that its stripe of the region table is
//! locked. Its own module so that areas and the table that hands keys out need not know
//! each other.

/// Proof that its holder has locked stripe `index` of the region table: the state of area
/// `index` of every region may be reached through it (see [`Area`](super::area::Area)).
/// Only a locked stripe makes one (`RegionTable::read`), and it lives no longer than the
/// lock; reaching an area's state borrows it mutably, so one key reaches one area's state
/// at a time.
pub(crate) struct StripeKey {
    index: usize,
}

impl StripeKey {
    /// The key of stripe `index`, for the region table alone, as it locks that stripe.
    #[inline]
    pub(super) fn new(index: usize) -> Self {
        Self { index }
    }

    /// The stripe (and area index) this key unlocks.
    #[inline]
    pub(crate) fn index(&self) -> usize {
        self.index
    }
}
