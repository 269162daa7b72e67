//! The debug checker and scatter-gather lists allocate nothing on map, unmap or sync.
