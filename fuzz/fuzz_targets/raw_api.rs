//! libFuzzer target: the raw `DmaMapper` API on the host platform over real memory, checked
//! against a model of every byte (see `dmakit_fuzz::harness` for what it asserts).

#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| dmakit_fuzz::run(data));
