//! The coherent object pool and the transient pool allocate nothing on map, unmap or sync.
