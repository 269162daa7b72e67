//! Data cache maintenance by address: the real instructions, over every line of the range.
//!
//! QEMU executes these instructions but models no cache, so on QEMU they prove only that
//! dmakit asks for maintenance of the right ranges and that the code runs; the machine model
//! in `dmakit-sim` is what proves the maintenance is the right one.

use core::arch::asm;
use core::sync::atomic::Ordering;

use dmakit::platform::CacheMaintenance;
use dmakit::PhysRange;

use super::Aarch64;
use crate::layout::RAM;

/// The smallest data cache line of the CPU: `CTR_EL0.DminLine` is its log2 in 4-byte words.
pub(super) fn dcache_line_size() -> u64 {
    let ctr: u64;
    // SAFETY: reading CTR_EL0 has no side effect; EL1 may always read it.
    unsafe { asm!("mrs {}, ctr_el0", out(reg) ctr, options(nomem, nostack)) };
    4 << ((ctr >> 16) & 0xf)
}

/// Cache lines maintained so far, by operation.
#[derive(Clone, Copy, Debug)]
pub struct LinesMaintained {
    /// Lines cleaned (`dc cvac`).
    pub cleaned: u64,
    /// Lines invalidated (`dc ivac`).
    pub invalidated: u64,
    /// Lines cleaned and invalidated (`dc civac`).
    pub clean_invalidated: u64,
}

/// A data cache maintenance instruction by virtual address.
#[derive(Clone, Copy)]
enum Op {
    Clean,
    Invalidate,
    CleanInvalidate,
}

impl Aarch64 {
    /// Cache lines maintained since start-up.
    pub fn lines_maintained(&self) -> LinesMaintained {
        LinesMaintained {
            cleaned: self.cleaned.load(Ordering::Relaxed),
            invalidated: self.invalidated.load(Ordering::Relaxed),
            clean_invalidated: self.clean_invalidated.load(Ordering::Relaxed),
        }
    }

    /// Runs `op` on every line overlapping `range` (the part of it in RAM; the rest is not
    /// memory and is ignored, as the trait says), then waits for completion with `dsb sy`.
    fn maintain(&self, range: PhysRange, op: Op) {
        let start = range.start().as_u64().max(RAM.start);
        let end = range.end().as_u64().min(RAM.end());
        if start >= end {
            return;
        }
        let mut line = start & !(self.line - 1);
        let mut lines = 0;
        while line < end {
            // SAFETY: `line` is RAM, mapped by the identity map (virtual = physical).
            // Cleaning writes back data the cache holds; invalidating discards it, which
            // dmakit asks for only on lines the device owns for the transfer (the trait's
            // contract: whole lines, their neighbours included, are affected).
            unsafe {
                match op {
                    Op::Clean => asm!("dc cvac, {}", in(reg) line, options(nostack)),
                    Op::Invalidate => asm!("dc ivac, {}", in(reg) line, options(nostack)),
                    Op::CleanInvalidate => asm!("dc civac, {}", in(reg) line, options(nostack)),
                }
            }
            line += self.line;
            lines += 1;
        }
        // SAFETY: a barrier only orders memory accesses and maintenance.
        unsafe { asm!("dsb sy", options(nostack)) };
        let counter = match op {
            Op::Clean => &self.cleaned,
            Op::Invalidate => &self.invalidated,
            Op::CleanInvalidate => &self.clean_invalidated,
        };
        counter.fetch_add(lines, Ordering::Relaxed);
    }
}

impl CacheMaintenance for Aarch64 {
    fn cache_line_size(&self) -> u64 {
        self.line
    }

    fn clean(&self, range: PhysRange) {
        self.maintain(range, Op::Clean);
    }

    fn invalidate(&self, range: PhysRange) {
        self.maintain(range, Op::Invalidate);
    }

    fn clean_invalidate(&self, range: PhysRange) {
        self.maintain(range, Op::CleanInvalidate);
    }
}
