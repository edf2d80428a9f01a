//! Users and Maildirs that smtp-gate and Dovecot both serve, in a
//! directory of their own under target/bench/.

use std::{
    fs,
    os::unix::fs::PermissionsExt,
    path::{Path, PathBuf},
};

use anyhow::{Context, Result};

/// One user per idle connection of the memory test.
pub const USERS: usize = 500;
/// Users with a full maildrop; the throughput workloads log in as these.
pub const HEAVY_USERS: usize = 16;
pub const MESSAGES: usize = 20;
pub const MESSAGE_SIZE: usize = 4096;

pub struct Fixture {
    pub dir: PathBuf,
    pub users_file: PathBuf,
}

impl Fixture {
    /// `user<n>:{PLAIN}secret<n>` for n < [`USERS`]; the first
    /// [`HEAVY_USERS`] have [`MESSAGES`] messages of [`MESSAGE_SIZE`]
    /// octets, the others one short message.
    pub fn create(parent: &Path) -> Result<Self> {
        let dir = parent
            .join("pop3-fixture")
            .join(std::process::id().to_string());
        let _ = fs::remove_dir_all(&dir);
        let fixture = Self {
            users_file: dir.join("users"),
            dir,
        };
        let mail = fixture.mail_root();
        let mut users = String::new();
        let body_line = "x".repeat(75);
        for u in 0..USERS {
            let user = format!("user{u}");
            users.push_str(&format!("{user}:{{PLAIN}}secret{u}\n"));
            for sub in ["cur", "new", "tmp"] {
                fs::create_dir_all(mail.join(&user).join(sub))
                    .with_context(|| format!("creating the maildir of {user}"))?;
            }
            let (count, size) = if u < HEAVY_USERS {
                (MESSAGES, MESSAGE_SIZE)
            } else {
                (1, 300)
            };
            for m in 0..count {
                let mut text = format!(
                    "From: sender@example.org\nTo: {user}@example.org\nSubject: message {m}\n\n"
                );
                while text.len() + body_line.len() < size {
                    text.push_str(&body_line);
                    text.push('\n');
                }
                let name = format!("{}.M{m}P{u}.bench:2,S", 1_700_000_000 + m);
                fs::write(mail.join(&user).join("cur").join(name), text)?;
            }
        }
        fs::write(&fixture.users_file, users)?;
        fs::set_permissions(&fixture.users_file, fs::Permissions::from_mode(0o600))?;
        Ok(fixture)
    }

    pub fn mail_root(&self) -> PathBuf {
        self.dir.join("mail")
    }

    /// Hands the Maildirs to `uid`/`gid`: Dovecot will not access mail as
    /// root (smtp-gate, run as root here, reads them either way).
    pub fn chown_mail(&self, uid: u32, gid: u32) -> Result<()> {
        chown_tree(&self.mail_root(), uid, gid)
    }
}

fn chown_tree(path: &Path, uid: u32, gid: u32) -> Result<()> {
    std::os::unix::fs::lchown(path, Some(uid), Some(gid))
        .with_context(|| format!("chown {}", path.display()))?;
    if fs::symlink_metadata(path)?.is_dir() {
        for entry in fs::read_dir(path)? {
            chown_tree(&entry?.path(), uid, gid)?;
        }
    }
    Ok(())
}

impl Drop for Fixture {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.dir);
        // The per-run parent, when no other run uses it.
        if let Some(parent) = self.dir.parent() {
            let _ = fs::remove_dir(parent);
        }
    }
}
