//! Byte sizes as people write them in scenario files (`31`, `"4 GiB"`, `"0x1000"`), and as
//! reports print them.

/// Parses `"4GiB"`, `"64 MiB"`, `"512"`, `"0x8000_0000"`, `"1.5 KiB"` (binary units only:
/// `B`, `KiB`, `MiB`, `GiB`, `TiB`; `K`/`M`/`G` are accepted as the same). `None` when the
/// text is not a size or does not fit 64 bits.
pub fn parse_size(text: &str) -> Option<u64> {
    let t: String = text.chars().filter(|c| *c != '_' && *c != ' ').collect();
    if let Some(hex) = t.strip_prefix("0x").or_else(|| t.strip_prefix("0X")) {
        return u64::from_str_radix(hex, 16).ok();
    }
    let split = t
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    let shift = match unit.to_ascii_lowercase().as_str() {
        "" | "b" => 0,
        "k" | "kib" | "kb" => 10,
        "m" | "mib" | "mb" => 20,
        "g" | "gib" | "gb" => 30,
        "t" | "tib" | "tb" => 40,
        _ => return None,
    };
    if num.contains('.') {
        let v: f64 = num.parse().ok()?;
        let bytes = v * (1u64 << shift) as f64;
        (bytes.is_finite() && bytes >= 0.0 && bytes < u64::MAX as f64 && bytes.fract() == 0.0)
            .then_some(bytes as u64)
    } else {
        num.parse::<u64>().ok()?.checked_mul(1 << shift)
    }
}

/// `1536` → `"1.5 KiB"`, `8388608` → `"8.0 MiB"`, `100` → `"100 B"`.
pub fn format_bytes(bytes: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut v = bytes as f64;
    let mut u = 0;
    while v >= 1024.0 && u + 1 < UNITS.len() {
        v /= 1024.0;
        u += 1;
    }
    if u == 0 {
        format!("{bytes} B")
    } else {
        format!("{v:.1} {}", UNITS[u])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_parse_and_print() {
        assert_eq!(parse_size("4GiB"), Some(4 << 30));
        assert_eq!(parse_size("64 MiB"), Some(64 << 20));
        assert_eq!(parse_size("0x8000_0000"), Some(0x8000_0000));
        assert_eq!(parse_size("1.5KiB"), Some(1536));
        assert_eq!(parse_size("31"), Some(31));
        assert_eq!(parse_size("4 parsecs"), None);
        assert_eq!(parse_size("99999999999TiB"), None);
        assert_eq!(format_bytes(100), "100 B");
        assert_eq!(format_bytes(1536), "1.5 KiB");
        assert_eq!(format_bytes(8 << 20), "8.0 MiB");
    }
}
