//! The lock and atomic types the pool is built from, swappable for model-checked ones.
//!
//! Normal builds use the core's interrupt-masking [`Mutex`](crate::sync::Mutex), `core`
//! atomics and a cell for data whose lock lives elsewhere ([`LockedElsewhere`]). The loom test
//! (`tests/loom_swiotlb.rs`) compiles this module tree into its own test crate, where loom is
//! available as a dev-dependency; there (and only there: `cfg(all(loom, test))`) the types
//! come from loom so that it can explore every interleaving of the area and table locks, the
//! region directory's sequence counter and the usage counters.

#[cfg(not(all(loom, test)))]
mod imp {
    pub(crate) use crate::sync::{Mutex, MutexGuard};
    pub(crate) use core::sync::atomic::{fence, AtomicU32, AtomicU64, AtomicUsize};

    /// Data guarded by a lock that lives elsewhere (an area's state, guarded by its stripe
    /// of the region table).
    pub(crate) struct LockedElsewhere<T>(core::cell::UnsafeCell<T>);

    impl<T> LockedElsewhere<T> {
        pub(crate) const fn new(value: T) -> Self {
            Self(core::cell::UnsafeCell::new(value))
        }

        /// Runs `f` on the data.
        ///
        /// # Safety
        /// The caller holds the lock that guards the data, and no other reference to the
        /// data lives while `f` runs (`f` must not reach it again).
        #[inline]
        pub(crate) unsafe fn with_mut<R>(&self, f: impl FnOnce(&mut T) -> R) -> R {
            // SAFETY: the caller holds the guarding lock, so this is the only access to
            // the data, and `f` makes no other.
            f(unsafe { &mut *self.0.get() })
        }
    }
}

#[cfg(all(loom, test))]
mod imp {
    pub(crate) use loom::sync::atomic::{fence, AtomicU32, AtomicU64, AtomicUsize};

    /// As the normal build's: data guarded by a lock that lives elsewhere, in a loom cell,
    /// so that loom reports any access that the guarding lock does not order.
    pub(crate) struct LockedElsewhere<T>(UnsafeCell<T>);

    impl<T> LockedElsewhere<T> {
        pub(crate) fn new(value: T) -> Self {
            Self(UnsafeCell::new(value))
        }

        /// Runs `f` on the data.
        ///
        /// # Safety
        /// As in the normal build.
        pub(crate) unsafe fn with_mut<R>(&self, f: impl FnOnce(&mut T) -> R) -> R {
            // SAFETY: as in the normal build; loom checks the claim.
            self.0.with_mut(|p| f(unsafe { &mut *p }))
        }
    }

    use core::sync::atomic::Ordering;
    use loom::cell::{MutPtr, UnsafeCell};
    use loom::sync::atomic::AtomicBool;

    /// A lock with the interface of the core's spinning one, built so that loom can model
    /// `try_lock`. loom's own mutex cannot: a thread whose `try_lock` is pending when
    /// another thread takes the lock is marked blocked on it, so a path that only tries a
    /// lock while holding another (the high-water grant) is reported as a deadlock that
    /// cannot happen. Here the lock is the `held` flag: `try_lock` is one compare-exchange
    /// of it, as in the real lock. `lock` first queues on loom's mutex `gate` (so waiters
    /// for `lock` block, which loom explores cheaply) and then takes the flag, spinning with
    /// a yield only while a `try_lock` holder has it (a spin on every wait makes the models'
    /// branch counts explode).
    pub(crate) struct Mutex<T> {
        gate: loom::sync::Mutex<()>,
        held: AtomicBool,
        data: UnsafeCell<T>,
    }

    /// Guard of a locked [`Mutex`]: ends the data's tracked access, clears the flag, then
    /// leaves the gate (if `lock` took it), when dropped.
    pub(crate) struct MutexGuard<'a, T> {
        lock: &'a Mutex<T>,
        data: Option<MutPtr<T>>,
        gate: Option<loom::sync::MutexGuard<'a, ()>>,
    }

    // SAFETY: as for any mutex: the data moves with the lock, and only the holder of the
    // lock (one thread at a time, ordered by the flag's acquire/release) reaches it.
    unsafe impl<T: Send> Send for Mutex<T> {}
    // SAFETY: as above: sharing the lock shares the data only through a guard.
    unsafe impl<T: Send> Sync for Mutex<T> {}

    impl<T> Mutex<T> {
        pub(crate) fn new(value: T) -> Self {
            Self {
                gate: loom::sync::Mutex::new(()),
                held: AtomicBool::new(false),
                data: UnsafeCell::new(value),
            }
        }

        #[inline]
        pub(crate) fn lock(&self) -> MutexGuard<'_, T> {
            let gate = self.gate.lock().unwrap_or_else(|e| e.into_inner());
            loop {
                if let Some(mut g) = self.try_lock() {
                    g.gate = Some(gate);
                    return g;
                }
                loom::thread::yield_now();
            }
        }

        #[inline]
        pub(crate) fn try_lock(&self) -> Option<MutexGuard<'_, T>> {
            self.held
                .compare_exchange(false, true, Ordering::Acquire, Ordering::Relaxed)
                .ok()?;
            Some(MutexGuard {
                lock: self,
                data: Some(self.data.get_mut()),
                gate: None,
            })
        }
    }

    impl<T> core::ops::Deref for MutexGuard<'_, T> {
        type Target = T;

        fn deref(&self) -> &T {
            let data = self.data.as_ref().expect("guard is live");
            // SAFETY: the guard holds the lock, so no other guard of it exists and this is
            // the only access to the data; loom checks that claim through `data`.
            unsafe { data.deref() }
        }
    }

    impl<T> core::ops::DerefMut for MutexGuard<'_, T> {
        fn deref_mut(&mut self) -> &mut T {
            let data = self.data.as_ref().expect("guard is live");
            // SAFETY: as in `deref`; `&mut self` makes this the guard's only borrow.
            unsafe { data.deref() }
        }
    }

    impl<T> Drop for MutexGuard<'_, T> {
        fn drop(&mut self) {
            // End the tracked access before another thread can take the lock.
            self.data = None;
            self.lock.held.store(false, Ordering::Release);
            self.gate = None;
        }
    }
}

pub(crate) use core::sync::atomic::Ordering;
pub(crate) use imp::{
    fence, AtomicU32, AtomicU64, AtomicUsize, LockedElsewhere, Mutex, MutexGuard,
};
