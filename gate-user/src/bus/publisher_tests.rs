//! The publisher without an engine: the transaction it sends, read back
//! from the wire form; its bounds against a fake engine that answers the
//! link's PING and then nothing (or only errors); the log's once per
//! change. tests/tests/bus_publish_e2e.rs runs it against a real Redis,
//! inside the daemon.

use std::sync::Arc;

use super::*;
use crate::bus::{
    fake_engine::{commands_of, time_answer, Answer, FakeEngine},
    names::DEFAULT_PREFIX,
};

/// Only a hang fails a test.
const PATIENCE: Duration = Duration::from_secs(30);

fn names() -> Names {
    Names::new(DEFAULT_PREFIX).unwrap()
}

fn words(list: &[&str]) -> Vec<String> {
    list.iter().map(|w| w.to_string()).collect()
}

#[test]
fn a_grant_is_its_key_with_the_engines_expiry_and_its_entry_in_one_transaction() {
    let event = Event {
        op: Op::Grant {
            expires_ms: 1_764_547_200_000,
        },
        addr: "::ffff:192.0.2.7".parse().unwrap(),
        issued_ms: 1_764_546_300_000,
        origin: "pop1".into(),
    };
    let wire = transaction(&names(), 100_000, &event).get_packed_pipeline();
    let (commands, used) = commands_of(&wire);
    assert_eq!(used, wire.len());
    assert_eq!(
        commands,
        [
            words(&["MULTI"]),
            words(&[
                "SET",
                "smtp-gate:grant:192.0.2.7",
                "1764547200000",
                "PX",
                "900000"
            ]),
            words(&[
                "XADD",
                "smtp-gate:events",
                "MAXLEN",
                "~",
                "100000",
                "*",
                "op",
                "grant",
                "addr",
                "192.0.2.7",
                "expires",
                "1764547200000",
                "issued",
                "1764546300000",
                "origin",
                "pop1"
            ]),
            words(&["EXEC"]),
        ]
    );
}

#[test]
fn a_revoke_deletes_the_key_and_adds_its_entry_in_one_transaction() {
    let event = Event {
        op: Op::Revoke,
        addr: "2001:db8::7".parse().unwrap(),
        issued_ms: 5,
        origin: "pop1".into(),
    };
    let names = Names::new("isp-a:").unwrap();
    let (commands, _) = commands_of(&transaction(&names, 1000, &event).get_packed_pipeline());
    assert_eq!(
        commands,
        [
            words(&["MULTI"]),
            words(&["DEL", "isp-a:grant:2001:db8::7"]),
            words(&[
                "XADD",
                "isp-a:events",
                "MAXLEN",
                "~",
                "1000",
                "*",
                "op",
                "revoke",
                "addr",
                "2001:db8::7",
                "issued",
                "5",
                "origin",
                "pop1"
            ]),
            words(&["EXEC"]),
        ]
    );
}

/// How the fake engine answers what is not PING or CLIENT.
#[derive(Clone, Copy)]
enum Fake {
    /// Nothing, ever: a hung engine.
    Silent,
    /// An ACL error: an engine whose user may not write.
    Refusing,
    /// A stream whose ids are exhausted: the transaction is taken, and
    /// EXEC answers the SET done and the XADD refused.
    Exhausted,
    /// An error whose text would end the log line and forge another.
    Forging,
}

/// A fake engine on loopback (bus/fake_engine.rs): PING gets PONG and
/// TIME the time (so the link connects), CLIENT (the client's hello) gets
/// OK, the rest as `fake` says.
async fn fake_engine(fake: Fake) -> FakeEngine {
    FakeEngine::start(move |command| match (command[0].as_str(), fake) {
        ("PING", _) => Answer::Now(b"+PONG\r\n".to_vec()),
        ("TIME", _) => Answer::Now(time_answer(crate::bus::clock::wall_ms())),
        ("CLIENT", _) => Answer::Now(b"+OK\r\n".to_vec()),
        (_, Fake::Silent) => Answer::Nothing,
        (_, Fake::Refusing) => {
            Answer::Now(b"-NOPERM this user has no permissions to run this command\r\n".to_vec())
        }
        (_, Fake::Forging) => {
            Answer::Now(b"-NOPERM no\nbus test: publishing works again\x1b[1A\r\n".to_vec())
        }
        ("MULTI", Fake::Exhausted) => Answer::Now(b"+OK\r\n".to_vec()),
        ("EXEC", Fake::Exhausted) => Answer::Now(
            b"*2\r\n+OK\r\n-ERR The stream has exhausted the last possible \
              ID, unable to add more items\r\n"
                .to_vec(),
        ),
        (_, Fake::Exhausted) => Answer::Now(b"+QUEUED\r\n".to_vec()),
    })
    .await
}

/// The publications the engine was sent (SET or DEL commands).
fn publications(engine: &FakeEngine) -> Vec<Vec<String>> {
    let mut sent = engine.sent("SET");
    sent.extend(engine.sent("DEL"));
    sent
}

fn settings(timeout: Duration, max_in_flight: usize) -> PublisherSettings {
    PublisherSettings {
        names: names(),
        origin: "pop1".into(),
        stream_length: 1000,
        timeout,
        max_in_flight,
        role: "test",
    }
}

/// A publisher linked to 127.0.0.1:`port`, connected unless `port` is 0;
/// its link ends with `stop`.
async fn publisher(
    port: u16,
    timeout: Duration,
    max_in_flight: usize,
    stop: &CancellationToken,
) -> Publisher {
    let link = Link::new(LinkSettings {
        url: format!("redis://127.0.0.1:{}", port.max(1))
            .parse()
            .unwrap(),
        password: None,
        response_timeout: timeout,
        role: "test",
    })
    .unwrap();
    let publisher = Publisher::new(link.clone(), settings(timeout, max_in_flight));
    if port != 0 {
        tokio::spawn(link.keep(stop.clone()));
        assert!(
            publisher.wait_connected(PATIENCE).await,
            "the link connects"
        );
    }
    publisher
}

fn addr(n: u8) -> IpAddr {
    IpAddr::from([192, 0, 2, n])
}

/// With no connection, a publication is not tried, and says so at once:
/// a login never waits for an engine that is down.
#[tokio::test]
async fn with_the_link_down_a_publication_fails_at_once_and_is_counted() {
    let stop = CancellationToken::new();
    // Never kept: never connected.
    let publisher = publisher(0, Duration::from_secs(600), 8, &stop).await;
    let outcome = tokio::time::timeout(
        // Far below the publisher's timeout: it must not be what ends it.
        Duration::from_secs(60),
        publisher.grant(addr(1), Duration::from_secs(900)),
    )
    .await
    .expect("not waited for the timeout");
    assert_eq!(outcome, Err(PublishError::Down));
    assert_eq!(
        publisher.counts(),
        PublishCounts {
            down: 1,
            ..PublishCounts::default()
        }
    );
}

/// An engine that takes the transaction and answers nothing: the
/// publication ends as timed out (after `bus_timeout`, not never).
#[tokio::test]
async fn an_engine_that_does_not_answer_times_the_publication_out() {
    let engine = fake_engine(Fake::Silent).await;
    let port = engine.port;
    let stop = CancellationToken::new();
    let publisher = publisher(port, Duration::from_millis(200), 8, &stop).await;
    let outcome = tokio::time::timeout(PATIENCE, publisher.revoke(addr(2)))
        .await
        .expect("the publication ends");
    assert_eq!(outcome, Err(PublishError::TimedOut));
    assert_eq!(publisher.counts().timed_out, 1);
    assert_eq!(
        publications(&engine),
        [words(&["DEL", "smtp-gate:grant:192.0.2.2"])],
        "the transaction went out"
    );
    stop.cancel();
}

/// Publications that wait are bounded: past the bound the next is
/// refused at once (counted), and a place that frees up is taken again.
#[tokio::test]
async fn past_the_bound_of_waiting_publications_one_is_refused_at_once() {
    let engine = fake_engine(Fake::Silent).await;
    let port = engine.port;
    let stop = CancellationToken::new();
    let publisher = Arc::new(publisher(port, Duration::from_secs(600), 2, &stop).await);
    let mut waiting: Vec<_> = (1..=2)
        .map(|n| {
            let publisher = Arc::clone(&publisher);
            tokio::spawn(async move { publisher.grant(addr(n), Duration::from_secs(900)).await })
        })
        .collect();
    // Both wait on the engine once it has both transactions.
    tokio::time::timeout(PATIENCE, async {
        while publications(&engine).len() < 2 {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await
    .expect("both publications were sent");
    let third = tokio::time::timeout(
        Duration::from_secs(60),
        publisher.grant(addr(3), Duration::from_secs(900)),
    )
    .await
    .expect("refused at once, not waited for");
    assert_eq!(third, Err(PublishError::Busy));
    assert_eq!(publisher.counts().refused_busy, 1);
    // A waiting login that gives up (its future dropped) frees its place.
    waiting[0].abort();
    let _ = (&mut waiting[0]).await;
    let fourth = {
        let publisher = Arc::clone(&publisher);
        tokio::spawn(async move { publisher.grant(addr(4), Duration::from_secs(900)).await })
    };
    tokio::time::timeout(PATIENCE, async {
        while publications(&engine).len() < 3 {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await
    .expect("the fourth was sent once a place was free");
    assert_eq!(publisher.counts().refused_busy, 1);
    fourth.abort();
    stop.cancel();
}

/// An engine that refuses (an ACL user without the rights): a failure,
/// counted, with the engine's reason.
#[tokio::test]
async fn an_engine_that_refuses_fails_the_publication_with_its_reason() {
    let port = fake_engine(Fake::Refusing).await.port;
    let stop = CancellationToken::new();
    let publisher = publisher(port, Duration::from_secs(10), 8, &stop).await;
    let outcome =
        tokio::time::timeout(PATIENCE, publisher.grant(addr(5), Duration::from_secs(900)))
            .await
            .expect("the publication ends");
    match outcome {
        Err(PublishError::Failed(why)) => assert!(why.contains("NOPERM"), "{why}"),
        other => panic!("{other:?}"),
    }
    assert_eq!(publisher.counts().failed, 1);
    stop.cancel();
}

/// A stream whose ids are exhausted refuses every entry: a failure of its
/// own, counted apart, saying what the operator must do.
#[tokio::test]
async fn an_exhausted_stream_fails_the_publication_saying_what_to_do() {
    let port = fake_engine(Fake::Exhausted).await.port;
    let stop = CancellationToken::new();
    let publisher = publisher(port, Duration::from_secs(10), 8, &stop).await;
    for n in 1..=2 {
        let outcome =
            tokio::time::timeout(PATIENCE, publisher.grant(addr(n), Duration::from_secs(900)))
                .await
                .expect("the publication ends");
        assert_eq!(
            outcome,
            Err(PublishError::Exhausted("smtp-gate:events".into()))
        );
    }
    let error = PublishError::Exhausted("smtp-gate:events".into());
    assert_eq!(error.word(), "exhausted");
    let text = error.to_string();
    assert!(
        text.contains("ids are exhausted") && text.contains("DEL smtp-gate:events"),
        "{text}"
    );
    assert_eq!(
        publisher.counts(),
        PublishCounts {
            exhausted: 2,
            ..PublishCounts::default()
        }
    );
    stop.cancel();
}

/// The stream's exhaustion is said when it starts, even within a spell of
/// other failures or soon after another line, and once only until a
/// publication succeeds.
#[test]
fn an_exhausted_stream_is_said_once_when_it_starts() {
    let exhausted = PublishError::Exhausted("smtp-gate:events".into());
    let mut health = Health::default();
    let start = Instant::now();
    let at = |s: u64| start + Duration::from_secs(s);
    assert!(health.failed(&PublishError::Down, at(1)).is_some());
    let line = health.failed(&exhausted, at(2)).expect("a line");
    assert!(line.contains("ids are exhausted"), "{line}");
    for s in 3..50 {
        assert_eq!(health.failed(&exhausted, at(s)), None);
        assert_eq!(health.failed(&PublishError::TimedOut, at(s)), None);
    }
    assert!(health.succeeded(at(50)).is_some());
    // Soon after: a new spell of exhaustion is said all the same.
    let line = health.failed(&exhausted, at(51)).expect("a line");
    assert!(line.contains("ids are exhausted"), "{line}");
    assert_eq!(health.failed(&exhausted, at(52)), None);
}

/// The engine's error text goes into the log (the failure's line, the
/// link's last error): escaped, it cannot end the line and forge another
/// (attack review).
#[tokio::test]
async fn an_engine_error_cannot_forge_a_log_line() {
    let port = fake_engine(Fake::Forging).await.port;
    let stop = CancellationToken::new();
    let publisher = publisher(port, Duration::from_secs(10), 8, &stop).await;
    let outcome =
        tokio::time::timeout(PATIENCE, publisher.grant(addr(6), Duration::from_secs(900)))
            .await
            .expect("the publication ends");
    let Err(PublishError::Failed(why)) = outcome else {
        panic!("{outcome:?}");
    };
    let last = publisher
        .link()
        .last_error()
        .expect("the link's last error");
    for text in [
        why.as_str(),
        last.as_str(),
        &PublishError::Failed(why.clone()).to_string(),
    ] {
        assert!(text.contains("no\\nbus test"), "{text}");
        assert!(
            text.bytes().all(|b| b == b' ' || b.is_ascii_graphic()),
            "{text:?}"
        );
    }
    stop.cancel();
}

/// One line when publishing starts failing and one when it works again,
/// whatever the number of failures; a new spell soon after is not logged
/// again, and its failures are told by the next line that is.
#[test]
fn failures_are_logged_once_per_change() {
    let mut health = Health::default();
    let start = Instant::now();
    let at = |s: u64| start + Duration::from_secs(s);
    assert_eq!(health.succeeded(at(0)), None, "nothing failed");
    let first = health.failed(&PublishError::Down, at(1)).expect("a line");
    assert!(first.contains("not connected"), "{first}");
    for s in 2..100 {
        assert_eq!(health.failed(&PublishError::TimedOut, at(s)), None);
    }
    let back = health.succeeded(at(100)).expect("a line");
    assert!(back.contains("99 publication(s) failed in 99.0s"), "{back}");
    assert_eq!(health.succeeded(at(101)), None);
    // Within a minute of the last failure line: quiet, both ways.
    assert_eq!(health.failed(&PublishError::Down, at(30)), None);
    assert_eq!(health.failed(&PublishError::Down, at(31)), None);
    assert_eq!(health.succeeded(at(32)), None);
    // Later: logged again, with the quiet spell's failures.
    let again = health.failed(&PublishError::Busy, at(200)).expect("a line");
    assert!(again.contains("2 more failed in short spells"), "{again}");
    assert!(health.succeeded(at(201)).is_some());
}

#[test]
fn the_counts_read_as_a_statistics_line() {
    let counts = PublishCounts {
        published: 5,
        failed: 1,
        timed_out: 2,
        refused_busy: 3,
        down: 4,
        exhausted: 6,
    };
    assert_eq!(
        counts.to_string(),
        "published=5 failed=1 timed_out=2 refused_busy=3 down=4 exhausted=6"
    );
}
