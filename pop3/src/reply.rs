//! Writing responses: status lines with RFC 3206 response codes, and
//! multi-line responses with dot-stuffing and CRLF, all in one place.

use std::fmt::Write as _;

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

    /// `+OK text`, then `body` (CRLF lines as read from the maildrop),
    /// dot-stuffed, then the terminating dot.
    ///
    /// RFC 1939 section 3: "If any line of the multi-line response begins
    /// with the termination octet, the line is 'byte-stuffed' by
    /// pre-pending the termination octet to that line of the response."
    pub fn ok_body(&mut self, text: &str, body: &[u8]) {
        self.ok(text);
        self.bytes.reserve(body.len() + body.len() / 64 + 3);
        let mut rest = body;
        while !rest.is_empty() {
            let end = rest
                .iter()
                .position(|&b| b == b'\n')
                .map_or(rest.len(), |i| i + 1);
            let (line, tail) = rest.split_at(end);
            if line.first() == Some(&b'.') {
                self.bytes.push(b'.');
            }
            self.bytes.extend_from_slice(line);
            rest = tail;
        }
        // The maildrop hands out CRLF-terminated lines; a body that does
        // not end in one would glue the dot to its last line.
        if !body.is_empty() && !body.ends_with(b"\r\n") {
            self.bytes.extend_from_slice(b"\r\n");
        }
        self.bytes.extend_from_slice(b".\r\n");
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

/// The part of a message TOP sends: the header, the blank line, and the
/// first `lines` lines of the body. RFC 1939 section 7: "the server sends
/// the headers of the message, the blank line separating the headers from
/// the body, and then the number of lines of the indicated message's body".
pub fn top_of(message: &[u8], lines: u32) -> &[u8] {
    let header_end = message
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .map(|i| i + 4);
    let Some(mut end) = header_end else {
        // No blank line: the whole message is header.
        return message;
    };
    for _ in 0..lines {
        if end >= message.len() {
            break;
        }
        end = message[end..]
            .iter()
            .position(|&b| b == b'\n')
            .map_or(message.len(), |i| end + i + 1);
    }
    &message[..end]
}

#[cfg(test)]
mod tests {
    use super::*;

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
    fn bodies_are_dot_stuffed_and_terminated() {
        let mut r = ReplyBuffer::new();
        r.ok_body("3 octets", b"Subject: x\r\n\r\n.hidden\r\n..two\r\nend\r\n");
        assert_eq!(
            r.as_bytes(),
            b"+OK 3 octets\r\nSubject: x\r\n\r\n..hidden\r\n...two\r\nend\r\n.\r\n".as_slice()
        );
        let mut r = ReplyBuffer::new();
        r.ok_body("x", b"no newline");
        assert_eq!(r.as_bytes(), b"+OK x\r\nno newline\r\n.\r\n");
        let mut r = ReplyBuffer::new();
        r.ok_body("empty", b"");
        assert_eq!(r.as_bytes(), b"+OK empty\r\n.\r\n");
    }

    #[test]
    fn listing_lines() {
        let mut r = ReplyBuffer::new();
        r.ok_lines("2 messages", ["1 120", "2 200"]);
        assert_eq!(r.as_bytes(), b"+OK 2 messages\r\n1 120\r\n2 200\r\n.\r\n");
    }

    #[test]
    fn top_cuts_after_header_and_n_lines() {
        let m = b"A: 1\r\nB: 2\r\n\r\nl1\r\nl2\r\nl3\r\n";
        assert_eq!(top_of(m, 0), b"A: 1\r\nB: 2\r\n\r\n");
        assert_eq!(top_of(m, 1), b"A: 1\r\nB: 2\r\n\r\nl1\r\n");
        assert_eq!(top_of(m, 3), m.as_slice());
        assert_eq!(top_of(m, 100), m.as_slice());
        assert_eq!(top_of(b"A: 1\r\nB: 2\r\n", 5), b"A: 1\r\nB: 2\r\n");
    }
}
