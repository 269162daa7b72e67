//! Single-range mappings written as the kernel prints them in the `trace` file, so that
//! what dmakit produces (`simulate --emit-trace`, generated test traces) is read by the same
//! parser as a board's trace.

use std::io::{self, Write};

use super::event::TraceDir;

/// The header the kernel prints at the top of the `trace` file (`nop` tracer,
/// `irq-info` on).
pub const HEADER: &str = "# tracer: nop
#
#                                _-----=> irqs-off/BH-disabled
#                               / _----=> need-resched
#                              | / _---=> hardirq/softirq
#                              || / _--=> preempt-depth
#                              ||| / _-=> migrate-disable
#                              |||| /     delay
#           TASK-PID     CPU#  |||||  TIMESTAMP  FUNCTION
#              | |         |   |||||     |         |
";

/// Who recorded an entry, and when.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Stamp<'a> {
    /// Task name (`comm`).
    pub task: &'a str,
    /// Its PID.
    pub pid: u32,
    /// The CPU.
    pub cpu: u32,
    /// Microseconds since boot.
    pub micros: u64,
}

fn prefix(out: &mut impl Write, s: &Stamp<'_>) -> io::Result<()> {
    write!(
        out,
        "{:>16}-{:<7} [{:03}] ..... {:>5}.{:06}: ",
        s.task,
        s.pid,
        s.cpu,
        s.micros / 1_000_000,
        s.micros % 1_000_000
    )
}

/// A device name as `dev_name()` would give it: no whitespace (replaced by `_`).
fn dev_name(device: &str) -> String {
    device.replace(|c: char| c.is_whitespace(), "_")
}

/// `dma_map_phys: DEV dir=DIR dma_addr=HEX size=DEC phys_addr=HEX attrs=`; a failed
/// mapping has `dma_addr` [`DMA_MAPPING_ERROR`](super::event::DMA_MAPPING_ERROR).
///
/// # Errors
/// Those of `out`.
pub fn map_phys(
    out: &mut impl Write,
    s: &Stamp<'_>,
    device: &str,
    dir: TraceDir,
    dma_addr: u64,
    size: u64,
    phys_addr: u64,
) -> io::Result<()> {
    prefix(out, s)?;
    writeln!(
        out,
        "dma_map_phys: {} dir={} dma_addr={dma_addr:x} size={size} phys_addr={phys_addr:x} attrs=",
        dev_name(device),
        dir.kernel_name()
    )
}

/// `dma_unmap_phys: DEV dir=DIR dma_addr=HEX size=DEC attrs=`.
///
/// # Errors
/// Those of `out`.
pub fn unmap_phys(
    out: &mut impl Write,
    s: &Stamp<'_>,
    device: &str,
    dir: TraceDir,
    dma_addr: u64,
    size: u64,
) -> io::Result<()> {
    prefix(out, s)?;
    writeln!(
        out,
        "dma_unmap_phys: {} dir={} dma_addr={dma_addr:x} size={size} attrs=",
        dev_name(device),
        dir.kernel_name()
    )
}

/// A `<stack trace>` entry and its frames, innermost first.
///
/// # Errors
/// Those of `out`.
pub fn stack<'f>(
    out: &mut impl Write,
    s: &Stamp<'_>,
    frames: impl IntoIterator<Item = &'f str>,
) -> io::Result<()> {
    prefix(out, s)?;
    writeln!(out, "<stack trace>")?;
    for f in frames {
        writeln!(out, " => {f}")?;
    }
    Ok(())
}
