//! Independent jobs on a bounded number of threads, results in the jobs' order.
//!
//! The policies of a run share nothing (each has its own machine, pool, kmalloc and
//! random stream from the same seed), so they can run at once. Running more at once than
//! the machine has cores only makes them fight for the cores and multiplies the memory in
//! use, so at most `threads` run at a time: each worker takes the next job not yet taken.
//! Which worker runs a job, and when, changes nothing in its result, and results come back
//! in the order of the jobs, so the output is the same whatever the number of threads.

use std::num::NonZeroUsize;
use std::sync::atomic::{AtomicUsize, Ordering};

/// The cores this process may use (1 when that cannot be told).
pub fn machine_cores() -> NonZeroUsize {
    std::thread::available_parallelism().unwrap_or(NonZeroUsize::MIN)
}

/// Runs `job` on every item of `items`, at most `threads` at a time, and returns the
/// results in the order of `items`. Guarantees: every item is run exactly once, on one
/// thread; `None` stands for an item whose run panicked (the other items still run).
/// With one thread (or one item) everything runs on the calling thread.
pub fn run_in_order<T, R, F>(items: &[T], threads: NonZeroUsize, job: F) -> Vec<Option<R>>
where
    T: Sync,
    R: Send,
    F: Fn(&T) -> R + Sync,
{
    let workers = threads.get().min(items.len());
    let guarded =
        |item: &T| std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| job(item))).ok();
    if workers <= 1 {
        return items.iter().map(guarded).collect();
    }
    let next = AtomicUsize::new(0);
    let mut done: Vec<(usize, Option<R>)> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..workers)
            .map(|_| {
                s.spawn(|| {
                    let mut mine = Vec::new();
                    loop {
                        let i = next.fetch_add(1, Ordering::Relaxed);
                        let Some(item) = items.get(i) else {
                            return mine;
                        };
                        mine.push((i, guarded(item)));
                    }
                })
            })
            .collect();
        // A worker cannot panic outside `guarded`; an empty list stands in if it did.
        handles
            .into_iter()
            .flat_map(|h| h.join().unwrap_or_default())
            .collect()
    });
    done.sort_unstable_by_key(|&(i, _)| i);
    let mut out: Vec<Option<R>> = (0..items.len()).map(|_| None).collect();
    for (i, r) in done {
        out[i] = r;
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Mutex;
    use std::time::Duration;

    fn n(k: usize) -> NonZeroUsize {
        NonZeroUsize::new(k).expect("non-zero")
    }

    #[test]
    fn results_come_in_the_order_of_the_items_whatever_finishes_first() {
        // The first items take longest, so with several threads they finish last.
        let items: Vec<u64> = (0..8).collect();
        let slow_first = |&i: &u64| {
            std::thread::sleep(Duration::from_millis((8 - i) * 15));
            i * 10
        };
        let want: Vec<Option<u64>> = items.iter().map(|i| Some(i * 10)).collect();
        for t in [1, 2, 3, 8, 64] {
            assert_eq!(run_in_order(&items, n(t), slow_first), want, "{t} threads");
        }
    }

    #[test]
    fn every_item_runs_once_on_at_most_the_threads_asked_for() {
        let items: Vec<usize> = (0..20).collect();
        let seen = Mutex::new(Vec::new());
        let running = AtomicUsize::new(0);
        let most = AtomicUsize::new(0);
        run_in_order(&items, n(3), |&i| {
            let now = running.fetch_add(1, Ordering::SeqCst) + 1;
            most.fetch_max(now, Ordering::SeqCst);
            std::thread::sleep(Duration::from_millis(5));
            seen.lock().expect("lock").push(i);
            running.fetch_sub(1, Ordering::SeqCst);
        });
        let mut seen = seen.into_inner().expect("lock");
        seen.sort_unstable();
        assert_eq!(seen, items);
        let most = most.into_inner();
        assert!(most <= 3, "{most} ran at once");
    }

    #[test]
    fn a_panicking_item_is_none_and_the_others_still_run() {
        let items = [1, 2, 3, 4];
        for t in [1, 2] {
            let r = run_in_order(&items, n(t), |&i| {
                assert_ne!(i, 2, "item 2 fails");
                i
            });
            assert_eq!(r, vec![Some(1), None, Some(3), Some(4)], "{t} threads");
        }
    }
}
