//! The bounds a scenario file must stay within, so that no file can make a run take more
//! host memory or time than the model can hold.

/// Most transfer patterns a scenario may declare (each gets its own call site).
pub const MAX_TRANSFER_SITES: usize = crate::sites::SITES;

/// Largest modelled data cache (16 MiB). The model holds every byte of the cache with its
/// provenance stamp (5 bytes of host memory per cached byte) for each policy run side by
/// side, and allocates it up front.
pub const MAX_CACHE_BYTES: u64 = 16 << 20;

/// Most ways per cache set (each access searches its set).
pub const MAX_CACHE_WAYS: u64 = 64;

/// Most `machine.ram` ranges (each RAM check searches them).
pub const MAX_RAM_RANGES: usize = 64;

/// Largest fixed bounce pool (1 GiB; Linux's default is 64 MiB). The pool keeps state per
/// 2 KiB slot, per policy.
pub const MAX_BOUNCE_POOL_BYTES: u64 = 1 << 30;

/// Most `[[device]]` entries (the model looks devices up by scanning them). The whole
/// file is validated first, so a mistake in any device is reported before the count.
pub const MAX_DEVICES: usize = 4096;

/// Most live background kmalloc objects (`kmalloc.live_objects`): the model keeps each
/// one's bytes and provenance, about 3 KiB of host memory per object and policy.
pub const MAX_LIVE_OBJECTS: u64 = 100_000;

/// Most bytes all transfer patterns together may keep alive at once in the model's
/// memory: buffers in flight (`queue_depth` times the largest size), page fragments kept
/// (`in_flight` plus `queue_depth` fragments of headroom + size + tail), framebuffers
/// (`frames` times the largest size) and driver structures. 16 MiB; the model takes about
/// 10 bytes of host memory per byte it holds, per policy.
pub const MAX_RESIDENT_BYTES: u64 = 16 << 20;

/// Largest driver weight (weights are relative frequencies; the runner sums them).
pub const MAX_DRIVER_WEIGHT: f64 = 1e6;

/// Largest driver rate in operations per second (`driver.rate`; 10^9: beyond any device).
pub const MAX_DRIVER_RATE: f64 = 1e9;
