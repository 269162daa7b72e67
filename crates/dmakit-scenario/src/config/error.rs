//! A mistake in a scenario file, and where it is: file, line, column and field.

use std::fmt;
use std::ops::Range;

use toml::Spanned;

use super::spec::SizeText;
use crate::units::parse_size;

/// A mistake in a scenario file.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ScenarioError {
    /// The file (as given by the caller).
    pub file: String,
    /// 1-based line.
    pub line: usize,
    /// 1-based column.
    pub column: usize,
    /// The field (dotted path) or the text the error is about.
    pub field: String,
    /// What is wrong, and what would be right.
    pub message: String,
}

impl fmt::Display for ScenarioError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}:{}:{}: `{}`: {}",
            self.file, self.line, self.column, self.field, self.message
        )
    }
}

impl std::error::Error for ScenarioError {}

/// Builds errors with positions in one file.
pub(super) struct Ctx<'a> {
    pub(super) file: &'a str,
    pub(super) src: &'a str,
}

impl Ctx<'_> {
    pub(super) fn err(
        &self,
        span: Range<usize>,
        field: impl Into<String>,
        msg: impl Into<String>,
    ) -> ScenarioError {
        let at = span.start.min(self.src.len());
        let before = &self.src[..at];
        let line = before.matches('\n').count() + 1;
        let column = before.len() - before.rfind('\n').map_or(0, |i| i + 1) + 1;
        ScenarioError {
            file: self.file.to_string(),
            line,
            column,
            field: field.into(),
            message: msg.into(),
        }
    }

    pub(super) fn size(&self, s: &Spanned<SizeText>, field: &str) -> Result<u64, ScenarioError> {
        match s.get_ref() {
            SizeText::Bytes(b) => Ok(*b),
            SizeText::Text(t) => parse_size(t).ok_or_else(|| {
                self.err(
                    s.span(),
                    field,
                    format!("`{t}` is not a size (write 4096, \"64 KiB\", \"4GiB\" or \"0x1000\")"),
                )
            }),
        }
    }
}
