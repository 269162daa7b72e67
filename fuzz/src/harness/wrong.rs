//! Wrong calls: maps of bad ranges, unmaps and syncs of live mappings with one argument
//! wrong, replays of dead mappings. Each must fail when it reaches a bounce, and none may
//! change the pool or any byte the model knows.

use dmakit::{DmaAddr, DmaError, PhysAddr};

use super::{Harness, Live};
use crate::ops::direction;
use crate::world::{in_pool, AREA, ARENA, BASE, POOL_BYTES, POOL_START};

impl Harness {
    pub(super) fn bad_map(&mut self, dev_sel: u8, dir_sel: u8, kind: u8, addr: u64, len: u32) {
        let d = self.w.devices[self.dev_index(dev_sel)].clone();
        let dir = direction(dir_sel);
        let len = u64::from(len);
        let (a, l) = match kind % 5 {
            0 => (BASE + addr % AREA, 0),
            1 => {
                let a = u64::MAX - addr % 4096;
                (a, u64::MAX - a + 2 + len % 1000)
            }
            2 => (addr % (BASE - 8192), 1 + len % 4096),
            3 => (BASE + ARENA - 1 - addr % 256, 257 + len % 4096),
            _ => (BASE + addr % AREA, 16 * 1024 + len % (112 * 1024)),
        };
        let before = self.usage();
        // SAFETY: test-owned memory (model or host arena), untouched while mapped.
        match unsafe { self.w.mapper.map(&d, PhysAddr::new(a), l, dir) } {
            Ok(dma) => {
                if kind % 5 < 2 {
                    self.fail("an invalid range was mapped");
                }
                if !d.can_address(dma.as_u64(), l) {
                    self.fail(format_args!("{dma:?}+{l} is beyond the device's mask"));
                }
                // SAFETY: test-owned memory (model or host arena), untouched while mapped.
                if let Err(e) = unsafe { self.w.mapper.unmap(&d, dma, l, dir) } {
                    self.fail(format_args!("could not unmap what was just mapped: {e}"));
                }
                let after = self.usage();
                if (after.used, after.live) != (before.used, before.live) {
                    self.fail(format_args!(
                        "map+unmap left the pool at {after:?} (was {before:?})"
                    ));
                }
            }
            Err(e) => {
                let want_zero = kind.is_multiple_of(5);
                if want_zero != matches!(e, DmaError::ZeroLength { .. })
                    || (kind % 5 == 1) != matches!(e, DmaError::AddressOverflow { .. })
                {
                    self.fail(format_args!("wrong error {e:?}"));
                }
                self.unchanged(before, "a failed bad map");
            }
        }
    }

    /// Whether `(dev, dma, len, dir)` is exactly a live mapping (a "wrong" call that is in
    /// fact a right one).
    fn is_live(&self, dev: usize, dma: u64, len: u64, dir: dmakit::Direction) -> bool {
        let same = |m: &Live| m.dev == dev && m.dma == dma && m.len == len && m.dir == dir;
        self.m.live.iter().any(same)
    }

    fn other_dev(&self, dev: usize, other: u16) -> usize {
        let n = self.w.devices.len();
        (dev + 1 + usize::from(other) % (n - 1)) % n
    }

    pub(super) fn bad_unmap(&mut self, pick: u8, kind: u8, other: u16) {
        let kind = kind % 6;
        let (dev, dma, len, dir) = if kind == 5 {
            if self.m.dead.is_empty() {
                let a = POOL_START + u64::from(other) % POOL_BYTES;
                (
                    self.dev_index(pick),
                    a,
                    1 + u64::from(pick) % 256,
                    direction(pick),
                )
            } else {
                let x = self.m.dead[usize::from(pick) % self.m.dead.len()];
                (x.dev, x.dma, x.len, x.dir)
            }
        } else {
            if self.m.live.is_empty() {
                return;
            }
            let m = &self.m.live[usize::from(pick) % self.m.live.len()];
            let (dev, dma, len, dir) = (m.dev, m.dma, m.len, m.dir);
            match kind {
                0 => (self.other_dev(dev, other), dma, len, dir),
                1 => (dev, dma, len + 1, dir),
                2 if len > 1 => (dev, dma, len - 1, dir),
                2 => return,
                3 => {
                    let k = dmakit::Direction::ALL
                        .iter()
                        .position(|&x| x == dir)
                        .unwrap();
                    (
                        dev,
                        dma,
                        len,
                        dmakit::Direction::ALL[(k + 1 + usize::from(other) % 2) % 3],
                    )
                }
                _ => (dev, dma + 1 + u64::from(other) % 64, len, dir),
            }
        };
        if self.is_live(dev, dma, len, dir) {
            return;
        }
        let d = self.w.devices[dev].clone();
        let before = self.usage();
        // SAFETY: test-owned memory (model or host arena), untouched while mapped.
        let r = unsafe { self.w.mapper.unmap(&d, DmaAddr::new(dma), len, dir) };
        if r.is_ok() && in_pool(dma, 1) {
            self.fail(format_args!(
                "a wrong unmap of pool address {dma:#x} by {} succeeded",
                d.name()
            ));
        }
        self.unchanged(before, "a wrong unmap");
    }

    pub(super) fn bad_sync(&mut self, pick: u8, kind: u8, other: u8, for_cpu: bool) {
        if self.m.live.is_empty() {
            return;
        }
        let m = &self.m.live[usize::from(pick) % self.m.live.len()];
        let (mut dev, dma, mut off, mut len, mut dir) = (m.dev, m.dma, 0, m.len, m.dir);
        match kind % 3 {
            0 => dev = self.other_dev(dev, u16::from(other)),
            1 => {
                off = u64::from(other) % (m.len + 1);
                len = m.len - off + 1;
            }
            _ => {
                let wrong: Vec<_> = dmakit::Direction::ALL
                    .into_iter()
                    .filter(|&x| !m.dir.permits_sync(x))
                    .collect();
                if wrong.is_empty() {
                    return;
                }
                dir = wrong[usize::from(other) % wrong.len()];
            }
        }
        let bounced = m.bounced;
        let d = self.w.devices[dev].clone();
        let before = self.usage();
        let a = DmaAddr::new(dma);
        let r = if for_cpu {
            // SAFETY: test-owned memory (model or host arena), untouched while mapped.
            unsafe { self.w.mapper.sync_for_cpu(&d, a, off, len, dir) }
        } else {
            // SAFETY: test-owned memory (model or host arena), untouched while mapped.
            unsafe { self.w.mapper.sync_for_device(&d, a, off, len, dir) }
        };
        if r.is_ok() && bounced {
            self.fail(format_args!(
                "a wrong sync ({} at {dma:#x}+{off}, {len} bytes, {dir}) of a bounce succeeded",
                d.name()
            ));
        }
        self.unchanged(before, "a wrong sync");
    }
}
