//! What /proc and getrusage tell about the systems under test and the load
//! generator: process trees, memory (Pss/Rss from smaps_rollup) and CPU;
//! and where threads run. Shared by the suites.

use std::{
    collections::{HashMap, HashSet},
    fs,
};

pub use testkit::cpus::set_affinity;

/// Every pid in /proc.
pub fn all_pids() -> Vec<u32> {
    let Ok(entries) = fs::read_dir("/proc") else {
        return Vec::new();
    };
    entries
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse().ok())
        .collect()
}

/// The fields of /proc/<pid>/stat after the command name: index 0 is the
/// state, 1 the parent, 11 and 12 utime and stime, 13 and 14 cutime and
/// cstime (clock ticks).
fn stat_fields(pid: u32) -> Option<Vec<u64>> {
    let stat = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let rest = &stat[stat.rfind(')')? + 1..];
    Some(
        rest.split_whitespace()
            .map(|f| f.parse().unwrap_or(0))
            .collect(),
    )
}

/// `root` and every live process whose parent chain leads to it.
pub fn tree(root: u32) -> Vec<u32> {
    let mut children: HashMap<u32, Vec<u32>> = HashMap::new();
    for pid in all_pids() {
        if let Some(fields) = stat_fields(pid) {
            if let Some(&ppid) = fields.get(1) {
                children.entry(ppid as u32).or_default().push(pid);
            }
        }
    }
    if stat_fields(root).is_none() {
        return Vec::new();
    }
    let mut out = vec![root];
    let mut seen = HashSet::from([root]);
    let mut i = 0;
    // Each pid enters once: bounded by the number of pids.
    while i < out.len() {
        for &kid in children.get(&out[i]).into_iter().flatten() {
            if seen.insert(kid) {
                out.push(kid);
            }
        }
        i += 1;
    }
    out
}

/// Summed Pss and Rss (KiB) of `pids` from /proc/<pid>/smaps_rollup.
pub fn memory_kib(pids: &[u32]) -> (u64, u64) {
    let (mut pss, mut rss) = (0, 0);
    for pid in pids {
        let Ok(text) = fs::read_to_string(format!("/proc/{pid}/smaps_rollup")) else {
            continue;
        };
        for line in text.lines() {
            let mut parts = line.split_whitespace();
            let (Some(key), Some(value)) = (parts.next(), parts.next()) else {
                continue;
            };
            let value: u64 = value.parse().unwrap_or(0);
            match key {
                "Pss:" => pss += value,
                "Rss:" => rss += value,
                _ => {}
            }
        }
    }
    (pss, rss)
}

pub fn clock_ticks_per_sec() -> f64 {
    // SAFETY: sysconf has no preconditions.
    let ticks = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    if ticks > 0 {
        ticks as f64
    } else {
        100.0
    }
}

/// CPU seconds (user + system) spent so far by the tree under `root`: the
/// live processes' own time, plus what the root has reaped of its
/// children (processes that came and went during a measurement count
/// there).
pub fn tree_cpu_seconds(root: u32) -> f64 {
    let mut ticks = 0u64;
    for pid in tree(root) {
        if let Some(f) = stat_fields(pid) {
            ticks += f.get(11).unwrap_or(&0) + f.get(12).unwrap_or(&0);
            if pid == root {
                ticks += f.get(13).unwrap_or(&0) + f.get(14).unwrap_or(&0);
            }
        }
    }
    ticks as f64 / clock_ticks_per_sec()
}

/// CPU seconds (user + system) of this process, all threads: the load
/// generator's own use.
pub fn self_cpu_seconds() -> f64 {
    // SAFETY: getrusage fills the zeroed struct we pass.
    let usage = unsafe {
        let mut usage: libc::rusage = std::mem::zeroed();
        libc::getrusage(libc::RUSAGE_SELF, &mut usage);
        usage
    };
    let tv = |t: libc::timeval| t.tv_sec as f64 + t.tv_usec as f64 / 1e6;
    tv(usage.ru_utime) + tv(usage.ru_stime)
}

/// CPU seconds the whole machine has been busy (every CPU, everything but
/// idle and iowait), from /proc/stat.
pub fn machine_busy_seconds() -> f64 {
    let Ok(stat) = fs::read_to_string("/proc/stat") else {
        return 0.0;
    };
    let Some(line) = stat.lines().find(|l| l.starts_with("cpu ")) else {
        return 0.0;
    };
    // user nice system idle iowait irq softirq (steal is time the
    // hypervisor kept; guest time is already inside user and nice).
    let ticks: Vec<u64> = line
        .split_whitespace()
        .skip(1)
        .take(7)
        .map(|f| f.parse().unwrap_or(0))
        .collect();
    let busy: u64 = ticks
        .iter()
        .enumerate()
        .filter(|(i, _)| *i != 3 && *i != 4)
        .map(|(_, t)| t)
        .sum();
    busy as f64 / clock_ticks_per_sec()
}

/// Raises the soft RLIMIT_NOFILE to the hard limit (children inherit it).
pub fn raise_nofile() -> u64 {
    // SAFETY: getrlimit/setrlimit on a valid struct.
    unsafe {
        let mut limit: libc::rlimit = std::mem::zeroed();
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) != 0 {
            return 0;
        }
        if limit.rlim_cur < limit.rlim_max {
            limit.rlim_cur = limit.rlim_max;
            libc::setrlimit(libc::RLIMIT_NOFILE, &limit);
            libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit);
        }
        limit.rlim_cur
    }
}

/// CPUs online; unlike `available_parallelism`, not narrowed by [`pin`].
pub fn online_cpus() -> usize {
    // SAFETY: sysconf has no preconditions.
    let n = unsafe { libc::sysconf(libc::_SC_NPROCESSORS_ONLN) };
    usize::try_from(n).unwrap_or(1).max(1)
}

/// Restricts every thread of `pids` to the CPUs in `cpus`; a process's
/// later children and threads inherit it. Threads that end meanwhile are
/// skipped; any other failure is an error (the figure would be labelled
/// with a placement it did not have).
pub fn pin(pids: &[u32], cpus: std::ops::Range<usize>) -> std::io::Result<()> {
    for pid in pids {
        let Ok(tasks) = fs::read_dir(format!("/proc/{pid}/task")) else {
            continue;
        };
        for tid in tasks.filter_map(|e| e.ok()?.file_name().to_str()?.parse::<i32>().ok()) {
            match set_affinity(tid, cpus.clone()) {
                Err(e) if e.raw_os_error() != Some(libc::ESRCH) => {
                    return Err(std::io::Error::new(
                        e.kind(),
                        format!("sched_setaffinity of thread {tid} of {pid}: {e}"),
                    ));
                }
                _ => {}
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sees_itself() {
        let me = std::process::id();
        assert_eq!(tree(me)[0], me);
        let (pss, rss) = memory_kib(&[me]);
        assert!(pss > 0 && rss >= pss);
        assert!(self_cpu_seconds() >= 0.0);
    }
}
