//! The client side of a case: sends bytes (in pieces when asked) and reads
//! every reply, holding each to RFC 1939's reply syntax and to what the
//! model expects. Every read is bounded: a hang fails the case.

use std::{fmt::Write as _, net::SocketAddr, time::Duration};

use tokio::{
    io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader},
    net::{
        tcp::{OwnedReadHalf, OwnedWriteHalf},
        TcpStream,
    },
};

use super::model::{Body, Expect};

/// Longer than any reply can take on loopback; reached only by a hang.
const REPLY_BOUND: Duration = Duration::from_secs(10);
/// RFC 2449 section 4: a response line is at most 512 octets, CRLF
/// included.
const MAX_STATUS_LINE: usize = 512;
/// What a failure report shows of the conversation.
const TRANSCRIPT_LINES: usize = 40;

pub struct Conn {
    read: BufReader<OwnedReadHalf>,
    write: OwnedWriteHalf,
    transcript: Vec<String>,
}

/// `bytes` printable, shortened to `max` characters.
pub fn shown(bytes: &[u8], max: usize) -> String {
    let text = bytes.escape_ascii().to_string();
    if text.len() > max {
        format!("{}... ({} octets)", &text[..max], bytes.len())
    } else {
        text
    }
}

impl Conn {
    /// Connects; returns the connection and the greeting line.
    pub async fn connect(addr: SocketAddr) -> Result<(Self, String), String> {
        let stream = tokio::time::timeout(REPLY_BOUND, TcpStream::connect(addr))
            .await
            .map_err(|_| format!("no connection within {REPLY_BOUND:?}"))?
            .map_err(|e| format!("connect: {e}"))?;
        let (read, write) = stream.into_split();
        let mut conn = Self {
            read: BufReader::new(read),
            write,
            transcript: Vec::new(),
        };
        let greeting = conn.status_line().await?;
        if !greeting.starts_with("+OK") {
            return Err(conn.fail(format!("greeting {greeting:?}")));
        }
        Ok((conn, greeting))
    }

    /// `reason`, with the end of the conversation so far.
    pub fn fail(&self, reason: String) -> String {
        let mut text = reason;
        text.push_str("\nconversation (C: client, S: server):");
        for line in &self.transcript {
            let _ = write!(text, "\n  {line}");
        }
        text
    }

    fn note(&mut self, line: String) {
        if self.transcript.len() == TRANSCRIPT_LINES {
            self.transcript.remove(0);
        }
        self.transcript.push(line);
    }

    /// Sends `bytes` as separate writes cut at `cuts`, a moment apart, so
    /// that the server gets lines in pieces.
    pub async fn send(&mut self, bytes: &[u8], cuts: &[usize]) -> Result<(), String> {
        for line in bytes.split_inclusive(|&b| b == b'\n') {
            self.note(format!("C: {}", shown(line, 100)));
        }
        let mut from = 0;
        for &cut in cuts.iter().chain([&bytes.len()]) {
            if cut <= from || cut > bytes.len() {
                continue;
            }
            if from > 0 {
                tokio::time::sleep(Duration::from_millis(2)).await;
            }
            let write = self.write.write_all(&bytes[from..cut]).await;
            write.map_err(|e| self.fail(format!("sending: {e}")))?;
            from = cut;
        }
        Ok(())
    }

    /// Ends the client's side of the connection (FIN), still reading.
    pub async fn half_close(&mut self) -> Result<(), String> {
        self.note("C: <end of stream>".into());
        let shutdown = self.write.shutdown().await;
        shutdown.map_err(|e| self.fail(format!("half-close: {e}")))
    }

    /// One line up to LF, bounded in time; end of stream is an error.
    async fn line(&mut self) -> Result<Vec<u8>, String> {
        let mut line = Vec::new();
        let read = tokio::time::timeout(REPLY_BOUND, self.read.read_until(b'\n', &mut line)).await;
        match read {
            Err(_) => Err(self.fail(format!(
                "no complete reply line within {REPLY_BOUND:?} (got {})",
                shown(&line, 100)
            ))),
            Ok(Err(e)) => Err(self.fail(format!("reading: {e}"))),
            Ok(Ok(_)) if !line.ends_with(b"\n") => Err(self.fail(format!(
                "connection closed before a complete reply (got {}): did the session panic?",
                shown(&line, 100)
            ))),
            Ok(Ok(_)) => Ok(line),
        }
    }

    /// A status line: "+OK" or "-ERR", optionally a space and text, CRLF;
    /// no other CR or LF; at most 512 octets. Returned without CRLF.
    pub async fn status_line(&mut self) -> Result<String, String> {
        let line = self.line().await?;
        self.note(format!("S: {}", shown(&line, 100)));
        let Some(text) = line.strip_suffix(b"\r\n") else {
            return Err(self.fail("status line not ended by CRLF".into()));
        };
        if line.len() > MAX_STATUS_LINE {
            return Err(self.fail(format!("status line of {} octets", line.len())));
        }
        if text.contains(&b'\r') || text.contains(&b'\n') {
            return Err(self.fail("CR or LF inside a status line".into()));
        }
        let indicator_ok = [b"+OK".as_slice(), b"-ERR"].iter().any(|indicator| {
            text.strip_prefix(*indicator)
                .is_some_and(|rest| rest.is_empty() || rest.starts_with(b" "))
        });
        if !indicator_ok {
            return Err(self.fail("status line is neither +OK nor -ERR".into()));
        }
        String::from_utf8(text.to_vec()).map_err(|_| self.fail("status line is not UTF-8".into()))
    }

    /// The lines of a multi-line reply up to the terminating ".", every
    /// line ended by CRLF and dot-stuffed (RFC 1939 section 3); returned
    /// with the stuffing removed.
    async fn body(&mut self) -> Result<Vec<u8>, String> {
        let mut body = Vec::new();
        loop {
            let line = self.line().await?;
            if !line.ends_with(b"\r\n") {
                return Err(self.fail(format!(
                    "multi-line reply line not ended by CRLF: {}",
                    shown(&line, 100)
                )));
            }
            if line == b".\r\n" {
                self.note(format!("S: <{} octets>", body.len()));
                self.note("S: .".into());
                return Ok(body);
            }
            match line.strip_prefix(b".") {
                Some(stuffed) if stuffed.starts_with(b".") => body.extend_from_slice(stuffed),
                Some(_) => {
                    return Err(self.fail(format!(
                        "a line starting with '.' is not dot-stuffed: {}",
                        shown(&line, 100)
                    )))
                }
                None => body.extend_from_slice(&line),
            }
        }
    }

    /// Reads the reply to one line and holds it to `expect`.
    pub async fn reply(&mut self, expect: &Expect) -> Result<(), String> {
        let status = self.status_line().await?;
        if status.starts_with("+OK") != expect.positive {
            let wanted = if expect.positive { "+OK" } else { "-ERR" };
            return Err(self.fail(format!("wanted {wanted}, got {status:?}")));
        }
        if let Some(exact) = &expect.exact {
            if status != *exact {
                return Err(self.fail(format!("wanted {exact:?}, got {status:?}")));
            }
        }
        match &expect.body {
            Body::None => Ok(()),
            Body::Any => self.body().await.map(drop),
            Body::Exact(wanted) => {
                let got = self.body().await?;
                if got == *wanted {
                    return Ok(());
                }
                let at = got.iter().zip(wanted).take_while(|(a, b)| a == b).count();
                Err(self.fail(format!(
                    "multi-line reply of {} octets, wanted {}; first difference at octet {at}: got {}, wanted {}",
                    got.len(),
                    wanted.len(),
                    shown(&got[at..], 60),
                    shown(&wanted[at..], 60)
                )))
            }
        }
    }

    /// The server closes its side, with nothing more to say.
    pub async fn expect_end(&mut self) -> Result<(), String> {
        let mut rest = Vec::new();
        let read = tokio::time::timeout(REPLY_BOUND, self.read.read_to_end(&mut rest)).await;
        match read {
            Err(_) => Err(self.fail(format!("the server did not close within {REPLY_BOUND:?}"))),
            Ok(Err(e)) => Err(self.fail(format!("waiting for the close: {e}"))),
            Ok(Ok(_)) if !rest.is_empty() => {
                Err(self.fail(format!("more after the last reply: {}", shown(&rest, 200))))
            }
            Ok(Ok(_)) => Ok(()),
        }
    }
}
