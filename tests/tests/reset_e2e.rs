//! Reset mode end to end with SYNs that carry IP options or IPv6
//! extension headers, sent by real client sockets: the kernel sets the
//! socket buffer's transport header behind them (and, on a veth, a pending
//! checksum offload), and TC cannot cut a buffer before it, so a reply
//! that shrank the frame below it was once counted as `denied_reset` but
//! never sent, and a padded one was refused by the receiver. Needs root;
//! runs in the lab's namespaces.

use std::{
    io,
    mem::size_of,
    net::{IpAddr, SocketAddr},
    os::fd::{AsRawFd, FromRawFd, OwnedFd},
    time::{Duration, Instant},
};

use testkit::{
    denial::Judge,
    lab::{Lab, LabOptions},
    netns::in_netns,
    smtp::{syns_sent, Syns, DENY_TIMEOUT, PASS_TIMEOUT, SMTP_PORT},
};

/// What a connect attempt from a socket with extra IP headers ended in.
#[derive(Debug, PartialEq, Eq)]
enum Outcome {
    Refused,
    Connected,
    TimedOut,
    Other(String),
}

/// 40 octets of IPv4 options: NOPs then End of List.
const IPV4_OPTIONS: [u8; 40] = {
    let mut o = [1u8; 40];
    o[39] = 0;
    o
};

/// A destination options header of 24 octets (length field 2): the next
/// header octet (filled in by the kernel), the length, then one PadN
/// option over the other 22 octets.
const IPV6_DSTOPTS: [u8; 24] = {
    let mut h = [0u8; 24];
    h[1] = 2;
    h[2] = 1; // PadN
    h[3] = 20;
    h
};

/// setsockopt(2) with `value` as the option's value.
///
/// # Safety
/// `T` must be what the kernel expects for `level` and `name`, holding no
/// pointer the kernel follows (SO_ATTACH_FILTER's `sock_fprog` holds
/// one): the kernel reads `size_of::<T>()` octets at `value` and acts on
/// whatever they say.
unsafe fn setsockopt<T>(fd: &OwnedFd, level: i32, name: i32, value: &T) -> io::Result<()> {
    // SAFETY: value is valid for its size for the duration of the call;
    // what it means is the caller's promise.
    let rc = unsafe {
        libc::setsockopt(
            fd.as_raw_fd(),
            level,
            name,
            (value as *const T).cast(),
            size_of::<T>() as libc::socklen_t,
        )
    };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// Connects from namespace `ns` to `to` with the extra headers set on the
/// socket, waiting at most `timeout`; says how it ended and how many SYNs
/// it sent.
fn connect_with_headers(ns: &str, to: SocketAddr, timeout: Duration) -> (Outcome, Syns) {
    in_netns(ns, || {
        let family = if to.is_ipv4() {
            libc::AF_INET
        } else {
            libc::AF_INET6
        };
        // SAFETY: a plain socket(2) call; the fd is owned right away.
        let raw = unsafe { libc::socket(family, libc::SOCK_STREAM | libc::SOCK_CLOEXEC, 0) };
        assert!(raw >= 0, "socket: {}", io::Error::last_os_error());
        // SAFETY: the kernel just returned this fd.
        let fd = unsafe { OwnedFd::from_raw_fd(raw) };
        let tv = libc::timeval {
            tv_sec: timeout.as_secs() as libc::time_t,
            tv_usec: timeout.subsec_micros() as libc::suseconds_t,
        };
        // SAFETY: IP_OPTIONS and IPV6_DSTOPTS take the option octets as
        // they go on the wire, SO_SNDTIMEO a timeval; none holds a pointer.
        unsafe {
            match to {
                SocketAddr::V4(_) => {
                    setsockopt(&fd, libc::IPPROTO_IP, libc::IP_OPTIONS, &IPV4_OPTIONS)
                        .expect("setsockopt IP_OPTIONS")
                }
                SocketAddr::V6(_) => {
                    setsockopt(&fd, libc::IPPROTO_IPV6, libc::IPV6_DSTOPTS, &IPV6_DSTOPTS)
                        .expect("setsockopt IPV6_DSTOPTS (needs CAP_NET_RAW)")
                }
            }
            setsockopt(&fd, libc::SOL_SOCKET, libc::SO_SNDTIMEO, &tv).expect("SO_SNDTIMEO");
        }
        let (storage, len) = sockaddr(to);
        let started = Instant::now();
        // SAFETY: storage holds a sockaddr of `len` octets.
        let rc = unsafe {
            libc::connect(
                fd.as_raw_fd(),
                (&storage as *const libc::sockaddr_storage).cast(),
                len,
            )
        };
        let err = io::Error::last_os_error();
        let counted = syns_sent(&fd).expect("TCP_INFO");
        drop(fd);
        let syns = Syns::counted(counted, started.elapsed());
        if rc == 0 {
            return (Outcome::Connected, syns);
        }
        let outcome = match err.raw_os_error() {
            Some(libc::ECONNREFUSED) => Outcome::Refused,
            Some(libc::EINPROGRESS) | Some(libc::EAGAIN) | Some(libc::ETIMEDOUT) => {
                Outcome::TimedOut
            }
            _ => Outcome::Other(err.to_string()),
        };
        (outcome, syns)
    })
}

fn sockaddr(to: SocketAddr) -> (libc::sockaddr_storage, libc::socklen_t) {
    // SAFETY: an all-zero sockaddr_storage is valid.
    let mut storage: libc::sockaddr_storage = unsafe { std::mem::zeroed() };
    let len = match to {
        SocketAddr::V4(a) => {
            let sin = libc::sockaddr_in {
                sin_family: libc::AF_INET as libc::sa_family_t,
                sin_port: a.port().to_be(),
                sin_addr: libc::in_addr {
                    s_addr: u32::from_ne_bytes(a.ip().octets()),
                },
                sin_zero: [0; 8],
            };
            // SAFETY: sockaddr_storage is larger than sockaddr_in.
            unsafe { std::ptr::write((&mut storage as *mut libc::sockaddr_storage).cast(), sin) };
            size_of::<libc::sockaddr_in>()
        }
        SocketAddr::V6(a) => {
            let sin6 = libc::sockaddr_in6 {
                sin6_family: libc::AF_INET6 as libc::sa_family_t,
                sin6_port: a.port().to_be(),
                sin6_flowinfo: 0,
                sin6_addr: libc::in6_addr {
                    s6_addr: a.ip().octets(),
                },
                sin6_scope_id: 0,
            };
            // SAFETY: sockaddr_storage is larger than sockaddr_in6.
            unsafe { std::ptr::write((&mut storage as *mut libc::sockaddr_storage).cast(), sin6) };
            size_of::<libc::sockaddr_in6>()
        }
    };
    (storage, len as libc::socklen_t)
}

/// What reset mode does with the SYN: answer it (the XDP modes), or
/// drop it and count it as not answered (TC, which cannot cut a socket
/// buffer before its transport header).
#[derive(Clone, Copy, PartialEq, Eq)]
enum Expect {
    Refused,
    DroppedUnanswered,
}

/// The SYNs are judged by what the gate counted for them, not by how long
/// the client waited: answered means every SYN the client sent counted as
/// `denied_reset` and none dropped; dropped unanswered means every one
/// counted as `denied_drop` and `reset_skipped`, none answered.
fn check(mode: &str, xdp_pass_on_clients: bool, expect: Expect) {
    let lab = Lab::with_options(LabOptions {
        xdp_pass_on_clients,
        ..LabOptions::default()
    });
    lab.attach(&["--mode", mode, "--deny", "reset"]);
    let judge = Judge::by_cli(&lab);
    let accepted_before = lab.accepted();
    let link = &lab.client;
    let mut sent = Syns::exactly(0);
    for (what, server) in [
        (
            "IPv4 with 40 octets of options",
            IpAddr::from(link.server_v4),
        ),
        (
            "IPv6 with a 24-octet destination options header",
            IpAddr::from(link.server_v6),
        ),
    ] {
        let timeout = match expect {
            Expect::Refused => PASS_TIMEOUT,
            Expect::DroppedUnanswered => DENY_TIMEOUT,
        };
        let before = judge.counters();
        let (outcome, syns) =
            connect_with_headers(&link.client_ns, SocketAddr::new(server, SMTP_PORT), timeout);
        let moved = judge.moved_since(&before, syns.at_least());
        let (answered, unanswered) = (moved.of("denied_reset"), moved.of("reset_skipped"));
        match expect {
            Expect::Refused => assert!(
                outcome == Outcome::Refused
                    && syns.admits(answered)
                    && moved.of("denied_drop") == 0
                    && unanswered == 0,
                "--mode {mode}, {what}: expected every SYN refused, got {outcome:?} after \
                 {syns}, counted {moved}"
            ),
            Expect::DroppedUnanswered => assert!(
                outcome == Outcome::TimedOut
                    && syns.admits(unanswered)
                    && syns.admits(moved.of("denied_drop"))
                    && answered == 0,
                "--mode {mode}, {what}: expected every SYN dropped unanswered, got {outcome:?} \
                 after {syns}, counted {moved}"
            ),
        }
        sent = sent.plus(&syns);
    }
    let stats = lab.stats();
    let count = |name: &str| stats[name].as_u64().unwrap_or(0);
    match expect {
        Expect::Refused => assert!(
            sent.admits(count("denied_reset")) && count("reset_skipped") == 0,
            "--mode {mode}: {sent} sent, stats {stats}"
        ),
        Expect::DroppedUnanswered => assert!(
            sent.admits(count("reset_skipped"))
                && count("reset_skipped") == count("denied_drop")
                && count("denied_reset") == 0,
            "--mode {mode}: every SYN counted as not answered ({sent} sent): {stats}"
        ),
    }
    assert_eq!(
        lab.accepted() - accepted_before,
        0,
        "--mode {mode}: the listener accepted a connection"
    );
}

#[test]
fn reset_answers_syns_with_ip_options_generic_xdp() {
    check("xdp-skb", false, Expect::Refused);
}

#[test]
fn reset_answers_syns_with_ip_options_native_xdp() {
    check("xdp", true, Expect::Refused);
}

/// TC counts what it cannot answer instead of counting a reset it never
/// sent.
#[test]
fn tc_drops_and_counts_syns_with_ip_options() {
    check("tc", false, Expect::DroppedUnanswered);
}
