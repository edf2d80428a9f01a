//! The file-system calls on a Maildir: creating it, the session lock,
//! moving new mail to `cur/`, listing, renaming, and reading a message
//! without waiting for the disk.
//!
//! Every call here tolerates a file that another agent moved or removed
//! meanwhile.

use super::names::{cur_name, fresh_name};
use super::size_cache::FileStamp;
use super::{Sub, LOCK_FILE, LOG_TARGET};
use crate::maildrop::OpenError;
use rustix::fs::{flock, FlockOperation, OFlags};
use rustix::io::{preadv2, Errno, ReadWriteFlags};
use std::ffi::{OsStr, OsString};
use std::fs::{self, DirBuilder, File, OpenOptions};
use std::io::{self, IoSliceMut};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{DirBuilderExt, MetadataExt, OpenOptionsExt};
use std::path::Path;

/// A file found while listing, before it becomes a listed message.
pub(super) struct Found {
    pub(super) sub: Sub,
    pub(super) name: OsString,
    pub(super) stamp: FileStamp,
}

/// Creates the Maildir and any missing subdirectory, mode 0700, as Dovecot
/// does on first login; a user without mail yet gets an empty maildrop.
pub(super) fn ensure_maildir(dir: &Path) -> io::Result<()> {
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
            log::info!(target: LOG_TARGET, "created maildir {}", dir.display());
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
pub(super) fn lock_maildir(dir: &Path) -> Result<File, OpenError> {
    let path = dir.join(LOCK_FILE);
    let file = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .mode(0o600)
        // A symlink planted as the lock file must not make us create or
        // lock some other file.
        .custom_flags(OFlags::NOFOLLOW.bits() as i32)
        .open(&path)
        .map_err(|e| at(e, "open lock file", &path))?;
    loop {
        match flock(&file, FlockOperation::NonBlockingLockExclusive) {
            Ok(()) => return Ok(file),
            Err(Errno::INTR) => continue,
            Err(Errno::WOULDBLOCK) => return Err(OpenError::InUse),
            Err(e) => return Err(at(e.into(), "lock", &path).into()),
        }
    }
}

/// Moves every message in `new/` to `cur/`, under its [`cur_name`].
/// Returns the names that could not be moved (read-only maildir, disk
/// full): like Dovecot, they stay in `new/` and are served from there.
pub(super) fn move_new_to_cur(dir: &Path) -> Result<Vec<OsString>, OpenError> {
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
        match fs::rename(new.join(&name), cur.join(cur_name(&name))) {
            Ok(()) => {}
            // Someone else (Dovecot) moved it already: the cur/ listing
            // finds it.
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => {
                log::warn!(target: LOG_TARGET, "maildir {}: cannot move new/{} to cur/: {e}; serving it from new/",
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
pub(super) fn list_sub(dir: &Path, sub: Sub, found: &mut Vec<Found>) -> Result<(), OpenError> {
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
///
/// The buffer is zeroed first, as the safe call wants initialised memory:
/// one more pass over at most `limit` octets, beside the kernel's copy and
/// the CRLF conversion that follows.
pub(super) fn read_to_end_nowait(file: &File, capacity: usize, limit: usize) -> Option<Vec<u8>> {
    let mut buf = vec![0u8; capacity.min(limit + 1)];
    let mut filled = 0;
    loop {
        if filled > limit {
            return None;
        }
        if filled == buf.len() {
            // Grown as `Vec::reserve(8192)` grows a full vector.
            buf.resize((2 * filled).max(filled + 8192), 0);
        }
        let mut iov = [IoSliceMut::new(&mut buf[filled..])];
        match preadv2(file, &mut iov, filled as u64, ReadWriteFlags::NOWAIT) {
            Ok(0) => {
                buf.truncate(filled);
                return Some(buf);
            }
            Ok(n) => filled += n,
            Err(_) => return None,
        }
    }
}

/// The identity of a regular file; None if it is gone (another agent
/// deleted it since the listing) or is not a regular file.
pub(super) fn regular_file_stamp(path: &Path) -> Result<Option<FileStamp>, OpenError> {
    match fs::metadata(path) {
        Ok(m) if m.is_file() => Ok(Some(FileStamp::of(&m))),
        Ok(_) => Ok(None),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(at(e, "stat", path).into()),
    }
}

/// Renames `sub/name` to a [`fresh_name`], keeping its info part.
pub(super) fn rename_fresh(dir: &Path, sub: Sub, name: &OsStr) -> io::Result<OsString> {
    let fresh = fresh_name(name);
    let subdir = dir.join(sub.name());
    fs::rename(subdir.join(name), subdir.join(&fresh))?;
    Ok(fresh)
}

/// Adds the operation and path to an I/O error, keeping its kind: the
/// server logs these, and a bare "Permission denied" says nothing.
pub(super) fn at(e: io::Error, what: &str, path: &Path) -> io::Error {
    io::Error::new(e.kind(), format!("{what} {}: {e}", path.display()))
}

#[cfg(test)]
mod tests {
    use super::super::tests::{names, put, store, uids};
    use super::super::MaildirStore;
    use super::*;
    use crate::maildrop::MaildropStore;
    use std::os::unix::fs::PermissionsExt;
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
        let rc = flock(&other, FlockOperation::NonBlockingLockExclusive);
        assert_eq!(rc, Ok(()));
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
}
