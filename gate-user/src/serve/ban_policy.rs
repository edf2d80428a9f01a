//! When a password guesser is banned, and for how long: failed logins are
//! counted per client network (an IPv4 address, an IPv6 network of the
//! ban prefix) over a sliding window, in a table of bounded size. No I/O:
//! the daemon's sink (ban_sink.rs) feeds it and writes the bans. Any
//! reporter of failures (the POP3 service, later Dovecot's policy
//! reports) feeds the same table through the sink.

use std::{
    collections::{HashMap, VecDeque},
    net::IpAddr,
    time::{Duration, Instant},
};

use ipnet::{IpNet, Ipv4Net, Ipv6Net};
use pop3::duration;
use serde::Deserialize;

use crate::keys::KeyError;

/// The most failures a ban may wait for: the table keeps a time per
/// failure, so this bounds its memory per network.
pub const MAX_BAN_FAILURES: u32 = 1000;
/// The most client networks whose failures are counted at once. Past it
/// the networks whose last failure is oldest are forgotten first (a
/// guesser that spreads over more networks than this gets away with
/// fewer bans, but cannot make the daemon's memory grow).
pub const TRACKED_NETWORKS: usize = 16_384;
/// The bound of every duration key: a century, as for the others.
const LONGEST_BAN: Duration = Duration::from_secs(100 * 365 * 24 * 3600);

/// The ban settings of `smtp-gate serve`: keys of its config file and
/// flags. Each applies on reload.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
#[serde(default)]
pub struct BanPolicy {
    /// Failed logins of a client network within `ban_failure_window` that
    /// ban it; 0 turns automatic bans off (bans made with `smtp-gate ban
    /// add`, and those in force, still hold).
    pub ban_failures: u32,
    /// The window the failures are counted in.
    #[serde(with = "duration::text")]
    pub ban_failure_window: Duration,
    /// How long a first ban lasts; each ban that follows one within
    /// `ban_time_max` of its end lasts twice as long as that one.
    #[serde(with = "duration::text")]
    pub ban_time: Duration,
    /// The longest a ban lasts, however often it came back.
    #[serde(with = "duration::text")]
    pub ban_time_max: Duration,
}

impl Default for BanPolicy {
    fn default() -> Self {
        Self {
            ban_failures: 10,
            ban_failure_window: Duration::from_secs(10 * 60),
            ban_time: Duration::from_secs(15 * 60),
            ban_time_max: Duration::from_secs(24 * 3600),
        }
    }
}

impl BanPolicy {
    pub fn is_on(&self) -> bool {
        self.ban_failures > 0
    }

    /// Refuses what the daemon cannot run with, naming the key.
    pub fn check(&self) -> Result<(), KeyError> {
        if self.ban_failures > MAX_BAN_FAILURES {
            return Err(KeyError::of(
                "ban_failures",
                format!(
                    "at most {MAX_BAN_FAILURES} (0 turns bans off), not {}",
                    self.ban_failures
                ),
            ));
        }
        for (key, value) in [
            ("ban_failure_window", self.ban_failure_window),
            ("ban_time", self.ban_time),
            ("ban_time_max", self.ban_time_max),
        ] {
            if value.is_zero() || value > LONGEST_BAN {
                return Err(KeyError::of(
                    key,
                    format!(
                        "must be above zero and at most a century, not {}",
                        duration::format_duration(value)
                    ),
                ));
            }
        }
        if self.ban_time_max < self.ban_time {
            return Err(KeyError::of(
                "ban_time_max",
                format!(
                    "must be at least ban_time ({}), not {}",
                    duration::format_duration(self.ban_time),
                    duration::format_duration(self.ban_time_max)
                ),
            ));
        }
        Ok(())
    }

    /// The length of ban number `count` in a row (1 for the first): the
    /// ban time doubled `count - 1` times, up to the longest ban.
    pub fn ban_length(&self, count: u32) -> Duration {
        let doublings = count.saturating_sub(1).min(63);
        let nanos = (self.ban_time.as_nanos()).saturating_mul(1u128 << doublings);
        let max = self.ban_time_max.as_nanos();
        Duration::from_nanos(nanos.min(max) as u64)
    }

    /// The number in a row of the next ban of a network whose last ban
    /// was number `previous` and ended `ended_ago` ago (`None`: it had
    /// none): a repeat if that ban ended within the longest ban's time,
    /// else a first ban again.
    pub fn next_count(&self, previous: Option<(u32, Duration)>) -> u32 {
        match previous {
            Some((count, ended_ago)) if ended_ago <= self.ban_time_max => count.saturating_add(1),
            _ => 1,
        }
    }
}

/// The client network a ban of `addr` covers: the IPv4 address, or the
/// IPv6 network of `prefix_v6` bits.
pub fn ban_network(addr: IpAddr, prefix_v6: u8) -> IpNet {
    match gate_common::normalize_addr(addr) {
        IpAddr::V4(v4) => IpNet::V4(Ipv4Net::from(v4)),
        IpAddr::V6(v6) => IpNet::V6(
            Ipv6Net::new(v6, prefix_v6.min(128))
                .expect("a prefix of at most 128 bits")
                .trunc(),
        ),
    }
}

/// The recent failures of one network.
struct Recent {
    /// The times of the failures within the window, oldest first; never
    /// more than the threshold.
    times: VecDeque<Instant>,
}

impl Recent {
    fn last(&self) -> Option<Instant> {
        self.times.back().copied()
    }
}

/// Failed logins per client network, in at most `capacity` networks.
pub struct FailureTally {
    capacity: usize,
    networks: HashMap<IpNet, Recent>,
}

/// What one failure amounts to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Tallied {
    /// Below the threshold: this many failures within the window.
    Counting(u32),
    /// The threshold was reached (this many failures within the window):
    /// ban the network. Its count starts over.
    Ban(u32),
}

impl FailureTally {
    pub fn new(capacity: usize) -> Self {
        Self {
            capacity: capacity.max(1),
            networks: HashMap::new(),
        }
    }

    /// How many networks are counted now.
    #[cfg(test)]
    fn len(&self) -> usize {
        self.networks.len()
    }

    /// Counts a failure of `net` at `now` under `policy`.
    pub fn record(&mut self, net: IpNet, now: Instant, policy: &BanPolicy) -> Tallied {
        let threshold = policy.ban_failures.max(1) as usize;
        if !self.networks.contains_key(&net) && self.networks.len() >= self.capacity {
            self.make_room(now, policy.ban_failure_window);
        }
        let recent = self.networks.entry(net).or_insert_with(|| Recent {
            times: VecDeque::with_capacity(threshold.min(16)),
        });
        while let Some(&first) = recent.times.front() {
            if now.saturating_duration_since(first) < policy.ban_failure_window {
                break;
            }
            recent.times.pop_front();
        }
        recent.times.push_back(now);
        let count = recent.times.len() as u32;
        if recent.times.len() >= threshold {
            self.networks.remove(&net);
            return Tallied::Ban(count);
        }
        Tallied::Counting(count)
    }

    /// Forgets the networks with no failure within the window, and if that
    /// frees nothing, the eighth of them with the fewest failures (the
    /// oldest first among equals): a flood of networks failing once each
    /// cannot push out a guesser on its way to a ban. A full table is
    /// swept once per that many new networks, not on each.
    fn make_room(&mut self, now: Instant, window: Duration) {
        self.networks.retain(|_, recent| {
            recent
                .last()
                .is_some_and(|last| now.saturating_duration_since(last) < window)
        });
        if self.networks.len() < self.capacity {
            return;
        }
        let rank = |recent: &Recent| (recent.times.len(), recent.last());
        let mut ranks: Vec<_> = self.networks.values().map(rank).collect();
        let cut = (ranks.len() / 8).max(1).min(ranks.len() - 1);
        let (_, &mut lowest_kept, _) = ranks.select_nth_unstable(cut);
        self.networks
            .retain(|_, recent| rank(recent) >= lowest_kept);
        // Ties at the cut may keep more than planned: make sure one goes.
        if self.networks.len() >= self.capacity {
            if let Some(victim) = self
                .networks
                .iter()
                .min_by_key(|(_, recent)| rank(recent))
                .map(|(net, _)| *net)
            {
                self.networks.remove(&victim);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy() -> BanPolicy {
        BanPolicy::default()
    }

    fn net(text: &str) -> IpNet {
        ban_network(text.parse().unwrap(), 64)
    }

    fn secs(s: u64) -> Duration {
        Duration::from_secs(s)
    }

    #[test]
    fn the_defaults_are_the_issues() {
        let p = policy();
        assert_eq!(p.ban_failures, 10);
        assert_eq!(p.ban_failure_window, secs(600));
        assert_eq!(p.ban_time, secs(900));
        assert_eq!(p.ban_time_max, secs(86_400));
        assert!(p.is_on());
        p.check().unwrap();
    }

    /// The tenth failure within ten minutes bans, not the ninth; the count
    /// starts over after a ban.
    #[test]
    fn the_threshold_bans_on_the_tenth_failure() {
        let p = policy();
        let mut tally = FailureTally::new(100);
        let start = Instant::now();
        let n = net("192.0.2.7");
        for i in 1..10 {
            let at = start + secs(i * 10);
            assert_eq!(tally.record(n, at, &p), Tallied::Counting(i as u32), "{i}");
        }
        assert_eq!(tally.record(n, start + secs(100), &p), Tallied::Ban(10));
        assert_eq!(tally.record(n, start + secs(101), &p), Tallied::Counting(1));
    }

    /// Failures older than the window do not count: ten failures spread
    /// over more than ten minutes ban nobody.
    #[test]
    fn failures_outside_the_window_do_not_count() {
        let p = policy();
        let mut tally = FailureTally::new(100);
        let start = Instant::now();
        let n = net("192.0.2.7");
        for i in 0..30u64 {
            // One every 67 s: ten of them span 603 s, so never more than
            // nine lie within ten minutes.
            let got = tally.record(n, start + secs(i * 67), &p);
            assert!(
                matches!(got, Tallied::Counting(c) if c <= 9),
                "{i}: {got:?}"
            );
        }
        let times = |last: u64| {
            let mut tally = FailureTally::new(100);
            for i in 0..9u64 {
                tally.record(n, start + secs(i * 66), &p);
            }
            tally.record(n, start + secs(last), &p)
        };
        // The first failure is 599 s old at the tenth: within the window.
        assert_eq!(times(599), Tallied::Ban(10));
        // Exactly ten minutes old: out of it.
        assert_eq!(times(600), Tallied::Counting(9));
    }

    #[test]
    fn other_networks_count_apart() {
        let p = BanPolicy {
            ban_failures: 2,
            ..policy()
        };
        let mut tally = FailureTally::new(100);
        let now = Instant::now();
        assert_eq!(
            tally.record(net("192.0.2.7"), now, &p),
            Tallied::Counting(1)
        );
        assert_eq!(
            tally.record(net("192.0.2.8"), now, &p),
            Tallied::Counting(1)
        );
        assert_eq!(tally.record(net("192.0.2.7"), now, &p), Tallied::Ban(2));
    }

    /// Every address of one IPv6 /64 counts as the same network, one of
    /// the next /64 does not; an IPv4-mapped address is its IPv4 address.
    #[test]
    fn ipv6_failures_are_counted_per_network() {
        assert_eq!(
            net("2001:db8:1:2::1"),
            net("2001:db8:1:2:ffff:ffff:ffff:ffff")
        );
        assert_eq!(net("2001:db8:1:2::1").to_string(), "2001:db8:1:2::/64");
        assert_ne!(net("2001:db8:1:2::1"), net("2001:db8:1:3::1"));
        assert_eq!(net("::ffff:192.0.2.7"), net("192.0.2.7"));
        assert_eq!(net("192.0.2.7").to_string(), "192.0.2.7/32");
        assert_eq!(
            ban_network("2001:db8:1:2::1".parse().unwrap(), 48).to_string(),
            "2001:db8:1::/48"
        );
        let p = policy();
        let mut tally = FailureTally::new(100);
        let now = Instant::now();
        for i in 1..10u16 {
            let addr = IpAddr::from([0x2001, 0xdb8, 1, 2, i, i, i, i]);
            assert_eq!(
                tally.record(ban_network(addr, 64), now, &p),
                Tallied::Counting(i as u32)
            );
        }
        let tenth = IpAddr::from([0x2001, 0xdb8, 1, 2, 0xa, 0, 0, 0]);
        assert_eq!(
            tally.record(ban_network(tenth, 64), now, &p),
            Tallied::Ban(10)
        );
    }

    /// Each ban that follows one within the longest ban's time lasts twice
    /// as long, up to the longest ban; after a quiet day the next is a
    /// first ban again.
    #[test]
    fn bans_double_on_repeat_up_to_the_cap() {
        let p = policy();
        let lengths: Vec<u64> = (1..=9).map(|c| p.ban_length(c).as_secs() / 60).collect();
        assert_eq!(lengths, [15, 30, 60, 120, 240, 480, 960, 1440, 1440]);
        assert_eq!(p.ban_length(u32::MAX), secs(86_400));
        assert_eq!(p.ban_length(0), secs(900));
        assert_eq!(p.next_count(None), 1);
        assert_eq!(p.next_count(Some((1, secs(60)))), 2);
        assert_eq!(p.next_count(Some((5, secs(86_400)))), 6);
        assert_eq!(p.next_count(Some((5, secs(86_401)))), 1);
        assert_eq!(p.next_count(Some((u32::MAX, secs(1)))), u32::MAX);
    }

    /// Failures from more networks than the table holds never grow it
    /// past its capacity, and a guesser with failures to its name keeps
    /// being counted while a flood of other /64s, failing once each,
    /// comes.
    #[test]
    fn the_table_never_holds_more_than_its_capacity() {
        let p = policy();
        let capacity = 64;
        let mut tally = FailureTally::new(capacity);
        let start = Instant::now();
        let guesser = net("192.0.2.7");
        tally.record(guesser, start, &p);
        tally.record(guesser, start, &p);
        let mut guesses = 2;
        for i in 0..7_000u32 {
            let at = start + Duration::from_millis(i as u64);
            let addr = IpAddr::from([0x2001, 0xdb8, (i >> 16) as u16, i as u16, 0, 0, 0, 1]);
            tally.record(ban_network(addr, 64), at, &p);
            assert!(tally.len() <= capacity, "{} networks at {i}", tally.len());
            if i % 1000 == 999 {
                guesses += 1;
                let got = tally.record(guesser, at, &p);
                assert_eq!(got, Tallied::Counting(guesses), "the guesser was forgotten");
            }
        }
        assert_eq!(guesses, 9);
        // A sweep frees an eighth at once: the table stays well used.
        assert!(tally.len() > capacity * 3 / 4, "{}", tally.len());
        let at = start + Duration::from_secs(8);
        assert_eq!(tally.record(guesser, at, &p), Tallied::Ban(10));
    }

    #[test]
    fn bad_values_name_their_key() {
        let key = |p: BanPolicy| p.check().unwrap_err().key.unwrap();
        assert_eq!(
            key(BanPolicy {
                ban_failures: 1001,
                ..policy()
            }),
            "ban_failures"
        );
        assert_eq!(
            key(BanPolicy {
                ban_time: Duration::ZERO,
                ..policy()
            }),
            "ban_time"
        );
        assert_eq!(
            key(BanPolicy {
                ban_failure_window: Duration::ZERO,
                ..policy()
            }),
            "ban_failure_window"
        );
        assert_eq!(
            key(BanPolicy {
                ban_time_max: secs(60),
                ..policy()
            }),
            "ban_time_max"
        );
        let off = BanPolicy {
            ban_failures: 0,
            ..policy()
        };
        off.check().unwrap();
        assert!(!off.is_on());
    }
}
