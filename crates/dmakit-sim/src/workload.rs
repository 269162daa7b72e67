//! The transfer harness: randomized DMA transfers through the real mapping layer, judged by
//! the oracle.
//!
//! Each transfer places (or reuses) a buffer with its neighbours, has the CPU write the
//! buffer, maps it with `DmaMapper::map`, grants the device exactly the returned bus window,
//! lets the device read and/or write it (writes may be short) while the CPU keeps loading
//! and storing the neighbours in random interleaving, then completes it (unmap, or
//! sync_for_cpu then unmap, optionally with a second round through sync_for_device) and has
//! the oracle check the buffer and its neighbours. The harness only uses the mapper's raw
//! public API and the address `map` returned, so bounce pools, an IOMMU or routing policies
//! plug in underneath without changing it.

use dmakit::{Device, Direction, DmaError, DmaMapper, PhysAddr, PhysRange, Platform};

use crate::error::SimError;
use crate::fault_inject::MaintenanceFaults;
use crate::machine::{Machine, MachineStats};
use crate::memory::Owner;
use crate::oracle::{Oracle, OracleReport};
use crate::placement::{Layout, Placement, Role};
use crate::rng::SimRng;
use crate::transfer::{cpu_scribble, Neighbour, Scratch, Transfer, TransferKnobs, TransferOutcome};
pub use crate::workload_error::WorkloadError;

/// What a workload does.
#[derive(Clone, Debug, PartialEq)]
pub struct WorkloadConfig {
    /// Number of transfers (map to completion).
    pub transfers: u64,
    /// Seed of the workload's own decisions (the machine has its own seed).
    pub seed: u64,
    /// Smallest buffer length.
    pub min_len: u64,
    /// Largest buffer length.
    pub max_len: u64,
    /// Whether lengths are drawn uniformly, or log-uniformly (every power of two between
    /// the bounds equally likely, as in real driver traffic where small transfers dominate).
    pub log_sizes: bool,
    /// Directions to pick from (uniformly).
    pub directions: Vec<Direction>,
    /// Placements to pick from (uniformly).
    pub placements: Vec<Placement>,
    /// Number of slots (independent buffers with their neighbours) to cycle through.
    pub slots: usize,
    /// Probability that a transfer re-places its slot (new objects, new owners) instead of
    /// reusing the previous buffer.
    pub realloc_chance: f64,
    /// CPU operations on neighbours interleaved with each round of device accesses, as an
    /// inclusive range.
    pub cpu_ops: (u64, u64),
    /// Size of each device access, as an inclusive range.
    pub device_chunk: (u64, u64),
    /// Probability that an inbound device write stops short of the mapped length.
    pub short_write_chance: f64,
    /// Probability of completing with `sync_for_cpu` (check) then `unmap`, rather than
    /// `unmap` alone.
    pub sync_chance: f64,
    /// Probability of a second round inside one mapping (sync_for_cpu, check, CPU rewrites
    /// the buffer, sync_for_device, device again).
    pub second_round_chance: f64,
    /// In a second round of a `FromDevice` mapping, the CPU also rewrites the buffer before
    /// `sync_for_device`. dmakit promises such writes survive where the device then writes
    /// less than the whole buffer (its bounce path refills inbound bounces at
    /// `sync_for_device`, where Linux's SWIOTLB does not), so this is on by default.
    pub rewrite_inbound_between_rounds: bool,
    /// Control: the CPU reads the buffer and the oracle checks it *before* the final
    /// unmap / sync_for_cpu (a missing sync_for_cpu).
    pub skip_sync_for_cpu: bool,
    /// Control: maintenance operations the platform drops during the run.
    pub drop_maintenance: MaintenanceFaults,
    /// Slots are allocated with their last byte at or below this address.
    pub max_addr: u64,
    /// Slots are allocated at or above this address.
    pub min_addr: u64,
    /// Also check every tracked allocation at the end of the run.
    pub final_check: bool,
    /// Tracked allocations beyond the edge lines also checked after each transfer.
    pub extra_neighbours: usize,
}

impl Default for WorkloadConfig {
    /// 1000 transfers, 1..=512 bytes, all directions and placements, 8 slots.
    fn default() -> Self {
        Self {
            transfers: 1000,
            seed: 0,
            min_len: 1,
            max_len: 512,
            log_sizes: false,
            directions: Direction::ALL.to_vec(),
            placements: Placement::ALL.to_vec(),
            slots: 8,
            realloc_chance: 0.3,
            cpu_ops: (1, 6),
            device_chunk: (8, 64),
            short_write_chance: 0.3,
            sync_chance: 0.25,
            second_round_chance: 0.1,
            rewrite_inbound_between_rounds: true,
            skip_sync_for_cpu: false,
            drop_maintenance: MaintenanceFaults::NONE,
            max_addr: (1 << 32) - 1,
            min_addr: 0,
            final_check: true,
            extra_neighbours: 0,
        }
    }
}

impl From<&WorkloadConfig> for TransferKnobs {
    fn from(c: &WorkloadConfig) -> Self {
        Self {
            cpu_ops: c.cpu_ops,
            device_chunk: c.device_chunk,
            short_write_chance: c.short_write_chance,
            sync_chance: c.sync_chance,
            second_round_chance: c.second_round_chance,
            rewrite_inbound_between_rounds: c.rewrite_inbound_between_rounds,
            skip_sync_for_cpu: c.skip_sync_for_cpu,
        }
    }
}

/// What a workload run produced.
#[derive(Clone, Debug, PartialEq)]
pub struct WorkloadOutcome {
    /// The oracle's verdict.
    pub report: OracleReport,
    /// The machine's counters at the end.
    pub machine: MachineStats,
    /// Transfers whose `map` failed (not counted by the oracle).
    pub map_errors: u64,
    /// The first map error, if any.
    pub first_map_error: Option<DmaError>,
}

struct Slot {
    base: u64,
    layout: Option<Layout>,
    /// Owner per object of the layout.
    owners: Vec<Owner>,
}

/// The harness, for runs driven transfer by transfer. [`run_workload`] is the one-call form.
pub struct Harness<'a, P> {
    machine: &'a Machine,
    mapper: &'a DmaMapper<P>,
    device: Device,
    cfg: WorkloadConfig,
    rng: SimRng,
    oracle: Oracle,
    slots: Vec<Slot>,
    slot_bytes: u64,
    line: u64,
    next_owner: u32,
    map_errors: u64,
    first_map_error: Option<DmaError>,
    scratch: Scratch,
}

impl<'a, P: Platform> Harness<'a, P> {
    /// A harness driving `mapper` (whose platform must be `machine`) for `device`, which
    /// is attached to the machine if it is not already. Allocates the slots from the
    /// machine's page allocator and applies `cfg.drop_maintenance`.
    ///
    /// # Errors
    /// [`WorkloadError::Config`] for an unusable configuration; [`WorkloadError::Sim`] when
    /// the slots cannot be allocated.
    pub fn new(
        machine: &'a Machine,
        mapper: &'a DmaMapper<P>,
        device: &Device,
        cfg: WorkloadConfig,
    ) -> Result<Self, WorkloadError> {
        if cfg.directions.is_empty() || cfg.placements.is_empty() || cfg.slots == 0 {
            return Err(WorkloadError::Config(
                "directions, placements and slots must not be empty",
            ));
        }
        if cfg.min_len == 0 || cfg.min_len > cfg.max_len {
            return Err(WorkloadError::Config("need 0 < min_len <= max_len"));
        }
        if cfg.device_chunk.0 == 0 || cfg.device_chunk.0 > cfg.device_chunk.1 {
            return Err(WorkloadError::Config(
                "need 0 < device_chunk.0 <= device_chunk.1",
            ));
        }
        match machine.attach(device.clone()) {
            Ok(()) | Err(SimError::DuplicateDevice(_)) => {}
            Err(e) => return Err(e.into()),
        }
        // The line size the mapper respects: the larger of the CPU's and the device's.
        let line = machine.line_size().max(device.cache_line());
        // Room for the buffer rounded up, and up to four lines of neighbours each side.
        let slot_bytes = (cfg.max_len + 8 * line * 2).next_multiple_of(dmakit::PAGE_SIZE);
        let pages = slot_bytes / dmakit::PAGE_SIZE;
        let mut slots = Vec::with_capacity(cfg.slots);
        for _ in 0..cfg.slots {
            let base = machine
                .alloc_pages_between(pages, cfg.min_addr, cfg.max_addr)
                .ok_or(WorkloadError::Sim(SimError::BadRange {
                    addr: cfg.min_addr,
                    len: slot_bytes,
                }))?;
            slots.push(Slot {
                base: base.as_u64(),
                layout: None,
                owners: Vec::new(),
            });
        }
        machine.set_maintenance_faults(cfg.drop_maintenance);
        let mut oracle = Oracle::new(line)?;
        oracle.set_extra_neighbours(cfg.extra_neighbours);
        Ok(Self {
            machine,
            mapper,
            device: device.clone(),
            rng: SimRng::new(cfg.seed),
            cfg,
            oracle,
            slots,
            slot_bytes,
            line,
            next_owner: 1,
            map_errors: 0,
            first_map_error: None,
            scratch: Scratch::default(),
        })
    }

    /// The oracle (to inspect or to register more allocations).
    pub fn oracle(&self) -> &Oracle {
        &self.oracle
    }

    fn fresh_owner(&mut self) -> Owner {
        let o = Owner(self.next_owner);
        self.next_owner = self.next_owner.wrapping_add(1).max(1);
        o
    }

    /// CPU store of random bytes at `addr`, told to the oracle.
    fn cpu_scribble(&mut self, addr: u64, len: u64, owner: Owner) -> Result<(), WorkloadError> {
        cpu_scribble(
            self.machine,
            &mut self.oracle,
            &mut self.rng,
            &mut self.scratch,
            addr,
            len,
            owner,
        )
    }

    /// Puts a new layout in slot `si`: forgets the old objects, registers the new ones with
    /// fresh owners and has the CPU initialise the neighbours.
    fn replace(&mut self, si: usize, len: u64) -> Result<(), WorkloadError> {
        let line = self.line;
        let base = self.slots[si].base;
        if let Some(old) = self.slots[si].layout.take() {
            for o in &old.objects {
                self.oracle.unregister(PhysAddr::new(base + o.offset))?;
            }
        }
        let mut layout = None;
        for _ in 0..8 {
            let p = *self
                .rng
                .pick(&self.cfg.placements)
                .ok_or(WorkloadError::Config("no placement"))?;
            layout = p.layout(&mut self.rng, len, line, self.slot_bytes);
            if layout.is_some() {
                break;
            }
        }
        let layout = layout.ok_or(WorkloadError::Config("buffer does not fit in a slot"))?;
        let buf_owner = self.fresh_owner();
        let mut owners = Vec::with_capacity(layout.objects.len());
        for o in &layout.objects {
            let owner = match o.role {
                Role::Buffer | Role::Field => buf_owner,
                Role::Neighbour => self.fresh_owner(),
            };
            owners.push(owner);
            self.oracle.register(
                self.machine,
                owner,
                PhysAddr::new(base + o.offset),
                o.len,
                o.role.label(),
            )?;
        }
        for (o, &owner) in layout.objects.iter().zip(&owners) {
            if o.role != Role::Buffer {
                self.cpu_scribble(base + o.offset, o.len, owner)?;
            }
        }
        self.slots[si].layout = Some(layout);
        self.slots[si].owners = owners;
        Ok(())
    }

    /// The objects of slot `si` other than its buffer: what the CPU keeps using.
    fn neighbours(&self, si: usize) -> Vec<Neighbour> {
        let slot = &self.slots[si];
        let Some(layout) = &slot.layout else {
            return Vec::new();
        };
        layout
            .objects
            .iter()
            .zip(&slot.owners)
            .filter(|(o, _)| o.role != Role::Buffer)
            .map(|(o, &owner)| Neighbour {
                addr: slot.base + o.offset,
                len: o.len,
                owner,
            })
            .collect()
    }

    /// A buffer length within the configured bounds.
    fn draw_len(&mut self) -> u64 {
        let (lo, hi) = (self.cfg.min_len, self.cfg.max_len);
        if !self.cfg.log_sizes {
            return self.rng.between(lo, hi);
        }
        let (lo_bits, hi_bits) = (lo.ilog2(), hi.ilog2());
        let bits = self.rng.between(u64::from(lo_bits), u64::from(hi_bits)) as u32;
        let from = (1u64 << bits).max(lo);
        let to = ((1u64 << bits) * 2 - 1).min(hi);
        self.rng.between(from, to)
    }

    /// Runs one transfer.
    ///
    /// # Errors
    /// [`WorkloadError`] when the model or the mapper refuses something the harness does
    /// legitimately (a failing `map` is counted, not an error).
    pub fn run_one(&mut self) -> Result<(), WorkloadError> {
        let si = self.rng.below(self.slots.len() as u64) as usize;
        if self.slots[si].layout.is_none() || self.rng.chance(self.cfg.realloc_chance) {
            let len = self.draw_len();
            self.replace(si, len)?;
        }
        let slot = &self.slots[si];
        let Some(layout) = &slot.layout else {
            return Ok(());
        };
        let (bi, bobj) = layout
            .objects
            .iter()
            .enumerate()
            .find(|(_, o)| o.role == Role::Buffer)
            .ok_or(WorkloadError::Config("layout without buffer"))?;
        let owner = slot.owners[bi];
        let buf = PhysRange::new(PhysAddr::new(slot.base + bobj.offset), bobj.len).ok_or(
            SimError::BadRange {
                addr: slot.base + bobj.offset,
                len: bobj.len,
            },
        )?;
        let dir = *self
            .rng
            .pick(&self.cfg.directions)
            .ok_or(WorkloadError::Config("no direction"))?;

        let neighbours = self.neighbours(si);
        let mut transfer = Transfer {
            machine: self.machine,
            mapper: self.mapper,
            device: &self.device,
            knobs: (&self.cfg).into(),
            rng: &mut self.rng,
            oracle: &mut self.oracle,
            scratch: &mut self.scratch,
        };
        if let TransferOutcome::MapFailed(e) = transfer.run(buf, dir, owner, &neighbours)? {
            self.map_errors += 1;
            self.first_map_error.get_or_insert(e);
        }
        Ok(())
    }

    /// Runs the configured number of transfers, then the final check, and returns the
    /// outcome. Leaves maintenance fault injection switched off.
    ///
    /// # Errors
    /// As [`Harness::run_one`].
    pub fn run(mut self) -> Result<WorkloadOutcome, WorkloadError> {
        for _ in 0..self.cfg.transfers {
            self.run_one()?;
        }
        self.finish()
    }

    /// Ends the run: final check (if configured), fault count, outcome.
    ///
    /// # Errors
    /// [`WorkloadError::Sim`] when a tracked allocation cannot be read back.
    pub fn finish(mut self) -> Result<WorkloadOutcome, WorkloadError> {
        if self.cfg.final_check {
            self.oracle.check_all(self.machine, Owner::NOBODY)?;
        }
        self.machine.set_maintenance_faults(MaintenanceFaults::NONE);
        self.oracle.set_faults(self.machine.fault_count() as u64);
        Ok(WorkloadOutcome {
            report: self.oracle.take_report(),
            machine: self.machine.stats(),
            map_errors: self.map_errors,
            first_map_error: self.first_map_error,
        })
    }
}

/// Runs a whole workload: `cfg.transfers` transfers of `device` through `mapper`, whose
/// platform must be `machine`.
///
/// # Errors
/// As [`Harness::new`] and [`Harness::run_one`].
pub fn run_workload<P: Platform>(
    machine: &Machine,
    mapper: &DmaMapper<P>,
    device: &Device,
    cfg: WorkloadConfig,
) -> Result<WorkloadOutcome, WorkloadError> {
    Harness::new(machine, mapper, device, cfg)?.run()
}
