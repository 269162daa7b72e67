//! The one lock type of the core: spin locks that mask interrupts while held.
//!
//! Map, unmap and sync paths run in interrupt handlers and with interrupts disabled, so
//! every lock they take saves and disables interrupts through the installed
//! [`InterruptControl`](crate::platform::InterruptControl) before it spins, and restores
//! them after it unlocks (see [`crate::platform::interrupts`]). Without an installed
//! control the locks are plain spin locks.
//!
//! Locks held together must be released in the reverse order they were taken: each guard
//! restores the state its own lock saved.

use core::ops::{Deref, DerefMut};

use crate::platform::interrupts::{interrupt_control, InterruptControl, InterruptState};

/// Spinning asks the installed control to relax (a plain spin hint without one).
pub(crate) struct Relax;

impl spin::RelaxStrategy for Relax {
    // Out of line: the spin is the contended case, and keeping it small keeps the
    // uncontended lock inlined where it was.
    #[cold]
    #[inline(never)]
    fn relax() {
        match interrupt_control() {
            Some(c) => c.relax(),
            None => core::hint::spin_loop(),
        }
    }
}

/// Interrupts masked for one critical section (the state before, when a control was
/// installed); restores them when dropped.
///
/// Only the check for a control is inline; the calls into it are not, so that a lock stays
/// small enough to be inlined where it is taken.
struct Masked(Option<InterruptState>);

impl Masked {
    #[inline]
    fn new() -> Self {
        Self(interrupt_control().map(disable))
    }
}

impl Drop for Masked {
    #[inline]
    fn drop(&mut self) {
        if let Some(state) = self.0 {
            restore(state);
        }
    }
}

#[inline(never)]
fn disable(c: &'static dyn InterruptControl) -> InterruptState {
    c.disable()
}

/// Restores `state`, which the installed control's `disable` returned for the section
/// being closed.
#[inline(never)]
fn restore(state: InterruptState) {
    // A control, once installed, stays: the one that saved the state restores it.
    if let Some(c) = interrupt_control() {
        // SAFETY: `state` is what `c.disable()` returned when this section opened, on this
        // CPU (interrupts stay masked, so the thread did not migrate). The lock of this
        // section is released already (guards drop it first), and the core releases locks
        // held together in reverse order, so every section opened later is restored
        // already.
        unsafe { c.restore(state) };
    }
}

/// A spin mutex whose critical sections mask interrupts.
pub(crate) struct Mutex<T>(spin::mutex::SpinMutex<T, Relax>);

impl<T: Default> Default for Mutex<T> {
    fn default() -> Self {
        Self::new(T::default())
    }
}

/// Guard of a locked [`Mutex`]: unlocks, then restores interrupts, when dropped.
pub(crate) struct MutexGuard<'a, T> {
    // Field order is drop order: unlock first, then restore.
    guard: spin::mutex::SpinMutexGuard<'a, T, Relax>,
    _masked: Masked,
}

impl<T> Mutex<T> {
    /// An unlocked mutex holding `value`.
    pub(crate) const fn new(value: T) -> Self {
        Self(spin::mutex::SpinMutex::new(value))
    }

    /// Masks interrupts, then spins until the lock is free.
    #[inline]
    pub(crate) fn lock(&self) -> MutexGuard<'_, T> {
        let masked = Masked::new();
        MutexGuard {
            guard: self.0.lock(),
            _masked: masked,
        }
    }

    /// Masks interrupts and takes the lock if it is free; `None` (interrupts restored)
    /// when it is held.
    #[inline]
    pub(crate) fn try_lock(&self) -> Option<MutexGuard<'_, T>> {
        let masked = Masked::new();
        let guard = self.0.try_lock()?;
        Some(MutexGuard {
            guard,
            _masked: masked,
        })
    }
}

impl<T> Deref for MutexGuard<'_, T> {
    type Target = T;
    #[inline]
    fn deref(&self) -> &T {
        &self.guard
    }
}

impl<T> DerefMut for MutexGuard<'_, T> {
    #[inline]
    fn deref_mut(&mut self) -> &mut T {
        &mut self.guard
    }
}

/// A spinning reader-writer lock whose critical sections mask interrupts: readers share
/// it, so a lookup under the read side does not serialise CPUs.
pub(crate) struct RwLock<T>(spin::rwlock::RwLock<T, Relax>);

/// Guard of a read-locked [`RwLock`].
pub(crate) struct ReadGuard<'a, T> {
    guard: spin::rwlock::RwLockReadGuard<'a, T, Relax>,
    _masked: Masked,
}

/// Guard of a write-locked [`RwLock`].
pub(crate) struct WriteGuard<'a, T> {
    guard: spin::rwlock::RwLockWriteGuard<'a, T, Relax>,
    _masked: Masked,
}

impl<T> RwLock<T> {
    /// An unlocked lock holding `value`.
    pub(crate) const fn new(value: T) -> Self {
        Self(spin::rwlock::RwLock::new(value))
    }

    /// Masks interrupts, then spins until no writer holds the lock.
    #[inline]
    pub(crate) fn read(&self) -> ReadGuard<'_, T> {
        let masked = Masked::new();
        ReadGuard {
            guard: self.0.read(),
            _masked: masked,
        }
    }

    /// Masks interrupts, then spins until nobody holds the lock.
    #[inline]
    pub(crate) fn write(&self) -> WriteGuard<'_, T> {
        let masked = Masked::new();
        WriteGuard {
            guard: self.0.write(),
            _masked: masked,
        }
    }
}

impl<T> Deref for ReadGuard<'_, T> {
    type Target = T;
    #[inline]
    fn deref(&self) -> &T {
        &self.guard
    }
}

impl<T> Deref for WriteGuard<'_, T> {
    type Target = T;
    #[inline]
    fn deref(&self) -> &T {
        &self.guard
    }
}

impl<T> DerefMut for WriteGuard<'_, T> {
    #[inline]
    fn deref_mut(&mut self) -> &mut T {
        &mut self.guard
    }
}
