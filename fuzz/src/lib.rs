//! The raw-API fuzz target's harness: the input language ([`ops`]), the machine
//! ([`world`]), the expected state ([`model`]) and the run that checks one against the
//! other ([`harness`]). The libFuzzer target and the seed test both call [`run`].

pub mod harness;
pub mod model;
pub mod ops;
pub mod world;

use std::sync::OnceLock;

use arbitrary::{Arbitrary, Unstructured};

pub use harness::Known;

/// Decodes `data` into a program and runs it, stepping over the known findings in
/// `DMAKIT_FUZZ_KNOWN` (read once); panics on the first broken promise.
pub fn run(data: &[u8]) {
    static KNOWN: OnceLock<Known> = OnceLock::new();
    run_with(data, KNOWN.get_or_init(Known::from_env));
}

/// As [`run`], stepping over `known`.
pub fn run_with(data: &[u8], known: &Known) {
    if let Ok(p) = ops::Program::arbitrary_take_rest(Unstructured::new(data)) {
        harness::run_program(&p, known);
    }
}
