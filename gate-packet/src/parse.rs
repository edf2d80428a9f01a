//! One bounds-checked walk from the Ethernet header to the TCP flags.
//!
//! The rule: a packet passes unjudged only when it provably cannot become
//! a SYN to this host (`NotGated`) or when the Linux stack discards it
//! itself (`Malformed`). Anything the stack may still turn into a SYN but
//! the walk cannot see whole - a TCP header or extension header chain that
//! continues in a later fragment, a chain longer than the walk, more VLAN
//! tags than the walk - is handed on to be judged like a SYN. The
//! reference for "may" is the Linux stack, not this parser: where the two
//! differ, the stack's behaviour is quoted at the step.

use crate::{
    cursor::{Cut, Header, Packet, MAX_WALK},
    headers::*,
    judge::GateState,
};

/// VLAN tags walked before a frame is judged unwalkable. Linux strips
/// priority tags (VID 0) without limit and every tag a VLAN device claims
/// (`__netif_receive_skb_core`); no real trunk stacks more than two.
pub const MAX_VLAN_TAGS: usize = 8;
/// IPv6 extension headers walked before the chain is judged unwalkable.
pub const MAX_IPV6_EXT_HEADERS: usize = 8;
/// Past the end of the deepest header the walk may view (one that starts
/// at MAX_WALK).
const WALK_LIMIT: usize = MAX_WALK + 64;

/// An address inside the packet. The map lookups take their keys straight
/// from there: copying an IPv6 address octet by octet costs more than the
/// parse around it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AddrRef<'a> {
    V4(&'a [u8; 4]),
    V6(&'a [u8; 16]),
}

/// An address copied out of the packet, for use after the packet changes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Addr {
    V4([u8; 4]),
    V6([u8; 16]),
}

impl AddrRef<'_> {
    #[inline(always)]
    pub fn read(self) -> Addr {
        match self {
            AddrRef::V4(a) => Addr::V4(*a),
            AddrRef::V6(a) => Addr::V6(*a),
        }
    }
}

/// A whole TCP SYN without ACK, RST or FIN in an unfragmented datagram:
/// the only packet that can be answered with a RST.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Syn<'a> {
    pub src: AddrRef<'a>,
    pub dst: AddrRef<'a>,
    pub dst_port: u16,
    /// Copied, though only a reply needs them: a packet pointer kept until
    /// the verdict would make the verifier walk twice as much.
    pub src_port: u16,
    pub seq: u32,
    /// Octets of TCP payload the SYN carries (TCP Fast Open); the RST must
    /// acknowledge them too.
    pub payload_len: u32,
    /// Where the IP header starts (after Ethernet and VLAN tags).
    pub l3_offset: usize,
    /// Where the TCP header starts.
    pub l4_offset: usize,
}

/// Why a packet is judged without being seen as a whole SYN.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Reason {
    /// A first fragment whose TCP header, or extension header chain,
    /// continues in a later fragment.
    Fragment,
    /// An IPv6 extension header chain longer than the walk.
    Unwalkable,
}

impl Reason {
    /// The counter that records it.
    pub const fn counter(self) -> gate_common::Outcome {
        match self {
            Reason::Fragment => gate_common::Outcome::JudgedFragment,
            Reason::Unwalkable => gate_common::Outcome::JudgedUnwalkable,
        }
    }
}

/// A packet that may become a SYN, judged by what it shows.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Partial<'a> {
    pub src: AddrRef<'a>,
    pub dst: AddrRef<'a>,
    /// `None` when the port lies beyond what the packet shows: then any
    /// gated port is assumed.
    pub dst_port: Option<u16>,
    pub reason: Reason,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Parsed<'a> {
    /// Provably not a SYN: other protocols, other segments, later
    /// fragments.
    NotGated,
    /// The stack discards it: cut short or impossible headers.
    Malformed,
    /// A header lies past the readable part of the packet (TC: pull the
    /// headers into the linear part and parse again).
    NeedsPull,
    Syn(Syn<'a>),
    Partial(Partial<'a>),
    /// More VLAN tags than the walk: not even the source is known.
    Unwalkable,
}

/// A connection opens only with SYN alone: the host discards SYN+RST and
/// SYN+FIN (RFC 9293 section 3.10.7.2; `tcp_rcv_state_process` in LISTEN),
/// and SYN+ACK opens nothing.
pub(crate) const OPENING: u8 = TCP_FLAG_SYN | TCP_FLAG_ACK | TCP_FLAG_RST | TCP_FLAG_FIN;

/// The view of a `T` at `offset` that must also end by `limit` (the end of
/// the datagram or of what a fragment contributes to it).
#[inline(always)]
fn view_within<'a, T: Header>(
    packet: &Packet<'a>,
    offset: usize,
    limit: usize,
) -> Result<&'a T, Cut> {
    if offset + core::mem::size_of::<T>() > limit {
        return Err(Cut::Packet);
    }
    packet.view(offset)
}

/// `view` with what to return for each way the header can be cut.
macro_rules! view {
    ($result:expr, cut => $cut:expr, deep => $deep:expr) => {
        match $result {
            Ok(header) => header,
            Err(Cut::Packet) => return $cut,
            Err(Cut::Readable) => return Parsed::NeedsPull,
            Err(Cut::TooDeep) => return $deep,
        }
    };
}

#[inline(always)]
pub(crate) fn be16(octets: [u8; 2]) -> u16 {
    u16::from_be_bytes(octets)
}

#[inline(always)]
fn is_vlan(ethertype: u16) -> bool {
    ethertype == ETH_P_8021Q || ethertype == ETH_P_8021AD
}

/// Walks `packet`. `state` only lends `GateState::forget` (see there).
#[inline(always)]
pub fn parse<'a, S: GateState>(packet: &Packet<'a>, state: &S) -> Parsed<'a> {
    let eth: &EthHdr = view!(packet.view(0), cut => Parsed::Malformed, deep => Parsed::Malformed);
    let mut ethertype = be16(eth.ethertype);
    let mut offset = ETH_HDR_LEN;
    for _ in 0..MAX_VLAN_TAGS {
        if !is_vlan(ethertype) {
            break;
        }
        let tag: &VlanHdr =
            view!(packet.view(offset), cut => Parsed::Malformed, deep => Parsed::Unwalkable);
        ethertype = be16(tag.ethertype);
        offset += VLAN_HDR_LEN;
    }
    if is_vlan(ethertype) {
        return Parsed::Unwalkable;
    }
    // Each number of tags gives the walk below another constant offset,
    // and the verifier would check the whole IP walk once for each; as one
    // bounded range it checks it once more than for untagged frames.
    if offset != ETH_HDR_LEN {
        offset = state.forget(offset);
        if offset > ETH_HDR_LEN + MAX_VLAN_TAGS * VLAN_HDR_LEN {
            return Parsed::Unwalkable;
        }
    }
    match ethertype {
        ETH_P_IPV4 => parse_ipv4(packet, offset),
        ETH_P_IPV6 => parse_ipv6(packet, offset),
        _ => Parsed::NotGated,
    }
}

#[inline(always)]
fn parse_ipv4<'a>(packet: &Packet<'a>, l3: usize) -> Parsed<'a> {
    let ip: &Ipv4Hdr = view!(packet.view(l3), cut => Parsed::Malformed, deep => Parsed::Malformed);
    if ip.version_ihl >> 4 != 4 {
        return Parsed::Malformed;
    }
    let header_len = ((ip.version_ihl & 0x0f) as usize) * 4;
    // Total length 0: since 6.3 Linux takes the length of a GSO TCP packet
    // from the buffer (iph_totlen, BIG TCP), and a program cannot tell
    // whether the packet is one; the frame's length counts.
    let total_len = match be16(ip.total_len) as usize {
        0 => packet.len() - l3,
        stated => stated,
    };
    // ip_rcv_core drops these: IHL < 5, a total length shorter than the
    // header or longer than the frame.
    if header_len < IPV4_HDR_LEN || total_len < header_len || l3 + total_len > packet.len() {
        return Parsed::Malformed;
    }
    if ip.protocol != IPPROTO_TCP {
        return Parsed::NotGated;
    }
    // Only the first fragment (offset 0) carries the start of the TCP
    // header. A later one cannot rewrite it: Linux discards a datagram
    // with overlapping fragments (ip_frag_queue, since 4.19), so what the
    // first fragment shows is what the reassembled datagram has.
    let frag = be16(ip.frag);
    if frag & 0x1fff != 0 {
        return Parsed::NotGated;
    }
    let src = AddrRef::V4(&ip.src);
    let dst = AddrRef::V4(&ip.dst);
    let l4 = l3 + header_len;
    let l4_len = total_len - header_len;
    if frag & 0x2000 != 0 {
        // ip_frag_queue keeps only whole 8-octet units of a fragment that
        // is not the last: octets past them are trimmed and may be
        // supplied by another fragment. One without a whole unit is
        // discarded, with its queue.
        let kept = l4_len & !7;
        if kept == 0 {
            return Parsed::Malformed;
        }
        return first_fragment(packet, l4, kept, src, dst);
    }
    parse_tcp(packet, l3, l4, l4_len, src, dst)
}

#[inline(always)]
fn parse_ipv6<'a>(packet: &Packet<'a>, l3: usize) -> Parsed<'a> {
    let ip: &Ipv6Hdr = view!(packet.view(l3), cut => Parsed::Malformed, deep => Parsed::Malformed);
    if ip.version_class_flow[0] >> 4 != 6 {
        return Parsed::Malformed;
    }
    let src = AddrRef::V6(&ip.src);
    let dst = AddrRef::V6(&ip.dst);
    let payload_len = be16(ip.payload_len) as usize;
    let mut next = ip.next_header;
    // RFC 2675 jumbograms: payload length 0 with a hop-by-hop header. Linux
    // then takes the length from the frame (ipv6_rcv trims only when the
    // payload length is non-zero or the next header is not hop-by-hop)
    // and drops the packet only if a jumbo option is there and wrong.
    // Likewise payload length 0 without hop-by-hop (GSO packets of BIG
    // TCP): the frame's length counts, whether or not this kernel accepts
    // such a packet.
    let datagram_end = if payload_len == 0 {
        packet.len()
    } else {
        l3 + IPV6_HDR_LEN + payload_len
    };
    if datagram_end > packet.len() {
        return Parsed::Malformed;
    }
    // The common case, no extension headers: the chain walk below would
    // stop at once with the same result.
    if next == IPPROTO_TCP {
        let l4 = l3 + IPV6_HDR_LEN;
        return parse_tcp(packet, l3, l4, datagram_end - l4, src, dst);
    }
    // What the reassembled datagram takes from this packet, as far as the
    // walk can look; a first fragment contributes only up to its end.
    // Capped just past the deepest view (the cap changes no comparison
    // the walk makes, since it checks MAX_WALK first), so the verifier
    // sees one small range here on every path.
    let mut limit = if datagram_end > WALK_LIMIT {
        WALK_LIMIT
    } else {
        datagram_end
    };
    let mut fragment = false;
    let mut offset = l3 + IPV6_HDR_LEN;
    let deep = || unknown_port(src, dst, Reason::Unwalkable);
    let cut_by_fragment = || unknown_port(src, dst, Reason::Fragment);
    // A header cut short: in a first fragment it continues in the next
    // one; anywhere else the stack discards the packet.
    let cut = |fragment: bool| {
        if fragment {
            cut_by_fragment()
        } else {
            Parsed::Malformed
        }
    };
    // RFC 8200 section 4: each extension header names the type of the one
    // after it. The length of a header comes from its OWN type (AH counts
    // 4-octet units, RFC 4302 section 2.2; the others 8-octet units), never
    // from the type of the header that follows it.
    for _ in 0..MAX_IPV6_EXT_HEADERS {
        match next {
            IPPROTO_TCP => break,
            IPV6_HOPOPTS | IPV6_ROUTING | IPV6_DSTOPTS | IPV6_AH => {
                let ext: &Ipv6ExtHdr =
                    view!(view_within(packet, offset, limit), cut => cut(fragment), deep => deep());
                offset += if next == IPV6_AH {
                    (ext.len as usize + 2) * 4
                } else {
                    (ext.len as usize + 1) * 8
                };
                next = ext.next_header;
            }
            IPV6_FRAGMENT => {
                let frag: &Ipv6FragHdr =
                    view!(view_within(packet, offset, limit), cut => cut(fragment), deep => deep());
                let offset_flags = be16(frag.offset_flags);
                // A later fragment: the first one carries the chain and
                // the TCP header, and Linux discards overlapping fragments
                // (RFC 5722).
                if offset_flags & 0xfff8 != 0 {
                    return Parsed::NotGated;
                }
                offset += IPV6_FRAG_HDR_LEN;
                next = frag.next_header;
                // M set: a first fragment. Linux refuses one whose
                // fragmentable part is not whole 8-octet units; count
                // only those, so nothing here is judged from octets the
                // datagram would not keep. (An atomic fragment, M clear,
                // is processed as it is: RFC 6946.)
                if offset_flags & 1 != 0 && offset <= limit {
                    fragment = true;
                    limit = offset + ((limit - offset) & !7);
                }
            }
            _ => return Parsed::NotGated,
        }
        // Checked here and not only by the next view: it keeps the offset
        // in one range from step to step, so the verifier's states at the
        // top of the loop converge.
        if offset > MAX_WALK {
            return deep();
        }
        if offset > limit {
            return cut(fragment);
        }
    }
    // The walk ran out of steps before reaching TCP: the host would still
    // walk on to whatever the chain hides.
    if next != IPPROTO_TCP {
        return deep();
    }
    if fragment {
        if offset + 4 > limit {
            // The TCP header starts in a later fragment.
            return cut_by_fragment();
        }
        return first_fragment(packet, offset, limit - offset, src, dst);
    }
    let l4_len = datagram_end - offset;
    match parse_tcp(packet, l3, offset, l4_len, src, dst) {
        Parsed::Unwalkable => deep(),
        parsed => parsed,
    }
}

#[inline(always)]
fn unknown_port<'a>(src: AddrRef<'a>, dst: AddrRef<'a>, reason: Reason) -> Parsed<'a> {
    Parsed::Partial(Partial {
        src,
        dst,
        dst_port: None,
        reason,
    })
}

/// A first fragment that contributes `kept` octets from `l4` on to the
/// reassembled datagram. If the flags are among them, they decide; if
/// not, the ports do; the fragment is never answered with a RST (there is
/// no whole segment to acknowledge).
#[inline(always)]
fn first_fragment<'a>(
    packet: &Packet<'a>,
    l4: usize,
    kept: usize,
    src: AddrRef<'a>,
    dst: AddrRef<'a>,
) -> Parsed<'a> {
    let partial = |dst_port| {
        Parsed::Partial(Partial {
            src,
            dst,
            dst_port,
            reason: Reason::Fragment,
        })
    };
    let deep = || unknown_port(src, dst, Reason::Unwalkable);
    if kept >= TCP_FLAGS_END {
        let tcp: &TcpHead = view!(packet.view(l4), cut => partial(None), deep => deep());
        if tcp.flags & OPENING != TCP_FLAG_SYN {
            return Parsed::NotGated;
        }
        return partial(Some(be16(tcp.dst_port)));
    }
    if kept >= 4 {
        let ports: &[u8; 4] = view!(packet.view(l4), cut => partial(None), deep => deep());
        return partial(Some(be16([ports[2], ports[3]])));
    }
    partial(None)
}

/// The TCP header of a whole (unfragmented) datagram whose segment is
/// `l4_len` octets from `l4` on.
#[inline(always)]
fn parse_tcp<'a>(
    packet: &Packet<'a>,
    l3: usize,
    l4: usize,
    l4_len: usize,
    src: AddrRef<'a>,
    dst: AddrRef<'a>,
) -> Parsed<'a> {
    let tcp: &TcpHead = view!(
        view_within(packet, l4, l4 + l4_len),
        cut => Parsed::Malformed,
        deep => Parsed::Unwalkable
    );
    // tcp_v4_rcv / tcp_v6_rcv drop a data offset under 5 words and a
    // header longer than the segment.
    let header_len = ((tcp.data_offset >> 4) as usize) * 4;
    if header_len < TCP_HDR_LEN || header_len > l4_len {
        return Parsed::Malformed;
    }
    if tcp.flags & OPENING != TCP_FLAG_SYN {
        return Parsed::NotGated;
    }
    Parsed::Syn(Syn {
        src,
        dst,
        src_port: be16(tcp.src_port),
        dst_port: be16(tcp.dst_port),
        seq: u32::from_be_bytes(tcp.seq),
        payload_len: (l4_len - header_len) as u32,
        l3_offset: l3,
        l4_offset: l4,
    })
}
