//! Maildir maildrops: `<root>/<user>/` with `cur/`, `new/` and `tmp/`, as
//! Postfix's `virtual`/`local` and Dovecot's LDA write them.
//!
//! What we copy from Dovecot, so both can serve the same Maildir:
//! - new mail is moved from `new/` to `cur/` at login, appending `:2,` when
//!   the name has no info part yet;
//! - a `,W=<n>` field in the base name is the CRLF size, so most messages are
//!   sized without reading them;
//! - the UIDL is the base name (Dovecot's `pop3_uidl_format = %f`), which
//!   flag changes (`:2,S` -> `:2,RS`) leave alone;
//! - a message renamed by another agent (an IMAP client changing flags) is
//!   found again by its base name;
//! - duplicate or empty base names are fixed by giving the later file a fresh
//!   name, because RFC 1939 requires unique-ids to be unique in the maildrop.
//!
//! The lock is ours only: it keeps two smtp-gate POP3 sessions apart (also
//! in different processes), not an IMAP server working on the same Maildir.
//! Maildir is built for that: every change is a rename or unlink, and every
//! operation here tolerates a file that moved or vanished.

#[cfg(test)]
mod escape_tests;
mod fs;
mod names;
mod size_cache;

use super::{
    wire_size_of, CommitError, ForSession, Maildrop, MaildropStore, MessageInfo, MessageReader,
    OpenError,
};
use crate::session_id::SessionId;

/// The log target of this module's lines, the same in every file of it
/// (operators' log filters match it).
const LOG_TARGET: &str = "pop3::maildrop::maildir";
use crate::log_text::LogText;
use fs::{
    at, list_sub, lock_maildir, move_new_to_cur, names_in, open_maildir, open_message,
    open_message_cached, rename_fresh, stop_if_gone, unlink_message, MaildirFds, MessageFile,
    Opened, Seen, Unlinked,
};
use names::{base_of, uid_for, virtual_size};
use rustix::fs::FileType;
use size_cache::SizeCache;
use std::collections::{HashMap, HashSet};
use std::ffi::OsString;
use std::fs::File;
use std::io::{self, Read};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// Name of the lock file inside each Maildir.
///
/// Without a leading dot, like Dovecot's own control files
/// (`dovecot-uidlist`, `dovecot.index`): in Maildir++ a dot entry in the
/// Maildir root names a folder, and a lock file must never look like one.
/// It is never a message either: messages live only in `cur/` and `new/`.
pub const LOCK_FILE: &str = "smtp-gate-pop3.lock";

/// Serves `<root>/<user>/` Maildirs.
#[derive(Clone, Debug)]
pub struct MaildirStore {
    root: PathBuf,
    sizes: Arc<SizeCache>,
}

impl MaildirStore {
    /// A store for the Maildirs under `root`. `root` itself must exist: a
    /// missing root is a configuration mistake that creating it would hide;
    /// the per-user Maildirs below it are created on first login.
    pub fn new(root: PathBuf) -> Self {
        MaildirStore {
            root,
            sizes: Arc::default(),
        }
    }

    /// The directory holding the users' Maildirs.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// The Maildir of `user`, after checking that the name is a single,
    /// non-hidden path component: user names come from the users file, but
    /// a mistake there must never let a login reach outside `root`.
    pub fn maildir_path(&self, user: &str) -> Result<PathBuf, OpenError> {
        let why = if user.is_empty() {
            "user name is empty"
        } else if user.contains('/') {
            "user name contains '/'"
        } else if user.contains('\0') {
            "user name contains NUL"
        } else if user.starts_with('.') {
            // Covers "." and "..", and keeps clear of Maildir++ folders.
            "user name starts with '.'"
        } else {
            return Ok(self.root.join(user));
        };
        Err(OpenError::Invalid(format!("{why}: {user:?}")))
    }
}

impl MaildropStore for MaildirStore {
    fn open(&self, user: &str, session: &ForSession) -> Result<Box<dyn Maildrop>, OpenError> {
        let dir = self.maildir_path(user)?;
        let fds = open_maildir(&self.root, user, &dir, session.id)?;
        let lock = lock_maildir(&fds.maildir, &dir)?;
        Ok(Box::new(OpenMaildir::scan(
            dir,
            fds,
            lock,
            &self.sizes,
            session,
        )?))
    }
}

/// The two Maildir subdirectories that hold messages.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
enum Sub {
    Cur,
    New,
}

impl Sub {
    fn name(self) -> &'static str {
        match self {
            Sub::Cur => "cur",
            Sub::New => "new",
        }
    }
}

/// Where a listed message's file was last seen.
#[derive(Debug)]
struct Entry {
    sub: Sub,
    name: OsString,
    /// The base name (before ':'): the identity that survives flag changes.
    base: Vec<u8>,
}

/// A Maildir opened and locked for one session.
struct OpenMaildir {
    /// For log lines and errors only: every file operation goes through
    /// `fds`.
    dir: PathBuf,
    /// The session it is open for, named in every line logged about it.
    session: SessionId,
    fds: MaildirFds,
    entries: Vec<Entry>,
    infos: Vec<MessageInfo>,
    /// Held only for its flock: closing the file releases the lock, so
    /// dropping the maildrop (with or without commit) unlocks it.
    _lock: File,
}

impl OpenMaildir {
    /// Moves new mail to `cur/`, lists the messages and fixes the list for
    /// the session (RFC 1939 section 4: the maildrop is a snapshot).
    fn scan(
        dir: PathBuf,
        fds: MaildirFds,
        lock: File,
        sizes: &SizeCache,
        session: &ForSession,
    ) -> Result<Self, OpenError> {
        let id = session.id;
        let mut found = move_new_to_cur(&fds, &dir, session)?;
        list_sub(&fds, Sub::Cur, &dir, &mut found, session)?;
        // Delivery order: Maildir has no sequence, but the mtime is set at
        // delivery and renames keep it; the name breaks ties (Postfix and
        // Dovecot names start with the delivery time).
        found.sort_by(|a, b| {
            a.stamp
                .mtime
                .cmp(&b.stamp.mtime)
                .then_with(|| a.name.as_bytes().cmp(b.name.as_bytes()))
        });

        let mut seen = HashSet::new();
        let total = found.len();
        let mut entries = Vec::with_capacity(total);
        let mut infos = Vec::with_capacity(total);
        for (done, f) in found.into_iter().enumerate() {
            stop_if_gone(session, &dir, "sizing the messages", done, total)?;
            let mut name = f.name;
            let mut uid = uid_for(base_of(name.as_bytes()));
            let sub_fd = fds.of(f.sub);
            if base_of(name.as_bytes()).is_empty() || seen.contains(&uid) {
                // RFC 1939 section 7: the unique-id "uniquely identifies a
                // message within a maildrop". Dovecot renames such files too;
                // the rename makes the fix stable for later sessions.
                match rename_fresh(sub_fd, &name) {
                    Ok(fresh) => {
                        log::warn!(target: LOG_TARGET, "session={id} maildir {}: renamed {}/{} to {}/{}: its base name was empty or not unique",
                            LogText::of(dir.as_os_str().as_bytes()),
                            f.sub.name(),
                            LogText::of(name.as_bytes()),
                            f.sub.name(),
                            LogText::of(fresh.as_bytes())
                        );
                        name = fresh;
                        uid = uid_for(base_of(name.as_bytes()));
                    }
                    Err(e) => {
                        // Hiding it for one session beats locking the user
                        // out or breaking UIDL for every message.
                        log::warn!(target: LOG_TARGET, "session={id} maildir {}: not listing {}/{}: its base name is empty or not unique, and renaming it failed: {e}",
                            LogText::of(dir.as_os_str().as_bytes()),
                            f.sub.name(),
                            LogText::of(name.as_bytes())
                        );
                        continue;
                    }
                }
            }
            let base = base_of(name.as_bytes()).to_vec();
            // A W= size is trusted only where it can be true: CRLF line
            // ends make the wire size at least the file's length and at
            // most twice it. A lying name (a foreign writer, a copy from
            // elsewhere) would make STAT and LIST wrong (RFC 1939 section
            // 5: exact sizes), so the file is measured instead.
            let named = virtual_size(&base).filter(|&size| {
                let fits = (f.stamp.len()..=f.stamp.len().saturating_mul(2)).contains(&size);
                if !fits {
                    log::warn!(target: LOG_TARGET, "session={id} maildir {}: {}/{} says W={size}, which cannot be the wire size of its {} octets; measuring it",
                        LogText::of(dir.as_os_str().as_bytes()),
                        f.sub.name(),
                        LogText::of(name.as_bytes()),
                        f.stamp.len()
                    );
                }
                fits
            });
            let size = match named.or_else(|| sizes.get(&f.stamp)) {
                Some(size) => size,
                None => {
                    let path = dir.join(f.sub.name()).join(&name);
                    let opened = open_message(sub_fd, &name).map_err(|e| at(e, "open", &path))?;
                    match opened {
                        Opened::File(file) => {
                            let mut sizing = Sizing {
                                file,
                                session,
                                read: 0,
                            };
                            let size = match wire_size_of(&mut sizing) {
                                Ok(size) => size,
                                Err(_) if session.is_gone() => {
                                    // A message without W= is read whole
                                    // to size it (RFC 1939 section 5 wants
                                    // exact sizes); a huge one (a sparse
                                    // file of terabytes) must not keep
                                    // the lock past the login.
                                    log::warn!(target: LOG_TARGET, "session={id} maildir {}: stopped sizing {}/{} after {} of its {} octets: the session gave up its login; a message without W= in its name is read whole at every login",
                                        LogText::of(dir.as_os_str().as_bytes()),
                                        f.sub.name(),
                                        LogText::of(name.as_bytes()),
                                        sizing.read,
                                        f.stamp.len()
                                    );
                                    return Err(OpenError::Abandoned);
                                }
                                Err(e) => return Err(at(e, "read", &path).into()),
                            };
                            sizes.put(f.stamp, size);
                            size
                        }
                        // Deleted or renamed by another agent since the
                        // listing: it shows up again at the next login.
                        Opened::Gone => continue,
                        // Swapped since the listing looked at it.
                        Opened::Other(kind) => {
                            warn_not_a_message(id, &dir, f.sub, &name, kind, "skipping");
                            continue;
                        }
                    }
                }
            };
            seen.insert(uid.clone());
            entries.push(Entry {
                sub: f.sub,
                name,
                base,
            });
            infos.push(MessageInfo { size, uid });
        }
        Ok(OpenMaildir {
            dir,
            session: id,
            fds,
            entries,
            infos,
            _lock: lock,
        })
    }

    fn check_index(&self, index: usize) -> io::Result<()> {
        if index < self.entries.len() {
            Ok(())
        } else {
            Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!(
                    "no message with index {index} (the maildrop has {})",
                    self.entries.len()
                ),
            ))
        }
    }

    /// Opens the listed message `index` where it was last seen, looking
    /// it up again by base name if it was renamed (flags changed) since.
    fn open_entry(&mut self, index: usize) -> io::Result<File> {
        if let Some(file) = self.try_open(index)? {
            return Ok(file);
        }
        self.refresh_names()?;
        self.try_open(index)?.ok_or_else(|| {
            io::Error::new(
                io::ErrorKind::NotFound,
                format!(
                    "message {} (base name {}) is no longer in {}",
                    index + 1,
                    LogText::of(&self.entries[index].base),
                    LogText::of(self.dir.as_os_str().as_bytes())
                ),
            )
        })
    }

    /// The message's file, `None` if it is gone; an error of kind
    /// `InvalidData` if it is not a regular file any more.
    fn try_open(&self, index: usize) -> io::Result<Option<File>> {
        let e = &self.entries[index];
        let opened = open_message(self.fds.of(e.sub), &e.name)
            .map_err(|err| at(err, "open", &self.dir.join(e.sub.name()).join(&e.name)))?;
        match opened {
            Opened::File(file) => Ok(Some(file)),
            Opened::Gone => Ok(None),
            Opened::Other(kind) => {
                warn_not_a_message(self.session, &self.dir, e.sub, &e.name, kind, "not serving");
                Err(io::Error::new(
                    io::ErrorKind::InvalidData,
                    format!("message {} is {kind} now, not a regular file", index + 1),
                ))
            }
        }
    }

    /// Re-reads `cur/` and `new/` and updates every entry whose file was
    /// renamed. All at once: an IMAP client marking everything as read
    /// renames every file, and re-scanning per message would be quadratic.
    /// Only regular files count: a link or a FIFO that takes a message's
    /// base name is not it.
    fn refresh_names(&mut self) -> io::Result<()> {
        let mut by_base: HashMap<Vec<u8>, (Sub, OsString)> = HashMap::new();
        for sub in [Sub::Cur, Sub::New] {
            let fd = self.fds.of(sub);
            let path = self.dir.join(sub.name());
            for (name, kind) in names_in(fd).map_err(|e| at(e, "read directory", &path))? {
                let regular = match kind {
                    FileType::RegularFile => true,
                    FileType::Unknown => {
                        matches!(look_at_quietly(fd, &name), Some(Seen::Message(_)))
                    }
                    _ => false,
                };
                if regular {
                    let base = base_of(name.as_bytes()).to_vec();
                    by_base.entry(base).or_insert((sub, name));
                }
            }
        }
        for e in &mut self.entries {
            if let Some((sub, name)) = by_base.get(&e.base) {
                e.sub = *sub;
                e.name = name.clone();
            }
        }
        Ok(())
    }
}

/// [`fs::look_at`], errors taken as "not a message".
fn look_at_quietly(dir: &rustix::fd::OwnedFd, name: &std::ffi::OsStr) -> Option<Seen> {
    fs::look_at(dir, name).ok()
}

/// A message being sized at login: read only while its session waits.
struct Sizing<'a> {
    file: File,
    session: &'a ForSession,
    /// Octets read so far, for the log.
    read: u64,
}

impl Read for Sizing<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if self.session.is_gone() {
            return Err(io::Error::other("the session gave up its login"));
        }
        let n = self.file.read(buf)?;
        self.read += n as u64;
        Ok(n)
    }
}

/// Logs a listed message that is no longer a regular file.
fn warn_not_a_message(
    session: SessionId,
    dir: &Path,
    sub: Sub,
    name: &std::ffi::OsStr,
    kind: &str,
    doing: &str,
) {
    log::warn!(target: LOG_TARGET, "session={session} maildir {}: {doing} {}/{}: it is {kind} now, not a regular file",
        LogText::of(dir.as_os_str().as_bytes()),
        sub.name(),
        LogText::of(name.as_bytes())
    );
}

impl Maildrop for OpenMaildir {
    fn messages(&self) -> &[MessageInfo] {
        &self.infos
    }

    fn open(&mut self, index: usize) -> io::Result<Box<dyn MessageReader>> {
        self.check_index(index)?;
        let file = self.open_entry(index)?;
        Ok(Box::new(MessageFile::new(file)))
    }

    fn open_if_cached(&mut self, index: usize) -> Option<Box<dyn MessageReader>> {
        let entry = self.entries.get(index)?;
        let file = open_message_cached(self.fds.of(entry.sub), &entry.name)?;
        Some(Box::new(MessageFile::new(file)))
    }

    fn commit(mut self: Box<Self>, deleted: &[usize]) -> Result<usize, CommitError> {
        // Check every index first: a session bug must not half-apply.
        for &index in deleted {
            self.check_index(index)?;
        }
        let mut indices = deleted.to_vec();
        indices.sort_unstable();
        indices.dedup();

        let mut first_error = None;
        let mut removed = 0;
        let mut refreshed = false;
        let mut touched = HashSet::new();
        for index in indices {
            let mut result = self.unlink_entry(index);
            if matches!(result, Ok(Unlinked::Gone | Unlinked::Other(_))) && !refreshed {
                // Renamed by another agent? Look it up by base name, once.
                refreshed = true;
                if let Err(e) = self.refresh_names() {
                    first_error.get_or_insert(e);
                }
                result = self.unlink_entry(index);
            }
            let entry = &self.entries[index];
            match result {
                Ok(Unlinked::Removed) => {
                    removed += 1;
                    touched.insert(entry.sub);
                }
                // Already gone: deleted by another agent, which is what we
                // wanted (RFC 1939 section 6 only forbids removing
                // messages that were not marked).
                Ok(Unlinked::Gone) => {}
                // The message that was marked is gone from its name too;
                // what took its place is not ours to remove.
                Ok(Unlinked::Other(kind)) => {
                    warn_not_a_message(
                        self.session,
                        &self.dir,
                        entry.sub,
                        &entry.name,
                        kind,
                        "not deleting",
                    );
                }
                Err(e) => {
                    // Go on with the others: a partial QUIT is reported as
                    // "-ERR some deleted messages not removed".
                    let path = self.dir.join(entry.sub.name()).join(&entry.name);
                    let e = at(e, "unlink", &path);
                    log::warn!(target: LOG_TARGET, "session={} maildir: cannot delete: {e}", self.session);
                    first_error.get_or_insert(e);
                }
            }
        }
        // The unlinks become durable before the lock goes (and before the
        // session says +OK).
        for sub in [Sub::Cur, Sub::New] {
            if touched.contains(&sub) {
                if let Err(e) = rustix::fs::fsync(self.fds.of(sub)) {
                    first_error.get_or_insert(at(e.into(), "fsync", &self.dir.join(sub.name())));
                }
            }
        }
        // `self` drops here, closing the lock file and releasing the lock.
        match first_error {
            None => Ok(removed),
            Some(error) => Err(CommitError { removed, error }),
        }
    }
}

impl OpenMaildir {
    fn unlink_entry(&self, index: usize) -> io::Result<Unlinked> {
        let entry = &self.entries[index];
        unlink_message(self.fds.of(entry.sub), &entry.name)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::maildrop::is_valid_uid;
    use std::fs;
    use std::io::Read;
    use std::os::unix::fs::PermissionsExt;
    use std::time::{Duration, UNIX_EPOCH};
    use tempfile::TempDir;

    pub(super) fn store() -> (TempDir, MaildirStore) {
        let tmp = tempfile::tempdir().unwrap();
        let store = MaildirStore::new(tmp.path().to_path_buf());
        (tmp, store)
    }

    /// Writes a message with a given mtime (seconds after an arbitrary
    /// epoch), creating the Maildir if needed.
    pub(super) fn put(
        store: &MaildirStore,
        user: &str,
        sub: &str,
        name: &str,
        body: &[u8],
        mtime: u64,
    ) {
        let dir = store.root().join(user);
        for s in ["cur", "new", "tmp"] {
            fs::create_dir_all(dir.join(s)).unwrap();
        }
        let path = dir.join(sub).join(name);
        fs::write(&path, body).unwrap();
        let t = UNIX_EPOCH + Duration::from_secs(1_700_000_000 + mtime);
        File::options()
            .write(true)
            .open(&path)
            .unwrap()
            .set_modified(t)
            .unwrap();
    }

    pub(super) fn names(store: &MaildirStore, user: &str, sub: &str) -> Vec<String> {
        let mut v: Vec<String> = fs::read_dir(store.root().join(user).join(sub))
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        v.sort();
        v
    }

    /// The message as stored, read whole through the blocking calls.
    pub(super) fn stored(md: &mut dyn Maildrop, index: usize) -> io::Result<Vec<u8>> {
        let mut bytes = Vec::new();
        md.open(index)?.read_to_end(&mut bytes)?;
        Ok(bytes)
    }

    /// The message in its wire form (CRLF line ends), as LIST counts it.
    pub(super) fn read(md: &mut dyn Maildrop, index: usize) -> io::Result<Vec<u8>> {
        stored(md, index).map(|bytes| crate::maildrop::to_wire(&bytes))
    }

    pub(super) fn uids(md: &dyn Maildrop) -> Vec<String> {
        md.messages().iter().map(|m| m.uid.clone()).collect()
    }

    #[test]
    fn rejects_bad_user_names() {
        let (_tmp, store) = store();
        for user in ["", "a/b", "/etc", "a\0b", ".", "..", ".hidden", "../x"] {
            match store.open(user, &ForSession::default()) {
                Err(OpenError::Invalid(why)) => assert!(!why.is_empty()),
                Err(e) => panic!("{user:?}: {e}"),
                Ok(_) => panic!("{user:?} accepted"),
            }
        }
        // Nothing was created for them.
        assert_eq!(fs::read_dir(store.root()).unwrap().count(), 0);
    }

    /// Attack review 10: 160,000 small files in new/ kept the scan (and
    /// the lock) going for seconds after its login was cut, since only a
    /// message's read looked at the login. Moving new/, listing cur/ and
    /// sizing each stop between two files; these messages' names give
    /// their sizes (W=), so none is read.
    #[test]
    fn a_scan_stops_between_files_when_its_login_is_gone() {
        let gone = || {
            let (session, gives_up) = ForSession::new(SessionId::from_raw(7));
            drop(gives_up);
            session
        };
        let said = |lines: &[(log::Level, String)], what: &str| {
            lines.iter().any(|(_, line)| {
                line.contains(&format!(
                    "stopped {what} after 0 of 50 files: the session gave up its login"
                ))
            })
        };
        let (_tmp, in_new) = store();
        for i in 0..50 {
            put(&in_new, "u", "new", &format!("n{i},S=2,W=3"), b"x\n", i);
        }
        let (opened, lines) = super::escape_tests::logged(|| in_new.open("u", &gone()));
        assert!(matches!(opened, Err(OpenError::Abandoned)), "{lines:?}");
        assert_eq!(names(&in_new, "u", "new").len(), 50, "none moved");
        assert!(said(&lines, "moving new/ to cur/"), "{lines:?}");

        let (_tmp, in_cur) = store();
        for i in 0..50 {
            put(&in_cur, "u", "cur", &format!("c{i},S=2,W=3:2,"), b"x\n", i);
        }
        let (opened, lines) = super::escape_tests::logged(|| in_cur.open("u", &gone()));
        assert!(matches!(opened, Err(OpenError::Abandoned)), "{lines:?}");
        assert!(said(&lines, "listing cur/"), "{lines:?}");
    }

    #[test]
    fn orders_by_mtime_then_name() {
        let (_tmp, store) = store();
        put(&store, "u", "cur", "c:2,", b"x\n", 1);
        put(&store, "u", "cur", "a:2,", b"x\n", 5);
        put(&store, "u", "cur", "b:2,", b"x\n", 1);
        put(&store, "u", "new", "d", b"x\n", 3);
        let md = store.open("u", &ForSession::default()).unwrap();
        assert_eq!(uids(&*md), ["b", "c", "d", "a"]);
    }

    #[test]
    fn skips_dot_files_directories_and_tmp() {
        let (_tmp, store) = store();
        put(&store, "u", "cur", "real:2,", b"x\n", 1);
        put(&store, "u", "cur", ".hidden:2,", b"x\n", 1);
        put(&store, "u", "tmp", "half-delivered", b"x\n", 1);
        fs::create_dir(store.root().join("u/cur/subdir")).unwrap();
        let md = store.open("u", &ForSession::default()).unwrap();
        assert_eq!(uids(&*md), ["real"]);
    }

    #[test]
    fn sizes_from_w_field_or_computed() {
        let (_tmp, store) = store();
        // A W= that can be true wins: the file is not read for it.
        put(&store, "u", "cur", "1.M1P1.h,S=3,W=5:2,S", b"ab\n", 1);
        put(&store, "u", "cur", "2.M1P1.h,W=4", b"ab\n", 2);
        // LF-only: every line end costs one more octet.
        put(&store, "u", "cur", "3:2,", b"a\nb\n", 3);
        // CRLF already: counted as is.
        put(&store, "u", "cur", "4:2,", b"a\r\nb\r\n", 4);
        // No final newline: +2 for the CRLF we add.
        put(&store, "u", "cur", "5:2,", b"a\nb", 5);
        // A malformed W= is ignored.
        put(&store, "u", "cur", "6,W=12x:2,", b"a\n", 6);
        put(&store, "u", "cur", "7,W=:2,", b"a\n", 7);
        put(&store, "u", "cur", "8:2,", b"", 8);
        let md = store.open("u", &ForSession::default()).unwrap();
        let sizes: Vec<u64> = md.messages().iter().map(|m| m.size).collect();
        assert_eq!(sizes, [5, 4, 6, 6, 6, 3, 3, 0]);
    }

    #[test]
    fn in_place_opens_and_reads_give_what_the_blocking_ones_give() {
        let (_tmp, store) = store();
        put(&store, "u", "cur", "1:2,", b"Subject: x\n\n.line\nlast", 1);
        // More than one read's worth, with a line end split across reads.
        let long = "y".repeat(70_000) + "\n";
        put(&store, "u", "cur", "2:2,", long.as_bytes(), 2);
        let mut md = store.open("u", &ForSession::default()).unwrap();
        for index in 0..2 {
            let blocking = stored(&mut *md, index).unwrap();
            // Just read, so in the caches; ext4, xfs, btrfs and tmpfs
            // answer RESOLVE_CACHED and RWF_NOWAIT.
            let mut reader = md.open_if_cached(index).expect("an open in place");
            let mut in_place = Vec::new();
            let mut buf = [0u8; 4096];
            loop {
                let n = reader.read_if_cached(&mut buf).expect("a read in place");
                if n == 0 {
                    break;
                }
                in_place.extend_from_slice(&buf[..n]);
            }
            assert_eq!(in_place, blocking, "index {index}");
        }
        assert!(md.open_if_cached(2).is_none(), "no such index");
        fs::remove_file(store.root().join("u/cur/1:2,")).unwrap();
        assert!(md.open_if_cached(0).is_none(), "gone: open reports it");
        assert_eq!(
            md.open(0).err().expect("gone").kind(),
            io::ErrorKind::NotFound
        );
    }

    #[test]
    fn open_gives_the_stored_bytes_and_sizes_count_crlf() {
        let (_tmp, store) = store();
        put(&store, "u", "cur", "1:2,", b"Subject: x\n\n.line\nlast", 1);
        put(&store, "u", "cur", "2,W=7:2,", b"a\r\nb\r\n", 2);
        let mut md = store.open("u", &ForSession::default()).unwrap();
        assert_eq!(stored(&mut *md, 0).unwrap(), b"Subject: x\n\n.line\nlast");
        let wire = read(&mut *md, 0).unwrap();
        assert_eq!(wire, b"Subject: x\r\n\r\n.line\r\nlast\r\n");
        assert_eq!(wire.len() as u64, md.messages()[0].size);
        assert_eq!(read(&mut *md, 1).unwrap(), b"a\r\nb\r\n");
        let e = md.open(2).err().expect("no message 3");
        assert_eq!(e.kind(), io::ErrorKind::InvalidInput);
    }

    #[test]
    fn duplicate_and_empty_base_names_get_fresh_names() {
        let (_tmp, store) = store();
        put(&store, "u", "cur", "dup:2,S", b"first\n", 1);
        put(&store, "u", "cur", "dup:2,RS", b"second\n", 2);
        put(&store, "u", "cur", ":2,S", b"nameless\n", 3);
        let mut md = store.open("u", &ForSession::default()).unwrap();
        let got = uids(&*md);
        assert_eq!(got.len(), 3);
        assert_eq!(got[0], "dup");
        assert_ne!(got[1], "dup");
        let unique: HashSet<_> = got.iter().collect();
        assert_eq!(unique.len(), 3);
        for uid in &got {
            assert!(is_valid_uid(uid.as_bytes()), "{uid}");
        }
        // The flags stayed; the contents are where they were.
        assert!(names(&store, "u", "cur")
            .iter()
            .any(|n| n.ends_with(":2,RS")));
        assert_eq!(read(&mut *md, 1).unwrap(), b"second\r\n");
        assert_eq!(read(&mut *md, 2).unwrap(), b"nameless\r\n");
        md.commit(&[]).unwrap();
        // Stable from now on.
        assert_eq!(
            uids(&*store.open("u", &ForSession::default()).unwrap()),
            got
        );
    }

    #[test]
    fn commit_deletes_only_marked_messages() {
        let (_tmp, store) = store();
        put(&store, "u", "cur", "1:2,", b"a\n", 1);
        put(&store, "u", "cur", "2:2,", b"b\n", 2);
        put(&store, "u", "cur", "3:2,", b"c\n", 3);
        let md = store.open("u", &ForSession::default()).unwrap();
        assert_eq!(md.commit(&[0, 2, 2]).unwrap(), 2, "two removed");
        assert_eq!(names(&store, "u", "cur"), ["2:2,"]);
    }

    /// A W= size that cannot be the message's (smaller than the file, or
    /// more than twice it) is not believed: STAT and LIST stay exact.
    #[test]
    fn a_lying_wire_size_in_the_name_is_measured_instead() {
        let (_tmp, store) = store();
        let body = b"Subject: x\n\nsixty-six octets of text, give or take a line or two\n";
        put(&store, "u", "cur", "2000.M2.host,S=1,W=1:2,", body, 1);
        put(
            &store,
            "u",
            "cur",
            "2001.M3.host,W=18446744073709551615:2,",
            body,
            2,
        );
        put(&store, "u", "cur", "2002.M4.host,W=70:2,", b"x\n", 3);
        let md = store.open("u", &ForSession::default()).unwrap();
        let wire = body.len() as u64 + body.iter().filter(|&&b| b == b'\n').count() as u64;
        let sizes: Vec<u64> = md.messages().iter().map(|m| m.size).collect();
        assert_eq!(sizes, [wire, wire, 3]);
        // A true W= is still taken as it is, without reading the file.
        put(&store, "u", "cur", "2003.M5.host,W=5:2,", b"abcd", 4);
        drop(md);
        let md = store.open("u", &ForSession::default()).unwrap();
        assert_eq!(md.messages()[3].size, 5, "a plausible W= is believed");
    }

    /// A message in new/ whose name cur/ already holds (a second
    /// delivery, a restored backup) is not moved over it: both are served,
    /// and neither is lost.
    #[test]
    fn new_mail_never_overwrites_a_message_in_cur() {
        let (_tmp, store) = store();
        put(&store, "u", "cur", "1000.M1.host:2,", b"first\n", 1);
        put(&store, "u", "new", "1000.M1.host", b"second\n", 2);
        let mut md = store.open("u", &ForSession::default()).unwrap();
        assert_eq!(md.messages().len(), 2, "both messages are listed");
        let mut bodies: Vec<Vec<u8>> = (0..2).map(|i| read(md.as_mut(), i).unwrap()).collect();
        bodies.sort();
        assert_eq!(bodies, [b"first\r\n".to_vec(), b"second\r\n".to_vec()]);
        let uids: std::collections::HashSet<_> = md.messages().iter().map(|m| &m.uid).collect();
        assert_eq!(uids.len(), 2, "UIDLs stay unique");
    }

    #[test]
    fn drop_without_commit_deletes_nothing() {
        let (_tmp, store) = store();
        put(&store, "u", "new", "1", b"a\n", 1);
        let md = store.open("u", &ForSession::default()).unwrap();
        assert_eq!(md.messages().len(), 1);
        drop(md);
        assert_eq!(names(&store, "u", "cur"), ["1:2,"]);
    }

    #[test]
    fn commit_rejects_bad_index_before_deleting_anything() {
        let (_tmp, store) = store();
        put(&store, "u", "cur", "1:2,", b"a\n", 1);
        let md = store.open("u", &ForSession::default()).unwrap();
        let e = md.commit(&[0, 5]).unwrap_err();
        assert_eq!(e.error.kind(), io::ErrorKind::InvalidInput);
        assert_eq!(e.removed, 0);
        assert_eq!(names(&store, "u", "cur"), ["1:2,"]);
    }

    #[test]
    fn renamed_message_is_found_by_base_name() {
        let (_tmp, store) = store();
        put(&store, "u", "cur", "1:2,", b"one\n", 1);
        put(&store, "u", "cur", "2:2,", b"two\n", 2);
        let mut md = store.open("u", &ForSession::default()).unwrap();
        let cur = store.root().join("u/cur");
        // An IMAP client marks both as seen during the session.
        fs::rename(cur.join("1:2,"), cur.join("1:2,S")).unwrap();
        fs::rename(cur.join("2:2,"), cur.join("2:2,S")).unwrap();
        assert_eq!(read(&mut *md, 0).unwrap(), b"one\r\n");
        fs::rename(cur.join("2:2,S"), cur.join("2:2,FS")).unwrap();
        md.commit(&[1]).unwrap();
        assert_eq!(names(&store, "u", "cur"), ["1:2,S"]);
    }

    #[test]
    fn vanished_message_reads_not_found_and_commit_ignores_it() {
        let (_tmp, store) = store();
        put(&store, "u", "cur", "1:2,", b"one\n", 1);
        put(&store, "u", "cur", "2:2,", b"two\n", 2);
        let mut md = store.open("u", &ForSession::default()).unwrap();
        fs::remove_file(store.root().join("u/cur/1:2,")).unwrap();
        assert_eq!(
            read(&mut *md, 0).unwrap_err().kind(),
            io::ErrorKind::NotFound
        );
        assert_eq!(read(&mut *md, 1).unwrap(), b"two\r\n");
        // Only what this commit unlinked counts as removed.
        assert_eq!(md.commit(&[0, 1]).unwrap(), 1);
        assert!(names(&store, "u", "cur").is_empty());
    }

    #[test]
    fn message_arriving_during_session_is_not_listed_or_deleted() {
        let (_tmp, store) = store();
        put(&store, "u", "cur", "1:2,", b"one\n", 1);
        let md = store.open("u", &ForSession::default()).unwrap();
        put(&store, "u", "new", "2", b"two\n", 2);
        assert_eq!(md.messages().len(), 1);
        md.commit(&[0]).unwrap();
        assert_eq!(names(&store, "u", "new"), ["2"]);
        assert_eq!(
            uids(&*store.open("u", &ForSession::default()).unwrap()),
            ["2"]
        );
    }

    #[test]
    fn unmovable_new_mail_is_served_from_new() {
        // Needs permission checks, which root bypasses.
        unprivileged(|| {
            let (_tmp, store) = store();
            put(&store, "u", "new", "1", b"one\n", 1);
            let cur = store.root().join("u/cur");
            fs::set_permissions(&cur, fs::Permissions::from_mode(0o500)).unwrap();
            let mut md = store.open("u", &ForSession::default()).unwrap();
            fs::set_permissions(&cur, fs::Permissions::from_mode(0o700)).unwrap();
            assert_eq!(uids(&*md), ["1"]);
            assert_eq!(read(&mut *md, 0).unwrap(), b"one\r\n");
            md.commit(&[0]).unwrap();
            assert!(names(&store, "u", "new").is_empty());
        });
    }

    /// Runs `body` on a thread of its own that is not root: under root (as
    /// in CI) the thread takes the credentials of `nobody` first. Linux
    /// keeps credentials per thread, and rustix changes only this one's,
    /// so the rest of the test run stays root.
    fn unprivileged(body: impl FnOnce() + Send + 'static) {
        use rustix::{
            process::{geteuid, Gid, Uid},
            thread::{set_thread_groups, set_thread_res_gid, set_thread_res_uid},
        };
        let outcome = std::thread::spawn(move || {
            if geteuid().is_root() {
                let (uid, gid) = (Uid::from_raw(65534), Gid::from_raw(65534));
                set_thread_groups(&[]).expect("dropping the supplementary groups");
                set_thread_res_gid(gid, gid, gid).expect("becoming group nogroup");
                set_thread_res_uid(uid, uid, uid).expect("becoming user nobody");
                assert!(!geteuid().is_root(), "still root");
            }
            body();
        })
        .join();
        if let Err(panic) = outcome {
            std::panic::resume_unwind(panic);
        }
    }
}
