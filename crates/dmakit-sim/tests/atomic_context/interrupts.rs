//! Interrupts arriving inside a map path's critical section.
