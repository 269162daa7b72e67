//! Deferred-mapping scenarios on the machine model, shared by `deferred_isolation` (which
//! asserts the fixed behaviour) and `deferred_isolation_controls` (which puts each defect
//! back and asserts the same scenario observes it). Each scenario returns what it saw.

#![allow(dead_code)]

use std::sync::mpsc;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use dmakit::bounce::BounceBackend;
use dmakit::growth::{GrowthHook, GrowthRequest};
use dmakit::swiotlb::PoolConfig;
use dmakit::swiotlb::SwiotlbBounce;
use dmakit::{
    BouncePool, Device, DeviceId, Direction, DmaAddr, DmaError, DmaMapper, MapStatus,
    PageAllocator, PhysAddr,
};
use dmakit_sim::host::{HostMaintenance, HostPlatform};
use dmakit_sim::Machine;

use super::testbed::*;

/// Completions of deferred mappings, by tag, in the order they ran.
pub type Done = Arc<Mutex<Vec<(u32, Result<DmaAddr, DmaError>)>>>;

/// A callback that records its result under `tag`.
pub fn record(done: &Done, tag: u32) -> dmakit::DeferredCompletion {
    let d = done.clone();
    Box::new(move |r| d.lock().unwrap().push((tag, r)))
}

/// Bytes the SWIOTLB pool of every scenario holds (and its largest bounce).
pub const POOL: u64 = 256 * 1024;

/// A page-aligned buffer region of `bytes` below 4 GiB.
pub fn buffers(m: &Machine, bytes: u64) -> PhysAddr {
    m.alloc_pages(bytes.div_ceil(4096), BELOW_4G).unwrap()
}

/// A misaligned inbound request of `len` bytes at `at` always bounces on the model's
/// non-coherent devices.
const MISALIGN: u64 = 8;

/// What [`hook_retries_synchronously`] saw; `None` from it means it did not finish in time.
#[derive(Debug)]
pub struct HookRetry {
    /// What `map_or_defer` answered while the pool was full.
    pub status: MapStatus,
    /// How often the growth hook ran (and called `retry_deferred` from inside the map).
    pub hook_calls: usize,
    /// Completions after the pool's hog was unmapped.
    pub completions: Vec<(u32, Result<DmaAddr, DmaError>)>,
    /// Pool bytes in use at the end, everything unmapped.
    pub used_at_end: u64,
}

/// Calls `retry_deferred` on the mapper from inside the growth request.
struct RetryingHook {
    mapper: OnceLock<Arc<DmaMapper<&'static HostPlatform>>>,
    calls: Mutex<usize>,
}

impl GrowthHook for RetryingHook {
    fn request(&self, _req: GrowthRequest) {
        *self.calls.lock().unwrap() += 1;
        if let Some(m) = self.mapper.get() {
            m.retry_deferred();
        }
    }
}

/// A growth hook that synchronously calls `retry_deferred` (as a hook that adds memory on
/// the spot would) is called by `map_or_defer` when the pool is full. The hook needs a
/// thread-safe platform, so this one runs on host memory (the locking is the core's, not
/// the machine's). Runs on its own thread; `None` if it has not finished within `timeout`
/// (it then spins for ever: the platform is leaked so that the stuck thread never touches
/// freed memory).
pub fn hook_retries_synchronously(timeout: Duration) -> Option<HookRetry> {
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let host: &'static HostPlatform = Box::leak(Box::new(
            HostPlatform::new(0, 4 << 20, 1, 64, HostMaintenance::None).unwrap(),
        ));
        let hook = Arc::new(RetryingHook {
            mapper: OnceLock::new(),
            calls: Mutex::new(0),
        });
        let cfg = PoolConfig::builder().cpu_count(1).build().unwrap();
        let pool = Arc::new(SwiotlbBounce::new(
            cfg,
            Some(hook.clone()),
            1 << 20,
            u64::MAX,
        ));
        pool.add_region(PhysAddr::new(0), POOL).unwrap();
        let mapper = Arc::new(
            DmaMapper::builder(host)
                .swiotlb_backend(pool.clone())
                .build(),
        );
        let _ = hook.mapper.set(mapper.clone());
        let dev = Device::builder(DeviceId(1), "nc").build().unwrap();
        let base = PhysAddr::new(1 << 20);
        let hog_len = POOL - 128;
        // SAFETY: test-owned memory (model or host arena), untouched while mapped.
        let hog = unsafe { mapper.map(&dev, base.add(MISALIGN), hog_len, Direction::FromDevice) }
            .unwrap();
        let done = Done::default();
        // SAFETY: test-owned memory (model or host arena), untouched while mapped.
        let status = unsafe {
            mapper.map_or_defer(
                &dev,
                base.add(300_000 + MISALIGN),
                10_000,
                Direction::FromDevice,
                record(&done, 1),
            )
        }
        .unwrap();
        // SAFETY: test-owned memory (model or host arena), untouched while mapped.
        unsafe { mapper.unmap(&dev, hog, hog_len, Direction::FromDevice) }.unwrap();
        let completions = std::mem::take(&mut *done.lock().unwrap());
        for (_, r) in &completions {
            if let Ok(dma) = r {
                // SAFETY: test-owned memory (model or host arena), untouched while mapped.
                unsafe { mapper.unmap(&dev, *dma, 10_000, Direction::FromDevice) }.unwrap();
            }
        }
        let hook_calls = *hook.calls.lock().unwrap();
        let _ = tx.send(HookRetry {
            status,
            hook_calls,
            completions,
            used_at_end: pool.usage().used,
        });
    });
    rx.recv_timeout(timeout).ok()
}

/// A rig: one machine, a full SWIOTLB pool (a hog mapping holds it) and, for the second
/// device, a coherent pool.
pub struct Rig {
    pub m: &'static Machine,
    pub mapper: DmaMapper<&'static Machine>,
    pub pool: Arc<dyn BounceBackend>,
    pub coherent: Arc<dyn BounceBackend>,
    pub dev: Device,
    pub base: PhysAddr,
    pub hog: DmaAddr,
    pub hog_len: u64,
    pub done: Done,
}

pub const HOG: u64 = POOL - 2 * LINE;

fn rig(seed: u64) -> Rig {
    rig_with_room(seed, POOL - HOG)
}

/// A rig whose hog leaves `room` bytes of the pool free.
fn rig_with_room(seed: u64, room: u64) -> Rig {
    let m: &'static Machine = Box::leak(Box::new(machine(seed)));
    let pool: Arc<dyn BounceBackend> = swiotlb(m, POOL, None);
    let coherent: Arc<dyn BounceBackend> = coherent(m, 64 * 1024);
    let mapper = DmaMapper::builder(m)
        .swiotlb_backend(pool.clone())
        .coherent_backend(coherent.clone())
        .build();
    let dev = device(1, BouncePool::Swiotlb);
    let base = buffers(m, 4 << 20);
    let hog_len = POOL - room;
    // SAFETY: test-owned memory (model or host arena), untouched while mapped.
    let hog =
        unsafe { mapper.map(&dev, base.add(MISALIGN), hog_len, Direction::FromDevice) }.unwrap();
    Rig {
        m,
        mapper,
        pool,
        coherent,
        dev,
        base,
        hog,
        hog_len,
        done: Done::default(),
    }
}

/// Queues one inbound request of `dev` that cannot fit while the hog lives.
fn queue_one(r: &Rig, tag: u32) -> MapStatus {
    // SAFETY: test-owned memory (model or host arena), untouched while mapped.
    unsafe {
        r.mapper.map_or_defer(
            &r.dev,
            r.base.add(1_000_000 + MISALIGN + tag as u64 * 20_000),
            10_000,
            Direction::FromDevice,
            record(&r.done, tag),
        )
    }
    .unwrap()
}

/// What [`unneeded_mapping_while_queued`] saw.
#[derive(Debug)]
pub struct Unneeded {
    /// `map_or_defer` of an outbound buffer that needs no bounce, while the same device
    /// has a request waiting.
    pub status: MapStatus,
    /// The buffer's address.
    pub phys: PhysAddr,
    pub queued_after: usize,
}

/// The device waits for bounce room with one request; it then asks for an outbound
/// mapping of a buffer below its mask, which the direct path serves in place.
pub fn unneeded_mapping_while_queued() -> Unneeded {
    let r = rig(52);
    assert_eq!(queue_one(&r, 1), MapStatus::Deferred);
    let phys = r.base.add(2_000_000 + MISALIGN);
    // SAFETY: test-owned memory (model or host arena), untouched while mapped.
    let status = unsafe {
        r.mapper
            .map_or_defer(&r.dev, phys, 100, Direction::ToDevice, record(&r.done, 2))
    }
    .unwrap();
    let queued_after = r.mapper.deferred_len();
    if let MapStatus::Mapped(dma) = status {
        // SAFETY: test-owned memory (model or host arena), untouched while mapped.
        unsafe { r.mapper.unmap(&r.dev, dma, 100, Direction::ToDevice) }.unwrap();
    }
    // Whatever was deferred completes once the hog goes; direct ones unmap by their size.
    // SAFETY: test-owned memory (model or host arena), untouched while mapped.
    let _ = unsafe { r.mapper.unmap(&r.dev, r.hog, HOG, Direction::FromDevice) };
    for (tag, res) in std::mem::take(&mut *r.done.lock().unwrap()) {
        if let Ok(dma) = res {
            let (len, dir) = if tag == 2 {
                (100, Direction::ToDevice)
            } else {
                (10_000, Direction::FromDevice)
            };
            // SAFETY: test-owned memory (model or host arena), untouched while mapped.
            unsafe { r.mapper.unmap(&r.dev, dma, len, dir) }.unwrap();
        }
    }
    assert_eq!(r.pool.usage().used, 0);
    Unneeded {
        status,
        phys,
        queued_after,
    }
}

/// What [`too_large_while_queued`] saw.
#[derive(Debug)]
pub struct TooLarge {
    /// `map_or_defer` of a request larger than the pool's largest bounce, while the same
    /// device has a request waiting.
    pub answer: Result<MapStatus, DmaError>,
    pub queued_after: usize,
    /// Completions after the hog is unmapped (the too-large one, had it been queued).
    pub later: Vec<(u32, Result<DmaAddr, DmaError>)>,
    /// The pool before and after the refused request.
    pub usage_before: dmakit::bounce::PoolUsage,
    pub usage_after: dmakit::bounce::PoolUsage,
}

/// A request no free could ever satisfy, made while the device already waits.
pub fn too_large_while_queued() -> TooLarge {
    let r = rig(53);
    assert_eq!(queue_one(&r, 1), MapStatus::Deferred);
    let usage_before = r.pool.usage();
    // SAFETY: test-owned memory (model or host arena), untouched while mapped.
    let answer = unsafe {
        r.mapper.map_or_defer(
            &r.dev,
            r.base.add(2_000_000 + MISALIGN),
            POOL + 4096,
            Direction::FromDevice,
            record(&r.done, 2),
        )
    };
    let usage_after = r.pool.usage();
    let queued_after = r.mapper.deferred_len();
    // SAFETY: test-owned memory (model or host arena), untouched while mapped.
    let _ = unsafe { r.mapper.unmap(&r.dev, r.hog, HOG, Direction::FromDevice) };
    let later = std::mem::take(&mut *r.done.lock().unwrap());
    for (tag, res) in &later {
        if let (1, Ok(dma)) = (tag, res) {
            // SAFETY: test-owned memory (model or host arena), untouched while mapped.
            unsafe { r.mapper.unmap(&r.dev, *dma, 10_000, Direction::FromDevice) }.unwrap();
        }
    }
    assert_eq!(r.pool.usage().used, 0);
    TooLarge {
        answer,
        queued_after,
        later,
        usage_before,
        usage_after,
    }
}

/// What [`release_with_queued_mappings`] saw.
#[derive(Debug)]
pub struct Released {
    /// Deferred entries left after `release_device`.
    pub queued_after_release: usize,
    /// Callbacks run by `release_device` itself.
    pub at_release: Vec<(u32, Result<DmaAddr, DmaError>)>,
    /// Callbacks run later, when the pool freed up.
    pub after_free: Vec<(u32, Result<DmaAddr, DmaError>)>,
    /// Pool bytes in use once everything was unmapped.
    pub used_at_end: u64,
}

/// A device with two queued requests is released; the pool then frees up.
pub fn release_with_queued_mappings() -> Released {
    let r = rig(54);
    assert_eq!(queue_one(&r, 1), MapStatus::Deferred);
    assert_eq!(queue_one(&r, 2), MapStatus::Deferred);
    // The hog belongs to another device, which stays.
    let other = device(9, BouncePool::Swiotlb);
    let _ = r.mapper.release_device(&r.dev);
    let at_release = std::mem::take(&mut *r.done.lock().unwrap());
    let queued_after_release = r.mapper.deferred_len();
    // SAFETY: test-owned memory (model or host arena), untouched while mapped.
    let _ = unsafe { r.mapper.unmap(&r.dev, r.hog, HOG, Direction::FromDevice) };
    let after_free = std::mem::take(&mut *r.done.lock().unwrap());
    for (_, res) in &after_free {
        if let Ok(dma) = res {
            // SAFETY: test-owned memory (model or host arena), untouched while mapped.
            unsafe { r.mapper.unmap(&r.dev, *dma, 10_000, Direction::FromDevice) }.unwrap();
        }
    }
    let _ = other;
    Released {
        queued_after_release,
        at_release,
        after_free,
        used_at_end: r.pool.usage().used,
    }
}

/// What [`two_devices_one_pool`] saw.
#[derive(Debug)]
pub struct TwoDevices {
    /// Device 2's small request while device 1 waits for room it cannot get yet.
    pub roomy_status: MapStatus,
    /// Device 2's request made while the pool had no room for it either.
    pub blocked_status: MapStatus,
    /// Completions right after device 2 freed room enough for its own request (not for
    /// device 1's).
    pub after_dev2_free: Vec<u32>,
    /// Completions once device 1's hog went too, in order.
    pub after_hog_free: Vec<u32>,
    /// Pool bytes in use at the end.
    pub used_at_end: u64,
}

/// Both devices bounce through one SWIOTLB pool with `R` bytes free. Device 1 waits with
/// a request larger than `R` and, behind it, a small one (its order must hold); device 2
/// asks for little.
pub fn two_devices_one_pool() -> TwoDevices {
    let r = rig_with_room(55, 40 * 1024);
    let dev2 = device(2, BouncePool::Swiotlb);
    let dir = Direction::FromDevice;
    let ask = |dev: &Device, at: u64, len: u64, tag: u32| {
        // SAFETY: test-owned memory (model or host arena), untouched while mapped.
        unsafe {
            r.mapper.map_or_defer(
                dev,
                r.base.add(at + MISALIGN),
                len,
                dir,
                record(&r.done, tag),
            )
        }
        .unwrap()
    };
    assert_eq!(ask(&r.dev, 1_000_000, 100_000, 1), MapStatus::Deferred);
    assert_eq!(ask(&r.dev, 1_200_000, 1000, 2), MapStatus::Deferred);
    let roomy_status = ask(&dev2, 2_000_000, 1000, 20);
    // SAFETY: test-owned memory (model or host arena), untouched while mapped.
    let dev2_hog = unsafe {
        r.mapper
            .map(&dev2, r.base.add(2_100_000 + MISALIGN), 30_000, dir)
    }
    .unwrap();
    let blocked_status = ask(&dev2, 2_200_000, 20_000, 21);
    // SAFETY: test-owned memory (model or host arena), untouched while mapped.
    unsafe { r.mapper.unmap(&dev2, dev2_hog, 30_000, dir) }.unwrap();
    let first = std::mem::take(&mut *r.done.lock().unwrap());
    let after_dev2_free = first.iter().map(|(t, _)| *t).collect();
    let mut all = first;
    if let MapStatus::Mapped(dma) = roomy_status {
        all.push((20, Ok(dma)));
    }
    // Device 2's mappings go; then device 1's hog.
    let len_of = |tag: u32| match tag {
        1 => 100_000,
        2 | 20 => 1000,
        21 => 20_000,
        _ => unreachable!(),
    };
    for (tag, res) in all.drain(..) {
        if let Ok(dma) = res {
            let d = if tag >= 20 { &dev2 } else { &r.dev };
            // SAFETY: test-owned memory (model or host arena), untouched while mapped.
            unsafe { r.mapper.unmap(d, dma, len_of(tag), dir) }.unwrap();
        }
    }
    // SAFETY: test-owned memory (model or host arena), untouched while mapped.
    let _ = unsafe { r.mapper.unmap(&r.dev, r.hog, r.hog_len, dir) };
    let mut rest = std::mem::take(&mut *r.done.lock().unwrap());
    let after_hog_free = rest.iter().map(|(t, _)| *t).collect();
    for (tag, res) in rest.drain(..) {
        if let Ok(dma) = res {
            let d = if tag >= 20 { &dev2 } else { &r.dev };
            // SAFETY: test-owned memory (model or host arena), untouched while mapped.
            unsafe { r.mapper.unmap(d, dma, len_of(tag), dir) }.unwrap();
        }
    }
    // Anything completed by those unmaps.
    for (tag, res) in std::mem::take(&mut *r.done.lock().unwrap()) {
        if let Ok(dma) = res {
            let d = if tag >= 20 { &dev2 } else { &r.dev };
            // SAFETY: test-owned memory (model or host arena), untouched while mapped.
            unsafe { r.mapper.unmap(d, dma, len_of(tag), dir) }.unwrap();
        }
    }
    TwoDevices {
        roomy_status,
        blocked_status,
        after_dev2_free,
        after_hog_free,
        used_at_end: r.pool.usage().used,
    }
}

/// What [`release_during_a_retry`] saw; `None` from it means it did not finish in time.
#[derive(Debug)]
pub struct ReleasedMidRetry {
    /// Growth-hook calls (the second one, inside the retry, released the device).
    pub hook_calls: usize,
    /// Deferred entries left after the retry.
    pub queued_after: usize,
    /// Callbacks run by the end of the retry.
    pub completions: Vec<(u32, Result<DmaAddr, DmaError>)>,
    /// Pool bytes in use at the end, the hog unmapped.
    pub used_at_end: u64,
}

/// Releases the device from inside the growth hook.
struct ReleasingHook {
    mapper: OnceLock<Arc<DmaMapper<&'static HostPlatform>>>,
    dev: Device,
    calls: Mutex<usize>,
}

impl GrowthHook for ReleasingHook {
    fn request(&self, _req: GrowthRequest) {
        let n = {
            let mut c = self.calls.lock().unwrap();
            *c += 1;
            *c
        };
        if n == 2 {
            if let Some(m) = self.mapper.get() {
                let _ = m.release_device(&self.dev);
            }
        }
    }
}

/// A queued mapping is being retried (its entry is claimed, the queue's lock dropped) when
/// the growth hook, called by that very attempt, releases its device. Runs on host memory
/// (the hook needs a thread-safe platform) on its own thread, `None` past `timeout`.
pub fn release_during_a_retry(timeout: Duration) -> Option<ReleasedMidRetry> {
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let host: &'static HostPlatform = Box::leak(Box::new(
            HostPlatform::new(0, 4 << 20, 1, 64, HostMaintenance::None).unwrap(),
        ));
        let dev = Device::builder(DeviceId(1), "nc").build().unwrap();
        let hook = Arc::new(ReleasingHook {
            mapper: OnceLock::new(),
            dev: dev.clone(),
            calls: Mutex::new(0),
        });
        let cfg = PoolConfig::builder().cpu_count(1).build().unwrap();
        let pool = Arc::new(SwiotlbBounce::new(
            cfg,
            Some(hook.clone()),
            1 << 20,
            u64::MAX,
        ));
        pool.add_region(PhysAddr::new(0), POOL).unwrap();
        let mapper = Arc::new(
            DmaMapper::builder(host)
                .swiotlb_backend(pool.clone())
                .build(),
        );
        let _ = hook.mapper.set(mapper.clone());
        let base = PhysAddr::new(1 << 20);
        let dir = Direction::FromDevice;
        // The hog belongs to another device, which is not released.
        let other = Device::builder(DeviceId(2), "nc").build().unwrap();
        let hog_len = POOL - 128;
        // SAFETY: test-owned memory (model or host arena), untouched while mapped.
        let hog = unsafe { mapper.map(&other, base.add(MISALIGN), hog_len, dir) }.unwrap();
        let done = Done::default();
        // SAFETY: test-owned memory (model or host arena), untouched while mapped.
        let status = unsafe {
            mapper.map_or_defer(
                &dev,
                base.add(300_000 + MISALIGN),
                10_000,
                dir,
                record(&done, 1),
            )
        }
        .unwrap();
        assert_eq!(status, MapStatus::Deferred);
        // The pool gives up on that growth; the next exhaustion asks again, from inside
        // the retry's attempt.
        pool.growth_failed();
        mapper.retry_deferred();
        let queued_after = mapper.deferred_len();
        let completions = std::mem::take(&mut *done.lock().unwrap());
        // SAFETY: test-owned memory (model or host arena), untouched while mapped.
        unsafe { mapper.unmap(&other, hog, hog_len, dir) }.unwrap();
        // Anything that completed only now is a mapping for the released device.
        let mut completions = completions;
        completions.extend(std::mem::take(&mut *done.lock().unwrap()));
        for (_, r) in &completions {
            if let Ok(dma) = r {
                // SAFETY: test-owned memory (model or host arena), untouched while mapped.
                unsafe { mapper.unmap(&dev, *dma, 10_000, dir) }.unwrap();
            }
        }
        let hook_calls = *hook.calls.lock().unwrap();
        let _ = tx.send(ReleasedMidRetry {
            hook_calls,
            queued_after,
            completions,
            used_at_end: pool.usage().used,
        });
    });
    rx.recv_timeout(timeout).ok()
}
