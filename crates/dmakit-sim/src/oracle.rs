//! The oracle: what every tracked byte must hold, and what went wrong when it does not.
//!
//! Tests register allocations (owner, address, length, label). The oracle follows every
//! legitimate change to them — the CPU's stores, the device's writes — so it always knows
//! the value and owner each byte must have. After a transfer completes it reads the buffer
//! and its neighbours back through the machine (a side-effect-free peek) and classifies
//! every wrong byte:
//!
//! - **stale**: the CPU's view is wrong but RAM holds the right data — a cache line is out
//!   of date (missing invalidate or `sync_for_cpu`);
//! - **leaked**: the byte carries the stamp of an owner that has no business there (not the
//!   allocation's owner, not the transfer's, not nobody) — e.g. an earlier user's data left
//!   in a bounce slot;
//! - **corrupted**: memory itself lost the data — any other wrong byte, including neighbour
//!   bytes that lost the CPU's writes or received device data.
//!
//! It also judges what a device *read*: bytes that differ from what the CPU last stored are
//! stale (missing clean), bytes with a foreign stamp are leaked.
//!
//! A corrupted or leaked byte is reported once; from then on the oracle expects what the
//! CPU saw, so one loss is not counted again at every later check.

use std::borrow::Cow;
use std::fmt;

use dmakit::{MemoryFault, PhysAddr, PhysRange};

use crate::buffers::sized;
use crate::error::SimError;
use crate::machine::Machine;
use crate::memory::{owners_eq, Owner};
use crate::range_map::RangeMap;

/// How the oracle reads memory back. [`Machine`] implements it with its side-effect-free
/// peeks; tests can implement it by hand.
pub trait MemoryView {
    /// What a CPU load of `data.len()` bytes at `addr` would return.
    ///
    /// # Errors
    /// [`MemoryFault`] when the range is not memory.
    fn cpu_view(
        &self,
        addr: PhysAddr,
        data: &mut [u8],
        owners: &mut [Owner],
    ) -> Result<(), MemoryFault>;
    /// Whether [`MemoryView::cpu_view`] of `data.len()` bytes at `addr` would return
    /// exactly `data` and `owners` (same length). The default reads the view and compares;
    /// an implementation may compare in place.
    ///
    /// # Errors
    /// As [`MemoryView::cpu_view`].
    fn cpu_view_is(
        &self,
        addr: PhysAddr,
        data: &[u8],
        owners: &[Owner],
    ) -> Result<bool, MemoryFault> {
        let (mut d, mut o) = (vec![0; data.len()], vec![Owner::NOBODY; owners.len()]);
        self.cpu_view(addr, &mut d, &mut o)?;
        Ok(d == data && owners_eq(&o, owners))
    }
    /// What RAM holds at `addr`, ignoring caches.
    ///
    /// # Errors
    /// [`MemoryFault`] when the range is not memory.
    fn ram_view(
        &self,
        addr: PhysAddr,
        data: &mut [u8],
        owners: &mut [Owner],
    ) -> Result<(), MemoryFault>;
}

impl MemoryView for Machine {
    fn cpu_view(
        &self,
        addr: PhysAddr,
        data: &mut [u8],
        owners: &mut [Owner],
    ) -> Result<(), MemoryFault> {
        self.peek_cpu(addr, data, owners)
    }
    fn cpu_view_is(
        &self,
        addr: PhysAddr,
        data: &[u8],
        owners: &[Owner],
    ) -> Result<bool, MemoryFault> {
        self.peek_cpu_eq(addr, data, owners)
    }
    fn ram_view(
        &self,
        addr: PhysAddr,
        data: &mut [u8],
        owners: &mut [Owner],
    ) -> Result<(), MemoryFault> {
        self.peek_ram(addr, data, owners)
    }
}

/// What kind of wrong a byte is.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ErrorKind {
    /// The reader saw out-of-date data; RAM (or the CPU's latest store) was right.
    Stale,
    /// The byte carries another owner's data.
    Leaked,
    /// Memory lost the data.
    Corrupted,
}

/// Where the wrong byte was seen.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ErrorSite {
    /// The CPU's view after a transfer completed.
    CpuView,
    /// What a device read during a transfer.
    DeviceRead,
}

/// One wrong byte.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ByteReport {
    /// Number of the transfer during or after which it was seen (1-based).
    pub transfer: u64,
    /// Its physical address.
    pub addr: PhysAddr,
    /// The value it must hold.
    pub expected: u8,
    /// The owner that value must carry.
    pub expected_owner: Owner,
    /// The value seen.
    pub actual: u8,
    /// The owner stamp seen.
    pub actual_owner: Owner,
    /// Label of the allocation it belongs to.
    pub label: String,
    /// Owner of that allocation.
    pub alloc_owner: Owner,
    /// The classification.
    pub kind: ErrorKind,
    /// Where it was seen.
    pub site: ErrorSite,
}

impl fmt::Display for ByteReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "transfer {}: {:?} byte at {} in {} (owner {}): expected {:#04x}/owner {}, {} {:#04x}/owner {}",
            self.transfer,
            self.kind,
            self.addr,
            self.label,
            self.alloc_owner.0,
            self.expected,
            self.expected_owner.0,
            match self.site {
                ErrorSite::CpuView => "CPU saw",
                ErrorSite::DeviceRead => "device read",
            },
            self.actual,
            self.actual_owner.0
        )
    }
}

/// Counts of a run, and the first few wrong bytes in detail.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct OracleReport {
    /// Transfers checked.
    pub transfers: u64,
    /// Bytes compared in CPU-view checks.
    pub checked_bytes: u64,
    /// Bytes of device reads compared.
    pub device_read_bytes: u64,
    /// Corrupted bytes.
    pub corrupted_bytes: u64,
    /// Stale bytes (CPU view and device reads together).
    pub stale_bytes: u64,
    /// Leaked bytes (CPU view and device reads together).
    pub leaked_bytes: u64,
    /// Of `stale_bytes`, those a device read.
    pub device_read_stale_bytes: u64,
    /// Of `leaked_bytes`, those a device read.
    pub device_read_leaked_bytes: u64,
    /// Device faults recorded by the machine during the run.
    pub faults: u64,
    /// The first wrong bytes, in the order seen (bounded).
    pub details: Vec<ByteReport>,
}

impl OracleReport {
    /// All wrong bytes of any kind.
    pub fn wrong_bytes(&self) -> u64 {
        self.corrupted_bytes + self.stale_bytes + self.leaked_bytes
    }

    /// No wrong byte and no device fault.
    pub fn is_clean(&self) -> bool {
        self.wrong_bytes() == 0 && self.faults == 0
    }
}

impl fmt::Display for OracleReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} transfers, {} bytes checked, {} device-read bytes: {} corrupted, {} stale ({} read by a device), {} leaked ({} read by a device), {} device faults",
            self.transfers,
            self.checked_bytes,
            self.device_read_bytes,
            self.corrupted_bytes,
            self.stale_bytes,
            self.device_read_stale_bytes,
            self.leaked_bytes,
            self.device_read_leaked_bytes,
            self.faults
        )?;
        for d in &self.details {
            write!(f, "\n  {d}")?;
        }
        Ok(())
    }
}

/// A tracked allocation: its owner and label, and the value and owner each of its `len`
/// bytes must hold (the first `len` entries of `data` and `owners`; the buffers may be
/// longer, see [`Spare`]).
struct Alloc {
    owner: Owner,
    label: Cow<'static, str>,
    len: usize,
    data: Vec<u8>,
    owners: Vec<Owner>,
}

impl Alloc {
    fn len(&self) -> u64 {
        self.len as u64
    }
}

/// Expected-value buffers of unregistered allocations, kept for the next registration so
/// registering does not clear fresh memory that the CPU view overwrites at once.
///
/// Buffers up to [`Spare::MAX_LEN`] bytes are handed out in power-of-two lengths (the
/// length of `n` bytes is `n.next_power_of_two()`, under `2n`), kept by length: at most
/// [`Spare::PER_LENGTH`] pairs of each, so the spares hold under
/// `16 × 2 × 64 KiB × 5` bytes (10 MiB). A tracked allocation's buffers therefore stay
/// under twice its length; longer allocations get buffers of their exact length, never
/// kept.
#[derive(Default)]
struct Spare(Vec<Vec<(Vec<u8>, Vec<Owner>)>>);

impl Spare {
    const PER_LENGTH: usize = 16;
    const MAX_LEN: usize = 64 << 10;

    /// The length of the pair [`Spare::take`] hands out for `n` entries: `n` itself above
    /// [`Spare::MAX_LEN`], else `n.next_power_of_two()`.
    fn length(n: usize) -> usize {
        let len = n.next_power_of_two();
        if len > Self::MAX_LEN {
            n
        } else {
            len
        }
    }

    /// A kept pair of length `len`, if any.
    fn kept(&mut self, len: usize) -> Option<(Vec<u8>, Vec<Owner>)> {
        if !len.is_power_of_two() || len > Self::MAX_LEN {
            return None;
        }
        self.0.get_mut(len.trailing_zeros() as usize)?.pop()
    }

    /// A pair of buffers of [`Spare::length`]`(n)` entries with arbitrary contents: a kept
    /// pair of that length, else new ones.
    fn take(&mut self, n: usize) -> (Vec<u8>, Vec<Owner>) {
        let len = Self::length(n);
        self.kept(len)
            .unwrap_or_else(|| (vec![0; len], vec![Owner::NOBODY; len]))
    }

    /// A pair as [`Spare::take`] hands out for `data.len()` entries, whose first entries
    /// are `data`, each stamped `owner` (the rest arbitrary). New buffers are written
    /// once, not cleared first.
    fn take_stored(&mut self, data: &[u8], owner: Owner) -> (Vec<u8>, Vec<Owner>) {
        let n = data.len();
        let len = Self::length(n);
        match self.kept(len) {
            Some((mut d, mut o)) => {
                d[..n].copy_from_slice(data);
                o[..n].fill(owner);
                (d, o)
            }
            None => {
                let mut d = Vec::with_capacity(len);
                d.extend_from_slice(data);
                d.resize(len, 0);
                let mut o = Vec::with_capacity(len);
                o.resize(n, owner);
                o.resize(len, Owner::NOBODY);
                (d, o)
            }
        }
    }

    /// Keeps a pair from [`Spare::take`] for a later one (drops it when enough of its
    /// length are kept, or when it is not a length `take` hands out again).
    fn put(&mut self, d: Vec<u8>, o: Vec<Owner>) {
        let len = d.len();
        if len != o.len() || !len.is_power_of_two() || len > Self::MAX_LEN {
            return;
        }
        let class = len.trailing_zeros() as usize;
        if self.0.len() <= class {
            self.0.resize_with(class + 1, Vec::new);
        }
        if self.0[class].len() < Self::PER_LENGTH {
            self.0[class].push((d, o));
        }
    }
}

/// The oracle. See the [module docs](self).
pub struct Oracle {
    line: u64,
    extra_neighbours: usize,
    max_details: usize,
    allocs: RangeMap<Alloc>,
    report: OracleReport,
    scratch: (Vec<u8>, Vec<Owner>, Vec<u8>, Vec<Owner>),
    keys: Vec<u64>,
    /// Scratch of [`Oracle::expect`]: the allocations a store covers.
    hits: Vec<u64>,
    spare: Spare,
}

impl Oracle {
    /// An oracle for a machine with `line_size`-byte cache lines (a power of two), keeping
    /// the first 32 wrong bytes in detail.
    ///
    /// # Errors
    /// [`SimError::BadLineSize`] when `line_size` is not a power of two.
    pub fn new(line_size: u64) -> Result<Self, SimError> {
        if !line_size.is_power_of_two() {
            return Err(SimError::BadLineSize(line_size));
        }
        Ok(Self {
            line: line_size,
            extra_neighbours: 0,
            max_details: 32,
            allocs: RangeMap::default(),
            report: OracleReport::default(),
            scratch: Default::default(),
            keys: Vec::new(),
            hits: Vec::new(),
            spare: Spare::default(),
        })
    }

    /// Also check this many tracked allocations on each side of the buffer's edge lines.
    pub fn set_extra_neighbours(&mut self, n: usize) {
        self.extra_neighbours = n;
        if n > 0 {
            self.allocs.keep_order();
        }
    }

    /// Keep at most `n` detailed byte reports.
    pub fn set_max_details(&mut self, n: usize) {
        self.max_details = n;
    }

    /// The report so far.
    pub fn report(&self) -> &OracleReport {
        &self.report
    }

    /// Takes the report, leaving an empty one.
    pub fn take_report(&mut self) -> OracleReport {
        std::mem::take(&mut self.report)
    }

    /// Records the number of device faults the machine saw (copied into the report).
    pub fn set_faults(&mut self, faults: u64) {
        self.report.faults = faults;
    }

    /// Number of tracked allocations.
    pub fn tracked(&self) -> usize {
        self.allocs.len()
    }

    /// Starts tracking `len` bytes at `addr` owned by `owner`. They must hold what the CPU
    /// sees there now (read through `view`) until a store or device write changes them.
    ///
    /// # Errors
    /// [`SimError::BadAllocation`] when the range is empty, overflows, overlaps a tracked
    /// allocation or is not memory.
    pub fn register(
        &mut self,
        view: &impl MemoryView,
        owner: Owner,
        addr: PhysAddr,
        len: u64,
        label: impl Into<Cow<'static, str>>,
    ) -> Result<(), SimError> {
        let (range, bad) = self.vacant(addr, len)?;
        let n = usize::try_from(len).map_err(|_| bad.clone())?;
        let (mut data, mut owners) = self.spare.take(n);
        if view
            .cpu_view(addr, &mut data[..n], &mut owners[..n])
            .is_err()
        {
            self.spare.put(data, owners);
            return Err(bad);
        }
        self.insert(range, owner, label.into(), data, owners);
        Ok(())
    }

    /// The range of `len` bytes at `addr` when it is not empty, does not overflow and
    /// overlaps no tracked allocation, with the error that names it.
    fn vacant(&self, addr: PhysAddr, len: u64) -> Result<(PhysRange, SimError), SimError> {
        let bad = SimError::BadAllocation {
            addr: addr.as_u64(),
            len,
        };
        let range = PhysRange::new(addr, len).ok_or(bad.clone())?;
        if self
            .allocs
            .first_overlapping(range.start().as_u64(), range.end().as_u64())
            .is_some()
        {
            return Err(bad);
        }
        Ok((range, bad))
    }

    /// Tracks `range` (vacant) with its expected bytes and owners (buffers of at least its
    /// length).
    fn insert(
        &mut self,
        range: PhysRange,
        owner: Owner,
        label: Cow<'static, str>,
        data: Vec<u8>,
        owners: Vec<Owner>,
    ) {
        self.allocs.insert(
            range.start().as_u64(),
            range.end().as_u64(),
            Alloc {
                owner,
                label,
                len: range.len() as usize,
                data,
                owners,
            },
        );
    }

    /// Starts tracking an allocation the CPU is about to fill: `data.len()` bytes at
    /// `addr` owned by `owner`, which must hold `data`, every byte stamped `owner`. The
    /// caller then stores exactly that over the whole allocation (through the machine)
    /// before anything else happens to it. The same as [`Oracle::register`] followed,
    /// once stored, by [`Oracle::cpu_stored`] of `data`, without reading what that store
    /// replaces.
    ///
    /// # Errors
    /// [`SimError::BadAllocation`] when the range is empty, overflows or overlaps a
    /// tracked allocation.
    pub fn register_stored(
        &mut self,
        owner: Owner,
        addr: PhysAddr,
        data: &[u8],
        label: impl Into<Cow<'static, str>>,
    ) -> Result<(), SimError> {
        let (range, _) = self.vacant(addr, data.len() as u64)?;
        let (expected, owners) = self.spare.take_stored(data, owner);
        self.insert(range, owner, label.into(), expected, owners);
        Ok(())
    }

    /// Stops tracking the allocation starting at `addr`.
    ///
    /// # Errors
    /// [`SimError::UnknownAllocation`] when none starts there.
    pub fn unregister(&mut self, addr: PhysAddr) -> Result<(), SimError> {
        let al = self
            .allocs
            .remove(addr.as_u64())
            .ok_or(SimError::UnknownAllocation(addr.as_u64()))?;
        self.spare.put(al.data, al.owners);
        Ok(())
    }

    /// Starts of tracked allocations overlapping `[a, b)`, ascending, into `self.keys`.
    fn collect_overlapping(&mut self, a: u64, b: u64) {
        self.allocs.overlapping(a, b, &mut self.keys);
    }

    /// The CPU stored `data` at `addr` stamped `owner`: tracked bytes there must now hold it.
    pub fn cpu_stored(&mut self, addr: PhysAddr, data: &[u8], owner: Owner) {
        self.expect(addr.as_u64(), data, owner);
    }

    /// The device wrote `data`, stamped `owner`, to what is (after any bounce) the buffer
    /// bytes at `addr`: tracked bytes there must now hold it.
    pub fn device_wrote(&mut self, addr: PhysAddr, data: &[u8], owner: Owner) {
        self.expect(addr.as_u64(), data, owner);
    }

    fn expect(&mut self, addr: u64, data: &[u8], owner: Owner) {
        if data.is_empty() {
            return;
        }
        let end = addr.saturating_add(data.len() as u64);
        // Tracked allocations do not overlap: each one the store covers is updated in place.
        let mut hits = std::mem::take(&mut self.hits);
        self.allocs.overlapping(addr, end, &mut hits);
        for &s in &hits {
            let Some(al) = self.allocs.get_mut(s) else {
                continue;
            };
            let lo = addr.max(s);
            let hi = end.min(s + al.len());
            let (ao, so) = ((lo - s) as usize, (lo - addr) as usize);
            let n = (hi - lo) as usize;
            al.data[ao..ao + n].copy_from_slice(&data[so..so + n]);
            al.owners[ao..ao + n].fill(owner);
        }
        self.hits = hits;
    }

    fn record(&mut self, r: ByteReport) {
        let rep = &mut self.report;
        match (r.kind, r.site) {
            (ErrorKind::Corrupted, _) => rep.corrupted_bytes += 1,
            (ErrorKind::Stale, s) => {
                rep.stale_bytes += 1;
                rep.device_read_stale_bytes += u64::from(s == ErrorSite::DeviceRead);
            }
            (ErrorKind::Leaked, s) => {
                rep.leaked_bytes += 1;
                rep.device_read_leaked_bytes += u64::from(s == ErrorSite::DeviceRead);
            }
        }
        if rep.details.len() < self.max_details {
            rep.details.push(r);
        }
    }

    /// The values and stamps the `len` bytes at `addr` must hold, when they all belong to
    /// one tracked allocation (`None` otherwise, or for an empty range): what a device
    /// reading them correctly gets, for [`Machine::device_read_unless`].
    pub fn expected(&self, addr: PhysAddr, len: u64) -> Option<(&[u8], &[Owner])> {
        let a = addr.as_u64();
        let end = a.checked_add(len)?;
        let s = self.allocs.first_overlapping(a, end)?;
        let al = self.allocs.get(s)?;
        // Tracked allocations do not overlap: one holding `a` and `end` holds all between.
        if s > a || s + al.len() < end {
            return None;
        }
        let r = (a - s) as usize..(end - s) as usize;
        Some((&al.data[r.clone()], &al.owners[r]))
    }

    /// A device read of the `len` bytes at `addr` got exactly what [`Oracle::expected`]
    /// gave for them: the same as [`Oracle::check_device_read`] of those bytes (they are
    /// counted as judged, and nothing is wrong).
    pub fn device_read_expected(&mut self, len: u64) {
        self.report.device_read_bytes += len;
    }

    /// Judges what a device read for a transfer owned by `transfer_owner`: `data`/`owners`
    /// are the bytes it got for the buffer bytes at `addr` (after any bounce). Bytes that are
    /// not tracked are not judged.
    ///
    /// # Errors
    /// [`SimError::LengthMismatch`] when the slices differ in length.
    pub fn check_device_read(
        &mut self,
        addr: PhysAddr,
        data: &[u8],
        owners: &[Owner],
        transfer_owner: Owner,
    ) -> Result<(), SimError> {
        if data.len() != owners.len() {
            return Err(SimError::LengthMismatch {
                data: data.len(),
                owners: owners.len(),
            });
        }
        if data.is_empty() {
            return Ok(());
        }
        let a = addr.as_u64();
        let end = a.saturating_add(data.len() as u64);
        self.collect_overlapping(a, end);
        let keys = std::mem::take(&mut self.keys);
        let transfer = self.report.transfers + 1;
        for &s in &keys {
            let Some(al) = self.allocs.get(s) else {
                continue;
            };
            let lo = a.max(s);
            let hi = end.min(s + al.len());
            let (ao, so, n) = ((lo - s) as usize, (lo - a) as usize, (hi - lo) as usize);
            self.report.device_read_bytes += n as u64;
            let (ed, eo) = (&al.data[ao..ao + n], &al.owners[ao..ao + n]);
            let (gd, go) = (&data[so..so + n], &owners[so..so + n]);
            if ed == gd && owners_eq(eo, go) {
                continue;
            }
            let mut found = Vec::new();
            for i in 0..n {
                if ed[i] == gd[i] && eo[i] == go[i] {
                    continue;
                }
                let o = go[i];
                let foreign =
                    o != Owner::NOBODY && o != al.owner && o != eo[i] && o != transfer_owner;
                found.push(ByteReport {
                    transfer,
                    addr: PhysAddr::new(lo + i as u64),
                    expected: ed[i],
                    expected_owner: eo[i],
                    actual: gd[i],
                    actual_owner: o,
                    label: al.label.to_string(),
                    alloc_owner: al.owner,
                    kind: if foreign {
                        ErrorKind::Leaked
                    } else {
                        ErrorKind::Stale
                    },
                    site: ErrorSite::DeviceRead,
                });
            }
            for r in found {
                self.record(r);
            }
        }
        self.keys = keys;
        Ok(())
    }

    /// A transfer on `buffer` owned by `transfer_owner` completed (unmap or sync_for_cpu):
    /// checks the CPU's view of every tracked allocation overlapping the buffer's first
    /// through last cache line, plus the configured extra neighbours, and counts the
    /// transfer.
    ///
    /// # Errors
    /// [`SimError::BadAllocation`] when a tracked allocation can no longer be read (not
    /// memory); the other allocations are still checked.
    pub fn check_transfer(
        &mut self,
        view: &impl MemoryView,
        buffer: PhysRange,
        transfer_owner: Owner,
    ) -> Result<(), SimError> {
        self.report.transfers += 1;
        let first = buffer.start().as_u64() & !(self.line - 1);
        let last = buffer.last().as_u64() & !(self.line - 1);
        let end = last.saturating_add(self.line);
        self.collect_overlapping(first, end);
        let mut keys = std::mem::take(&mut self.keys);
        if self.extra_neighbours > 0 {
            let before: Vec<u64> = self
                .allocs
                .starts_before(first)
                .filter(|s| !keys.contains(s))
                .take(self.extra_neighbours)
                .collect();
            let after: Vec<u64> = self
                .allocs
                .starts_from(end)
                .take(self.extra_neighbours)
                .collect();
            keys.extend(before);
            keys.extend(after);
        }
        let mut result = Ok(());
        for &s in &keys {
            if let Err(e) = self.check_alloc(view, s, transfer_owner) {
                result = Err(e);
            }
        }
        self.keys = keys;
        result
    }

    /// Checks the CPU's view of every tracked allocation now (not counted as a transfer;
    /// errors are attributed to the last transfer).
    ///
    /// # Errors
    /// As [`Oracle::check_transfer`].
    pub fn check_all(
        &mut self,
        view: &impl MemoryView,
        transfer_owner: Owner,
    ) -> Result<(), SimError> {
        let keys = self.allocs.starts();
        let mut result = Ok(());
        for s in keys {
            if let Err(e) = self.check_alloc(view, s, transfer_owner) {
                result = Err(e);
            }
        }
        result
    }

    fn check_alloc(
        &mut self,
        view: &impl MemoryView,
        start: u64,
        transfer_owner: Owner,
    ) -> Result<(), SimError> {
        let Some(al) = self.allocs.get(start) else {
            return Ok(());
        };
        let n = al.len;
        let bad = SimError::BadAllocation {
            addr: start,
            len: n as u64,
        };
        // The usual case, every byte as expected, is told without copying the view out.
        let matches = view
            .cpu_view_is(PhysAddr::new(start), &al.data[..n], &al.owners[..n])
            .map_err(|_| bad.clone())?;
        self.report.checked_bytes += n as u64;
        if matches {
            return Ok(());
        }
        let (cd, co, rd, ro) = &mut self.scratch;
        let (cd, co) = (sized(cd, n, 0), sized(co, n, Owner::NOBODY));
        view.cpu_view(PhysAddr::new(start), cd, co)
            .map_err(|_| bad.clone())?;
        let (rd, ro) = (sized(rd, n, 0), sized(ro, n, Owner::NOBODY));
        view.ram_view(PhysAddr::new(start), rd, ro)
            .map_err(|_| bad)?;
        let transfer = self.report.transfers;
        let mut found = Vec::new();
        for i in 0..n {
            let (ev, eo) = (al.data[i], al.owners[i]);
            if cd[i] == ev && co[i] == eo {
                continue;
            }
            let o = co[i];
            let kind = if o != Owner::NOBODY && o != al.owner && o != eo && o != transfer_owner {
                ErrorKind::Leaked
            } else if rd[i] == ev && ro[i] == eo {
                ErrorKind::Stale
            } else {
                ErrorKind::Corrupted
            };
            found.push((i, kind));
        }
        let mut reports = Vec::with_capacity(found.len());
        if let Some(al) = self.allocs.get_mut(start) {
            for &(i, kind) in &found {
                reports.push(ByteReport {
                    transfer,
                    addr: PhysAddr::new(start + i as u64),
                    expected: al.data[i],
                    expected_owner: al.owners[i],
                    actual: cd[i],
                    actual_owner: co[i],
                    label: al.label.to_string(),
                    alloc_owner: al.owner,
                    kind,
                    site: ErrorSite::CpuView,
                });
                if kind != ErrorKind::Stale {
                    // Report a loss once; follow what the CPU sees from now on.
                    al.data[i] = cd[i];
                    al.owners[i] = co[i];
                }
            }
        }
        for r in reports {
            self.record(r);
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::cell::RefCell;

    /// A hand-made memory: a CPU view and a RAM view over 256 bytes from 0x1000.
    struct Fake {
        cpu: RefCell<(Vec<u8>, Vec<Owner>)>,
        ram: RefCell<(Vec<u8>, Vec<Owner>)>,
    }
    const BASE: u64 = 0x1000;
    impl Fake {
        fn new() -> Self {
            Self {
                cpu: RefCell::new((vec![0; 256], vec![Owner(0); 256])),
                ram: RefCell::new((vec![0; 256], vec![Owner(0); 256])),
            }
        }
        fn set(&self, cpu: bool, ram: bool, addr: u64, v: u8, o: Owner) {
            let i = (addr - BASE) as usize;
            if cpu {
                let mut c = self.cpu.borrow_mut();
                c.0[i] = v;
                c.1[i] = o;
            }
            if ram {
                let mut r = self.ram.borrow_mut();
                r.0[i] = v;
                r.1[i] = o;
            }
        }
    }
    fn read(
        src: &RefCell<(Vec<u8>, Vec<Owner>)>,
        addr: PhysAddr,
        d: &mut [u8],
        o: &mut [Owner],
    ) -> Result<(), MemoryFault> {
        let s = src.borrow();
        let i = addr
            .as_u64()
            .checked_sub(BASE)
            .filter(|&i| i as usize + d.len() <= 256)
            .ok_or(MemoryFault {
                addr,
                len: d.len() as u64,
            })? as usize;
        d.copy_from_slice(&s.0[i..i + d.len()]);
        o.copy_from_slice(&s.1[i..i + d.len()]);
        Ok(())
    }
    impl MemoryView for Fake {
        fn cpu_view(&self, a: PhysAddr, d: &mut [u8], o: &mut [Owner]) -> Result<(), MemoryFault> {
            read(&self.cpu, a, d, o)
        }
        fn ram_view(&self, a: PhysAddr, d: &mut [u8], o: &mut [Owner]) -> Result<(), MemoryFault> {
            read(&self.ram, a, d, o)
        }
    }

    fn p(a: u64) -> PhysAddr {
        PhysAddr::new(a)
    }
    fn range(a: u64, l: u64) -> PhysRange {
        PhysRange::new(p(a), l).unwrap()
    }

    /// Neighbour "nb" at 0x1000..0x1008 (owner 1), buffer "buf" at 0x1008..0x1040 (owner 2).
    fn setup() -> (Fake, Oracle) {
        let f = Fake::new();
        let mut o = Oracle::new(64).unwrap();
        o.register(&f, Owner(1), p(0x1000), 8, "nb").unwrap();
        o.register(&f, Owner(2), p(0x1008), 0x38, "buf").unwrap();
        (f, o)
    }

    #[test]
    fn registration_is_validated() {
        let (f, mut o) = setup();
        assert!(o.register(&f, Owner(3), p(0x1004), 8, "x").is_err());
        assert!(o.register(&f, Owner(3), p(0x1040), 0, "x").is_err());
        assert!(
            o.register(&f, Owner(3), p(0x10f8), 16, "x").is_err(),
            "not memory"
        );
        assert_eq!(
            o.unregister(p(0x1001)),
            Err(SimError::UnknownAllocation(0x1001))
        );
        o.unregister(p(0x1000)).unwrap();
        assert_eq!(o.tracked(), 1);
        assert!(Oracle::new(48).is_err());
    }

    #[test]
    fn correct_memory_is_clean() {
        let (f, mut o) = setup();
        o.cpu_stored(p(0x1000), &[5; 8], Owner(1));
        f.set(true, true, 0x1000, 5, Owner(1));
        for a in 0x1001..0x1008 {
            f.set(true, false, a, 5, Owner(1));
        }
        o.device_wrote(p(0x1010), &[7], Owner(2));
        f.set(true, true, 0x1010, 7, Owner(2));
        o.check_transfer(&f, range(0x1008, 0x38), Owner(2)).unwrap();
        let r = o.report();
        assert_eq!((r.transfers, r.checked_bytes), (1, 64));
        assert!(r.is_clean(), "{r}");
    }

    #[test]
    fn stale_when_ram_is_right_but_the_cpu_view_is_not() {
        let (f, mut o) = setup();
        o.device_wrote(p(0x1010), &[7, 7], Owner(2));
        f.set(false, true, 0x1010, 7, Owner(2));
        f.set(false, true, 0x1011, 7, Owner(2));
        o.check_transfer(&f, range(0x1008, 0x38), Owner(2)).unwrap();
        let r = o.report().clone();
        assert_eq!(
            (r.stale_bytes, r.corrupted_bytes, r.leaked_bytes),
            (2, 0, 0)
        );
        let d = &r.details[0];
        assert_eq!(
            (d.addr, d.expected, d.actual, d.kind),
            (p(0x1010), 7, 0, ErrorKind::Stale)
        );
        assert_eq!((d.label.as_str(), d.site), ("buf", ErrorSite::CpuView));
        // Stale bytes are not adopted: fixing the view makes the check clean again.
        f.set(true, false, 0x1010, 7, Owner(2));
        f.set(true, false, 0x1011, 7, Owner(2));
        o.check_transfer(&f, range(0x1008, 0x38), Owner(2)).unwrap();
        assert_eq!(o.report().stale_bytes, 2);
    }

    #[test]
    fn corrupted_when_memory_lost_the_data_and_reported_once() {
        let (f, mut o) = setup();
        // The neighbour's store was lost (cache line invalidated): both views hold old data.
        o.cpu_stored(p(0x1002), &[9], Owner(1));
        // The buffer got device data in the neighbour (an overrun): stamp of the transfer.
        f.set(true, true, 0x1004, 0xaa, Owner(2));
        o.check_transfer(&f, range(0x1008, 0x38), Owner(2)).unwrap();
        let r = o.report().clone();
        assert_eq!(
            (r.corrupted_bytes, r.stale_bytes, r.leaked_bytes),
            (2, 0, 0)
        );
        assert!(r.details.iter().all(|d| d.label == "nb"));
        o.check_transfer(&f, range(0x1008, 0x38), Owner(2)).unwrap();
        assert_eq!(o.report().corrupted_bytes, 2, "not counted again");
    }

    #[test]
    fn leaked_when_a_foreign_owner_shows_up() {
        let (f, mut o) = setup();
        f.set(true, true, 0x1020, 0x33, Owner(77));
        o.check_transfer(&f, range(0x1008, 0x38), Owner(2)).unwrap();
        let r = o.report();
        assert_eq!((r.leaked_bytes, r.corrupted_bytes), (1, 0));
        assert_eq!(r.details[0].actual_owner, Owner(77));
        assert_eq!(r.details[0].kind, ErrorKind::Leaked);
    }

    #[test]
    fn device_reads_are_judged() {
        let (_f, mut o) = setup();
        o.cpu_stored(p(0x1008), &[1, 2, 3, 4], Owner(2));
        // Correct read.
        o.check_device_read(p(0x1008), &[1, 2, 3, 4], &[Owner(2); 4], Owner(2))
            .unwrap();
        assert!(o.report().is_clean());
        // Stale RAM (old zero bytes) and one byte of another owner.
        o.check_device_read(
            p(0x1008),
            &[1, 0, 3, 9],
            &[Owner(2), Owner(0), Owner(2), Owner(5)],
            Owner(2),
        )
        .unwrap();
        let r = o.report();
        assert_eq!(
            (r.device_read_stale_bytes, r.device_read_leaked_bytes),
            (1, 1)
        );
        assert_eq!(
            (r.stale_bytes, r.leaked_bytes, r.device_read_bytes),
            (1, 1, 8)
        );
        assert_eq!(r.details[0].site, ErrorSite::DeviceRead);
        assert!(o.check_device_read(p(0x1008), &[1], &[], Owner(2)).is_err());
    }

    #[test]
    fn neighbours_on_edge_lines_and_extras_are_checked() {
        let f = Fake::new();
        let mut o = Oracle::new(64).unwrap();
        // a: 0x1000..0x1010, gap, buf: 0x1040..0x1080, b: 0x1080..0x1090, c: 0x10c0..0x10d0
        o.register(&f, Owner(1), p(0x1000), 0x10, "a").unwrap();
        o.register(&f, Owner(2), p(0x1040), 0x40, "buf").unwrap();
        o.register(&f, Owner(3), p(0x1080), 0x10, "b").unwrap();
        o.register(&f, Owner(4), p(0x10c0), 0x10, "c").unwrap();
        o.check_transfer(&f, range(0x1040, 0x40), Owner(2)).unwrap();
        assert_eq!(
            o.report().checked_bytes,
            0x40,
            "line-aligned: only the buffer"
        );
        o.check_transfer(&f, range(0x1048, 0x38), Owner(2)).unwrap();
        assert_eq!(
            o.report().checked_bytes,
            0x80,
            "still only the buffer's lines"
        );
        o.set_extra_neighbours(1);
        o.check_transfer(&f, range(0x1040, 0x40), Owner(2)).unwrap();
        assert_eq!(o.report().checked_bytes, 0x80 + 0x40 + 0x10 + 0x10);
        o.check_all(&f, Owner(0)).unwrap();
        assert_eq!(o.report().transfers, 3);
        assert_eq!(o.report().checked_bytes, 0xe0 + 0x70);
    }
}
