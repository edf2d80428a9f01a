//! The reply of `deny = reset`: the SYN is turned, in place, into a TCP
//! RST+ACK back to its sender, so a mail client fails at once with
//! "connection refused" instead of retrying until it times out.
//!
//! RFC 9293 section 3.10.7.1 (CLOSED state): "If the ACK bit is off,
//! sequence number zero is used, <SEQ=0><ACK=SEG.SEQ+SEG.LEN><CTL=RST,ACK>".
//! A SYN occupies one sequence number, so SEG.LEN is 1 plus its payload.
//!
//! The reply keeps the Ethernet and VLAN headers (addresses swapped) and
//! carries a minimal IP header (no options, no extension headers) and a
//! 20-octet TCP header, so it is never longer than the SYN it replaces.

use crate::{
    cursor::PacketMut,
    headers::{EthHdr, ETH_HDR_LEN, IPPROTO_TCP, IPV4_HDR_LEN, IPV6_HDR_LEN, TCP_HDR_LEN},
    parse::{Addr, Syn, MAX_VLAN_TAGS},
};

/// What the reply needs from the SYN, copied out of the packet: the reply
/// is written after the packet is resized, when references into the SYN
/// are no longer valid.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Reply {
    src: Addr,
    dst: Addr,
    src_port: u16,
    dst_port: u16,
    seq: u32,
    payload_len: u32,
    l3_offset: usize,
    l4_offset: usize,
}

const TCP_FLAGS_RST_ACK: u8 = 0x14;
const REPLY_TTL: u8 = 64;

impl Reply {
    #[inline(always)]
    pub fn of(syn: &Syn<'_>) -> Self {
        Self {
            src: syn.src.read(),
            dst: syn.dst.read(),
            src_port: syn.src_port,
            dst_port: syn.dst_port,
            seq: syn.seq,
            payload_len: syn.payload_len,
            l3_offset: syn.l3_offset,
            l4_offset: syn.l4_offset,
        }
    }

    /// Length of the reply frame.
    #[inline(always)]
    pub fn len(&self) -> usize {
        self.l3_offset + self.ip_header_len() + TCP_HDR_LEN
    }

    /// The reply never is empty; for clippy's `len_without_is_empty`.
    pub fn is_empty(&self) -> bool {
        false
    }

    /// Octets of IP options or IPv6 extension headers between the SYN's
    /// fixed IP header and its TCP header (TC cannot answer such a SYN:
    /// see the TC entry).
    #[inline(always)]
    pub fn extra_headers_len(&self) -> usize {
        self.l4_offset - self.l3_offset - self.ip_header_len()
    }

    #[inline(always)]
    fn ip_header_len(&self) -> usize {
        match self.src {
            Addr::V4(_) => IPV4_HDR_LEN,
            Addr::V6(_) => IPV6_HDR_LEN,
        }
    }

    /// Rewrites `frame`, at least `self.len()` octets long, into the
    /// RST+ACK reply; octets past the reply stay as they are.
    #[inline(always)]
    pub fn write(&self, frame: &mut PacketMut<'_>) -> Option<()> {
        let eth: EthHdr = frame.read(0)?;
        frame.write(0, eth.src)?;
        frame.write(6, eth.dst)?;
        let l3 = self.l3_offset;
        if l3 > ETH_HDR_LEN + MAX_VLAN_TAGS * 4 {
            return None;
        }
        match (self.src, self.dst) {
            (Addr::V4(src), Addr::V4(dst)) => {
                let (ip, tcp) = ipv4_reply(self, src, dst);
                frame.write(l3, ip)?;
                frame.write(l3 + IPV4_HDR_LEN, tcp)
            }
            (Addr::V6(src), Addr::V6(dst)) => {
                let (ip, tcp) = ipv6_reply(self, src, dst);
                frame.write(l3, ip)?;
                frame.write(l3 + IPV6_HDR_LEN, tcp)
            }
            _ => None,
        }
    }
}

/// Adds big-endian 16-bit words of `bytes` to a one's-complement sum.
#[inline(always)]
fn sum_words<const N: usize>(mut sum: u32, bytes: &[u8; N]) -> u32 {
    let mut i = 0;
    while i + 1 < N {
        sum += u16::from_be_bytes([bytes[i], bytes[i + 1]]) as u32;
        i += 2;
    }
    sum
}

/// Folds a 32-bit one's-complement sum to 16 bits and complements it.
#[inline(always)]
fn finish(mut sum: u32) -> u16 {
    sum = (sum & 0xffff) + (sum >> 16);
    sum = (sum & 0xffff) + (sum >> 16);
    !(sum as u16)
}

#[inline(always)]
fn tcp_header(syn: &Reply) -> [u8; TCP_HDR_LEN] {
    let ack = syn.seq.wrapping_add(1).wrapping_add(syn.payload_len);
    let sport = syn.dst_port.to_be_bytes();
    let dport = syn.src_port.to_be_bytes();
    let ack = ack.to_be_bytes();
    [
        sport[0],
        sport[1],
        dport[0],
        dport[1],
        0,
        0,
        0,
        0,
        ack[0],
        ack[1],
        ack[2],
        ack[3],
        (TCP_HDR_LEN as u8 / 4) << 4,
        TCP_FLAGS_RST_ACK,
        0,
        0,
        0,
        0,
        0,
        0,
    ]
}

/// The reply's TCP header with its checksum over the pseudo-header of the
/// reply (source and destination swapped back: the sum does not care).
#[inline(always)]
fn tcp_with_checksum<const N: usize>(
    syn: &Reply,
    src: &[u8; N],
    dst: &[u8; N],
) -> [u8; TCP_HDR_LEN] {
    let mut tcp = tcp_header(syn);
    let mut pseudo = sum_words(0, src);
    pseudo = sum_words(pseudo, dst);
    pseudo += IPPROTO_TCP as u32 + TCP_HDR_LEN as u32;
    let tcp_check = finish(sum_words(pseudo, &tcp)).to_be_bytes();
    tcp[16] = tcp_check[0];
    tcp[17] = tcp_check[1];
    tcp
}

/// The IPv4 header and TCP header of the reply, checksums filled in.
#[inline(always)]
fn ipv4_reply(syn: &Reply, src: [u8; 4], dst: [u8; 4]) -> ([u8; IPV4_HDR_LEN], [u8; TCP_HDR_LEN]) {
    let total = ((IPV4_HDR_LEN + TCP_HDR_LEN) as u16).to_be_bytes();
    // The reply goes back to the sender: its source is the SYN's destination.
    let mut ip = [
        0x45,
        0,
        total[0],
        total[1],
        0,
        0,
        0x40,
        0,
        REPLY_TTL,
        IPPROTO_TCP,
        0,
        0,
        dst[0],
        dst[1],
        dst[2],
        dst[3],
        src[0],
        src[1],
        src[2],
        src[3],
    ];
    let ip_check = finish(sum_words(0, &ip)).to_be_bytes();
    ip[10] = ip_check[0];
    ip[11] = ip_check[1];

    (ip, tcp_with_checksum(syn, &src, &dst))
}

/// The IPv6 header and TCP header of the reply, checksum filled in.
#[inline(always)]
fn ipv6_reply(
    syn: &Reply,
    src: [u8; 16],
    dst: [u8; 16],
) -> ([u8; IPV6_HDR_LEN], [u8; TCP_HDR_LEN]) {
    let mut ip = [0u8; IPV6_HDR_LEN];
    ip[0] = 0x60;
    ip[5] = TCP_HDR_LEN as u8;
    ip[6] = IPPROTO_TCP;
    ip[7] = REPLY_TTL;
    let mut i = 0;
    while i < 16 {
        ip[8 + i] = dst[i];
        ip[24 + i] = src[i];
        i += 1;
    }
    (ip, tcp_with_checksum(syn, &src, &dst))
}
