//! Runs a [`Program`] against the mapper and the model, checking after every call.
//!
//! What a run asserts, beyond "no panic":
//! - every byte of buffer memory is what the model says (so bounces copy exactly the
//!   mapping's bytes, never a neighbour's, and a device's writes reach the CPU exactly at
//!   unmap or `sync_for_cpu`);
//! - every bounced mapping's device view holds what the device must see (so no call of
//!   another device, nor a wrong call, reads or overwrites a live bounce);
//! - a mapping is bounced exactly when the README's rules say so, its address is reachable
//!   by the device, a bounce keeps the `min_align_mask` bits and lies in the pool, and no
//!   two live bounces share a cache line;
//! - the pool's live count is the model's bounced mappings, and a failed call (or a wrong
//!   call on a direct mapping) leaves the pool's usage (used, live, high-water) unchanged;
//! - deferred mappings complete once each, in request order; when everything is unmapped
//!   the pool is empty and no request is left waiting.

use std::sync::{Arc, Mutex};

use dmakit::bounce::PoolUsage;
use dmakit::{DmaAddr, DmaError, MapPath, MapStatus, PhysAddr, SgEntry};

mod check;
mod wrong;

use crate::model::{must_bounce, sg_pieces, Live, Model, Pending};
use crate::ops::{direction, length, pattern, Buf, Op, Program, MAX_OPS};
use crate::world::{World, AREA, ARENA, BASE, CPUS, POOL_BYTES, POOL_START};

/// Most live mappings (segments included) and waiting requests at once.
const MAX_LIVE: usize = 64;
const MAX_PENDING: usize = 16;

type Completions = Arc<Mutex<Vec<(u64, Result<DmaAddr, DmaError>)>>>;

/// One run.
pub struct Harness {
    w: World,
    m: Model,
    done: Completions,
    step: usize,
    op: String,
    scratch: Vec<u8>,
}

/// Runs `p`; panics (a crash for libFuzzer) on the first broken promise.
pub fn run_program(p: &Program) {
    let mut h = Harness {
        w: World::new(p.debug_checker),
        m: Model::new(ARENA),
        done: Arc::default(),
        step: 0,
        op: String::new(),
        scratch: Vec::new(),
    };
    for (i, op) in p.ops.iter().take(MAX_OPS).enumerate() {
        h.step = i;
        h.op = format!("{op:?}");
        h.exec(op);
        h.drain();
        h.check();
    }
    h.finish();
}

/// The start of buffer area `sel & 1` (below the pool, or above it past 4 GiB) and its end.
fn area(sel: u8) -> (u64, u64) {
    let start = if sel & 1 == 0 {
        BASE
    } else {
        POOL_START + POOL_BYTES
    };
    (start, start + AREA)
}

impl Harness {
    fn fail(&self, what: impl std::fmt::Display) -> ! {
        panic!("step {} ({}): {what}", self.step, self.op)
    }

    fn usage(&self) -> PoolUsage {
        self.w.mapper.stats().pools[0].usage
    }

    fn exec(&mut self, op: &Op) {
        match op {
            Op::Map(b) => self.map(*b, false),
            Op::MapOrDefer(b) => self.map(*b, true),
            Op::MapSg { dev, dir, entries } => self.map_sg(*dev, *dir, entries),
            Op::Unmap { pick } => self.unmap(*pick),
            Op::Sync {
                pick,
                for_cpu,
                full,
                off,
                len,
            } => self.sync(*pick, *for_cpu, *full, *off, *len),
            Op::DeviceWrite {
                pick,
                off,
                len,
                seed,
            } => self.device_write(*pick, *off, *len, *seed),
            Op::CpuWrite { off, len, seed } => self.cpu_write(*off, *len, *seed),
            Op::RetryDeferred => self.w.mapper.retry_deferred(),
            Op::Cpu(n) => self.w.host.bind_current_thread(usize::from(*n) % CPUS),
            Op::BadMap {
                dev,
                dir,
                kind,
                addr,
                len,
            } => self.bad_map(*dev, *dir, *kind, *addr, *len),
            Op::BadUnmap { pick, kind, other } => self.bad_unmap(*pick, *kind, *other),
            Op::BadSync {
                pick,
                kind,
                other,
                for_cpu,
            } => self.bad_sync(*pick, *kind, *other, *for_cpu),
        }
    }

    fn dev_index(&self, sel: u8) -> usize {
        usize::from(sel & 0x7f) % self.w.devices.len()
    }

    /// A free buffer range from selectors, or `None` when it is taken.
    fn free_range(&self, area_sel: u8, off: u16, len: u64) -> Option<(u64, u64)> {
        let (start, end) = area(area_sel);
        let phys = start + u64::from(off) % AREA;
        let len = len.min(end - phys);
        (!self.m.busy(phys, len)).then_some((phys, len))
    }

    /// Records a mapping that just succeeded, after checking its path.
    fn add_live(&mut self, dev: usize, phys: u64, len: u64, dir: dmakit::Direction, dma: u64) {
        let bounced = dma != phys;
        let d = &self.w.devices[dev];
        if bounced != must_bounce(d, phys, len, dir) {
            self.fail(format_args!(
                "{} mapping {phys:#x}+{len} {dir} bounced={bounced}, the rules say {}",
                d.name(),
                !bounced
            ));
        }
        let view = if bounced {
            self.m.bytes(phys, len).to_vec()
        } else {
            Vec::new()
        };
        self.m.live.push(Live {
            dev,
            phys,
            len,
            dir,
            dma,
            bounced,
            view,
            group: None,
        });
    }

    fn unchanged(&self, before: PoolUsage, what: &str) {
        let after = self.usage();
        if after != before {
            self.fail(format_args!(
                "{what} changed the pool: {before:?} -> {after:?}"
            ));
        }
    }

    fn map(&mut self, b: Buf, defer: bool) {
        if self.m.live.len() >= MAX_LIVE || self.m.pending.len() >= MAX_PENDING {
            return;
        }
        let dev = self.dev_index(b.dev);
        let dir = direction(b.dir);
        let Some((phys, len)) = self.free_range(b.dev >> 7, b.off, length(b.len)) else {
            return;
        };
        let before = self.usage();
        let d = self.w.devices[dev].clone();
        let must = must_bounce(&d, phys, len, dir);
        let pa = PhysAddr::new(phys);
        if !defer {
            // SAFETY: test-owned memory (model or host arena), untouched while mapped.
            match unsafe { self.w.mapper.map_traced(&d, pa, len, dir) } {
                Ok((dma, path)) => {
                    if matches!(path, MapPath::Bounced { .. }) != (dma.as_u64() != phys) {
                        self.fail(format_args!("path {path:?} but dma {dma:?}"));
                    }
                    self.add_live(dev, phys, len, dir, dma.as_u64());
                }
                Err(e) => self.map_failed(e, must, before),
            }
            return;
        }
        let token = self.m.id();
        let done = self.done.clone();
        let cb = Box::new(move |r| done.lock().unwrap().push((token, r)));
        let queued = !self.m.pending.is_empty();
        // SAFETY: test-owned memory (model or host arena), untouched while mapped.
        match unsafe { self.w.mapper.map_or_defer(&d, pa, len, dir, cb) } {
            Ok(MapStatus::Mapped(dma)) => {
                if queued {
                    self.fail("mapped at once although earlier requests wait");
                }
                self.add_live(dev, phys, len, dir, dma.as_u64());
            }
            Ok(MapStatus::Deferred) => {
                if !queued && !must {
                    self.fail("a direct mapping was deferred");
                }
                self.unchanged(before, "deferring");
                self.m.pending.push(Pending {
                    token,
                    dev,
                    phys,
                    len,
                    dir,
                });
            }
            Err(e) => {
                if matches!(e, DmaError::PoolExhausted { .. }) {
                    self.fail("map_or_defer failed with exhaustion instead of waiting");
                }
                self.map_failed(e, must, before)
            }
        }
    }

    /// A valid in-buffer map failed: only a bounce may fail, only for want of room.
    fn map_failed(&self, e: DmaError, must: bool, before: PoolUsage) {
        if !must {
            self.fail(format_args!("a direct mapping failed: {e}"));
        }
        if !matches!(
            e,
            DmaError::PoolExhausted { .. } | DmaError::TooLargeToBounce { .. }
        ) {
            self.fail(format_args!("unexpected error {e:?}"));
        }
        self.unchanged(before, "a failed map");
    }

    fn map_sg(&mut self, dev_sel: u8, dir_sel: u8, entries: &[(u16, u16)]) {
        let dev = self.dev_index(dev_sel);
        let d = self.w.devices[dev].clone();
        let dir = direction(dir_sel);
        let mut ranges: Vec<(u64, u64)> = Vec::new();
        for (i, &(off, len)) in entries.iter().take(4).enumerate() {
            let Some((p, l)) = self.free_range((dev_sel >> 7) ^ i as u8, off, length(len)) else {
                return;
            };
            if ranges.iter().any(|&(q, k)| p < q + k && q < p + l) {
                return;
            }
            ranges.push((p, l));
        }
        let pieces: Vec<(u64, u64)> = ranges
            .iter()
            .flat_map(|&(p, l)| sg_pieces(&d, p, l))
            .collect();
        if ranges.is_empty() || self.m.live.len() + pieces.len() > MAX_LIVE {
            return;
        }
        let sg: Vec<SgEntry> = ranges
            .iter()
            .map(|&(p, l)| SgEntry {
                phys: PhysAddr::new(p),
                len: l,
            })
            .collect();
        let before = self.usage();
        // SAFETY: test-owned memory (model or host arena), untouched while mapped.
        match unsafe { self.w.mapper.map_sg(&d, &sg, dir) } {
            Ok(segs) => {
                if segs.len() != pieces.len() {
                    self.fail(format_args!(
                        "{} segments for {} pieces",
                        segs.len(),
                        pieces.len()
                    ));
                }
                let id = self.m.id();
                for (s, &(p, l)) in segs.iter().zip(&pieces) {
                    let (a, mask) = (s.dma.as_u64(), d.seg_boundary_mask());
                    if s.len != l || (a & !mask) != ((a + l - 1) & !mask) {
                        self.fail(format_args!("segment {s:?} for piece {p:#x}+{l}"));
                    }
                    self.add_live(dev, p, l, dir, a);
                    self.m.live.last_mut().unwrap().group = Some(id);
                }
                self.m
                    .groups
                    .push(crate::model::Group { id, dev, dir, segs });
            }
            Err(e) => {
                if !pieces.iter().any(|&(p, l)| must_bounce(&d, p, l, dir)) {
                    self.fail(format_args!("a direct sg list failed: {e}"));
                }
                if !matches!(
                    e,
                    DmaError::PoolExhausted { .. }
                        | DmaError::TooLargeToBounce { .. }
                        | DmaError::OutOfMapping { .. }
                ) {
                    self.fail(format_args!("unexpected sg error {e:?}"));
                }
                self.unchanged(before, "a failed map_sg");
            }
        }
    }

    fn unmap(&mut self, pick: u8) {
        if self.m.live.is_empty() {
            return;
        }
        let i = usize::from(pick) % self.m.live.len();
        self.unmap_at(i);
    }

    /// Unmaps live mapping `i` (its whole list, for an sg segment) and checks it worked.
    fn unmap_at(&mut self, i: usize) {
        let (dev, group) = (self.m.live[i].dev, self.m.live[i].group);
        let d = self.w.devices[dev].clone();
        let r = match group {
            Some(id) => {
                let g = self.m.groups.iter().position(|g| g.id == id).unwrap();
                let g = self.m.groups.remove(g);
                // SAFETY: test-owned memory (model or host arena), untouched while mapped.
                unsafe { self.w.mapper.unmap_sg(&d, &g.segs, g.dir) }
            }
            None => {
                let m = &self.m.live[i];
                let (dma, len, dir) = (DmaAddr::new(m.dma), m.len, m.dir);
                // SAFETY: test-owned memory (model or host arena), untouched while mapped.
                unsafe { self.w.mapper.unmap(&d, dma, len, dir) }
            }
        };
        if let Err(e) = r {
            self.fail(format_args!("unmap of a live mapping failed: {e}"));
        }
        let gone: Vec<usize> = (0..self.m.live.len())
            .filter(|&j| j == i || (group.is_some() && self.m.live[j].group == group))
            .collect();
        for &j in gone.iter().rev() {
            let len = self.m.live[j].len;
            self.m.copy_back(j, 0, len);
            let m = self.m.live.remove(j);
            self.m.bury(&m);
        }
    }

    fn sync(&mut self, pick: u8, for_cpu: bool, full: bool, off: u16, len: u16) {
        if self.m.live.is_empty() {
            return;
        }
        let i = usize::from(pick) % self.m.live.len();
        let m = &self.m.live[i];
        let (o, l) = if full {
            (0, m.len)
        } else {
            let o = u64::from(off) % m.len;
            (o, 1 + u64::from(len) % (m.len - o))
        };
        let d = self.w.devices[m.dev].clone();
        let (dma, dir) = (DmaAddr::new(m.dma), m.dir);
        let before = self.usage();
        let r = if for_cpu {
            // SAFETY: test-owned memory (model or host arena), untouched while mapped.
            unsafe { self.w.mapper.sync_for_cpu(&d, dma, o, l, dir) }
        } else {
            // SAFETY: test-owned memory (model or host arena), untouched while mapped.
            unsafe { self.w.mapper.sync_for_device(&d, dma, o, l, dir) }
        };
        if let Err(e) = r {
            self.fail(format_args!("sync of a live mapping failed: {e}"));
        }
        self.unchanged(before, "a sync");
        if for_cpu {
            self.m.copy_back(i, o, l);
        } else {
            self.m.copy_out(i, o, l);
        }
    }

    fn device_write(&mut self, pick: u8, off: u16, len: u16, seed: u8) {
        let writable: Vec<usize> = (0..self.m.live.len())
            .filter(|&i| self.m.live[i].dir.device_writes())
            .collect();
        if writable.is_empty() {
            return;
        }
        let i = writable[usize::from(pick) % writable.len()];
        let m = &self.m.live[i];
        let o = u64::from(off) % m.len;
        let l = 1 + u64::from(len) % (m.len - o);
        let data = pattern(seed, self.step as u64, l);
        if let Err(f) = self.w.host.write(PhysAddr::new(m.dma + o), &data) {
            self.fail(format_args!("the device's address is not memory: {f:?}"));
        }
        if m.bounced {
            self.m.live[i].view[o as usize..(o + l) as usize].copy_from_slice(&data);
        } else {
            let at = m.phys + o;
            self.m.set(at, &data);
        }
    }

    fn cpu_write(&mut self, off: u16, len: u16, seed: u8) {
        let Some((phys, len)) = self.free_range(seed, off, 1 + u64::from(len) % 512) else {
            return;
        };
        let data = pattern(seed, self.step as u64, len);
        self.w.host.write(PhysAddr::new(phys), &data).unwrap();
        self.m.set(phys, &data);
    }

    /// Takes the completions of deferred mappings.
    fn drain(&mut self) {
        let done: Vec<_> = std::mem::take(&mut *self.done.lock().unwrap());
        for (token, r) in done {
            let Some(head) = self.m.pending.first() else {
                self.fail(format_args!("completion {token} with nothing waiting"));
            };
            if head.token != token {
                self.fail(format_args!(
                    "completion {token} before the older request {}",
                    head.token
                ));
            }
            let p = self.m.pending.remove(0);
            if let Ok(dma) = r {
                self.add_live(p.dev, p.phys, p.len, p.dir, dma.as_u64());
            }
        }
    }

    /// Unmaps everything (completing what waits), then checks the pool is empty.
    fn finish(&mut self) {
        self.step = usize::MAX;
        self.op = "unmap all".into();
        for _ in 0..4 * (MAX_LIVE + MAX_PENDING) {
            if self.m.live.is_empty() {
                if self.m.pending.is_empty() {
                    break;
                }
                self.w.mapper.retry_deferred();
                self.drain();
                if self.m.live.is_empty() && !self.m.pending.is_empty() {
                    self.fail("a deferred mapping cannot complete in an empty pool");
                }
            } else {
                self.unmap_at(0);
                self.drain();
            }
            self.check();
        }
        let u = self.usage();
        if u.used != 0 || u.live != 0 || !self.m.pending.is_empty() {
            self.fail(format_args!(
                "after unmapping all: {u:?}, {} waiting",
                self.m.pending.len()
            ));
        }
        for d in &self.w.devices {
            let leaks = self.w.mapper.release_device(d);
            if !leaks.is_empty() {
                self.fail(format_args!(
                    "{} leaks after unmapping all: {leaks:?}",
                    d.name()
                ));
            }
        }
    }
}
