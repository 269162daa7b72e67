//! The objects a scenario keeps in memory, known to the oracle.
//!
//! Every simulated kmalloc object (driver buffers, driver structures, background churn) is
//! allocated from a real [`Kmalloc`] over the machine's pages, so it sits where kmalloc
//! really puts it and costs what its slab really costs. Every object — kmalloc'd, a page
//! fragment or whole pages — is registered with the oracle and kept in an address map, so a
//! transfer can find what shares its cache lines and keep the CPU busy there.

use std::collections::BTreeMap;

use dmakit::{PhysAddr, PhysRange, PAGE_SIZE};
use dmakit_mem::{AllocKind, Kmalloc, MemError};

use dmakit_sim::error::SimError;
use dmakit_sim::machine::Machine;
use dmakit_sim::memory::Owner;
use dmakit_sim::oracle::Oracle;
use dmakit_sim::rng::SimRng;
use dmakit_sim::transfer::{cpu_scribble_new, Neighbour, Scratch};
use dmakit_sim::workload::WorkloadError;

#[derive(Clone, Copy, Debug)]
struct Obj {
    len: u64,
    owner: Owner,
}

/// Tracked objects and the kmalloc they come from.
pub struct Heap<'m> {
    machine: &'m Machine,
    kmalloc: Kmalloc<&'m Machine>,
    objects: BTreeMap<u64, Obj>,
    next_owner: u32,
}

/// Why an object could not be had.
#[derive(Debug)]
pub enum HeapError {
    /// kmalloc refused.
    Kmalloc(MemError),
    /// The model refused (registration).
    Sim(SimError),
}

impl From<SimError> for HeapError {
    fn from(e: SimError) -> Self {
        HeapError::Sim(e)
    }
}

impl<'m> Heap<'m> {
    /// An empty heap over `kmalloc`, whose page allocator is `machine`.
    pub fn new(machine: &'m Machine, kmalloc: Kmalloc<&'m Machine>) -> Self {
        Self {
            machine,
            kmalloc,
            objects: BTreeMap::new(),
            next_owner: 1,
        }
    }

    /// A fresh owner stamp.
    pub fn fresh_owner(&mut self) -> Owner {
        let o = Owner(self.next_owner);
        self.next_owner = self.next_owner.wrapping_add(1).max(1);
        o
    }

    /// Starts tracking `len` bytes at `addr` owned by `owner`.
    ///
    /// # Errors
    /// As [`Oracle::register`].
    pub fn track(
        &mut self,
        oracle: &mut Oracle,
        addr: u64,
        len: u64,
        owner: Owner,
        label: &'static str,
    ) -> Result<(), SimError> {
        oracle.register(self.machine, owner, PhysAddr::new(addr), len, label)?;
        self.objects.insert(addr, Obj { len, owner });
        Ok(())
    }

    /// Records `len` bytes at `addr` owned by `owner` as an object for
    /// [`Heap::neighbours`], without registering it with the oracle: the caller registers
    /// it when the CPU first fills it
    /// ([`Transfer::start_fresh`](dmakit_sim::transfer::Transfer::start_fresh)), before
    /// anything else happens to it. [`Heap::untrack`] then ends both.
    pub fn place(&mut self, addr: u64, len: u64, owner: Owner) {
        self.objects.insert(addr, Obj { len, owner });
    }

    /// Stops tracking the object at `addr`.
    ///
    /// # Errors
    /// As [`Oracle::unregister`].
    pub fn untrack(&mut self, oracle: &mut Oracle, addr: u64) -> Result<(), SimError> {
        self.objects.remove(&addr);
        oracle.unregister(PhysAddr::new(addr))
    }

    /// kmalloc's `size` bytes of `kind` and tracks them with a fresh owner.
    ///
    /// # Errors
    /// [`HeapError::Kmalloc`] when kmalloc refuses; [`HeapError::Sim`] from registration.
    pub fn kmalloc(
        &mut self,
        oracle: &mut Oracle,
        size: u64,
        kind: AllocKind,
        label: &'static str,
    ) -> Result<(u64, Owner), HeapError> {
        let addr = self.kmalloc.alloc(size, kind).map_err(HeapError::Kmalloc)?;
        let owner = self.fresh_owner();
        if let Err(e) = self.track(oracle, addr.as_u64(), size, owner, label) {
            let _ = self.kmalloc.free(addr);
            return Err(e.into());
        }
        Ok((addr.as_u64(), owner))
    }

    /// kmalloc's `size` bytes of `kind`, has the CPU fill them with random bytes and tracks
    /// them with a fresh owner: the same as [`Heap::kmalloc`] then
    /// [`cpu_scribble`](dmakit_sim::transfer::cpu_scribble) over the object, without
    /// reading the bytes the fill replaces.
    ///
    /// # Errors
    /// [`HeapError::Kmalloc`] when kmalloc refuses; [`HeapError::Sim`] from registration or
    /// the fill (the object is freed again then).
    pub fn kmalloc_filled(
        &mut self,
        oracle: &mut Oracle,
        rng: &mut SimRng,
        scratch: &mut Scratch,
        size: u64,
        kind: AllocKind,
        label: &'static str,
    ) -> Result<(u64, Owner), HeapError> {
        let addr = self.kmalloc.alloc(size, kind).map_err(HeapError::Kmalloc)?;
        let owner = self.fresh_owner();
        let a = addr.as_u64();
        let filled = match PhysRange::new(addr, size) {
            Some(range) => {
                cpu_scribble_new(self.machine, oracle, rng, scratch, range, owner, label).map_err(
                    |e| match e {
                        WorkloadError::Sim(s) => s,
                        _ => SimError::BadRange { addr: a, len: size },
                    },
                )
            }
            None => Err(SimError::BadAllocation { addr: a, len: size }),
        };
        if let Err(e) = filled {
            let _ = self.kmalloc.free(addr);
            return Err(HeapError::Sim(e));
        }
        self.objects.insert(a, Obj { len: size, owner });
        Ok((a, owner))
    }

    /// kmalloc's `size` bytes of `kind` without tracking them (the caller tracks the parts
    /// it uses, e.g. the fields of a structure).
    ///
    /// # Errors
    /// [`HeapError::Kmalloc`] when kmalloc refuses.
    pub fn kmalloc_untracked(&mut self, size: u64, kind: AllocKind) -> Result<u64, HeapError> {
        self.kmalloc
            .alloc(size, kind)
            .map(PhysAddr::as_u64)
            .map_err(HeapError::Kmalloc)
    }

    /// Untracks and frees the kmalloc object at `addr`.
    ///
    /// # Errors
    /// [`HeapError::Kmalloc`] when it is not a live object; [`HeapError::Sim`] when it was
    /// not tracked.
    pub fn kfree(&mut self, oracle: &mut Oracle, addr: u64) -> Result<(), HeapError> {
        self.untrack(oracle, addr)?;
        self.kmalloc
            .free(PhysAddr::new(addr))
            .map_err(HeapError::Kmalloc)?;
        Ok(())
    }

    /// Tracked objects sharing a line with `[start, end)` or on the lines just around it,
    /// other than the objects inside it: what the CPU may be using during the transfer.
    pub fn neighbours(&self, start: u64, end: u64, line: u64, out: &mut Vec<Neighbour>) {
        out.clear();
        let lo = (start & !(line - 1)).saturating_sub(line);
        let hi = end.next_multiple_of(line).saturating_add(line);
        let first = self.objects.range(..lo).next_back().map_or(lo, |(&a, _)| a);
        for (&a, o) in self.objects.range(first..hi) {
            let e = a + o.len;
            let inside = a >= start && e <= end;
            let contains = a <= start && e >= end;
            if e <= lo || inside || contains {
                continue;
            }
            out.push(Neighbour {
                addr: a,
                len: o.len,
                owner: o.owner,
            });
        }
    }

    /// Memory the kmalloc caches hold now: whole slabs of every cache plus page-sized
    /// allocations, as the allocator itself counts them.
    pub fn kmalloc_bytes(&self) -> u64 {
        let slabs: u64 = self
            .kmalloc
            .cache_stats()
            .iter()
            .map(|c| c.num_slabs * c.pages_per_slab)
            .sum();
        (slabs + self.kmalloc.large_pages()) * PAGE_SIZE
    }

    /// The machine.
    pub fn machine(&self) -> &'m Machine {
        self.machine
    }

    /// Number of tracked objects.
    pub fn len(&self) -> usize {
        self.objects.len()
    }

    /// Whether nothing is tracked.
    pub fn is_empty(&self) -> bool {
        self.objects.is_empty()
    }
}
