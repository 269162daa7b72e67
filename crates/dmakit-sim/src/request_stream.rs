//! The bounce pool's benchmark request stream, and the runs that measure an allocator on it.
//!
//! A bounce pool is judged against general-purpose allocators on one stream of requests,
//! the same for every allocator: seeded, sizes log-uniform from 1 B to 64 KiB, every buffer
//! 128-byte aligned (a cache line on the largest lines in use), one request in eight from a
//! device with a 4 KiB `min_align_mask` (the bounce must keep the original's offset within
//! its page). An allocator is first filled in the background to a level of its region,
//! then fragmented by random frees and refills at that level; on top of that a foreground
//! stream keeps a FIFO window of [`WINDOW`] live allocations (allocate one, free the
//! oldest), which is what the timed benchmark repeats.
//!
//! The allocators are reached through [`StreamAllocator`]; what counts as *held* is the
//! same for each: the bytes of the region the allocator can no longer hand out because of
//! its live allocations, i.e. the region minus the allocator's own count of free bytes
//! (lead-ins, rounding, alignment gaps and per-allocation headers all included).

use crate::SimRng;

/// Bytes of the region every allocator manages.
pub const REGION_BYTES: u64 = 64 << 20;
/// Largest request.
pub const MAX_LEN: u64 = 64 << 10;
/// Alignment of every buffer, original and bounce.
pub const LINE: u64 = 128;
/// The `min_align_mask` of one request in eight.
pub const PAGE_MASK: u64 = 4096 - 1;
/// Live allocations of the foreground stream.
pub const WINDOW: usize = 64;

/// One request: `len` bytes whose original lies at `orig` (128-byte aligned) for a device
/// whose `min_align_mask` is `min_align_mask` (0 or [`PAGE_MASK`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct StreamRequest {
    /// The original buffer's address.
    pub orig: u64,
    /// Bytes requested.
    pub len: u64,
    /// Low address bits the allocation must share with `orig`.
    pub min_align_mask: u64,
}

impl StreamRequest {
    /// Bytes an allocation must hold before the bounce address to keep `orig`'s bits under
    /// the mask: the offset from the `min_align_mask + 1` boundary.
    pub fn lead(&self) -> u64 {
        self.orig & self.min_align_mask
    }

    /// Alignment of the block a general-purpose allocator must return: the line, or the
    /// mask's boundary when that is larger.
    pub fn align(&self) -> u64 {
        (self.min_align_mask + 1).max(LINE)
    }

    /// Bytes of that block: the lead-in and the data, rounded up to whole lines (the bounce
    /// owns every line it touches).
    pub fn span(&self) -> u64 {
        (self.lead() + self.len).next_multiple_of(LINE)
    }
}

/// The request stream: deterministic in its seed.
#[derive(Clone, Debug)]
pub struct RequestStream {
    rng: SimRng,
}

impl RequestStream {
    /// The stream of `seed`.
    pub fn new(seed: u64) -> Self {
        Self {
            rng: SimRng::new(seed),
        }
    }

    /// A uniform `f64` in `[0, 1]`.
    fn unit(&mut self) -> f64 {
        (self.rng.next_u64() >> 11) as f64 / ((1u64 << 53) - 1) as f64
    }
}

impl Iterator for RequestStream {
    type Item = StreamRequest;

    fn next(&mut self) -> Option<StreamRequest> {
        // Log-uniform: `floor(2^(16 u))` puts a sixteenth of the requests in each octave.
        let octaves = MAX_LEN.ilog2() as f64;
        let len = ((octaves * self.unit()).exp2() as u64).clamp(1, MAX_LEN);
        let orig = self.rng.next_u64() & ((1 << 40) - 1) & !(LINE - 1);
        let min_align_mask = if self.rng.below(8) == 0 { PAGE_MASK } else { 0 };
        Some(StreamRequest {
            orig,
            len,
            min_align_mask,
        })
    }
}

/// An allocator driven by the stream.
pub trait StreamAllocator {
    /// What `free` needs back.
    type Handle;

    /// Allocates for `req`: a block of the region whose address `+ req.lead()` keeps
    /// `req.orig`'s bits under the mask, 128-byte aligned, holding `req.len` bytes from
    /// there. `None` when the allocator refuses.
    fn alloc(&mut self, req: &StreamRequest) -> Option<Self::Handle>;

    /// Frees an allocation `alloc` returned.
    fn free(&mut self, handle: Self::Handle);

    /// Bytes of the region held (see the module documentation).
    fn held_bytes(&self) -> u64;
}

/// What a level counts: the bytes requested by live allocations, or the bytes they hold.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Level {
    /// `percent` % of [`REGION_BYTES`] requested.
    Requested(u64),
    /// `percent` % of [`REGION_BYTES`] held.
    Held(u64),
}

/// An allocator filled in the background to a level, with its stream.
pub struct Filled<A: StreamAllocator> {
    /// The allocator.
    pub alloc: A,
    /// The stream, continued by the foreground.
    pub stream: RequestStream,
    background: Vec<(A::Handle, u64)>,
    window: std::collections::VecDeque<(A::Handle, u64)>,
    requested: u64,
    rng: SimRng,
    /// Requests made since the level was first reached.
    pub attempts: u64,
    /// Of those, requests refused.
    pub refusals: u64,
}

/// Background frees and refills, as multiples of the live allocations at the level.
const CHURN_ROUNDS: usize = 4;
/// Consecutive refusals after which a fill stops trying to reach its level.
const GIVE_UP: u32 = 64;

impl<A: StreamAllocator> Filled<A> {
    /// Fills `alloc` with requests from the stream of `seed` until `level` is reached (or
    /// 64 requests in a row are refused), then frees a random background allocation and
    /// refills to the level, four times as often as there are live allocations. Requests
    /// refused after the level was first reached count in [`Filled::refusals`].
    pub fn new(alloc: A, seed: u64, level: Level) -> Self {
        let mut f = Self {
            alloc,
            stream: RequestStream::new(seed),
            background: Vec::new(),
            window: std::collections::VecDeque::with_capacity(WINDOW + 1),
            requested: 0,
            rng: SimRng::new(seed ^ 0x5eed),
            attempts: 0,
            refusals: 0,
        };
        f.refill(level, false);
        for _ in 0..f.background.len() * CHURN_ROUNDS {
            let i = f.rng.below(f.background.len() as u64) as usize;
            let (h, len) = f.background.swap_remove(i);
            f.alloc.free(h);
            f.requested -= len;
            f.refill(level, true);
        }
        f
    }

    fn below(&self, level: Level) -> bool {
        match level {
            Level::Requested(p) => self.requested < REGION_BYTES * p / 100,
            Level::Held(p) => self.alloc.held_bytes() < REGION_BYTES * p / 100,
        }
    }

    fn refill(&mut self, level: Level, count: bool) {
        let mut refused = 0;
        while self.below(level) && refused < GIVE_UP {
            let req = self.stream.next().expect("endless stream");
            self.attempts += u64::from(count);
            match self.alloc.alloc(&req) {
                Some(h) => {
                    self.background.push((h, req.len));
                    self.requested += req.len;
                    refused = 0;
                }
                None => {
                    self.refusals += u64::from(count);
                    refused += 1;
                }
            }
        }
    }

    /// One foreground step: allocates `req` into the window and frees the oldest once the
    /// window is full. Returns whether `req` was served.
    #[inline]
    pub fn step(&mut self, req: &StreamRequest) -> bool {
        let ok = match self.alloc.alloc(req) {
            Some(h) => {
                self.window.push_back((h, req.len));
                self.requested += req.len;
                true
            }
            None => false,
        };
        if self.window.len() > WINDOW {
            let (h, len) = self.window.pop_front().expect("non-empty window");
            self.alloc.free(h);
            self.requested -= len;
        }
        ok
    }

    /// Runs `n` foreground steps from the stream, counting attempts and refusals.
    pub fn foreground(&mut self, n: usize) {
        for _ in 0..n {
            let req = self.stream.next().expect("endless stream");
            self.attempts += 1;
            self.refusals += u64::from(!self.step(&req));
        }
    }

    /// Bytes requested by live allocations.
    pub fn requested_bytes(&self) -> u64 {
        self.requested
    }

    /// Refused share of the requests counted, in `[0, 1]`.
    pub fn refusal_rate(&self) -> f64 {
        self.refusals as f64 / self.attempts.max(1) as f64
    }

    /// Requested over held bytes of the live allocations.
    pub fn utilisation(&self) -> f64 {
        self.requested as f64 / self.alloc.held_bytes().max(1) as f64
    }
}
