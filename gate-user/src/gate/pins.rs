//! The pin directory: one bpffs directory holding the gate's maps and one
//! link per attached interface, so the gate outlives the process that
//! attached it and every CLI command can find it.

use std::{
    ffi::CString,
    fs, io,
    os::unix::ffi::OsStrExt,
    path::{Path, PathBuf},
};

use anyhow::{bail, Context, Result};

use super::attach::AttachMode;

pub const DEFAULT_PIN_DIR: &str = "/sys/fs/bpf/smtp-gate";
const BPF_FS_MAGIC: i64 = 0xcafe_4a11;
const LINK_PREFIX: &str = "link_";

#[derive(Clone, Debug)]
pub struct PinDir {
    path: PathBuf,
}

/// A link pinned for one interface.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PinnedLinkEntry {
    pub iface: String,
    pub mode: AttachMode,
    pub path: PathBuf,
}

impl PinDir {
    pub fn new(path: impl Into<PathBuf>) -> Self {
        Self { path: path.into() }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn map(&self, name: &str) -> PathBuf {
        self.path.join(name)
    }

    /// `link_<mode>_<iface>`: modes have no underscore, so the name splits
    /// back unambiguously even for interface names that contain one.
    pub fn link(&self, iface: &str, mode: AttachMode) -> PathBuf {
        self.path
            .join(format!("{LINK_PREFIX}{}_{iface}", mode.pin_tag()))
    }

    pub fn links(&self) -> Result<Vec<PinnedLinkEntry>> {
        let entries = match fs::read_dir(&self.path) {
            Ok(entries) => entries,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(e) => return Err(e).with_context(|| format!("reading {}", self.path.display())),
        };
        let mut links = Vec::new();
        for entry in entries {
            let entry = entry?;
            let name = entry.file_name().to_string_lossy().into_owned();
            let Some(rest) = name.strip_prefix(LINK_PREFIX) else {
                continue;
            };
            let Some((tag, iface)) = rest.split_once('_') else {
                continue;
            };
            let Some(mode) = AttachMode::from_pin_tag(tag) else {
                continue;
            };
            links.push(PinnedLinkEntry {
                iface: iface.to_string(),
                mode,
                path: entry.path(),
            });
        }
        links.sort_by(|a, b| a.iface.cmp(&b.iface));
        Ok(links)
    }

    pub fn link_for(&self, iface: &str) -> Result<Option<PinnedLinkEntry>> {
        Ok(self.links()?.into_iter().find(|l| l.iface == iface))
    }

    /// Fails unless a gate's maps are pinned here.
    pub fn require_gate(&self) -> Result<()> {
        if !self.map(gate_common::map_names::SETTINGS).exists() {
            bail!(
                "nothing attached: no smtp-gate maps in {} (run `smtp-gate attach --iface IF` \
                 first, or pass the --pin-dir it used)",
                self.path.display()
            );
        }
        Ok(())
    }

    /// Makes sure the directory exists on a bpffs. bpffs is not mounted at
    /// boot on every distribution; like `bpftool`, mount it where it is
    /// expected: on /sys/fs/bpf for the default location, or on the pin
    /// directory itself elsewhere.
    pub fn prepare(&self) -> Result<()> {
        let parent = self.path.parent().unwrap_or(Path::new("/"));
        if self.path.exists() && is_bpffs(&self.path)? {
            return Ok(());
        }
        if parent.exists() && is_bpffs(parent)? {
            fs::create_dir_all(&self.path)
                .with_context(|| format!("creating pin directory {}", self.path.display()))?;
            return Ok(());
        }
        let mount_point = if parent == Path::new("/sys/fs/bpf") {
            parent.to_path_buf()
        } else {
            self.path.clone()
        };
        fs::create_dir_all(&mount_point)
            .with_context(|| format!("creating {}", mount_point.display()))?;
        mount_bpffs(&mount_point)?;
        fs::create_dir_all(&self.path)
            .with_context(|| format!("creating pin directory {}", self.path.display()))?;
        Ok(())
    }

    /// Removes the directory if nothing is left in it.
    pub fn remove_if_empty(&self) {
        let _ = fs::remove_dir(&self.path);
    }
}

fn is_bpffs(path: &Path) -> Result<bool> {
    let c_path = CString::new(path.as_os_str().as_bytes())?;
    // SAFETY: zeroed statfs is a valid out-parameter.
    let mut stat: libc::statfs = unsafe { std::mem::zeroed() };
    // SAFETY: c_path is NUL-terminated, stat is writable.
    if unsafe { libc::statfs(c_path.as_ptr(), &mut stat) } != 0 {
        return Err(io::Error::last_os_error())
            .with_context(|| format!("statfs {}", path.display()));
    }
    Ok(stat.f_type as i64 == BPF_FS_MAGIC)
}

fn mount_bpffs(at: &Path) -> Result<()> {
    let target = CString::new(at.as_os_str().as_bytes())?;
    // SAFETY: all strings are NUL-terminated and outlive the call.
    let rc = unsafe {
        libc::mount(
            c"bpf".as_ptr(),
            target.as_ptr(),
            c"bpf".as_ptr(),
            0,
            c"mode=0700".as_ptr().cast(),
        )
    };
    if rc != 0 {
        return Err(io::Error::last_os_error())
            .with_context(|| format!("mounting bpffs on {}", at.display()));
    }
    Ok(())
}
