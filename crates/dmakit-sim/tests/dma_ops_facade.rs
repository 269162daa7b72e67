//! The object-safe facade (`dyn DmaOps`) on the machine model: a buffer mapped through it
//! bounces exactly as through `DmaMapper`, keeps its neighbours' bytes under the
//! misbehaving cache, is attributed to the site the caller gave, and coherent memory it
//! hands out as addresses comes back by address (wrong addresses or sizes refused, nothing
//! freed).

use std::panic::Location;
use std::sync::Arc;

use dmakit::dma_alloc::{AllocContext, DmaAllocError, RawCoherent};
use dmakit::swiotlb::{PoolConfig, SwiotlbBounce};
use dmakit::{
    AlignmentPolicy, BounceReason, Device, DeviceId, Direction, DmaAddr, DmaAllocator,
    DmaAllocatorConfig, DmaMapper, DmaOps, DmaStack, PageAllocator, PhysAddr, PhysRange, PAGE_SIZE,
};
use dmakit_mem::ZonedPageAllocator;
use dmakit_sim::{HazardConfig, Machine, MachineConfig, Owner};

type Stack<'m> = DmaStack<&'m Machine, ZonedPageAllocator>;

fn machine() -> Machine {
    Machine::new(MachineConfig {
        seed: 1414,
        hazards: HazardConfig::default(),
        ..MachineConfig::default()
    })
    .unwrap()
}

/// A mapper with a SWIOTLB pool and an allocator over 1 MiB of zones, on `m`.
fn stack(m: &Machine) -> Stack<'_> {
    stack_with(m, AlignmentPolicy::Exact)
}

fn stack_with(m: &Machine, policy: AlignmentPolicy) -> Stack<'_> {
    let pool = m.alloc_pages(64, u32::MAX as u64).unwrap();
    let backend = SwiotlbBounce::new(PoolConfig::builder().build().unwrap(), None, 0, u64::MAX);
    backend.add_region(pool, 64 * PAGE_SIZE).unwrap();
    let mapper = DmaMapper::builder(m)
        .swiotlb_backend(Arc::new(backend))
        .policy(policy)
        .build();
    let ram = m.alloc_pages(256, u32::MAX as u64).unwrap();
    let zones = ZonedPageAllocator::new(&[PhysRange::new(ram, 256 * PAGE_SIZE).unwrap()]).unwrap();
    let cfg = DmaAllocatorConfig {
        atomic_pool_bytes: 64 * 1024,
        ..DmaAllocatorConfig::default()
    };
    let allocator =
        DmaAllocator::new(m, zones, dmakit::dma_alloc::NoTranslation, cfg, None).unwrap();
    DmaStack::new(mapper, allocator)
}

fn nic() -> Device {
    Device::builder(DeviceId(7), "nic").build().unwrap()
}

/// Receives 100 bytes 3 bytes into a cache line with guard bytes on both sides, mapping
/// with `map` and unmapping with `unmap`; returns what the CPU then sees of the guards and
/// the buffer.
fn receive(
    m: &Machine,
    dev: &Device,
    map: &dyn Fn(PhysAddr) -> DmaAddr,
    unmap: &dyn Fn(DmaAddr),
) -> (Vec<u8>, Vec<u8>) {
    let base = m.alloc_pages(1, u32::MAX as u64).unwrap();
    let buf = base.add(64 + 3);
    // Guards: the 67 bytes before the buffer and the 89 after it (its lines and the next).
    m.cpu_write(base, &[0xee; 256], Owner(1)).unwrap();
    let dma = map(buf);
    // The CPU touches a guard while the device owns the buffer: the line it shares with
    // the buffer's first bytes is now dirty in the cache.
    m.cpu_write(base.add(64), &[0xe1], Owner(1)).unwrap();
    m.grant(dev.id(), dma, 100).unwrap();
    m.device_write(dev.id(), dma, &[0x5a; 100], Owner(2))
        .unwrap();
    for _ in 0..64 {
        m.tick();
    }
    unmap(dma);
    let mut all = vec![0; 256];
    m.cpu_read(base, &mut all).unwrap();
    let got = all[67..167].to_vec();
    let mut guards = all[..67].to_vec();
    guards.extend_from_slice(&all[167..]);
    (guards, got)
}

#[test]
fn a_buffer_mapped_through_the_facade_bounces_as_through_the_mapper() {
    let m = machine();
    let s = stack(&m);
    let dev = nic();
    m.attach(dev.clone()).unwrap();
    let ops: &dyn DmaOps = &s;
    let dir = Direction::FromDevice;
    let site = Location::caller();
    let (guards, got) = receive(
        &m,
        &dev,
        // SAFETY: the page is the test's, untouched by the CPU inside the buffer while mapped.
        &|phys| unsafe { ops.map_from(&dev, phys, 100, dir, site) }.unwrap(),
        // SAFETY: the live mapping just made; the device is done.
        &|dma| unsafe { ops.unmap_from(&dev, dma, 100, dir, site) }.unwrap(),
    );
    assert_eq!(got, [0x5a; 100]);
    let mut want = vec![0xee; 256 - 100];
    want[64] = 0xe1;
    assert_eq!(guards, want, "the guards around the buffer survive");
    let through_facade = ops.stats().total();

    let (guards, got) = receive(
        &m,
        &dev,
        // SAFETY: as above.
        &|phys| unsafe { s.mapper().map(&dev, phys, 100, dir) }.unwrap(),
        // SAFETY: as above.
        &|dma| unsafe { s.mapper().unmap(&dev, dma, 100, dir) }.unwrap(),
    );
    assert_eq!((guards, got), (want, vec![0x5a; 100]));
    let total = s.mapper().stats().total();
    // The second mapping counted exactly what the first did.
    assert_eq!(through_facade.bounces(BounceReason::Misaligned), 1);
    assert_eq!(total.bounces(BounceReason::Misaligned), 2);
    assert_eq!(total.bounces_total(), 2 * through_facade.bounces_total());
    assert_eq!(total.mappings_total(), 2 * through_facade.mappings_total());
    assert_eq!(
        total.bytes_from_bounce,
        2 * through_facade.bytes_from_bounce
    );
    // The facade's bounce is attributed to the site given, not to the facade.
    let sites = s.mapper().top_sites(4);
    assert_eq!(sites.len(), 2, "{sites:?}");
    assert!(sites.iter().any(|t| t.location == site && t.bounces == 1));
    assert!(sites
        .iter()
        .all(|t| t.location.file().ends_with("dma_ops_facade.rs")));
}

#[test]
fn coherent_memory_comes_back_by_address() {
    let m = machine();
    let s = stack(&m);
    let ops: &dyn DmaOps = &s;
    let dev = nic();
    for ctx in [AllocContext::MayBlock, AllocContext::Atomic] {
        let used = m.used_pages();
        let atomic = s.allocator().atomic_pool_usage();
        let raw = ops.alloc_coherent(&dev, 3 * PAGE_SIZE, ctx).unwrap();
        assert_eq!(raw.size, 3 * PAGE_SIZE);
        m.cpu_write(raw.phys, &[0x77; 3 * PAGE_SIZE as usize], Owner(5))
            .unwrap();
        let refused = |raw: RawCoherent| {
            // SAFETY: each refused `raw` is checked and refused before anything is freed.
            let e = unsafe { ops.free_coherent(&dev, raw) }.unwrap_err();
            assert!(matches!(e, DmaAllocError::NotCoherentBuffer { .. }), "{e}");
            assert!(e.to_string().contains("nothing freed"), "{e}");
        };
        refused(RawCoherent { size: 0, ..raw });
        refused(RawCoherent {
            dma: raw.dma.add(PAGE_SIZE),
            ..raw
        });
        refused(RawCoherent {
            phys: raw.phys.add(8),
            dma: raw.dma.add(8),
            ..raw
        });
        if ctx == AllocContext::Atomic {
            // Larger than the pool object that holds it.
            refused(RawCoherent {
                size: 64 * 1024,
                ..raw
            });
        }
        // The refusals changed nothing: still uncached for the CPU, its bytes intact.
        assert!(m.is_uncached(raw.phys) && m.is_uncached(raw.phys.add(2 * PAGE_SIZE)));
        let mut back = vec![0; 3 * PAGE_SIZE as usize];
        m.cpu_read(raw.phys, &mut back).unwrap();
        assert!(back.iter().all(|&b| b == 0x77));
        // SAFETY: `raw` came from `alloc_coherent` for `dev`; freed once.
        unsafe { ops.free_coherent(&dev, raw) }.unwrap();
        if ctx == AllocContext::MayBlock {
            assert!(
                !m.is_uncached(raw.phys),
                "pages made cached again when freed"
            );
        }
        assert_eq!(m.used_pages(), used);
        assert_eq!(s.allocator().atomic_pool_usage().used, atomic.used);
    }
}

#[test]
fn a_derived_force_bounce_device_bounces_an_aligned_buffer() {
    let m = machine();
    let s = stack(&m);
    let dev = nic();
    let forced = dev.to_builder().force_bounce(true).build().unwrap();
    let ops: &dyn DmaOps = &s;
    let site = Location::caller();
    let buf = m.alloc_pages(1, u32::MAX as u64).unwrap();
    for d in [&dev, &forced] {
        // SAFETY: the page is the test's and idle while mapped.
        let dma = unsafe { ops.map_from(d, buf, 256, Direction::ToDevice, site) }.unwrap();
        // SAFETY: the live mapping just made.
        unsafe { ops.unmap_from(d, dma, 256, Direction::ToDevice, site) }.unwrap();
    }
    let t = ops.stats().total();
    assert_eq!((t.direct, t.bounces(BounceReason::Forced)), (1, 1));
}

#[test]
fn without_the_bounce_the_model_sees_the_guard_or_the_data_lost() {
    // The control: the same receive through the facade, never bounced for alignment. The
    // unmap invalidates the buffer's first line, throwing away the CPU's guard write (or a
    // dirty guard line evicted during the transfer overwrites the device's data).
    let m = machine();
    let s = stack_with(&m, AlignmentPolicy::Never);
    let dev = nic();
    m.attach(dev.clone()).unwrap();
    let ops: &dyn DmaOps = &s;
    let (dir, site) = (Direction::FromDevice, Location::caller());
    let (guards, got) = receive(
        &m,
        &dev,
        // SAFETY: as in the test above.
        &|phys| unsafe { ops.map_from(&dev, phys, 100, dir, site) }.unwrap(),
        // SAFETY: as in the test above.
        &|dma| unsafe { ops.unmap_from(&dev, dma, 100, dir, site) }.unwrap(),
    );
    let mut want = vec![0xee; 256 - 100];
    want[64] = 0xe1;
    assert!(guards != want || got != [0x5a; 100], "the hazard must show");
    assert_eq!(ops.stats().total().bounces_total(), 0);
}
