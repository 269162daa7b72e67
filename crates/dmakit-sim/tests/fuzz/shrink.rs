//! Running a case under a watchdog, and shrinking a failing case by delta debugging.

use std::panic::{self, AssertUnwindSafe};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{mpsc, Arc, Once};
use std::thread;
use std::time::{Duration, Instant};

use super::check::Violation;
use super::exec::State;
use super::ops::Op;
use super::rig::RigOptions;

/// Why a case failed, and at which step (`ops.len()` for the final checks).
#[derive(Clone, Debug)]
pub struct CaseFailure {
    pub step: usize,
    pub violation: Violation,
}

const CASE_THREAD: &str = "fuzz-case";

/// Panics on case threads are caught and reported with their case; keep them off stderr.
fn quiet_case_panics() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        let prev = panic::take_hook();
        panic::set_hook(Box::new(move |info| {
            if thread::current().name() == Some(CASE_THREAD) {
                let at = info.location().map(|l| l.to_string()).unwrap_or_default();
                PANIC_AT.with(|p| *p.borrow_mut() = at);
            } else {
                prev(info);
            }
        }));
    });
}

thread_local! {
    /// Where the last panic of this case thread happened.
    static PANIC_AT: std::cell::RefCell<String> = const { std::cell::RefCell::new(String::new()) };
}

/// Runs `ops` on a fresh rig, then the final checks. Returns the first violation; a panic
/// is one (invariant `panic`). `progress` holds the step under way.
fn execute(o: RigOptions, ops: &[Op], progress: &AtomicUsize) -> Result<(), CaseFailure> {
    let r = panic::catch_unwind(AssertUnwindSafe(|| {
        let mut st = State::new(o);
        for (i, op) in ops.iter().enumerate() {
            progress.store(i, Ordering::SeqCst);
            st.step(op).map_err(|v| CaseFailure {
                step: i,
                violation: v,
            })?;
            if i % 64 == 63 {
                st.check_idle_buffers().map_err(|v| CaseFailure {
                    step: i,
                    violation: v,
                })?;
            }
        }
        progress.store(ops.len(), Ordering::SeqCst);
        st.finish().map_err(|v| CaseFailure {
            step: ops.len(),
            violation: v,
        })
    }));
    match r {
        Ok(r) => r,
        Err(p) => {
            let msg = p
                .downcast_ref::<String>()
                .cloned()
                .or_else(|| p.downcast_ref::<&str>().map(|s| s.to_string()))
                .unwrap_or_else(|| "(no message)".into());
            Err(CaseFailure {
                step: progress.load(Ordering::SeqCst),
                violation: Violation {
                    invariant: "panic",
                    detail: format!("{msg} at {}", PANIC_AT.with(|p| p.borrow().clone())),
                },
            })
        }
    }
}

/// [`execute`] on a worker thread with a watchdog: a case that runs longer than `limit` is
/// a failure (invariant `hang`) at the step it was in. The hung thread cannot be stopped;
/// it is left behind (its case has failed anyway).
pub fn run_watched(o: RigOptions, ops: &[Op], limit: Duration) -> Result<(), CaseFailure> {
    quiet_case_panics();
    let progress = Arc::new(AtomicUsize::new(0));
    let (tx, rx) = mpsc::channel();
    let ops_owned = ops.to_vec();
    let p = progress.clone();
    thread::Builder::new()
        .name(CASE_THREAD.into())
        .spawn(move || {
            let _ = tx.send(execute(o, &ops_owned, &p));
        })
        .expect("spawn a case thread");
    match rx.recv_timeout(limit) {
        Ok(r) => r,
        Err(_) => Err(CaseFailure {
            step: progress.load(Ordering::SeqCst),
            violation: Violation {
                invariant: "hang",
                detail: format!("the case did not finish within {limit:?}"),
            },
        }),
    }
}

/// The smallest subsequence of `ops` found (delta debugging, within `budget`) that still
/// fails with the same invariant. A hang is not shrunk: every try would leave a spinning
/// thread behind.
pub fn shrink(
    o: RigOptions,
    ops: &[Op],
    first: &CaseFailure,
    limit: Duration,
    budget: Duration,
) -> (Vec<Op>, CaseFailure) {
    let mut best: Vec<Op> = ops[..(first.step + 1).min(ops.len())].to_vec();
    let mut best_f = first.clone();
    if first.violation.invariant == "hang" {
        return (best, best_f);
    }
    let start = Instant::now();
    let same = |cand: &[Op]| -> Option<CaseFailure> {
        match run_watched(o, cand, limit) {
            Err(f) if f.violation.invariant == first.violation.invariant => Some(f),
            _ => None,
        }
    };
    let mut n = 2usize;
    while best.len() >= 2 && start.elapsed() < budget {
        let chunk = best.len().div_ceil(n);
        let mut reduced = false;
        let mut i = 0;
        while i < best.len() && start.elapsed() < budget {
            let cand: Vec<Op> = best[..i]
                .iter()
                .chain(&best[(i + chunk).min(best.len())..])
                .cloned()
                .collect();
            if let Some(f) = same(&cand) {
                let keep = (f.step + 1).min(cand.len());
                best = cand[..keep].to_vec();
                best_f = f;
                n = (n - 1).max(2);
                reduced = true;
            } else {
                i += chunk;
            }
        }
        if !reduced {
            if chunk == 1 {
                break;
            }
            n = (n * 2).min(best.len());
        }
    }
    (best, best_f)
}
