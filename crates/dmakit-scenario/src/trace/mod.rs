//! Linux's `dma:` trace events, read from the kernel's text output and replayed against
//! the bounce rules (`dmakit replay`).
//!
//! Linux 6.12 and later trace every streaming mapping (device, physical address, size,
//! direction) when `events/dma` is enabled in tracefs, and the `stacktrace` trigger adds the
//! call chain. That is a record of what a real board maps; replaying it answers "what would
//! dmakit's exact rule bounce here, and what does Linux's size-only rule miss?" without
//! running anything on the board.
//!
//! - [`line`](mod@line): one line of the `trace` file or of `trace-cmd report`, split into its parts;
//! - [`fields`]: the payload of each `dma:` event, exactly as the kernel prints it;
//! - [`event`]: the events;
//! - [`reader`]: lines to events with their stack traces, in bounded memory;
//! - [`chain`]: the driver's call chain in a stack trace;
//! - [`replay`](mod@replay): the analysis;
//! - [`write`](mod@write): events in the kernel's text format;
//! - [`emit`]: a simulation's mappings as a trace (`simulate --emit-trace`).

pub mod chain;
pub mod emit;
pub mod event;
pub mod fields;
pub mod line;
pub mod reader;
pub mod replay;
pub mod write;

pub use event::{Event, TraceDir};
pub use reader::{ReadOptions, Record, TraceError, TraceReader};
pub use replay::{replay, Counts, ReplayConfig, ReplayReport};
