//! The checks after every call: buffer bytes, live bounces, the bounce rules' placement
//! promises, pool usage and the deferred queue (see the parent module's docs).

use dmakit::PhysAddr;

use super::Harness;
use crate::world::{in_pool, AREA, BASE, LINE, POOL_BYTES, POOL_START};

impl Harness {
    /// Every promise of the module docs about the present state.
    pub(super) fn check(&mut self) {
        let mut buf = std::mem::take(&mut self.scratch);
        for start in [BASE, POOL_START + POOL_BYTES] {
            buf.resize(AREA as usize, 0);
            self.w.host.read(PhysAddr::new(start), &mut buf).unwrap();
            if buf[..] != *self.m.bytes(start, AREA) {
                let at = buf
                    .iter()
                    .zip(self.m.bytes(start, AREA))
                    .position(|(a, b)| a != b)
                    .unwrap() as u64;
                let owner = self
                    .m
                    .live
                    .iter()
                    .find(|m| (m.phys..m.phys + m.len).contains(&(start + at)));
                self.fail(format_args!(
                    "buffer byte {:#x} is {:#04x}, expected {:#04x} (inside live mapping: {})",
                    start + at,
                    buf[at as usize],
                    self.m.bytes(start + at, 1)[0],
                    owner.map_or("none".into(), |m| format!(
                        "{} {:#x}+{} {}",
                        self.w.devices[m.dev].name(),
                        m.phys,
                        m.len,
                        m.dir
                    ))
                ));
            }
        }
        let mut bounces = Vec::new();
        for m in &self.m.live {
            let d = &self.w.devices[m.dev];
            if !d.can_address(m.dma, m.len) {
                self.fail(format_args!(
                    "{} uses {:#x}+{} beyond its mask",
                    d.name(),
                    m.dma,
                    m.len
                ));
            }
            if !m.bounced {
                continue;
            }
            let mask = d.min_align_mask();
            let lead = m.phys & mask;
            if m.dma & mask != lead || !in_pool(m.dma - lead, m.len + lead) {
                self.fail(format_args!(
                    "bounce {:#x} of {:#x}+{} ({}) breaks the pool/min_align_mask contract",
                    m.dma,
                    m.phys,
                    m.len,
                    d.name()
                ));
            }
            buf.resize(m.len as usize, 0);
            self.w.host.read(PhysAddr::new(m.dma), &mut buf).unwrap();
            if buf != m.view {
                let at = buf.iter().zip(&m.view).position(|(a, b)| a != b).unwrap();
                self.fail(format_args!(
                    "the live bounce {:#x}+{} of {} ({:#x}, {}) changed at offset {at}: {:#04x}, expected {:#04x}",
                    m.dma, m.len, d.name(), m.phys, m.dir, buf[at], m.view[at]
                ));
            }
            // The lead-in belongs to the bounce (the `BounceBackend` contract).
            let first = (m.dma - lead) / LINE;
            let last = (m.dma + m.len - 1) / LINE;
            bounces.push((first, last, m.dma));
        }
        bounces.sort_unstable();
        for w in bounces.windows(2) {
            if w[1].0 <= w[0].1 {
                self.fail(format_args!(
                    "live bounces {:#x} and {:#x} share a cache line (min_align_mask lead-ins included)",
                    w[0].2, w[1].2
                ));
            }
        }
        self.scratch = buf;
        let u = self.usage();
        if u.live != bounces.len() as u64
            || u.used > u.total
            || u.high_water < u.used
            || (u.live == 0 && u.used != 0)
        {
            self.fail(format_args!(
                "pool usage {u:?} with {} live bounces",
                bounces.len()
            ));
        }
        let queued = self.w.mapper.deferred_len();
        if queued != self.m.pending.len() {
            self.fail(format_args!(
                "{queued} deferred mappings queued, {} expected",
                self.m.pending.len()
            ));
        }
    }
}
