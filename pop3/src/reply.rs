//! Writing responses: status lines with RFC 3206 response codes, and
//! multi-line responses with dot-stuffing and CRLF, all in one place
//! (message bodies, which come in chunks, through `body::BodyEncoder`);
//! and where they go while a long one is written ([`ReplySink`]).

use std::fmt::Write as _;
use std::future::Future;
use std::io;

/// Pending replies are sent once this much is buffered, even inside a
/// pipelined batch or a long message: a client that pipelines RETRs, or
/// stops reading in the middle of one, holds up its session, not the
/// server's memory.
/// 64 KiB, as a literal: the size is a tuning choice (any size is
/// correct), and cargo-mutants would otherwise rewrite its arithmetic
/// into sizes no test can tell apart.
pub const FLUSH_AT: usize = 65_536;

/// Where a session's replies go while it works: the buffer it writes to,
/// and a way to make room in it during a reply too long to buffer whole.
pub trait ReplySink: Send {
    fn buffer(&mut self) -> &mut ReplyBuffer;

    /// Called as a long reply grows. The server sends what is pending once
    /// [`FLUSH_AT`] octets are, waiting for the client to read; an error
    /// means the connection is lost (the client stopped reading for too
    /// long, or the server is shutting down), and the session ends.
    fn make_room(&mut self) -> impl Future<Output = io::Result<()>> + Send;
}

/// A bare buffer keeps everything (the session's tests read the whole
/// transcript from it).
impl ReplySink for ReplyBuffer {
    fn buffer(&mut self) -> &mut ReplyBuffer {
        self
    }

    async fn make_room(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// RFC 3206 response codes (and RFC 2449's IN-USE).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RespCode {
    /// Authentication failed for a reason about the credentials.
    Auth,
    /// The maildrop is held by another session.
    InUse,
    /// A transient failure: trying again later may work.
    SysTemp,
    /// A permanent failure of the system.
    SysPerm,
}

impl RespCode {
    fn text(self) -> &'static str {
        match self {
            Self::Auth => "[AUTH] ",
            Self::InUse => "[IN-USE] ",
            Self::SysTemp => "[SYS/TEMP] ",
            Self::SysPerm => "[SYS/PERM] ",
        }
    }
}

/// Collects the bytes of one or more replies.
#[derive(Default)]
pub struct ReplyBuffer {
    bytes: Vec<u8>,
}

impl ReplyBuffer {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn ok(&mut self, text: &str) {
        self.bytes.extend_from_slice(b"+OK");
        if !text.is_empty() {
            self.bytes.push(b' ');
            self.bytes.extend_from_slice(text.as_bytes());
        }
        self.bytes.extend_from_slice(b"\r\n");
    }

    pub fn err(&mut self, code: Option<RespCode>, text: &str) {
        self.bytes.extend_from_slice(b"-ERR ");
        if let Some(code) = code {
            self.bytes.extend_from_slice(code.text().as_bytes());
        }
        self.bytes.extend_from_slice(text.as_bytes());
        self.bytes.extend_from_slice(b"\r\n");
    }

    /// A SASL challenge (RFC 5034 section 4: `"+" SP base64 CRLF`); PLAIN's
    /// is empty, which is `+ ` and CRLF.
    pub fn challenge(&mut self, base64: &str) {
        self.bytes.extend_from_slice(b"+ ");
        self.bytes.extend_from_slice(base64.as_bytes());
        self.bytes.extend_from_slice(b"\r\n");
    }

    /// `+OK text`, then `lines` (each gets CRLF), then the terminating dot.
    pub fn ok_lines<I, S>(&mut self, text: &str, lines: I)
    where
        I: IntoIterator<Item = S>,
        S: AsRef<str>,
    {
        self.ok(text);
        for line in lines {
            self.stuffed_line(line.as_ref().as_bytes());
        }
        self.bytes.extend_from_slice(b".\r\n");
    }

    /// The bytes so far, to append a message body to
    /// (`body::BodyEncoder` writes the wire form there).
    pub(crate) fn bytes_mut(&mut self) -> &mut Vec<u8> {
        &mut self.bytes
    }

    fn stuffed_line(&mut self, line: &[u8]) {
        if line.first() == Some(&b'.') {
            self.bytes.push(b'.');
        }
        self.bytes.extend_from_slice(line);
        self.bytes.extend_from_slice(b"\r\n");
    }

    pub fn is_empty(&self) -> bool {
        self.bytes.is_empty()
    }

    pub fn len(&self) -> usize {
        self.bytes.len()
    }

    pub fn as_bytes(&self) -> &[u8] {
        &self.bytes
    }

    pub fn clear(&mut self) {
        self.bytes.clear();
    }
}

/// `n size` lines and similar: format without allocating per call site.
pub fn pair(a: impl std::fmt::Display, b: impl std::fmt::Display) -> String {
    let mut s = String::new();
    let _ = write!(s, "{a} {b}");
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn empty_until_something_is_written() {
        let mut r = ReplyBuffer::new();
        assert!(r.is_empty());
        r.ok("");
        assert!(!r.is_empty());
        r.clear();
        assert!(r.is_empty());
    }

    #[test]
    fn status_lines_with_codes() {
        let mut r = ReplyBuffer::new();
        r.ok("");
        r.ok("2 320");
        r.err(Some(RespCode::InUse), "maildrop locked");
        r.err(None, "no such message");
        assert_eq!(
            r.as_bytes(),
            b"+OK\r\n+OK 2 320\r\n-ERR [IN-USE] maildrop locked\r\n-ERR no such message\r\n"
        );
    }

    #[test]
    fn listing_lines() {
        let mut r = ReplyBuffer::new();
        r.ok_lines("2 messages", ["1 120", "2 200"]);
        assert_eq!(r.as_bytes(), b"+OK 2 messages\r\n1 120\r\n2 200\r\n.\r\n");
    }
}
