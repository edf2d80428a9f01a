//! bpffs mounts for the gate's pins: the lab's private one, and a shared
//! one whose unmount reaches the copies `ip netns exec` made.

use std::{
    ffi::{CStr, CString},
    fs, io,
    os::unix::ffi::OsStrExt,
    path::{Path, PathBuf},
};

use crate::{
    dirs::sorted_names,
    lab::{Lab, RUN_ROOT},
};

/// Whether something is mounted on `path`.
pub(crate) fn is_mount_point(path: &Path) -> bool {
    let Ok(mounts) = fs::read_to_string("/proc/self/mounts") else {
        return false;
    };
    let wanted = path.to_string_lossy();
    mounts
        .lines()
        .filter_map(|l| l.split_whitespace().nth(1))
        .any(|m| m == wanted)
}

/// Unmounts everything mounted on `path` (a lazy unmount if busy).
pub(crate) fn unmount_all(path: &Path) {
    let Ok(c_path) = CString::new(path.as_os_str().as_bytes()) else {
        return;
    };
    for _ in 0..4 {
        if !is_mount_point(path) {
            return;
        }
        // SAFETY: c_path is NUL-terminated.
        if unsafe { libc::umount2(c_path.as_ptr(), 0) } != 0 {
            let e = io::Error::last_os_error();
            eprintln!(
                "lab teardown: umount {}: {e}; detaching lazily",
                path.display()
            );
            // SAFETY: as above.
            unsafe { libc::umount2(c_path.as_ptr(), libc::MNT_DETACH) };
        }
    }
}

/// Mounts a new bpffs on `at` (mode 0700); panics if it cannot.
pub(crate) fn mount_bpffs(at: &Path) {
    mount_new(c"bpf", at);
}

/// Mounts a new, empty filesystem of type `fstype` (`bpf`, `tmpfs`) on
/// `at`, readable by root only; panics if it cannot.
fn mount_new(fstype: &CStr, at: &Path) {
    let target = CString::new(at.as_os_str().as_bytes()).expect("path with NUL");
    // SAFETY: all strings are NUL-terminated and outlive the call.
    let rc = unsafe {
        libc::mount(
            fstype.as_ptr(),
            target.as_ptr(),
            fstype.as_ptr(),
            0,
            c"mode=0700".as_ptr().cast(),
        )
    };
    if rc != 0 {
        panic!(
            "cannot mount a {} on {}: {}",
            fstype.to_string_lossy(),
            at.display(),
            io::Error::last_os_error()
        );
    }
}

/// A bpffs whose mounts and unmounts in the root mount namespace reach the
/// copies that `ip netns exec` made of it, as systemd's shared /sys/fs/bpf
/// reaches a sandboxed service: a tmpfs made a shared mount, with the bpffs
/// mounted inside it. The lab's own bpffs does not do that (the root
/// mount is private on these machines). Unmounted and removed on drop.
pub struct SharedBpffs {
    holder: PathBuf,
}

impl SharedBpffs {
    /// Under [`RUN_ROOT`], named after `lab` (swept with it if the test
    /// process is killed).
    pub fn new(lab: &Lab) -> Self {
        let holder = Path::new(RUN_ROOT).join(format!("{}-shared", lab.id));
        fs::create_dir_all(&holder)
            .unwrap_or_else(|e| panic!("cannot create {}: {e}", holder.display()));
        mount_new(c"tmpfs", &holder);
        let c_holder = CString::new(holder.as_os_str().as_bytes()).expect("path with NUL");
        // SAFETY: a NUL-terminated path that outlives the call; MS_SHARED
        // changes only the propagation type.
        let rc = unsafe {
            libc::mount(
                std::ptr::null(),
                c_holder.as_ptr(),
                std::ptr::null(),
                libc::MS_SHARED,
                std::ptr::null(),
            )
        };
        assert_eq!(
            rc,
            0,
            "making {} shared: {}",
            holder.display(),
            io::Error::last_os_error()
        );
        let shared = Self { holder };
        fs::create_dir(shared.mount_point()).expect("creating the bpffs mount point");
        shared.mount();
        shared
    }

    fn mount_point(&self) -> PathBuf {
        self.holder.join("bpf")
    }

    /// The pin directory to pass as `--pin-dir`.
    pub fn pin_dir(&self) -> PathBuf {
        self.mount_point().join("gate")
    }

    /// Mounts a new, empty bpffs (after [`SharedBpffs::unmount`]).
    pub fn mount(&self) {
        mount_bpffs(&self.mount_point());
    }

    /// Unmounts the bpffs here, and so in every copy of the mount.
    pub fn unmount(&self) {
        unmount_all(&self.mount_point());
    }

    /// Names in the pin directory, as this namespace sees them.
    pub fn pins(&self) -> Vec<String> {
        sorted_names(&self.pin_dir())
    }
}

impl Drop for SharedBpffs {
    fn drop(&mut self) {
        unmount_all(&self.mount_point());
        unmount_all(&self.holder);
        let _ = fs::remove_dir(&self.holder);
    }
}
