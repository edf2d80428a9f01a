//! One bounds-checked walk from the Ethernet header to the TCP header.
//!
//! Each step checks that its header lies inside the packet, reads it, and
//! returns where the next header starts. Anything the walk does not
//! understand ends it with `NotGated` (a protocol we do not gate) or
//! `Malformed` (a header that is cut short or impossible): both pass.

use core::mem::size_of;

const ETH_P_IPV4: u16 = 0x0800;
const ETH_P_IPV6: u16 = 0x86DD;
const ETH_P_8021Q: u16 = 0x8100;
const ETH_P_8021AD: u16 = 0x88A8;

const IPPROTO_TCP: u8 = 6;
const IPV6_HOPOPTS: u8 = 0;
const IPV6_ROUTING: u8 = 43;
const IPV6_FRAGMENT: u8 = 44;
const IPV6_AH: u8 = 51;
const IPV6_DSTOPTS: u8 = 60;

/// Up to this many IPv6 extension headers are walked; a chain longer than
/// that is not something a mail client sends.
const MAX_IPV6_EXT_HEADERS: usize = 8;
/// Headers never legitimately reach this deep; the bound also keeps the
/// verifier's view of every offset small.
const MAX_L4_OFFSET: usize = 1024;

const TCP_FLAG_FIN: u8 = 0x01;
const TCP_FLAG_SYN: u8 = 0x02;
const TCP_FLAG_RST: u8 = 0x04;
const TCP_FLAG_ACK: u8 = 0x10;

pub const ETH_HDR_LEN: usize = 14;
pub const VLAN_HDR_LEN: usize = 4;
pub const IPV4_HDR_LEN: usize = 20;
pub const IPV6_HDR_LEN: usize = 40;
pub const TCP_HDR_LEN: usize = 20;

#[repr(C)]
#[derive(Clone, Copy)]
pub struct EthHdr {
    pub dst: [u8; 6],
    pub src: [u8; 6],
    pub ethertype: [u8; 2],
}

#[repr(C)]
#[derive(Clone, Copy)]
struct VlanHdr {
    tci: [u8; 2],
    ethertype: [u8; 2],
}

#[repr(C)]
#[derive(Clone, Copy)]
struct Ipv4Hdr {
    version_ihl: u8,
    tos: u8,
    total_len: [u8; 2],
    id: [u8; 2],
    frag: [u8; 2],
    ttl: u8,
    protocol: u8,
    check: [u8; 2],
    src: [u8; 4],
    dst: [u8; 4],
}

#[repr(C)]
#[derive(Clone, Copy)]
struct Ipv6Hdr {
    version_class_flow: [u8; 4],
    payload_len: [u8; 2],
    next_header: u8,
    hop_limit: u8,
    src: [u8; 16],
    dst: [u8; 16],
}

/// The first two octets shared by hop-by-hop, routing, destination options
/// and AH headers.
#[repr(C)]
#[derive(Clone, Copy)]
struct Ipv6ExtHdr {
    next_header: u8,
    len: u8,
}

#[repr(C)]
#[derive(Clone, Copy)]
struct Ipv6FragHdr {
    next_header: u8,
    reserved: u8,
    offset_flags: [u8; 2],
    id: [u8; 4],
}

#[repr(C)]
#[derive(Clone, Copy)]
struct TcpHdr {
    src_port: [u8; 2],
    dst_port: [u8; 2],
    seq: [u8; 4],
    ack: [u8; 4],
    data_offset: u8,
    flags: u8,
    window: [u8; 2],
    check: [u8; 2],
    urgent: [u8; 2],
}

/// Source or destination address of a parsed packet, copied out of it.
#[derive(Clone, Copy)]
pub enum Addr {
    V4([u8; 4]),
    V6([u8; 16]),
}

/// Where an address lies in the packet. The map lookups take their keys
/// straight from there: copying an IPv6 address octet by octet (the BPF
/// backend has no unaligned loads) costs more than the parse around it.
/// Valid until the packet changes: the reset reply copies the addresses
/// before it resizes the packet, and the verifier refuses a stale pointer.
#[derive(Clone, Copy)]
pub enum AddrAt {
    V4(*const [u8; 4]),
    V6(*const [u8; 16]),
}

impl AddrAt {
    #[inline(always)]
    pub fn read(self) -> Addr {
        // SAFETY: made by the parser from bounds-checked headers, used
        // before the packet changes; [u8; N] has alignment 1.
        unsafe {
            match self {
                AddrAt::V4(p) => Addr::V4(*p),
                AddrAt::V6(p) => Addr::V6(*p),
            }
        }
    }
}

/// A TCP SYN without ACK: the only kind of packet the gate judges.
#[derive(Clone, Copy)]
pub struct Syn {
    pub src: AddrAt,
    pub dst: AddrAt,
    pub src_port: u16,
    pub dst_port: u16,
    pub seq: u32,
    /// Octets of TCP payload the SYN carries (TCP Fast Open); the RST must
    /// acknowledge them too.
    pub payload_len: u32,
    /// Where the IP header starts (after Ethernet and VLAN tags).
    pub l3_offset: usize,
}

pub enum Parsed {
    /// Not a TCP SYN without ACK: other protocols, other segments, later
    /// fragments.
    NotGated,
    /// Cut short or impossible headers.
    Malformed,
    Syn(Syn),
    /// An IPv4 first fragment too short to hold the whole TCP header: its
    /// flags are unknown, but the ports are there, and the host reassembles
    /// it into whatever the later fragments make of it (RFC 1858's "tiny
    /// fragment" attack). Judged by source and port like a SYN, never
    /// answered with a RST.
    TinyFragment {
        src: AddrAt,
        dst_port: u16,
    },
    /// An IPv6 extension header chain longer than the walk allows: TCP may
    /// lie behind it, so it cannot be let past unjudged.
    Unwalkable,
}

/// Bounds-checked pointer to a `T` at `offset` from `start`.
#[inline(always)]
fn ptr_at<T>(start: usize, end: usize, offset: usize) -> Option<*const T> {
    if start + offset + size_of::<T>() > end {
        return None;
    }
    Some((start + offset) as *const T)
}

/// The `T` at `offset`, in place; `None` if it does not fit in the
/// packet. Only the fields used are loaded (a copy of a whole header costs
/// one load per octet).
///
/// # Safety
/// `start..end` must be the readable packet, and the reference must not
/// outlive the parse: nothing changes the packet while it runs. Every
/// header type is made of bytes and byte arrays (alignment 1, any value
/// valid).
#[inline(always)]
unsafe fn view<'packet, T: Copy>(start: usize, end: usize, offset: usize) -> Option<&'packet T> {
    // SAFETY: ptr_at checked that the whole T lies inside the packet; the
    // rest is the caller's promise.
    ptr_at::<T>(start, end, offset).map(|p| unsafe { &*p })
}

/// Mutable, bounds-checked pointer, for writing the reset reply.
#[inline(always)]
pub fn ptr_at_mut<T>(start: usize, end: usize, offset: usize) -> Option<*mut T> {
    ptr_at::<T>(start, end, offset).map(|p| p as *mut T)
}

macro_rules! or_malformed {
    ($e:expr) => {
        match $e {
            Some(v) => v,
            None => return Parsed::Malformed,
        }
    };
}

/// Walks the packet whose first `end - start` octets are readable between
/// `start` and `end` (the linear part of an skb in TC) and that is
/// `packet_len` octets long in all. (The `unsafe` blocks below rest on
/// that: `view`'s promise.)
#[inline(always)]
pub fn parse(start: usize, end: usize, packet_len: usize) -> Parsed {
    let eth: &EthHdr = or_malformed!(unsafe { view(start, end, 0) });
    let mut ethertype = u16::from_be_bytes(eth.ethertype);
    let mut offset = ETH_HDR_LEN;

    // 802.1ad outer tag, then 802.1Q inner tag: at most two.
    for _ in 0..2 {
        if ethertype != ETH_P_8021Q && ethertype != ETH_P_8021AD {
            break;
        }
        let vlan: &VlanHdr = or_malformed!(unsafe { view(start, end, offset) });
        ethertype = u16::from_be_bytes(vlan.ethertype);
        offset += VLAN_HDR_LEN;
    }

    match ethertype {
        ETH_P_IPV4 => parse_ipv4(start, end, packet_len, offset),
        ETH_P_IPV6 => parse_ipv6(start, end, packet_len, offset),
        _ => Parsed::NotGated,
    }
}

#[inline(always)]
fn parse_ipv4(start: usize, end: usize, packet_len: usize, l3_offset: usize) -> Parsed {
    let ip: &Ipv4Hdr = or_malformed!(unsafe { view(start, end, l3_offset) });
    if ip.version_ihl >> 4 != 4 {
        return Parsed::Malformed;
    }
    let header_len = ((ip.version_ihl & 0x0f) as usize) * 4;
    if header_len < IPV4_HDR_LEN {
        return Parsed::Malformed;
    }
    let total_len = u16::from_be_bytes(ip.total_len) as usize;
    if total_len < header_len {
        return Parsed::Malformed;
    }
    if ip.protocol != IPPROTO_TCP {
        return Parsed::NotGated;
    }
    // Only the first fragment (offset 0) carries the TCP header. Later
    // ones cannot rewrite it: Linux drops overlapping fragments.
    let frag = u16::from_be_bytes(ip.frag);
    if frag & 0x1fff != 0 {
        return Parsed::NotGated;
    }
    let l4_offset = l3_offset + header_len;
    let l4_len = (total_len - header_len) as u32;
    let more_fragments = frag & 0x2000 != 0;
    if more_fragments && l4_len < TCP_HDR_LEN as u32 {
        return tiny_fragment(start, end, l4_offset, l4_len, AddrAt::V4(&ip.src));
    }
    parse_tcp(
        start,
        end,
        packet_len,
        l3_offset,
        l4_offset,
        AddrAt::V4(&ip.src),
        AddrAt::V4(&ip.dst),
        l4_len,
    )
}

#[inline(always)]
fn parse_ipv6(start: usize, end: usize, packet_len: usize, l3_offset: usize) -> Parsed {
    let ip: &Ipv6Hdr = or_malformed!(unsafe { view(start, end, l3_offset) });
    if ip.version_class_flow[0] >> 4 != 6 {
        return Parsed::Malformed;
    }
    let mut next = ip.next_header;
    let mut offset = l3_offset + IPV6_HDR_LEN;
    // RFC 8200 section 4: each extension header names the type of the one
    // after it. The length of a header comes from its OWN type (AH counts
    // 4-octet units, RFC 4302 section 2.2; the others 8-octet units), never
    // from the type of the header that follows it.
    for _ in 0..MAX_IPV6_EXT_HEADERS {
        match next {
            IPPROTO_TCP => break,
            IPV6_HOPOPTS | IPV6_ROUTING | IPV6_DSTOPTS => {
                let ext: &Ipv6ExtHdr = or_malformed!(unsafe { view(start, end, offset) });
                next = ext.next_header;
                offset += (ext.len as usize + 1) * 8;
            }
            IPV6_AH => {
                let ext: &Ipv6ExtHdr = or_malformed!(unsafe { view(start, end, offset) });
                next = ext.next_header;
                offset += (ext.len as usize + 2) * 4;
            }
            IPV6_FRAGMENT => {
                let frag: &Ipv6FragHdr = or_malformed!(unsafe { view(start, end, offset) });
                if u16::from_be_bytes(frag.offset_flags) & 0xfff8 != 0 {
                    return Parsed::NotGated;
                }
                next = frag.next_header;
                offset += size_of::<Ipv6FragHdr>();
            }
            _ => return Parsed::NotGated,
        }
        // A chain that claims more than the packet holds is broken; one
        // that is whole but longer than the walk may hide a SYN.
        if offset >= packet_len {
            return Parsed::Malformed;
        }
        if offset > MAX_L4_OFFSET {
            return Parsed::Unwalkable;
        }
    }
    // The walk ran out of steps before reaching TCP: a chain no mail
    // client sends, and the host would still walk it to a TCP SYN.
    if next != IPPROTO_TCP {
        return Parsed::Unwalkable;
    }
    let ext_len = offset - l3_offset - IPV6_HDR_LEN;
    let payload_len = u16::from_be_bytes(ip.payload_len) as usize;
    if payload_len < ext_len {
        return Parsed::Malformed;
    }
    parse_tcp(
        start,
        end,
        packet_len,
        l3_offset,
        offset,
        AddrAt::V6(&ip.src),
        AddrAt::V6(&ip.dst),
        (payload_len - ext_len) as u32,
    )
}

/// The ports of a first fragment that stops inside the TCP header. A
/// fragment's payload is a multiple of 8 octets, so the ports are there;
/// a first fragment without them is impossible.
#[inline(always)]
fn tiny_fragment(start: usize, end: usize, l4_offset: usize, l4_len: u32, src: AddrAt) -> Parsed {
    if l4_len < 4 || l4_offset > MAX_L4_OFFSET {
        return Parsed::Malformed;
    }
    let ports: &[u8; 4] = or_malformed!(unsafe { view(start, end, l4_offset) });
    Parsed::TinyFragment {
        src,
        dst_port: u16::from_be_bytes([ports[2], ports[3]]),
    }
}

#[inline(always)]
#[allow(clippy::too_many_arguments)]
fn parse_tcp(
    start: usize,
    end: usize,
    packet_len: usize,
    l3_offset: usize,
    l4_offset: usize,
    src: AddrAt,
    dst: AddrAt,
    l4_len: u32,
) -> Parsed {
    if l4_offset > MAX_L4_OFFSET {
        return Parsed::Malformed;
    }
    let tcp: &TcpHdr = or_malformed!(unsafe { view(start, end, l4_offset) });
    let header_len = ((tcp.data_offset >> 4) as u32) * 4;
    if header_len < TCP_HDR_LEN as u32 {
        return Parsed::Malformed;
    }
    // The TCP header (options included) must lie inside the segment the IP
    // header announces, and that segment inside the frame: a SYN cut short
    // is not judged (and never answered with a RST acknowledging octets
    // that are not there).
    // The length is checked against the whole packet, not the readable
    // part: in TC a SYN's payload may lie outside the linear area.
    if header_len > l4_len || l4_offset + l4_len as usize > packet_len {
        return Parsed::Malformed;
    }
    // A connection opens only with SYN alone: the host discards SYN+RST and
    // SYN+FIN (RFC 9293 section 3.10.7.2 for RST), so those pass, and are
    // never answered.
    let opening = TCP_FLAG_SYN | TCP_FLAG_ACK | TCP_FLAG_RST | TCP_FLAG_FIN;
    if tcp.flags & opening != TCP_FLAG_SYN {
        return Parsed::NotGated;
    }
    Parsed::Syn(Syn {
        src,
        dst,
        src_port: u16::from_be_bytes(tcp.src_port),
        dst_port: u16::from_be_bytes(tcp.dst_port),
        seq: u32::from_be_bytes(tcp.seq),
        payload_len: l4_len.saturating_sub(header_len),
        l3_offset,
    })
}
