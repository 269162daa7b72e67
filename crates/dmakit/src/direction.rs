//! Transfer direction.
//!
//! The direction decides which cache maintenance a transfer needs (clean for data going to
//! the device, invalidate for data coming from it), which way a bounce copies, and whether a
//! misaligned buffer is dangerous at all: only inbound transfers are, because only they
//! invalidate lines that may hold other data.

/// Which way data moves in a streaming mapping.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Direction {
    /// The device reads memory the CPU wrote (Linux `DMA_TO_DEVICE`).
    ToDevice,
    /// The device writes memory the CPU will read (Linux `DMA_FROM_DEVICE`).
    FromDevice,
    /// Both (Linux `DMA_BIDIRECTIONAL`).
    Bidirectional,
}

impl Direction {
    /// All three directions, for iteration in tests and statistics.
    pub const ALL: [Direction; 3] = [
        Direction::ToDevice,
        Direction::FromDevice,
        Direction::Bidirectional,
    ];

    /// Whether the device may read the buffer (the CPU's data must reach memory first).
    #[inline]
    pub const fn device_reads(self) -> bool {
        matches!(self, Direction::ToDevice | Direction::Bidirectional)
    }

    /// Whether the device may write the buffer (the CPU must not see stale lines after).
    #[inline]
    pub const fn device_writes(self) -> bool {
        matches!(self, Direction::FromDevice | Direction::Bidirectional)
    }

    /// Whether a sync in direction `sync` is allowed on a mapping made with `self`:
    /// the same direction, or any direction on a bidirectional mapping.
    #[inline]
    pub const fn permits_sync(self, sync: Direction) -> bool {
        matches!(self, Direction::Bidirectional) || self as u8 == sync as u8
    }

    /// A short lowercase name (`to-device`, `from-device`, `bidirectional`).
    pub const fn name(self) -> &'static str {
        match self {
            Direction::ToDevice => "to-device",
            Direction::FromDevice => "from-device",
            Direction::Bidirectional => "bidirectional",
        }
    }
}

impl core::fmt::Display for Direction {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.write_str(self.name())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_and_writes() {
        assert!(Direction::ToDevice.device_reads() && !Direction::ToDevice.device_writes());
        assert!(!Direction::FromDevice.device_reads() && Direction::FromDevice.device_writes());
        assert!(
            Direction::Bidirectional.device_reads() && Direction::Bidirectional.device_writes()
        );
    }

    #[test]
    fn sync_permission() {
        assert!(Direction::Bidirectional.permits_sync(Direction::ToDevice));
        assert!(Direction::FromDevice.permits_sync(Direction::FromDevice));
        assert!(!Direction::FromDevice.permits_sync(Direction::ToDevice));
        assert!(!Direction::ToDevice.permits_sync(Direction::Bidirectional));
    }
}
