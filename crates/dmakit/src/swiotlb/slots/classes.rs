//! Size classes of free runs, and a list of runs per class (two-level segregated fit, as
//! in TLSF).
//!
//! Why classes: the slot allocator wants the shortest free run that holds a request (best
//! fit keeps long runs whole for long requests), and it must find it without scanning. A
//! run of `n` slots is listed in class `(fl, sl)`: `fl = floor(log2 n)` and `sl` the next
//! [`SL_BITS`] bits of `n`, so the runs of one class differ in length by less than an
//! eighth (runs under 8 slots have a class each), and the first non-empty class at or above
//! a length is two bit scans, whatever the number of runs.
//!
//! The lists are intrusive: `next`/`prev` index arrays with one entry per slot, used only
//! at the first slot of a listed run. Nothing is allocated after construction.

use alloc::vec;
use alloc::vec::Vec;

use super::MAX_ORDER;

/// Bits of a run's length, after its leading one, that pick its class within a power of two.
pub(super) const SL_BITS: u32 = 3;
const SL: usize = 1 << SL_BITS;
const FL: usize = MAX_ORDER as usize + 1;
/// No slot: the end of a list.
pub(super) const NIL: u32 = u32::MAX;

/// A size class: `(fl, sl)`, ordered as the lengths they list.
pub(super) type Class = (u32, u32);

/// The class listing a run of `n >= 1` slots.
#[inline]
pub(super) fn class_of(n: u32) -> Class {
    let fl = 31 - n.leading_zeros();
    let sl = if fl < SL_BITS {
        n - (1 << fl)
    } else {
        (n >> (fl - SL_BITS)) & (SL as u32 - 1)
    };
    (fl, sl)
}

/// The shortest run class `c` lists.
#[inline]
pub(super) fn class_min((fl, sl): Class) -> u32 {
    if fl < SL_BITS {
        (1 << fl) + sl
    } else {
        (SL as u32 + sl) << (fl - SL_BITS)
    }
}

/// The class after `c`.
#[inline]
fn next_class((fl, sl): Class) -> Class {
    let width = if fl < SL_BITS { 1 << fl } else { SL as u32 };
    if sl + 1 < width {
        (fl, sl + 1)
    } else {
        (fl + 1, 0)
    }
}

/// The lowest class whose every run has at least `n >= 1` slots (it may lie past the
/// largest class a list exists for; then no run has).
#[inline]
pub(super) fn class_at_least(n: u32) -> Class {
    let c = class_of(n);
    if class_min(c) == n {
        c
    } else {
        next_class(c)
    }
}

/// The free runs of an allocator, one list per class.
///
/// Invariant: `heads[fl][sl]` starts the list of class `(fl, sl)` (linked by `next`, with
/// `prev` pointing back, `NIL` at the ends); bit `sl` of `sl_map[fl]` is set exactly when
/// that list is not empty, and bit `fl` of `fl_map` exactly when `sl_map[fl] != 0`.
pub(super) struct ClassLists {
    heads: [[u32; SL]; FL],
    sl_map: [u32; FL],
    fl_map: u32,
    next: Vec<u32>,
    prev: Vec<u32>,
}

impl ClassLists {
    /// Empty lists over `len` slots.
    pub(super) fn new(len: usize) -> Self {
        Self {
            heads: [[NIL; SL]; FL],
            sl_map: [0; FL],
            fl_map: 0,
            next: vec![NIL; len],
            prev: vec![NIL; len],
        }
    }

    /// Bit `k` set when a listed run has `2^k ..= 2^(k+1) - 1` slots.
    #[inline]
    pub(super) fn fl_map(&self) -> u32 {
        self.fl_map
    }

    /// The first listed run of class `c` (`NIL` when none).
    #[inline]
    pub(super) fn head(&self, (fl, sl): Class) -> u32 {
        self.heads[fl as usize][sl as usize]
    }

    /// The listed run after the one at `i` in its class.
    #[inline]
    pub(super) fn next(&self, i: u32) -> u32 {
        self.next[i as usize]
    }

    /// The first non-empty class at or after `c`.
    #[inline]
    pub(super) fn first_from(&self, (fl, sl): Class) -> Option<Class> {
        if fl as usize >= FL {
            return None;
        }
        let here = self.sl_map[fl as usize] & (u32::MAX << sl);
        if here != 0 {
            return Some((fl, here.trailing_zeros()));
        }
        let above = self.fl_map & u32::MAX.checked_shl(fl + 1).unwrap_or(0);
        if above == 0 {
            return None;
        }
        let fl = above.trailing_zeros();
        Some((fl, self.sl_map[fl as usize].trailing_zeros()))
    }

    /// The first non-empty class after `c`.
    #[inline]
    pub(super) fn first_after(&self, c: Class) -> Option<Class> {
        self.first_from(next_class(c))
    }

    /// Lists the run of `n` slots at `i`.
    #[inline]
    pub(super) fn push(&mut self, i: u32, n: u32) {
        let (fl, sl) = class_of(n);
        let head = &mut self.heads[fl as usize][sl as usize];
        let old = core::mem::replace(head, i);
        self.next[i as usize] = old;
        self.prev[i as usize] = NIL;
        if old != NIL {
            self.prev[old as usize] = i;
        }
        self.sl_map[fl as usize] |= 1 << sl;
        self.fl_map |= 1 << fl;
    }

    /// Takes the run of `n` slots at `i` off its list.
    #[inline]
    pub(super) fn unlink(&mut self, i: u32, n: u32) {
        let (fl, sl) = class_of(n);
        let (p, nx) = (self.prev[i as usize], self.next[i as usize]);
        if p == NIL {
            self.heads[fl as usize][sl as usize] = nx;
            if nx == NIL {
                self.sl_map[fl as usize] &= !(1 << sl);
                if self.sl_map[fl as usize] == 0 {
                    self.fl_map &= !(1 << fl);
                }
            }
        } else {
            self.next[p as usize] = nx;
        }
        if nx != NIL {
            self.prev[nx as usize] = p;
        }
    }

    /// Every listed run's first slot with its class, and whether the links and maps are
    /// consistent; for tests.
    #[cfg(test)]
    pub(super) fn listed(&self) -> Result<Vec<(u32, Class)>, alloc::string::String> {
        use alloc::format;
        let mut out = Vec::new();
        for fl in 0..FL as u32 {
            for sl in 0..SL as u32 {
                let mut i = self.heads[fl as usize][sl as usize];
                if (i != NIL) != (self.sl_map[fl as usize] >> sl & 1 == 1) {
                    return Err(format!("class ({fl}, {sl}) map bit wrong"));
                }
                let mut prev = NIL;
                while i != NIL {
                    if self.prev[i as usize] != prev {
                        return Err(format!("run {i} links back wrong"));
                    }
                    if out.len() > self.next.len() {
                        return Err(format!("class ({fl}, {sl}) list loops"));
                    }
                    out.push((i, (fl, sl)));
                    prev = i;
                    i = self.next[i as usize];
                }
            }
            if (self.sl_map[fl as usize] != 0) != (self.fl_map >> fl & 1 == 1) {
                return Err(format!("level {fl} map bit wrong"));
            }
        }
        Ok(out)
    }
}
