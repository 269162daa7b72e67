//! The raw-API fuzz target's harness: the input language ([`ops`]), the machine
//! ([`world`]), the expected state ([`model`]) and the run that checks one against the
//! other ([`harness`]). The libFuzzer target and the seed test both call [`run`].

pub mod harness;
pub mod model;
pub mod ops;
pub mod world;

use arbitrary::{Arbitrary, Unstructured};

/// Decodes `data` into a program and runs it; panics on the first broken promise.
pub fn run(data: &[u8]) {
    if let Ok(p) = ops::Program::arbitrary_take_rest(Unstructured::new(data)) {
        harness::run_program(&p);
    }
}
