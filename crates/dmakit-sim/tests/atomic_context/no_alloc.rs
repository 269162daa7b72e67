//! No heap allocation on any map, unmap or sync path.
