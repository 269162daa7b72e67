//! Private memory: the model of a confidential guest's memory conversion.
//!
//! In a confidential guest the host (and so every device it emulates or passes through)
//! can reach only memory the guest has shared; everything else is private. [`SharedPages`]
//! is the hypervisor's record of which pages are shared: a machine built with
//! [`Machine::new_confidential`](crate::Machine::new_confidential) starts with all memory
//! private and refuses, and records with [`FaultReason::PrivateMemory`](crate::FaultReason::PrivateMemory),
//! every device access that touches a page not in it. CPU accesses are unaffected. The
//! record implements the core's [`MemorySharing`] hook, so the pools of the real mapping
//! layer convert their memory through it. It is shared (`Arc`, `Sync`) because the pools
//! that hold the hook outlive any borrow of the machine.

use std::collections::BTreeSet;
use std::sync::Mutex;

use dmakit::{MemoryFault, MemorySharing, PhysRange, PAGE_SIZE};

/// The pages a confidential guest has shared with the host. See the [module docs](self).
#[derive(Debug, Default)]
pub struct SharedPages {
    state: Mutex<State>,
}

#[derive(Debug, Default)]
struct State {
    /// Shared page frame numbers.
    pages: BTreeSet<u64>,
    /// Conversions to shared that succeeded.
    shares: u64,
    /// Conversions back to private.
    unshares: u64,
    /// Refuse every share from now on (to test what a refused conversion leaves behind).
    refuse: bool,
}

/// The page frame numbers of every page overlapping `range`.
fn frames(range: PhysRange) -> std::ops::RangeInclusive<u64> {
    range.start().as_u64() / PAGE_SIZE..=range.last().as_u64() / PAGE_SIZE
}

impl SharedPages {
    /// No page shared.
    pub fn new() -> Self {
        Self::default()
    }

    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        // A panic while the lock was held leaves a consistent set (every change is one
        // insert or remove), so a poisoned lock is still good.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Whether every page overlapping `[addr, addr + len)` is shared (`len` > 0).
    pub fn is_shared(&self, addr: u64, len: u64) -> bool {
        let Some(last) = len.checked_sub(1).and_then(|l| addr.checked_add(l)) else {
            return false;
        };
        let s = self.state();
        (addr / PAGE_SIZE..=last / PAGE_SIZE).all(|f| s.pages.contains(&f))
    }

    /// Number of pages shared now.
    pub fn shared_pages(&self) -> u64 {
        self.state().pages.len() as u64
    }

    /// Successful calls to [`MemorySharing::share`] and calls to
    /// [`MemorySharing::unshare`] so far.
    pub fn conversions(&self) -> (u64, u64) {
        let s = self.state();
        (s.shares, s.unshares)
    }

    /// Refuse (with a [`MemoryFault`] naming the range's first page) every share from now
    /// on, or accept them again.
    pub fn set_refuse(&self, refuse: bool) {
        self.state().refuse = refuse;
    }
}

impl MemorySharing for SharedPages {
    fn share(&self, range: PhysRange) -> Result<(), MemoryFault> {
        let mut s = self.state();
        if s.refuse {
            return Err(MemoryFault {
                addr: range.start().align_down(PAGE_SIZE),
                len: PAGE_SIZE,
            });
        }
        s.pages.extend(frames(range));
        s.shares += 1;
        Ok(())
    }

    fn unshare(&self, range: PhysRange) {
        let mut s = self.state();
        for f in frames(range) {
            s.pages.remove(&f);
        }
        s.unshares += 1;
    }
}
