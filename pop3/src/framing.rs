//! Cutting the byte stream into command lines. A half-received line is a
//! normal state (the rest comes with the next read), not an error.
//!
//! RFC 2449 section 4: "command lines [...] a maximum length of 255
//! octets, including the terminating CRLF". A longer line is discarded up
//! to its end and reported once, so the session answers `-ERR` and goes on.
//!
//! The buffer also knows since when its unfinished line has been coming
//! in: the server's time limit for one command line counts from there, so
//! octets trickling in without a line end do not put it off.

use std::time::Instant;

/// Longest command line, CRLF included (RFC 2449 section 4).
pub const MAX_LINE: usize = 255;

#[derive(Debug, PartialEq, Eq)]
pub enum Line {
    /// A command line without its line ending.
    Command(Vec<u8>),
    /// A line longer than `MAX_LINE`, dropped.
    TooLong,
}

pub struct LineBuffer {
    pending: Vec<u8>,
    /// The longest line taken next, CRLF included: `MAX_LINE` for a
    /// command, more for a SASL response (`set_max_line`).
    max_line: usize,
    /// Inside an overlong line: drop bytes up to the next LF.
    discarding: bool,
    /// When the first octet of the unfinished line (held or being
    /// discarded) arrived.
    line_started: Option<Instant>,
    /// When the octets of the last `extend` arrived: a line that begins
    /// after a line end in them began then.
    last_arrival: Option<Instant>,
}

impl Default for LineBuffer {
    fn default() -> Self {
        Self {
            pending: Vec::new(),
            max_line: MAX_LINE,
            discarding: false,
            line_started: None,
            last_arrival: None,
        }
    }
}

impl LineBuffer {
    pub fn new() -> Self {
        Self::default()
    }

    /// The longest line the next `next_line` takes, CRLF included.
    pub fn set_max_line(&mut self, max_line: usize) {
        self.max_line = max_line;
    }

    /// Appends bytes received just now.
    pub fn extend(&mut self, bytes: &[u8]) {
        self.extend_at(bytes, Instant::now());
    }

    /// Appends bytes received at `arrived`.
    pub fn extend_at(&mut self, bytes: &[u8], arrived: Instant) {
        if bytes.is_empty() {
            return;
        }
        if self.line_started.is_none() {
            self.line_started = Some(arrived);
        }
        self.last_arrival = Some(arrived);
        self.pending.extend_from_slice(bytes);
    }

    /// Octets received and not yet given out as lines (what a client sent
    /// after STLS, which is dropped unread).
    pub fn pending_octets(&self) -> usize {
        self.pending.len()
    }

    /// When the first octet of the line still unfinished arrived; `None`
    /// between lines. A line being discarded as too long counts too.
    pub fn unfinished_since(&self) -> Option<Instant> {
        self.line_started
    }

    /// A line ended: what is left began with the last arrival.
    fn line_ended(&mut self) {
        self.line_started = if self.pending.is_empty() {
            None
        } else {
            self.last_arrival
        };
    }

    /// The next complete line, if one has arrived. CRLF ends a line; a bare
    /// LF is accepted too, as most servers do.
    pub fn next_line(&mut self) -> Option<Line> {
        loop {
            let newline = self.pending.iter().position(|&b| b == b'\n');
            if self.discarding {
                match newline {
                    Some(i) => {
                        self.pending.drain(..=i);
                        self.discarding = false;
                        self.line_ended();
                        return Some(Line::TooLong);
                    }
                    None => {
                        self.pending.clear();
                        return None;
                    }
                }
            }
            match newline {
                Some(i) if i < self.max_line => {
                    let mut line: Vec<u8> = self.pending.drain(..=i).collect();
                    line.pop();
                    if line.last() == Some(&b'\r') {
                        line.pop();
                    }
                    self.line_ended();
                    return Some(Line::Command(line));
                }
                Some(_) => {
                    self.discarding = true;
                    continue;
                }
                // More than max_line - 1 octets and no LF: it cannot fit.
                None if self.pending.len() >= self.max_line => {
                    self.discarding = true;
                    continue;
                }
                None => return None,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lines_of(chunks: &[&[u8]]) -> Vec<Line> {
        let mut buffer = LineBuffer::new();
        let mut out = Vec::new();
        for chunk in chunks {
            buffer.extend(chunk);
            while let Some(line) = buffer.next_line() {
                out.push(line);
            }
        }
        out
    }

    /// A line that never ends is not kept: what cannot fit is dropped as
    /// it arrives, so a client sending octets without a line end holds no
    /// more than one line's worth of memory.
    #[test]
    fn an_endless_line_is_not_kept() {
        let mut buffer = LineBuffer::new();
        for _ in 0..64 {
            buffer.extend(&[b'x'; MAX_LINE]);
            assert_eq!(buffer.next_line(), None);
            assert!(buffer.pending.len() < MAX_LINE, "{}", buffer.pending.len());
        }
    }

    #[test]
    fn splits_crlf_and_bare_lf() {
        assert_eq!(
            lines_of(&[b"STAT\r\nLIST\nNOOP\r\n"]),
            vec![
                Line::Command(b"STAT".to_vec()),
                Line::Command(b"LIST".to_vec()),
                Line::Command(b"NOOP".to_vec())
            ]
        );
    }

    #[test]
    fn half_lines_wait_for_the_rest() {
        assert_eq!(
            lines_of(&[b"ST", b"A", b"T\r", b"\n"]),
            vec![Line::Command(b"STAT".to_vec())]
        );
    }

    #[test]
    fn limit_is_255_octets_with_crlf() {
        let fits = format!("USER {}\r\n", "a".repeat(MAX_LINE - 7));
        assert_eq!(fits.len(), MAX_LINE);
        assert!(matches!(lines_of(&[fits.as_bytes()])[0], Line::Command(_)));
        let too_long = format!("USER {}\r\nNOOP\r\n", "a".repeat(MAX_LINE - 6));
        assert_eq!(
            lines_of(&[too_long.as_bytes()]),
            vec![Line::TooLong, Line::Command(b"NOOP".to_vec())]
        );
    }

    /// A SASL response may be longer than a command; the limit set holds
    /// for the lines taken after it, and goes back.
    #[test]
    fn the_limit_can_be_raised_for_the_next_line() {
        let long = format!("{}\r\n", "a".repeat(1000));
        let mut buffer = LineBuffer::new();
        buffer.extend(long.as_bytes());
        buffer.extend(long.as_bytes());
        buffer.set_max_line(1002);
        assert_eq!(buffer.next_line(), Some(Line::Command(vec![b'a'; 1000])));
        buffer.set_max_line(MAX_LINE);
        assert_eq!(buffer.next_line(), Some(Line::TooLong));
        buffer.extend(&[b'b'; 1500]);
        buffer.set_max_line(1002);
        assert_eq!(buffer.next_line(), None);
        assert!(buffer.pending.len() < 1002, "{}", buffer.pending.len());
    }

    #[test]
    fn overlong_line_in_pieces_is_reported_once() {
        let junk = vec![b'x'; 10_000];
        let out = lines_of(&[&junk, &junk, b"\r\n", b"QUIT\r\n"]);
        assert_eq!(out, vec![Line::TooLong, Line::Command(b"QUIT".to_vec())]);
    }

    /// The line's time starts with its first octet: more octets without a
    /// line end keep that start; a line end starts the next line's time
    /// with the octets after it, or stops it when there are none. A line
    /// dropped as too long is still a line in coming.
    #[test]
    fn an_unfinished_line_is_dated_by_its_first_octet() {
        let t0 = Instant::now();
        let at = |ms| t0 + std::time::Duration::from_millis(ms);
        let mut buffer = LineBuffer::new();
        assert_eq!(buffer.unfinished_since(), None);
        buffer.extend_at(b"NO", at(0));
        buffer.extend_at(b"", at(5));
        buffer.extend_at(b"O", at(10));
        assert_eq!(buffer.next_line(), None);
        assert_eq!(buffer.unfinished_since(), Some(at(0)), "trickling");
        buffer.extend_at(b"P\r\nST", at(20));
        assert_eq!(buffer.next_line(), Some(Line::Command(b"NOOP".to_vec())));
        assert_eq!(buffer.next_line(), None);
        assert_eq!(buffer.unfinished_since(), Some(at(20)), "the next line");
        buffer.extend_at(b"AT\r\n", at(30));
        assert_eq!(buffer.next_line(), Some(Line::Command(b"STAT".to_vec())));
        assert_eq!(buffer.unfinished_since(), None, "between lines");
        buffer.extend_at(&[b'x'; MAX_LINE + 1], at(40));
        assert_eq!(buffer.next_line(), None);
        buffer.extend_at(b"xx", at(50));
        assert_eq!(buffer.next_line(), None);
        assert_eq!(buffer.unfinished_since(), Some(at(40)), "being dropped");
        buffer.extend_at(b"\n", at(60));
        assert_eq!(buffer.next_line(), Some(Line::TooLong));
        assert_eq!(buffer.unfinished_since(), None);
    }
}
