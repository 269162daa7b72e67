//! The lock and atomic types the pool is built from, swappable for model-checked ones.
//!
//! Normal builds use the core's interrupt-masking [`Mutex`](crate::sync::Mutex) and `core`
//! atomics. The loom test
//! (`tests/loom_swiotlb.rs`) compiles this module tree into its own test crate, where loom is
//! available as a dev-dependency; there (and only there: `cfg(all(loom, test))`) the types
//! come from loom so that it can explore every interleaving of the area and table locks, the
//! region directory's sequence counter and the usage counters.

#[cfg(not(all(loom, test)))]
mod imp {
    pub(crate) use crate::sync::{Mutex, MutexGuard};
    pub(crate) use core::sync::atomic::{fence, AtomicU32, AtomicU64, AtomicUsize};
}

#[cfg(all(loom, test))]
mod imp {
    pub(crate) use loom::sync::atomic::{fence, AtomicU32, AtomicU64, AtomicUsize};

    /// loom's mutex behind the same interface as the spinning one.
    pub(crate) struct Mutex<T>(loom::sync::Mutex<T>);

    /// Guard of a locked [`Mutex`].
    pub(crate) type MutexGuard<'a, T> = loom::sync::MutexGuard<'a, T>;

    impl<T> Mutex<T> {
        pub(crate) fn new(value: T) -> Self {
            Self(loom::sync::Mutex::new(value))
        }

        #[inline]
        pub(crate) fn lock(&self) -> MutexGuard<'_, T> {
            // Nothing in the pool panics while holding a lock, so poisoning cannot happen;
            // recover the guard anyway rather than panic.
            self.0.lock().unwrap_or_else(|e| e.into_inner())
        }
    }
}

pub(crate) use core::sync::atomic::Ordering;
pub(crate) use imp::{fence, AtomicU32, AtomicU64, AtomicUsize, Mutex, MutexGuard};
