//! Running the built `dmakit` binary from a test, as a user would.

#![allow(dead_code)] // each test file uses its own part of it

use std::path::PathBuf;
use std::process::{Command, Output};

/// Runs `dmakit ARGS` and waits for it.
pub fn dmakit(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_dmakit"))
        .args(args)
        .output()
        .expect("the binary runs")
}

/// Its standard output, lossily as text.
pub fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

/// Its standard error, lossily as text.
pub fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// A directory of this test process for `name` (created, possibly left from before).
pub fn temp(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("dmakit-cli-{}-{name}", std::process::id()));
    std::fs::create_dir_all(&d).expect("temp dir");
    d
}
