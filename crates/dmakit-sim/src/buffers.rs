//! Scratch buffers reused across calls of varying length: the model copies, compares and
//! fills millions of ranges, and clearing a fresh buffer each time was a large part of its
//! cost.

/// The first `n` elements of `v`, grown with `fill` when shorter and never shrunk, so a
/// loop of varying lengths clears memory only when a length exceeds every earlier one. The
/// elements hold whatever was there before: callers overwrite them.
pub(crate) fn sized<T: Copy>(v: &mut Vec<T>, n: usize, fill: T) -> &mut [T] {
    if v.len() < n {
        v.resize(n, fill);
    }
    &mut v[..n]
}
