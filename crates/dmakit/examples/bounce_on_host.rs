//! A platform over host memory, and one misaligned inbound buffer that dmakit bounces.
//!
//! The platform is a 1 MiB byte array standing in for physical memory: "physical address"
//! means offset into it, and the device's bus addresses are the same (no IOMMU). Host memory
//! is coherent, so cache maintenance only counts what dmakit asked for. The bottom 256 KiB
//! are the SWIOTLB pool; a 100-byte receive buffer sits 16 bytes into a 64-byte cache line
//! whose first 16 bytes belong to another object. A non-coherent device writing into that
//! buffer would, on real hardware, have its line invalidated or evicted over the
//! neighbour, so the mapper bounces it: the device writes into the pool, and
//! `sync_for_cpu` (and `unmap` again) copies exactly the buffer's bytes back.
//!
//! Run with `cargo run -p dmakit --example bounce_on_host`; it panics if any step does
//! not happen as described.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use dmakit::prelude::*;
use dmakit::{BounceReason, MapPath};

const MEMORY: u64 = 1 << 20;
const LINE: u64 = 64;
const POOL: u64 = 256 << 10;

/// Host memory as the machine's RAM, with counters of the maintenance asked for.
struct HostMemory {
    bytes: Mutex<Vec<u8>>,
    cleaned: AtomicU64,
    invalidated: AtomicU64,
}

impl HostMemory {
    fn new() -> Self {
        Self {
            bytes: Mutex::new(vec![0; MEMORY as usize]),
            cleaned: AtomicU64::new(0),
            invalidated: AtomicU64::new(0),
        }
    }

    /// The byte range `[addr, addr + len)` of the array, or the fault dmakit expects for an
    /// access outside memory.
    fn span(addr: PhysAddr, len: u64) -> Result<std::ops::Range<usize>, MemoryFault> {
        let start = addr.as_u64();
        match start.checked_add(len) {
            Some(end) if end <= MEMORY => Ok(start as usize..end as usize),
            _ => Err(MemoryFault { addr, len }),
        }
    }

    fn write(&self, addr: u64, data: &[u8]) {
        let r = Self::span(PhysAddr::new(addr), data.len() as u64).expect("inside memory");
        self.bytes.lock().unwrap()[r].copy_from_slice(data);
    }

    fn read(&self, addr: u64, len: u64) -> Vec<u8> {
        let r = Self::span(PhysAddr::new(addr), len).expect("inside memory");
        self.bytes.lock().unwrap()[r].to_vec()
    }
}

impl CacheMaintenance for HostMemory {
    fn cache_line_size(&self) -> u64 {
        LINE
    }
    fn clean(&self, _range: PhysRange) {
        self.cleaned.fetch_add(1, Ordering::Relaxed);
    }
    fn invalidate(&self, _range: PhysRange) {
        self.invalidated.fetch_add(1, Ordering::Relaxed);
    }
    fn clean_invalidate(&self, _range: PhysRange) {
        self.cleaned.fetch_add(1, Ordering::Relaxed);
        self.invalidated.fetch_add(1, Ordering::Relaxed);
    }
}

// SAFETY: `span` bounds every access to the byte array; a range outside it is a fault.
unsafe impl CpuMemory for HostMemory {
    fn copy(&self, dst: PhysAddr, src: PhysAddr, len: u64) -> Result<(), MemoryFault> {
        let (d, s) = (Self::span(dst, len)?, Self::span(src, len)?);
        self.bytes.lock().unwrap().copy_within(s, d.start);
        Ok(())
    }
    fn fill(&self, dst: PhysAddr, byte: u8, len: u64) -> Result<(), MemoryFault> {
        let d = Self::span(dst, len)?;
        self.bytes.lock().unwrap()[d].fill(byte);
        Ok(())
    }
}

impl CpuTopology for HostMemory {
    fn cpu_count(&self) -> usize {
        1
    }
    fn current_cpu(&self) -> usize {
        0
    }
}

fn main() {
    let host = Arc::new(HostMemory::new());

    let mapper = DmaMapper::builder(Arc::clone(&host))
        .swiotlb(PhysAddr::new(0), POOL)
        .expect("pool region")
        .build();

    let nic = Device::builder(DeviceId(1), "nic")
        .coherent(false)
        .cache_line(LINE)
        .build()
        .expect("device");

    // A 16-byte object at the start of a line, and the receive buffer right after it.
    let line = POOL + 0x1000;
    let neighbour = line;
    let buf = line + 16;
    let len = 100;
    host.write(neighbour, b"neighbour: keep!");
    host.write(buf, &[0xee; 100]);

    // SAFETY: the buffer is platform memory (model or host arena) that only this mapping uses until it is unmapped.
    let (dma, path) =
        unsafe { mapper.map_traced(&nic, PhysAddr::new(buf), len, Direction::FromDevice) }
            .expect("map");
    println!("map: buffer {buf:#x} ({len} bytes) -> bus address {dma} via {path:?}");
    assert!(
        matches!(
            path,
            MapPath::Bounced {
                reason: BounceReason::Misaligned,
                ..
            }
        ),
        "a buffer sharing its first line must bounce, got {path:?}"
    );
    assert!(dma.as_u64() < POOL, "the bounce lives in the pool");

    // The device writes the received packet at the bus address it was given; the CPU
    // keeps using its neighbour meanwhile.
    let packet: Vec<u8> = (0..len as u8).collect();
    host.write(dma.as_u64(), &packet);
    host.write(neighbour, b"neighbour: new! ");
    assert_eq!(
        host.read(buf, len),
        [0xee; 100],
        "the device wrote into the pool only"
    );

    // SAFETY: the buffer is platform memory (model or host arena) that only this mapping uses until it is unmapped.
    unsafe { mapper.sync_for_cpu(&nic, dma, 0, len, Direction::FromDevice) }.expect("sync_for_cpu");
    assert_eq!(
        host.read(buf, len),
        packet,
        "sync_for_cpu copies the packet back"
    );
    // SAFETY: the buffer is platform memory (model or host arena) that only this mapping uses until it is unmapped.
    unsafe { mapper.unmap(&nic, dma, len, Direction::FromDevice) }.expect("unmap");

    assert_eq!(host.read(buf, len), packet, "the buffer holds the packet");
    assert_eq!(
        host.read(neighbour, 16),
        b"neighbour: new! ",
        "the neighbour's own write survives"
    );
    let stats = mapper.stats();
    let total = stats.total();
    assert_eq!(total.bounces(BounceReason::Misaligned), 1);
    // sync_for_cpu copied the buffer back once, and unmap of an inbound mapping once more.
    assert_eq!(total.bytes_from_bounce, 2 * len);
    let swiotlb = &stats.pools[0];
    assert_eq!(swiotlb.usage.live, 0, "unmap gave the slots back");
    println!(
        "sync_for_cpu + unmap: {} bytes copied into the bounce, {} back (sync and unmap), \
         neighbour intact; pool high-water {} bytes, now {} live; cache maintenance: {} \
         cleans, {} invalidations",
        total.bytes_to_bounce,
        total.bytes_from_bounce,
        swiotlb.usage.high_water,
        swiotlb.usage.live,
        host.cleaned.load(Ordering::Relaxed),
        host.invalidated.load(Ordering::Relaxed),
    );
}
