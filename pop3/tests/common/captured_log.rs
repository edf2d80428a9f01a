//! The log lines of a test binary's servers, captured for its tests to
//! look for. Tests running at the same time log here too: a test finds its
//! own lines by a loopback address no other test uses.

use std::{
    sync::{Mutex, OnceLock},
    time::{Duration, Instant},
};

/// How long a line may take to be logged: only a hang takes longer.
const LOGGED_WITHIN: Duration = Duration::from_secs(30);

/// Every line logged since `capture_log` ran.
struct Captured(Mutex<Vec<String>>);

impl log::Log for Captured {
    fn enabled(&self, _: &log::Metadata) -> bool {
        true
    }

    fn log(&self, record: &log::Record) {
        self.0.lock().unwrap().push(record.args().to_string());
    }

    fn flush(&self) {}
}

static LOG: Captured = Captured(Mutex::new(Vec::new()));

pub fn capture_log() {
    static INSTALLED: OnceLock<()> = OnceLock::new();
    INSTALLED.get_or_init(|| {
        log::set_logger(&LOG).expect("the only logger of this binary");
        log::set_max_level(log::LevelFilter::Debug);
    });
}

pub fn logged() -> Vec<String> {
    LOG.0.lock().unwrap().clone()
}

/// Waits for a logged line containing `needle` and gives it.
pub async fn logged_line(needle: &str) -> String {
    let deadline = Instant::now() + LOGGED_WITHIN;
    loop {
        if let Some(line) = logged().into_iter().find(|l| l.contains(needle)) {
            return line;
        }
        assert!(
            Instant::now() < deadline,
            "no line with {needle:?} logged:\n{}",
            logged().join("\n")
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}
