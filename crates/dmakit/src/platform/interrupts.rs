//! Interrupt masking for the core's locks: the platform says how, once per system.
//!
//! A kernel maps DMA from interrupt handlers. If a handler takes a spin lock that the code
//! it interrupted holds on the same CPU, the CPU spins forever. Every lock in dmakit that a
//! map, unmap or sync path takes therefore masks interrupts on the local CPU for as long as
//! it is held (save and disable, then lock; unlock, then restore), the way a kernel's
//! `spin_lock_irqsave` does.
//!
//! The locks live deep inside pools, IOMMU domains and the debug checker, which never see
//! the [`Platform`](crate::Platform), and masking is a property of the CPU, not of one mapper.
//! So the hook is installed **once per system** with [`install_interrupt_control`], before
//! the first mapping, like the architecture's `local_irq_save` is fixed for a kernel. With
//! none installed the locks mask nothing: right for user space and host benchmarks, where no
//! interrupt handler maps DMA.

use core::fmt;

use spin::Once;

/// The interrupt state of the local CPU as [`InterruptControl::disable`] found it: an
/// opaque word whose meaning the implementation chooses (a flags register, a priority
/// level). dmakit only hands it back to [`InterruptControl::restore`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct InterruptState(pub usize);

/// Masks and restores interrupts on the local CPU, for dmakit's locks.
///
/// dmakit calls [`disable`](Self::disable) before it takes a lock on a map, unmap or sync
/// path and [`restore`](Self::restore) with the state it got after releasing that lock.
/// Sections nest: a lock taken while another is held saves and restores inside the outer
/// pair, and dmakit releases locks held together in the reverse order it took them.
///
/// # Implementation safety
///
/// dmakit's deadlock freedom in interrupt context rests on this contract:
/// - from the return of `disable` until the matching `restore`, no interrupt handler that
///   may call into dmakit runs on the calling CPU (interrupts raised meanwhile are held
///   pending, and delivered at the earliest by `restore`);
/// - `restore(state)` puts the local CPU back exactly into `state`: interrupts masked
///   before the matching `disable` stay masked;
/// - the calling thread does not move to another CPU between the two (masked interrupts
///   keep it where it is on every kernel; an implementation that cannot promise it must
///   disable migration too);
/// - neither method calls into dmakit, blocks or allocates: they run inside the map paths,
///   possibly in interrupt context.
///
/// An implementation that masks nothing is sound only on a system where no interrupt
/// handler calls dmakit.
pub unsafe trait InterruptControl: Sync {
    /// Masks interrupts on the local CPU and returns the state before (masked or not).
    fn disable(&self) -> InterruptState;

    /// Puts the local CPU back into `previous`.
    ///
    /// # Safety
    /// `previous` is the state the matching [`disable`](Self::disable) returned on this CPU,
    /// and every section opened after that one has been restored already.
    unsafe fn restore(&self, previous: InterruptState);

    /// Called on each turn of a dmakit lock's spin while the lock is held elsewhere. The
    /// default hints the CPU that it is spinning; a platform may also yield to its
    /// hypervisor or run a watchdog. It must not take a dmakit lock.
    fn relax(&self) {
        core::hint::spin_loop();
    }
}

/// The system's interrupt control, once installed.
static CONTROL: Once<&'static dyn InterruptControl> = Once::new();

/// [`install_interrupt_control`] was called before: the control stays the one installed
/// first.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct AlreadyInstalled;

impl fmt::Display for AlreadyInstalled {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("an interrupt control is already installed; it can be installed only once")
    }
}

impl core::error::Error for AlreadyInstalled {}

/// Makes `control` mask interrupts around every lock of dmakit, for the rest of the
/// system's life. Install it before the first mapping: a lock held while it is installed
/// restores nothing it did not save, but it did not mask either.
///
/// # Errors
/// [`AlreadyInstalled`] when a control was installed before (that one stays).
pub fn install_interrupt_control(
    control: &'static dyn InterruptControl,
) -> Result<(), AlreadyInstalled> {
    let mut installed = false;
    CONTROL.call_once(|| {
        installed = true;
        control
    });
    if installed {
        Ok(())
    } else {
        Err(AlreadyInstalled)
    }
}

/// The installed interrupt control, if any.
#[inline]
pub(crate) fn interrupt_control() -> Option<&'static dyn InterruptControl> {
    CONTROL.get().copied()
}
