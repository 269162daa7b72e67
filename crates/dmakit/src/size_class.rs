//! kmalloc size classes and how a minimum alignment thins them out.
//!
//! The mapping layer needs this rule as much as kmalloc does: Linux's size-only bounce test
//! ([`crate::AlignmentPolicy::SizeOnly`]) judges a buffer by the class its size falls in, so
//! the rule lives here in the core, and `dmakit-mem`'s kmalloc builds its caches from it.
//!
//! Small objects are served from caches of fixed sizes: the powers of two from 8 to 8192 plus
//! 96 and 192, which catch the common sizes just above 64 and 128. A minimum alignment `a`
//! keeps only the classes whose size is a multiple of `a` (objects are laid out back to back
//! from a page-aligned slab, so such a size keeps every object `a`-aligned): with `a = 64`
//! the 8, 16, 32 and 96 classes go, with `a = 128` also 64 and 192. A request goes to the
//! smallest remaining class that holds it; Linux behaves the same way with
//! `ARCH_KMALLOC_MINALIGN`.

/// Every kmalloc size class, ascending.
pub const KMALLOC_CLASSES: [u64; 13] = [
    8, 16, 32, 64, 96, 128, 192, 256, 512, 1024, 2048, 4096, 8192,
];

/// The largest size class; larger requests take whole pages.
pub const KMALLOC_MAX_CACHE_SIZE: u64 = 8192;

/// Whether `align` is a minimum alignment the size classes support: a power of two from 8 to
/// 4096.
pub const fn is_valid_min_align(align: u64) -> bool {
    align.is_power_of_two() && align >= 8 && align <= 4096
}

/// The classes that exist under minimum alignment `align` (sizes that are multiples of it),
/// ascending.
pub fn classes_for(align: u64) -> impl Iterator<Item = u64> {
    KMALLOC_CLASSES
        .into_iter()
        .filter(move |c| align != 0 && c % align == 0)
}

/// The size class serving a request of `size` bytes under minimum alignment `align`: the
/// smallest class at least `size` that is a multiple of `align`. `None` when `size` is 0,
/// above [`KMALLOC_MAX_CACHE_SIZE`], or no class is a multiple of `align`.
pub fn class_for(size: u64, align: u64) -> Option<u64> {
    if size == 0 {
        return None;
    }
    classes_for(align).find(|&c| c >= size)
}

#[cfg(test)]
mod tests {
    use super::*;
    use alloc::vec::Vec;

    #[test]
    fn alignment_drops_classes_like_linux() {
        assert_eq!(classes_for(8).count(), 13);
        assert_eq!(
            classes_for(64).collect::<Vec<_>>(),
            [64, 128, 192, 256, 512, 1024, 2048, 4096, 8192]
        );
        assert_eq!(
            classes_for(128).collect::<Vec<_>>(),
            [128, 256, 512, 1024, 2048, 4096, 8192]
        );
        assert_eq!(class_for(1, 8), Some(8));
        assert_eq!(class_for(65, 32), Some(96));
        assert_eq!(class_for(65, 64), Some(128));
        assert_eq!(class_for(129, 128), Some(256));
        assert_eq!(class_for(8193, 8), None);
        assert_eq!(class_for(0, 8), None);
    }
}
