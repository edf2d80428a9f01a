//! Reading a file the daemon trusts: its configuration and its users file.
//! Whoever can write one of them decides who logs in (and so who may send
//! mail) or what the daemon does, so, as sshd and Dovecot do for their
//! secrets, such a file is refused unless only root or the daemon's own
//! user own it and nobody else may write it (the users file, which holds
//! passwords, not even read it).
//!
//! The checks are made on the opened file, so the file checked is the
//! file read.

use std::{
    fmt,
    fs::{File, OpenOptions},
    io::{self, Read},
    os::unix::fs::{FileTypeExt, MetadataExt, OpenOptionsExt},
    path::{Path, PathBuf},
};

use rustix::fs::OFlags;

/// What a trusted file must not allow, and how to say it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Rule {
    /// Permission bits that must all be clear.
    pub forbidden: u32,
    /// Why, for the error: "it ...".
    pub why: &'static str,
    /// The command that fixes the mode.
    pub fix: &'static str,
}

/// A file of secrets (the users' passwords, the TLS private key): no
/// access for group or others at all.
pub const SECRETS: Rule = Rule {
    forbidden: 0o077,
    why: "it holds secrets and must not be readable or writable by group or others",
    fix: "chmod 600",
};

/// A file of settings: anyone may read it, nobody but its owner write it.
pub const SETTINGS: Rule = Rule {
    forbidden: 0o022,
    why: "it decides what the daemon does and must not be writable by group or others",
    fix: "chmod go-w",
};

/// Why a trusted file was not read.
#[derive(Debug)]
pub enum Refusal {
    /// A directory, a FIFO, ...: what it is, in words.
    NotRegularFile(&'static str),
    /// Its permission bits (`st_mode & 0o7777`) break the rule.
    Permissions {
        mode: u32,
        rule: Rule,
    },
    /// Owned by someone else than root or the daemon's user.
    Owner {
        uid: u32,
        daemon_uid: u32,
    },
    Io(io::Error),
}

/// A refused file, named.
#[derive(Debug)]
pub struct FileError {
    pub path: PathBuf,
    pub refusal: Refusal,
}

impl fmt::Display for FileError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let path = self.path.display();
        match &self.refusal {
            Refusal::NotRegularFile(kind) => {
                write!(f, "{path} is not a regular file (it is {kind})")
            }
            Refusal::Permissions { mode, rule } => {
                write!(f, "{path} is mode {mode:04o}: {} ({})", rule.why, rule.fix)
            }
            Refusal::Owner { uid, daemon_uid } => {
                let daemon = if *daemon_uid == 0 {
                    String::new()
                } else {
                    format!(" or uid {daemon_uid} (the daemon's user)")
                };
                write!(
                    f,
                    "{path} is owned by uid {uid}: only root{daemon} may own it, since its \
                     owner decides what it says (chown root)"
                )
            }
            Refusal::Io(e) => write!(f, "cannot read {path}: {e}"),
        }
    }
}

/// The text already ends with the I/O error's, so the error names no
/// source: a chain printer (`anyhow`'s `{:#}`) would write it twice.
impl std::error::Error for FileError {}

/// Reads the file at `path` if it keeps `rule` and root or this process's
/// effective user owns it.
pub fn read(path: &Path, rule: Rule) -> Result<String, FileError> {
    let refused = |refusal| FileError {
        path: path.to_path_buf(),
        refusal,
    };
    // O_NONBLOCK: opening a FIFO must not hang the daemon; it is refused
    // below as not a regular file.
    let mut file: File = OpenOptions::new()
        .read(true)
        .custom_flags(OFlags::NONBLOCK.union(OFlags::NOCTTY).bits() as i32)
        .open(path)
        .map_err(|e| refused(Refusal::Io(e)))?;
    let meta = file.metadata().map_err(|e| refused(Refusal::Io(e)))?;
    let daemon_uid = rustix::process::geteuid().as_raw();
    judge(&meta, rule, daemon_uid).map_err(refused)?;
    let mut text = String::new();
    file.read_to_string(&mut text)
        .map_err(|e| refused(Refusal::Io(e)))?;
    Ok(text)
}

/// The checks, on what `fstat` said.
fn judge(meta: &std::fs::Metadata, rule: Rule, daemon_uid: u32) -> Result<(), Refusal> {
    let ft = meta.file_type();
    if !ft.is_file() {
        let kind = if ft.is_dir() {
            "a directory"
        } else if ft.is_fifo() {
            "a FIFO"
        } else if ft.is_socket() {
            "a socket"
        } else if ft.is_char_device() {
            "a character device"
        } else if ft.is_block_device() {
            "a block device"
        } else {
            "not a file"
        };
        return Err(Refusal::NotRegularFile(kind));
    }
    judge_owner_and_mode(meta.uid(), meta.mode() & 0o7777, rule, daemon_uid)
}

fn judge_owner_and_mode(uid: u32, mode: u32, rule: Rule, daemon_uid: u32) -> Result<(), Refusal> {
    if uid != 0 && uid != daemon_uid {
        return Err(Refusal::Owner { uid, daemon_uid });
    }
    if mode & rule.forbidden != 0 {
        return Err(Refusal::Permissions { mode, rule });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::PermissionsExt;

    use super::*;

    fn file_with_mode(dir: &Path, mode: u32) -> PathBuf {
        let path = dir.join(format!("file-{mode:o}"));
        std::fs::write(&path, "text\n").unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode)).unwrap();
        path
    }

    #[test]
    fn settings_may_be_read_by_anyone_but_written_only_by_the_owner() {
        let tmp = tempfile::tempdir().unwrap();
        for mode in [0o600, 0o640, 0o644, 0o444, 0o700] {
            let path = file_with_mode(tmp.path(), mode);
            assert_eq!(read(&path, SETTINGS).unwrap(), "text\n", "{mode:o}");
        }
        for mode in [0o664, 0o646, 0o620, 0o602, 0o666] {
            let path = file_with_mode(tmp.path(), mode);
            let e = read(&path, SETTINGS).unwrap_err();
            assert!(
                matches!(e.refusal, Refusal::Permissions { .. }),
                "{mode:o}: {e}"
            );
            assert_eq!(
                e.to_string(),
                format!(
                    "{} is mode {mode:04o}: it decides what the daemon does and must not be \
                     writable by group or others (chmod go-w)",
                    path.display()
                )
            );
        }
    }

    #[test]
    fn secrets_are_for_the_owner_alone() {
        let tmp = tempfile::tempdir().unwrap();
        for mode in [0o600, 0o400] {
            assert!(read(&file_with_mode(tmp.path(), mode), SECRETS).is_ok());
        }
        for mode in [0o640, 0o604, 0o620, 0o602, 0o610, 0o601] {
            let e = read(&file_with_mode(tmp.path(), mode), SECRETS).unwrap_err();
            assert!(e.to_string().contains("chmod 600"), "{mode:o}: {e}");
        }
    }

    /// Root or the daemon's own user may own a trusted file; anyone else
    /// could change what it says.
    #[test]
    fn only_root_or_the_daemons_user_may_own_it() {
        assert!(judge_owner_and_mode(0, 0o600, SECRETS, 0).is_ok());
        assert!(judge_owner_and_mode(0, 0o644, SETTINGS, 5000).is_ok());
        assert!(judge_owner_and_mode(5000, 0o600, SECRETS, 5000).is_ok());
        let other = judge_owner_and_mode(1000, 0o600, SECRETS, 0).unwrap_err();
        assert!(matches!(
            other,
            Refusal::Owner {
                uid: 1000,
                daemon_uid: 0
            }
        ));
        let e = FileError {
            path: "/etc/smtp-gate/users".into(),
            refusal: other,
        };
        assert_eq!(
            e.to_string(),
            "/etc/smtp-gate/users is owned by uid 1000: only root may own it, since its owner \
             decides what it says (chown root)"
        );
        let e = FileError {
            path: "/etc/smtp-gate/users".into(),
            refusal: judge_owner_and_mode(1000, 0o600, SECRETS, 5000).unwrap_err(),
        };
        assert!(
            e.to_string()
                .contains("only root or uid 5000 (the daemon's user) may own it"),
            "{e}"
        );
    }

    /// The owner check on a real file: under root (as in CI) a file given
    /// to another user is refused; anyone's own file is taken.
    #[test]
    fn a_file_of_another_owner_is_refused() {
        let tmp = tempfile::tempdir().unwrap();
        let path = file_with_mode(tmp.path(), 0o600);
        assert!(read(&path, SECRETS).is_ok(), "one's own file");
        if rustix::process::geteuid().is_root() {
            std::os::unix::fs::chown(&path, Some(65534), None).unwrap();
            let e = read(&path, SECRETS).unwrap_err();
            assert!(
                matches!(e.refusal, Refusal::Owner { uid: 65534, .. }),
                "{e}"
            );
        }
    }

    #[test]
    fn non_regular_files_are_refused_without_blocking() {
        let tmp = tempfile::tempdir().unwrap();
        let e = read(tmp.path(), SETTINGS).unwrap_err();
        assert!(
            e.to_string()
                .ends_with("is not a regular file (it is a directory)"),
            "{e}"
        );
        let fifo = tmp.path().join("fifo");
        rustix::fs::mkfifoat(
            rustix::fs::CWD,
            &fifo,
            rustix::fs::Mode::from_raw_mode(0o600),
        )
        .unwrap();
        let e = read(&fifo, SECRETS).unwrap_err();
        assert!(e.to_string().contains("(it is a FIFO)"), "{e}");
    }
}
