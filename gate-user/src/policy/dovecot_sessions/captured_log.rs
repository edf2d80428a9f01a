//! For the tests: the log records made on this thread while `f` runs.
//! Per thread, so that tests running beside it add nothing; the code
//! under test must log on the calling thread (a current-thread runtime).

use std::{cell::RefCell, sync::Once};

use log::{Level, LevelFilter, Log, Metadata, Record};

thread_local! {
    static CAPTURED: RefCell<Option<Vec<(Level, String)>>> = const { RefCell::new(None) };
}

struct ThisThread;

impl Log for ThisThread {
    fn enabled(&self, _: &Metadata) -> bool {
        true
    }

    fn log(&self, record: &Record) {
        CAPTURED.with(|captured| {
            if let Some(records) = captured.borrow_mut().as_mut() {
                records.push((record.level(), record.args().to_string()));
            }
        });
    }

    fn flush(&self) {}
}

/// Runs `f`, giving what it returned and what it logged (level, message).
pub fn captured<T>(f: impl FnOnce() -> T) -> (T, Vec<(Level, String)>) {
    static INSTALL: Once = Once::new();
    static LOGGER: ThisThread = ThisThread;
    INSTALL.call_once(|| {
        log::set_logger(&LOGGER).expect("no other logger in gate-user's unit tests");
        log::set_max_level(LevelFilter::Trace);
    });
    CAPTURED.with(|captured| *captured.borrow_mut() = Some(Vec::new()));
    let returned = f();
    let records = CAPTURED.with(|captured| captured.borrow_mut().take().unwrap_or_default());
    (returned, records)
}
