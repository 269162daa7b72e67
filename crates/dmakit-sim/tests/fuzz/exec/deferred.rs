//! Deferred mappings and what frees room for them: `map_or_defer` (and the checks that a
//! deferral was justified), completions, `release_device`, growth and retries.

use dmakit::{Direction, MapStatus};

use super::super::check::{self, fail, Checked};
use super::super::rig::{self, GIB, SEGMENT};
use super::{Kind, Pending, State};

impl State {
    pub(super) fn map_or_defer(&mut self, i: usize, b: usize, dir: Direction) -> Checked {
        let d = self.dev(i);
        let (phys, len) = (self.bufs[b].phys, self.bufs[b].len);
        let token = self.next_id;
        self.next_id += 1;
        let fired = self.fired.clone();
        let done = Box::new(move |r| fired.lock().unwrap().push((token, r)));
        let pool = self.pool_for(i);
        let queued_same_pool = self.pending.iter().any(|p| {
            !p.cancelled
                && self.pool_for(p.dev) == pool
                && self.rig.devices[p.dev].mapper == d.mapper
        });
        let before = check::usages(&self.rig);
        let nfired = self.fired.lock().unwrap().len();
        // SAFETY: test-owned memory (model or host arena), untouched while mapped.
        match unsafe {
            self.rig
                .mapper(&d)
                .map_or_defer(&d.dev, phys, len, dir, done)
        } {
            Ok(MapStatus::Mapped(dma)) => {
                self.add_live(i, dir, Kind::Single { buf: b }, &[(dma, len)])
            }
            Ok(MapStatus::Deferred) => {
                self.bufs[b].busy = true;
                self.pending.push(Pending {
                    token,
                    dev: i,
                    buf: b,
                    dir,
                    cancelled: false,
                });
                if self.detached[i] {
                    return Ok(());
                }
                let lead = phys.as_u64() & d.dev.min_align_mask();
                // It must bounce: forced, or an inbound buffer whose first line is shared.
                let must_bounce = d.dev.force_bounce()
                    || (!d.dev.is_coherent()
                        && dir.device_writes()
                        && phys.as_u64() % d.dev.cache_line() != 0);
                if !self.through_iommu(i) && must_bounce && lead + len > SEGMENT {
                    return fail(
                        "too-large-deferred",
                        format!("{}: {len} bytes can never bounce (segment {SEGMENT}) but were deferred", d.dev.name()),
                    );
                }
                if !queued_same_pool {
                    // Nothing waits ahead of it for the same pool: a plain map must fail too.
                    if let Ok((dma, path)) =
                        // SAFETY: test-owned memory (model or host arena), untouched while mapped.
                        unsafe { self.rig.mapper(&d).map_traced(&d.dev, phys, len, dir) }
                    {
                        // SAFETY: test-owned memory (model or host arena), untouched while mapped.
                        let _ = unsafe { self.rig.mapper(&d).unmap(&d.dev, dma, len, dir) };
                        return fail(
                            if matches!(path, dmakit::MapPath::Bounced { .. }) {
                                "deferred-behind-another-pool"
                            } else {
                                "deferred-without-bounce"
                            },
                            format!(
                                "{}: {len} bytes at {phys} deferred ({} waiting in all), yet a plain map succeeds",
                                d.dev.name(),
                                self.pending.len() - 1
                            ),
                        );
                    }
                }
                Ok(())
            }
            Err(e) => {
                self.judge_map_error(i, phys, len, e, &before, nfired)?;
                self.failed_left_pools(
                    &before,
                    nfired,
                    &format!("failed map_or_defer by {}", d.dev.name()),
                )
            }
        }
    }

    /// Completed deferred mappings: each exactly once, never for a released device.
    pub(super) fn drain_callbacks(&mut self) -> Checked {
        let fired: Vec<_> = std::mem::take(&mut *self.fired.lock().unwrap());
        for (token, r) in fired {
            let Some(k) = self.pending.iter().position(|p| p.token == token) else {
                return fail(
                    "callback-twice",
                    format!("deferred callback {token} fired again"),
                );
            };
            let p = self.pending.remove(k);
            self.bufs[p.buf].busy = false;
            let d = self.dev(p.dev);
            if let Ok(dma) = r {
                let len = self.bufs[p.buf].len;
                self.add_live(p.dev, p.dir, Kind::Single { buf: p.buf }, &[(dma, len)])?;
                if p.cancelled {
                    return fail(
                        "callback-after-release",
                        format!(
                            "{}'s deferred mapping completed (Ok({dma})) after release_device",
                            d.dev.name()
                        ),
                    );
                }
            }
        }
        Ok(())
    }

    pub(super) fn release(&mut self, i: usize) -> Checked {
        // Unmapping may complete the device's own deferred requests: unmap those too.
        while self.live.iter().any(|(l, _)| l.dev == i) {
            self.unmap_all_of(i)?;
            self.drain_callbacks()?;
        }
        self.checker_quiet("unmapping before a release")?;
        let d = self.dev(i);
        for p in self.pending.iter_mut().filter(|p| p.dev == i) {
            p.cancelled = true;
        }
        self.released[i] = true;
        let leaks = self.rig.mapper(&d).release_device(&d.dev);
        if let Some(r) = leaks.first() {
            return fail(
                "release-reports-leak",
                format!("{} released with nothing mapped: {r}", d.dev.name()),
            );
        }
        Ok(())
    }

    pub(super) fn grow(&mut self) -> Checked {
        if self.grown >= 6 {
            return Ok(());
        }
        let next = self.rig.hooks.iter().find_map(|h| {
            let mut q = h.queue.lock().unwrap();
            (!q.is_empty()).then(|| q.remove(0))
        });
        let Some((pool, req)) = next else {
            return Ok(());
        };
        self.grown += 1;
        let bytes = req.min_bytes.max(rig::GROW_BYTES).next_multiple_of(SEGMENT);
        // A grower that prefers memory above 4 GiB where the request allows it.
        let high = self
            .rig
            .m
            .alloc_pages_between(bytes / 4096, 4 * GIB, req.max_addr);
        match high.or_else(|| {
            self.rig
                .m
                .alloc_pages_between(bytes / 4096, 16 << 20, req.max_addr)
        }) {
            Some(base) => {
                let _ = self.rig.swiotlb[pool].add_region(base, bytes);
            }
            None => self.rig.swiotlb[pool].growth_failed(),
        }
        self.retry()
    }

    pub(super) fn retry(&mut self) -> Checked {
        for m in self.rig.mappers.clone() {
            m.retry_deferred();
        }
        Ok(())
    }
}
