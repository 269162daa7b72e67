//! Noncontiguous framebuffers: a display engine behind the IOMMU scanning out frames the
//! CPU draws.
//!
//! Each `noncontiguous` pattern gets its buffers from the real
//! [`DmaAllocator::alloc_noncontiguous`]: pages taken from places scattered over RAM,
//! mapped by the IOMMU at one contiguous IOVA range. A transfer is one frame: the CPU
//! writes it page by page through the linear map, the table is synced for the device, and
//! the device reads the contiguous IOVA range in bursts; the oracle judges every byte it
//! read against what the CPU wrote (a missing clean would show up as stale bytes).

use std::sync::Arc;

use dmakit::dma_alloc::{DmaAllocator, DmaAllocatorConfig, SgTable};
use dmakit::{Device, DmaAddr, IommuDma, PhysAddr, PhysRange, PAGE_SIZE};
use dmakit_mem::ZonedPageAllocator;

use crate::heap::Heap;
use crate::model::{BufferModel, Scenario};
use dmakit_sim::machine::Machine;
use dmakit_sim::memory::Owner;
use dmakit_sim::oracle::Oracle;
use dmakit_sim::rng::SimRng;
use dmakit_sim::transfer::{cpu_scribble, Scratch};

/// Pages of each piece of memory the framebuffers come from: pieces scattered over RAM,
/// so a frame's pages are scattered too.
const PIECE_PAGES: u64 = 4;
/// The allocator's atomic pool (unused by frames, but every allocator has one).
const ATOMIC_POOL: u64 = 16 * 1024;

type Alloc<'m> = DmaAllocator<&'m Machine, Arc<ZonedPageAllocator>, Arc<IommuDma>>;

struct Frame {
    table: SgTable,
    pages: Vec<PhysAddr>,
    dma: DmaAddr,
    owner: Owner,
}

/// The framebuffers of a scenario's `noncontiguous` patterns, and their allocator.
pub struct Framebuffers<'m> {
    alloc: Alloc<'m>,
    /// Per transfer pattern (site number): its frames and the next one to draw.
    sets: Vec<(Vec<Frame>, usize)>,
    read: (Vec<u8>, Vec<Owner>),
}

/// What one frame did.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct FrameOutcome {
    /// Bytes the device read.
    pub read: u64,
    /// Device reads the machine refused (in its fault log).
    pub refused: u64,
}

impl<'m> Framebuffers<'m> {
    /// The allocator for `sc`'s framebuffers over memory taken from `machine` in pieces
    /// scattered over RAM; `None` when no pattern uses noncontiguous buffers.
    ///
    /// # Errors
    /// A description of what could not be set up.
    pub fn new(
        machine: &'m Machine,
        sc: &Scenario,
        iommu: Option<&Arc<IommuDma>>,
        rng: &mut SimRng,
    ) -> Result<Option<Self>, String> {
        let bytes: u64 = sc
            .transfer_sites()
            .map(|(_, t)| match t.buffer {
                BufferModel::Noncontiguous { frames } => {
                    frames as u64 * t.size.1.next_multiple_of(PAGE_SIZE)
                }
                _ => 0,
            })
            .sum();
        if bytes == 0 {
            return Ok(None);
        }
        let iommu = iommu.ok_or("noncontiguous buffers need the IOMMU")?;
        let no_room = |what: &str| format!("no room in RAM for the framebuffers' {what}");
        let low = machine
            .alloc_pages_between(ATOMIC_POOL / PAGE_SIZE, 0, u32::MAX as u64)
            .ok_or_else(|| no_room("atomic pool"))?;
        let mut ranges = vec![PhysRange::new(low, ATOMIC_POOL).ok_or("atomic pool range")?];
        let ram = machine.ram();
        let total: u64 = ram.iter().map(|r| r.1 - r.0).sum();
        let pieces = (bytes / PAGE_SIZE).div_ceil(PIECE_PAGES) + 2;
        for _ in 0..pieces {
            let mut at = rng.below(total.max(1));
            let mut hint = 0;
            for &(s, e) in &ram {
                if at < e - s {
                    hint = (s + at) & !(PAGE_SIZE - 1);
                    break;
                }
                at -= e - s;
            }
            let base = machine
                .alloc_pages_between(PIECE_PAGES, hint, u64::MAX)
                .or_else(|| machine.alloc_pages_between(PIECE_PAGES, 0, u64::MAX))
                .ok_or_else(|| no_room("pages"))?;
            ranges.push(PhysRange::new(base, PIECE_PAGES * PAGE_SIZE).ok_or("piece range")?);
        }
        ranges.sort_by_key(|r| r.start());
        let zones = ZonedPageAllocator::new(&ranges).map_err(|e| e.to_string())?;
        let cfg = DmaAllocatorConfig {
            atomic_pool_bytes: ATOMIC_POOL,
            atomic_min_object: sc.line().max(128),
            ..DmaAllocatorConfig::default()
        };
        let alloc = DmaAllocator::new(machine, Arc::new(zones), iommu.clone(), cfg, None)
            .map_err(|e| format!("DMA allocator: {e}"))?;
        let sites = sc.transfer_sites().count();
        Ok(Some(Self {
            alloc,
            sets: (0..sites).map(|_| (Vec::new(), 0)).collect(),
            read: (Vec::new(), Vec::new()),
        }))
    }

    /// Allocates pattern `site`'s `frames` buffers of `size` bytes for `dev` if not done
    /// yet, tracked by the oracle through `heap`.
    fn ensure(
        &mut self,
        site: usize,
        dev: &Device,
        frames: usize,
        size: u64,
        heap: &mut Heap<'_>,
        oracle: &mut Oracle,
    ) -> Result<(), String> {
        if !self.sets[site].0.is_empty() {
            return Ok(());
        }
        for _ in 0..frames {
            let table = self
                .alloc
                .alloc_noncontiguous(dev, size, dmakit::Direction::ToDevice)
                .map_err(|e| format!("alloc_noncontiguous for `{}`: {e}", dev.name()))?;
            let dma = table
                .dma_addr()
                .ok_or("a noncontiguous table without an IOVA")?;
            let pages = table.pages();
            let owner = heap.fresh_owner();
            for &p in &pages {
                heap.track(oracle, p.as_u64(), PAGE_SIZE, owner, "framebuffer")
                    .map_err(|e| e.to_string())?;
            }
            self.sets[site].0.push(Frame {
                table,
                pages,
                dma,
                owner,
            });
        }
        Ok(())
    }

    /// One frame of pattern `site` (`frames` buffers of `size` bytes, allocated on first
    /// use): the CPU draws `len` bytes, the table is synced for `dev`, and the device reads
    /// them at the contiguous IOVA range in bursts of `burst`, judged by the oracle.
    ///
    /// # Errors
    /// A description of what the allocator, the model or the oracle refused.
    #[allow(clippy::too_many_arguments)]
    pub fn scanout(
        &mut self,
        site: usize,
        dev: &Device,
        (frames, size, len, burst): (usize, u64, u64, (u64, u64)),
        heap: &mut Heap<'_>,
        oracle: &mut Oracle,
        rng: &mut SimRng,
        scratch: &mut Scratch,
    ) -> Result<FrameOutcome, String> {
        self.ensure(site, dev, frames, size, heap, oracle)?;
        let (set, next) = &mut self.sets[site];
        let f = &set[*next % set.len()];
        *next = (*next + 1) % set.len();
        let machine = heap.machine();
        let len = len.min(f.pages.len() as u64 * PAGE_SIZE);
        for (i, &p) in f.pages.iter().enumerate() {
            let off = i as u64 * PAGE_SIZE;
            if off >= len {
                break;
            }
            let n = PAGE_SIZE.min(len - off);
            cpu_scribble(machine, oracle, rng, scratch, p.as_u64(), n, f.owner)
                .map_err(|e| e.to_string())?;
        }
        self.alloc
            .sync_noncontiguous_for_device(dev, &f.table)
            .map_err(|e| e.to_string())?;
        let id = dev.id();
        machine.grant(id, f.dma, len).map_err(|e| e.to_string())?;
        let mut out = FrameOutcome::default();
        let mut off = 0;
        while off < len {
            let page_end = (off / PAGE_SIZE + 1) * PAGE_SIZE;
            let n = rng
                .between(burst.0, burst.1)
                .min(page_end - off)
                .min(len - off);
            let (d, o) = &mut self.read;
            d.resize(n as usize, 0);
            o.resize(n as usize, Owner::NOBODY);
            let at = DmaAddr::new(f.dma.as_u64() + off);
            if machine.device_read_into(id, at, d, o).is_ok() {
                let phys = f.pages[(off / PAGE_SIZE) as usize].add(off % PAGE_SIZE);
                oracle
                    .check_device_read(phys, d, o, f.owner)
                    .map_err(|e| e.to_string())?;
                out.read += n;
            } else {
                out.refused += 1;
            }
            off += n;
        }
        machine.revoke(id, f.dma, len).map_err(|e| e.to_string())?;
        Ok(out)
    }
}
