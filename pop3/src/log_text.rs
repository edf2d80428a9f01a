//! Values a client or a maildir controls, made safe for a log line: user
//! names, file names, command keywords. Logs are read by people and parsed
//! by tools (fail2ban, journal filters) as `key=value` fields, one line an
//! event; a value holding a line end, a space or a look-alike character
//! could end the line, forge a field (`user=x addr=192.0.2.1`) or hide
//! what it is. So everything but printable ASCII other than the backslash
//! is written as an escape: `\n`, `\r`, `\t`, `\\`, `\x20` for a space,
//! `\xNN` for other ASCII, `\u{NNNN}` for the rest (U+0085, U+2028, bidi
//! controls, letters of other scripts alike), and `\xNN` for each octet
//! that is not UTF-8. Printable ASCII stays as it is, so the usual name
//! reads as itself.
//!
//! [`LogProse`] is the same escape for a message that quotes such text
//! (an error another program sent, a reason quoting a value): the space
//! and the backslash stay, so it reads as prose, and it still cannot end
//! the line or hide a character.

use std::fmt;

/// Displays its text escaped (see the module).
pub struct LogText<'a>(pub &'a [u8]);

impl<'a> LogText<'a> {
    pub fn of(text: &'a (impl AsRef<[u8]> + ?Sized)) -> Self {
        Self(text.as_ref())
    }
}

impl fmt::Display for LogText<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        escape(self.0, f, |c| c.is_ascii_graphic() && c != '\\')
    }
}

/// Displays its text escaped as [`LogText`] does, but for the space and
/// the backslash, which stay as they are (see the module).
pub struct LogProse<'a>(pub &'a [u8]);

impl<'a> LogProse<'a> {
    pub fn of(text: &'a (impl AsRef<[u8]> + ?Sized)) -> Self {
        Self(text.as_ref())
    }
}

impl fmt::Display for LogProse<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        escape(self.0, f, |c| c.is_ascii_graphic() || c == ' ')
    }
}

/// Writes `text` with every character `stays` refuses escaped.
fn escape(text: &[u8], f: &mut fmt::Formatter<'_>, stays: fn(char) -> bool) -> fmt::Result {
    for chunk in text.utf8_chunks() {
        for c in chunk.valid().chars() {
            match c {
                c if stays(c) => write!(f, "{c}")?,
                '\n' => f.write_str("\\n")?,
                '\r' => f.write_str("\\r")?,
                '\t' => f.write_str("\\t")?,
                '\\' => f.write_str("\\\\")?,
                c if c.is_ascii() => write!(f, "\\x{:02x}", c as u32)?,
                c => write!(f, "\\u{{{:04x}}}", c as u32)?,
            }
        }
        for octet in chunk.invalid() {
            write!(f, "\\x{octet:02x}")?;
        }
    }
    Ok(())
}

impl fmt::Debug for LogText<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "\"{self}\"")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn escaped(text: impl AsRef<[u8]>) -> String {
        LogText::of(text.as_ref()).to_string()
    }

    /// `{:?}` quotes the escaped text: a value logged with Debug cannot
    /// forge a line either.
    #[test]
    fn debug_is_the_escaped_text_quoted() {
        assert_eq!(
            format!("{:?}", LogText::of(b"x\nuser=root")),
            "\"x\\nuser=root\""
        );
    }

    #[test]
    fn printable_ascii_reads_as_itself() {
        let names = "alice bob.smith+tag@example.org O'Neil x=y [a] {b} ~";
        for name in names.split(' ') {
            assert_eq!(escaped(name), name);
        }
    }

    #[test]
    fn nothing_can_end_a_line_or_forge_a_field() {
        assert_eq!(escaped("x\r\nuser=root"), "x\\r\\nuser=root");
        assert_eq!(escaped("x addr=192.0.2.1"), "x\\x20addr=192.0.2.1");
        assert_eq!(
            escaped("a\tb\x0bc\x0cd\0e\x1bf\x7f"),
            "a\\tb\\x0bc\\x0cd\\x00e\\x1bf\\x7f"
        );
        assert_eq!(escaped("\\x0a"), "\\\\x0a", "a backslash is escaped itself");
    }

    #[test]
    fn unicode_line_ends_and_look_alikes_are_shown_as_code_points() {
        assert_eq!(escaped("a\u{85}b"), "a\\u{0085}b");
        assert_eq!(escaped("a\u{2028}b\u{2029}"), "a\\u{2028}b\\u{2029}");
        assert_eq!(escaped("\u{202e}nimda"), "\\u{202e}nimda");
        assert_eq!(escaped("аlice"), "\\u{0430}lice", "a Cyrillic a");
        assert_eq!(escaped("😀"), "\\u{1f600}");
    }

    #[test]
    fn octets_that_are_not_utf8_are_shown_one_by_one() {
        assert_eq!(escaped(b"a\xffb\xc3"), "a\\xffb\\xc3");
        assert_eq!(escaped(b"\xc3\xa9"), "\\u{00e9}");
    }

    #[test]
    fn prose_keeps_spaces_and_backslashes_and_nothing_else_that_could_end_a_line() {
        let prose = |text: &[u8]| LogProse::of(text).to_string();
        assert_eq!(prose(b"ERR no such key \\n"), "ERR no such key \\n");
        assert_eq!(
            prose(b"key x\r\nbus agent: forged\x1b[2J"),
            "key x\\r\\nbus agent: forged\\x1b[2J"
        );
        assert_eq!(prose("a\u{2028}b\u{85}".as_bytes()), "a\\u{2028}b\\u{0085}");
        assert_eq!(prose(b"\xff\t"), "\\xff\\t");
        let all: Vec<u8> = (0..=255).collect();
        let text = prose(&all);
        assert!(
            text.bytes().all(|b| b == b' ' || b.is_ascii_graphic()),
            "{text}"
        );
    }

    #[test]
    fn every_escaped_text_is_one_field_of_printable_ascii() {
        let all: Vec<u8> = (0..=255).collect();
        let text = escaped(&all);
        assert!(text.bytes().all(|b| b.is_ascii_graphic()), "{text}");
    }
}
