//! Placing work on one CPU. The kernel's LRU hash (the grant maps) keeps
//! free slots and fresh entries in per-CPU lists, so which CPU writes a
//! grant decides which grants an eviction takes; tests and benchmarks that
//! depend on that pin their writers.

use std::{io, ops::Range, thread};

/// Moves task `tid` (0: the calling thread) to the CPUs in `cpus`; EINVAL
/// for a CPU past what a `cpu_set_t` holds. Allocates nothing, so a
/// `pre_exec` hook may call it.
pub fn set_affinity(tid: i32, cpus: Range<usize>) -> io::Result<()> {
    // SAFETY: an all-zero cpu_set_t is the empty set.
    let mut set: libc::cpu_set_t = unsafe { std::mem::zeroed() };
    // libc's CPU_SET indexes the set's words with a bounds check: past the
    // end it would panic, which must not happen between fork and exec.
    if cpus.end > 8 * std::mem::size_of_val(&set) {
        return Err(io::Error::from_raw_os_error(libc::EINVAL));
    }
    for cpu in cpus {
        // SAFETY: cpu is within the set (checked above).
        unsafe { libc::CPU_SET(cpu, &mut set) };
    }
    // SAFETY: a valid set of the size passed.
    if unsafe { libc::sched_setaffinity(tid, std::mem::size_of_val(&set), &set) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// The CPUs this process may run on, in order.
pub fn allowed_cpus() -> Vec<usize> {
    // SAFETY: an all-zero cpu_set_t is the empty set.
    let mut set: libc::cpu_set_t = unsafe { std::mem::zeroed() };
    // SAFETY: a valid set of the size passed.
    if unsafe { libc::sched_getaffinity(0, std::mem::size_of_val(&set), &mut set) } != 0 {
        panic!("sched_getaffinity failed: {}", io::Error::last_os_error());
    }
    (0..8 * std::mem::size_of_val(&set))
        // SAFETY: cpu is within the set.
        .filter(|&cpu| unsafe { libc::CPU_ISSET(cpu, &set) })
        .collect()
}

/// Runs `work` on a thread of its own that only runs on `cpu`; commands it
/// starts inherit the placement. Panics if the thread cannot be placed.
pub fn on_cpu<R: Send>(cpu: usize, work: impl FnOnce() -> R + Send) -> R {
    thread::scope(|scope| {
        scope
            .spawn(|| {
                set_affinity(0, cpu..cpu + 1)
                    .unwrap_or_else(|e| panic!("cannot move a thread to CPU {cpu}: {e}"));
                work()
            })
            .join()
            .unwrap_or_else(|panic| std::panic::resume_unwind(panic))
    })
}
