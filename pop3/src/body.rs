//! A message on its way out, piece by piece as it is read: line ends to
//! CRLF, dot-stuffing, and TOP's cut after the header and n body lines.
//!
//! RETR and TOP never hold a whole message: the session reads it in
//! chunks and hands each to a [`BodyEncoder`], which keeps what it must
//! know across chunk boundaries (the previous octet, whether a line
//! starts, how far TOP has come), so a CR LF, a line's leading dot or the
//! blank line after the header may fall between two reads.

/// Turns a stored message (LF or CRLF line ends) into the body of a
/// multi-line response.
///
/// The wire form is the one LIST counts (`maildrop::wire_size`): a bare LF
/// becomes CRLF, an existing CRLF stays, a bare CR inside a line is left
/// alone (it is not a line end), and a final line without newline gets
/// CRLF so the terminating "." always starts a line. RFC 1939 section 3:
/// "If any line of the multi-line response begins with the termination
/// octet, the line is 'byte-stuffed' by pre-pending the termination octet
/// to that line of the response."
#[derive(Debug)]
pub struct BodyEncoder {
    /// The last stored octet seen (LF before the first one: a message
    /// starts a line).
    prev: u8,
    /// The next octet begins a line.
    at_line_start: bool,
    /// Stored octets of the current line so far, LF excluded.
    line_len: usize,
    /// No line has ended yet.
    first_line: bool,
    /// Whether any octet was seen.
    any: bool,
    top: Option<Top>,
    /// TOP's part is complete: nothing more is taken.
    done: bool,
}

/// How far TOP has come.
#[derive(Debug)]
struct Top {
    header_done: bool,
    /// Body lines still to send once the header is done.
    lines_left: u32,
}

impl BodyEncoder {
    /// The whole message (RETR).
    pub fn whole() -> Self {
        Self {
            prev: b'\n',
            at_line_start: true,
            line_len: 0,
            first_line: true,
            any: false,
            top: None,
            done: false,
        }
    }

    /// The header, the blank line and the first `lines` lines of the body
    /// (TOP). RFC 1939 section 7: "the server sends the headers of the
    /// message, the blank line separating the headers from the body, and
    /// then the number of lines of the indicated message's body". A
    /// message without a blank line is all header and is sent whole.
    ///
    /// The header ends where the wire form first holds CR LF CR LF: at the
    /// first empty line that is not the message's first line.
    pub fn top(lines: u32) -> Self {
        Self {
            top: Some(Top {
                header_done: false,
                lines_left: lines,
            }),
            ..Self::whole()
        }
    }

    /// Appends the wire form of `stored` (the next piece of the message),
    /// dot-stuffed, to `out`. Returns false once TOP's part is complete:
    /// the rest of the message need not be read, and is not taken.
    pub fn feed(&mut self, mut stored: &[u8], out: &mut Vec<u8>) -> bool {
        while !stored.is_empty() && !self.done {
            self.any = true;
            if self.at_line_start {
                if stored[0] == b'.' {
                    out.push(b'.');
                }
                self.at_line_start = false;
            }
            let newline = stored.iter().position(|&b| b == b'\n');
            let (text, rest) = stored.split_at(newline.unwrap_or(stored.len()));
            if let Some(&last) = text.last() {
                out.extend_from_slice(text);
                self.prev = last;
                self.line_len = self.line_len.saturating_add(text.len());
            }
            stored = rest;
            if !stored.is_empty() {
                // The LF that ends this line.
                stored = &stored[1..];
                self.end_line(out);
            }
        }
        !self.done
    }

    fn end_line(&mut self, out: &mut Vec<u8>) {
        if self.prev != b'\r' {
            out.push(b'\r');
        }
        out.push(b'\n');
        // "\r\n" alone on the wire: stored as "\n" or "\r\n".
        let empty = self.line_len == 0 || (self.line_len == 1 && self.prev == b'\r');
        let first = std::mem::replace(&mut self.first_line, false);
        self.prev = b'\n';
        self.line_len = 0;
        self.at_line_start = true;
        if let Some(top) = &mut self.top {
            if top.header_done {
                top.lines_left = top.lines_left.saturating_sub(1);
            } else if empty && !first {
                top.header_done = true;
            }
            if top.header_done && top.lines_left == 0 {
                self.done = true;
            }
        }
    }

    /// Ends the body at the end of the message (or of TOP's part): the
    /// CRLF a last line without newline lacks, then the terminating dot.
    pub fn finish(self, out: &mut Vec<u8>) {
        if self.any && self.prev != b'\n' {
            out.extend_from_slice(b"\r\n");
        }
        out.extend_from_slice(b".\r\n");
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::maildrop::{to_wire, wire_size};

    /// What the server sent before it streamed: the whole message read,
    /// converted (`to_wire`), cut for TOP and dot-stuffed line by line.
    /// The encoder must give exactly this, however the message is cut
    /// into pieces.
    fn reference(stored: &[u8], top: Option<u32>) -> Vec<u8> {
        let wire = to_wire(stored);
        let body = match top {
            None => &wire[..],
            Some(lines) => top_of(&wire, lines),
        };
        let mut out = Vec::new();
        let mut rest = body;
        while !rest.is_empty() {
            let end = rest
                .iter()
                .position(|&b| b == b'\n')
                .map_or(rest.len(), |i| i + 1);
            let (line, tail) = rest.split_at(end);
            if line.first() == Some(&b'.') {
                out.push(b'.');
            }
            out.extend_from_slice(line);
            rest = tail;
        }
        if !body.is_empty() && !body.ends_with(b"\r\n") {
            out.extend_from_slice(b"\r\n");
        }
        out.extend_from_slice(b".\r\n");
        out
    }

    /// TOP as it was cut from the whole wire form.
    fn top_of(message: &[u8], lines: u32) -> &[u8] {
        let header_end = message
            .windows(4)
            .position(|w| w == b"\r\n\r\n")
            .map(|i| i + 4);
        let Some(mut end) = header_end else {
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

    /// The encoder fed `stored` in pieces of `piece` octets; also how many
    /// octets it took before it said it had enough.
    fn encoded(stored: &[u8], top: Option<u32>, piece: usize) -> (Vec<u8>, usize) {
        let mut encoder = match top {
            None => BodyEncoder::whole(),
            Some(lines) => BodyEncoder::top(lines),
        };
        let mut out = Vec::new();
        let mut taken = 0;
        for chunk in stored.chunks(piece) {
            taken += chunk.len();
            if !encoder.feed(chunk, &mut out) {
                break;
            }
        }
        encoder.finish(&mut out);
        (out, taken)
    }

    const SAMPLES: &[&[u8]] = &[
        b"",
        b"\n",
        b"\r",
        b"\r\n",
        b"\n\r",
        b".",
        b"..",
        b".\n",
        b".\r\n.\r\n",
        b"x",
        b"a\nb",
        b"a\r\nb\r\n",
        b"a\n\r\n\n",
        b"a\rb\n",
        b"a\r",
        b"a\r\r\n\r\nb\n",
        b"\n\nbody\n",
        b"\r\n\r\nbody\r\n",
        b"\nA: 1\n\nB\n",
        b"Subject: x\n\n.line\nlast",
        b"Subject: one\r\n\r\nfirst body\r\n.dotted line\r\n",
        b"A: 1\r\nB: 2\r\n\r\nl1\r\n.l2\r\n..l3\r\nl4",
        b"A: 1\nB: 2\n\nl1\n\nl3\n.\nend\n",
        b"A: 1\nB: 2\n",
        b"no blank line\n.dot\nat all",
        b"mixed\r\nends\nand\rcr\r",
        b"H\n\r\nbody\r\n\n",
    ];

    #[test]
    fn retr_and_top_give_what_the_whole_message_gave_at_every_piece_size() {
        for stored in SAMPLES {
            for top in [None, Some(0), Some(1), Some(2), Some(3), Some(100)] {
                let expected = reference(stored, top);
                for piece in 1..=stored.len().max(1) + 1 {
                    let (got, _) = encoded(stored, top, piece);
                    assert_eq!(
                        String::from_utf8_lossy(&got),
                        String::from_utf8_lossy(&expected),
                        "{:?}, top {top:?}, pieces of {piece}",
                        String::from_utf8_lossy(stored)
                    );
                }
            }
        }
    }

    #[test]
    fn retr_sends_the_size_list_announced() {
        for stored in SAMPLES {
            let (got, _) = encoded(stored, None, 3);
            let dots = got.len() as u64 - wire_size(stored) - 3;
            let stuffed = to_wire(stored)
                .split(|&b| b == b'\n')
                .filter(|line| line.first() == Some(&b'.'))
                .count() as u64;
            assert_eq!(dots, stuffed, "{:?}", String::from_utf8_lossy(stored));
        }
    }

    #[test]
    fn top_stops_taking_after_its_lines() {
        let mut stored = b"A: 1\nB: 2\n\nl1\nl2\n".to_vec();
        stored.extend(std::iter::repeat_n(b'x', 100_000));
        let (got, taken) = encoded(&stored, Some(0), 4);
        assert_eq!(got, b"A: 1\r\nB: 2\r\n\r\n.\r\n");
        assert_eq!(taken, 12, "the header and the blank line, in pieces of 4");
        let (got, taken) = encoded(&stored, Some(2), 1);
        assert_eq!(got, b"A: 1\r\nB: 2\r\n\r\nl1\r\nl2\r\n.\r\n");
        assert_eq!(taken, 17);
    }

    #[test]
    fn examples() {
        let (got, _) = encoded(b"Subject: x\r\n\r\n.hidden\r\n..two\r\nend\r\n", None, 5);
        assert_eq!(
            got,
            b"Subject: x\r\n\r\n..hidden\r\n...two\r\nend\r\n.\r\n".as_slice()
        );
        assert_eq!(encoded(b"no newline", None, 4).0, b"no newline\r\n.\r\n");
        assert_eq!(encoded(b"", None, 4).0, b".\r\n");
        let m = b"A: 1\r\nB: 2\r\n\r\nl1\r\nl2\r\nl3\r\n";
        assert_eq!(encoded(m, Some(0), 7).0, b"A: 1\r\nB: 2\r\n\r\n.\r\n");
        assert_eq!(encoded(m, Some(1), 7).0, b"A: 1\r\nB: 2\r\n\r\nl1\r\n.\r\n");
        assert_eq!(encoded(m, Some(3), 7).0, [&m[..], b".\r\n"].concat());
    }
}
