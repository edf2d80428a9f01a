//! The bpf filesystem under the pin directory, and whether it outlives
//! this process. Each `mount -t bpf` is an instance of its own, seen only
//! in the mount namespace it was mounted in (and its copies). `ip netns
//! exec` runs a command in a fresh mount namespace with a fresh /sys, so
//! a bpffs mounted there on /sys/fs/bpf vanishes when the command exits,
//! and with it every pin: the maps and the link, so the gate is gone
//! although `attach` said it was pinned.

use std::{fs, os::unix::fs::MetadataExt, path::Path};

use anyhow::{Context, Result};
use nix::{
    mount::{mount, MsFlags},
    sys::statfs::{statfs, BPF_FS_MAGIC},
};

pub fn is_bpffs(path: &Path) -> Result<bool> {
    let stat = statfs(path).with_context(|| format!("statfs {}", path.display()))?;
    Ok(stat.filesystem_type() == BPF_FS_MAGIC)
}

pub fn mount_bpffs(at: &Path) -> Result<()> {
    mount(
        Some("bpf"),
        at,
        Some("bpf"),
        MsFlags::empty(),
        Some("mode=0700"),
    )
    .with_context(|| format!("mounting bpffs on {}", at.display()))
}

/// True unless this process is known to run in the init process's mount
/// namespace: only there is a bpffs it mounts the host's. A namespace that
/// cannot be compared (no access to /proc/1) counts as private.
pub fn own_mounts_are_private() -> bool {
    let ns = |pid: &str| fs::metadata(format!("/proc/{pid}/ns/mnt")).map(|m| (m.dev(), m.ino()));
    match (ns("self"), ns("1")) {
        (Ok(own), Ok(init)) => own != init,
        _ => true,
    }
}

/// Whether the bpffs holding `path` is mounted in the init process's mount
/// namespace too, so that its pins outlive this process: `Some(false)` for
/// a bpffs only this process's namespace has, `None` when the init
/// process's mounts cannot be read.
pub fn bpffs_seen_by_host(path: &Path) -> Option<bool> {
    if !own_mounts_are_private() {
        return Some(true);
    }
    let dev = fs::metadata(path).ok()?.dev();
    let wanted = format!(
        "{}:{}",
        nix::sys::stat::major(dev),
        nix::sys::stat::minor(dev)
    );
    let mountinfo = fs::read_to_string("/proc/1/mountinfo").ok()?;
    // "36 35 0:40 / /sys/fs/bpf rw,... - bpf bpf rw": the third field is
    // the file system's device, the one after " - " its type.
    Some(mountinfo.lines().any(|line| {
        let device = line.split_whitespace().nth(2);
        let fs_type = line
            .split_once(" - ")
            .and_then(|(_, rest)| rest.split_whitespace().next());
        device == Some(wanted.as_str()) && fs_type == Some("bpf")
    }))
}
