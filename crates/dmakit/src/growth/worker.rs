//! A background thread that answers growth requests (with `std`).
//!
//! Pools ask for memory on the map path, where allocating pages is not allowed; this worker
//! receives the requests over a channel and runs the caller's growth function — typically:
//! allocate pages, add them to the pool that asked, retry deferred mappings — on its own
//! thread. Without `std`, implement [`GrowthHook`] with the kernel's own deferred-work
//! mechanism instead.

extern crate std;

use std::sync::mpsc::{channel, Sender};
use std::sync::Mutex;
use std::thread::JoinHandle;

use crate::growth::{GrowthHook, GrowthRequest};

/// A growth hook served by a background thread. Dropping it stops the thread after the
/// requests already sent are handled.
pub struct GrowthWorker {
    sender: Mutex<Option<Sender<GrowthRequest>>>,
    thread: Option<JoinHandle<()>>,
}

impl GrowthWorker {
    /// Starts a thread that calls `grow` for every request, in order.
    ///
    /// # Errors
    /// The operating system's error if the thread cannot be started.
    pub fn spawn<F>(mut grow: F) -> std::io::Result<Self>
    where
        F: FnMut(GrowthRequest) + Send + 'static,
    {
        let (tx, rx) = channel::<GrowthRequest>();
        let thread = std::thread::Builder::new()
            .name("dmakit-growth".into())
            .spawn(move || {
                for req in rx {
                    grow(req);
                }
            })?;
        Ok(Self {
            sender: Mutex::new(Some(tx)),
            thread: Some(thread),
        })
    }
}

impl GrowthHook for GrowthWorker {
    fn request(&self, req: GrowthRequest) {
        if let Ok(guard) = self.sender.lock() {
            if let Some(tx) = guard.as_ref() {
                // The thread only stops when this worker is dropped, so a send cannot fail
                // while `self` is alive; if it did, the pool simply stays as it is.
                let _ = tx.send(req);
            }
        }
    }
}

impl Drop for GrowthWorker {
    fn drop(&mut self) {
        if let Ok(mut guard) = self.sender.lock() {
            guard.take();
        }
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}
