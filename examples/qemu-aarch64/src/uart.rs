//! Output on the PL011 UART of QEMU's `virt` machine, and the `print!` / `println!` macros.
//!
//! QEMU's PL011 needs no set-up: the kernel only waits while the transmit FIFO is full and
//! writes the data register. Output is serialised by a spin lock so lines do not interleave.

use core::fmt::{self, Write};

use crate::layout::UART_BASE;

/// Data register.
const DR: u64 = 0x00;
/// Flag register.
const FR: u64 = 0x18;
/// FR: transmit FIFO full.
const FR_TXFF: u32 = 1 << 5;

/// The UART; all output goes through [`print`].
struct Pl011;

impl Pl011 {
    fn put(&mut self, byte: u8) {
        // SAFETY: UART_BASE is the PL011 of the virt machine, mapped as device memory by
        // the identity map; FR and DR are its 32-bit registers, read and written whole.
        unsafe {
            while core::ptr::read_volatile((UART_BASE + FR) as *const u32) & FR_TXFF != 0 {}
            core::ptr::write_volatile((UART_BASE + DR) as *mut u32, u32::from(byte));
        }
    }
}

impl Write for Pl011 {
    fn write_str(&mut self, s: &str) -> fmt::Result {
        for b in s.bytes() {
            if b == b'\n' {
                self.put(b'\r');
            }
            self.put(b);
        }
        Ok(())
    }
}

static UART: spin::Mutex<Pl011> = spin::Mutex::new(Pl011);

/// Writes formatted text to the UART.
pub fn print(args: fmt::Arguments<'_>) {
    // Writing to the UART cannot fail.
    let _ = UART.lock().write_fmt(args);
}

/// Prints to the UART.
#[macro_export]
macro_rules! print {
    ($($arg:tt)*) => ($crate::uart::print(format_args!($($arg)*)));
}

/// Prints a line to the UART.
#[macro_export]
macro_rules! println {
    () => ($crate::print!("\n"));
    ($($arg:tt)*) => ($crate::uart::print(format_args!("{}\n", format_args!($($arg)*))));
}
