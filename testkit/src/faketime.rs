//! A program whose wall clock is off: libfaketime (Debian's faketime,
//! installed by `cargo xtask setup`) preloaded, its monotonic clocks left
//! alone. Panics if the library is missing (never skips).

use std::path::Path;

/// Where Debian's libfaketime is.
pub const LIBRARY: &str = "/usr/lib/x86_64-linux-gnu/faketime/libfaketime.so.1";

/// The environment that puts a program's wall clock `offset` off
/// (libfaketime's relative form: "-1h", "+90s").
pub fn wall_clock_off(offset: &'static str) -> [(&'static str, &'static str); 3] {
    assert!(
        Path::new(LIBRARY).exists(),
        "{LIBRARY} is missing: run `cargo xtask setup` (package faketime)"
    );
    [
        ("LD_PRELOAD", LIBRARY),
        ("FAKETIME", offset),
        ("FAKETIME_DONT_FAKE_MONOTONIC", "1"),
    ]
}
