//! The TRANSACTION state (RFC 1939 section 5) and QUIT's UPDATE state
//! (section 6): the list is fixed at login, DELE only marks, and the marks
//! are applied by QUIT alone.

use std::io;

use log::error;

use super::{on_blocking_pool, Flow, LOG_TARGET};
use crate::{
    command::MessageNumber,
    log_text::LogText,
    maildrop::{Maildrop, MessageInfo},
    reply::{pair, top_of, ReplyBuffer, RespCode},
};

/// A logged-in session's maildrop and its marks.
pub(super) struct Transaction {
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
    pub(super) fn begin(user: String, maildrop: Box<dyn Maildrop>) -> Self {
        let messages: Box<[MessageInfo]> = maildrop.messages().into();
        let deleted = vec![false; messages.len()];
        Self {
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
            .fold((0, 0), |(n, s), (_, m)| (n + 1, s + m.size))
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

    pub(super) fn dele(&mut self, n: MessageNumber, out: &mut ReplyBuffer) {
        match self.index(n) {
            Some(i) => {
                self.deleted[i] = true;
                out.ok(&format!("message {n} deleted"));
            }
            None => no_such_message(out),
        }
    }

    pub(super) fn rset(&mut self, out: &mut ReplyBuffer) {
        self.deleted.iter_mut().for_each(|d| *d = false);
        let (count, size) = self.totals();
        out.ok(&format!("maildrop has {count} messages ({size} octets)"));
    }

    pub(super) async fn retr(&mut self, n: MessageNumber, out: &mut ReplyBuffer) {
        let Some(i) = self.index(n) else {
            return no_such_message(out);
        };
        match self.read(i).await {
            Ok(body) => out.ok_body(&format!("{} octets", self.messages[i].size), &body),
            Err(e) => read_failed(out, n, e),
        }
    }

    pub(super) async fn top(&mut self, n: MessageNumber, lines: u32, out: &mut ReplyBuffer) {
        let Some(i) = self.index(n) else {
            return no_such_message(out);
        };
        match self.read(i).await {
            Ok(body) => out.ok_body("top of message follows", top_of(&body, lines)),
            Err(e) => read_failed(out, n, e),
        }
    }

    /// QUIT: the UPDATE state, where the marked messages are removed.
    pub(super) async fn quit(self, out: &mut ReplyBuffer) -> Flow {
        let Some(maildrop) = self.maildrop else {
            out.ok("smtp-gate POP3 server signing off");
            return Flow::Close;
        };
        let doomed: Vec<usize> = self
            .deleted
            .iter()
            .enumerate()
            .filter_map(|(i, d)| d.then_some(i))
            .collect();
        let count = doomed.len();
        let result = if doomed.is_empty() {
            // Nothing to unlink or sync: releasing the lock is one close.
            maildrop.commit(&doomed)
        } else {
            on_blocking_pool(move || maildrop.commit(&doomed))
                .await
                .unwrap_or_else(Err)
        };
        match result {
            Ok(()) => out.ok(&format!(
                "smtp-gate POP3 server signing off ({count} messages deleted)"
            )),
            Err(e) => {
                error!(target: LOG_TARGET, "user={}: applying {count} deletions failed: {e}", LogText::of(&self.user));
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

    /// Reads a message: in place if it is in the page cache, otherwise off
    /// the async worker threads, handing the maildrop over and back.
    async fn read(&mut self, index: usize) -> io::Result<Vec<u8>> {
        let busy = || io::Error::other("maildrop busy");
        let slot = &mut self.maildrop;
        if let Some(body) = slot.as_mut().ok_or_else(busy)?.read_if_cached(index) {
            return Ok(body);
        }
        let mut maildrop = slot.take().ok_or_else(busy)?;
        let (maildrop, result) = on_blocking_pool(move || {
            let result = maildrop.read(index);
            (maildrop, result)
        })
        .await?;
        *slot = Some(maildrop);
        result
    }
}

fn read_failed(out: &mut ReplyBuffer, n: MessageNumber, e: io::Error) {
    if e.kind() == io::ErrorKind::NotFound {
        out.err(None, &format!("message {n} was removed by another client"));
    } else if e.kind() == io::ErrorKind::InvalidData {
        // Not a regular file any more (a FIFO, a link): the maildrop has
        // logged what it is; the session goes on.
        out.err(None, &format!("message {n} cannot be served"));
    } else {
        error!(target: LOG_TARGET, "reading message {n} failed: {e}");
        out.err(Some(RespCode::SysTemp), "cannot read the message now");
    }
}

fn no_such_message(out: &mut ReplyBuffer) {
    out.err(None, "no such message");
}
