//! Debug-checker scenarios on the machine model, shared by `checker_isolation` (fixed
//! behaviour) and `checker_isolation_controls` (defect put back). Each returns what it saw.

#![allow(dead_code)]

use dmakit::bounce::BounceBackend;
use dmakit::debug::DebugIssue;
use dmakit::{BouncePool, Direction, DmaError, DmaMapper, PageAllocator};
use dmakit_sim::Machine;

use super::testbed::*;

/// One call and the checker's reports it caused.
pub type Step = (Result<(), DmaError>, Vec<DebugIssue>);

/// What [`refused_unmaps_of_a_bounced_mapping`] saw.
#[derive(Debug)]
pub struct Refused {
    /// Unmap with the wrong size, then with the wrong direction.
    pub wrong_size: Step,
    pub wrong_dir: Step,
    /// Live records of the device after both refusals.
    pub live_after: usize,
    /// A sync that leaves the mapping (refused by the path; the checker says why).
    pub sync_outside: Step,
    /// The correct unmap.
    pub correct_unmap: Step,
    /// A second mapping, refused unmap, then `release_device`: the leak reports.
    pub leaks_at_release: Vec<DebugIssue>,
    /// Pool bytes in use at the end, everything unmapped.
    pub used_at_end: u64,
}

fn issues(mapper: &DmaMapper<&Machine>) -> Vec<DebugIssue> {
    let d = mapper.debug_checker().unwrap();
    d.take_reports().into_iter().map(|r| r.issue).collect()
}

/// A driver unmaps a bounced mapping wrongly (size, then direction), is refused, syncs
/// outside it, and then unmaps it correctly; a second mapping is refused its unmap and
/// the device is released with it live.
pub fn refused_unmaps_of_a_bounced_mapping() -> Refused {
    use Direction::*;
    let m = machine(61);
    let pool = swiotlb(&m, 1 << 20, None);
    let mapper = DmaMapper::builder(&m)
        .swiotlb_backend(pool.clone())
        .debug_checker()
        .build();
    let dev = device(1, BouncePool::Swiotlb);
    let buf = m.alloc_pages(4, BELOW_4G).unwrap();
    // Misaligned and inbound on a non-coherent device: bounced.
    // SAFETY: test-owned memory (model or host arena), untouched while mapped.
    let dma = unsafe { mapper.map(&dev, buf.add(8), 1000, FromDevice) }.unwrap();
    assert!(pool.contains(dmakit::PhysAddr::new(dma.as_u64())));
    // SAFETY: test-owned memory (model or host arena), untouched while mapped.
    let wrong_size = (
        unsafe { mapper.unmap(&dev, dma, 999, FromDevice) },
        issues(&mapper),
    );
    // SAFETY: test-owned memory (model or host arena), untouched while mapped.
    let wrong_dir = (
        unsafe { mapper.unmap(&dev, dma, 1000, ToDevice) },
        issues(&mapper),
    );
    let live_after = mapper
        .debug_checker()
        .unwrap()
        .live()
        .iter()
        .filter(|l| l.device == dev.id())
        .count();
    let sync_outside = (
        // SAFETY: test-owned memory (model or host arena), untouched while mapped.
        unsafe { mapper.sync_for_cpu(&dev, dma, 990, 20, FromDevice) },
        issues(&mapper),
    );
    // SAFETY: test-owned memory (model or host arena), untouched while mapped.
    let correct_unmap = (
        unsafe { mapper.unmap(&dev, dma, 1000, FromDevice) },
        issues(&mapper),
    );

    // SAFETY: test-owned memory (model or host arena), untouched while mapped.
    let dma2 = unsafe { mapper.map(&dev, buf.add(8192 + 8), 500, FromDevice) }.unwrap();
    // SAFETY: test-owned memory (model or host arena), untouched while mapped.
    let _ = unsafe { mapper.unmap(&dev, dma2, 400, FromDevice) };
    let _ = issues(&mapper);
    let leaks_at_release = mapper
        .release_device(&dev)
        .into_iter()
        .map(|r| r.issue)
        .collect();
    // The driver's late cleanup of the live bounce (the checker no longer knows it).
    // SAFETY: test-owned memory (model or host arena), untouched while mapped.
    unsafe { mapper.unmap(&dev, dma2, 500, FromDevice) }.unwrap();
    let _ = issues(&mapper);
    Refused {
        wrong_size,
        wrong_dir,
        live_after,
        sync_outside,
        correct_unmap,
        leaks_at_release,
        used_at_end: pool.usage().used,
    }
}
