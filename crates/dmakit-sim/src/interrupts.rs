//! A local interrupt controller for the model: masking per CPU, pending interrupts, and a
//! watchdog that turns a self-deadlock into a report.
//!
//! dmakit's locks mask interrupts through the system's [`InterruptControl`];
//! [`SimInterrupts`] is that control for the model, so tests can raise an interrupt at the worst moment, inside a map
//! path's critical section, and see what happens. A test thread is one CPU: its masked
//! state, its open lock sections and its pending interrupt are thread-local, and a handler
//! runs on the interrupted thread, as on hardware.
//!
//! The control is installed once per process ([`SimInterrupts::install`]). Its masking can
//! be switched off at run time ([`SimInterrupts::set_masking`]), the control that shows what
//! masking prevents: an interrupt then runs inside the critical section, and a handler that
//! needs the lock held there would spin forever. The watchdog in
//! [`InterruptControl::relax`] bounds that spin: a handler spinning
//! [`WATCHDOG_SPINS`] times on a dmakit lock unwinds with a [`Deadlock`], which
//! [`SimInterrupts::catch_deadlock`] returns to the test.

use std::cell::{Cell, RefCell};
use std::panic::{self, AssertUnwindSafe};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::OnceLock;

use dmakit::platform::{
    install_interrupt_control, AlreadyInstalled, InterruptControl, InterruptState,
};

/// Turns a handler may spin on one dmakit lock before the watchdog declares a deadlock.
/// Without other CPUs contending (a single test thread) any spin in a handler is one.
pub const WATCHDOG_SPINS: u64 = 1 << 20;

/// An interrupt handler: runs on the interrupted thread with interrupts masked.
pub type Handler = Box<dyn FnOnce()>;

/// The watchdog's report: a handler spun on a lock that the code it interrupted holds.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Deadlock {
    /// Lock sections the interrupted code held when the handler started.
    pub held_sections: u32,
}

/// What the controller did, since the process started.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct InterruptStats {
    /// Handlers run at once (raised with interrupts unmasked).
    pub delivered_at_once: u64,
    /// Handlers held pending (raised while masked) and run when interrupts were restored.
    pub delivered_on_restore: u64,
    /// Restores whose state was not saved by the innermost open section: a lock released
    /// out of nesting order (must stay 0).
    pub out_of_order_restores: u64,
}

/// The handler waiting on this CPU, if any.
enum Slot {
    Idle,
    /// Raised at the next lock section opened inside another one.
    Armed(Handler),
    /// Raised while masked: runs when interrupts are restored to unmasked.
    Pending(Handler),
}

thread_local! {
    static MASKED: Cell<bool> = const { Cell::new(false) };
    /// Lock sections open on this CPU.
    static DEPTH: Cell<u32> = const { Cell::new(0) };
    /// A handler waits in `SLOT` (checked first, so idle CPUs never touch the slot).
    static WAITING: Cell<bool> = const { Cell::new(false) };
    static SLOT: RefCell<Slot> = const { RefCell::new(Slot::Idle) };
    /// Sections open when the running handler started; `None` outside handlers.
    static HANDLER_OVER: Cell<Option<u32>> = const { Cell::new(None) };
    static SPINS: Cell<u64> = const { Cell::new(0) };
}

/// The model's interrupt controller (one per process).
pub struct SimInterrupts {
    masking: AtomicBool,
    at_once: AtomicU64,
    on_restore: AtomicU64,
    out_of_order: AtomicU64,
}

static CONTROLLER: SimInterrupts = SimInterrupts {
    masking: AtomicBool::new(true),
    at_once: AtomicU64::new(0),
    on_restore: AtomicU64::new(0),
    out_of_order: AtomicU64::new(0),
};

static INSTALLED: OnceLock<Result<(), AlreadyInstalled>> = OnceLock::new();

/// The state word: sections open before, and whether interrupts were masked.
fn encode(depth: u32, masked: bool) -> InterruptState {
    InterruptState(((depth as usize) << 1) | usize::from(masked))
}

impl SimInterrupts {
    /// Installs the model's controller as the system's interrupt control (once; later
    /// calls return the same controller).
    ///
    /// # Errors
    /// [`AlreadyInstalled`] when another control was installed first.
    pub fn install() -> Result<&'static SimInterrupts, AlreadyInstalled> {
        (*INSTALLED.get_or_init(|| install_interrupt_control(&CONTROLLER))).map(|()| &CONTROLLER)
    }

    /// Whether `disable` masks interrupts (the default). Off is the control: interrupts
    /// arrive inside critical sections. Process-wide: tests that switch it run one at a
    /// time.
    pub fn set_masking(&self, on: bool) {
        self.masking.store(on, Ordering::SeqCst);
    }

    /// Whether interrupts are masked on this CPU.
    pub fn masked(&self) -> bool {
        MASKED.get()
    }

    /// Lock sections open on this CPU.
    pub fn open_sections(&self) -> u32 {
        DEPTH.get()
    }

    /// What the controller did so far.
    pub fn stats(&self) -> InterruptStats {
        InterruptStats {
            delivered_at_once: self.at_once.load(Ordering::SeqCst),
            delivered_on_restore: self.on_restore.load(Ordering::SeqCst),
            out_of_order_restores: self.out_of_order.load(Ordering::SeqCst),
        }
    }

    /// Raises an interrupt on this CPU: `handler` runs now when interrupts are unmasked,
    /// else when they are restored to unmasked. One interrupt waits at a time: a second
    /// raised while one waits replaces it.
    pub fn raise(&self, handler: Handler) {
        if MASKED.get() {
            self.put(Slot::Pending(handler));
        } else {
            self.at_once.fetch_add(1, Ordering::SeqCst);
            run(handler);
        }
    }

    /// Raises `handler` at the moment this CPU next takes a dmakit lock while it holds
    /// another: inside a critical section of a map path.
    pub fn raise_in_next_nested_section(&self, handler: Handler) {
        self.put(Slot::Armed(handler));
    }

    /// Runs `f`; a [`Deadlock`] the watchdog found inside it is returned instead of
    /// unwinding further. Other panics continue.
    ///
    /// # Errors
    /// The [`Deadlock`] found.
    pub fn catch_deadlock<R>(&self, f: impl FnOnce() -> R) -> Result<R, Deadlock> {
        panic::catch_unwind(AssertUnwindSafe(f)).map_err(|payload| {
            match payload.downcast::<Deadlock>() {
                Ok(d) => *d,
                Err(other) => panic::resume_unwind(other),
            }
        })
    }

    fn put(&self, slot: Slot) {
        SLOT.with_borrow_mut(|s| *s = slot);
        WAITING.set(true);
    }

    /// Takes the waiting handler if it is armed (`armed`) or pending (`!armed`).
    fn take(&self, armed: bool) -> Option<Handler> {
        if !WAITING.get() {
            return None;
        }
        SLOT.with_borrow_mut(|s| match std::mem::replace(s, Slot::Idle) {
            Slot::Armed(h) if armed => Some(h),
            Slot::Pending(h) if !armed => Some(h),
            other => {
                *s = other;
                None
            }
        })
        .inspect(|_| WAITING.set(false))
    }
}

/// Runs a handler as the CPU would: interrupts masked, the watchdog armed over the
/// sections open now; both restored however the handler ends.
fn run(handler: Handler) {
    struct Exit {
        masked: bool,
        over: Option<u32>,
    }
    impl Drop for Exit {
        fn drop(&mut self) {
            MASKED.set(self.masked);
            HANDLER_OVER.set(self.over);
        }
    }
    let _exit = Exit {
        masked: MASKED.replace(true),
        over: HANDLER_OVER.replace(Some(DEPTH.get())),
    };
    SPINS.set(0);
    handler();
}

// SAFETY: `disable` masks in the model's sense: while a thread's state is masked, an
// interrupt raised on it is held pending and delivered only by a `restore` to unmasked.
// `restore` puts back the masked state it is given. A test thread is a CPU and never
// migrates. Neither method takes a dmakit lock; both run handlers, which may, only at the
// points where hardware would deliver the interrupt. With masking switched off the
// controller deliberately breaks the contract (the control), and the watchdog ends the
// resulting deadlock.
unsafe impl InterruptControl for SimInterrupts {
    fn disable(&self) -> InterruptState {
        let (depth, masked) = (DEPTH.get(), MASKED.get());
        if self.masking.load(Ordering::SeqCst) {
            MASKED.set(true);
        }
        if depth > 0 {
            if let Some(h) = self.take(true) {
                self.raise(h);
            }
        }
        DEPTH.set(depth + 1);
        encode(depth, masked)
    }

    unsafe fn restore(&self, previous: InterruptState) {
        let (depth, masked) = ((previous.0 >> 1) as u32, previous.0 & 1 == 1);
        let now = DEPTH.get();
        if now != depth + 1 {
            self.out_of_order.fetch_add(1, Ordering::SeqCst);
        }
        DEPTH.set(now.saturating_sub(1));
        MASKED.set(masked);
        if !masked {
            if let Some(h) = self.take(false) {
                self.on_restore.fetch_add(1, Ordering::SeqCst);
                run(h);
            }
        }
    }

    fn relax(&self) {
        std::hint::spin_loop();
        if let Some(held) = HANDLER_OVER.get() {
            let spins = SPINS.get() + 1;
            SPINS.set(spins);
            if spins >= WATCHDOG_SPINS {
                panic::panic_any(Deadlock {
                    held_sections: held,
                });
            }
        }
    }
}
