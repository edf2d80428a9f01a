//! The TRANSACTION state (RFC 1939 section 5) and QUIT's UPDATE state
//! (section 6): the list is fixed at login, DELE only marks, and the marks
//! are applied by QUIT alone.

use std::io;

use log::{error, warn};

use super::{on_blocking_pool, Flow, Tally, LOG_TARGET};
use crate::{
    body::BodyEncoder,
    command::MessageNumber,
    log_text::LogText,
    maildrop::{CommitError, Maildrop, MessageInfo, MessageReader},
    reply::{pair, ReplyBuffer, ReplySink, RespCode},
    session_id::SessionId,
};

/// A message is read this much at a time: what a session holds of it is
/// one chunk and the replies not yet sent (at most about
/// `reply::FLUSH_AT` plus one chunk, dot-stuffed).
pub const MESSAGE_CHUNK: usize = 64 * 1024;

/// The smallest read buffer, for messages whose size is small (or says
/// so wrongly: a `W=` size in a name is taken on trust). 8 KiB, as a
/// literal: a tuning choice, any size is correct (see `reply::FLUSH_AT`).
const MIN_BUFFER: usize = 8_192;

/// Octets read from the page cache and encoded on an async thread before
/// the session lets the other sessions of that thread in. 256 KiB, as a
/// literal: a tuning choice, any budget is correct.
const IN_PLACE_BUDGET: usize = 262_144;

/// A logged-in session's maildrop and its marks.
pub(super) struct Transaction {
    session: SessionId,
    user: String,
    /// `None` only while a blocking read has it, or after that read
    /// panicked: then later reads fail and QUIT removes nothing.
    maildrop: Option<Box<dyn Maildrop>>,
    /// The list fixed at login, kept apart from the maildrop so that it
    /// stays at hand while a read has the maildrop.
    messages: Box<[MessageInfo]>,
    deleted: Vec<bool>,
}

impl Transaction {
    pub(super) fn begin(session: SessionId, user: String, maildrop: Box<dyn Maildrop>) -> Self {
        let messages: Box<[MessageInfo]> = maildrop.messages().into();
        let deleted = vec![false; messages.len()];
        Self {
            session,
            user,
            maildrop: Some(maildrop),
            messages,
            deleted,
        }
    }

    pub(super) fn user(&self) -> &str {
        &self.user
    }

    /// Count and octets of the messages not marked deleted.
    pub(super) fn totals(&self) -> (usize, u64) {
        self.live()
            // Saturating: sizes come from the maildir, which a hostile
            // writer controls; a sum must not wrap into a small number.
            .fold((0, 0), |(n, s), (_, m)| (n + 1, s.saturating_add(m.size)))
    }

    pub(super) fn stat(&self, out: &mut ReplyBuffer) {
        let (count, size) = self.totals();
        out.ok(&pair(count, size));
    }

    pub(super) fn list(&self, n: Option<MessageNumber>, out: &mut ReplyBuffer) {
        match n {
            None => {
                let (count, size) = self.totals();
                let lines = self.live().map(|(i, m)| pair(i + 1, m.size));
                out.ok_lines(&format!("{count} messages ({size} octets)"), lines);
            }
            Some(n) => match self.index(n) {
                Some(i) => out.ok(&pair(n, self.messages[i].size)),
                None => no_such_message(out),
            },
        }
    }

    pub(super) fn uidl(&self, n: Option<MessageNumber>, out: &mut ReplyBuffer) {
        match n {
            None => {
                let lines = self.live().map(|(i, m)| pair(i + 1, &m.uid));
                out.ok_lines("unique-id listing follows", lines);
            }
            Some(n) => match self.index(n) {
                Some(i) => out.ok(&pair(n, &self.messages[i].uid)),
                None => no_such_message(out),
            },
        }
    }

    pub(super) fn dele(&mut self, n: MessageNumber, tally: &mut Tally, out: &mut ReplyBuffer) {
        match self.index(n) {
            Some(i) => {
                self.deleted[i] = true;
                tally.marked += 1;
                out.ok(&format!("message {n} deleted"));
            }
            None => no_such_message(out),
        }
    }

    pub(super) fn rset(&mut self, tally: &mut Tally, out: &mut ReplyBuffer) {
        self.deleted.iter_mut().for_each(|d| *d = false);
        tally.marked = 0;
        let (count, size) = self.totals();
        out.ok(&format!("maildrop has {count} messages ({size} octets)"));
    }

    pub(super) async fn retr(
        &mut self,
        n: MessageNumber,
        tally: &mut Tally,
        out: &mut impl ReplySink,
    ) -> Flow {
        let Some(i) = self.index(n) else {
            no_such_message(out.buffer());
            return Flow::Continue;
        };
        let size = self.messages[i].size;
        let status = format!("{size} octets");
        let sent = self
            .send_message(n, i, &status, BodyEncoder::whole(), out)
            .await;
        if sent == Sent::Whole {
            tally.retr += 1;
            tally.retr_octets = tally.retr_octets.saturating_add(size);
        }
        sent.flow()
    }

    pub(super) async fn top(
        &mut self,
        n: MessageNumber,
        lines: u32,
        tally: &mut Tally,
        out: &mut impl ReplySink,
    ) -> Flow {
        let Some(i) = self.index(n) else {
            no_such_message(out.buffer());
            return Flow::Continue;
        };
        let sent = self
            .send_message(n, i, "top of message follows", BodyEncoder::top(lines), out)
            .await;
        if sent == Sent::Whole {
            tally.top += 1;
        }
        sent.flow()
    }

    /// QUIT: the UPDATE state, where the marked messages are removed.
    /// The `+OK` counts the messages removed, not the marks: one that
    /// another agent removed first is not counted (RFC 1939 section 6:
    /// "-ERR some deleted messages not removed" when not all could be).
    pub(super) async fn quit(self, tally: &mut Tally, out: &mut ReplyBuffer) -> Flow {
        let doomed: Vec<usize> = self
            .deleted
            .iter()
            .enumerate()
            .filter_map(|(i, d)| d.then_some(i))
            .collect();
        let count = doomed.len();
        let Some(maildrop) = self.maildrop else {
            // A read that panicked took the maildrop (and its lock) with it.
            if count == 0 {
                out.ok("smtp-gate POP3 server signing off");
            } else {
                error!(target: LOG_TARGET, "session={} user={}: applying {count} deletions failed: the maildrop was lost to an earlier failure",
                    self.session,
                    LogText::of(&self.user)
                );
                out.err(Some(RespCode::SysTemp), "some deleted messages not removed");
            }
            return Flow::Close;
        };
        let result = if doomed.is_empty() {
            // Nothing to unlink or sync: releasing the lock is one close.
            maildrop.commit(&doomed)
        } else {
            on_blocking_pool(move || maildrop.commit(&doomed))
                .await
                .unwrap_or_else(|e| Err(CommitError::from(e)))
        };
        match result {
            Ok(removed) => {
                tally.removed = removed as u64;
                out.ok(&format!(
                    "smtp-gate POP3 server signing off ({removed} messages deleted)"
                ))
            }
            Err(CommitError { removed, error }) => {
                tally.removed = removed as u64;
                error!(target: LOG_TARGET, "session={} user={}: applying {count} deletions failed after removing {removed}: {error}",
                    self.session,
                    LogText::of(&self.user)
                );
                out.err(Some(RespCode::SysTemp), "some deleted messages not removed");
            }
        }
        Flow::Close
    }

    /// Message numbers are 1-based; 0, numbers past the end and messages
    /// marked deleted do not exist for the client.
    fn index(&self, n: MessageNumber) -> Option<usize> {
        let i = (n as usize).checked_sub(1)?;
        (i < self.messages.len() && !self.deleted[i]).then_some(i)
    }

    fn live(&self) -> impl Iterator<Item = (usize, &MessageInfo)> {
        self.messages
            .iter()
            .enumerate()
            .filter(|(i, _)| !self.deleted[*i])
    }

    /// Sends message `n` (index `index`) as a multi-line response, read
    /// and encoded one chunk at a time, making room in `out` between
    /// chunks: however large the message and however slow the client,
    /// the session holds one chunk of it.
    ///
    /// The message is opened and its first chunk read before `+OK`, so
    /// that a message gone or no longer a regular file gets `-ERR` and
    /// the session goes on. After `+OK` there is no taking it back: a
    /// read that fails then, or a client lost, ends the connection
    /// (`Flow::Close`), and the client sees no terminating dot.
    async fn send_message(
        &mut self,
        n: MessageNumber,
        index: usize,
        status: &str,
        mut encoder: BodyEncoder,
        out: &mut impl ReplySink,
    ) -> Sent {
        let reader = match self.open(index).await {
            Ok(reader) => reader,
            Err(e) => {
                read_failed(self.session, out.buffer(), n, e);
                return Sent::Refused;
            }
        };
        // A small message fits one buffer of its own size (its stored
        // form is never longer than the wire size LIST gave), with room
        // for the octet that would show it grew.
        let size = usize::try_from(self.messages[index].size).unwrap_or(usize::MAX);
        let buffer = vec![0u8; size.saturating_add(1).clamp(MIN_BUFFER, MESSAGE_CHUNK)];
        let (mut reading, mut read) = match next_chunk((reader, buffer)).await {
            Ok(next) => next,
            Err(e) => {
                read_failed(self.session, out.buffer(), n, e);
                return Sent::Refused;
            }
        };
        out.buffer().ok(status);
        let mut sent: u64 = 0;
        let mut in_place = 0;
        loop {
            let chunk = &reading.1[..read.len];
            let wants_more = read.len > 0 && encoder.feed(chunk, out.buffer().bytes_mut());
            if !wants_more {
                encoder.finish(out.buffer().bytes_mut());
                return Sent::Whole;
            }
            sent += read.len as u64;
            if let Err(e) = out.make_room().await {
                warn!(target: LOG_TARGET, "session={} user={}: message {n} cut after {sent} octets: {e}", self.session, LogText::of(&self.user));
                return Sent::Cut;
            }
            if read.in_place {
                in_place += read.len;
                if in_place >= IN_PLACE_BUDGET {
                    // All read and encoded without giving up the thread:
                    // let the other sessions of this worker in.
                    in_place = 0;
                    tokio::task::yield_now().await;
                }
            }
            (reading, read) = match next_chunk(reading).await {
                Ok(next) => next,
                Err(e) => {
                    error!(target: LOG_TARGET, "session={} user={}: reading message {n} failed after {sent} octets: {e}; closing the connection", self.session, LogText::of(&self.user));
                    return Sent::Cut;
                }
            };
        }
    }

    /// Opens a message: in place if its name is in the kernel's caches,
    /// otherwise on the blocking pool, handing the maildrop over and back.
    async fn open(&mut self, index: usize) -> io::Result<Box<dyn MessageReader>> {
        let busy = || io::Error::other("maildrop busy");
        let slot = &mut self.maildrop;
        if let Some(reader) = slot.as_mut().ok_or_else(busy)?.open_if_cached(index) {
            return Ok(reader);
        }
        let mut maildrop = slot.take().ok_or_else(busy)?;
        let (maildrop, result) = on_blocking_pool(move || {
            let result = maildrop.open(index);
            (maildrop, result)
        })
        .await?;
        *slot = Some(maildrop);
        result
    }
}

/// How sending a message went.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Sent {
    /// All of it (or all TOP asked for), terminated.
    Whole,
    /// `-ERR` before anything of it: the session goes on.
    Refused,
    /// Cut after its `+OK`: the connection must close.
    Cut,
}

impl Sent {
    fn flow(self) -> Flow {
        match self {
            Sent::Whole | Sent::Refused => Flow::Continue,
            Sent::Cut => Flow::Close,
        }
    }
}

/// What one read of a message gave.
struct ChunkRead {
    /// Octets read; 0 at the end of the message.
    len: usize,
    /// Read from the page cache on this thread, not on the blocking pool.
    in_place: bool,
}

/// A message being read: the reader and the buffer its chunks go to,
/// which travel to the blocking pool and back together.
type Reading = (Box<dyn MessageReader>, Vec<u8>);

/// Reads the next chunk of a message into the buffer: in place if it is in
/// the page cache, otherwise on the blocking pool.
async fn next_chunk((mut reader, mut chunk): Reading) -> io::Result<(Reading, ChunkRead)> {
    if let Some(len) = reader.read_if_cached(&mut chunk) {
        let read = ChunkRead {
            len,
            in_place: true,
        };
        return Ok(((reader, chunk), read));
    }
    on_blocking_pool(move || loop {
        match reader.read(&mut chunk) {
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => break Err(e),
            Ok(len) => {
                let read = ChunkRead {
                    len,
                    in_place: false,
                };
                break Ok(((reader, chunk), read));
            }
        }
    })
    .await?
}

fn read_failed(session: SessionId, out: &mut ReplyBuffer, n: MessageNumber, e: io::Error) {
    if e.kind() == io::ErrorKind::NotFound {
        out.err(None, &format!("message {n} was removed by another client"));
    } else if e.kind() == io::ErrorKind::InvalidData {
        // Not a regular file any more (a FIFO, a link): the maildrop has
        // logged what it is; the session goes on.
        out.err(None, &format!("message {n} cannot be served"));
    } else {
        error!(target: LOG_TARGET, "session={session} reading message {n} failed: {e}");
        out.err(Some(RespCode::SysTemp), "cannot read the message now");
    }
}

fn no_such_message(out: &mut ReplyBuffer) {
    out.err(None, "no such message");
}
