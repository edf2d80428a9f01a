//! A scratch directory of a test's own, removed on drop (also when the
//! test panics).

use std::{fs, path::PathBuf};

/// `<temp dir>/smtp-gate-<tag>-<pid>`, made empty at creation; the path
/// is `.0`.
pub struct Scratch(pub PathBuf);

impl Scratch {
    pub fn new(tag: &str) -> Self {
        let dir = std::env::temp_dir().join(format!("smtp-gate-{tag}-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(&dir).unwrap_or_else(|e| panic!("creating {}: {e}", dir.display()));
        Self(dir)
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.0);
    }
}
