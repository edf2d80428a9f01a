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

use super::{is_valid_uid, to_wire, wire_size_of, Maildrop, MaildropStore, MessageInfo, OpenError};
use md5::{Digest, Md5};
use std::collections::{HashMap, HashSet};
use std::ffi::{OsStr, OsString};
use std::fmt::Write as _;
use std::fs::{self, DirBuilder, File, OpenOptions};
use std::io;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{DirBuilderExt, MetadataExt, OpenOptionsExt};
use std::os::unix::io::AsRawFd;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{SystemTime, UNIX_EPOCH};

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

/// Wire sizes of message files already read, keyed by inode, length and
/// mtime: Maildir files never change in place, so a hit is the size. Like
/// Dovecot's index, it spares reading every message at every login when the
/// file names carry no `,W=` size.
#[derive(Debug, Default)]
struct SizeCache(Mutex<HashMap<FileStamp, u64>>);

/// Messages up to this size (on the wire) are read in place when cached.
const IN_PLACE_MAX: usize = 256 * 1024;
/// Enough entries for a large mail host; past it the cache starts over.
const SIZE_CACHE_LIMIT: usize = 500_000;

impl SizeCache {
    fn get(&self, stamp: &FileStamp) -> Option<u64> {
        self.0
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(stamp)
            .copied()
    }

    fn put(&self, stamp: FileStamp, size: u64) {
        let mut map = self.0.lock().unwrap_or_else(|p| p.into_inner());
        if map.len() >= SIZE_CACHE_LIMIT {
            map.clear();
        }
        map.insert(stamp, size);
    }
}

/// What identifies one version of a message file.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
struct FileStamp {
    dev: u64,
    ino: u64,
    len: u64,
    mtime: SystemTime,
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
    fn open(&self, user: &str) -> Result<Box<dyn Maildrop>, OpenError> {
        let dir = self.maildir_path(user)?;
        ensure_maildir(&dir)?;
        let lock = lock_maildir(&dir)?;
        Ok(Box::new(OpenMaildir::scan(dir, lock, &self.sizes)?))
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
    dir: PathBuf,
    entries: Vec<Entry>,
    infos: Vec<MessageInfo>,
    /// Held only for its flock: closing the file releases the lock, so
    /// dropping the maildrop (with or without commit) unlocks it.
    _lock: File,
}

/// A file found while listing, before it becomes an [`Entry`].
struct Found {
    sub: Sub,
    name: OsString,
    stamp: FileStamp,
}

impl OpenMaildir {
    /// Moves new mail to `cur/`, lists the messages and fixes the list for
    /// the session (RFC 1939 section 4: the maildrop is a snapshot).
    fn scan(dir: PathBuf, lock: File, sizes: &SizeCache) -> Result<Self, OpenError> {
        let stuck = move_new_to_cur(&dir)?;
        let mut found = Vec::new();
        list_sub(&dir, Sub::Cur, &mut found)?;
        for name in stuck {
            let path = dir.join(Sub::New.name()).join(&name);
            if let Some(stamp) = regular_file_stamp(&path)? {
                found.push(Found {
                    sub: Sub::New,
                    name,
                    stamp,
                });
            }
        }
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
        let mut entries = Vec::with_capacity(found.len());
        let mut infos = Vec::with_capacity(found.len());
        for f in found {
            let mut name = f.name;
            let mut uid = uid_for(base_of(name.as_bytes()));
            if base_of(name.as_bytes()).is_empty() || seen.contains(&uid) {
                // RFC 1939 section 7: the unique-id "uniquely identifies a
                // message within a maildrop". Dovecot renames such files too;
                // the rename makes the fix stable for later sessions.
                match rename_fresh(&dir, f.sub, &name) {
                    Ok(fresh) => {
                        log::warn!(
                            "maildir {}: renamed {}/{} to {}/{}: its base name was empty or not unique",
                            dir.display(),
                            f.sub.name(),
                            name.to_string_lossy(),
                            f.sub.name(),
                            fresh.to_string_lossy()
                        );
                        name = fresh;
                        uid = uid_for(base_of(name.as_bytes()));
                    }
                    Err(e) => {
                        // Hiding it for one session beats locking the user
                        // out or breaking UIDL for every message.
                        log::warn!(
                            "maildir {}: not listing {}/{}: its base name is empty or not unique, and renaming it failed: {e}",
                            dir.display(),
                            f.sub.name(),
                            name.to_string_lossy()
                        );
                        continue;
                    }
                }
            }
            let base = base_of(name.as_bytes()).to_vec();
            let size = match virtual_size(&base).or_else(|| sizes.get(&f.stamp)) {
                Some(size) => size,
                None => {
                    let path = dir.join(f.sub.name()).join(&name);
                    match File::open(&path).and_then(wire_size_of) {
                        Ok(size) => {
                            sizes.put(f.stamp, size);
                            size
                        }
                        // Deleted or renamed by another agent since the
                        // listing: it shows up again at the next login.
                        Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
                        Err(e) => return Err(at(e, "read", &path).into()),
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
            entries,
            infos,
            _lock: lock,
        })
    }

    fn path_of(&self, index: usize) -> PathBuf {
        let e = &self.entries[index];
        self.dir.join(e.sub.name()).join(&e.name)
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

    /// Re-reads `cur/` and `new/` and updates every entry whose file was
    /// renamed. All at once: an IMAP client marking everything as read
    /// renames every file, and re-scanning per message would be quadratic.
    fn refresh_names(&mut self) -> io::Result<()> {
        let mut by_base: HashMap<Vec<u8>, (Sub, OsString)> = HashMap::new();
        for sub in [Sub::Cur, Sub::New] {
            let path = self.dir.join(sub.name());
            for entry in fs::read_dir(&path).map_err(|e| at(e, "read directory", &path))? {
                let name = entry
                    .map_err(|e| at(e, "read directory", &path))?
                    .file_name();
                if name.as_bytes().starts_with(b".") {
                    continue;
                }
                let base = base_of(name.as_bytes()).to_vec();
                by_base.entry(base).or_insert((sub, name));
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

impl Maildrop for OpenMaildir {
    fn messages(&self) -> &[MessageInfo] {
        &self.infos
    }

    fn read(&mut self, index: usize) -> io::Result<Vec<u8>> {
        self.check_index(index)?;
        let path = self.path_of(index);
        match fs::read(&path) {
            Ok(raw) => return Ok(to_wire(&raw)),
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(at(e, "read", &path)),
        }
        // Renamed (flags changed) since login, or gone.
        self.refresh_names()?;
        let path = self.path_of(index);
        match fs::read(&path) {
            Ok(raw) => Ok(to_wire(&raw)),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Err(io::Error::new(
                io::ErrorKind::NotFound,
                format!(
                    "message {} (base name {}) is no longer in {}",
                    index + 1,
                    String::from_utf8_lossy(&self.entries[index].base),
                    self.dir.display()
                ),
            )),
            Err(e) => Err(at(e, "read", &path)),
        }
    }

    fn read_if_cached(&mut self, index: usize) -> Option<Vec<u8>> {
        let wire_size = self.infos.get(index)?.size;
        // Larger messages go off the async threads even when cached: the
        // copy and the line-end conversion would hold up the other
        // sessions of this worker.
        if wire_size > IN_PLACE_MAX as u64 {
            return None;
        }
        let file = File::open(self.path_of(index)).ok()?;
        // A stored message is never longer than its wire form (LF counts
        // as CRLF there): one buffer of that size, plus the octet that
        // shows end of file, holds it unless the file changed since login
        // (or its name's W= size lies, which the limit also catches).
        let raw = read_to_end_nowait(&file, wire_size as usize + 1, IN_PLACE_MAX)?;
        Some(to_wire(&raw))
    }

    fn commit(mut self: Box<Self>, deleted: &[usize]) -> io::Result<()> {
        // Check every index first: a session bug must not half-apply.
        for &index in deleted {
            self.check_index(index)?;
        }
        let mut indices = deleted.to_vec();
        indices.sort_unstable();
        indices.dedup();

        let mut first_error = None;
        let mut refreshed = false;
        let mut touched = HashSet::new();
        for index in indices {
            let mut path = self.path_of(index);
            let mut result = fs::remove_file(&path);
            if matches!(&result, Err(e) if e.kind() == io::ErrorKind::NotFound) && !refreshed {
                // Renamed by another agent? Look it up by base name, once.
                refreshed = true;
                if let Err(e) = self.refresh_names() {
                    first_error.get_or_insert(e);
                }
                path = self.path_of(index);
                result = fs::remove_file(&path);
            }
            match result {
                Ok(()) => {
                    touched.insert(self.entries[index].sub);
                }
                // Already gone: deleted by another agent, which is what we
                // wanted (RFC 1939 section 6 only forbids removing
                // messages that were not marked).
                Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                Err(e) => {
                    // Go on with the others: a partial QUIT is reported as
                    // "-ERR some deleted messages not removed".
                    log::warn!("maildir: cannot delete {}: {e}", path.display());
                    first_error.get_or_insert(at(e, "unlink", &path));
                }
            }
        }
        // The unlinks become durable before the lock goes (and before the
        // session says +OK).
        for sub in [Sub::Cur, Sub::New] {
            if touched.contains(&sub) {
                let path = self.dir.join(sub.name());
                if let Err(e) = File::open(&path).and_then(|d| d.sync_all()) {
                    first_error.get_or_insert(at(e, "fsync", &path));
                }
            }
        }
        // `self` drops here, closing the lock file and releasing the lock.
        match first_error {
            None => Ok(()),
            Some(e) => Err(e),
        }
    }
}

/// Creates the Maildir and any missing subdirectory, mode 0700, as Dovecot
/// does on first login; a user without mail yet gets an empty maildrop.
fn ensure_maildir(dir: &Path) -> io::Result<()> {
    let mut builder = DirBuilder::new();
    builder.mode(0o700);
    match builder.create(dir) {
        Ok(()) => {
            // The daemon runs as root; the delivery agent (Postfix's
            // virtual, Dovecot's LDA) usually as the owner of the mail root.
            // A Maildir made here must stay writable for it.
            if let Some(root) = dir.parent() {
                take_owner_of(dir, root)?;
            }
            log::info!("created maildir {}", dir.display());
        }
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {}
        Err(e) => return Err(at(e, "create maildir", dir)),
    }
    for sub in ["cur", "new", "tmp"] {
        let path = dir.join(sub);
        match builder.create(&path) {
            Ok(()) => take_owner_of(&path, dir)?,
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {}
            Err(e) => return Err(at(e, "create maildir", &path)),
        }
    }
    Ok(())
}

/// Gives `path` the owner and group of `like`.
fn take_owner_of(path: &Path, like: &Path) -> io::Result<()> {
    let meta = fs::metadata(like).map_err(|e| at(e, "stat", like))?;
    std::os::unix::fs::chown(path, Some(meta.uid()), Some(meta.gid()))
        .map_err(|e| at(e, "chown", path))
}

/// Takes the session lock: `flock(LOCK_EX|LOCK_NB)` on [`LOCK_FILE`].
///
/// flock locks belong to the open file description, so a second open in
/// this process is excluded just like another process, and the kernel drops
/// the lock when the file is closed or the process dies (no stale locks).
fn lock_maildir(dir: &Path) -> Result<File, OpenError> {
    let path = dir.join(LOCK_FILE);
    let file = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .mode(0o600)
        // A symlink planted as the lock file must not make us create or
        // lock some other file.
        .custom_flags(libc::O_NOFOLLOW)
        .open(&path)
        .map_err(|e| at(e, "open lock file", &path))?;
    loop {
        // SAFETY: flock only takes the descriptor, which `file` owns and
        // keeps open for the duration of the call.
        let rc = unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) };
        if rc == 0 {
            return Ok(file);
        }
        let e = io::Error::last_os_error();
        match e.raw_os_error() {
            Some(libc::EINTR) => continue,
            Some(libc::EWOULDBLOCK) => return Err(OpenError::InUse),
            _ => return Err(at(e, "lock", &path).into()),
        }
    }
}

/// Moves every message in `new/` to `cur/`, appending `:2,` to names
/// without an info part (Dovecot's rule: a name that has one keeps it).
/// Returns the names that could not be moved (read-only maildir, disk
/// full): like Dovecot, they stay in `new/` and are served from there.
fn move_new_to_cur(dir: &Path) -> Result<Vec<OsString>, OpenError> {
    let new = dir.join(Sub::New.name());
    let cur = dir.join(Sub::Cur.name());
    let mut stuck = Vec::new();
    for entry in fs::read_dir(&new).map_err(|e| at(e, "read directory", &new))? {
        let entry = entry.map_err(|e| at(e, "read directory", &new))?;
        let name = entry.file_name();
        // Dot files are in-progress or foreign files, never messages.
        if name.as_bytes().starts_with(b".") {
            continue;
        }
        if entry.file_type().is_ok_and(|t| t.is_dir()) {
            continue;
        }
        let mut target = name.clone();
        if !name.as_bytes().contains(&b':') {
            target.push(":2,");
        }
        match fs::rename(new.join(&name), cur.join(&target)) {
            Ok(()) => {}
            // Someone else (Dovecot) moved it already: the cur/ listing
            // finds it.
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => {
                log::warn!(
                    "maildir {}: cannot move new/{} to cur/: {e}; serving it from new/",
                    dir.display(),
                    name.to_string_lossy()
                );
                stuck.push(name);
            }
        }
    }
    Ok(stuck)
}

/// Lists the regular, non-dot files of one subdirectory.
fn list_sub(dir: &Path, sub: Sub, found: &mut Vec<Found>) -> Result<(), OpenError> {
    let path = dir.join(sub.name());
    for entry in fs::read_dir(&path).map_err(|e| at(e, "read directory", &path))? {
        let name = entry
            .map_err(|e| at(e, "read directory", &path))?
            .file_name();
        if name.as_bytes().starts_with(b".") {
            continue;
        }
        if let Some(stamp) = regular_file_stamp(&path.join(&name))? {
            found.push(Found { sub, name, stamp });
        }
    }
    Ok(())
}

/// The whole file, read with RWF_NOWAIT (preadv2(2)): only what is in the
/// page cache. `None` if any part would need the disk (EAGAIN), or the file
/// system cannot tell (EOPNOTSUPP), or anything else went wrong: the caller
/// falls back to an ordinary read, which also reports errors. A short read
/// is not the end under RWF_NOWAIT (the rest may be uncached): only a read
/// of 0 octets is.
/// `None` too if the file holds more than `limit` octets.
fn read_to_end_nowait(file: &File, capacity: usize, limit: usize) -> Option<Vec<u8>> {
    use std::os::fd::AsRawFd;
    let mut buf: Vec<u8> = Vec::with_capacity(capacity.min(limit + 1));
    loop {
        if buf.len() > limit {
            return None;
        }
        if buf.len() == buf.capacity() {
            buf.reserve(8192);
        }
        let spare = buf.spare_capacity_mut();
        let iov = libc::iovec {
            iov_base: spare.as_mut_ptr().cast(),
            iov_len: spare.len(),
        };
        // SAFETY: one iovec over the vector's spare capacity, which the
        // kernel fills with at most iov_len octets; the fd is open.
        let n = unsafe {
            libc::preadv2(
                file.as_raw_fd(),
                &iov,
                1,
                buf.len() as libc::off_t,
                libc::RWF_NOWAIT,
            )
        };
        match n {
            0 => return Some(buf),
            // SAFETY: the kernel wrote n (<= spare.len()) octets.
            n if n > 0 => unsafe { buf.set_len(buf.len() + n as usize) },
            _ => return None,
        }
    }
}

/// The identity of a regular file; None if it is gone (another agent
/// deleted it since the listing) or is not a regular file.
fn regular_file_stamp(path: &Path) -> Result<Option<FileStamp>, OpenError> {
    match fs::metadata(path) {
        Ok(m) if m.is_file() => Ok(Some(FileStamp {
            dev: m.dev(),
            ino: m.ino(),
            len: m.len(),
            mtime: m.modified().unwrap_or(UNIX_EPOCH),
        })),
        Ok(_) => Ok(None),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(at(e, "stat", path).into()),
    }
}

/// The Maildir base name: everything before the info separator ':'.
fn base_of(name: &[u8]) -> &[u8] {
    match name.iter().position(|&b| b == b':') {
        Some(i) => &name[..i],
        None => name,
    }
}

/// The UIDL of a base name: the name itself when it is a valid unique-id,
/// otherwise (too long, spaces, 8-bit bytes) its MD5 in hex, which is valid
/// and still stable across sessions.
fn uid_for(base: &[u8]) -> String {
    if is_valid_uid(base) {
        base.iter().map(|&b| char::from(b)).collect()
    } else {
        let mut hex = String::with_capacity(32);
        for b in Md5::digest(base) {
            // Writing to a String cannot fail.
            let _ = write!(hex, "{b:02x}");
        }
        hex
    }
}

/// Dovecot's `,W=<n>` field of the base name: the message size with CRLF
/// line ends, so LIST needs no read. Parsed like Dovecot's
/// `maildir_filename_get_size`: the first `,W=`, digits, then ',' or the
/// end. Unlike Dovecot, an empty or overflowing number is ignored (the size
/// is then computed) instead of read as 0.
fn virtual_size(base: &[u8]) -> Option<u64> {
    let start = base.windows(3).position(|w| w == b",W=")? + 3;
    let tail = &base[start..];
    let digits = tail.iter().take_while(|b| b.is_ascii_digit()).count();
    if digits == 0 || (digits < tail.len() && tail[digits] != b',') {
        return None;
    }
    std::str::from_utf8(&tail[..digits]).ok()?.parse().ok()
}

/// Renames `sub/name` to a fresh, unique base name, keeping its info part.
fn rename_fresh(dir: &Path, sub: Sub, name: &OsStr) -> io::Result<OsString> {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default();
    // The Maildir naming scheme (time, M microseconds, P pid, Q delivery
    // counter of this process, host) makes the name unique without a check.
    let mut fresh = OsString::from(format!(
        "{}.M{}P{}Q{}.{}",
        now.as_secs(),
        now.subsec_micros(),
        std::process::id(),
        COUNTER.fetch_add(1, Ordering::Relaxed),
        hostname()
    ));
    let bytes = name.as_bytes();
    if let Some(i) = bytes.iter().position(|&b| b == b':') {
        fresh.push(OsStr::from_bytes(&bytes[i..]));
    }
    let subdir = dir.join(sub.name());
    fs::rename(subdir.join(name), subdir.join(&fresh))?;
    Ok(fresh)
}

/// This host's name for new Maildir file names, with '/' and ':' written as
/// `\057` and `\072` as the Maildir specification asks.
fn hostname() -> &'static str {
    static HOST: OnceLock<String> = OnceLock::new();
    HOST.get_or_init(|| {
        let mut buf = [0u8; 256];
        // SAFETY: `buf` is valid for writes of `buf.len()` bytes, and
        // gethostname writes at most that many.
        let rc = unsafe { libc::gethostname(buf.as_mut_ptr().cast(), buf.len()) };
        let raw: &[u8] = if rc == 0 {
            let end = buf.iter().position(|&b| b == 0).unwrap_or(buf.len());
            &buf[..end]
        } else {
            b""
        };
        let mut host = String::new();
        for &b in raw {
            match b {
                b'/' => host.push_str("\\057"),
                b':' => host.push_str("\\072"),
                0x21..=0x7e => host.push(char::from(b)),
                _ => {}
            }
        }
        if host.is_empty() {
            host.push_str("localhost");
        }
        host
    })
}

/// Adds the operation and path to an I/O error, keeping its kind: the
/// server logs these, and a bare "Permission denied" says nothing.
fn at(e: io::Error, what: &str, path: &Path) -> io::Error {
    io::Error::new(e.kind(), format!("{what} {}: {e}", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;
    use std::time::Duration;
    use tempfile::TempDir;

    #[test]
    fn a_created_maildir_belongs_to_the_owner_of_the_root() {
        let tmp = TempDir::new().unwrap();
        // A root owned by someone else, as /var/vmail is owned by vmail.
        std::os::unix::fs::chown(tmp.path(), Some(65534), Some(65534)).unwrap();
        let store = MaildirStore::new(tmp.path().to_path_buf());
        drop(store.open("newbie").unwrap());
        for path in ["newbie", "newbie/cur", "newbie/new", "newbie/tmp"] {
            let meta = fs::metadata(tmp.path().join(path)).unwrap();
            assert_eq!((meta.uid(), meta.gid()), (65534, 65534), "{path}");
        }
    }

    #[test]
    fn sizes_are_cached_per_file_version() {
        let tmp = TempDir::new().unwrap();
        let store = MaildirStore::new(tmp.path().to_path_buf());
        let cur = tmp.path().join("u").join("cur");
        fs::create_dir_all(&cur).unwrap();
        fs::create_dir_all(tmp.path().join("u/new")).unwrap();
        fs::create_dir_all(tmp.path().join("u/tmp")).unwrap();
        let file = cur.join("1.M1P1.h:2,");
        fs::write(&file, "a\nb\n").unwrap();
        let sizes = |store: &MaildirStore| store.open("u").unwrap().messages()[0].size;
        assert_eq!(sizes(&store), 6);
        assert_eq!(sizes(&store), 6, "served from the cache");
        // A file rewritten in place (not Maildir practice, but possible)
        // is another version: its size is read again.
        fs::write(&file, "a\nb\nc\n").unwrap();
        assert_eq!(sizes(&store), 9);
    }

    fn store() -> (TempDir, MaildirStore) {
        let tmp = tempfile::tempdir().unwrap();
        let store = MaildirStore::new(tmp.path().to_path_buf());
        (tmp, store)
    }

    /// Writes a message with a given mtime (seconds after an arbitrary
    /// epoch), creating the Maildir if needed.
    fn put(store: &MaildirStore, user: &str, sub: &str, name: &str, body: &[u8], mtime: u64) {
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

    fn names(store: &MaildirStore, user: &str, sub: &str) -> Vec<String> {
        let mut v: Vec<String> = fs::read_dir(store.root().join(user).join(sub))
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        v.sort();
        v
    }

    fn uids(md: &dyn Maildrop) -> Vec<String> {
        md.messages().iter().map(|m| m.uid.clone()).collect()
    }

    #[test]
    fn rejects_bad_user_names() {
        let (_tmp, store) = store();
        for user in ["", "a/b", "/etc", "a\0b", ".", "..", ".hidden", "../x"] {
            match store.open(user) {
                Err(OpenError::Invalid(why)) => assert!(!why.is_empty()),
                Err(e) => panic!("{user:?}: {e}"),
                Ok(_) => panic!("{user:?} accepted"),
            }
        }
        // Nothing was created for them.
        assert_eq!(fs::read_dir(store.root()).unwrap().count(), 0);
    }

    #[test]
    fn creates_missing_maildir_0700() {
        let (_tmp, store) = store();
        let md = store.open("alice").unwrap();
        assert!(md.messages().is_empty());
        let dir = store.root().join("alice");
        for d in [
            dir.clone(),
            dir.join("cur"),
            dir.join("new"),
            dir.join("tmp"),
        ] {
            let mode = fs::metadata(&d).unwrap().permissions().mode();
            assert!(mode & 0o077 == 0, "{} is {mode:o}", d.display());
            assert!(fs::metadata(&d).unwrap().is_dir());
        }
        let lock = fs::metadata(dir.join(LOCK_FILE)).unwrap();
        assert_eq!(lock.permissions().mode() & 0o777 & !0o600, 0);
    }

    #[test]
    fn creates_missing_subdirectories() {
        let (_tmp, store) = store();
        fs::create_dir_all(store.root().join("bob").join("cur")).unwrap();
        store.open("bob").unwrap();
        assert!(store.root().join("bob/new").is_dir());
        assert!(store.root().join("bob/tmp").is_dir());
    }

    #[test]
    fn missing_root_is_an_error_not_created() {
        let tmp = tempfile::tempdir().unwrap();
        let root = tmp.path().join("nope");
        let store = MaildirStore::new(root.clone());
        match store.open("alice") {
            Err(OpenError::Io(e)) => {
                assert_eq!(e.kind(), io::ErrorKind::NotFound);
                assert!(e.to_string().contains("nope"), "{e}");
            }
            Err(e) => panic!("{e}"),
            Ok(_) => panic!("opened under a missing root"),
        }
        assert!(!root.exists());
    }

    #[test]
    fn moves_new_to_cur_like_dovecot() {
        let (_tmp, store) = store();
        put(&store, "u", "new", "1700000001.M1P1.host", b"a\n", 1);
        put(&store, "u", "new", "1700000002.M2P2.host:2,S", b"b\n", 2);
        put(&store, "u", "new", ".in-progress", b"c\n", 3);
        let md = store.open("u").unwrap();
        assert_eq!(uids(&*md), ["1700000001.M1P1.host", "1700000002.M2P2.host"]);
        assert_eq!(
            names(&store, "u", "cur"),
            ["1700000001.M1P1.host:2,", "1700000002.M2P2.host:2,S"]
        );
        assert_eq!(names(&store, "u", "new"), [".in-progress"]);
    }

    #[test]
    fn orders_by_mtime_then_name() {
        let (_tmp, store) = store();
        put(&store, "u", "cur", "c:2,", b"x\n", 1);
        put(&store, "u", "cur", "a:2,", b"x\n", 5);
        put(&store, "u", "cur", "b:2,", b"x\n", 1);
        put(&store, "u", "new", "d", b"x\n", 3);
        let md = store.open("u").unwrap();
        assert_eq!(uids(&*md), ["b", "c", "d", "a"]);
    }

    #[test]
    fn skips_dot_files_directories_and_tmp() {
        let (_tmp, store) = store();
        put(&store, "u", "cur", "real:2,", b"x\n", 1);
        put(&store, "u", "cur", ".hidden:2,", b"x\n", 1);
        put(&store, "u", "tmp", "half-delivered", b"x\n", 1);
        fs::create_dir(store.root().join("u/cur/subdir")).unwrap();
        let md = store.open("u").unwrap();
        assert_eq!(uids(&*md), ["real"]);
    }

    #[test]
    fn sizes_from_w_field_or_computed() {
        let (_tmp, store) = store();
        // W= wins even when it disagrees with the content: it is not read.
        put(&store, "u", "cur", "1.M1P1.h,S=3,W=999:2,S", b"ab\n", 1);
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
        let md = store.open("u").unwrap();
        let sizes: Vec<u64> = md.messages().iter().map(|m| m.size).collect();
        assert_eq!(sizes, [999, 4, 6, 6, 6, 3, 3, 0]);
    }

    #[test]
    fn virtual_size_parsing() {
        assert_eq!(virtual_size(b"1.M2P3.h,S=10,W=12"), Some(12));
        assert_eq!(virtual_size(b"1.M2P3.h,W=12,S=10"), Some(12));
        assert_eq!(virtual_size(b"1.M2P3.h,S=10"), None);
        assert_eq!(virtual_size(b"1.M2P3.h,W=1a"), None);
        assert_eq!(virtual_size(b"1.M2P3.h,W="), None);
        assert_eq!(virtual_size(b"1.M2P3.h,W=99999999999999999999999"), None);
    }

    #[test]
    fn read_if_cached_gives_what_read_gives() {
        let (_tmp, store) = store();
        put(&store, "u", "cur", "1:2,", b"Subject: x\n\n.line\nlast", 1);
        // Longer than the first guess at the buffer would be if sizes
        // were wrong, and with a line end split across reads.
        let long = "y".repeat(70_000) + "\n";
        put(&store, "u", "cur", "2:2,", long.as_bytes(), 2);
        let mut md = store.open("u").unwrap();
        for index in 0..2 {
            let read = md.read(index).unwrap();
            // Just read, so in the page cache; ext4, xfs, btrfs and tmpfs
            // answer RWF_NOWAIT.
            let cached = md.read_if_cached(index).expect("a cached read");
            assert_eq!(cached, read);
            assert_eq!(cached.len() as u64, md.messages()[index].size);
        }
        assert!(md.read_if_cached(2).is_none(), "no such index");
        fs::remove_file(store.root().join("u/cur/1:2,")).unwrap();
        assert!(md.read_if_cached(0).is_none(), "gone: read reports it");
        assert_eq!(md.read(0).unwrap_err().kind(), io::ErrorKind::NotFound);
        drop(md);

        // Over the in-place limit: read off the async threads instead.
        let huge = "z".repeat(IN_PLACE_MAX + 1);
        put(&store, "u", "cur", "3:2,", huge.as_bytes(), 3);
        // Names whose W= size lies (far too large, far too small).
        put(&store, "u", "cur", "4,W=999999999999999:2,", b"a\n", 4);
        put(&store, "u", "cur", "5,W=2:2,", huge.as_bytes(), 5);
        let mut md = store.open("u").unwrap();
        let names: Vec<&str> = md.messages().iter().map(|m| m.uid.as_str()).collect();
        assert_eq!(
            names,
            ["2:2,", "3", "4,W=999999999999999", "5,W=2"].map(|n| n.split(':').next().unwrap())
        );
        for index in 1..4 {
            md.read(index).unwrap();
            assert!(md.read_if_cached(index).is_none(), "index {index}");
        }
    }

    #[test]
    fn read_gives_crlf_wire_bytes() {
        let (_tmp, store) = store();
        put(&store, "u", "cur", "1:2,", b"Subject: x\n\n.line\nlast", 1);
        put(&store, "u", "cur", "2,W=7:2,", b"a\r\nb\r\n", 2);
        let mut md = store.open("u").unwrap();
        let wire = md.read(0).unwrap();
        assert_eq!(wire, b"Subject: x\r\n\r\n.line\r\nlast\r\n");
        assert_eq!(wire.len() as u64, md.messages()[0].size);
        assert_eq!(md.read(1).unwrap(), b"a\r\nb\r\n");
        let e = md.read(2).unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::InvalidInput);
    }

    #[test]
    fn uid_is_base_name_and_survives_flag_changes() {
        let (_tmp, store) = store();
        put(&store, "u", "cur", "1700000001.M1P1.host,S=2:2,", b"a\n", 1);
        let first = uids(&*store.open("u").unwrap());
        assert_eq!(first, ["1700000001.M1P1.host,S=2"]);
        let cur = store.root().join("u/cur");
        fs::rename(
            cur.join("1700000001.M1P1.host,S=2:2,"),
            cur.join("1700000001.M1P1.host,S=2:2,RS"),
        )
        .unwrap();
        assert_eq!(uids(&*store.open("u").unwrap()), first);
    }

    #[test]
    fn uid_falls_back_to_md5_hex() {
        let (_tmp, store) = store();
        let long = "x".repeat(71);
        put(&store, "u", "cur", &format!("{long}:2,"), b"a\n", 1);
        // 0x20 is outside the allowed range; the MD5 of this sentence is
        // the well-known test vector.
        let fox = "The quick brown fox jumps over the lazy dog";
        put(&store, "u", "cur", &format!("{fox}:2,S"), b"a\n", 2);
        let seventy = "y".repeat(70);
        put(&store, "u", "cur", &format!("{seventy}:2,"), b"a\n", 3);
        let md = store.open("u").unwrap();
        let got = uids(&*md);
        assert_eq!(got[0], uid_for(long.as_bytes()));
        assert_eq!(got[1], "9e107d9d372bb6826bd81d3542a419d6");
        assert_eq!(got[2], seventy);
        assert_eq!(got[0].len(), 32);
        assert!(got[0]
            .bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b)));
        assert_eq!(uid_for(b""), "d41d8cd98f00b204e9800998ecf8427e");
    }

    #[test]
    fn duplicate_and_empty_base_names_get_fresh_names() {
        let (_tmp, store) = store();
        put(&store, "u", "cur", "dup:2,S", b"first\n", 1);
        put(&store, "u", "cur", "dup:2,RS", b"second\n", 2);
        put(&store, "u", "cur", ":2,S", b"nameless\n", 3);
        let mut md = store.open("u").unwrap();
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
        assert_eq!(md.read(1).unwrap(), b"second\r\n");
        assert_eq!(md.read(2).unwrap(), b"nameless\r\n");
        md.commit(&[]).unwrap();
        // Stable from now on.
        assert_eq!(uids(&*store.open("u").unwrap()), got);
    }

    #[test]
    fn second_open_is_in_use_until_drop_or_commit() {
        let (_tmp, store) = store();
        put(&store, "u", "cur", "1:2,", b"a\n", 1);
        let first = store.open("u").unwrap();
        assert!(matches!(store.open("u"), Err(OpenError::InUse)));
        // Another user is not affected.
        store.open("v").unwrap();
        drop(first);
        let second = store.open("u").unwrap();
        assert!(matches!(store.open("u"), Err(OpenError::InUse)));
        second.commit(&[]).unwrap();
        store.open("u").unwrap();
    }

    #[test]
    fn lock_is_excluded_by_an_independent_flock() {
        // What another process would do: its own open file description.
        let (_tmp, store) = store();
        store.open("u").unwrap();
        let other = File::open(store.root().join("u").join(LOCK_FILE)).unwrap();
        // SAFETY: flock on a descriptor owned by `other`.
        let rc = unsafe { libc::flock(other.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) };
        assert_eq!(rc, 0);
        assert!(matches!(store.open("u"), Err(OpenError::InUse)));
        drop(other);
        store.open("u").unwrap();
    }

    #[test]
    fn lock_file_is_not_a_message() {
        let (_tmp, store) = store();
        put(&store, "u", "cur", "1:2,", b"a\n", 1);
        store.open("u").unwrap();
        assert_eq!(uids(&*store.open("u").unwrap()), ["1"]);
    }

    #[test]
    fn commit_deletes_only_marked_messages() {
        let (_tmp, store) = store();
        put(&store, "u", "cur", "1:2,", b"a\n", 1);
        put(&store, "u", "cur", "2:2,", b"b\n", 2);
        put(&store, "u", "cur", "3:2,", b"c\n", 3);
        let md = store.open("u").unwrap();
        md.commit(&[0, 2, 2]).unwrap();
        assert_eq!(names(&store, "u", "cur"), ["2:2,"]);
    }

    #[test]
    fn drop_without_commit_deletes_nothing() {
        let (_tmp, store) = store();
        put(&store, "u", "new", "1", b"a\n", 1);
        let md = store.open("u").unwrap();
        assert_eq!(md.messages().len(), 1);
        drop(md);
        assert_eq!(names(&store, "u", "cur"), ["1:2,"]);
    }

    #[test]
    fn commit_rejects_bad_index_before_deleting_anything() {
        let (_tmp, store) = store();
        put(&store, "u", "cur", "1:2,", b"a\n", 1);
        let md = store.open("u").unwrap();
        let e = md.commit(&[0, 5]).unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::InvalidInput);
        assert_eq!(names(&store, "u", "cur"), ["1:2,"]);
    }

    #[test]
    fn renamed_message_is_found_by_base_name() {
        let (_tmp, store) = store();
        put(&store, "u", "cur", "1:2,", b"one\n", 1);
        put(&store, "u", "cur", "2:2,", b"two\n", 2);
        let mut md = store.open("u").unwrap();
        let cur = store.root().join("u/cur");
        // An IMAP client marks both as seen during the session.
        fs::rename(cur.join("1:2,"), cur.join("1:2,S")).unwrap();
        fs::rename(cur.join("2:2,"), cur.join("2:2,S")).unwrap();
        assert_eq!(md.read(0).unwrap(), b"one\r\n");
        fs::rename(cur.join("2:2,S"), cur.join("2:2,FS")).unwrap();
        md.commit(&[1]).unwrap();
        assert_eq!(names(&store, "u", "cur"), ["1:2,S"]);
    }

    #[test]
    fn vanished_message_reads_not_found_and_commit_ignores_it() {
        let (_tmp, store) = store();
        put(&store, "u", "cur", "1:2,", b"one\n", 1);
        put(&store, "u", "cur", "2:2,", b"two\n", 2);
        let mut md = store.open("u").unwrap();
        fs::remove_file(store.root().join("u/cur/1:2,")).unwrap();
        assert_eq!(md.read(0).unwrap_err().kind(), io::ErrorKind::NotFound);
        assert_eq!(md.read(1).unwrap(), b"two\r\n");
        md.commit(&[0, 1]).unwrap();
        assert!(names(&store, "u", "cur").is_empty());
    }

    #[test]
    fn message_arriving_during_session_is_not_listed_or_deleted() {
        let (_tmp, store) = store();
        put(&store, "u", "cur", "1:2,", b"one\n", 1);
        let md = store.open("u").unwrap();
        put(&store, "u", "new", "2", b"two\n", 2);
        assert_eq!(md.messages().len(), 1);
        md.commit(&[0]).unwrap();
        assert_eq!(names(&store, "u", "new"), ["2"]);
        assert_eq!(uids(&*store.open("u").unwrap()), ["2"]);
    }

    #[test]
    fn unmovable_new_mail_is_served_from_new() {
        // Needs permission checks, which root bypasses.
        // SAFETY: geteuid has no preconditions.
        if unsafe { libc::geteuid() } == 0 {
            eprintln!("skipped: running as root");
            return;
        }
        let (_tmp, store) = store();
        put(&store, "u", "new", "1", b"one\n", 1);
        let cur = store.root().join("u/cur");
        fs::set_permissions(&cur, fs::Permissions::from_mode(0o500)).unwrap();
        let mut md = store.open("u").unwrap();
        fs::set_permissions(&cur, fs::Permissions::from_mode(0o700)).unwrap();
        assert_eq!(uids(&*md), ["1"]);
        assert_eq!(md.read(0).unwrap(), b"one\r\n");
        md.commit(&[0]).unwrap();
        assert!(names(&store, "u", "new").is_empty());
    }
}
