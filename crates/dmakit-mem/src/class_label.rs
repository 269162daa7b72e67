//! kmalloc cache names: the size-class suffix of `kmalloc-96`, `kmalloc-1k`.
//!
//! kmalloc names its caches after their class, and `/proc/slabinfo` readers map names back
//! to classes; both directions live here so they cannot disagree.

use dmakit::size_class::KMALLOC_CLASSES;

/// The conventional cache name suffix for a class: `8`, `96`, `1k`, `8k`.
pub fn class_label(size: u64) -> ClassLabel {
    ClassLabel(size)
}

/// Formats a size class the way cache names spell it (see [`class_label`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ClassLabel(u64);

impl core::fmt::Display for ClassLabel {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        if self.0 >= 1024 && self.0 % 1024 == 0 {
            write!(f, "{}k", self.0 / 1024)
        } else {
            write!(f, "{}", self.0)
        }
    }
}

/// Parses a cache name suffix (`8`, `96`, `1k`, `8k`) back to a size class; `None` if it is
/// not one of [`KMALLOC_CLASSES`].
pub fn parse_class_label(label: &str) -> Option<u64> {
    let value = match label.strip_suffix('k') {
        Some(kib) => kib.parse::<u64>().ok()?.checked_mul(1024)?,
        None => label.parse::<u64>().ok()?,
    };
    KMALLOC_CLASSES.contains(&value).then_some(value)
}

#[cfg(test)]
mod tests {
    use super::*;
    use alloc::string::ToString;

    #[test]
    fn labels_round_trip() {
        for c in KMALLOC_CLASSES {
            assert_eq!(parse_class_label(&class_label(c).to_string()), Some(c));
        }
        assert_eq!(class_label(2048).to_string(), "2k");
        assert_eq!(parse_class_label("3k"), None);
        assert_eq!(parse_class_label("x"), None);
    }
}
