//! The smtp-gate kernel program: thin XDP and TC (clsact ingress) entries
//! around the parser and verdict of gate-packet, with the maps as its
//! state. Counting happens here, after the action was carried out, so a
//! reset that could not be sent is never counted as one.
#![no_std]
#![no_main]
#![allow(non_upper_case_globals)]
// Inline assembly on BPF (`state::packet_word`), as aya-ebpf itself uses.
#![feature(asm_experimental_arch)]

mod log;
mod maps;
mod state;

use aya_ebpf::{
    bindings::{xdp_action, TC_ACT_REDIRECT, TC_ACT_SHOT, TC_ACT_UNSPEC},
    helpers::generated::{bpf_redirect, bpf_skb_change_tail, bpf_xdp_adjust_tail},
    macros::{classifier, xdp},
    programs::{TcContext, XdpContext},
    EbpfContext,
};
use gate_common::Outcome;
use gate_packet::{
    decide, unsent_reset, Action, Decision, Packet, PacketMut, Reply, Verdict, MAX_WALK,
};

use state::{count, count_in, counters, Maps};

/// Logs a denial (within the log's limit) and, unless the verdict is a
/// reset, which is counted once it was sent, counts the verdict's outcome
/// and reason: one lookup of this CPU's counters for all of it. The log
/// comes first, before the packet changes: the denial points into it.
#[inline(always)]
fn log_and_count<C: EbpfContext>(ctx: &C, verdict: &Verdict<'_>) {
    let Some(counters) = counters() else {
        return;
    };
    if let Some(denial) = verdict.denial {
        log::log_denial(ctx, &mut counters.log, &denial, verdict.outcome);
    }
    if !matches!(verdict.action, Action::Reset(_)) {
        count_in(counters, verdict.outcome, verdict.reason);
    }
}

/// A reset that could not be sent: the SYN is dropped and counted so
/// (`outcome` is the reset's: a banned SYN stays `denied_banned`).
#[inline(always)]
fn reset_skipped(outcome: Outcome) {
    count(unsent_reset(outcome), Some(Outcome::ResetSkipped));
}

#[xdp]
pub fn smtp_gate_xdp(ctx: XdpContext) -> u32 {
    // Opaque to the optimiser: if LLVM knew that `len` is `data_end -
    // data`, it would drop the cursor's pointer check against data_end as
    // redundant after a length check, and the verifier, which follows
    // pointers but not that arithmetic, would refuse the program.
    let len = core::hint::black_box(ctx.data_end() - ctx.data());
    // SAFETY: data..data_end is the frame, which nothing changes until the
    // verdict is taken; the whole frame is readable in place.
    let packet = unsafe { Packet::new(ctx.data(), ctx.data_end(), len) };
    let maps = Maps {
        ifindex: || ctx.ingress_ifindex() as u32,
    };
    match decide(&maps, &packet) {
        Decision::NotGated => {
            count(Outcome::NotGated, None);
            xdp_action::XDP_PASS
        }
        Decision::Judged(verdict) => xdp_act(&ctx, len, verdict),
    }
}

#[inline(always)]
fn xdp_act(ctx: &XdpContext, len: usize, verdict: Verdict<'_>) -> u32 {
    log_and_count(ctx, &verdict);
    let reply = match verdict.action {
        Action::Pass => return xdp_action::XDP_PASS,
        Action::Drop => return xdp_action::XDP_DROP,
        Action::Reset(reply) => reply,
    };
    xdp_reset(ctx, len, &reply, verdict.outcome)
}

/// Turns the frame into the reply.
#[inline(always)]
fn xdp_reset(ctx: &XdpContext, len: usize, reply: &Reply, outcome: Outcome) -> u32 {
    let delta = reply.len() as i32 - len as i32;
    // SAFETY: a plain helper call on this program's context.
    if delta != 0 && unsafe { bpf_xdp_adjust_tail(ctx.ctx, delta) } != 0 {
        reset_skipped(outcome);
        return xdp_action::XDP_DROP;
    }
    // SAFETY: the resized frame, ours alone until we return.
    let mut frame = unsafe { PacketMut::new(ctx.data(), ctx.data_end()) };
    match reply.write(&mut frame) {
        Some(()) => {
            count(outcome, None);
            xdp_action::XDP_TX
        }
        None => {
            reset_skipped(outcome);
            xdp_action::XDP_DROP
        }
    }
}

/// The furthest octet the parser reads: a header may start at MAX_WALK,
/// and none it reads is longer than an IPv4 header with options.
const TC_PULL_LEN: u32 = (MAX_WALK + 60) as u32;

#[classifier]
pub fn smtp_gate_tc(ctx: TcContext) -> i32 {
    // A GRO'd or paged skb may keep headers outside the linear part, where
    // direct access cannot see them. Everything the walk may read is
    // pulled in first, so the verdict never depends on how the skb was
    // laid out. (Pulling after a first walk that came up short would do
    // it only when needed, but verifying two walks costs twice: too close
    // to the verifier's limit.) Pulling copies, and may unclone the skb,
    // so it is done only when the linear part is short.
    let linear = (ctx.data_end() - ctx.data()) as u32;
    let wanted = if ctx.len() < TC_PULL_LEN {
        ctx.len()
    } else {
        TC_PULL_LEN
    };
    // A failed pull leaves the walk short: it ends in NeedsPull, which is
    // judged as unwalkable (fail closed).
    if linear < wanted {
        let _ = ctx.pull_data(wanted);
    }
    let len = ctx.len() as usize;
    // SAFETY: data..data_end is the linear part of the skb, unchanged until
    // the verdict is taken.
    let packet = unsafe { Packet::new(ctx.data(), ctx.data_end(), len) };
    let maps = Maps {
        // SAFETY: reading a field of this program's own skb.
        ifindex: || unsafe { (*ctx.skb.skb).ifindex },
    };
    match decide(&maps, &packet) {
        Decision::NotGated => {
            count(Outcome::NotGated, None);
            TC_ACT_UNSPEC
        }
        Decision::Judged(verdict) => tc_act(&ctx, &verdict),
    }
}

#[inline(always)]
fn tc_act(ctx: &TcContext, verdict: &Verdict<'_>) -> i32 {
    log_and_count(ctx, verdict);
    let reply = match verdict.action {
        // UNSPEC, not OK: with tcx, OK ends the chain, and a program
        // attached after the gate would never see the packet.
        Action::Pass => return TC_ACT_UNSPEC,
        Action::Drop => return TC_ACT_SHOT as i32,
        Action::Reset(reply) => reply,
    };
    tc_reset(ctx, &reply, verdict.outcome)
}

/// Turns the socket buffer into the reply.
#[inline(always)]
fn tc_reset(ctx: &TcContext, reply: &Reply, outcome: Outcome) -> i32 {
    // A VLAN tag the kernel already moved into the skb's metadata: the
    // SYN came tagged, and the reply would go out in that VLAN (see
    // judge's `answerable` for tags still in the frame).
    // SAFETY: reading a field of this program's own skb.
    if unsafe { (*ctx.skb.skb).vlan_present } != 0 {
        reset_skipped(outcome);
        return TC_ACT_SHOT as i32;
    }
    // TC cannot cut a socket buffer before its transport header, and a
    // reply padded up to it, or with the headers removed by
    // bpf_skb_adjust_room, was lost at a veth receiver (the SYN's pending
    // checksum offload still pointed past the reply). A SYN with IP options
    // or extension headers is therefore dropped, counted as not answered;
    // the XDP modes answer it.
    if reply.extra_headers_len() != 0 {
        reset_skipped(outcome);
        return TC_ACT_SHOT as i32;
    }
    // SAFETY: plain helper calls on this program's skb.
    if unsafe { bpf_skb_change_tail(ctx.skb.skb, reply.len() as u32, 0) } != 0 {
        reset_skipped(outcome);
        return TC_ACT_SHOT as i32;
    }
    // SAFETY: the resized linear part, ours alone until we return.
    let mut frame = unsafe { PacketMut::new(ctx.data(), ctx.data_end()) };
    if reply.write(&mut frame).is_none() {
        reset_skipped(outcome);
        return TC_ACT_SHOT as i32;
    }
    // SAFETY: reading the ifindex of this program's own skb.
    let ifindex = unsafe { (*ctx.skb.skb).ifindex };
    // Out of the interface the SYN came in on.
    // SAFETY: a plain helper call.
    unsafe { bpf_redirect(ifindex, 0) };
    count(outcome, None);
    TC_ACT_REDIRECT as i32
}

/// Passes everything: the baseline the benchmarks measure the gate
/// against, and the program tests load on a veth peer, because a veth only
/// accepts XDP_TX frames into a peer that runs XDP itself.
#[xdp]
pub fn smtp_gate_xdp_pass(_ctx: XdpContext) -> u32 {
    xdp_action::XDP_PASS
}

/// Passes everything: the benchmarks' baseline for the TC program (a
/// classifier's test run also builds a socket buffer).
#[classifier]
pub fn smtp_gate_tc_pass(_ctx: TcContext) -> i32 {
    TC_ACT_UNSPEC
}

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}

#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 13] = *b"Dual MIT/GPL\0";
