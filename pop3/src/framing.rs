//! Cutting the byte stream into command lines. A half-received line is a
//! normal state (the rest comes with the next read), not an error.
//!
//! RFC 2449 section 4: "command lines [...] a maximum length of 255
//! octets, including the terminating CRLF". A longer line is discarded up
//! to its end and reported once, so the session answers `-ERR` and goes on.

/// Longest command line, CRLF included (RFC 2449 section 4).
pub const MAX_LINE: usize = 255;

#[derive(Debug, PartialEq, Eq)]
pub enum Line {
    /// A command line without its line ending.
    Command(Vec<u8>),
    /// A line longer than `MAX_LINE`, dropped.
    TooLong,
}

#[derive(Default)]
pub struct LineBuffer {
    pending: Vec<u8>,
    /// Inside an overlong line: drop bytes up to the next LF.
    discarding: bool,
}

impl LineBuffer {
    pub fn new() -> Self {
        Self::default()
    }

    /// Appends received bytes.
    pub fn extend(&mut self, bytes: &[u8]) {
        self.pending.extend_from_slice(bytes);
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
                        return Some(Line::TooLong);
                    }
                    None => {
                        self.pending.clear();
                        return None;
                    }
                }
            }
            match newline {
                Some(i) if i < MAX_LINE => {
                    let mut line: Vec<u8> = self.pending.drain(..=i).collect();
                    line.pop();
                    if line.last() == Some(&b'\r') {
                        line.pop();
                    }
                    return Some(Line::Command(line));
                }
                Some(_) => {
                    self.discarding = true;
                    continue;
                }
                // More than MAX_LINE - 1 octets and no LF: it cannot fit.
                None if self.pending.len() >= MAX_LINE => {
                    self.discarding = true;
                    continue;
                }
                None => return None,
            }
        }
    }

    /// True while bytes of an unfinished line are held.
    pub fn has_partial(&self) -> bool {
        !self.pending.is_empty()
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

    #[test]
    fn overlong_line_in_pieces_is_reported_once() {
        let junk = vec![b'x'; 10_000];
        let out = lines_of(&[&junk, &junk, b"\r\n", b"QUIT\r\n"]);
        assert_eq!(out, vec![Line::TooLong, Line::Command(b"QUIT".to_vec())]);
    }
}
