//! Users files and Maildirs for `smtp-gate serve` in the tests.

use std::{
    fs,
    io::Write,
    path::{Path, PathBuf},
    sync::atomic::{AtomicU32, Ordering},
    time::Duration,
};

use crate::dirs::sorted_names;

/// A temporary directory with a users file (Dovecot passwd-file, mode 0600)
/// and a mail root of Maildirs (`mail/<user>/{cur,new,tmp}`), removed on
/// drop.
pub struct MailFixture {
    dir: PathBuf,
    users: Vec<(String, String)>,
    delivered: u64,
}

static FIXTURE_COUNTER: AtomicU32 = AtomicU32::new(0);

impl MailFixture {
    /// An empty fixture under the system's temporary directory.
    pub fn new() -> Self {
        let n = FIXTURE_COUNTER.fetch_add(1, Ordering::Relaxed);
        let dir = std::env::temp_dir().join(format!("smtp-gate-mail-{}-{n}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(dir.join("mail"))
            .unwrap_or_else(|e| panic!("cannot create {}: {e}", dir.display()));
        let fixture = Self {
            dir,
            users: Vec::new(),
            delivered: 0,
        };
        fixture.write_users();
        fixture
    }

    /// The fixture's directory (for config files, logs, ...).
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    pub fn mail_root(&self) -> PathBuf {
        self.dir.join("mail")
    }

    pub fn users_file(&self) -> PathBuf {
        self.dir.join("users")
    }

    /// The Maildir of `user`.
    pub fn maildir(&self, user: &str) -> PathBuf {
        self.mail_root().join(user)
    }

    /// Adds `user:SECRET` (e.g. `{PLAIN}secret`) to the users file and
    /// creates the user's Maildir.
    pub fn add_user(&mut self, user: &str, secret: &str) {
        self.users.push((user.to_string(), secret.to_string()));
        self.write_users();
        for sub in ["cur", "new", "tmp"] {
            let path = self.maildir(user).join(sub);
            fs::create_dir_all(&path)
                .unwrap_or_else(|e| panic!("cannot create {}: {e}", path.display()));
        }
    }

    /// Takes `user` out of the users file (the Maildir stays).
    pub fn remove_user(&mut self, user: &str) {
        self.users.retain(|(name, _)| name != user);
        self.write_users();
    }

    /// Writes `text` as the users file (mode 0600), whatever it holds: a
    /// file with bad lines, say. The users added so far are left out.
    pub fn write_users_text(&self, text: &str) {
        write_private(&self.users_file(), text);
    }

    fn write_users(&self) {
        let text: String = self
            .users
            .iter()
            .map(|(user, secret)| format!("{user}:{secret}\n"))
            .collect();
        write_private(&self.users_file(), &text);
    }

    /// Sets the users file's permission bits (e.g. 0o644 to see it refused).
    pub fn chmod_users(&self, mode: u32) {
        use std::os::unix::fs::PermissionsExt;
        let path = self.users_file();
        fs::set_permissions(&path, fs::Permissions::from_mode(mode))
            .unwrap_or_else(|e| panic!("cannot chmod {}: {e}", path.display()));
    }

    /// Delivers a message into `user`'s `new/` under the Maildir file name
    /// `name` (e.g. `1700000000.M1P1.lab`). Each delivery gets an mtime one
    /// second after the previous one, so the maildrop order (by mtime) is
    /// the delivery order.
    pub fn deliver(&mut self, user: &str, name: &str, content: &[u8]) -> PathBuf {
        let path = self.maildir(user).join("new").join(name);
        fs::write(&path, content)
            .unwrap_or_else(|e| panic!("cannot write {}: {e}", path.display()));
        self.delivered += 1;
        let mtime = std::time::UNIX_EPOCH + Duration::from_secs(1_700_000_000 + self.delivered);
        fs::File::options()
            .write(true)
            .open(&path)
            .and_then(|f| f.set_modified(mtime))
            .unwrap_or_else(|e| panic!("cannot set the mtime of {}: {e}", path.display()));
        path
    }

    /// File names in `user`'s Maildir subdirectory `sub` (`cur` or `new`),
    /// sorted.
    pub fn files(&self, user: &str, sub: &str) -> Vec<String> {
        sorted_names(&self.maildir(user).join(sub))
    }
}

/// Writes `text` into `path` with mode 0600, as a users file must be.
fn write_private(path: &Path, text: &str) {
    use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
    let mut file = fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)
        .unwrap_or_else(|e| panic!("cannot write {}: {e}", path.display()));
    file.write_all(text.as_bytes())
        .unwrap_or_else(|e| panic!("cannot write {}: {e}", path.display()));
    fs::set_permissions(path, fs::Permissions::from_mode(0o600))
        .unwrap_or_else(|e| panic!("cannot chmod {}: {e}", path.display()));
}

impl Default for MailFixture {
    fn default() -> Self {
        Self::new()
    }
}

impl Drop for MailFixture {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.dir);
    }
}
