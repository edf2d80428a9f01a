//! Denial log lines through aya-log, limited per CPU by a token bucket so a
//! SYN flood costs a few arithmetic operations per packet (the bucket lies
//! in the counters' value, which the packet's count looks up anyway) and
//! cannot flood the log.

use aya_ebpf::EbpfContext;
use aya_log_ebpf::warn;
use core::net::{Ipv4Addr, Ipv6Addr};
use gate_common::{LogBucket, Outcome};
use gate_packet::{AddrRef, Denial};

use crate::state::clock_ns;

const MILLI: u64 = 1000;
/// Refill is computed over at most this much idle time, which keeps the
/// multiplication far from overflow.
const MAX_REFILL_NS: u64 = 60_000_000_000;

#[inline(always)]
pub fn log_denial<C: EbpfContext>(
    ctx: &C,
    bucket: &mut LogBucket,
    denial: &Denial<'_>,
    outcome: Outcome,
) {
    if denial.log_rate_per_sec == 0 {
        return;
    }
    // The gate's clock, a tick at a time: plenty for a rate limit, and a
    // single load.
    let now = clock_ns(denial.tick_ns);
    // The clock moves a tick at a time: within one, there is nothing to
    // refill (a flood's packets mostly arrive so).
    if now != bucket.refilled_at_ns {
        let mut elapsed = now.wrapping_sub(bucket.refilled_at_ns);
        if elapsed > MAX_REFILL_NS {
            elapsed = MAX_REFILL_NS;
        }
        let capacity = denial.log_burst.max(1) as u64 * MILLI;
        let refill = elapsed * denial.log_rate_per_sec as u64 / 1_000_000;
        bucket.milli_tokens = (bucket.milli_tokens + refill).min(capacity);
        bucket.refilled_at_ns = now;
    }
    if bucket.milli_tokens < MILLI {
        bucket.suppressed += 1;
        return;
    }
    bucket.milli_tokens -= MILLI;
    let suppressed = bucket.suppressed;
    bucket.suppressed = 0;

    let verdict = match outcome {
        Outcome::DeniedReset => "reset",
        Outcome::DeniedBanned => "banned",
        Outcome::Monitored => "monitor",
        _ => "drop",
    };
    // Straight from the packet: an intermediate `Option<Addr>` copy is
    // lowered to a byte-wise memmove loop the verifier walks per path.
    let dst_port = denial.dst_port;
    match denial.src {
        None => warn!(
            ctx,
            "denied a packet whose headers are too deep to walk: {} ({} more suppressed)",
            verdict,
            suppressed
        ),
        Some(AddrRef::V4(addr)) => warn!(
            ctx,
            "denied SYN from {} to port {}: {} ({} more suppressed)",
            Ipv4Addr::from(*addr),
            dst_port,
            verdict,
            suppressed
        ),
        Some(AddrRef::V6(addr)) => warn!(
            ctx,
            "denied SYN from {} to port {}: {} ({} more suppressed)",
            Ipv6Addr::from(*addr),
            dst_port,
            verdict,
            suppressed
        ),
    }
}
