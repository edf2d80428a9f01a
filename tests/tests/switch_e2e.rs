//! A mode switch between native and generic XDP never opens the gate:
//! ungranted connection attempts run all through the switches, and not one
//! may reach the listener, nor pass the gate uncounted: every SYN the
//! clients sent must be counted as dropped (a SYN let through while the
//! client had already given up would reach no listener, but it would be
//! missing from the count). (An interface holds one XDP program, so the
//! old link must go before the new one comes; once that left the
//! interface ungated for the ~0.4 s the new program took to load and
//! verify.) Needs root; runs in the lab's namespaces.

use std::{
    net::IpAddr,
    sync::{
        atomic::{AtomicBool, AtomicUsize, Ordering},
        Mutex,
    },
    thread,
    time::{Duration, Instant},
};

use testkit::{
    denial::Judge,
    lab::Lab,
    smtp::{attempt, ConnectResult, Syns, SMTP_PORT},
};

#[test]
fn switching_between_native_and_generic_xdp_never_opens_the_gate() {
    let lab = Lab::new();
    lab.attach(&["--mode", "xdp-skb"]);
    let judge = Judge::by_cli(&lab);
    let before = judge.counters();
    let accepted_before = lab.accepted();
    let (ns, server) = (
        lab.client.client_ns.clone(),
        IpAddr::from(lab.client.server_v4),
    );
    let stop = AtomicBool::new(false);
    let (attempts, connected) = (AtomicUsize::new(0), AtomicUsize::new(0));
    let sent = Mutex::new(Syns::exactly(0));
    thread::scope(|scope| {
        scope.spawn(|| {
            // Bounded in count and time: at most 20,000 attempts, 60 s.
            let started = Instant::now();
            while !stop.load(Ordering::Relaxed)
                && attempts.load(Ordering::Relaxed) < 20_000
                && started.elapsed() < Duration::from_secs(60)
            {
                let tried = attempt(&ns, server, SMTP_PORT, Duration::from_millis(20));
                if let ConnectResult::Connected(_) = tried.result {
                    connected.fetch_add(1, Ordering::Relaxed);
                }
                let mut sent = sent.lock().unwrap_or_else(|p| p.into_inner());
                *sent = sent.plus(&tried.syns);
                attempts.fetch_add(1, Ordering::Relaxed);
            }
        });
        for mode in ["xdp", "xdp-skb", "xdp", "xdp-skb"] {
            lab.attach(&["--mode", mode]);
        }
        stop.store(true, Ordering::Relaxed);
    });
    let attempts = attempts.load(Ordering::Relaxed);
    let connected = connected.load(Ordering::Relaxed);
    let sent = sent.into_inner().unwrap_or_else(|p| p.into_inner());
    let moved = judge.moved_since(&before, sent.at_least());
    let accepted = lab.accepted() - accepted_before;
    let stats = lab.stats();
    assert!(
        attempts >= 20,
        "only {attempts} connection attempts ran during the switches: the test proves nothing"
    );
    assert_eq!(
        (connected, accepted),
        (0, 0),
        "ungranted connections got through during the mode switches ({attempts} attempts); stats {stats}"
    );
    assert!(
        sent.admits(moved.of("denied_drop")) && moved.passed() == 0,
        "the clients sent {sent} during the switches, the gate counted {moved}: some \
         passed, or passed uncounted"
    );
}
