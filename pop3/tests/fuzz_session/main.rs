//! Property test of the POP3 server on loopback (issue 10's fuzz target
//! for the session): generated sessions of valid commands with random
//! arguments, malformed and overlong lines, lines at the 255-octet limit,
//! bare LF, pipelined batches cut into pieces, and every way of leaving
//! (QUIT, close, half-close, a line without its end, lines whose replies
//! are never read). For each case:
//! - every reply is what RFC 1939 says (`model`): +OK or -ERR as the state
//!   and the maildrop make it, STAT, LIST and UIDL lines exact, RETR and
//!   TOP bodies exact after un-stuffing; a malformed line gets -ERR and the
//!   session goes on; every read is bounded in time, so a hang or a
//!   session that dies (a panic) fails the case (`client`);
//! - the Maildir on disk is unchanged unless QUIT ended a TRANSACTION,
//!   and then exactly the messages marked by DELE (and not unmarked by
//!   RSET) are gone;
//! - afterwards every user logs in again and UIDL lists what QUIT left:
//!   the server was not wedged and no lock was left behind.
//!
//! One server (and runtime) for the whole run, one session per case. The
//! number of cases is `PROPTEST_CASES` (default below); a failing case is
//! shrunk and its seed kept in `main.proptest-regressions` next to
//! this file, which is replayed first on every run.

mod client;
mod fixture;
mod model;
mod script;

use std::{
    collections::BTreeSet,
    time::{Duration, Instant},
};

use proptest::test_runner::{Config, FileFailurePersistence, TestCaseError, TestRunner};

use client::Conn;
use fixture::Fixture;
use model::Model;
use script::{Ending, Script};

/// A case takes about 30 ms in a debug build (mostly waiting): about 8 s.
const DEFAULT_CASES: u32 = 256;
/// Outer bound of one case; reached only by a hang the reads did not see.
const CASE_BOUND: Duration = Duration::from_secs(60);
/// How long a maildrop may stay locked after its client is gone: the
/// server notices a closed connection at once, so only a wedged session
/// takes this long.
const LOCK_BOUND: Duration = Duration::from_secs(10);

fn config() -> Config {
    let cases = std::env::var("PROPTEST_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(DEFAULT_CASES);
    Config {
        cases,
        // Next to this file: tests/ has no lib.rs for proptest's default
        // (a tree parallel to src/) to find, so say where it goes.
        failure_persistence: Some(Box::new(FileFailurePersistence::WithSource(
            "proptest-regressions",
        ))),
        source_file: Some(file!()),
        // A failing case can take up to the read bound to fail, so
        // shrinking is bounded too (it stops with the smallest case found).
        max_shrink_iters: 512,
        max_shrink_time: 60_000,
        ..Config::default()
    }
}

#[test]
fn sessions_hold_to_rfc_1939_and_leave_the_maildir_as_quit_says() {
    let fixture = Fixture::start();
    let mut runner = TestRunner::new(config());
    let result = runner.run(&script::script(fixture.users.len()), |script| {
        fixture
            .runtime
            .block_on(check_case(&fixture, &script))
            .map_err(TestCaseError::fail)
    });
    if let Err(e) = result {
        panic!("{e}");
    }
}

async fn check_case(fixture: &Fixture, script: &Script) -> Result<(), String> {
    // A case starts from the fixture's Maildirs, whatever the last left.
    for user in &fixture.users {
        if fixture.snapshot(user) != fixture.expected(user, &BTreeSet::new()) {
            fixture.restore(user);
        }
    }
    let removed = tokio::time::timeout(CASE_BOUND, session(fixture, script))
        .await
        .map_err(|_| format!("the case took over {CASE_BOUND:?}"))??;
    for (i, user) in fixture.users.iter().enumerate() {
        let gone = match &removed {
            Some((removed_from, gone)) if *removed_from == i => gone.clone(),
            _ => BTreeSet::new(),
        };
        logs_in_and_lists(fixture, i, &gone).await?;
        let on_disk = fixture.snapshot(user);
        let expected = fixture.expected(user, &gone);
        if on_disk != expected {
            return Err(format!(
                "{}'s Maildir holds {:?}, wanted {:?} (messages removed: {gone:?})",
                user.name,
                on_disk.keys().collect::<Vec<_>>(),
                expected.keys().collect::<Vec<_>>()
            ));
        }
    }
    Ok(())
}

/// Plays `script`; returns what its QUIT removed (user, message indices).
async fn session(
    fixture: &Fixture,
    script: &Script,
) -> Result<Option<(usize, BTreeSet<usize>)>, String> {
    let (mut conn, greeting) = Conn::connect(fixture.addr).await?;
    // RFC 1939 section 7: a server that offers APOP puts a timestamp
    // <...> in its greeting.
    let timestamp = greeting
        .find('<')
        .and_then(|start| Some(&greeting[start..=start + greeting[start..].find('>')?]))
        .ok_or_else(|| conn.fail(format!("no APOP timestamp in {greeting:?}")))?;
    let mut model = Model::new(&fixture.users, timestamp);
    let batches = script.login_batches().into_iter();
    for batch in batches.chain(script.batches.iter().cloned()) {
        let mut bytes = Vec::new();
        let mut expected = Vec::new();
        for item in &batch.items {
            let (line, parsed) = item.realize(&model, &fixture.users);
            expected.push(model.step(&parsed));
            bytes.extend(line);
            // Nothing is sent after a line the server closes on: lines it
            // would not read make its close a reset, which may lose the
            // last reply.
            if model.is_closed() {
                break;
            }
        }
        let cuts: Vec<usize> = batch.cuts.iter().map(|c| c.index(bytes.len())).collect();
        conn.send(&bytes, &cuts).await?;
        for expect in &expected {
            conn.reply(expect).await?;
        }
        if model.is_closed() {
            conn.expect_end().await?;
            return Ok(model.removed);
        }
    }
    match &script.ending {
        Ending::Quit { case } => {
            let (line, parsed) = Ending::quit(*case).realize(&model, &fixture.users);
            let expect = model.step(&parsed);
            conn.send(&line, &[]).await?;
            conn.reply(&expect).await?;
            conn.expect_end().await?;
        }
        Ending::Drop => {}
        Ending::HalfClose => {
            conn.half_close().await?;
            conn.expect_end().await?;
        }
        Ending::FragmentThenHalfClose(fragment) => {
            conn.send(&fragment.0, &[]).await?;
            conn.half_close().await?;
            conn.expect_end().await?;
        }
        Ending::FragmentThenDrop(fragment) => conn.send(&fragment.0, &[]).await?,
        Ending::UnreadThenDrop(items) => {
            let mut bytes = Vec::new();
            for item in items {
                let (line, parsed) = item.realize(&model, &fixture.users);
                model.step(&parsed);
                bytes.extend(line);
                if model.is_closed() {
                    break;
                }
            }
            conn.send(&bytes, &[]).await?;
        }
    }
    Ok(model.removed)
}

/// The user at `index` logs in (waiting, within [`LOCK_BOUND`], for the
/// case's session to let go of the maildrop) and UIDL lists the fixture's
/// messages but those in `gone`, numbered from 1.
async fn logs_in_and_lists(
    fixture: &Fixture,
    index: usize,
    gone: &BTreeSet<usize>,
) -> Result<(), String> {
    let user = &fixture.users[index];
    let (mut conn, _) = Conn::connect(fixture.addr).await?;
    let start = Instant::now();
    loop {
        let login = format!("USER {}\r\nPASS {}\r\n", user.name, user.password);
        conn.send(login.as_bytes(), &[]).await?;
        let to_user = conn.status_line().await?;
        let to_pass = conn.status_line().await?;
        if !to_user.starts_with("+OK") {
            return Err(conn.fail(format!("USER {} got {to_user:?}", user.name)));
        }
        if to_pass.starts_with("+OK") {
            break;
        }
        if !to_pass.starts_with("-ERR [IN-USE]") || start.elapsed() > LOCK_BOUND {
            return Err(conn.fail(format!(
                "{} cannot log in after the case ({:?} later): {to_pass:?}",
                user.name,
                start.elapsed()
            )));
        }
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    let listing: String = user
        .messages
        .iter()
        .enumerate()
        .filter(|(i, _)| !gone.contains(i))
        .enumerate()
        .map(|(number, (_, m))| format!("{} {}\r\n", number + 1, m.uid))
        .collect();
    conn.send(b"UIDL\r\nQUIT\r\n", &[]).await?;
    conn.reply(&model::Expect::listing(listing.into_bytes()))
        .await?;
    conn.reply(&model::Expect::positive()).await?;
    conn.expect_end().await
}
