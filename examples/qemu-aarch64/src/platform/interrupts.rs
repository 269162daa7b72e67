//! Masking the CPU's interrupts around dmakit's locks: the `DAIF` register.

use core::arch::asm;

use dmakit::platform::{InterruptControl, InterruptState};

/// IRQ and FIQ masking through `DAIF`.
pub struct Daif;

// SAFETY: `disable` masks IRQ and FIQ on this CPU and returns the previous DAIF value;
// `restore` writes exactly that value back, so nothing is unmasked that was masked before.
unsafe impl InterruptControl for Daif {
    fn disable(&self) -> InterruptState {
        let daif: u64;
        // SAFETY: reading DAIF and masking IRQ and FIQ (`daifset` bits I and F) only
        // delays interrupts.
        unsafe {
            asm!("mrs {}, daif", "msr daifset, #3", out(reg) daif, options(nomem, nostack));
        }
        InterruptState(daif as usize)
    }

    unsafe fn restore(&self, previous: InterruptState) {
        // SAFETY: `previous` is a DAIF value `disable` read (the caller's contract).
        unsafe { asm!("msr daif, {}", in(reg) previous.0 as u64, options(nomem, nostack)) };
    }

    fn relax(&self) {
        core::hint::spin_loop();
    }
}
