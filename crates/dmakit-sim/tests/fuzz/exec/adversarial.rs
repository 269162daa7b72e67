//! The adversarial operations: a hostile untrusted device reading and writing every
//! granule it can reach, wrong unmaps, every kind of invalid call, faulting bounce copies,
//! detach, and DMA allocations behind large-granule IOMMUs.

use std::sync::Arc;

use dmakit::dma_alloc::{DmaAllocator, DmaAllocatorConfig};
use dmakit::{
    AllocContext, Device, DeviceId, Direction, DmaAddr, DmaError, PhysAddr, PhysRange, SgEntry,
};
use dmakit_mem::ZonedPageAllocator;
use dmakit_sim::Owner;

use super::super::check::{self, fail, Checked};
use super::super::ops::{BadUnmap, Invalid};
use super::super::rig::{self, Behind, KIB};
use super::{hostile, Kind, Live, State};

impl State {
    /// The whole granules of a live IOMMU mapping of an untrusted device.
    pub(super) fn windows(&self, l: &Live, dma: DmaAddr) -> Vec<(u64, u64)> {
        let d = &self.rig.devices[l.dev];
        let g = self.rig.granule(d).unwrap();
        l.ranges_with(dma, self)
            .iter()
            .map(|&(a, n)| {
                let s = a.as_u64() & !(g - 1);
                (s, (a.as_u64() + n).next_multiple_of(g))
            })
            .collect()
    }

    pub(super) fn hostile_read(&mut self, i: usize) -> Checked {
        let d = self.dev(i);
        if !d.untrusted() || self.detached[i] {
            return Ok(());
        }
        let mine: Vec<usize> = (0..self.live.len())
            .filter(|&k| self.live[k].0.dev == i && self.live[k].0.dir.device_reads())
            .collect();
        let mut granted: Vec<(u64, u64)> = Vec::new();
        for (l, dma) in self.live.iter().filter(|(l, _)| l.dev == i) {
            granted.extend(self.windows(l, *dma));
        }
        for k in mine {
            let (l, dma) = (&self.live[k].0, self.live[k].1);
            // The buffer's bytes as they are now (a device may have written them earlier),
            // and whatever this device itself wrote.
            let mut allowed: Vec<Owner> = l
                .bufs()
                .iter()
                .flat_map(|&b| self.bufs[b].owners.iter().copied())
                .collect();
            allowed.push(hostile(d.id()));
            allowed.sort_by_key(|o| o.0);
            allowed.dedup();
            for (s, e) in self.windows(l, dma) {
                let (a, n) = (DmaAddr::new(s), e - s);
                self.rig.m.grant(d.id(), a, n).unwrap();
                let seen = self.rig.m.device_read(d.id(), a, n);
                self.rig.m.revoke(d.id(), a, n).unwrap();
                let seen = match seen {
                    Ok(s) => s,
                    Err(err) => {
                        return fail(
                            "ok-mapping-unusable",
                            format!("{}: granule read {a} (+{n}): {err}", d.dev.name()),
                        )
                    }
                };
                check::isolated(
                    &format!(
                        "{} ({}) reads the granules {a}..{e:#x} of its mapping {dma}",
                        d.dev.name(),
                        d.what
                    ),
                    &seen.data,
                    &seen.owners,
                    &allowed,
                )?;
                // Beyond what was granted the engine refuses.
                if !granted.iter().any(|&(gs, ge)| gs <= e && e < ge)
                    && self.rig.m.device_read(d.id(), DmaAddr::new(e), 1).is_ok()
                {
                    return fail(
                        "read-outside-grant",
                        format!("{} read {e:#x}, never granted", d.dev.name()),
                    );
                }
            }
        }
        Ok(())
    }

    pub(super) fn hostile_write(&mut self, k: usize) -> Checked {
        let (l, dma) = (&self.live[k].0, self.live[k].1);
        let Kind::Single { buf } = l.kind else {
            return Ok(());
        };
        let d = self.dev(l.dev);
        if !d.untrusted() || self.detached[l.dev] || !l.dir.device_writes() {
            return Ok(());
        }
        let w = self.windows(l, dma);
        let (s, e) = w[0];
        let mut junk = vec![0; (e - s) as usize];
        self.rng.fill_bytes(&mut junk);
        let (a, n) = (DmaAddr::new(s), e - s);
        self.rig.m.grant(d.id(), a, n).unwrap();
        let r = self.rig.m.device_write(d.id(), a, &junk, hostile(d.id()));
        self.rig.m.revoke(d.id(), a, n).unwrap();
        if let Err(err) = r {
            return fail(
                "ok-mapping-unusable",
                format!("{}: granule write {a} (+{n}): {err}", d.dev.name()),
            );
        }
        // What landed on the buffer is the device's; the rest is its own padding.
        let off = (dma.as_u64() - s) as usize;
        let b = &mut self.bufs[buf];
        let len = b.len as usize;
        b.data.copy_from_slice(&junk[off..off + len]);
        b.owners.fill(hostile(d.id()));
        Ok(())
    }

    pub(super) fn bad_unmap(&mut self, pick: u32, kind: BadUnmap) -> Checked {
        let Some(k) = self.pick(pick, |l| {
            l.recorded && matches!(l.kind, Kind::Single { .. })
        }) else {
            return Ok(());
        };
        let (l, dma) = (&self.live[k].0, self.live[k].1);
        let Kind::Single { buf } = l.kind else {
            unreachable!()
        };
        let (i, dir) = (l.dev, l.dir);
        let d = self.dev(i);
        let len = self.bufs[buf].len;
        if kind == BadUnmap::Double {
            self.unmap(k)?;
            self.checker_quiet("the first of a double unmap")?;
        }
        let (a, n, dr) = match kind {
            BadUnmap::WrongSize => (dma, if len > 1 { len - 1 } else { len + 1 }, dir),
            BadUnmap::WrongDirection => (
                dma,
                len,
                match dir {
                    Direction::ToDevice => Direction::FromDevice,
                    _ => Direction::ToDevice,
                },
            ),
            BadUnmap::Double => (dma, len, dir),
            BadUnmap::Unknown => (dma.add(8), len.saturating_sub(8).max(1), dir),
        };
        if kind == BadUnmap::Unknown && self.live.iter().any(|(_, s)| s.as_u64() == a.as_u64()) {
            return Ok(());
        }
        self.invalid_call = true;
        let before = check::usages(&self.rig);
        let checker = self.rig.mapper(&d).debug_checker().unwrap();
        let reported = checker.reports().len();
        // SAFETY: test-owned memory (model or host arena), untouched while mapped.
        let r = unsafe { self.rig.mapper(&d).unmap(&d.dev, a, n, dr) };
        // An address that no longer looks like a bounce (a transient bounce's pages went
        // back) is unmapped as a direct mapping, which keeps no record: then the debug
        // checker must report it, as documented.
        if r.is_ok() && checker.reports().len() == reported {
            return fail(
                "invalid-unmap-accepted",
                format!(
                    "{}: {kind:?} unmap ({a}, {n}, {}) returned Ok and the checker said nothing",
                    d.dev.name(),
                    dr.name()
                ),
            );
        }
        check::pools_unchanged(
            &before,
            &check::usages(&self.rig),
            &format!("{kind:?} unmap"),
        )
    }

    pub(super) fn invalid(&mut self, i: usize, kind: Invalid) -> Checked {
        let d = self.dev(i);
        let mapper = self.rig.mapper(&d);
        let b = &self.bufs[0];
        let before = check::usages(&self.rig);
        self.invalid_call = true;
        let name = d.dev.name();
        let must_fail = |r: bool, what: &str| {
            if r {
                fail(
                    match kind {
                        Invalid::Huge => "huge-range-accepted",
                        _ => "invalid-call-accepted",
                    },
                    format!("{name}: {what} returned Ok"),
                )
            } else {
                Ok(())
            }
        };
        match kind {
            Invalid::ZeroLength => must_fail(
                // SAFETY: test-owned memory (model or host arena), untouched while mapped.
                unsafe { mapper.map(&d.dev, b.phys, 0, Direction::ToDevice) }.is_ok(),
                "map of 0 bytes",
            )?,
            Invalid::Overflow => must_fail(
                // SAFETY: test-owned memory (model or host arena), untouched while mapped.
                unsafe {
                    mapper.map(
                        &d.dev,
                        PhysAddr::new(u64::MAX - 10),
                        100,
                        Direction::ToDevice,
                    )
                }
                .is_ok(),
                "map wrapping past u64::MAX",
            )?,
            Invalid::Huge => must_fail(
                // SAFETY: test-owned memory (model or host arena), untouched while mapped.
                unsafe { mapper.map(&d.dev, PhysAddr::new(0), u64::MAX, Direction::ToDevice) }
                    .is_ok(),
                "map(0, u64::MAX)",
            )?,
            Invalid::EmptySg => must_fail(
                // SAFETY: test-owned memory (model or host arena), untouched while mapped.
                unsafe { mapper.map_sg(&d.dev, &[], Direction::ToDevice) }.is_ok(),
                "map_sg(&[])",
            )?,
            Invalid::ZeroLengthSgEntry => {
                let e = [
                    SgEntry {
                        phys: b.phys,
                        len: b.len.min(8),
                    },
                    SgEntry {
                        phys: b.phys.add(64),
                        len: 0,
                    },
                ];
                must_fail(
                    // SAFETY: test-owned memory (model or host arena), untouched while mapped.
                    unsafe { mapper.map_sg(&d.dev, &e, Direction::ToDevice) }.is_ok(),
                    "map_sg with a zero-length entry",
                )?
            }
            Invalid::EmptyUnmapSg => {
                // SAFETY: test-owned memory (model or host arena), untouched while mapped.
                let ok = unsafe { mapper.unmap_sg(&d.dev, &[], Direction::ToDevice) }.is_ok();
                match self.empty_unmap_sg {
                    None => self.empty_unmap_sg = Some((d.id(), ok)),
                    Some((other, was)) if was != ok => {
                        return fail(
                            "paths-disagree",
                            format!(
                                "unmap_sg(&[]): {other} got ok={was}, {name} ({}) got ok={ok}",
                                d.what
                            ),
                        )
                    }
                    Some(_) => {}
                }
            }
            Invalid::SyncOutOfRange => {
                if let Some(k) = self.pick(0, |l| {
                    l.dev == i && l.recorded && matches!(l.kind, Kind::Single { .. })
                }) {
                    let (l, dma) = (&self.live[k].0, self.live[k].1);
                    let Kind::Single { buf } = l.kind else {
                        unreachable!()
                    };
                    let len = self.bufs[buf].len;
                    must_fail(
                        // SAFETY: test-owned memory (model or host arena), untouched while mapped.
                        unsafe { mapper.sync_for_cpu(&d.dev, dma, len, 1, l.dir) }.is_ok(),
                        "sync past the mapping's end",
                    )?;
                }
            }
            Invalid::DmaBits65 => {
                // The edges: 64 bits is a valid mask, anything above is not.
                let bits = |n| Device::builder(DeviceId(99), "bits").dma_bits(n).build();
                for n in [65, 96, u32::MAX] {
                    if bits(n).is_ok() {
                        return fail(
                            "dma-bits-65-accepted",
                            format!("dma_bits({n}) was accepted"),
                        );
                    }
                }
                if let Err(e) = bits(64) {
                    return fail("dma-bits-64-refused", format!("dma_bits(64): {e:?}"));
                }
            }
            Invalid::NearTop => {
                // Valid or not, a range ending next to u64::MAX must not panic; if mapped,
                // it unmaps.
                let coh = self.dev(7);
                let at = PhysAddr::new(u64::MAX - 0x3f);
                // SAFETY: test-owned memory (model or host arena), untouched while mapped.
                if let Ok(dma) = unsafe {
                    self.rig
                        .mapper(&coh)
                        .map(&coh.dev, at, 0x20, Direction::ToDevice)
                } {
                    // SAFETY: test-owned memory (model or host arena), untouched while mapped.
                    let _ = unsafe {
                        self.rig
                            .mapper(&coh)
                            .unmap(&coh.dev, dma, 0x20, Direction::ToDevice)
                    };
                }
                // The checker's public entry for coherent memory the caller allocated
                // itself takes any address: a record at the very top, then its free.
                if let Some(c) = self.rig.mapper(&coh).debug_checker() {
                    c.coherent_allocated(&coh.dev, DmaAddr::new(at.as_u64()), at, 0x20);
                    c.coherent_freeing(&coh.dev, DmaAddr::new(at.as_u64()), 0x20);
                }
            }
        }
        check::pools_unchanged(
            &before,
            &check::usages(&self.rig),
            &format!("invalid call {kind:?}"),
        )
    }

    pub(super) fn detach(&mut self, i: usize) -> Checked {
        let d = self.dev(i);
        let Behind::Iommu { unit, .. } = d.behind else {
            return Ok(());
        };
        if self.detached[i] || self.pending.iter().any(|p| p.dev == i) {
            return Ok(());
        }
        self.unmap_all_of(i)?;
        self.rig.iommus[unit].flush_queues(0);
        if self.rig.iommus[unit].detach(&d.dev).is_ok() {
            self.detached[i] = true;
        }
        Ok(())
    }

    pub(super) fn alloc_dma(&mut self, unit: u8, pages: bool) -> Checked {
        let unit = unit as usize;
        let i = if unit == 1 { 11 } else { 13 };
        if self.detached[i] {
            return Ok(());
        }
        let d = self.dev(i);
        let m = self.rig.m.clone();
        let zones = self
            .zones
            .get_or_insert_with(|| {
                let low = m
                    .alloc_pages_between(2048, 16 << 20, rig::BELOW_4G)
                    .unwrap();
                Arc::new(
                    ZonedPageAllocator::new(&[PhysRange::new(low, 2048 * 4096).unwrap()]).unwrap(),
                )
            })
            .clone();
        let cfg = DmaAllocatorConfig {
            atomic_pool_bytes: 64 * KIB,
            ..DmaAllocatorConfig::default()
        };
        let a =
            match DmaAllocator::new(&*m, zones.clone(), self.rig.iommus[unit].clone(), cfg, None) {
                Ok(a) => a,
                Err(e) => return fail("dma-allocator-refused", format!("{e:?}")),
            };
        let g = self.rig.granules[unit];
        let r = if pages {
            a.alloc_pages(&d.dev, 8 * KIB, Direction::Bidirectional)
                .map(|p| a.free_pages(&d.dev, p).is_ok())
        } else {
            a.alloc_coherent(&d.dev, 4 * KIB, AllocContext::MayBlock)
                .map(|c| a.free_coherent(&d.dev, c).is_ok())
        };
        let _ = a.release();
        match r {
            Ok(true) => Ok(()),
            Ok(false) => fail(
                "dma-free-refused",
                format!("{}: free after a sub-granule allocation", d.dev.name()),
            ),
            Err(e) => fail(
                "sub-granule-alloc-refused",
                format!(
                    "{}: {} of {} KiB behind a {} KiB IOMMU: {e:?}",
                    d.dev.name(),
                    if pages {
                        "alloc_pages"
                    } else {
                        "alloc_coherent"
                    },
                    if pages { 8 } else { 4 },
                    g / KIB
                ),
            ),
        }
    }

    pub(super) fn fault_map(&mut self, pick: u8) -> Checked {
        // Devices that must bounce whatever they map: the bounce copy reads outside RAM.
        let i = [4usize, 6, 9, 13][pick as usize % 4];
        if self.detached[i] {
            return Ok(());
        }
        let d = self.dev(i);
        let (phys, len) = self.fault_buf;
        let before = check::usages(&self.rig);
        let nfired = self.fired.lock().unwrap().len();
        self.invalid_call = true;
        // SAFETY: test-owned memory (model or host arena), untouched while mapped.
        match unsafe {
            self.rig
                .mapper(&d)
                .map(&d.dev, phys, len, Direction::ToDevice)
        } {
            Ok(dma) => {
                // SAFETY: test-owned memory (model or host arena), untouched while mapped.
                let _ = unsafe {
                    self.rig
                        .mapper(&d)
                        .unmap(&d.dev, dma, len, Direction::ToDevice)
                };
                fail(
                    "fault-map-accepted",
                    format!(
                        "{}: a bounce of memory outside RAM ({phys}) mapped",
                        d.dev.name()
                    ),
                )
            }
            Err(_) => self.failed_left_pools(
                &before,
                nfired,
                &format!("faulting bounce by {}", d.dev.name()),
            ),
        }
    }

    /// A write-only bounce of memory outside RAM on the mapper without inbound fills: the
    /// map succeeds, the copy back at unmap faults. Whatever unmap answers, the mapping is
    /// over (its IOVA is gone), so its slot must be free again.
    pub(super) fn fault_unmap(&mut self) -> Checked {
        let d = self.dev(17);
        let (phys, len) = self.fault_buf;
        let p = check::POOLS - 1;
        let before = check::usages(&self.rig)[p];
        self.invalid_call = true;
        // SAFETY: test-owned memory (model or host arena), untouched while mapped.
        let Ok(dma) = (unsafe {
            self.rig
                .mapper(&d)
                .map(&d.dev, phys, len, Direction::FromDevice)
        }) else {
            return Ok(());
        };
        // SAFETY: test-owned memory (model or host arena), untouched while mapped.
        let r = unsafe {
            self.rig
                .mapper(&d)
                .unmap(&d.dev, dma, len, Direction::FromDevice)
        };
        let after = check::usages(&self.rig)[p];
        if after.used > before.used || after.live > before.live {
            return fail(
                "faulting-unmap-leaks",
                format!(
                    "{}: unmap whose copy back faulted ({r:?}) left {} {before:?} -> {after:?}",
                    d.dev.name(),
                    check::POOL_NAMES[p]
                ),
            );
        }
        Ok(())
    }

    /// A device whose `min_align_mask` no segment of its pool can honour: every map fails,
    /// and the error must say something useful.
    pub(super) fn boundary_map(&mut self, buf: u16) -> Checked {
        let d = self.dev(18);
        let Some(b) = self.idle(buf) else {
            return Ok(());
        };
        let (phys, len) = (self.bufs[b].phys, self.bufs[b].len);
        let before = check::usages(&self.rig);
        // SAFETY: test-owned memory (model or host arena), untouched while mapped.
        match unsafe {
            self.rig
                .mapper(&d)
                .map(&d.dev, phys, len, Direction::ToDevice)
        } {
            Ok(dma) => {
                // SAFETY: test-owned memory (model or host arena), untouched while mapped.
                if let Err(e) = unsafe {
                    self.rig
                        .mapper(&d)
                        .unmap(&d.dev, dma, len, Direction::ToDevice)
                } {
                    return fail("valid-unmap-refused", format!("{}: {e:?}", d.dev.name()));
                }
                self.check_buffer(b, "after an unmap by alignffff")
            }
            Err(DmaError::TooLargeToBounce { max: 0, .. }) => fail(
                "too-large-says-nothing",
                format!(
                    "{}: {len} bytes: TooLargeToBounce {{ max: 0 }}",
                    d.dev.name()
                ),
            ),
            Err(_) => {
                check::pools_unchanged(&before, &check::usages(&self.rig), "alignffff's failed map")
            }
        }
    }
}
