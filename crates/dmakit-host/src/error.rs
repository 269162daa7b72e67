//! Why a host platform could not be created, or a pointer is not one of its own.

use std::fmt;

/// Errors creating a [`crate::HostPlatform`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum HostError {
    /// Zero size, a size that does not fit `usize`, or a base + size that overflows.
    BadSize,
    /// The operating system refused the allocation.
    OutOfMemory,
}

impl fmt::Display for HostError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            HostError::BadSize => {
                f.write_str("host memory size must be non-zero and fit the address space")
            }
            HostError::OutOfMemory => f.write_str("could not allocate host memory"),
        }
    }
}

impl std::error::Error for HostError {}

/// A pointer range given to [`crate::HostPlatform::phys_of`] does not lie in the platform's
/// memory, so it has no physical address there.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ForeignPointer {
    /// The pointer's address.
    pub addr: usize,
    /// Bytes from it that had to lie in the memory.
    pub len: usize,
}

impl fmt::Display for ForeignPointer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} bytes at host pointer {:#x} are not in the host platform's memory",
            self.len, self.addr
        )
    }
}

impl std::error::Error for ForeignPointer {}
