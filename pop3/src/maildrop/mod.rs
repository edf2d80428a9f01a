//! The mail a session serves: a Maildir, locked for one session at a time.
//!
//! The session only sees the traits here, so the protocol code and its tests
//! do not depend on a file system layout; [`maildir`] is the real store.

pub mod maildir;

use std::fmt;
use std::io::{self, Read};

use tokio_util::sync::{CancellationToken, DropGuard};

use crate::session_id::SessionId;

/// The session a maildrop is opened for: its id goes into every line the
/// store logs, and the store stops sizing messages once the session has
/// given up the login (its client left, a timeout cut it, the server
/// shuts down), so that the maildrop's lock does not outlive the login.
#[derive(Clone, Debug, Default)]
pub struct ForSession {
    pub id: SessionId,
    gone: CancellationToken,
}

impl ForSession {
    /// For session `id`, and the guard that gives the open up when it is
    /// dropped: the login holds it while the store works on the blocking
    /// pool, and a login that is cut drops it.
    pub fn new(id: SessionId) -> (Self, DropGuard) {
        let gone = CancellationToken::new();
        let guard = gone.clone().drop_guard();
        (Self { id, gone }, guard)
    }

    /// True once the session no longer waits for this open.
    pub fn is_gone(&self) -> bool {
        self.gone.is_cancelled()
    }
}

/// One message as the session lists it, fixed at login.
///
/// RFC 1939 section 4 lets a session work on a snapshot: messages arriving
/// later are not seen until the next login, and message numbers stay valid
/// for the whole session.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MessageInfo {
    /// Octets on the wire: CRLF line ends, before dot-stuffing. RFC 1939
    /// section 11: a server storing single-character line ends "simply counts
    /// each occurrence of this character in a message as two octets", and
    /// lines starting with the termination octet "need not (and must not) be
    /// counted twice".
    pub size: u64,
    /// The UIDL unique-id: 1..=70 characters in 0x21..=0x7E, stable across
    /// sessions (RFC 1939 section 7, UIDL).
    pub uid: String,
}

/// Why a maildrop could not be opened.
#[derive(Debug)]
pub enum OpenError {
    /// Another session holds the maildrop; the session answers
    /// `-ERR [IN-USE]` (RFC 1939 section 4 wants an exclusive-access lock,
    /// RFC 2449 section 8.1.2 names the response code).
    InUse,
    /// The user name cannot name a maildrop (empty, a path separator, a dot
    /// name, ...); the string says why, without any secret.
    Invalid(String),
    /// The maildrop holds what the server will not follow: its directory,
    /// `cur`, `new` or `tmp` is a symbolic link (or not a directory at
    /// all), or its lock file is not a regular file. Answered
    /// `-ERR [SYS/PERM]`; the string (paths escaped) is for the log.
    Unsafe(String),
    /// The file system failed; the message names the path involved.
    Io(io::Error),
    /// The session gave the login up before the maildrop was open (the
    /// store has logged where it stopped).
    Abandoned,
}

impl fmt::Display for OpenError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            OpenError::InUse => f.write_str("maildrop is in use by another session"),
            OpenError::Invalid(why) => write!(f, "invalid maildrop: {why}"),
            OpenError::Unsafe(why) => write!(f, "maildrop refused: {why}"),
            OpenError::Io(e) => write!(f, "maildrop I/O error: {e}"),
            OpenError::Abandoned => f.write_str("the session gave up the login"),
        }
    }
}

impl std::error::Error for OpenError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            OpenError::Io(e) => Some(e),
            _ => None,
        }
    }
}

impl From<io::Error> for OpenError {
    fn from(e: io::Error) -> Self {
        OpenError::Io(e)
    }
}

/// A maildrop opened and locked for one session. The methods block (file
/// I/O), so the server runs them off its async threads, except
/// [`Maildrop::open_if_cached`], which does not wait for the disk.
pub trait Maildrop: Send {
    /// The messages fixed at login, in maildrop order: index `i` is message
    /// number `i + 1` in the protocol.
    fn messages(&self) -> &[MessageInfo];

    /// Opens the message with index `index` (0-based) for reading, as
    /// stored: LF or CRLF line ends, not dot-stuffed (the session makes
    /// the wire form as it sends, chunk by chunk; a message is never held
    /// whole).
    ///
    /// Errors the session tells apart: `NotFound`, the message was removed
    /// by another agent; `InvalidData`, it is no longer a message (its name
    /// holds a FIFO, a link, ...: the store has logged what).
    fn open(&mut self, index: usize) -> io::Result<Box<dyn MessageReader>>;

    /// What [`Maildrop::open`] gives, but only if it can be had without
    /// waiting for the disk (the name is in the kernel's caches); `None`
    /// means "call `open`", which also reports any error. A freshly
    /// delivered or just listed message usually is cached, and opening it
    /// in place spares a thread hand-off per RETR.
    fn open_if_cached(&mut self, _index: usize) -> Option<Box<dyn MessageReader>> {
        None
    }

    /// Applies the deletions (0-based indices) and releases the lock. Only
    /// called from the UPDATE state (QUIT). Dropping a Maildrop without
    /// commit deletes nothing and releases the lock (RFC 1939 section 6: a
    /// session that ends without QUIT must not remove messages).
    ///
    /// Gives the number of messages this call removed: a message another
    /// agent removed first is not counted. An error still says how many
    /// were removed before or besides it.
    fn commit(self: Box<Self>, deleted: &[usize]) -> Result<usize, CommitError>;
}

/// Deletions that were not all applied (RFC 1939 section 6: "-ERR some
/// deleted messages not removed").
#[derive(Debug)]
pub struct CommitError {
    /// Messages that were removed all the same.
    pub removed: usize,
    /// The first thing that failed.
    pub error: io::Error,
}

impl fmt::Display for CommitError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} (removed {} all the same)", self.error, self.removed)
    }
}

impl std::error::Error for CommitError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        Some(&self.error)
    }
}

impl From<io::Error> for CommitError {
    /// An error before anything was removed.
    fn from(error: io::Error) -> Self {
        CommitError { removed: 0, error }
    }
}

/// One message being read, as stored. `read` blocks (the session calls it
/// off the async threads); [`MessageReader::read_if_cached`] does not.
pub trait MessageReader: Read + Send {
    /// Reads as `read` does, but only what can be had without waiting for
    /// the disk (it is in the page cache). `None` means "call `read`",
    /// which also reports any error.
    fn read_if_cached(&mut self, buf: &mut [u8]) -> Option<usize>;
}

/// A message held in memory (test stores, fakes): never waits.
impl MessageReader for io::Cursor<Vec<u8>> {
    fn read_if_cached(&mut self, buf: &mut [u8]) -> Option<usize> {
        self.read(buf).ok()
    }
}

/// Opens maildrops by user name; shared by all sessions of a server.
pub trait MaildropStore: Send + Sync + 'static {
    /// Opens and locks `user`'s maildrop for `session`. The user is
    /// already authenticated: the name comes from the users file.
    fn open(&self, user: &str, session: &ForSession) -> Result<Box<dyn Maildrop>, OpenError>;
}

/// True if `uid` is a valid RFC 1939 unique-id: "one to 70 characters in the
/// range 0x21 to 0x7E" (section 7, UIDL).
pub fn is_valid_uid(uid: &[u8]) -> bool {
    (1..=70).contains(&uid.len()) && uid.iter().all(|b| (0x21..=0x7e).contains(b))
}

/// Converts a whole stored message to its wire form: every line ends in
/// CRLF. The reference that [`wire_size`] and the session's streaming
/// encoder (`body::BodyEncoder`) are tested against, so that LIST and
/// RETR agree.
///
/// A bare LF becomes CRLF, an existing CRLF stays, a bare CR inside a line is
/// left alone (it is not a line end), and a final line without newline gets
/// CRLF so the terminating "." always starts a line.
#[cfg(test)]
pub(crate) fn to_wire(raw: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(raw.len() + raw.len() / 32 + 2);
    let mut prev = 0u8;
    for &b in raw {
        if b == b'\n' && prev != b'\r' {
            out.push(b'\r');
        }
        out.push(b);
        prev = b;
    }
    if !raw.is_empty() && prev != b'\n' {
        out.extend_from_slice(b"\r\n");
    }
    out
}

/// The length of a stored message's wire form (CRLF line ends; see
/// `body::BodyEncoder`), without building it.
pub fn wire_size(raw: &[u8]) -> u64 {
    let mut counter = WireSizeCounter::default();
    counter.update(raw);
    counter.finish()
}

/// Computes the wire size of a message read from `reader` in chunks, so a
/// large message is sized at login without holding it in memory.
pub fn wire_size_of(mut reader: impl Read) -> io::Result<u64> {
    let mut counter = WireSizeCounter::default();
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        match reader.read(&mut buf) {
            Ok(0) => return Ok(counter.finish()),
            Ok(n) => counter.update(&buf[..n]),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
}

/// Streaming form of [`wire_size`]: remembers the last byte across chunks,
/// because a CRLF may be split between two reads.
#[derive(Default)]
struct WireSizeCounter {
    len: u64,
    extra: u64,
    last: Option<u8>,
}

impl WireSizeCounter {
    fn update(&mut self, chunk: &[u8]) {
        let mut prev = self.last.unwrap_or(0);
        for &b in chunk {
            if b == b'\n' && prev != b'\r' {
                self.extra += 1;
            }
            prev = b;
        }
        self.len += chunk.len() as u64;
        if let Some(&b) = chunk.last() {
            self.last = Some(b);
        }
    }

    fn finish(&self) -> u64 {
        let unterminated = match self.last {
            Some(b) => b != b'\n',
            None => false,
        };
        self.len + self.extra + if unterminated { 2 } else { 0 }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An I/O error opening a maildrop keeps its cause; the others have
    /// none.
    #[test]
    fn an_open_error_keeps_its_io_cause() {
        let io = OpenError::Io(io::Error::other("disk on fire"));
        let source = std::error::Error::source(&io).expect("a source");
        assert_eq!(source.to_string(), "disk on fire");
        assert!(std::error::Error::source(&OpenError::InUse).is_none());
    }

    /// The error a partial UPDATE logs keeps its cause for the log's
    /// chain.
    #[test]
    fn a_commit_error_keeps_its_cause() {
        let error = CommitError {
            removed: 2,
            error: io::Error::other("disk on fire"),
        };
        let source = std::error::Error::source(&error).expect("a source");
        assert_eq!(source.to_string(), "disk on fire");
    }

    #[test]
    fn to_wire_converts_line_ends() {
        assert_eq!(to_wire(b""), b"");
        assert_eq!(to_wire(b"a\nb\n"), b"a\r\nb\r\n");
        assert_eq!(to_wire(b"a\r\nb\r\n"), b"a\r\nb\r\n");
        assert_eq!(to_wire(b"a\r\nb\nc\r\n"), b"a\r\nb\r\nc\r\n");
        assert_eq!(to_wire(b"\n\n"), b"\r\n\r\n");
        assert_eq!(to_wire(b"last line"), b"last line\r\n");
        assert_eq!(to_wire(b"a\nlast"), b"a\r\nlast\r\n");
        // A bare CR is not a line end; the final CR still needs its CRLF.
        assert_eq!(to_wire(b"a\rb\n"), b"a\rb\r\n");
        assert_eq!(to_wire(b"a\r"), b"a\r\r\n");
        // Dot-stuffing is the reply writer's job, not ours.
        assert_eq!(to_wire(b".\n..x\n"), b".\r\n..x\r\n");
    }

    #[test]
    fn wire_size_matches_to_wire() {
        let samples: &[&[u8]] = &[
            b"",
            b"\n",
            b"\r",
            b"\r\n",
            b"\n\r",
            b"x",
            b"a\nb",
            b"a\r\nb\r\n",
            b"a\n\r\n\n",
            b"no newline at all",
            b"mixed\r\nends\nand\rcr\r",
        ];
        for s in samples {
            assert_eq!(wire_size(s), to_wire(s).len() as u64, "{s:?}");
            assert_eq!(wire_size_of(*s).unwrap(), wire_size(s), "{s:?}");
        }
    }

    /// A reader that hands out one byte per call, so every CR/LF pair is
    /// split across reads.
    struct OneByte<'a>(&'a [u8]);

    impl Read for OneByte<'_> {
        fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
            match self.0.split_first() {
                Some((&b, rest)) if !buf.is_empty() => {
                    buf[0] = b;
                    self.0 = rest;
                    Ok(1)
                }
                _ => Ok(0),
            }
        }
    }

    #[test]
    fn wire_size_of_handles_crlf_split_across_reads() {
        let raw = b"a\r\nb\nc\r\n\r\nend";
        assert_eq!(
            wire_size_of(OneByte(raw)).unwrap(),
            to_wire(raw).len() as u64
        );
    }

    #[test]
    fn uid_validity() {
        assert!(is_valid_uid(b"1"));
        assert!(is_valid_uid(b"!~"));
        assert!(is_valid_uid(&[b'a'; 70]));
        assert!(!is_valid_uid(b""));
        assert!(!is_valid_uid(&[b'a'; 71]));
        assert!(!is_valid_uid(b"has space"));
        assert!(!is_valid_uid(b"tab\t"));
        assert!(!is_valid_uid(b"del\x7f"));
        assert!(!is_valid_uid("é".as_bytes()));
    }

    #[test]
    fn open_error_display() {
        assert_eq!(
            OpenError::InUse.to_string(),
            "maildrop is in use by another session"
        );
        assert!(OpenError::Invalid("user name is empty".into())
            .to_string()
            .contains("user name is empty"));
        let e = OpenError::from(io::Error::other("disk on fire"));
        assert!(e.to_string().contains("disk on fire"));
    }
}
