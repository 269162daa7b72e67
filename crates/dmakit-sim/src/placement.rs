//! Where a DMA buffer and its neighbours sit in memory.
//!
//! The hazard exists only when a buffer shares a cache line with other live data, so the
//! workloads place buffers the ways real code does: on whole lines (DMA-aligned
//! allocations), packed between 8-byte-aligned small objects (kmalloc with a small minimum
//! alignment), or as a field at a non-line offset inside a larger structure.

use crate::rng::SimRng;

/// How a buffer is placed relative to its neighbours.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Placement {
    /// The buffer starts and ends on line boundaries (its length is rounded up to whole
    /// lines); neighbours occupy the adjacent lines but share none with it.
    LineAligned,
    /// kmalloc-like: 8-byte-aligned objects packed back to back; the buffer starts off a
    /// line boundary, so its first line is shared with the object before it, and usually
    /// its last line with the object after it.
    Packed,
    /// The buffer is a field at a non-line offset inside a larger line-aligned structure;
    /// the structure's other fields (same owner) share its first and last lines.
    StructField,
}

impl Placement {
    /// All placements.
    pub const ALL: [Placement; 3] = [
        Placement::LineAligned,
        Placement::Packed,
        Placement::StructField,
    ];
}

/// The role of an object in a layout.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Role {
    /// The DMA buffer.
    Buffer,
    /// An independent neighbouring object (its own owner).
    Neighbour,
    /// Another field of the structure the buffer is part of (the buffer's owner).
    Field,
}

impl Role {
    /// The label the oracle reports for objects of this role.
    pub fn label(self) -> &'static str {
        match self {
            Role::Buffer => "buffer",
            Role::Neighbour => "neighbour",
            Role::Field => "struct-field",
        }
    }
}

/// One object of a layout, at `offset` bytes from the start of its slot.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Object {
    /// Offset from the slot's base.
    pub offset: u64,
    /// Length in bytes (non-zero).
    pub len: u64,
    /// What it is.
    pub role: Role,
}

/// A buffer and its neighbours, in ascending address order, disjoint.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Layout {
    /// The objects; exactly one has [`Role::Buffer`].
    pub objects: Vec<Object>,
}

impl Layout {
    /// The buffer object.
    pub fn buffer(&self) -> Option<Object> {
        self.objects
            .iter()
            .copied()
            .find(|o| o.role == Role::Buffer)
    }
}

fn up(x: u64, a: u64) -> u64 {
    x.div_ceil(a) * a
}

impl Placement {
    /// Lays out a buffer of about `len` bytes (exactly `len`, except [`Placement::LineAligned`]
    /// rounds up to whole lines) with neighbours, inside a slot of `slot` bytes, for
    /// `line`-byte cache lines. `None` when it does not fit or `len` is zero.
    pub fn layout(self, rng: &mut SimRng, len: u64, line: u64, slot: u64) -> Option<Layout> {
        if len == 0 || !line.is_power_of_two() {
            return None;
        }
        let mut objs = Vec::with_capacity(3);
        let total = match self {
            Placement::LineAligned => {
                let left = line * rng.between(1, 2);
                let buf = up(len, line);
                let right = line * rng.between(1, 2);
                objs.push(Object {
                    offset: 0,
                    len: left,
                    role: Role::Neighbour,
                });
                objs.push(Object {
                    offset: left,
                    len: buf,
                    role: Role::Buffer,
                });
                objs.push(Object {
                    offset: left + buf,
                    len: right,
                    role: Role::Neighbour,
                });
                left + buf + right
            }
            Placement::Packed => {
                // The object before is 8..=2*line bytes (multiple of 8) and not a multiple
                // of the line, so the buffer after it starts off a line boundary.
                let mut left = 8 * rng.between(1, line / 4);
                if left % line == 0 {
                    left += 8;
                }
                let right_at = up(left + len, 8);
                let right = 8 * rng.between(1, line / 4);
                objs.push(Object {
                    offset: 0,
                    len: left,
                    role: Role::Neighbour,
                });
                objs.push(Object {
                    offset: left,
                    len,
                    role: Role::Buffer,
                });
                objs.push(Object {
                    offset: right_at,
                    len: right,
                    role: Role::Neighbour,
                });
                right_at + right
            }
            Placement::StructField => {
                let mut head = 8 * rng.between(1, line / 4);
                if head % line == 0 {
                    head += 8;
                }
                let tail_at = up(head + len, 8);
                let tail = 8 * rng.between(1, line / 4);
                objs.push(Object {
                    offset: 0,
                    len: head,
                    role: Role::Field,
                });
                objs.push(Object {
                    offset: head,
                    len,
                    role: Role::Buffer,
                });
                objs.push(Object {
                    offset: tail_at,
                    len: tail,
                    role: Role::Field,
                });
                tail_at + tail
            }
        };
        if total > slot {
            return None;
        }
        // Slide the whole layout to a random position keeping its alignment (line for
        // line-aligned layouts and structures, 8 bytes for packed objects).
        let align = if self == Placement::Packed { 8 } else { line };
        let room = (slot - total) / align;
        let shift = rng.below(room + 1) * align;
        let shift = if self == Placement::Packed && (shift + objs[1].offset) % line == 0 {
            // Keep the buffer off a line boundary.
            if shift >= 8 {
                shift - 8
            } else {
                shift + 8
            }
        } else {
            shift
        };
        if shift + total > slot {
            return None;
        }
        for o in &mut objs {
            o.offset += shift;
        }
        Some(Layout { objects: objs })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn layouts_have_the_promised_shape() {
        let mut rng = SimRng::new(5);
        for _ in 0..2000 {
            for p in Placement::ALL {
                for line in [32u64, 64, 128] {
                    let len = rng.between(1, 600);
                    let l = p.layout(&mut rng, len, line, 8192).unwrap();
                    let b = l.buffer().unwrap();
                    for w in l.objects.windows(2) {
                        assert!(w[0].offset + w[0].len <= w[1].offset, "{p:?} {l:?}");
                    }
                    let last = l.objects.last().unwrap();
                    assert!(last.offset + last.len <= 8192);
                    match p {
                        Placement::LineAligned => {
                            assert_eq!(b.offset % line, 0);
                            assert_eq!(b.len % line, 0);
                            assert!(b.len >= len);
                        }
                        Placement::Packed | Placement::StructField => {
                            assert_eq!(b.len, len);
                            assert_ne!(b.offset % line, 0, "{p:?} {l:?}");
                            assert_eq!(b.offset % 8, 0);
                            // The object before ends exactly where the buffer starts.
                            assert_eq!(l.objects[0].offset + l.objects[0].len, b.offset);
                        }
                    }
                }
            }
        }
    }

    #[test]
    fn refuses_what_does_not_fit() {
        let mut rng = SimRng::new(1);
        assert!(Placement::Packed.layout(&mut rng, 0, 64, 4096).is_none());
        assert!(Placement::LineAligned
            .layout(&mut rng, 4096, 64, 4096)
            .is_none());
        assert!(Placement::StructField
            .layout(&mut rng, 8, 48, 4096)
            .is_none());
    }
}
