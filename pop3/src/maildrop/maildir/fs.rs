//! The file-system calls on a Maildir: creating it, the session lock,
//! moving new mail to `cur/`, listing, opening, reading (without waiting
//! for the disk where it can), renaming and unlinking messages.
//!
//! Nothing here follows a symbolic link or waits on a file that is not a
//! regular one. The Maildir and its `cur/`, `new/` and `tmp/` are opened
//! as directory fds with O_NOFOLLOW (a link there refuses the maildrop),
//! and every later call is relative to those fds (openat, renameat,
//! unlinkat, fstatat without following): whoever can write the Maildir
//! cannot swap a directory for a link to somewhere else. Messages are
//! opened with O_NOFOLLOW|O_NONBLOCK and served only when fstat says they
//! are regular files, so a FIFO or a device in their place is refused at
//! once instead of being waited on.
//!
//! Every call here tolerates a file that another agent moved or removed
//! meanwhile.

use super::names::{cur_name, fresh_name};
use super::size_cache::FileStamp;
use super::{Sub, LOCK_FILE, LOG_TARGET};
use crate::log_text::LogText;
use crate::maildrop::{ForSession, MessageReader, OpenError};
use crate::session_id::SessionId;
use rustix::fd::OwnedFd;
use rustix::fs::{
    fchown, flock, fstat, mkdirat, openat, openat2, renameat, renameat_with, statat, unlinkat,
    AtFlags, Dir, FileType, FlockOperation, Gid, Mode, OFlags, RenameFlags, ResolveFlags, Stat,
    Uid,
};
use rustix::io::{preadv2, Errno, ReadWriteFlags};
use std::ffi::{OsStr, OsString};
use std::fs::File;
use std::io::{self, IoSliceMut, Read};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::FileExt;
use std::path::Path;

/// A file found while listing, before it becomes a listed message.
pub(super) struct Found {
    pub(super) sub: Sub,
    pub(super) name: OsString,
    pub(super) stamp: FileStamp,
}

/// A Maildir's directories, opened without following symbolic links.
pub(super) struct MaildirFds {
    pub(super) maildir: OwnedFd,
    pub(super) cur: OwnedFd,
    pub(super) new: OwnedFd,
}

impl MaildirFds {
    pub(super) fn of(&self, sub: Sub) -> &OwnedFd {
        match sub {
            Sub::Cur => &self.cur,
            Sub::New => &self.new,
        }
    }
}

/// A directory below the mail root: never through a symbolic link.
const DIRECTORY: OFlags = OFlags::RDONLY
    .union(OFlags::DIRECTORY)
    .union(OFlags::NOFOLLOW)
    .union(OFlags::CLOEXEC);

/// A message: not through a symbolic link, and without waiting for a
/// writer (a FIFO) or becoming anyone's terminal (a device).
const MESSAGE: OFlags = OFlags::RDONLY
    .union(OFlags::NOFOLLOW)
    .union(OFlags::NONBLOCK)
    .union(OFlags::NOCTTY)
    .union(OFlags::CLOEXEC);

/// The mail root: the operator's choice, so a symbolic link is followed.
const MAIL_ROOT: OFlags = OFlags::RDONLY
    .union(OFlags::DIRECTORY)
    .union(OFlags::CLOEXEC);

/// The lock file, created if missing: a symbolic link, a FIFO or a device
/// planted as the lock file must not make us create, wait on or lock
/// anything else.
const LOCK: OFlags = OFlags::RDWR
    .union(OFlags::CREATE)
    .union(OFlags::NOFOLLOW)
    .union(OFlags::NONBLOCK)
    .union(OFlags::NOCTTY)
    .union(OFlags::CLOEXEC);

/// Opens `<root>/<user>` and its `cur/`, `new/` and `tmp/`, creating what
/// is missing, mode 0700, as Dovecot does on first login (a user without
/// mail yet gets an empty maildrop). `path` is `<root>/<user>`, for
/// messages.
///
/// The mail root itself is the operator's choice and is opened as
/// configured (it may be a symbolic link); below it, nothing is followed:
/// a Maildir, or one of its directories, that is a symbolic link refuses
/// the maildrop ([`OpenError::Unsafe`]) and nothing of it is touched.
pub(super) fn open_maildir(
    root: &Path,
    user: &str,
    path: &Path,
    session: SessionId,
) -> Result<MaildirFds, OpenError> {
    let root_fd = rustix::fs::open(root, MAIL_ROOT, Mode::empty())
        .map_err(|e| at(e.into(), "open mail root", root))?;
    let (maildir, created) = subdirectory(&root_fd, OsStr::new(user), path)?;
    if created {
        // The daemon runs as root; the delivery agent (Postfix's
        // virtual, Dovecot's LDA) usually as the owner of the mail root.
        // A Maildir made here must stay writable for it.
        take_owner_of(&maildir, &root_fd, path)?;
        log::info!(target: LOG_TARGET, "session={session} created maildir {}", LogText::of(path.as_os_str().as_bytes()));
    }
    let mut opened = Vec::with_capacity(3);
    for sub in ["cur", "new", "tmp"] {
        let sub_path = path.join(sub);
        let (fd, created) = subdirectory(&maildir, OsStr::new(sub), &sub_path)?;
        if created {
            take_owner_of(&fd, &maildir, &sub_path)?;
        }
        opened.push(fd);
    }
    // tmp/ is only checked: deliveries write there, sessions never do.
    opened.pop();
    let new = opened.pop().expect("new/ was opened");
    let cur = opened.pop().expect("cur/ was opened");
    Ok(MaildirFds { maildir, cur, new })
}

/// Opens the directory `name` in `parent`, creating it if missing.
/// Returns whether it was created.
fn subdirectory(parent: &OwnedFd, name: &OsStr, path: &Path) -> Result<(OwnedFd, bool), OpenError> {
    let created = match mkdirat(parent, name, Mode::from_raw_mode(0o700)) {
        Ok(()) => true,
        Err(Errno::EXIST) => false,
        Err(e) => return Err(at(e.into(), "create maildir", path).into()),
    };
    match openat(parent, name, DIRECTORY, Mode::empty()) {
        Ok(fd) => Ok((fd, created)),
        Err(e @ (Errno::LOOP | Errno::NOTDIR)) => {
            let kind = match statat(parent, name, AtFlags::SYMLINK_NOFOLLOW) {
                Ok(stat) => kind_of(&stat),
                Err(_) => "not a directory",
            };
            Err(OpenError::Unsafe(format!(
                "{} is {kind}, not a directory; it is not followed ({e})",
                LogText::of(path.as_os_str().as_bytes())
            )))
        }
        Err(e) => Err(at(e.into(), "open", path).into()),
    }
}

/// Gives the directory `fd` (just created) the owner and group of `like`.
fn take_owner_of(fd: &OwnedFd, like: &OwnedFd, path: &Path) -> io::Result<()> {
    let owner = fstat(like).map_err(|e| at(e.into(), "stat the parent of", path))?;
    fchown(
        fd,
        Some(Uid::from_raw(owner.st_uid)),
        Some(Gid::from_raw(owner.st_gid)),
    )
    .map_err(|e| at(e.into(), "chown", path))
}

/// Takes the session lock: `flock(LOCK_EX|LOCK_NB)` on [`LOCK_FILE`].
///
/// flock locks belong to the open file description, so a second open in
/// this process is excluded just like another process, and the kernel drops
/// the lock when the file is closed or the process dies (no stale locks).
pub(super) fn lock_maildir(maildir: &OwnedFd, path: &Path) -> Result<File, OpenError> {
    let lock_path = path.join(LOCK_FILE);
    let fd = openat(maildir, LOCK_FILE, LOCK, Mode::from_raw_mode(0o600));
    let fd = match fd {
        Ok(fd) => fd,
        Err(Errno::LOOP) => {
            return Err(OpenError::Unsafe(format!(
                "{} is a symbolic link",
                LogText::of(lock_path.as_os_str().as_bytes())
            )))
        }
        Err(e) => return Err(at(e.into(), "open lock file", &lock_path).into()),
    };
    let stat = fstat(&fd).map_err(|e| at(e.into(), "stat", &lock_path))?;
    if FileType::from_raw_mode(stat.st_mode) != FileType::RegularFile {
        return Err(OpenError::Unsafe(format!(
            "{} is {}, not a regular file",
            LogText::of(lock_path.as_os_str().as_bytes()),
            kind_of(&stat)
        )));
    }
    let file = File::from(fd);
    loop {
        match flock(&file, FlockOperation::NonBlockingLockExclusive) {
            Ok(()) => return Ok(file),
            Err(Errno::INTR) => continue,
            Err(Errno::WOULDBLOCK) => return Err(OpenError::InUse),
            Err(e) => return Err(at(e.into(), "lock", &lock_path).into()),
        }
    }
}

/// What an entry of `cur/` or `new/` is, seen without following it.
pub(super) enum Seen {
    Message(FileStamp),
    /// Deleted or renamed by another agent since the listing.
    Gone,
    /// Anything but a regular file, named ("a FIFO", ...).
    Other(&'static str),
}

/// Looks at `name` in `dir` without following it (fstatat with
/// AT_SYMLINK_NOFOLLOW).
pub(super) fn look_at(dir: &OwnedFd, name: &OsStr) -> io::Result<Seen> {
    match statat(dir, name, AtFlags::SYMLINK_NOFOLLOW) {
        Ok(stat) if is_regular(&stat) => Ok(Seen::Message(FileStamp::of(&stat))),
        Ok(stat) => Ok(Seen::Other(kind_of(&stat))),
        Err(Errno::NOENT) => Ok(Seen::Gone),
        Err(e) => Err(e.into()),
    }
}

fn is_regular(stat: &Stat) -> bool {
    FileType::from_raw_mode(stat.st_mode) == FileType::RegularFile
}

/// What a file that is not a regular one is, for the log.
fn kind_of(stat: &Stat) -> &'static str {
    match FileType::from_raw_mode(stat.st_mode) {
        FileType::RegularFile => "a regular file",
        FileType::Directory => "a directory",
        FileType::Symlink => "a symbolic link",
        FileType::Fifo => "a FIFO",
        FileType::Socket => "a socket",
        FileType::CharacterDevice => "a character device",
        FileType::BlockDevice => "a block device",
        FileType::Unknown => "of an unknown type",
    }
}

/// The names in a directory, but `.`, `..` and other dot files (in-progress
/// or foreign files, never messages), with the type the directory entry
/// gives (which may be unknown: [`look_at`] tells for sure).
pub(super) fn names_in(dir: &OwnedFd) -> io::Result<Vec<(OsString, FileType)>> {
    let mut names = Vec::new();
    for entry in Dir::read_from(dir)? {
        let entry = entry?;
        let name = entry.file_name().to_bytes();
        if name.starts_with(b".") {
            continue;
        }
        names.push((OsStr::from_bytes(name).to_os_string(), entry.file_type()));
    }
    Ok(names)
}

/// Logs, once per listing, an entry that is not served.
fn warn_skipped(session: SessionId, path: &Path, sub: Sub, name: &OsStr, kind: &str) {
    log::warn!(target: LOG_TARGET, "session={session} maildir {}: skipping {}/{}: it is {kind}, not a regular file",
        LogText::of(path.as_os_str().as_bytes()),
        sub.name(),
        LogText::of(name.as_bytes())
    );
}

/// The scan of a maildrop stops between two files once its session has
/// given up the login, so that the lock goes with the login: a maildrop of
/// many small files takes long to move and list too, not only a large
/// message to size. Says so, and gives the error that ends the open.
pub(super) fn stop_if_gone(
    session: &ForSession,
    path: &Path,
    doing: &str,
    done: usize,
    total: usize,
) -> Result<(), OpenError> {
    if !session.is_gone() {
        return Ok(());
    }
    log::warn!(target: LOG_TARGET, "session={} maildir {}: stopped {doing} after {done} of {total} files: the session gave up its login",
        session.id,
        LogText::of(path.as_os_str().as_bytes())
    );
    Err(OpenError::Abandoned)
}

/// Moves every message in `new/` to `cur/`, under its [`cur_name`].
/// Returns the messages that could not be moved (read-only maildir, disk
/// full): like Dovecot, they stay in `new/` and are served from there.
/// Anything but a regular file stays where it is, with a warning. Stops
/// when `for_session` gives up (those moved stay in `cur/`).
pub(super) fn move_new_to_cur(
    fds: &MaildirFds,
    path: &Path,
    for_session: &ForSession,
) -> Result<Vec<Found>, OpenError> {
    let session = for_session.id;
    let new_path = path.join(Sub::New.name());
    let mut stuck = Vec::new();
    let names = names_in(&fds.new).map_err(|e| at(e, "read directory", &new_path))?;
    let total = names.len();
    for (done, (name, _)) in names.into_iter().enumerate() {
        stop_if_gone(for_session, path, "moving new/ to cur/", done, total)?;
        let stamp =
            match look_at(&fds.new, &name).map_err(|e| at(e, "stat", &new_path.join(&name)))? {
                Seen::Message(stamp) => stamp,
                Seen::Gone => continue,
                Seen::Other(kind) => {
                    warn_skipped(session, path, Sub::New, &name, kind);
                    continue;
                }
            };
        // NOREPLACE: a message of the same name already in cur/ (a second
        // delivery, a restored backup) must not be overwritten; RFC 1939
        // section 6 lets a session remove only what it marked. The new
        // one stays in new/, and the listing gives one of the two a
        // unique name.
        match renameat_with(
            &fds.new,
            &name,
            &fds.cur,
            cur_name(&name),
            RenameFlags::NOREPLACE,
        ) {
            Ok(()) => {}
            // Someone else (Dovecot) moved it already: the cur/ listing
            // finds it.
            Err(Errno::NOENT) => {}
            Err(e) => {
                log::warn!(target: LOG_TARGET, "session={session} maildir {}: cannot move new/{} to cur/: {e}; serving it from new/",
                    LogText::of(path.as_os_str().as_bytes()),
                    LogText::of(name.as_bytes())
                );
                stuck.push(Found {
                    sub: Sub::New,
                    name,
                    stamp,
                });
            }
        }
    }
    Ok(stuck)
}

/// Lists the regular, non-dot files of one subdirectory; anything else is
/// skipped with a warning. Stops when `for_session` gives up.
pub(super) fn list_sub(
    fds: &MaildirFds,
    sub: Sub,
    path: &Path,
    found: &mut Vec<Found>,
    for_session: &ForSession,
) -> Result<(), OpenError> {
    let session = for_session.id;
    let dir = fds.of(sub);
    let sub_path = path.join(sub.name());
    let names = names_in(dir).map_err(|e| at(e, "read directory", &sub_path))?;
    let total = names.len();
    let doing = format!("listing {}/", sub.name());
    for (done, (name, _)) in names.into_iter().enumerate() {
        stop_if_gone(for_session, path, &doing, done, total)?;
        match look_at(dir, &name).map_err(|e| at(e, "stat", &sub_path.join(&name)))? {
            Seen::Message(stamp) => found.push(Found { sub, name, stamp }),
            Seen::Gone => {}
            Seen::Other(kind) => warn_skipped(session, path, sub, &name, kind),
        }
    }
    Ok(())
}

/// A message opened for reading, or why not.
pub(super) enum Opened {
    File(File),
    Gone,
    /// Not a regular file (any more), named ("a FIFO", ...).
    Other(&'static str),
}

/// Opens the message `name` in `dir`: O_NOFOLLOW|O_NONBLOCK, then served
/// only if fstat says it is a regular file.
pub(super) fn open_message(dir: &OwnedFd, name: &OsStr) -> io::Result<Opened> {
    match openat(dir, name, MESSAGE, Mode::empty()) {
        Ok(fd) => checked(fd),
        Err(Errno::NOENT) => Ok(Opened::Gone),
        // ELOOP (a link), ENXIO (a socket, a device without a driver),
        // ...: say what it is, if it is not a regular file.
        Err(e) => match look_at(dir, name) {
            Ok(Seen::Other(kind)) => Ok(Opened::Other(kind)),
            Ok(Seen::Gone) => Ok(Opened::Gone),
            _ => Err(e.into()),
        },
    }
}

/// [`open_message`], but only when every part of the lookup is in the
/// kernel's caches (openat2 with RESOLVE_CACHED, Linux 5.12): then it
/// cannot wait for the disk and may run on an async thread. `None` when
/// it would wait, when the kernel lacks openat2 or the flag, and when the
/// file is not a regular one: [`open_message`] then says what it is.
pub(super) fn open_message_cached(dir: &OwnedFd, name: &OsStr) -> Option<File> {
    const RESOLVE: ResolveFlags = ResolveFlags::CACHED
        .union(ResolveFlags::NO_SYMLINKS)
        .union(ResolveFlags::BENEATH);
    let fd = openat2(dir, name, MESSAGE, Mode::empty(), RESOLVE).ok()?;
    match checked(fd) {
        Ok(Opened::File(file)) => Some(file),
        _ => None,
    }
}

fn checked(fd: OwnedFd) -> io::Result<Opened> {
    let stat = fstat(&fd)?;
    if is_regular(&stat) {
        Ok(Opened::File(File::from(fd)))
    } else {
        Ok(Opened::Other(kind_of(&stat)))
    }
}

/// What [`unlink_message`] did.
pub(super) enum Unlinked {
    Removed,
    Gone,
    /// Not a regular file any more: left alone.
    Other(&'static str),
}

/// Unlinks the message `name` in `dir` if it is still a regular file
/// (unlinkat on the directory fd, never a path). Between the look and the
/// unlink another agent may swap the name for something else; unlinkat
/// then removes that entry itself (it never follows a link), inside the
/// Maildir.
pub(super) fn unlink_message(dir: &OwnedFd, name: &OsStr) -> io::Result<Unlinked> {
    match look_at(dir, name)? {
        Seen::Message(_) => match unlinkat(dir, name, AtFlags::empty()) {
            Ok(()) => Ok(Unlinked::Removed),
            Err(Errno::NOENT) => Ok(Unlinked::Gone),
            Err(e) => Err(e.into()),
        },
        Seen::Gone => Ok(Unlinked::Gone),
        Seen::Other(kind) => Ok(Unlinked::Other(kind)),
    }
}

/// A message being read: positioned reads (pread), so that the reads in
/// place (RWF_NOWAIT) and on the blocking pool take turns on one offset.
pub(super) struct MessageFile {
    file: File,
    offset: u64,
}

impl MessageFile {
    pub(super) fn new(file: File) -> Self {
        Self { file, offset: 0 }
    }
}

impl Read for MessageFile {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.file.read_at(buf, self.offset)?;
        self.offset += n as u64;
        Ok(n)
    }
}

impl MessageReader for MessageFile {
    /// preadv2(2) with RWF_NOWAIT: only what is in the page cache. `None`
    /// if the next octets would need the disk (EAGAIN), or the file system
    /// cannot tell (EOPNOTSUPP), or anything else went wrong: the caller
    /// falls back to an ordinary read, which also reports errors. A short
    /// read is not the end under RWF_NOWAIT (the rest may be uncached):
    /// only a read of 0 octets is.
    fn read_if_cached(&mut self, buf: &mut [u8]) -> Option<usize> {
        let mut iov = [IoSliceMut::new(buf)];
        let n = preadv2(&self.file, &mut iov, self.offset, ReadWriteFlags::NOWAIT).ok()?;
        self.offset += n as u64;
        Some(n)
    }
}

/// Renames `name` in `dir` to a [`fresh_name`], keeping its info part.
pub(super) fn rename_fresh(dir: &OwnedFd, name: &OsStr) -> io::Result<OsString> {
    let fresh = fresh_name(name);
    renameat(dir, name, dir, &fresh)?;
    Ok(fresh)
}

/// Adds the operation and path to an I/O error, keeping its kind: the
/// server logs these, and a bare "Permission denied" says nothing.
pub(super) fn at(e: io::Error, what: &str, path: &Path) -> io::Error {
    io::Error::new(
        e.kind(),
        format!("{what} {}: {e}", LogText::of(path.as_os_str().as_bytes())),
    )
}

#[cfg(test)]
mod tests {
    use super::super::tests::{names, put, store, uids};
    use super::super::MaildirStore;
    use super::*;
    use crate::maildrop::{ForSession, MaildropStore};
    use std::fs;
    use std::os::unix::fs::{MetadataExt, PermissionsExt};
    use tempfile::TempDir;

    #[test]
    fn a_created_maildir_belongs_to_the_owner_of_the_root() {
        let tmp = TempDir::new().unwrap();
        // A root owned by someone else, as /var/vmail is owned by vmail.
        std::os::unix::fs::chown(tmp.path(), Some(65534), Some(65534)).unwrap();
        let store = MaildirStore::new(tmp.path().to_path_buf());
        drop(store.open("newbie", &ForSession::default()).unwrap());
        for path in ["newbie", "newbie/cur", "newbie/new", "newbie/tmp"] {
            let meta = fs::metadata(tmp.path().join(path)).unwrap();
            assert_eq!((meta.uid(), meta.gid()), (65534, 65534), "{path}");
        }
    }

    #[test]
    fn creates_missing_maildir_0700() {
        let (_tmp, store) = store();
        let md = store.open("alice", &ForSession::default()).unwrap();
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
        store.open("bob", &ForSession::default()).unwrap();
        assert!(store.root().join("bob/new").is_dir());
        assert!(store.root().join("bob/tmp").is_dir());
    }

    #[test]
    fn missing_root_is_an_error_not_created() {
        let tmp = tempfile::tempdir().unwrap();
        let root = tmp.path().join("nope");
        let store = MaildirStore::new(root.clone());
        match store.open("alice", &ForSession::default()) {
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
        let md = store.open("u", &ForSession::default()).unwrap();
        assert_eq!(uids(&*md), ["1700000001.M1P1.host", "1700000002.M2P2.host"]);
        assert_eq!(
            names(&store, "u", "cur"),
            ["1700000001.M1P1.host:2,", "1700000002.M2P2.host:2,S"]
        );
        assert_eq!(names(&store, "u", "new"), [".in-progress"]);
    }

    #[test]
    fn second_open_is_in_use_until_drop_or_commit() {
        let (_tmp, store) = store();
        put(&store, "u", "cur", "1:2,", b"a\n", 1);
        let first = store.open("u", &ForSession::default()).unwrap();
        assert!(matches!(
            store.open("u", &ForSession::default()),
            Err(OpenError::InUse)
        ));
        // Another user is not affected.
        store.open("v", &ForSession::default()).unwrap();
        drop(first);
        let second = store.open("u", &ForSession::default()).unwrap();
        assert!(matches!(
            store.open("u", &ForSession::default()),
            Err(OpenError::InUse)
        ));
        second.commit(&[]).unwrap();
        store.open("u", &ForSession::default()).unwrap();
    }

    #[test]
    fn lock_is_excluded_by_an_independent_flock() {
        // What another process would do: its own open file description.
        let (_tmp, store) = store();
        store.open("u", &ForSession::default()).unwrap();
        let other = File::open(store.root().join("u").join(LOCK_FILE)).unwrap();
        let rc = flock(&other, FlockOperation::NonBlockingLockExclusive);
        assert_eq!(rc, Ok(()));
        assert!(matches!(
            store.open("u", &ForSession::default()),
            Err(OpenError::InUse)
        ));
        drop(other);
        store.open("u", &ForSession::default()).unwrap();
    }

    #[test]
    fn lock_file_is_not_a_message() {
        let (_tmp, store) = store();
        put(&store, "u", "cur", "1:2,", b"a\n", 1);
        store.open("u", &ForSession::default()).unwrap();
        assert_eq!(
            uids(&*store.open("u", &ForSession::default()).unwrap()),
            ["1"]
        );
    }
}
