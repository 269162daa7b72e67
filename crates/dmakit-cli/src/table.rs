//! Tables on stdout, and the terminal width the default output keeps to.

use comfy_table::{CellAlignment, ContentArrangement, Table};

/// Columns the default output of every subcommand fits (`--wide` lifts it where offered).
pub const WIDTH: u16 = 100;

/// A table with `header`; columns after the first are right-aligned.
pub fn new(header: &[&str]) -> Table {
    let mut t = Table::new();
    t.set_header(header.to_vec());
    for i in 1..header.len() {
        if let Some(c) = t.column_mut(i) {
            c.set_cell_alignment(CellAlignment::Right);
        }
    }
    t
}

/// [`new`], kept to [`WIDTH`] columns unless `wide`: the widest cells wrap.
pub fn fitted(header: &[&str], wide: bool) -> Table {
    let mut t = new(header);
    if !wide {
        t.set_content_arrangement(ContentArrangement::Dynamic)
            .set_width(WIDTH);
    }
    t
}

/// `text` broken at spaces into lines of at most [`WIDTH`] characters (longer words stay
/// whole), continuation lines indented by `indent` spaces; unchanged when `wide`.
pub fn wrap(text: &str, indent: usize, wide: bool) -> String {
    if wide {
        return text.to_string();
    }
    let width = usize::from(WIDTH);
    let mut out = String::new();
    let (mut len, mut fresh) = (0, true);
    for word in text.split(' ') {
        let w = word.chars().count();
        if !fresh && len + 1 + w > width {
            out.push('\n');
            out.push_str(&" ".repeat(indent));
            (len, fresh) = (indent, true);
        }
        if !fresh {
            out.push(' ');
            len += 1;
        }
        out.push_str(word);
        len += w;
        fresh = false;
    }
    out
}

/// `1234567` → `"1,234,567"`.
pub fn count(n: u64) -> String {
    let s = n.to_string();
    let mut out = String::new();
    for (i, c) in s.chars().enumerate() {
        if i > 0 && (s.len() - i) % 3 == 0 {
            out.push(',');
        }
        out.push(c);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wrapped_lines_fit_and_keep_every_word() {
        let text = "word ".repeat(60) + &"x".repeat(120);
        let w = wrap(text.trim(), 2, false);
        for l in w.lines() {
            assert!(l.chars().count() <= 100 || !l.trim().contains(' '), "{l}");
        }
        assert!(w.lines().skip(1).all(|l| l.starts_with("  ")));
        assert_eq!(
            w.split_whitespace().collect::<Vec<_>>(),
            text.split_whitespace().collect::<Vec<_>>()
        );
        assert_eq!(wrap("short line", 2, false), "short line");
        assert_eq!(wrap(&text, 2, true), text);
    }

    #[test]
    fn fitted_tables_wrap_to_the_width_unless_wide() {
        let mut t = fitted(&["a", "b"], false);
        t.add_row(vec!["y".repeat(80), "z ".repeat(60)]);
        assert!(t.to_string().lines().all(|l| l.chars().count() <= 100));
        let mut w = fitted(&["a", "b"], true);
        w.add_row(vec!["y".repeat(80), "z ".repeat(60)]);
        assert!(w.to_string().lines().any(|l| l.chars().count() > 100));
    }
}
