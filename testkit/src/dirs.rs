//! Directory listings, as the pin directory and Maildir checks compare
//! them.

use std::{fs, path::Path};

/// Names of the entries of `dir`, sorted; empty if it is gone.
pub(crate) fn sorted_names(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = fs::read_dir(dir)
        .map(|entries| {
            entries
                .flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default();
    names.sort();
    names
}
