//! The API family a mapping was made through, which must also undo it.

/// Which API made a mapping; it must be undone through the same one.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MappingFamily {
    /// `map` / `unmap`.
    Single,
    /// One segment of a `map_sg` call that produced `nents` segments.
    Sg {
        /// Segments the call produced.
        nents: usize,
        /// Identifies the call.
        group: u64,
    },
    /// A coherent allocation.
    Coherent,
}

impl MappingFamily {
    pub(crate) fn name(self) -> &'static str {
        match self {
            MappingFamily::Single => "single",
            MappingFamily::Sg { .. } => "scatter-gather",
            MappingFamily::Coherent => "coherent",
        }
    }

    pub(crate) fn same_api(self, other: MappingFamily) -> bool {
        core::mem::discriminant(&self) == core::mem::discriminant(&other)
    }
}
