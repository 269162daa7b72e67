//! `modgraph [WORKSPACE]`: checks every library and binary crate of the workspace (default:
//! the current directory) for import cycles between sibling modules, prints each one with
//! the lines that make it, and exits with 1 if there is any, 2 if the workspace cannot be
//! read.

use std::path::PathBuf;
use std::process::ExitCode;

use modgraph::{check_crate, describe, workspace};

fn main() -> ExitCode {
    let dir = std::env::args_os()
        .nth(1)
        .map_or_else(|| PathBuf::from("."), PathBuf::from);
    let crates = match workspace::crates(&dir) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("modgraph: {e}");
            return ExitCode::from(2);
        }
    };
    let mut found = 0;
    for c in &crates {
        match check_crate(&c.root) {
            Ok(cycles) if cycles.is_empty() => println!("{}: no import cycles", c.name),
            Ok(cycles) => {
                println!("{}: {} import cycle(s)", c.name, cycles.len());
                for cycle in &cycles {
                    print!("  {}", describe(cycle, &dir).replace("\n  ", "\n    "));
                }
                found += cycles.len();
            }
            Err(e) => {
                eprintln!("modgraph: {}: {e}", c.name);
                return ExitCode::from(2);
            }
        }
    }
    if found == 0 {
        ExitCode::SUCCESS
    } else {
        println!("{found} import cycle(s) between sibling modules");
        ExitCode::FAILURE
    }
}
