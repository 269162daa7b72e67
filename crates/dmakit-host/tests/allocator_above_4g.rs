//! A DMA allocator on host memory that lies above 4 GiB: the default configuration cannot
//! place its atomic pool there and says so; the host's own configuration can, and coherent
//! memory then works for every device that reaches the memory, through real pointers.

use dmakit::dma_alloc::NoTranslation;
use dmakit::dma_alloc::{AllocContext, DmaAllocError, DmaAllocator, DmaAllocatorConfig};
use dmakit::{Device, DeviceId, PhysAddr};
use dmakit_host::{HostMaintenance, HostPlatform};
use dmakit_mem::ZonedPageAllocator;

const GIB: u64 = 1 << 30;
const MIB: u64 = 1 << 20;
const BASE: u64 = 12 * GIB;

fn host() -> HostPlatform {
    HostPlatform::new(BASE, 16 * MIB, 2, 64, HostMaintenance::None).unwrap()
}

fn device(id: u32, bits: u32) -> Device {
    Device::builder(DeviceId(id), "nc")
        .dma_bits(bits)
        .build()
        .unwrap()
}

#[test]
fn the_default_reach_finds_no_pool_above_4g_and_says_so() {
    let host = host();
    let zones = ZonedPageAllocator::new(&[host.range()]).unwrap();
    let err = DmaAllocator::new(
        &host,
        &zones,
        NoTranslation,
        DmaAllocatorConfig::default(),
        None,
    )
    .err()
    .expect("no memory below 4 GiB");
    assert_eq!(
        err,
        DmaAllocError::GrowthFailed {
            bytes: DmaAllocatorConfig::default().atomic_pool_bytes,
            max_addr: u32::MAX as u64,
        }
    );
    assert!(err.to_string().contains("below 0xffffffff"), "{err}");
    // Nothing was left allocated: the whole memory is one free block again.
    assert_eq!(
        zones.alloc_below(4096, u64::MAX).unwrap(),
        PhysAddr::new(BASE)
    );
}

#[test]
fn the_host_configuration_serves_coherent_memory_above_4g() {
    let host = host();
    let zones = ZonedPageAllocator::new(&[host.range()]).unwrap();
    let cfg = host.dma_allocator_config();
    assert_eq!(cfg.atomic_pool_reach, BASE + 4 * GIB - 1);
    let alloc = DmaAllocator::new(&host, &zones, NoTranslation, cfg, None).unwrap();
    assert_eq!(
        alloc.atomic_pool_usage().total,
        DmaAllocatorConfig::default().atomic_pool_bytes
    );
    let wide = device(1, 64);
    for (ctx, size) in [
        (AllocContext::Atomic, 200u64),
        (AllocContext::MayBlock, 9000),
    ] {
        let buf = alloc.alloc_coherent(&wide, size, ctx).unwrap();
        assert_eq!(buf.from_atomic_pool(), ctx == AllocContext::Atomic);
        assert!(buf.phys().as_u64() >= BASE);
        assert_eq!(buf.dma().as_u64(), buf.phys().as_u64());
        // The driver writes through a pointer; the bytes are where the device looks.
        let p = host.ptr(buf.phys(), size).unwrap();
        // SAFETY: `ptr` checked that `size` bytes at `p` are host memory; the buffer is ours.
        unsafe { p.as_ptr().write_bytes(0x5a, size as usize) };
        let mut seen = vec![0u8; size as usize];
        host.read(buf.phys(), &mut seen).unwrap();
        assert!(seen.iter().all(|&b| b == 0x5a));
        assert_eq!(host.phys_of(p.as_ptr(), size as usize), Ok(buf.phys()));
        alloc.free_coherent(&wide, buf).unwrap();
    }
    // A 32-bit device reaches none of this memory: clean errors, not panics.
    let narrow = device(2, 32);
    let e = alloc
        .alloc_coherent(&narrow, 64, AllocContext::Atomic)
        .unwrap_err();
    assert!(
        matches!(e, DmaAllocError::AtomicPoolExhausted { used: 0, .. }),
        "{e}"
    );
    let e = alloc
        .alloc_coherent(&narrow, 64, AllocContext::MayBlock)
        .unwrap_err();
    assert!(matches!(e, DmaAllocError::NoReachableMemory { .. }), "{e}");
    assert_eq!(alloc.atomic_pool_usage().live, 0);
    assert!(alloc.release().is_ok());
}
