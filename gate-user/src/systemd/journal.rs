//! Logging that fits the journal. When systemd connects the daemon's
//! stderr to journald, `$JOURNAL_STREAM` holds that stream's device and
//! inode (`DEV:INO`, systemd.exec(5)); a stderr with the same pair is the
//! journal's (and not, say, a pipe the daemon's stderr was redirected to
//! by a wrapper that inherited the variable). Each line then starts with
//! its priority as sd-daemon(3) spells it (`<3>` for an error ... `<7>`
//! for debug), which journald takes as the entry's priority, and carries
//! no timestamp of ours (the journal stamps every entry itself).
//! Elsewhere the log is env_logger's, as it always was.
//!
//! A message of several lines becomes several entries (journald splits a
//! stream at line ends, and at NUL: `_LINE_BREAK=nul`): each line gets the
//! priority, so that a continuation line is not logged at journald's
//! default priority, nor read as one of its own if it starts with text
//! such as `<0>`. NUL and carriage return are line ends here too, so
//! neither reaches the journal: a NUL in logged text (env_logger strips
//! control characters only while its colours are off, which
//! `RUST_LOG_STYLE=always` turns on) cannot start an entry whose priority
//! the text chooses.

use std::{
    fmt::Display,
    io::{self, Write},
    os::fd::AsFd,
};

use log::Level;

/// sd-daemon(3)'s prefix for `level`: SD_ERR, SD_WARNING, SD_INFO,
/// SD_DEBUG (trace is debug: syslog has nothing below).
pub fn priority(level: Level) -> &'static str {
    match level {
        Level::Error => "<3>",
        Level::Warn => "<4>",
        Level::Info => "<6>",
        Level::Debug | Level::Trace => "<7>",
    }
}

/// Writes one record for the journal: `<N>[LEVEL target] message`, the
/// format of env_logger without its timestamp, and `<N>` before every
/// further line of the message.
pub fn write_record(
    out: &mut impl Write,
    level: Level,
    target: &str,
    message: &dyn Display,
) -> io::Result<()> {
    let prefix = priority(level);
    let text = message.to_string();
    let mut lines = lines(&text).into_iter();
    let first = lines.next().unwrap_or_default();
    writeln!(out, "{prefix}[{level:<5} {target}] {first}")?;
    for line in lines {
        writeln!(out, "{prefix}{line}")?;
    }
    Ok(())
}

/// The lines of `text` as the journal must get them: cut at `\n`, `\r\n`,
/// a lone `\r` and `\0` (none of them kept); a line end that closes the
/// text starts no line of its own. At least one line, maybe empty.
fn lines(text: &str) -> Vec<&str> {
    let mut lines = Vec::new();
    let mut rest = text;
    while let Some(end) = rest.find(['\n', '\r', '\0']) {
        lines.push(&rest[..end]);
        let after = if rest[end..].starts_with("\r\n") {
            2
        } else {
            1
        };
        rest = &rest[end + after..];
    }
    if !rest.is_empty() || lines.is_empty() {
        lines.push(rest);
    }
    lines
}

/// Whether `journal_stream` (`$JOURNAL_STREAM`, `DEV:INO` in decimal)
/// names the file `fd` is open on.
pub fn is_journal_stream(journal_stream: &str, fd: impl AsFd) -> bool {
    let Some((dev, ino)) = journal_stream.split_once(':') else {
        return false;
    };
    let (Ok(dev), Ok(ino)) = (dev.parse::<u64>(), ino.parse::<u64>()) else {
        return false;
    };
    match nix::sys::stat::fstat(fd) {
        Ok(stat) => stat.st_dev == dev && stat.st_ino == ino,
        Err(_) => false,
    }
}

/// Whether this process's stderr is connected to the journal.
pub fn stderr_is_journal() -> bool {
    std::env::var("JOURNAL_STREAM").is_ok_and(|value| is_journal_stream(&value, io::stderr()))
}

/// Sets up the log of a daemon: `RUST_LOG` chooses what is logged (info
/// by default); on the journal each line carries its priority and no
/// timestamp, elsewhere the format is env_logger's.
pub fn init_logger() {
    let mut builder =
        env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("info"));
    if stderr_is_journal() {
        builder.format(|buf, record| {
            write_record(buf, record.level(), record.target(), record.args())
        });
    }
    builder.init();
}

/// The error a command ends with, on stderr: `smtp-gate: ERROR`, at
/// error priority when stderr is the journal.
pub fn print_error(text: &str) {
    let mut stderr = io::stderr().lock();
    let _ = if stderr_is_journal() {
        lines(text)
            .into_iter()
            .try_for_each(|line| writeln!(stderr, "{}{line}", priority(Level::Error)))
    } else {
        writeln!(stderr, "{text}")
    };
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::MetadataExt;

    use super::*;

    fn record(level: Level, message: &str) -> String {
        let mut out = Vec::new();
        write_record(&mut out, level, "smtp_gate::serve", &message).unwrap();
        String::from_utf8(out).unwrap()
    }

    #[test]
    fn each_line_carries_its_priority_and_no_timestamp() {
        assert_eq!(
            record(Level::Error, "cannot listen"),
            "<3>[ERROR smtp_gate::serve] cannot listen\n"
        );
        assert_eq!(
            record(Level::Warn, "no TLS"),
            "<4>[WARN  smtp_gate::serve] no TLS\n"
        );
        assert_eq!(
            record(Level::Info, "POP3 listening on [::]:110"),
            "<6>[INFO  smtp_gate::serve] POP3 listening on [::]:110\n"
        );
        assert_eq!(record(Level::Debug, "x"), "<7>[DEBUG smtp_gate::serve] x\n");
        assert_eq!(record(Level::Trace, "x"), "<7>[TRACE smtp_gate::serve] x\n");
        assert_eq!(record(Level::Info, ""), "<6>[INFO  smtp_gate::serve] \n");
    }

    /// Every line of a message is an entry of its own in the journal:
    /// each gets the record's priority, so that text that looks like a
    /// prefix (`<0>`) stays text and a continuation line is not logged at
    /// the stream's default priority.
    #[test]
    fn a_message_of_several_lines_has_the_priority_on_every_line() {
        assert_eq!(
            record(Level::Warn, "reload refused:\n<0>line two\n\nline four\n"),
            "<4>[WARN  smtp_gate::serve] reload refused:\n<4><0>line two\n<4>\n<4>line four\n"
        );
    }

    /// NUL ends an entry in journald as a line end does, and a carriage
    /// return is one to many readers: each starts a line with the record's
    /// priority, so text after it cannot choose its own (`<0>`: an
    /// emergency, which journald sends to every terminal); none of them
    /// reaches the journal.
    #[test]
    fn nul_and_carriage_return_end_lines_too() {
        let out = record(Level::Warn, "key x\0<0>forged\0");
        assert_eq!(out, "<4>[WARN  smtp_gate::serve] key x\n<4><0>forged\n");
        assert!(!out.contains('\0'));
        assert_eq!(
            record(Level::Info, "a\rb\r\nc\n\rd"),
            "<6>[INFO  smtp_gate::serve] a\n<6>b\n<6>c\n<6>\n<6>d\n"
        );
        assert_eq!(lines("\0"), vec![""]);
        assert_eq!(lines("a\n\n"), vec!["a", ""]);
        assert_eq!(lines("\n"), vec![""]);
    }

    /// `$JOURNAL_STREAM` matches a descriptor only with that descriptor's
    /// own device and inode; anything else (another file, a malformed or
    /// partial value) is not the journal.
    #[test]
    fn the_journal_stream_is_known_by_device_and_inode() {
        let dir = std::env::temp_dir().join(format!("smtp-gate-journal-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let ours = std::fs::File::create(dir.join("stream")).unwrap();
        let other = std::fs::File::create(dir.join("other")).unwrap();
        let (meta, other_meta) = (ours.metadata().unwrap(), other.metadata().unwrap());
        let value = format!("{}:{}", meta.dev(), meta.ino());
        assert!(is_journal_stream(&value, &ours));
        assert!(!is_journal_stream(&value, &other));
        // Same device, the other's inode; and the other way round.
        let swapped = format!("{}:{}", meta.dev(), other_meta.ino());
        assert!(!is_journal_stream(&swapped, &ours));
        let wrong_dev = format!("{}:{}", meta.dev() + 1, meta.ino());
        assert!(!is_journal_stream(&wrong_dev, &ours));
        for bad in [
            String::new(),
            format!("{}", meta.dev()),
            format!("{}:", meta.dev()),
            format!(":{}", meta.ino()),
            format!("{}:{}:0", meta.dev(), meta.ino()),
            format!("{} :{}", meta.dev(), meta.ino()),
        ] {
            assert!(!is_journal_stream(&bad, &ours), "{bad:?}");
        }
        // A pipe (what a wrapper's redirection gives) is not the file.
        let (read, _write) = nix::unistd::pipe().unwrap();
        assert!(!is_journal_stream(&value, &read));
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
