//! Scenario files: the TOML format, and its validation into a [`Scenario`](crate::Scenario).
//!
//! Every mistake is reported with the file, line, column and field it is about, and why
//! it is wrong: syntax and type errors come from the TOML parser's spans, semantic ones
//! (a mask below all RAM, a field outside its structure) from spans kept on the fields.
//! The format is documented by the built-in scenario, `scenarios/phone.toml`.
//!
//! Whatever drives the model's memory or time is bounded, so no file can make a run take
//! more than the model can hold: the cache ([`MAX_CACHE_BYTES`], [`MAX_CACHE_WAYS`]), the
//! RAM map ([`MAX_RAM_RANGES`], ranges may not overlap), the devices ([`MAX_DEVICES`]),
//! the bounce pool ([`MAX_BOUNCE_POOL_BYTES`]), transfer patterns
//! ([`MAX_TRANSFER_SITES`]), driver weights ([`MAX_DRIVER_WEIGHT`]), background objects
//! ([`MAX_LIVE_OBJECTS`]), the bytes all transfers keep alive at once
//! ([`MAX_RESIDENT_BYTES`]), and every size, depth and count of a transfer; the file
//! itself is read with a size limit ([`crate::input::MAX_SCENARIO_BYTES`]). Validation is
//! linear in the size of the file (device names are looked up in a hash map): 200,000
//! devices are validated in about a second before the device count rejects them.
//!
//! Files, one concept each: `spec.rs`, what a file may say (the serde types);
//! `validate/`, turning that into the [`Scenario`](crate::Scenario), one file per table;
//! `error.rs`, the error and the positions it carries; `limits.rs`, the bounds above.

mod error;
mod limits;
mod spec;
mod validate;

pub use error::ScenarioError;
pub use limits::{
    MAX_BOUNCE_POOL_BYTES, MAX_CACHE_BYTES, MAX_CACHE_WAYS, MAX_DEVICES, MAX_DRIVER_WEIGHT,
    MAX_LIVE_OBJECTS, MAX_RAM_RANGES, MAX_RESIDENT_BYTES, MAX_TRANSFER_SITES,
};
pub use validate::{has_ram_above_4g, lowest_ram, parse_scenario};
