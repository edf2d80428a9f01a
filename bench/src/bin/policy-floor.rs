//! The floor for `cargo xtask bench hooks`: policy servers that answer
//! without looking at anything, so that the figures of `smtp-gate serve`'s
//! hooks can be given as a ratio against the least any server speaking
//! the same protocol over the same connections must do.
//!
//!     policy-floor postfix|dovecot ADDR
//!
//! `postfix`: Postfix's policy delegation, reading `name=value` lines up
//! to the empty line and answering `action=DUNNO`, connections kept
//! alive. `dovecot`: HTTP/1.1 as Dovecot's auth policy client speaks it,
//! reading the headers and the `Content-Length` body and answering
//! `{"status":0}`, connections kept alive; the JSON is not parsed.
//!
//! The same runtime as the daemon (tokio, multi-threaded), one task per
//! connection. Prints `ready` on stdout once listening on ADDR, stops
//! when its standard input closes.

use std::io::BufRead;

use anyhow::{bail, Context, Result};
use tokio::{
    io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader},
    net::{TcpListener, TcpStream},
};

/// The longest request line or header taken, and the most lines of one
/// request: a client that sends more is dropped.
const MAX_LINE: usize = 8 * 1024;
const MAX_LINES: usize = 256;
const MAX_BODY: usize = 16 * 1024;

const DOVECOT_ANSWER: &[u8] =
    b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 12\r\n\r\n{\"status\":0}";

#[derive(Clone, Copy)]
enum Protocol {
    Postfix,
    Dovecot,
}

fn main() -> Result<()> {
    let mut args = std::env::args().skip(1);
    let usage = "usage: policy-floor postfix|dovecot ADDR";
    let protocol = match args.next().as_deref() {
        Some("postfix") => Protocol::Postfix,
        Some("dovecot") => Protocol::Dovecot,
        _ => bail!(usage),
    };
    let addr: std::net::SocketAddr = args.next().context(usage)?.parse()?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    let listener = runtime.block_on(TcpListener::bind(addr))?;
    runtime.spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                continue;
            };
            tokio::spawn(async move {
                let _ = match protocol {
                    Protocol::Postfix => serve_postfix(stream).await,
                    Protocol::Dovecot => serve_dovecot(stream).await,
                };
            });
        }
    });
    println!("ready");
    // Until the harness closes our stdin.
    let mut line = String::new();
    while std::io::stdin().lock().read_line(&mut line)? > 0 {
        line.clear();
    }
    runtime.shutdown_background();
    Ok(())
}

/// Reads one line into `line` (cleared first); false at the end of the
/// stream.
async fn read_line(reader: &mut BufReader<TcpStream>, line: &mut Vec<u8>) -> Result<bool> {
    line.clear();
    let n = (&mut *reader)
        .take(MAX_LINE as u64 + 2)
        .read_until(b'\n', line)
        .await?;
    if n > MAX_LINE + 1 {
        bail!("a line over {MAX_LINE} octets");
    }
    Ok(n > 0)
}

async fn serve_postfix(stream: TcpStream) -> Result<()> {
    let mut reader = BufReader::new(stream);
    let mut line = Vec::new();
    loop {
        let mut lines = 0;
        loop {
            if !read_line(&mut reader, &mut line).await? {
                return Ok(());
            }
            if line == b"\n" {
                break;
            }
            lines += 1;
            if lines > MAX_LINES {
                bail!("a request of over {MAX_LINES} lines");
            }
        }
        reader.get_mut().write_all(b"action=DUNNO\n\n").await?;
    }
}

async fn serve_dovecot(stream: TcpStream) -> Result<()> {
    let mut reader = BufReader::new(stream);
    let mut line = Vec::new();
    let mut body = vec![0u8; MAX_BODY];
    loop {
        let mut length = 0usize;
        let mut lines = 0;
        loop {
            if !read_line(&mut reader, &mut line).await? {
                return Ok(());
            }
            if line == b"\r\n" {
                break;
            }
            lines += 1;
            if lines > MAX_LINES {
                bail!("over {MAX_LINES} header lines");
            }
            let text = String::from_utf8_lossy(&line);
            if let Some((name, value)) = text.split_once(':') {
                if name.eq_ignore_ascii_case("content-length") {
                    length = value.trim().parse()?;
                }
            }
        }
        if length > MAX_BODY {
            bail!("a body over {MAX_BODY} octets");
        }
        reader.read_exact(&mut body[..length]).await?;
        reader.get_mut().write_all(DOVECOT_ANSWER).await?;
    }
}
