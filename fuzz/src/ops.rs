//! The input language: a sequence of raw API calls, decoded from the fuzzer's bytes with
//! `arbitrary`. Every field is a raw number; the harness maps it onto the machine (a
//! device index modulo the device count, an offset modulo the buffer areas, ...), so every
//! input is a valid program.

use arbitrary::Arbitrary;
use dmakit::Direction;

/// A whole input: whether the debug checker runs, then the calls.
#[derive(Arbitrary, Debug)]
pub struct Program {
    /// Run with [`dmakit::DmaMapperBuilder::debug_checker`].
    pub debug_checker: bool,
    /// The calls, in order (at most [`MAX_OPS`] are run).
    pub ops: Vec<Op>,
}

/// Most calls one input runs.
pub const MAX_OPS: usize = 256;

/// One step.
#[derive(Arbitrary, Debug, Clone)]
pub enum Op {
    /// `map` a free buffer range.
    Map(Buf),
    /// `map_or_defer` a free buffer range.
    MapOrDefer(Buf),
    /// `map_sg` of up to four free ranges.
    MapSg {
        /// Device index.
        dev: u8,
        /// Direction selector.
        dir: u8,
        /// `(offset, length)` selectors of the entries.
        entries: Vec<(u16, u16)>,
    },
    /// Unmap (or `unmap_sg` the list of) a live mapping.
    Unmap {
        /// Which live mapping.
        pick: u8,
    },
    /// Sync a part (or all) of a live mapping.
    Sync {
        /// Which live mapping.
        pick: u8,
        /// `sync_for_cpu` when set, else `sync_for_device`.
        for_cpu: bool,
        /// The whole mapping, else the part below.
        full: bool,
        /// Part offset selector.
        off: u16,
        /// Part length selector.
        len: u16,
    },
    /// The device writes into a live mapping that permits it.
    DeviceWrite {
        /// Which live mapping.
        pick: u8,
        /// Offset selector.
        off: u16,
        /// Length selector.
        len: u16,
        /// Data seed.
        seed: u8,
    },
    /// The CPU writes free buffer memory (possibly in the lines of live mappings).
    CpuWrite {
        /// Offset selector.
        off: u16,
        /// Length selector.
        len: u16,
        /// Data seed.
        seed: u8,
    },
    /// `retry_deferred`.
    RetryDeferred,
    /// The calling thread moves to another CPU (another pool area).
    Cpu(u8),
    /// A map whose arguments are wrong or out of memory.
    BadMap {
        /// Device index.
        dev: u8,
        /// Direction selector.
        dir: u8,
        /// Which kind of wrong.
        kind: u8,
        /// Raw address material.
        addr: u64,
        /// Raw length material.
        len: u32,
    },
    /// An unmap of a live mapping with one argument wrong, or of a dead one.
    BadUnmap {
        /// Which live (or recently unmapped) mapping.
        pick: u8,
        /// Which argument is wrong.
        kind: u8,
        /// The other device or direction, or an address.
        other: u16,
    },
    /// A sync of a live mapping with one argument wrong.
    BadSync {
        /// Which live mapping.
        pick: u8,
        /// Which argument is wrong.
        kind: u8,
        /// The other device or direction.
        other: u8,
        /// `sync_for_cpu` when set.
        for_cpu: bool,
    },
}

/// A buffer range request.
#[derive(Arbitrary, Debug, Clone, Copy)]
pub struct Buf {
    /// Device index.
    pub dev: u8,
    /// Direction selector.
    pub dir: u8,
    /// Offset selector.
    pub off: u16,
    /// Length selector.
    pub len: u16,
}

/// The direction a selector names.
pub fn direction(sel: u8) -> Direction {
    Direction::ALL[usize::from(sel) % 3]
}

/// A mapping length from a selector: mostly short (1..=512 bytes, where line sharing
/// matters), sometimes up to 10 KiB (beyond the 8 KiB largest bounce).
pub fn length(sel: u16) -> u64 {
    if sel & 0x8000 != 0 {
        1 + u64::from(sel & 0x7fff) % (10 * 1024)
    } else {
        1 + u64::from(sel) % 512
    }
}

/// Deterministic data for a write: `len` bytes from `seed` and a per-run counter.
pub fn pattern(seed: u8, salt: u64, len: u64) -> Vec<u8> {
    let mut x = (u64::from(seed) << 32) ^ salt.wrapping_mul(0x9e37_79b9_7f4a_7c15) ^ 0x5bd1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            (x >> 24) as u8
        })
        .collect()
}
