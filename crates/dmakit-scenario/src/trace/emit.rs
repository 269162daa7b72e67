//! A simulated run's mappings written as the kernel's `trace` file: one `dma_map_phys`
//! per mapping with a `<stack trace>` naming its call site (`driver: site`, as `simulate`
//! names it), one `dma_unmap_phys` per unmap. Failed mappings are traced as Linux traces
//! them, with `dma_addr=ffffffffffffffff`.
//!
//! Only the mapper's streaming mappings are written: the framebuffers a display engine
//! gets from the DMA allocator are allocations (never bounced) and are left out.

use std::io::{self, Write};

use super::event::{TraceDir, DMA_MAPPING_ERROR};
use super::write::{map_phys, stack, unmap_phys, Stamp, HEADER};
use crate::mapping_log::MappingLog;
use crate::model::Scenario;

/// The task the emitted entries are recorded by.
pub const TASK: &str = "dmakit-sim";

/// Writes `log`, a run of `sc`, to `out`.
///
/// # Errors
/// Those of `out`.
pub fn write_log(out: &mut impl Write, sc: &Scenario, log: &MappingLog) -> io::Result<()> {
    let sites: Vec<String> = sc
        .transfer_sites()
        .map(|(d, t)| format!("{}: {}", d.name, t.site))
        .collect();
    out.write_all(HEADER.as_bytes())?;
    for (i, op) in log.ops.iter().enumerate() {
        let s = Stamp {
            task: TASK,
            pid: 1,
            cpu: 0,
            micros: i as u64,
        };
        let device = sc
            .devices
            .get(usize::from(op.device))
            .map_or("?", |d| d.name());
        let dir = TraceDir::of(op.dir);
        if op.unmap {
            unmap_phys(
                out,
                &s,
                device,
                dir,
                op.dma.unwrap_or(DMA_MAPPING_ERROR),
                op.len,
            )?;
        } else {
            let dma = op.dma.unwrap_or(DMA_MAPPING_ERROR);
            map_phys(out, &s, device, dir, dma, op.len, op.phys)?;
            let site = sites.get(usize::from(op.site)).map_or("?", |s| s.as_str());
            stack(
                out,
                &s,
                ["trace_event_raw_event_dma_map_phys", "dma_map_phys", site],
            )?;
        }
    }
    Ok(())
}
