//! The IOMMU as the DMA allocators' device address space.
//!
//! `alloc_noncontiguous` takes pages wherever memory is free and asks a
//! [`DeviceAddressSpace`] to make them contiguous for the device. Behind an IOMMU that is a
//! page-table job: one IOVA range in the device's domain (below its mask), the pages mapped
//! at consecutive granules, and at free time the translations removed and invalidated
//! before the IOVA is reused and the pages go back to the page allocator. The mapping is
//! recorded in the domain like a streaming one, so syncs by device address through the
//! mapper also find it.

use alloc::vec::Vec;

use super::domain::{Kind, Record};
use super::sg_pieces::Piece;
use super::IommuDma;
use crate::addr::{DmaAddr, PhysAddr};
use crate::device::Device;
use crate::direction::Direction;
use crate::dma_alloc::{DeviceAddressSpace, DeviceSpaceError};
use crate::platform::{IommuPerm, PAGE_SIZE};

/// The allocators have no CPU number to give; one set of range caches serves them.
const ALLOC_CPU: usize = 0;

impl DeviceAddressSpace for IommuDma {
    /// A device is translated while it is attached to a domain (not an identity one, which
    /// passes its physical addresses through), and also once detached (the IOMMU then
    /// blocks it: its allocations are refused with [`DeviceSpaceError::Detached`] rather
    /// than given physical addresses).
    fn translates(&self, dev: &Device) -> bool {
        !matches!(self.route_of(dev.id()), Ok(None))
    }

    /// The IOMMU's granule: page-table entries map whole granules.
    fn granule(&self, _dev: &Device) -> u64 {
        self.iommu.granule()
    }

    /// Maps `pages` at consecutive IOVAs of `dev`'s domain. With a granule larger than a
    /// page, every granule-sized group of the list must be physically contiguous and
    /// granule aligned (else [`DeviceSpaceError::TablesFailed`]).
    fn map_pages_contiguous(
        &self,
        dev: &Device,
        pages: &[PhysAddr],
        dir: Direction,
    ) -> Result<DmaAddr, DeviceSpaceError> {
        let count = pages.len() as u64;
        let no_space = DeviceSpaceError::NoSpace { pages: count };
        let dom = self
            .route_of(dev.id())
            .map_err(|_| DeviceSpaceError::Detached)?
            .ok_or(no_space)?;
        let g = dom.granule();
        let per = (g / PAGE_SIZE) as usize;
        if pages.is_empty() {
            return Err(no_space);
        }
        if pages.len() % per != 0
            || pages.chunks(per).any(|c| {
                c[0].as_u64() % g != 0
                    || c.iter()
                        .enumerate()
                        .any(|(i, p)| p.as_u64() != c[0].as_u64() + i as u64 * PAGE_SIZE)
            })
        {
            return Err(DeviceSpaceError::TablesFailed);
        }
        let total = count * PAGE_SIZE;
        // The domain's mapping table full counts as no space: nothing can be mapped.
        let room = dom.reserve().ok_or(no_space)?;
        let limit = dom.limit_pfn(dev.coherent_limit()).ok_or(no_space)?;
        let iova = dom
            .alloc_iova(total, limit, ALLOC_CPU)
            .map_err(|_| no_space)?;
        let base = dom.iova_addr(iova).as_u64();
        let perm = IommuPerm::for_direction(dir);
        let mut pieces: Vec<Piece> = Vec::new();
        // Physically contiguous runs become one page-table call each.
        for (i, &p) in pages.iter().enumerate() {
            let at = base + i as u64 * PAGE_SIZE;
            match pieces.last_mut() {
                Some(last) if last.phys.as_u64() + last.len == p.as_u64() => {
                    last.len += PAGE_SIZE;
                }
                _ => pieces.push(Piece {
                    dma: at,
                    phys: p,
                    len: PAGE_SIZE,
                }),
            }
        }
        for (i, pc) in pieces.iter().enumerate() {
            let mapped = dom.map_tables(DmaAddr::new(pc.dma), pc.phys, pc.len, perm);
            if mapped.is_err() {
                for done in &pieces[..i] {
                    let undone = dom.unmap_tables(DmaAddr::new(done.dma), done.len);
                    debug_assert!(undone.is_ok());
                }
                dom.flush_range(DmaAddr::new(base), total);
                dom.release(iova, ALLOC_CPU);
                return Err(DeviceSpaceError::TablesFailed);
            }
        }
        room.insert(
            base,
            Record {
                device: dev.id(),
                iova,
                mapped: total,
                len: total,
                dir,
                kind: Kind::Pages { pieces },
            },
        );
        Ok(DmaAddr::new(base))
    }

    /// Removes the translations, invalidates them at once (the pages are about to be
    /// freed, so lazy invalidation does not apply), and releases the IOVA.
    fn unmap_pages(&self, dev: &Device, dma: DmaAddr, pages: u64) -> Result<(), DeviceSpaceError> {
        let not_mapped = DeviceSpaceError::NotMapped { dma };
        let dom = self.domain_of(dev.id()).ok_or(not_mapped)?;
        let rec = dom.take(dma.as_u64(), not_mapped, |r| {
            let ok = r.device == dev.id()
                && matches!(r.kind, Kind::Pages { .. })
                && Some(r.len) == pages.checked_mul(PAGE_SIZE);
            if ok {
                Ok(())
            } else {
                Err(not_mapped)
            }
        })?;
        if dom.unmap_tables(dma, rec.mapped).is_err() {
            dom.put_back(dma.as_u64(), rec);
            return Err(DeviceSpaceError::TablesFailed);
        }
        dom.forget(dma.as_u64());
        dom.flush_range(dma, rec.mapped);
        dom.release(rec.iova, ALLOC_CPU);
        Ok(())
    }
}
