//! The shapes nearly every packet on a mail host has, decided without the
//! general walk: an untagged IPv4 datagram with a 20-octet header, or an
//! untagged IPv6 one whose payload is TCP or a protocol that is not an
//! extension header, neither fragmented, with lengths the stack accepts.
//!
//! A SYN to a port that is not gated is decided here too, with the
//! settings read once; a SYN to a gated port comes out with them, for the
//! verdict. Where `plain` decides, it decides exactly as `parse` and
//! `judge` do (the host tests compare the two on every frame they build
//! and on the fuzz's mutations); anything unusual - tags, options, extension headers,
//! fragments, odd lengths, a header outside the readable part - is left
//! to `parse`. The walk is general and pays for it: the compiler keeps
//! its offsets in registers and gathers its many outcomes in one place,
//! while here every offset is a constant and each outcome leaves on its
//! own path.

use gate_common::Settings;

use crate::{
    cursor::Packet,
    headers::*,
    judge::{bans_in_use, GateState},
    parse::{be16, AddrRef, Syn, OPENING},
};

/// What the plain shapes say.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Plain<'a, 's> {
    /// Passes as not gated: `parse` would say `Parsed::NotGated`, or a
    /// `Parsed::Syn` that `judge` passes as not gated for its port.
    NotGated,
    /// `parse` would say `Parsed::Syn` with this SYN, to a gated port of
    /// these settings (or to a login port, where bans are looked for).
    Syn(Syn<'a>, &'s Settings),
    /// Not a plain shape: walk it with `parse`.
    Walk,
}

/// IP version 4, header of 5 words: no options.
const IPV4_PLAIN_VERSION_IHL: u8 = 0x45;
/// More-fragments and the fragment offset.
const IPV4_FRAGMENT_BITS: u16 = 0x3fff;
const L3: usize = ETH_HDR_LEN;

#[inline(always)]
pub fn plain<'a, 's, S: GateState>(packet: &Packet<'a>, state: &'s S) -> Plain<'a, 's> {
    let Ok(eth) = packet.view::<EthHdr>(0) else {
        return Plain::Walk;
    };
    match be16(eth.ethertype) {
        ETH_P_IPV4 => plain_ipv4(packet, state),
        ETH_P_IPV6 => plain_ipv6(packet, state),
        _ => Plain::Walk,
    }
}

#[inline(always)]
fn plain_ipv4<'a, 's, S: GateState>(packet: &Packet<'a>, state: &'s S) -> Plain<'a, 's> {
    let Ok(ip) = packet.view::<Ipv4Hdr>(L3) else {
        return Plain::Walk;
    };
    let total_len = be16(ip.total_len) as usize;
    if ip.version_ihl != IPV4_PLAIN_VERSION_IHL
        || total_len < IPV4_HDR_LEN
        || L3 + total_len > packet.len()
    {
        return Plain::Walk;
    }
    if ip.protocol != IPPROTO_TCP {
        return Plain::NotGated;
    }
    if be16(ip.frag) & IPV4_FRAGMENT_BITS != 0 {
        return Plain::Walk;
    }
    plain_tcp(
        packet,
        state,
        L3 + IPV4_HDR_LEN,
        total_len - IPV4_HDR_LEN,
        AddrRef::V4(&ip.src),
        AddrRef::V4(&ip.dst),
    )
}

#[inline(always)]
fn plain_ipv6<'a, 's, S: GateState>(packet: &Packet<'a>, state: &'s S) -> Plain<'a, 's> {
    let Ok(ip) = packet.view::<Ipv6Hdr>(L3) else {
        return Plain::Walk;
    };
    let payload_len = be16(ip.payload_len) as usize;
    if ip.version_class_flow[0] >> 4 != 6
        || payload_len == 0
        || L3 + IPV6_HDR_LEN + payload_len > packet.len()
    {
        return Plain::Walk;
    }
    match ip.next_header {
        IPPROTO_TCP => plain_tcp(
            packet,
            state,
            L3 + IPV6_HDR_LEN,
            payload_len,
            AddrRef::V6(&ip.src),
            AddrRef::V6(&ip.dst),
        ),
        IPV6_HOPOPTS | IPV6_ROUTING | IPV6_FRAGMENT | IPV6_AH | IPV6_DSTOPTS => Plain::Walk,
        _ => Plain::NotGated,
    }
}

#[inline(always)]
fn plain_tcp<'a, 's, S: GateState>(
    packet: &Packet<'a>,
    state: &'s S,
    l4: usize,
    l4_len: usize,
    src: AddrRef<'a>,
    dst: AddrRef<'a>,
) -> Plain<'a, 's> {
    if l4_len < TCP_FLAGS_END {
        return Plain::Walk;
    }
    let Ok(tcp) = packet.view::<TcpHead>(l4) else {
        return Plain::Walk;
    };
    let header_len = ((tcp.data_offset >> 4) as usize) * 4;
    if header_len < TCP_HDR_LEN || header_len > l4_len {
        return Plain::Walk;
    }
    if tcp.flags & OPENING != TCP_FLAG_SYN {
        return Plain::NotGated;
    }
    let dst_port = be16(tcp.dst_port);
    // A login port is judged only while bans of the source's family are
    // looked for; `judge` passes it otherwise.
    let Some(config) = state
        .settings()
        .filter(|c| c.gates_port(dst_port) || (c.bans_port(dst_port) && bans_in_use(c, src)))
    else {
        return Plain::NotGated;
    };
    let syn = Syn {
        src,
        dst,
        src_port: be16(tcp.src_port),
        dst_port,
        seq: u32::from_be_bytes(tcp.seq),
        payload_len: (l4_len - header_len) as u32,
        l3_offset: L3,
        l4_offset: l4,
    };
    Plain::Syn(syn, config)
}
