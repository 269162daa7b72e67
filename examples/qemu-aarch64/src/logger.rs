//! `log` records (dmakit-virtio reports failed coherent allocations through them) printed
//! on the UART, warnings and errors only.

use log::{LevelFilter, Log, Metadata, Record};

/// Prints warnings and errors.
struct UartLogger;

impl Log for UartLogger {
    fn enabled(&self, metadata: &Metadata<'_>) -> bool {
        metadata.level() <= LevelFilter::Warn
    }

    fn log(&self, record: &Record<'_>) {
        if self.enabled(record.metadata()) {
            crate::println!("{}: {}", record.level(), record.args());
        }
    }

    fn flush(&self) {}
}

static LOGGER: UartLogger = UartLogger;

/// Installs the logger (a second call changes nothing).
pub fn init() {
    if log::set_logger(&LOGGER).is_ok() {
        log::set_max_level(LevelFilter::Warn);
    }
}
