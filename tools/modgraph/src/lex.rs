//! Tokens of Rust source, without comments and literals.
//!
//! The module graph is read from paths in code, so the one thing the lexer must get exactly
//! right is what is *not* code: line and block comments (doc comments included, block
//! comments nested), string, byte-string, C-string and raw-string literals, and character
//! literals, which must not be confused with lifetimes. Everything else is reduced to
//! identifiers, `::` and single punctuation characters; numbers are dropped.

/// One token of code.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Tok {
    /// An identifier or keyword (a raw identifier keeps its `r#`).
    Ident(String),
    /// `::`.
    PathSep,
    /// Any other punctuation character.
    Punct(char),
}

/// A token and the line (from 1) it starts on.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Token {
    /// The token.
    pub tok: Tok,
    /// Its line.
    pub line: u32,
}

fn is_ident_start(c: char) -> bool {
    c == '_' || c.is_alphabetic()
}

fn is_ident_char(c: char) -> bool {
    c == '_' || c.is_alphanumeric()
}

struct Lexer {
    chars: Vec<char>,
    pos: usize,
    line: u32,
}

impl Lexer {
    fn peek(&self, ahead: usize) -> Option<char> {
        self.chars.get(self.pos + ahead).copied()
    }

    fn bump(&mut self) -> Option<char> {
        let c = self.peek(0)?;
        self.pos += 1;
        if c == '\n' {
            self.line += 1;
        }
        Some(c)
    }

    /// Skips a quoted literal whose opening quote is the next character; `\` escapes the
    /// character after it.
    fn skip_quoted(&mut self, quote: char) {
        self.bump();
        while let Some(c) = self.bump() {
            if c == '\\' {
                self.bump();
            } else if c == quote {
                return;
            }
        }
    }

    /// Skips a raw string whose `#`s (possibly none) and opening quote are next.
    fn skip_raw(&mut self) {
        let mut hashes = 0;
        while self.peek(0) == Some('#') {
            hashes += 1;
            self.bump();
        }
        self.bump();
        while let Some(c) = self.bump() {
            if c == '"' && (0..hashes).all(|k| self.peek(k) == Some('#')) {
                for _ in 0..hashes {
                    self.bump();
                }
                return;
            }
        }
    }

    fn skip_block_comment(&mut self) {
        self.pos += 2;
        let mut depth = 1;
        while depth > 0 {
            match (self.peek(0), self.peek(1)) {
                (Some('/'), Some('*')) => {
                    self.pos += 2;
                    depth += 1;
                }
                (Some('*'), Some('/')) => {
                    self.pos += 2;
                    depth -= 1;
                }
                (Some(_), _) => {
                    self.bump();
                }
                (None, _) => return,
            }
        }
    }

    /// After a literal prefix (`r`, `b`, `br`, `c`, `cr`) at the cursor of `len` characters:
    /// whether a literal follows, and skips it if so.
    fn skip_prefixed_literal(&mut self, len: usize) -> bool {
        let raw = self.peek(len - 1) == Some('r');
        match self.peek(len) {
            Some('"') if !raw => {
                self.pos += len;
                self.skip_quoted('"');
                true
            }
            Some('\'') if len == 1 && self.peek(0) == Some('b') => {
                self.pos += 1;
                self.skip_quoted('\'');
                true
            }
            Some('"') => {
                self.pos += len;
                self.skip_raw();
                true
            }
            Some('#') if raw && matches!(self.peek(len + 1), Some('"' | '#')) => {
                self.pos += len;
                self.skip_raw();
                true
            }
            _ => false,
        }
    }

    /// A `'` at the cursor: skips a character literal, or a lifetime or label.
    fn skip_quote(&mut self) {
        if self.peek(1) == Some('\\') || self.peek(2) == Some('\'') {
            self.skip_quoted('\'');
        } else {
            self.bump();
            while self.peek(0).is_some_and(is_ident_char) {
                self.bump();
            }
        }
    }

    fn ident(&mut self) -> String {
        let mut s = String::new();
        if self.peek(0) == Some('r') && self.peek(1) == Some('#') {
            s.push_str("r#");
            self.pos += 2;
        }
        while let Some(c) = self.peek(0).filter(|&c| is_ident_char(c)) {
            s.push(c);
            self.pos += 1;
        }
        s
    }
}

/// The code tokens of `src`.
pub fn tokens(src: &str) -> Vec<Token> {
    let mut lx = Lexer {
        chars: src.chars().collect(),
        pos: 0,
        line: 1,
    };
    let mut out = Vec::new();
    while let Some(c) = lx.peek(0) {
        let line = lx.line;
        match c {
            _ if c.is_whitespace() => {
                lx.bump();
            }
            '/' if lx.peek(1) == Some('/') => {
                while lx.peek(0).is_some_and(|c| c != '\n') {
                    lx.bump();
                }
            }
            '/' if lx.peek(1) == Some('*') => lx.skip_block_comment(),
            '"' => lx.skip_quoted('"'),
            '\'' => lx.skip_quote(),
            'r' | 'b' | 'c' => {
                let prefix = match (c, lx.peek(1)) {
                    ('b' | 'c', Some('r')) => 2,
                    _ => 1,
                };
                if !lx.skip_prefixed_literal(prefix) {
                    let s = lx.ident();
                    out.push(Token {
                        tok: Tok::Ident(s),
                        line,
                    });
                }
            }
            _ if is_ident_start(c) => {
                let s = lx.ident();
                out.push(Token {
                    tok: Tok::Ident(s),
                    line,
                });
            }
            _ if c.is_ascii_digit() => {
                while lx.peek(0).is_some_and(is_ident_char) {
                    lx.bump();
                }
            }
            ':' if lx.peek(1) == Some(':') => {
                lx.pos += 2;
                out.push(Token {
                    tok: Tok::PathSep,
                    line,
                });
            }
            _ => {
                lx.bump();
                out.push(Token {
                    tok: Tok::Punct(c),
                    line,
                });
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn idents(src: &str) -> Vec<String> {
        tokens(src)
            .into_iter()
            .filter_map(|t| match t.tok {
                Tok::Ident(s) => Some(s),
                _ => None,
            })
            .collect()
    }

    #[test]
    fn comments_and_literals_are_not_code() {
        let src = r####"
            /// crate::doc
            //! crate::inner
            /* crate::block /* nested crate::x */ still comment */
            let a = "crate::string \" crate::escaped";
            let b = r#"crate::raw "# ;
            let c = br##"crate::raw "# bytes"##;
            let d = b"crate::bytes";
            let e = '"'; let f = '\''; let g: &'static str = x;
            real
        "####;
        assert_eq!(
            idents(src),
            [
                "let", "a", "let", "b", "let", "c", "let", "d", "let", "e", "let", "f", "let", "g",
                "str", "x", "real"
            ]
        );
    }

    #[test]
    fn paths_keep_their_lines() {
        let t = tokens("a\n  crate::b");
        assert_eq!(t[1].tok, Tok::Ident("crate".into()));
        assert_eq!(t[1].line, 2);
        assert_eq!(t[2].tok, Tok::PathSep);
        assert_eq!(
            idents("r#mod r#type br rb"),
            ["r#mod", "r#type", "br", "rb"]
        );
    }
}
