//! The transfers the kernel makes through virtio-drivers and dmakit, each verified.
//!
//! Every data check compares bytes read back from the disk with the bytes written. Every
//! transfer is also checked against dmakit's rule, through the mapper's statistics: an
//! outbound buffer is mapped in place wherever it lies; an inbound buffer is bounced
//! exactly when its first or last cache line is shared (and the 1-byte status virtio-blk
//! reads back always is); a force-bounced device bounces every buffer. The bytes copied
//! into and out of bounces are counted exactly.

use core::fmt;

use dmakit::coherent_pool::ObjectPoolUsage;
use dmakit::stats::DeviceStats;
use dmakit::DmaOps;
use virtio_drivers::device::blk::{BlkReq, BlkResp, SECTOR_SIZE};

use crate::buffer::Arena;
use crate::disk::Disk;
use crate::hal;
use crate::layout::COHERENT_WINDOW;
use crate::println;
use crate::rng::XorShift;

/// Bytes of the request header virtio-blk sends before the data.
const HEADER: u64 = 16;
/// Bytes of the status virtio-blk receives after the data.
const STATUS: u64 = 1;
/// Randomized transfers.
const RANDOM_TRANSFERS: u32 = 300;
/// Largest randomized transfer, in sectors.
const MAX_SECTORS: usize = 16;
/// Fill of guard bytes around inbound buffers.
const GUARD: u8 = 0xa5;

/// What one transfer changed in the mapper's statistics.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Delta {
    /// Mappings bounced because a cache line was shared.
    misaligned: u64,
    /// Mappings bounced because the device bounces everything.
    forced: u64,
    /// Bytes copied into bounces.
    to_bounce: u64,
    /// Bytes copied out of bounces.
    from_bounce: u64,
}

impl Delta {
    fn between(before: &DeviceStats, after: &DeviceStats) -> Self {
        Self {
            misaligned: after.bounced.misaligned - before.bounced.misaligned,
            forced: after.bounced.forced - before.bounced.forced,
            to_bounce: after.bytes_to_bounce - before.bytes_to_bounce,
            from_bounce: after.bytes_from_bounce - before.bytes_from_bounce,
        }
    }

    /// What a write of `len` bytes should do: in place unless forced; the status byte
    /// bounces either way. A bounce starts as a copy of its buffer, inbound ones too (so
    /// bytes the device does not write come back unchanged), and an inbound one is copied
    /// back when it is unmapped.
    fn write(len: u64, forced: bool) -> Self {
        if forced {
            Self {
                misaligned: 0,
                forced: 3,
                to_bounce: HEADER + len + STATUS,
                from_bounce: STATUS,
            }
        } else {
            Self {
                misaligned: 1,
                forced: 0,
                to_bounce: STATUS,
                from_bounce: STATUS,
            }
        }
    }

    /// What a read of `len` bytes into a buffer `line_offset` bytes into a cache line
    /// should do: bounced if forced or if it shares its first or last line.
    fn read(len: u64, line_offset: u64, forced: bool, line: u64) -> Self {
        if forced {
            return Self {
                misaligned: 0,
                forced: 3,
                to_bounce: HEADER + len + STATUS,
                from_bounce: len + STATUS,
            };
        }
        let shares_a_line = line_offset != 0 || !len.is_multiple_of(line);
        let data = if shares_a_line { len } else { 0 };
        Self {
            misaligned: 1 + u64::from(shares_a_line),
            forced: 0,
            to_bounce: STATUS + data,
            from_bounce: STATUS + data,
        }
    }
}

/// The disk, the mapper and the tally of checks.
pub struct Checks<'a> {
    disk: &'a mut Disk,
    dma: &'static (dyn DmaOps + Send + Sync),
    line: u64,
    rng: XorShift,
    passed: u32,
    failed: u32,
}

impl<'a> Checks<'a> {
    /// Checks on `disk`, whose buffers `dma` maps, on a CPU with `line`-byte cache lines.
    pub fn new(disk: &'a mut Disk, dma: &'static (dyn DmaOps + Send + Sync), line: u64) -> Self {
        Self {
            disk,
            dma,
            line,
            rng: XorShift::new(0x0dda_11ce_5eed_1234),
            passed: 0,
            failed: 0,
        }
    }

    /// Checks that failed.
    pub fn failed(&self) -> u32 {
        self.failed
    }

    /// Checks that passed.
    pub fn passed(&self) -> u32 {
        self.passed
    }

    fn check(&mut self, ok: bool, what: fmt::Arguments<'_>) {
        if ok {
            self.passed += 1;
        } else {
            self.failed += 1;
            println!("FAIL: {what}");
        }
    }

    fn snapshot(&self) -> DeviceStats {
        self.dma.stats().total()
    }

    /// Writes `data` at `sector`, force-bounced or not, and checks the bounces it made.
    fn write(&mut self, sector: usize, data: &[u8], forced: bool) {
        hal::force_bounce(forced);
        let before = self.snapshot();
        let result = self.disk.write_blocks(sector, data);
        let delta = Delta::between(&before, &self.snapshot());
        hal::force_bounce(false);
        self.check(
            result.is_ok(),
            format_args!("write of sector {sector}: {result:?}"),
        );
        let want = Delta::write(data.len() as u64, forced);
        self.check(
            delta == want,
            format_args!(
                "write of {} bytes at {:p} (forced {forced}): {delta:?}, expected {want:?}",
                data.len(),
                data.as_ptr()
            ),
        );
    }

    /// Reads `buf.len()` bytes at `sector` into `buf`, force-bounced or not, and checks
    /// the bounces it made.
    fn read(&mut self, sector: usize, buf: &mut [u8], forced: bool) {
        hal::force_bounce(forced);
        let before = self.snapshot();
        let result = self.disk.read_blocks(sector, buf);
        let delta = Delta::between(&before, &self.snapshot());
        hal::force_bounce(false);
        self.check(
            result.is_ok(),
            format_args!("read of sector {sector}: {result:?}"),
        );
        let offset = buf.as_ptr() as u64 % self.line;
        let want = Delta::read(buf.len() as u64, offset, forced, self.line);
        self.check(
            delta == want,
            format_args!(
                "read of {} bytes at {:p} (forced {forced}): {delta:?}, expected {want:?}",
                buf.len(),
                buf.as_ptr()
            ),
        );
    }

    /// Page-aligned writes and reads of 8 sectors: data mapped in place both ways.
    pub fn aligned(&mut self) {
        let (mut src, mut dst) = (Arena::new(4096), Arena::new(4096));
        self.rng.fill(src.bytes());
        self.write(0, src.bytes(), false);
        self.read(0, dst.bytes(), false);
        let same = src.bytes() == dst.bytes();
        self.check(
            same,
            format_args!("aligned 4 KiB transfer read back different bytes"),
        );
        println!("aligned: 4 KiB written and read back in place");
    }

    /// One sector read into a buffer 3 bytes into a cache line, while the CPU writes the
    /// bytes around it (the rest of its first and last lines): the read is bounced, the
    /// data arrive, and the CPU's writes next to the buffer survive.
    pub fn misaligned_read(&mut self) {
        let sector = 8;
        let mut src = Arena::new(SECTOR_SIZE);
        self.rng.fill(src.bytes());
        self.write(sector, src.bytes(), false);

        let line = self.line as usize;
        let start = line + 3;
        let mut arena = Arena::new(4096);
        arena.bytes().fill(GUARD);
        let before = self.snapshot();
        let (head, rest) = arena.bytes().split_at_mut(start);
        let (buf, tail) = rest.split_at_mut(SECTOR_SIZE);
        let (mut req, mut resp) = (BlkReq::default(), BlkResp::default());
        // SAFETY: `req`, `buf` and `resp` stay alive and untouched until the request
        // completes below.
        let submitted = unsafe { self.disk.read_blocks_nb(sector, &mut req, buf, &mut resp) };
        // The CPU keeps using the neighbours of the buffer while the device fills it.
        head.fill(0x11);
        tail.fill(0x22);
        let result = submitted.and_then(|token| {
            while self.disk.peek_used() != Some(token) {
                core::hint::spin_loop();
            }
            // SAFETY: the same request, buffers and token as submitted.
            unsafe { self.disk.complete_read_blocks(token, &req, buf, &mut resp) }
        });
        let delta = Delta::between(&before, &self.snapshot());
        self.check(result.is_ok(), format_args!("misaligned read: {result:?}"));
        let data_ok = buf == src.bytes();
        let guards_ok = head.iter().all(|&b| b == 0x11) && tail.iter().all(|&b| b == 0x22);
        self.check(
            data_ok,
            format_args!("misaligned read: wrong data in the buffer"),
        );
        self.check(
            guards_ok,
            format_args!("misaligned read: a byte next to the buffer was lost"),
        );
        let want = Delta::read(SECTOR_SIZE as u64, 3, false, self.line);
        self.check(
            delta == want,
            format_args!("misaligned read: {delta:?}, expected {want:?}"),
        );
        println!(
            "misaligned read: 1 sector into a buffer 3 bytes into a line, bounced; the bytes \
             around it, written by the CPU during the transfer, survived"
        );
    }

    /// Two sectors written from a buffer 5 bytes into a cache line: mapped in place
    /// (cleaning a shared line loses nothing), read back intact.
    pub fn misaligned_write(&mut self) {
        let sector = 16;
        let len = 2 * SECTOR_SIZE;
        let mut src = Arena::new(4096);
        self.rng.fill(src.bytes());
        self.write(sector, &src.bytes()[5..5 + len], false);
        let mut dst = Arena::new(len);
        self.read(sector, dst.bytes(), false);
        let same = dst.bytes() == &src.bytes()[5..5 + len];
        self.check(
            same,
            format_args!("misaligned write read back different bytes"),
        );
        println!(
            "misaligned write: 2 sectors from 5 bytes into a line, in place, read back intact"
        );
    }

    /// Force-bounced writes and reads of aligned buffers, each checked against a transfer
    /// that is not.
    pub fn forced(&mut self) {
        let sector = 24;
        let len = 4 * SECTOR_SIZE;
        let (mut src, mut dst, mut plain) = (Arena::new(len), Arena::new(len), Arena::new(len));
        self.rng.fill(src.bytes());
        self.write(sector, src.bytes(), true);
        self.read(sector, plain.bytes(), false);
        self.read(sector, dst.bytes(), true);
        let ok = dst.bytes() == src.bytes() && plain.bytes() == src.bytes();
        self.check(
            ok,
            format_args!("force-bounced transfer read back different bytes"),
        );
        println!("force-bounced: 2 KiB written and read back through the bounce pool");
    }

    /// Randomized transfers: each a write from a random offset, then a read into a
    /// random offset of a guarded buffer, either force-bounced or not, compared.
    pub fn randomized(&mut self) {
        let capacity = self.disk.capacity() as usize;
        let arena_len = MAX_SECTORS * SECTOR_SIZE + 256;
        let (mut src, mut dst) = (Arena::new(arena_len), Arena::new(arena_len));
        let failed_before = self.failed;
        for _ in 0..RANDOM_TRANSFERS {
            let sectors = self.rng.range(1, MAX_SECTORS as u64) as usize;
            let len = sectors * SECTOR_SIZE;
            let sector = self.rng.range(64, (capacity - MAX_SECTORS) as u64) as usize;
            let (w_off, r_off) = (
                self.rng.range(0, 255) as usize,
                self.rng.range(0, 255) as usize,
            );
            let (w_forced, r_forced) = (self.rng.next_u64() & 1 == 1, self.rng.next_u64() & 1 == 1);
            self.rng.fill(&mut src.bytes()[w_off..w_off + len]);
            dst.bytes().fill(GUARD);
            self.write(sector, &src.bytes()[w_off..w_off + len], w_forced);
            self.read(sector, &mut dst.bytes()[r_off..r_off + len], r_forced);
            let (s, d) = (src.bytes(), dst.bytes());
            let same = d[r_off..r_off + len] == s[w_off..w_off + len];
            let guarded = d[..r_off]
                .iter()
                .chain(&d[r_off + len..])
                .all(|&b| b == GUARD);
            self.check(
                same && guarded,
                format_args!(
                    "random transfer of {sectors} sectors at {sector} (write offset {w_off}, forced {w_forced}; read offset {r_off}, forced {r_forced}): data {same}, guards {guarded}"
                ),
            );
        }
        println!(
            "randomized: {RANDOM_TRANSFERS} transfers of 1-{MAX_SECTORS} sectors at random offsets, each read back ({} failed checks)",
            self.failed - failed_before
        );
    }

    /// The virtqueues' coherent memory is the uncached window's: the allocator's window
    /// pool (`usage`) is the whole window and holds the queue's allocations.
    pub fn coherent_from_window(&mut self, usage: ObjectPoolUsage) {
        let whole = usage.total == COHERENT_WINDOW.len;
        self.check(
            whole,
            format_args!("the coherent pool is {} bytes, not the window", usage.total),
        );
        self.check(
            usage.live > 0,
            format_args!("no coherent allocation came from the window"),
        );
        println!(
            "coherent memory: {} allocations ({} bytes) from the {} KiB uncached window",
            usage.live,
            usage.used,
            usage.total >> 10
        );
    }

    /// Every bounce was given back.
    pub fn pools_empty(&mut self) {
        let stats = self.dma.stats();
        for pool in &stats.pools {
            let live = pool.usage.live;
            self.check(
                live == 0,
                format_args!("pool {} still holds {live} bounces", pool.name),
            );
        }
    }
}
