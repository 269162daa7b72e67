//! Trace text to events, each with the call chain its `stacktrace` trigger recorded, in
//! bounded memory whatever the input.
//!
//! A `<stack trace>` entry belongs to the event recorded just before it on the same CPU
//! (the trigger runs right after the event, on the CPU that recorded it); in the `trace`
//! file entries of other CPUs may come between them. So the reader keeps, per CPU, the
//! last `dma:` event until the next entry of that CPU shows whether a stack follows, and
//! hands events out when complete (not always in line order; the replay does not care).
//!
//! Bounds: a line holds at most [`MAX_LINE_BYTES`] (longer is malformed), a stack at most
//! [`MAX_FRAMES`] frames of [`MAX_FRAME_BYTES`] each (the rest are dropped), and at most
//! [`MAX_CPU`](super::line::MAX_CPU)` + 1` events wait for their stacks.

use std::collections::{BTreeMap, VecDeque};
use std::fmt;
use std::io::BufRead;

use super::event::Event;
use super::fields::parse_payload;
use super::line::{classify, Line};

/// The longest line accepted, in bytes (a `dma_map_sg` of 128 entries takes about 8 KiB).
pub const MAX_LINE_BYTES: usize = 64 * 1024;
/// Frames kept per stack trace.
pub const MAX_FRAMES: usize = 64;
/// Bytes kept per frame.
pub const MAX_FRAME_BYTES: usize = 256;

/// How to treat malformed lines.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ReadOptions {
    /// Count and skip malformed lines instead of stopping at the first.
    pub lenient: bool,
}

/// Why a trace could not be read.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum TraceError {
    /// Reading the input failed.
    Io(String),
    /// Line `line` (counted from 1) is not as the kernel prints it.
    Malformed {
        /// The line number.
        line: u64,
        /// What is wrong.
        message: String,
    },
}

impl fmt::Display for TraceError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            TraceError::Io(e) => write!(f, "cannot read the trace: {e}"),
            TraceError::Malformed { line, message } => {
                write!(f, "line {line}: {message} (--lenient skips such lines)")
            }
        }
    }
}

impl std::error::Error for TraceError {}

/// One event with its call chain.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Record {
    /// The line it was on.
    pub line: u64,
    /// The event.
    pub event: Event,
    /// The frames of its `<stack trace>`, innermost first (empty without one).
    pub frames: Vec<String>,
}

/// What the reader saw besides events.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ReadStats {
    /// Lines read.
    pub lines: u64,
    /// Entries of other events and tracers, ignored.
    pub other_entries: u64,
    /// Malformed lines skipped (lenient only).
    pub skipped_lines: u64,
    /// The first skipped line's error.
    pub first_skipped: Option<TraceError>,
    /// Entries the kernel's ring buffer dropped (`[LOST N EVENTS]`).
    pub lost_events: u64,
}

/// Reads `dma:` events from trace text.
pub struct TraceReader<R> {
    input: R,
    options: ReadOptions,
    buf: Vec<u8>,
    /// Per CPU: the last event, waiting to see whether a stack follows.
    pending: BTreeMap<u32, Record>,
    /// The CPU whose stack block is being read, if any.
    stack_of: Option<u32>,
    ready: VecDeque<Record>,
    stats: ReadStats,
    done: bool,
}

enum Raw {
    Line,
    TooLong,
    Eof,
}

impl<R: BufRead> TraceReader<R> {
    /// A reader of `input`.
    pub fn new(input: R, options: ReadOptions) -> Self {
        Self {
            input,
            options,
            buf: Vec::new(),
            pending: BTreeMap::new(),
            stack_of: None,
            ready: VecDeque::new(),
            stats: ReadStats::default(),
            done: false,
        }
    }

    /// What was seen so far besides events.
    pub fn stats(&self) -> &ReadStats {
        &self.stats
    }

    /// The next event, `None` at the end.
    ///
    /// # Errors
    /// [`TraceError::Io`] when reading fails; [`TraceError::Malformed`] for the first
    /// malformed line unless [`ReadOptions::lenient`].
    pub fn next_record(&mut self) -> Result<Option<Record>, TraceError> {
        loop {
            if let Some(r) = self.ready.pop_front() {
                return Ok(Some(r));
            }
            if self.done {
                return Ok(None);
            }
            let raw = self.read_line()?;
            if matches!(raw, Raw::Eof) {
                self.close_stack();
                let mut rest: Vec<Record> =
                    std::mem::take(&mut self.pending).into_values().collect();
                rest.sort_by_key(|r| r.line);
                self.ready.extend(rest);
                self.done = true;
                continue;
            }
            self.stats.lines += 1;
            let n = self.stats.lines;
            if let Err(message) = self.take_line(raw, n) {
                let e = TraceError::Malformed { line: n, message };
                if !self.options.lenient {
                    return Err(e);
                }
                self.stats.skipped_lines += 1;
                self.stats.first_skipped.get_or_insert(e);
            }
        }
    }

    fn take_line(&mut self, raw: Raw, n: u64) -> Result<(), String> {
        // The line's text borrows the buffer while the state changes.
        let buf = std::mem::take(&mut self.buf);
        let r = self.take_text(&buf, raw, n);
        self.buf = buf;
        r
    }

    fn take_text(&mut self, buf: &[u8], raw: Raw, n: u64) -> Result<(), String> {
        if matches!(raw, Raw::TooLong) {
            self.close_stack();
            return Err(format!("longer than {MAX_LINE_BYTES} bytes"));
        }
        let text = std::str::from_utf8(buf).map_err(|e| {
            format!(
                "not UTF-8 text (invalid byte at column {})",
                e.valid_up_to() + 1
            )
        });
        let text = match text {
            Ok(t) => t,
            Err(e) => {
                self.close_stack();
                return Err(e);
            }
        };
        let line = match classify(text) {
            Ok(l) => l,
            Err(e) => {
                self.close_stack();
                return Err(e);
            }
        };
        if let Line::Frame(f) = line {
            let Some(cpu) = self.stack_of else {
                return Err("a stack frame outside a `<stack trace>` block".into());
            };
            if let Some(r) = self.pending.get_mut(&cpu) {
                if r.frames.len() < MAX_FRAMES {
                    r.frames.push(clip_frame(f));
                }
            }
            return Ok(());
        }
        self.close_stack();
        match line {
            Line::Frame(_) | Line::Header => {}
            Line::Other => self.stats.other_entries += 1,
            Line::Lost { events } => self.stats.lost_events += events,
            Line::Stack { cpu } => self.stack_of = Some(cpu),
            Line::Entry { cpu, name, payload } => {
                // Whatever follows on this CPU, the previous event's stack is not coming.
                if let Some(prev) = self.pending.remove(&cpu) {
                    self.ready.push_back(prev);
                }
                match parse_payload(name, payload)? {
                    Some(event) => {
                        let r = Record {
                            line: n,
                            event,
                            frames: Vec::new(),
                        };
                        self.pending.insert(cpu, r);
                    }
                    None => self.stats.other_entries += 1,
                }
            }
        }
        Ok(())
    }

    /// A stack block ends at any line that is not a frame: its event is complete.
    fn close_stack(&mut self) {
        if let Some(cpu) = self.stack_of.take() {
            if let Some(r) = self.pending.remove(&cpu) {
                self.ready.push_back(r);
            }
        }
    }

    /// Reads one line into `buf` (without the newline or a `\r` before it), never holding
    /// more than [`MAX_LINE_BYTES`] of it.
    fn read_line(&mut self) -> Result<Raw, TraceError> {
        self.buf.clear();
        let mut too_long = false;
        let mut any = false;
        loop {
            let avail = self
                .input
                .fill_buf()
                .map_err(|e| TraceError::Io(e.to_string()))?;
            if avail.is_empty() {
                break;
            }
            any = true;
            let (chunk, used, end) = match avail.iter().position(|&b| b == b'\n') {
                Some(i) => (&avail[..i], i + 1, true),
                None => (avail, avail.len(), false),
            };
            if self.buf.len() + chunk.len() > MAX_LINE_BYTES {
                too_long = true;
            } else if !too_long {
                self.buf.extend_from_slice(chunk);
            }
            self.input.consume(used);
            // Strict reading stops at the first malformed line: no need to find its end
            // (an input without newlines, like /dev/zero, has none).
            if end || (too_long && !self.options.lenient) {
                break;
            }
        }
        if !any {
            return Ok(Raw::Eof);
        }
        if too_long {
            return Ok(Raw::TooLong);
        }
        if self.buf.last() == Some(&b'\r') {
            self.buf.pop();
        }
        Ok(Raw::Line)
    }
}

fn clip_frame(f: &str) -> String {
    let mut end = f.len().min(MAX_FRAME_BYTES);
    while !f.is_char_boundary(end) {
        end -= 1;
    }
    f[..end].to_string()
}
