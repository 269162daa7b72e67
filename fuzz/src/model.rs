//! What the target knows the machine must hold: a shadow of every buffer byte, the live
//! mappings with the device's view of each bounced one, and the mappings still waiting.

use dmakit::{Device, Direction, DmaSegment};

use crate::world::{BASE, LINE};

/// A live single mapping, or one segment of a live scatter-gather list.
pub struct Live {
    /// Device index.
    pub dev: usize,
    /// The CPU buffer.
    pub phys: u64,
    /// Bytes.
    pub len: u64,
    /// The mapping's direction.
    pub dir: Direction,
    /// The address the device uses.
    pub dma: u64,
    /// Whether the device uses a bounce (then `view` is what the device sees there).
    pub bounced: bool,
    /// The bytes the device must find at `dma` (bounced mappings only).
    pub view: Vec<u8>,
    /// The scatter-gather list this segment belongs to.
    pub group: Option<u64>,
}

/// A scatter-gather list as `map_sg` returned it.
pub struct Group {
    /// Its id in [`Live::group`].
    pub id: u64,
    /// Device index.
    pub dev: usize,
    /// Direction.
    pub dir: Direction,
    /// The segments, to give back to `unmap_sg`.
    pub segs: Vec<DmaSegment>,
}

/// A `map_or_defer` request still queued.
pub struct Pending {
    /// The token its completion reports.
    pub token: u64,
    /// Device index.
    pub dev: usize,
    /// Buffer.
    pub phys: u64,
    /// Bytes.
    pub len: u64,
    /// Direction.
    pub dir: Direction,
}

/// A mapping that was unmapped, kept to replay its unmap.
#[derive(Clone, Copy)]
pub struct Dead {
    /// Device index.
    pub dev: usize,
    /// Its former device address.
    pub dma: u64,
    /// Bytes.
    pub len: u64,
    /// Direction.
    pub dir: Direction,
}

/// The expected state.
#[derive(Default)]
pub struct Model {
    /// Every arena byte as the CPU must see it (the pool part is unused).
    pub shadow: Vec<u8>,
    /// Live mappings.
    pub live: Vec<Live>,
    /// Live scatter-gather lists.
    pub groups: Vec<Group>,
    /// Deferred requests, in request order.
    pub pending: Vec<Pending>,
    /// Recently unmapped mappings (at most [`DEAD_KEPT`]).
    pub dead: Vec<Dead>,
    /// Next token / group id.
    pub next_id: u64,
}

/// How many unmapped mappings are kept for replays.
pub const DEAD_KEPT: usize = 16;

impl Model {
    /// A fresh model of a zeroed arena of `bytes`.
    pub fn new(bytes: u64) -> Self {
        Self {
            shadow: vec![0; bytes as usize],
            ..Self::default()
        }
    }

    /// The shadow of `[phys, phys + len)`.
    pub fn bytes(&self, phys: u64, len: u64) -> &[u8] {
        let at = (phys - BASE) as usize;
        &self.shadow[at..at + len as usize]
    }

    /// Sets the shadow of `[phys, phys + data.len())`.
    pub fn set(&mut self, phys: u64, data: &[u8]) {
        let at = (phys - BASE) as usize;
        self.shadow[at..at + data.len()].copy_from_slice(data);
    }

    /// Whether `[phys, phys + len)` overlaps a live or waiting mapping's buffer.
    pub fn busy(&self, phys: u64, len: u64) -> bool {
        let hit = |p: u64, l: u64| phys < p + l && p < phys + len;
        self.live.iter().any(|m| hit(m.phys, m.len))
            || self.pending.iter().any(|m| hit(m.phys, m.len))
    }

    /// A fresh id.
    pub fn id(&mut self) -> u64 {
        self.next_id += 1;
        self.next_id
    }

    /// Remembers an unmapped mapping.
    pub fn bury(&mut self, m: &Live) {
        if self.dead.len() == DEAD_KEPT {
            self.dead.remove(0);
        }
        self.dead.push(Dead {
            dev: m.dev,
            dma: m.dma,
            len: m.len,
            dir: m.dir,
        });
    }

    /// The CPU takes the device's writes to `[off, off + len)` of live mapping `i` (what
    /// unmap and `sync_for_cpu` do for a bounced inbound mapping).
    pub fn copy_back(&mut self, i: usize, off: u64, len: u64) {
        let m = &self.live[i];
        if m.bounced && m.dir.device_writes() {
            let data = m.view[off as usize..(off + len) as usize].to_vec();
            let at = m.phys + off;
            self.set(at, &data);
        }
    }

    /// The device's view of `[off, off + len)` of live mapping `i` takes the CPU's buffer
    /// (what `sync_for_device` does for a bounced mapping, inbound ones included: they are
    /// filled so a short device write cannot expose old bounce memory).
    pub fn copy_out(&mut self, i: usize, off: u64, len: u64) {
        let (phys, bounced) = (self.live[i].phys, self.live[i].bounced);
        if bounced {
            let data = self.bytes(phys + off, len).to_vec();
            self.live[i].view[off as usize..(off + len) as usize].copy_from_slice(&data);
        }
    }
}

/// Whether the README's rules say a mapping of `[phys, phys + len)` by `dev` in `dir`
/// must be bounced: forced, beyond the DMA mask, or an inbound transfer on a non-coherent
/// device whose first or last cache line is shared.
pub fn must_bounce(dev: &Device, phys: u64, len: u64, dir: Direction) -> bool {
    let line = dev.cache_line().max(LINE);
    dev.force_bounce()
        || !dev.can_address(phys, len)
        || (!dev.is_coherent()
            && dir.device_writes()
            && (!phys.is_multiple_of(line) || !(phys + len).is_multiple_of(line)))
}

/// The pieces `map_sg` must cut `[phys, phys + len)` into for `dev`: at most
/// `max_segment_size` bytes, never crossing a `seg_boundary_mask + 1` boundary.
pub fn sg_pieces(dev: &Device, phys: u64, len: u64) -> Vec<(u64, u64)> {
    let mut out = Vec::new();
    let (mut at, end) = (phys, phys + len);
    let mask = dev.seg_boundary_mask();
    while at < end {
        let to_boundary = (mask - (at & mask)).saturating_add(1);
        let l = (end - at).min(dev.max_segment_size()).min(to_boundary);
        out.push((at, l));
        at += l;
    }
    out
}
