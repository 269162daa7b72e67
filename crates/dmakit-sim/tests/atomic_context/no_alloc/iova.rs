//! IOVA allocation allocates nothing, whatever the size and however fragmented the space.
