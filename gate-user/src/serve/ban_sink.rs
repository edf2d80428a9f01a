//! Failed logins counted, and password guessers banned in the pinned ban
//! maps: the daemon's `FailureSink`. The counting is in memory
//! (ban_policy.rs); the ban, its count in a row and so its doubling live
//! in the map, so they outlive the daemon.

use std::{
    net::IpAddr,
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use anyhow::Result;
use gate_common::{ipv6_mask_prefix, Ban};
use log::{error, warn};
use pop3::{duration::format_duration, FailureSink};
use tokio::sync::Notify;

use super::ban_policy::{ban_network, BanPolicy, FailureTally, Tallied, TRACKED_NETWORKS};
use crate::gate::GateMaps;

pub struct GateBanSink {
    // One lock for the table and the maps: a failure takes it for a few
    // hash operations, and a ban (one in ten failures at most) for a few
    // bpf() calls of microseconds, as a grant does.
    state: Mutex<State>,
    /// Woken when a ban cannot be written: the gate may be gone.
    trouble: Arc<Notify>,
}

struct State {
    policy: BanPolicy,
    tally: FailureTally,
    maps: GateMaps,
}

impl GateBanSink {
    pub fn new(maps: GateMaps, policy: BanPolicy, trouble: Arc<Notify>) -> Self {
        Self {
            state: Mutex::new(State {
                policy,
                tally: FailureTally::new(TRACKED_NETWORKS),
                maps,
            }),
            trouble,
        }
    }

    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Bans go to these maps from now on (the gate was replaced).
    pub fn replace_maps(&self, maps: GateMaps) {
        self.state().maps = maps;
    }

    /// The policy from now on (a reload). The failures counted so far
    /// stay; with bans turned off nothing more is counted.
    pub fn set_policy(&self, policy: BanPolicy) {
        let mut state = self.state();
        if !policy.is_on() {
            state.tally = FailureTally::new(TRACKED_NETWORKS);
        }
        state.policy = policy;
    }

    /// A failure of `addr` counted at `now`: the ban it leads to, if any.
    fn failed_at(&self, addr: IpAddr, now: Instant) {
        let mut state = self.state();
        if !state.policy.is_on() {
            return;
        }
        // An exempt source is never banned, and its failures do not count
        // toward the network it shares either: nine of an exempt host's
        // and one of its neighbour's banned the whole /64 (bans attack
        // review).
        match state.maps.is_exempt(addr) {
            Ok(true) => return,
            Ok(false) => {}
            Err(e) => {
                error!("counting a failed login of {addr}: {e:#}");
                self.trouble.notify_one();
                return;
            }
        }
        let prefix = match state.maps.settings() {
            Ok(settings) => ipv6_mask_prefix(&settings.ban_mask_v6) as u8,
            Err(e) => {
                error!("counting a failed login of {addr}: {e:#}");
                self.trouble.notify_one();
                return;
            }
        };
        let net = ban_network(addr, if prefix == 0 { 64 } else { prefix });
        let policy = state.policy.clone();
        let Tallied::Ban(failures) = state.tally.record(net, now, &policy) else {
            return;
        };
        match ban(&mut state.maps, addr, &policy) {
            Ok(Some((count, length))) => warn!(
                "ban net={net} failures={failures} within={} duration={} (ban {count} in a row)",
                format_duration(policy.ban_failure_window),
                format_duration(length)
            ),
            Ok(None) => {}
            Err(e) => {
                error!("banning {net} after {failures} failed logins: {e:#}");
                self.trouble.notify_one();
            }
        }
    }
}

/// Bans `addr`'s network as the policy says, unless it is exempt or
/// banned already; the ban's number in a row and length if it was.
fn ban(maps: &mut GateMaps, addr: IpAddr, policy: &BanPolicy) -> Result<Option<(u32, Duration)>> {
    if maps.is_exempt(addr)? {
        return Ok(None);
    }
    let now = maps.now_ns()?;
    let previous = maps.ban_of(addr)?;
    if previous.is_some_and(|ban| ban.is_active(now)) {
        // Sessions opened before the ban go on failing: that is not a
        // new ban, nor a longer one.
        return Ok(None);
    }
    let count = policy.next_count(previous.map(|ban| {
        (
            ban.count,
            Duration::from_nanos(now.saturating_sub(ban.until_ns)),
        )
    }));
    let length = policy.ban_length(count);
    maps.ban_at(
        addr,
        Ban {
            banned_at_ns: now,
            until_ns: now.saturating_add(length.as_nanos().min(u64::MAX as u128) as u64),
            count,
            reserved: 0,
        },
    )?;
    Ok(Some((count, length)))
}

impl FailureSink for GateBanSink {
    fn login_failed(&self, addr: IpAddr, _user: &str) {
        self.failed_at(addr, Instant::now());
    }

    /// A client behind a load balancer, as the kernel would judge its SYN:
    /// banned if its network has a ban in force and it is not exempt. A
    /// map that cannot be read is reported and counts as not banned (the
    /// watch repairs the gate; refusing every proxied client meanwhile
    /// would lock everybody out).
    fn is_banned(&self, addr: IpAddr) -> bool {
        let state = self.state();
        let banned = (|| -> Result<bool> {
            let Some(ban) = state.maps.ban_of(addr)? else {
                return Ok(false);
            };
            Ok(ban.is_active(state.maps.now_ns()?) && !state.maps.is_exempt(addr)?)
        })();
        banned.unwrap_or_else(|e| {
            error!("looking for a ban of {addr}: {e:#}");
            self.trouble.notify_one();
            false
        })
    }
}
