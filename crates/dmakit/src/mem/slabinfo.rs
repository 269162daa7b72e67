//! A parser for `/proc/slabinfo` version 2.1.
//!
//! The cost of a minimum alignment is best measured on real machines, and `/proc/slabinfo`
//! is what every Linux machine can give. This parser takes the text as a `&str` (no I/O, no
//! `std`), so the same code reads a snapshot shipped with the crate, a file on a host, or the
//! output of [`crate::mem::Kmalloc::write_slabinfo`].
//!
//! Format: a first line `slabinfo - version: 2.1`, comment lines starting with `#`, then one
//! line per cache with exactly sixteen whitespace-separated fields:
//!
//! ```text
//! name active_objs num_objs objsize objperslab pagesperslab
//!      : tunables limit batchcount sharedfactor : slabdata active_slabs num_slabs sharedavail
//! ```
//!
//! Blank lines are skipped. Anything else is an error naming the (1-based) line and what is
//! wrong with it.
//!
//! Counts are bounded so that the memory figures derived from them fit 64 bits: every
//! count, the objects of all caches together and the pages of all slabs together are at
//! most [`MAX_SLABINFO_COUNT`] (2^40, far beyond any machine).

use alloc::string::{String, ToString};
use alloc::vec::Vec;
use core::fmt;

/// One cache line of `/proc/slabinfo`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SlabinfoRow<'a> {
    /// 1-based line number in the input.
    pub line: usize,
    /// Cache name.
    pub name: &'a str,
    /// Live objects.
    pub active_objs: u64,
    /// Object slots in all slabs.
    pub num_objs: u64,
    /// Object size in bytes.
    pub objsize: u64,
    /// Objects per slab.
    pub objperslab: u64,
    /// Pages per slab.
    pub pagesperslab: u64,
    /// SLAB tunable `limit` (0 under SLUB).
    pub limit: u64,
    /// SLAB tunable `batchcount` (0 under SLUB).
    pub batchcount: u64,
    /// SLAB tunable `sharedfactor` (0 under SLUB).
    pub sharedfactor: u64,
    /// Slabs in use.
    pub active_slabs: u64,
    /// All slabs.
    pub num_slabs: u64,
    /// Shared array entries (0 under SLUB).
    pub sharedavail: u64,
}

/// What is wrong with a line.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum SlabinfoErrorKind {
    /// The input has no lines.
    Empty,
    /// The first line is not `slabinfo - version: X`.
    MissingHeader,
    /// The version is not 2.1 (the version found).
    UnsupportedVersion(String),
    /// A cache line does not have sixteen fields (the count found).
    FieldCount(usize),
    /// A separator field is not what the format has there.
    Separator {
        /// What the format has at that position.
        expected: &'static str,
        /// What the line has.
        found: String,
    },
    /// A numeric field is not a non-negative integer.
    NotANumber {
        /// The column.
        field: &'static str,
        /// What the line has.
        found: String,
    },
    /// The counts contradict each other (e.g. more active than total objects).
    Inconsistent(&'static str),
    /// A count, or the total of a count over all lines, exceeds [`MAX_SLABINFO_COUNT`]
    /// (what exceeds it).
    TooLarge(&'static str),
}

/// Largest count a slabinfo may hold: per field, for the live objects of all caches
/// together and for the pages of all slabs together (2^40).
pub const MAX_SLABINFO_COUNT: u64 = 1 << 40;

/// A malformed `/proc/slabinfo` input: which line and what is wrong.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SlabinfoError {
    /// 1-based line number.
    pub line: usize,
    /// What is wrong.
    pub kind: SlabinfoErrorKind,
}

impl fmt::Display for SlabinfoError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "slabinfo line {}: ", self.line)?;
        match &self.kind {
            SlabinfoErrorKind::Empty => f.write_str("input is empty"),
            SlabinfoErrorKind::MissingHeader => {
                f.write_str("expected the header `slabinfo - version: 2.1`")
            }
            SlabinfoErrorKind::UnsupportedVersion(v) => {
                write!(f, "version `{v}` is not supported (only 2.1)")
            }
            SlabinfoErrorKind::FieldCount(n) => {
                write!(f, "expected 16 whitespace-separated fields, found {n}")
            }
            SlabinfoErrorKind::Separator { expected, found } => {
                write!(f, "expected `{expected}`, found `{found}`")
            }
            SlabinfoErrorKind::NotANumber { field, found } => {
                write!(
                    f,
                    "field `{field}` is not a non-negative integer: `{found}`"
                )
            }
            SlabinfoErrorKind::Inconsistent(what) => write!(f, "inconsistent counts: {what}"),
            SlabinfoErrorKind::TooLarge(what) => {
                write!(f, "{what} exceeds {MAX_SLABINFO_COUNT} (2^40)")
            }
        }
    }
}

impl core::error::Error for SlabinfoError {}

/// Field positions in a cache line: (index, name) of numbers, (index, text) of separators.
const NUMBERS: [(usize, &str); 11] = [
    (1, "active_objs"),
    (2, "num_objs"),
    (3, "objsize"),
    (4, "objperslab"),
    (5, "pagesperslab"),
    (8, "limit"),
    (9, "batchcount"),
    (10, "sharedfactor"),
    (13, "active_slabs"),
    (14, "num_slabs"),
    (15, "sharedavail"),
];
const SEPARATORS: [(usize, &str); 4] = [(6, ":"), (7, "tunables"), (11, ":"), (12, "slabdata")];

/// Parses `/proc/slabinfo` 2.1 text into its cache lines, in input order.
///
/// # Errors
/// The first malformed line, as a [`SlabinfoError`] with its 1-based number: no header or
/// another version, a field count other than 16, a wrong separator, a non-numeric count,
/// counts that contradict each other (`active_objs > num_objs`,
/// `active_slabs > num_slabs`, objects in a cache with zero objects or pages per slab), or
/// counts beyond [`MAX_SLABINFO_COUNT`] (on the line that takes a total past it).
pub fn parse_slabinfo(text: &str) -> Result<Vec<SlabinfoRow<'_>>, SlabinfoError> {
    let mut lines = text.lines().enumerate().map(|(i, l)| (i + 1, l));
    let (n, header) = lines.next().ok_or(SlabinfoError {
        line: 1,
        kind: SlabinfoErrorKind::Empty,
    })?;
    let version = header
        .trim()
        .strip_prefix("slabinfo - version:")
        .ok_or(SlabinfoError {
            line: n,
            kind: SlabinfoErrorKind::MissingHeader,
        })?
        .trim();
    if version != "2.1" {
        return Err(SlabinfoError {
            line: n,
            kind: SlabinfoErrorKind::UnsupportedVersion(version.to_string()),
        });
    }
    let mut rows = Vec::new();
    let (mut objects, mut pages) = (0u64, 0u64);
    for (n, line) in lines {
        let t = line.trim();
        if t.is_empty() || t.starts_with('#') {
            continue;
        }
        let row = parse_row(n, t).map_err(|kind| SlabinfoError { line: n, kind })?;
        // Each term is at most 2^40 (parse_row), so the sums cannot overflow.
        objects += row.active_objs;
        pages += row.num_slabs * row.pagesperslab;
        let total = if objects > MAX_SLABINFO_COUNT {
            Some("the live objects of all caches")
        } else if pages > MAX_SLABINFO_COUNT {
            Some("the pages of all slabs")
        } else {
            None
        };
        if let Some(what) = total {
            return Err(SlabinfoError {
                line: n,
                kind: SlabinfoErrorKind::TooLarge(what),
            });
        }
        rows.push(row);
    }
    Ok(rows)
}

fn parse_row(line: usize, text: &str) -> Result<SlabinfoRow<'_>, SlabinfoErrorKind> {
    let mut fields = [""; 16];
    let mut count = 0;
    for f in text.split_whitespace() {
        if count < fields.len() {
            fields[count] = f;
        }
        count += 1;
    }
    if count != fields.len() {
        return Err(SlabinfoErrorKind::FieldCount(count));
    }
    for (i, expected) in SEPARATORS {
        if fields[i] != expected {
            return Err(SlabinfoErrorKind::Separator {
                expected,
                found: fields[i].to_string(),
            });
        }
    }
    let mut v = [0u64; 16];
    for (i, field) in NUMBERS {
        v[i] = fields[i]
            .parse()
            .map_err(|_| SlabinfoErrorKind::NotANumber {
                field,
                found: fields[i].to_string(),
            })?;
        if v[i] > MAX_SLABINFO_COUNT {
            return Err(SlabinfoErrorKind::TooLarge(field));
        }
    }
    let row = SlabinfoRow {
        line,
        name: fields[0],
        active_objs: v[1],
        num_objs: v[2],
        objsize: v[3],
        objperslab: v[4],
        pagesperslab: v[5],
        limit: v[8],
        batchcount: v[9],
        sharedfactor: v[10],
        active_slabs: v[13],
        num_slabs: v[14],
        sharedavail: v[15],
    };
    if row.active_objs > row.num_objs {
        return Err(SlabinfoErrorKind::Inconsistent(
            "active_objs exceeds num_objs",
        ));
    }
    if row.active_slabs > row.num_slabs {
        return Err(SlabinfoErrorKind::Inconsistent(
            "active_slabs exceeds num_slabs",
        ));
    }
    if row.num_objs > 0 && (row.objperslab == 0 || row.pagesperslab == 0) {
        return Err(SlabinfoErrorKind::Inconsistent(
            "objects in a cache with zero objects or pages per slab",
        ));
    }
    // Both factors are at most 2^40: the product fits 128 bits.
    if u128::from(row.num_slabs) * u128::from(row.pagesperslab) > u128::from(MAX_SLABINFO_COUNT) {
        return Err(SlabinfoErrorKind::TooLarge("num_slabs * pagesperslab"));
    }
    Ok(row)
}

#[cfg(test)]
mod tests {
    use super::*;
    use alloc::format;

    fn row(active: u64, slabs: u64, pages: u64) -> String {
        format!("kmalloc-64 {active} {active} 64 64 {pages} : tunables 0 0 0 : slabdata {slabs} {slabs} 0\n")
    }

    fn kind(text: &str) -> (usize, SlabinfoErrorKind) {
        let e = parse_slabinfo(text).unwrap_err();
        (e.line, e.kind)
    }

    #[test]
    fn counts_at_the_limit_parse_and_one_past_it_does_not() {
        let head = "slabinfo - version: 2.1\n";
        let at = format!("{head}{}", row(MAX_SLABINFO_COUNT, 1, 1));
        assert_eq!(
            parse_slabinfo(&at).unwrap()[0].active_objs,
            MAX_SLABINFO_COUNT
        );
        let past = format!("{head}{}", row(MAX_SLABINFO_COUNT + 1, 1, 1));
        assert_eq!(kind(&past), (2, SlabinfoErrorKind::TooLarge("active_objs")));
        let max = format!("{head}{}", row(u64::MAX, 1, 1));
        assert_eq!(kind(&max), (2, SlabinfoErrorKind::TooLarge("active_objs")));
    }

    #[test]
    fn totals_past_the_limit_are_refused_on_the_line_that_crosses_it() {
        let head = "slabinfo - version: 2.1\n";
        let half = MAX_SLABINFO_COUNT / 2;
        let objs = format!(
            "{head}{}{}{}",
            row(half, 1, 1),
            row(half, 1, 1),
            row(1, 1, 1)
        );
        assert_eq!(
            kind(&objs),
            (
                4,
                SlabinfoErrorKind::TooLarge("the live objects of all caches")
            )
        );
        let product = format!("{head}{}", row(1, 1 << 21, 1 << 20));
        assert_eq!(
            kind(&product),
            (2, SlabinfoErrorKind::TooLarge("num_slabs * pagesperslab"))
        );
        let pages = format!("{head}{}{}", row(1, 1 << 20, 1 << 20), row(1, 1, 1));
        assert_eq!(
            kind(&pages),
            (3, SlabinfoErrorKind::TooLarge("the pages of all slabs"))
        );
        assert!(parse_slabinfo(&format!("{head}{}", row(1, 1 << 20, 1 << 20))).is_ok());
    }
}
