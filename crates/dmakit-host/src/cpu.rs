//! The current CPU of a host thread: a number the thread declares, since host threads are
//! not pinned and dmakit only uses the answer as a hint for where to start looking.

use std::cell::Cell;

thread_local! {
    static CURRENT_CPU: Cell<usize> = const { Cell::new(0) };
}

/// Declares that the calling thread runs on `cpu` (taken modulo `cpus`, at least 1).
pub(crate) fn bind(cpu: usize, cpus: usize) {
    CURRENT_CPU.with(|c| c.set(cpu % cpus));
}

/// The CPU the calling thread declared (0 if it never did), below `cpus`.
#[inline]
pub(crate) fn current(cpus: usize) -> usize {
    let cpu = CURRENT_CPU.with(|c| c.get());
    // Bound threads already hold a reduced number; only a stray one needs the division.
    if cpu < cpus {
        cpu
    } else {
        cpu % cpus
    }
}
