//! What a hostile Maildir holds is never followed, opened as a message or
//! waited for: symbolic links (as messages, as `cur`/`new`/`tmp`, as the
//! Maildir itself), FIFOs and device nodes, at login and swapped in later.
//! Whoever can write a Maildir (its owner, a delivery agent gone wrong)
//! must not reach a file outside it through the daemon, which runs as root.

use super::tests::{names, put, read, store, uids};
use super::*;
use crate::log_text::LogText;
use log::{Level, Log, Metadata, Record};
use rustix::fs::{makedev, mknodat, FileType, Mode, CWD};
use std::cell::RefCell;
use std::fs;
use std::os::unix::fs::{symlink, OpenOptionsExt, PermissionsExt};
use std::sync::mpsc;
use std::sync::Once;
use std::time::Duration;
use tempfile::TempDir;

/// How long a test waits for a call that must not block; only a real hang
/// runs into it.
const HANG: Duration = Duration::from_secs(20);

/// Log lines of this module, captured per thread while a test asks for them.
struct Capture;

thread_local! {
    static CAPTURED: RefCell<Option<Vec<(Level, String)>>> = const { RefCell::new(None) };
}

impl Log for Capture {
    fn enabled(&self, metadata: &Metadata) -> bool {
        metadata.target() == LOG_TARGET
    }

    fn log(&self, record: &Record) {
        if self.enabled(record.metadata()) {
            CAPTURED.with(|c| {
                if let Some(lines) = c.borrow_mut().as_mut() {
                    lines.push((record.level(), record.args().to_string()));
                }
            });
        }
    }

    fn flush(&self) {}
}

/// Runs `body` and returns what it logged (this module's lines, this thread).
pub(super) fn logged<T>(body: impl FnOnce() -> T) -> (T, Vec<(Level, String)>) {
    static INSTALL: Once = Once::new();
    static LOGGER: Capture = Capture;
    INSTALL.call_once(|| {
        log::set_logger(&LOGGER).expect("no other logger in the unit tests");
        log::set_max_level(log::LevelFilter::Trace);
    });
    CAPTURED.with(|c| *c.borrow_mut() = Some(Vec::new()));
    let result = body();
    let lines = CAPTURED.with(|c| c.borrow_mut().take()).unwrap_or_default();
    (result, lines)
}

/// The lines that mention `needle`, at warning level or above.
fn warnings_about<'a>(lines: &'a [(Level, String)], needle: &str) -> Vec<&'a str> {
    lines
        .iter()
        .filter(|(level, line)| *level <= Level::Warn && line.contains(needle))
        .map(|(_, line)| line.as_str())
        .collect()
}

/// A file only root may read, outside the mail root, and its directory.
fn secret() -> (TempDir, PathBuf) {
    let outside = tempfile::tempdir().unwrap();
    let path = outside.path().join("shadow");
    fs::write(&path, "root:only\n").unwrap();
    fs::set_permissions(&path, fs::Permissions::from_mode(0o600)).unwrap();
    (outside, path)
}

/// The path of the link planted for `linked` in the Maildir `dir`.
fn outside_name(linked: &str, dir: &Path) -> PathBuf {
    match linked {
        "maildir" => dir.to_path_buf(),
        sub => dir.join(sub),
    }
}

/// Every file under `dir` with its content, to show nothing changed there.
fn tree(dir: &Path) -> Vec<(PathBuf, Vec<u8>)> {
    let mut all = Vec::new();
    let mut todo = vec![dir.to_path_buf()];
    while let Some(d) = todo.pop() {
        for entry in fs::read_dir(&d).unwrap() {
            let path = entry.unwrap().path();
            let meta = fs::symlink_metadata(&path).unwrap();
            if meta.is_dir() {
                todo.push(path);
            } else {
                let content = fs::read(&path).unwrap_or_default();
                all.push((path, content));
            }
        }
    }
    all.sort();
    all
}

/// Runs `work` on a thread of its own and waits for it, at most [`HANG`]:
/// a call that blocks (a FIFO opened for reading waits for a writer) fails
/// the test instead of hanging it.
fn without_hanging<T: Send + 'static>(what: &str, work: impl FnOnce() -> T + Send + 'static) -> T {
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(work());
    });
    rx.recv_timeout(HANG)
        .unwrap_or_else(|_| panic!("{what} did not return within {HANG:?}: it blocks"))
}

/// Opens a FIFO's writing end and closes it again, so that a reader
/// blocked in open(2) on it (the defect under test) goes on and its
/// thread can end.
struct UnblockFifo(PathBuf);

impl Drop for UnblockFifo {
    fn drop(&mut self) {
        let _ = fs::OpenOptions::new()
            .write(true)
            .custom_flags(rustix::fs::OFlags::NONBLOCK.bits() as i32)
            .open(&self.0);
    }
}

fn mkfifo(path: &Path) {
    rustix::fs::mkfifoat(CWD, path, Mode::from_raw_mode(0o600)).unwrap();
}

/// A character device like /dev/null (1, 3): only root can make one,
/// which these tests are (CI runs as root).
fn mknull(path: &Path) {
    mknodat(
        CWD,
        path,
        FileType::CharacterDevice,
        Mode::from_raw_mode(0o600),
        makedev(1, 3),
    )
    .unwrap_or_else(|e| panic!("mknod {} (the tests run as root): {e}", path.display()));
}

#[test]
fn symlinked_messages_are_skipped_with_a_warning_and_never_unlinked_through() {
    let (_tmp, store) = store();
    let (_outside, secret) = secret();
    put(&store, "u", "cur", "1:2,", b"one\n", 1);
    let dir = store.root().join("u");
    symlink(&secret, dir.join("cur/2:2,")).unwrap();
    symlink(&secret, dir.join("new/3")).unwrap();

    let (session, _open) = ForSession::new(SessionId::from_raw(0xfeed));
    let (md, lines) = logged(|| store.open("u", &session));
    let mut md = md.unwrap();
    assert_eq!(uids(&*md), ["1"], "a symlink was listed as a message");
    for entry in ["cur/2:2,", "new/3"] {
        let about = warnings_about(&lines, entry);
        assert_eq!(about.len(), 1, "one warning for {entry}: {lines:?}");
        assert!(about[0].contains(&dir.display().to_string()), "{about:?}");
        // The line names the session it was logged for.
        assert!(
            about[0].starts_with("session=000000000000feed maildir "),
            "{about:?}"
        );
    }
    assert_eq!(read(&mut *md, 0).unwrap(), b"one\r\n");
    md.commit(&[0]).unwrap();
    assert_eq!(fs::read(&secret).unwrap(), b"root:only\n");
    // The links stay where they were: not moved, not followed.
    assert_eq!(names(&store, "u", "cur"), ["2:2,"]);
    assert_eq!(names(&store, "u", "new"), ["3"]);
}

#[test]
fn a_symlinked_maildir_or_subdirectory_refuses_the_login_and_touches_nothing_outside() {
    let mut problems = Vec::new();
    for linked in ["maildir", "cur", "new", "tmp"] {
        let (_tmp, store) = store();
        let outside = tempfile::tempdir().unwrap();
        for sub in ["cur", "new", "tmp"] {
            fs::create_dir(outside.path().join(sub)).unwrap();
        }
        fs::write(outside.path().join("cur/1.secret:2,"), "cur secret\n").unwrap();
        fs::write(outside.path().join("new/2.secret"), "new secret\n").unwrap();
        fs::write(outside.path().join("tmp/3.secret"), "tmp secret\n").unwrap();
        let dir = store.root().join("u");
        if linked == "maildir" {
            symlink(outside.path(), &dir).unwrap();
        } else {
            fs::create_dir(&dir).unwrap();
            for sub in ["cur", "new", "tmp"] {
                if sub == linked {
                    symlink(outside.path().join(sub), dir.join(sub)).unwrap();
                } else {
                    fs::create_dir(dir.join(sub)).unwrap();
                }
            }
        }
        let before = tree(outside.path());

        match store.open("u", &ForSession::default()) {
            Ok(md) => {
                let count = md.messages().len();
                let all: Vec<usize> = (0..count).collect();
                let _ = md.commit(&all);
                problems.push(format!("{linked}: opened, with {count} messages"));
            }
            Err(OpenError::Unsafe(why)) => {
                if !why.contains(
                    &LogText::of(outside_name(linked, &dir).as_os_str().as_bytes()).to_string(),
                ) {
                    problems.push(format!("{linked}: the refusal does not name it: {why}"));
                }
            }
            Err(e) => problems.push(format!("{linked}: refused, but not as unsafe: {e}")),
        }
        if tree(outside.path()) != before {
            problems.push(format!("{linked}: the directory outside changed"));
        }
    }
    assert!(problems.is_empty(), "{problems:#?}");
}

#[test]
fn fifos_and_device_nodes_are_skipped_at_scan_with_a_warning() {
    let (_tmp, store) = store();
    put(&store, "u", "cur", "1:2,", b"one\n", 1);
    let dir = store.root().join("u");
    mkfifo(&dir.join("cur/fifo:2,"));
    mkfifo(&dir.join("new/fifo-new"));
    mknull(&dir.join("cur/null:2,"));
    let _unblock = [
        UnblockFifo(dir.join("cur/fifo:2,")),
        UnblockFifo(dir.join("new/fifo-new")),
        UnblockFifo(dir.join("cur/fifo-new:2,")),
    ];

    let opener = store.clone();
    let (md, lines) = without_hanging("opening the maildrop", move || {
        let (md, lines) = logged(|| opener.open("u", &ForSession::default()));
        (md.map(|md| uids(&*md)), lines)
    });
    assert_eq!(md.unwrap(), ["1"]);
    for entry in ["cur/fifo:2,", "new/fifo-new", "cur/null:2,"] {
        assert_eq!(
            warnings_about(&lines, entry).len(),
            1,
            "one warning for {entry}: {lines:?}"
        );
    }
}

#[test]
fn a_message_swapped_for_a_fifo_or_device_after_login_is_refused_and_not_unlinked() {
    let (_tmp, store) = store();
    put(&store, "u", "cur", "1:2,", b"one\n", 1);
    put(&store, "u", "cur", "2:2,", b"two\n", 2);
    put(&store, "u", "cur", "3:2,", b"three\n", 3);
    let md = store.open("u", &ForSession::default()).unwrap();
    let cur = store.root().join("u/cur");
    fs::remove_file(cur.join("1:2,")).unwrap();
    mkfifo(&cur.join("1:2,"));
    fs::remove_file(cur.join("2:2,")).unwrap();
    mknull(&cur.join("2:2,"));
    let _unblock = UnblockFifo(cur.join("1:2,"));

    let (md, reads, lines) = without_hanging("reading the swapped messages", move || {
        let mut md = md;
        let (reads, lines) = logged(|| (0..3).map(|i| read(&mut *md, i)).collect::<Vec<_>>());
        (md, reads, lines)
    });
    assert!(reads[0].is_err(), "a FIFO was served: {:?}", reads[0]);
    assert!(reads[1].is_err(), "a device was served: {:?}", reads[1]);
    assert_eq!(
        reads[2].as_ref().unwrap(),
        b"three\r\n",
        "the session goes on"
    );
    for entry in ["cur/1:2,", "cur/2:2,"] {
        assert_eq!(
            warnings_about(&lines, entry).len(),
            1,
            "one warning for {entry}: {lines:?}"
        );
    }

    let removed = without_hanging("QUIT", move || md.commit(&[0, 1, 2])).unwrap();
    assert_eq!(removed, 1, "only the regular file counts as removed");
    assert_eq!(
        names(&store, "u", "cur"),
        ["1:2,", "2:2,"],
        "only the regular file was deleted"
    );
}
