//! Property tests of the PROXY header parser (`pop3::proxy_header`)
//! against HAProxy's proxy-protocol.txt: arbitrary octets never panic and
//! never make it ask past the bounds; headers written as the
//! specification lays them out (here, independently of the parser) read
//! back as the addresses they carry, whatever follows them; a header cut
//! short is never taken nor refused, only waited for; announced lengths
//! past the bound and damaged signatures are refused.
//!
//! The number of cases is `PROPTEST_CASES` (default below); a failing case
//! is shrunk and its seed kept in `fuzz_proxy_header.proptest-regressions`
//! next to this file, which is replayed first on every run.

use std::net::{IpAddr, SocketAddr};

use pop3::proxy_header::{
    examine, v2_header, Addresses, Progress, V1_MAX_LEN, V2_MAX_ADDRESS_BLOCK, V2_SIGNATURE,
};
use proptest::{
    prelude::*,
    test_runner::{Config, FileFailurePersistence},
};

const DEFAULT_CASES: u32 = 2048;

fn config() -> Config {
    let cases = std::env::var("PROPTEST_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(DEFAULT_CASES);
    Config {
        cases,
        failure_persistence: Some(Box::new(FileFailurePersistence::WithSource(
            "proptest-regressions",
        ))),
        ..Config::default()
    }
}

/// Feeds `wire` as the server's reader does, never more than asked for;
/// what it made and how many octets it took.
fn read_as_asked(wire: &[u8]) -> (Progress, usize) {
    let mut taken = 0;
    loop {
        match examine(&wire[..taken]) {
            Progress::Incomplete(more) => {
                assert!(more > 0, "asked for nothing after {taken} octets");
                if taken == wire.len() {
                    return (Progress::Incomplete(more), taken);
                }
                taken = (taken + more).min(wire.len());
            }
            done => return (done, taken),
        }
    }
}

/// Two addresses of one family, as a proxy relays them.
fn address_pair() -> impl Strategy<Value = (SocketAddr, SocketAddr)> {
    let v4 = (
        any::<[u8; 4]>(),
        any::<[u8; 4]>(),
        any::<u16>(),
        any::<u16>(),
    )
        .prop_map(|(s, d, sp, dp)| {
            (
                SocketAddr::new(IpAddr::from(s), sp),
                SocketAddr::new(IpAddr::from(d), dp),
            )
        });
    let v6 = (
        any::<[u8; 16]>(),
        any::<[u8; 16]>(),
        any::<u16>(),
        any::<u16>(),
    )
        .prop_map(|(s, d, sp, dp)| {
            (
                SocketAddr::new(IpAddr::from(s), sp),
                SocketAddr::new(IpAddr::from(d), dp),
            )
        });
    prop_oneof![v4, v6]
}

/// Section 2.1's line.
fn v1_line(source: SocketAddr, destination: SocketAddr) -> Vec<u8> {
    let protocol = if source.is_ipv4() { "TCP4" } else { "TCP6" };
    format!(
        "PROXY {protocol} {} {} {} {}\r\n",
        source.ip(),
        destination.ip(),
        source.port(),
        destination.port()
    )
    .into_bytes()
}

proptest! {
    #![proptest_config(config())]

    /// Whatever comes first on a connection (also after the start of a
    /// header), the parser answers without panicking, and never reads past the longest header it takes.
    #[test]
    fn arbitrary_octets_never_panic_nor_overread(
        start in prop::sample::select(vec![&b""[..], b"PROXY ", b"PROXY TCP4 ", &V2_SIGNATURE]),
        rest in proptest::collection::vec(any::<u8>(), 0..2200),
    ) {
        let wire = [start, rest.as_slice()].concat();
        let (_, taken) = read_as_asked(&wire);
        prop_assert!(taken <= 16 + V2_MAX_ADDRESS_BLOCK);
        if wire.first() == Some(&b'P') {
            prop_assert!(taken <= V1_MAX_LEN);
        }
    }

    /// Near misses of real headers (one octet changed) never panic either.
    #[test]
    fn damaged_headers_never_panic(
        (source, destination) in address_pair(),
        at in any::<prop::sample::Index>(),
        octet in any::<u8>(),
        binary in any::<bool>(),
    ) {
        let mut wire = if binary { v2_header(source, destination, &[]) } else { v1_line(source, destination) };
        let at = at.index(wire.len());
        wire[at] = octet;
        let _ = read_as_asked(&wire);
    }

    #[test]
    fn v1_reads_back_whatever_follows(
        (source, destination) in address_pair(),
        after in proptest::collection::vec(any::<u8>(), 0..64),
    ) {
        let header = v1_line(source, destination);
        let (made, taken) = read_as_asked(&[header.as_slice(), &after].concat());
        let Progress::Done(got) = made else {
            return Err(TestCaseError::fail(format!("{made:?}")));
        };
        prop_assert_eq!(got.addresses, Addresses::Proxied { source, destination });
        prop_assert_eq!((got.version, got.len, taken), (1, header.len(), header.len()));
    }

    #[test]
    fn v2_reads_back_whatever_follows(
        (source, destination) in address_pair(),
        tlvs in proptest::collection::vec(any::<u8>(), 0..(V2_MAX_ADDRESS_BLOCK - 36)),
        after in proptest::collection::vec(any::<u8>(), 0..64),
    ) {
        let header = v2_header(source, destination, &tlvs);
        let (made, taken) = read_as_asked(&[header.as_slice(), &after].concat());
        let Progress::Done(got) = made else {
            return Err(TestCaseError::fail(format!("{made:?}")));
        };
        prop_assert_eq!(got.addresses, Addresses::Proxied { source, destination });
        prop_assert_eq!((got.version, got.len, taken), (2, header.len(), header.len()));
    }

    /// A header cut anywhere is waited for, neither taken nor refused:
    /// the rest may come in the next segment.
    #[test]
    fn truncated_headers_wait_for_the_rest(
        (source, destination) in address_pair(),
        tlvs in proptest::collection::vec(any::<u8>(), 0..64),
        cut in any::<prop::sample::Index>(),
        binary in any::<bool>(),
    ) {
        let header = if binary { v2_header(source, destination, &tlvs) } else { v1_line(source, destination) };
        let cut = cut.index(header.len());
        let (made, taken) = read_as_asked(&header[..cut]);
        prop_assert!(matches!(made, Progress::Incomplete(_)), "{:?}", made);
        prop_assert_eq!(taken, cut);
    }

    /// An announced address block past the bound is refused from the
    /// fixed 16 octets, before any of it is read.
    #[test]
    fn oversize_lengths_are_refused_at_once(
        len in (V2_MAX_ADDRESS_BLOCK as u16 + 1)..=u16::MAX,
        family in prop::sample::select(vec![0x00u8, 0x11, 0x21, 0x31]),
        command in prop::sample::select(vec![0x20u8, 0x21]),
    ) {
        let mut wire = V2_SIGNATURE.to_vec();
        wire.extend([command, family]);
        wire.extend(len.to_be_bytes());
        prop_assert!(matches!(examine(&wire), Progress::Invalid(_)));
    }

    /// Any octet of the signature changed: no header.
    #[test]
    fn a_wrong_signature_is_refused(
        (source, destination) in address_pair(),
        at in 0usize..12,
        flip in 1u8..=255,
    ) {
        let mut wire = v2_header(source, destination, &[]);
        wire[at] ^= flip;
        let (made, taken) = read_as_asked(&wire);
        prop_assert!(matches!(made, Progress::Invalid(_)), "{:?}", made);
        prop_assert!(taken <= 16);
    }
}
