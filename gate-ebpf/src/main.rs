//! The smtp-gate kernel program: one classify function behind an XDP entry
//! and a TC (clsact ingress) entry.
#![no_std]
#![no_main]
#![allow(non_upper_case_globals)]

mod classify;
mod log;
mod maps;
mod parse;
mod reset;

use aya_ebpf::{
    bindings::{xdp_action, TC_ACT_REDIRECT, TC_ACT_SHOT, TC_ACT_UNSPEC},
    helpers::generated::{bpf_redirect, bpf_skb_change_tail, bpf_xdp_adjust_tail},
    macros::{classifier, xdp},
    programs::{TcContext, XdpContext},
};

use classify::{classify, Action};
use gate_common::Outcome;

#[xdp]
pub fn smtp_gate_xdp(ctx: XdpContext) -> u32 {
    let len = ctx.data_end() - ctx.data();
    match classify(&ctx, ctx.data(), ctx.data_end(), len) {
        Action::Pass => xdp_action::XDP_PASS,
        Action::Drop => xdp_action::XDP_DROP,
        Action::Reset(syn) => {
            let delta = reset::reply_len(&syn) as i32 - len as i32;
            // SAFETY: a plain helper call on this program's context.
            if delta != 0 && unsafe { bpf_xdp_adjust_tail(ctx.ctx, delta) } != 0 {
                return xdp_action::XDP_DROP;
            }
            match reset::write_reply(ctx.data(), ctx.data_end(), &syn) {
                Some(()) => xdp_action::XDP_TX,
                None => xdp_action::XDP_DROP,
            }
        }
    }
}

/// Headers the classifier may need in the linear part of an skb: Ethernet,
/// two VLAN tags, IPv6 with a few extension headers, TCP.
const TC_PULL_LEN: u32 = 256;

#[classifier]
pub fn smtp_gate_tc(ctx: TcContext) -> i32 {
    // A GRO'd or paged skb may keep headers outside the linear area, where
    // direct packet access cannot see them. Pulling is only done when it is
    // needed, because it may also unclone the skb.
    let linear = (ctx.data_end() - ctx.data()) as u32;
    let wanted = if ctx.len() < TC_PULL_LEN {
        ctx.len()
    } else {
        TC_PULL_LEN
    };
    if linear < wanted && ctx.pull_data(wanted).is_err() {
        classify::count(Outcome::Malformed);
        return TC_ACT_UNSPEC;
    }
    match classify(&ctx, ctx.data(), ctx.data_end(), ctx.len() as usize) {
        // UNSPEC, not OK: with tcx, OK ends the chain, and a program
        // attached after the gate would never see the packet.
        Action::Pass => TC_ACT_UNSPEC,
        Action::Drop => TC_ACT_SHOT as i32,
        Action::Reset(syn) => {
            let len = reset::reply_len(&syn) as u32;
            // SAFETY: plain helper calls on this program's skb.
            if unsafe { bpf_skb_change_tail(ctx.skb.skb, len, 0) } != 0 {
                return TC_ACT_SHOT as i32;
            }
            if reset::write_reply(ctx.data(), ctx.data_end(), &syn).is_none() {
                return TC_ACT_SHOT as i32;
            }
            // SAFETY: reading the ifindex of this program's own skb.
            let ifindex = unsafe { (*ctx.skb.skb).ifindex };
            // Out of the interface the SYN came in on.
            unsafe { bpf_redirect(ifindex, 0) as i32 };
            TC_ACT_REDIRECT as i32
        }
    }
}

/// Passes everything: the baseline the benchmarks measure the gate
/// against, and the program tests load on a veth peer, because a veth only
/// accepts XDP_TX frames into a peer that runs XDP itself.
#[xdp]
pub fn smtp_gate_xdp_pass(_ctx: XdpContext) -> u32 {
    xdp_action::XDP_PASS
}

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}

#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 13] = *b"Dual MIT/GPL\0";
