//! Where drivers put their DMA buffers, pattern by pattern.
//!
//! Each transfer pattern of a scenario keeps its own state: the driver's private structure
//! (for buffers that are a field of it), its page-fragment cache (for receive buffers),
//! nothing for standalone kmalloc objects and page buffers, which live for one transfer.
//! [`Placer::acquire`] hands out a tracked buffer; [`Placer::release`] ends its life.

use std::collections::VecDeque;

use dmakit::PAGE_SIZE;
use dmakit_mem::AllocKind;

use crate::heap::{Heap, HeapError};
use crate::model::{BufferModel, TransferModel};
use dmakit_sim::error::SimError;
use dmakit_sim::memory::Owner;
use dmakit_sim::oracle::Oracle;
use dmakit_sim::rng::SimRng;
use dmakit_sim::transfer::{cpu_scribble, Scratch};

/// Pages of one page-fragment block (Linux's `PAGE_FRAG_CACHE_MAX_SIZE`, 32 KiB).
pub const FRAG_BLOCK_PAGES: u64 = 8;

/// A buffer handed out for one transfer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Buffer {
    /// First byte.
    pub start: u64,
    /// Length.
    pub len: u64,
    /// Its owner stamp.
    pub owner: Owner,
    /// For a buffer just allocated, the label the oracle tracks it under from the
    /// transfer's preparation on (it is not tracked before); `None` for a buffer the
    /// oracle already tracks.
    pub fresh: Option<&'static str>,
    release: Release,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Release {
    Kfree,
    Keep,
    Frag(Frag),
    Pages(u64),
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Frag {
    buf: u64,
    tail: Option<u64>,
    block: usize,
}

#[derive(Clone, Copy, Debug)]
struct Block {
    base: u64,
    live: u32,
}

/// Shared context of placement calls.
pub struct Env<'a, 'm> {
    /// Tracked objects and kmalloc.
    pub heap: &'a mut Heap<'m>,
    /// The oracle.
    pub oracle: &'a mut Oracle,
    /// Random source.
    pub rng: &'a mut SimRng,
    /// Scratch buffers.
    pub scratch: &'a mut Scratch,
    /// The kmalloc minimum alignment of the policy.
    pub min_align: u64,
}

/// The placement state of one transfer pattern.
pub struct Placer {
    buffer: BufferModel,
    /// The driver's structure: base and owner.
    strukt: Option<(u64, Owner)>,
    blocks: Vec<Block>,
    current: Option<(usize, u64)>,
    in_flight: VecDeque<Frag>,
    /// Where page buffers are looked for: a fixed set of places spread over RAM, so the
    /// model's memory stays bounded however long the run.
    page_hints: Vec<u64>,
}

/// How many places page buffers of one pattern come from.
const PAGE_HINTS: u64 = 32;

fn sim(e: SimError) -> HeapError {
    HeapError::Sim(e)
}

impl Placer {
    /// State for `model`.
    pub fn new(model: &TransferModel) -> Self {
        Self {
            buffer: model.buffer,
            strukt: None,
            blocks: Vec::new(),
            current: None,
            in_flight: VecDeque::new(),
            page_hints: Vec::new(),
        }
    }

    /// A buffer of `len` bytes.
    ///
    /// # Errors
    /// [`HeapError`] when memory runs out or the oracle refuses a registration.
    pub fn acquire(&mut self, env: &mut Env<'_, '_>, len: u64) -> Result<Buffer, HeapError> {
        match self.buffer {
            BufferModel::Kmalloc | BufferModel::DmaKmalloc => {
                let kind = if self.buffer == BufferModel::Kmalloc {
                    AllocKind::Normal
                } else {
                    AllocKind::Dma
                };
                let start = env.heap.kmalloc_untracked(len, kind)?;
                let owner = env.heap.fresh_owner();
                env.heap.place(start, len, owner);
                Ok(Buffer {
                    start,
                    len,
                    owner,
                    fresh: Some("dma-buffer"),
                    release: Release::Kfree,
                })
            }
            BufferModel::StructField { offset, .. } => {
                let (base, owner) = match self.strukt {
                    Some(s) => s,
                    None => self.create_struct(env)?,
                };
                Ok(Buffer {
                    start: base + offset,
                    len,
                    owner,
                    fresh: None,
                    release: Release::Keep,
                })
            }
            BufferModel::PageFrag { .. } => self.frag(env, len),
            // Framebuffers come from the DMA allocator (`scenario::frames`), not a placer.
            BufferModel::Noncontiguous { .. } => Err(sim(SimError::BadAllocation { addr: 0, len })),
            BufferModel::Pages => {
                let pages = len.div_ceil(PAGE_SIZE);
                let m = env.heap.machine();
                if self.page_hints.is_empty() {
                    let ram = m.ram();
                    let total: u64 = ram.iter().map(|r| r.1 - r.0).sum();
                    for _ in 0..PAGE_HINTS {
                        let mut at = env.rng.below(total.max(1));
                        for &(s, e) in &ram {
                            if at < e - s {
                                self.page_hints.push((s + at) & !(PAGE_SIZE - 1));
                                break;
                            }
                            at -= e - s;
                        }
                    }
                }
                let hint = *env.rng.pick(&self.page_hints).unwrap_or(&0);
                let base = m
                    .alloc_pages_between(pages, hint, u64::MAX)
                    .or_else(|| m.alloc_pages_between(pages, 0, u64::MAX))
                    .ok_or(HeapError::Sim(SimError::BadRange {
                        addr: hint,
                        len: pages * PAGE_SIZE,
                    }))?
                    .as_u64();
                let owner = env.heap.fresh_owner();
                env.heap.place(base, len, owner);
                Ok(Buffer {
                    start: base,
                    len,
                    owner,
                    fresh: Some("page-buffer"),
                    release: Release::Pages(pages),
                })
            }
        }
    }

    /// Ends the transfer's use of `b`.
    ///
    /// # Errors
    /// [`HeapError`] when the model refuses the free (a bug in the runner).
    pub fn release(&mut self, env: &mut Env<'_, '_>, b: Buffer) -> Result<(), HeapError> {
        match b.release {
            Release::Kfree => env.heap.kfree(env.oracle, b.start),
            Release::Keep => Ok(()),
            Release::Pages(pages) => {
                env.heap.untrack(env.oracle, b.start).map_err(sim)?;
                env.heap
                    .machine()
                    .free_pages_checked(dmakit::PhysAddr::new(b.start), pages)
                    .map_err(sim)
            }
            Release::Frag(f) => {
                // The packet goes up the stack; the CPU keeps using it for a while.
                self.in_flight.push_back(f);
                let limit = match self.buffer {
                    BufferModel::PageFrag { in_flight, .. } => in_flight,
                    _ => 0,
                };
                while self.in_flight.len() > limit {
                    if let Some(old) = self.in_flight.pop_front() {
                        self.drop_frag(env, old)?;
                    }
                }
                Ok(())
            }
        }
    }

    fn create_struct(&mut self, env: &mut Env<'_, '_>) -> Result<(u64, Owner), HeapError> {
        let BufferModel::StructField {
            struct_size,
            offset,
            field_size,
            next_field,
        } = self.buffer
        else {
            return Err(sim(SimError::BadAllocation { addr: 0, len: 0 }));
        };
        let base = env.heap.kmalloc_untracked(struct_size, AllocKind::Normal)?;
        let owner = env.heap.fresh_owner();
        let parts = [
            (0, offset, "driver-struct"),
            (offset, field_size, "struct-field"),
            (next_field, struct_size - next_field, "driver-struct"),
        ];
        for (off, len, label) in parts {
            if len > 0 {
                env.heap
                    .track(env.oracle, base + off, len, owner, label)
                    .map_err(sim)?;
                if label == "driver-struct" {
                    cpu_scribble(
                        env.heap.machine(),
                        env.oracle,
                        env.rng,
                        env.scratch,
                        base + off,
                        len,
                        owner,
                    )
                    .map_err(|_| sim(SimError::BadRange { addr: base, len }))?;
                }
            }
        }
        self.strukt = Some((base, owner));
        Ok((base, owner))
    }

    fn frag(&mut self, env: &mut Env<'_, '_>, len: u64) -> Result<Buffer, HeapError> {
        let BufferModel::PageFrag {
            align,
            headroom,
            tail,
            ..
        } = self.buffer
        else {
            return Err(sim(SimError::BadAllocation { addr: 0, len }));
        };
        // The old way aligns every small allocation to the line: page fragments too.
        let align = align.max(env.min_align);
        // `skb_shared_info` follows the data, aligned like the fragment (SKB_DATA_ALIGN).
        let tail_off = (headroom + len).next_multiple_of(align);
        let frag_len = tail_off + tail;
        let block_bytes = FRAG_BLOCK_PAGES * PAGE_SIZE;
        let (bi, off) = match self.current {
            Some((bi, off)) if off.next_multiple_of(align) + frag_len <= block_bytes => {
                (bi, off.next_multiple_of(align))
            }
            _ => {
                if let Some((old, _)) = self.current.take() {
                    self.maybe_free_block(env, old)?;
                }
                let base = env
                    .heap
                    .machine()
                    .alloc_pages_between(FRAG_BLOCK_PAGES, 0, u64::MAX)
                    .ok_or(sim(SimError::BadRange {
                        addr: 0,
                        len: block_bytes,
                    }))?
                    .as_u64();
                let slot = self.blocks.iter().position(|b| b.base == 0 && b.live == 0);
                let bi = match slot {
                    Some(i) => {
                        self.blocks[i] = Block { base, live: 0 };
                        i
                    }
                    None => {
                        self.blocks.push(Block { base, live: 0 });
                        self.blocks.len() - 1
                    }
                };
                (bi, 0)
            }
        };
        self.current = Some((bi, off + frag_len));
        let frag = self.blocks[bi].base + off;
        let owner = env.heap.fresh_owner();
        let start = frag + headroom;
        env.heap.place(start, len, owner);
        let tail_at = (tail > 0).then_some(frag + tail_off);
        if let Some(t) = tail_at {
            env.heap
                .track(env.oracle, t, tail, owner, "skb_shared_info")
                .map_err(sim)?;
            cpu_scribble(
                env.heap.machine(),
                env.oracle,
                env.rng,
                env.scratch,
                t,
                tail,
                owner,
            )
            .map_err(|_| sim(SimError::BadRange { addr: t, len: tail }))?;
        }
        self.blocks[bi].live += 1;
        Ok(Buffer {
            start,
            len,
            owner,
            fresh: Some("page-frag"),
            release: Release::Frag(Frag {
                buf: start,
                tail: tail_at,
                block: bi,
            }),
        })
    }

    fn drop_frag(&mut self, env: &mut Env<'_, '_>, f: Frag) -> Result<(), HeapError> {
        env.heap.untrack(env.oracle, f.buf).map_err(sim)?;
        if let Some(t) = f.tail {
            env.heap.untrack(env.oracle, t).map_err(sim)?;
        }
        self.blocks[f.block].live -= 1;
        if self.current.map(|c| c.0) != Some(f.block) {
            self.maybe_free_block(env, f.block)?;
        }
        Ok(())
    }

    fn maybe_free_block(&mut self, env: &mut Env<'_, '_>, bi: usize) -> Result<(), HeapError> {
        let b = self.blocks[bi];
        if b.live == 0 && b.base != 0 {
            env.heap
                .machine()
                .free_pages_checked(dmakit::PhysAddr::new(b.base), FRAG_BLOCK_PAGES)
                .map_err(sim)?;
            self.blocks[bi].base = 0;
        }
        Ok(())
    }
}
