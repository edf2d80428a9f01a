//! The clock of grant stamps. CLOCK_BOOTTIME in user space is the clock of
//! `bpf_ktime_get_boot_ns()` in the program, and unlike CLOCK_MONOTONIC it
//! keeps counting across suspend, so a grant cannot outlive its window on
//! a host that slept.

use std::time::Duration;

pub fn boottime_ns() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: ts is a valid timespec; CLOCK_BOOTTIME always exists on Linux.
    let rc = unsafe { libc::clock_gettime(libc::CLOCK_BOOTTIME, &mut ts) };
    assert_eq!(rc, 0, "clock_gettime(CLOCK_BOOTTIME) failed");
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

pub fn boottime() -> Duration {
    Duration::from_nanos(boottime_ns())
}
