//! Reading input files with a size limit.
//!
//! Scenario and slabinfo files come from users and may be anything: `/dev/zero`, a FIFO,
//! a multi-gigabyte log given by mistake. [`read_text`] reads at most one byte past the
//! limit, so such an input fails fast with a message naming the file and the limit instead
//! of growing memory without bound.

use std::fs::File;
use std::io::Read;
use std::path::Path;

use dmakit::reintroduce::{self, Defect};

/// Largest scenario file accepted (4 MiB; the built-in one takes 9 KiB). The TOML parser
/// holds the whole document, at up to about 80 bytes of memory per byte of a file of tiny
/// values, so this bounds the memory a scenario file can take to about 320 MiB.
pub const MAX_SCENARIO_BYTES: u64 = 4 << 20;

/// Largest slabinfo file accepted (4 MiB: a real `/proc/slabinfo` takes tens of KiB).
pub const MAX_SLABINFO_BYTES: u64 = 4 << 20;

/// Reads the UTF-8 text of `path`, `what` naming it in errors ("scenario file").
///
/// Reads at most `limit + 1` bytes, whatever the file is (a device like `/dev/zero`, a
/// pipe, a regular file).
///
/// # Errors
/// A message naming `what` and the path when the file cannot be opened or read, holds
/// more than `limit` bytes, or is not UTF-8.
pub fn read_text(path: &Path, limit: u64, what: &str) -> Result<String, String> {
    let name = path.display();
    if reintroduce::active(Defect::CliInputUnbounded) {
        return std::fs::read_to_string(path)
            .map_err(|e| format!("cannot read {what} {name}: {e}"));
    }
    let file = File::open(path).map_err(|e| format!("cannot read {what} {name}: {e}"))?;
    let mut bytes = Vec::new();
    file.take(limit.saturating_add(1))
        .read_to_end(&mut bytes)
        .map_err(|e| format!("cannot read {what} {name}: {e}"))?;
    if bytes.len() as u64 > limit {
        return Err(format!(
            "{what} {name} is larger than {limit} bytes, the most dmakit reads; is it the \
             right file?"
        ));
    }
    String::from_utf8(bytes).map_err(|e| {
        format!(
            "{what} {name} is not UTF-8 text (invalid byte at offset {})",
            e.utf8_error().valid_up_to()
        )
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_bottomless_file_fails_at_the_limit() {
        let e = read_text(Path::new("/dev/zero"), 4096, "scenario file").unwrap_err();
        assert!(
            e.contains("/dev/zero") && e.contains("larger than 4096 bytes"),
            "{e}"
        );
    }

    #[test]
    fn a_file_at_the_limit_is_read_and_one_past_it_is_not() {
        let dir = std::env::temp_dir().join(format!("dmakit-input-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let p = dir.join("f.txt");
        std::fs::write(&p, "x".repeat(100)).unwrap();
        assert_eq!(read_text(&p, 100, "file").unwrap().len(), 100);
        assert!(read_text(&p, 99, "file")
            .unwrap_err()
            .contains("larger than 99"));
        std::fs::write(&p, [0x61, 0xff, 0x62]).unwrap();
        let e = read_text(&p, 100, "slabinfo file").unwrap_err();
        assert!(e.contains("not UTF-8") && e.contains("offset 1"), "{e}");
        assert!(read_text(&dir.join("missing"), 100, "file")
            .unwrap_err()
            .contains("cannot read file"));
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
