//! One DMA transfer through the mapping layer, judged by the oracle.
//!
//! The step shared by the randomized harness ([`crate::workload`]) and the scenario runner
//! (`dmakit-scenario`): the CPU writes the buffer, `DmaMapper::map` lends it to the
//! device, the device is granted exactly the returned bus window and reads and/or writes it
//! (writes may stop short) while the CPU keeps loading and storing the neighbours, then the
//! transfer completes (unmap, or sync_for_cpu then unmap, optionally with a second round
//! through sync_for_device) and the oracle checks the buffer and everything sharing its
//! lines. Only the mapper's raw public API and the address `map` returned are used.

use dmakit::{Device, Direction, DmaAddr, DmaError, DmaMapper, MapPath, PhysAddr, PhysRange};
use dmakit::{MemoryFault, Platform};

use crate::buffers::sized;
use crate::error::SimError;
use crate::machine::Machine;
use crate::memory::Owner;
use crate::oracle::Oracle;
use crate::rng::SimRng;
use crate::workload_error::WorkloadError;

/// How a transfer behaves (the per-transfer part of a
/// [`WorkloadConfig`](crate::workload::WorkloadConfig)).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct TransferKnobs {
    /// CPU operations on neighbours interleaved with each round, inclusive range.
    pub cpu_ops: (u64, u64),
    /// Size of each device access, inclusive range.
    pub device_chunk: (u64, u64),
    /// Probability that an inbound device write stops short of the mapped length.
    pub short_write_chance: f64,
    /// Probability of completing with `sync_for_cpu` then `unmap` rather than `unmap`.
    pub sync_chance: f64,
    /// Probability of a second round inside one mapping.
    pub second_round_chance: f64,
    /// The CPU rewrites a `FromDevice` buffer between rounds.
    pub rewrite_inbound_between_rounds: bool,
    /// Control: check before the final unmap / sync_for_cpu (a missing sync).
    pub skip_sync_for_cpu: bool,
}

/// An object the CPU keeps using while the buffer is lent to the device.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Neighbour {
    /// First byte.
    pub addr: u64,
    /// Length (non-zero).
    pub len: u64,
    /// The owner its bytes are stamped with.
    pub owner: Owner,
}

/// What became of one transfer.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum TransferOutcome {
    /// Mapped, performed and checked; the path the mapping took.
    Done(MapPath),
    /// `map` refused the buffer; nothing else happened.
    MapFailed(DmaError),
}

/// A transfer between [`Transfer::start`] and [`Transfer::complete`]: mapped and granted
/// to the device.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct InFlight {
    /// The buffer.
    pub buf: PhysRange,
    /// The direction.
    pub dir: Direction,
    /// The buffer's owner.
    pub owner: Owner,
    /// Where the device sees it.
    pub dma: DmaAddr,
    /// The path the mapping took.
    pub path: MapPath,
}

/// What [`Transfer::start`] did.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Started {
    /// Mapped and granted; complete it with [`Transfer::complete`].
    InFlight(InFlight),
    /// `map` refused the buffer; nothing else happened.
    MapFailed(DmaError),
}

/// Reusable buffers of a transfer loop.
#[derive(Default)]
pub struct Scratch {
    data: Vec<u8>,
    rd: (Vec<u8>, Vec<Owner>),
}

/// Everything one transfer works with. Borrowed for the transfer, so a caller can keep
/// its random source, oracle and scratch buffers across transfers.
pub struct Transfer<'a, P> {
    /// The machine (the mapper's platform).
    pub machine: &'a Machine,
    /// The mapping layer under test.
    pub mapper: &'a DmaMapper<P>,
    /// The device doing the transfer (attached to the machine).
    pub device: &'a Device,
    /// Behaviour.
    pub knobs: TransferKnobs,
    /// The random source.
    pub rng: &'a mut SimRng,
    /// The oracle judging it.
    pub oracle: &'a mut Oracle,
    /// Scratch buffers.
    pub scratch: &'a mut Scratch,
}

/// A device access or a CPU step, interleaved during a round.
#[derive(Clone, Copy)]
enum Step {
    DevRead(u64, u64),
    DevWrite(u64, u64),
    Cpu,
}

fn fault(f: MemoryFault) -> SimError {
    SimError::BadRange {
        addr: f.addr.as_u64(),
        len: f.len,
    }
}

/// CPU store of `len` random bytes at `addr` stamped `owner`, told to the oracle.
///
/// # Errors
/// [`WorkloadError::Sim`] when the range is not RAM.
pub fn cpu_scribble(
    machine: &Machine,
    oracle: &mut Oracle,
    rng: &mut SimRng,
    scratch: &mut Scratch,
    addr: u64,
    len: u64,
    owner: Owner,
) -> Result<(), WorkloadError> {
    let data = sized(&mut scratch.data, len as usize, 0);
    rng.fill_bytes(data);
    let a = PhysAddr::new(addr);
    machine.cpu_write(a, data, owner).map_err(fault)?;
    oracle.cpu_stored(a, data, owner);
    Ok(())
}

/// The CPU fills a new allocation, `range`, with random bytes stamped `owner`, and the
/// oracle starts tracking it (labelled `label`) with them: the same as
/// [`Oracle::register`] then [`cpu_scribble`] over the whole allocation, without reading
/// the bytes the fill replaces.
///
/// # Errors
/// [`WorkloadError::Sim`] when the oracle refuses the allocation
/// ([`Oracle::register_stored`]) or the range is not RAM.
pub fn cpu_scribble_new(
    machine: &Machine,
    oracle: &mut Oracle,
    rng: &mut SimRng,
    scratch: &mut Scratch,
    range: PhysRange,
    owner: Owner,
    label: &'static str,
) -> Result<(), WorkloadError> {
    let data = sized(&mut scratch.data, range.len() as usize, 0);
    rng.fill_bytes(data);
    let a = range.start();
    oracle.register_stored(owner, a, data, label)?;
    machine.cpu_write(a, data, owner).map_err(fault)?;
    Ok(())
}

impl<P: Platform> Transfer<'_, P> {
    /// With the mapper's debug checker on, reports a CPU access to memory the device owns
    /// (the model sees every access a kernel's checker cannot).
    fn check_ownership(&self, addr: u64, len: u64, write: bool) {
        if let Some(d) = self.mapper.debug_checker() {
            d.check_cpu_access(PhysAddr::new(addr), len, write);
        }
    }

    /// CPU store of random bytes, told to the oracle.
    fn scribble(&mut self, addr: u64, len: u64, owner: Owner) -> Result<(), WorkloadError> {
        self.check_ownership(addr, len, true);
        cpu_scribble(
            self.machine,
            self.oracle,
            self.rng,
            self.scratch,
            addr,
            len,
            owner,
        )
    }

    /// One CPU step on a neighbour: a small store (told to the oracle), a load, or time
    /// passing.
    pub fn cpu_step(&mut self, neighbours: &[Neighbour]) -> Result<(), WorkloadError> {
        let roll = self.rng.below(10);
        let Some(&Neighbour { addr, len, owner }) = self.rng.pick(neighbours) else {
            self.machine.tick();
            return Ok(());
        };
        let off = self.rng.below(len);
        let n = self.rng.between(1, 8.min(len - off));
        match roll {
            0 => self.machine.tick(),
            1..=5 => self.scribble(addr + off, n, owner)?,
            _ => {
                self.check_ownership(addr + off, n, false);
                let data = sized(&mut self.scratch.data, n as usize, 0);
                let owners = sized(&mut self.scratch.rd.1, n as usize, Owner::NOBODY);
                self.machine
                    .cpu_read_stamped(PhysAddr::new(addr + off), data, owners)
                    .map_err(fault)?;
            }
        }
        Ok(())
    }

    /// The device's accesses for one round, interleaved with CPU steps.
    fn device_round(
        &mut self,
        neighbours: &[Neighbour],
        buf: PhysRange,
        dma: DmaAddr,
        dir: Direction,
        owner: Owner,
    ) -> Result<(), WorkloadError> {
        let len = buf.len();
        let mut steps: Vec<Step> = Vec::new();
        let (cmin, cmax) = self.knobs.device_chunk;
        if dir.device_reads() {
            let mut off = 0;
            while off < len {
                let n = self.rng.between(cmin, cmax).min(len - off);
                steps.push(Step::DevRead(off, n));
                off += n;
            }
        }
        if dir.device_writes() {
            let wlen = if self.rng.chance(self.knobs.short_write_chance) {
                self.rng.below(len)
            } else {
                len
            };
            let mut off = 0;
            while off < wlen {
                let n = self.rng.between(cmin, cmax).min(wlen - off);
                steps.push(Step::DevWrite(off, n));
                off += n;
            }
        }
        let mut cpu = self.rng.between(self.knobs.cpu_ops.0, self.knobs.cpu_ops.1);
        let mut dev_i = 0usize;
        let id = self.device.id();
        while dev_i < steps.len() || cpu > 0 {
            let dev_left = (steps.len() - dev_i) as u64;
            let step = if self.rng.below(dev_left + cpu) < dev_left {
                dev_i += 1;
                steps[dev_i - 1]
            } else {
                cpu -= 1;
                Step::Cpu
            };
            match step {
                Step::Cpu => self.cpu_step(neighbours)?,
                Step::DevRead(off, n) => {
                    let d = sized(&mut self.scratch.rd.0, n as usize, 0);
                    let o = sized(&mut self.scratch.rd.1, n as usize, Owner::NOBODY);
                    let (at, from) = (buf.start().add(off), DmaAddr::new(dma.as_u64() + off));
                    // What the device must read, compared in place when one allocation
                    // holds it all (the usual case: the buffer).
                    let read = match self.oracle.expected(at, n) {
                        Some((e, eo)) => self.machine.device_read_unless(id, from, e, eo, d, o),
                        None => self
                            .machine
                            .device_read_into(id, from, d, o)
                            .map(|()| false),
                    };
                    // A refused access is in the machine's fault log; nothing was read.
                    match read {
                        Ok(true) => self.oracle.device_read_expected(n),
                        Ok(false) => self.oracle.check_device_read(at, d, o, owner)?,
                        Err(_) => {}
                    }
                }
                Step::DevWrite(off, n) => {
                    let data = sized(&mut self.scratch.data, n as usize, 0);
                    self.rng.fill_bytes(data);
                    let at = DmaAddr::new(dma.as_u64() + off);
                    if self.machine.device_write(id, at, data, owner).is_ok() {
                        self.oracle.device_wrote(buf.start().add(off), data, owner);
                    }
                }
            }
        }
        Ok(())
    }

    /// The CPU loads the whole buffer (as a driver reading its data does).
    fn cpu_reads_buffer(&mut self, buf: PhysRange) -> Result<(), WorkloadError> {
        self.check_ownership(buf.start().as_u64(), buf.len(), false);
        // The bytes themselves are judged by the oracle's check that follows.
        self.machine
            .cpu_read_discard(buf.start(), buf.len())
            .map_err(fault)?;
        Ok(())
    }

    /// The CPU reads the buffer back and the oracle checks it and its line-sharers.
    fn complete_check(&mut self, buf: PhysRange, owner: Owner) -> Result<(), WorkloadError> {
        self.cpu_reads_buffer(buf)?;
        self.oracle.check_transfer(self.machine, buf, owner)?;
        Ok(())
    }

    /// Runs one transfer of `buf` (tracked by the oracle, owned by `owner`) in `dir`, with
    /// the CPU busy on `neighbours` meanwhile. `#[track_caller]`: the mapping is attributed
    /// to the caller's line in the mapper's call-site statistics.
    ///
    /// # Errors
    /// [`WorkloadError`] when the model or the mapper refuses something done legitimately;
    /// a failing `map` is an outcome, not an error.
    #[track_caller]
    pub fn run(
        &mut self,
        buf: PhysRange,
        dir: Direction,
        owner: Owner,
        neighbours: &[Neighbour],
    ) -> Result<TransferOutcome, WorkloadError> {
        match self.start(buf, dir, owner, neighbours)? {
            Started::InFlight(f) => self.complete(&f, neighbours),
            Started::MapFailed(e) => Ok(TransferOutcome::MapFailed(e)),
        }
    }

    /// The first half of [`Transfer::run`]: the CPU prepares the buffer, `map` lends it to
    /// the device, and the device is granted the returned window. The transfer is then in
    /// flight until [`Transfer::complete`]; others may be started meanwhile (a queue).
    /// `#[track_caller]` as [`Transfer::run`].
    ///
    /// # Errors
    /// As [`Transfer::run`].
    #[track_caller]
    pub fn start(
        &mut self,
        buf: PhysRange,
        dir: Direction,
        owner: Owner,
        neighbours: &[Neighbour],
    ) -> Result<Started, WorkloadError> {
        self.start_as(buf, dir, owner, neighbours, None)
    }

    /// [`Transfer::start`] for a buffer just allocated and not yet tracked by the oracle:
    /// the CPU's preparation, which fills the whole buffer, is what the oracle starts
    /// tracking it with (labelled `label`, see [`cpu_scribble_new`]); everything else is
    /// as `start`. `#[track_caller]` as [`Transfer::run`].
    ///
    /// # Errors
    /// As [`Transfer::run`], and [`WorkloadError::Sim`] when the oracle refuses the buffer.
    #[track_caller]
    pub fn start_fresh(
        &mut self,
        buf: PhysRange,
        dir: Direction,
        owner: Owner,
        neighbours: &[Neighbour],
        label: &'static str,
    ) -> Result<Started, WorkloadError> {
        self.start_as(buf, dir, owner, neighbours, Some(label))
    }

    /// [`Transfer::start`]; with `fresh`, the buffer is registered as it is prepared.
    #[track_caller]
    fn start_as(
        &mut self,
        buf: PhysRange,
        dir: Direction,
        owner: Owner,
        neighbours: &[Neighbour],
        fresh: Option<&'static str>,
    ) -> Result<Started, WorkloadError> {
        // The CPU prepares the buffer and touches the neighbours.
        match fresh {
            None => self.scribble(buf.start().as_u64(), buf.len(), owner)?,
            Some(label) => {
                self.check_ownership(buf.start().as_u64(), buf.len(), true);
                cpu_scribble_new(
                    self.machine,
                    self.oracle,
                    self.rng,
                    self.scratch,
                    buf,
                    owner,
                    label,
                )?;
            }
        }
        for _ in 0..self.rng.between(0, 2) {
            self.cpu_step(neighbours)?;
        }
        // SAFETY: test-owned memory (model or host arena), untouched while mapped.
        let (dma, path) = match unsafe {
            self.mapper
                .map_traced(self.device, buf.start(), buf.len(), dir)
        } {
            Ok(d) => d,
            Err(e) => return Ok(Started::MapFailed(e)),
        };
        self.machine.grant(self.device.id(), dma, buf.len())?;
        Ok(Started::InFlight(InFlight {
            buf,
            dir,
            owner,
            dma,
            path,
        }))
    }

    /// A device that reads beyond its buffer: it reads every IOMMU page (`granule` bytes)
    /// the in-flight mapping `f` lies in, as a malicious or broken external device may, and
    /// returns how many bytes outside the buffer belonged to another owner (a leak: the
    /// device saw someone else's data). Bytes of the buffer itself are judged by the oracle
    /// as any device read. Does nothing (returns 0) for a mapping the device may not read.
    ///
    /// # Errors
    /// [`WorkloadError`] when the model refuses the grant or the oracle the bytes.
    pub fn probe_window(&mut self, f: &InFlight, granule: u64) -> Result<u64, WorkloadError> {
        if !f.dir.device_reads() || !granule.is_power_of_two() {
            return Ok(0);
        }
        let id = self.device.id();
        let (a, len) = (f.dma.as_u64(), f.buf.len());
        let lo = a & !(granule - 1);
        let hi = (a + len).next_multiple_of(granule);
        let win = DmaAddr::new(lo);
        self.machine.grant(id, win, hi - lo)?;
        let (d, o) = &mut self.scratch.rd;
        d.resize((hi - lo) as usize, 0);
        o.resize((hi - lo) as usize, Owner::NOBODY);
        let read = self.machine.device_read_into(id, win, d, o);
        self.machine.revoke(id, win, hi - lo)?;
        if read.is_err() {
            // Refused: in the machine's fault log; nothing was read.
            return Ok(0);
        }
        let (b0, b1) = ((a - lo) as usize, (a - lo + len) as usize);
        let foreign = |os: &[Owner]| {
            os.iter()
                .filter(|&&x| x != Owner::NOBODY && x != f.owner)
                .count() as u64
        };
        let leaked = foreign(&o[..b0]) + foreign(&o[b1..]);
        let (d, o) = &self.scratch.rd;
        self.oracle
            .check_device_read(f.buf.start(), &d[b0..b1], &o[b0..b1], f.owner)?;
        Ok(leaked)
    }

    /// The second half of [`Transfer::run`] for a transfer [`Transfer::start`] put in
    /// flight: the device's rounds, unmap (or sync then unmap), the oracle's checks.
    ///
    /// # Errors
    /// As [`Transfer::run`].
    pub fn complete(
        &mut self,
        f: &InFlight,
        neighbours: &[Neighbour],
    ) -> Result<TransferOutcome, WorkloadError> {
        let InFlight {
            buf,
            dir,
            owner,
            dma,
            path,
        } = *f;
        let (dev, id) = (self.device, self.device.id());
        let rounds = if self.rng.chance(self.knobs.second_round_chance) {
            2
        } else {
            1
        };
        for round in 0..rounds {
            if round > 0 {
                // The CPU owns the buffer again: new contents, then back to the device.
                if dir.device_reads() || self.knobs.rewrite_inbound_between_rounds {
                    self.scribble(buf.start().as_u64(), buf.len(), owner)?;
                }
                // SAFETY: test-owned memory (model or host arena), untouched while mapped.
                unsafe { self.mapper.sync_for_device(dev, dma, 0, buf.len(), dir) }?;
            }
            self.device_round(neighbours, buf, dma, dir, owner)?;
            if round + 1 < rounds {
                // SAFETY: test-owned memory (model or host arena), untouched while mapped.
                unsafe { self.mapper.sync_for_cpu(dev, dma, 0, buf.len(), dir) }?;
                self.complete_check(buf, owner)?;
                continue;
            }
            if self.knobs.skip_sync_for_cpu {
                // Control: the CPU reads before giving the buffer back.
                self.complete_check(buf, owner)?;
                // SAFETY: test-owned memory (model or host arena), untouched while mapped.
                unsafe { self.mapper.unmap(dev, dma, buf.len(), dir) }?;
            } else if self.rng.chance(self.knobs.sync_chance) {
                // SAFETY: test-owned memory (model or host arena), untouched while mapped.
                unsafe { self.mapper.sync_for_cpu(dev, dma, 0, buf.len(), dir) }?;
                self.complete_check(buf, owner)?;
                // SAFETY: test-owned memory (model or host arena), untouched while mapped.
                unsafe { self.mapper.unmap(dev, dma, buf.len(), dir) }?;
            } else {
                // SAFETY: test-owned memory (model or host arena), untouched while mapped.
                unsafe { self.mapper.unmap(dev, dma, buf.len(), dir) }?;
                self.complete_check(buf, owner)?;
            }
        }
        self.machine.revoke(id, dma, buf.len())?;
        Ok(TransferOutcome::Done(path))
    }
}
