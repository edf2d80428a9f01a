//! Session ids: every accepted connection gets one, and every log line
//! about it carries it (`session=<id>`), so that an operator can follow
//! one session from its connect to its end summary.
//!
//! An id is a random 64-bit base, drawn once per run, plus a counter,
//! passed through a bijection of 64-bit values (the splitmix64 finalizer).
//! The counter makes ids unique within the run (the bijection cannot map
//! two counters to one id, and 2^64 sessions do not happen); the random
//! base keeps an id from telling the number of connections since the
//! start or when the daemon started; the mixing makes consecutive ids look
//! nothing alike, so that grepping for one does not find its neighbour.
//! Ids appear only in the log: nothing of them is sent to a client.

use std::{
    fmt,
    sync::atomic::{AtomicU64, Ordering},
};

/// One session's id, written as 16 hex digits.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default)]
pub struct SessionId(u64);

impl SessionId {
    /// An id from its number (tests, and stores opened outside a session).
    pub const fn from_raw(raw: u64) -> Self {
        SessionId(raw)
    }
}

impl fmt::Display for SessionId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:016x}", self.0)
    }
}

/// Hands out the ids of one server run.
#[derive(Debug)]
pub struct SessionIds {
    base: u64,
    issued: AtomicU64,
}

impl SessionIds {
    pub fn new() -> Self {
        let mut random = [0u8; 8];
        if let Err(e) = getrandom::fill(&mut random) {
            // getrandom(2) does not fail once the kernel's pool is ready;
            // ids from a fixed base are still unique, only guessable.
            log::error!("no random octets for session ids: {e}");
        }
        SessionIds {
            base: u64::from_ne_bytes(random),
            issued: AtomicU64::new(0),
        }
    }

    pub fn next(&self) -> SessionId {
        let n = self.issued.fetch_add(1, Ordering::Relaxed);
        SessionId(mix(self.base.wrapping_add(n)))
    }
}

impl Default for SessionIds {
    fn default() -> Self {
        Self::new()
    }
}

/// The splitmix64 finalizer: xor-shifts and multiplications by odd
/// constants, each a bijection of u64, so distinct inputs stay distinct.
fn mix(mut z: u64) -> u64 {
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The reference splitmix64's outputs (seed 0: its first output is
    /// the finalizer of the golden-ratio increment): a mix that lost an
    /// xor-shift would map distinct counters to one id.
    #[test]
    fn mix_is_the_splitmix64_finalizer() {
        assert_eq!(mix(0x9e37_79b9_7f4a_7c15), 0xe220_a839_7b1d_cdaf);
        assert_eq!(mix(1), 0x5692_161d_100b_05e5);
        assert_eq!(mix(u64::MAX), 0xb4d0_55fc_f2cb_bd7b);
        assert_eq!(mix(0), 0);
    }
    use std::collections::HashSet;

    #[test]
    fn ids_are_unique_sixteen_hex_digits_and_unlike_their_neighbours() {
        let ids = SessionIds::new();
        let texts: Vec<String> = (0..10_000).map(|_| ids.next().to_string()).collect();
        assert!(texts
            .iter()
            .all(|t| t.len() == 16 && t.bytes().all(|b| b.is_ascii_hexdigit())));
        assert_eq!(texts.iter().collect::<HashSet<_>>().len(), texts.len());
        // Neighbours share no long prefix: one id's grep finds only it.
        for pair in texts.windows(2) {
            let common = pair[0]
                .bytes()
                .zip(pair[1].bytes())
                .take_while(|(a, b)| a == b)
                .count();
            assert!(common < 8, "{pair:?}");
        }
    }

    #[test]
    fn two_runs_start_apart() {
        assert_ne!(SessionIds::new().next(), SessionIds::new().next());
    }
}
