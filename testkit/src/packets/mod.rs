//! Crafted Ethernet frames for BPF_PROG_TEST_RUN, and an independent parser
//! that checks the frames the gate writes back.
//!
//! The builder covers what the gate has to tell apart: 0, 1 or 2 (or more)
//! VLAN tags, IPv4 with options and fragmentation fields, IPv6 with a chain
//! of extension headers, TCP with any flags, options and payload, and
//! non-TCP traffic (UDP, ICMP, ARP). Lengths and checksums are filled in
//! from the bytes actually written, unless a test overrides a field on
//! purpose to make a malformed packet.
//!
//! ```
//! use testkit::packets::{tcp_flags, PacketBuilder, TcpFrame, VlanTag};
//! let frame = PacketBuilder::ipv4([203, 0, 113, 7].into(), [10, 0, 0, 25].into())
//!     .vlan(VlanTag::dot1ad(100))
//!     .vlan(VlanTag::dot1q(200))
//!     .tcp(40000, 25, tcp_flags::SYN)
//!     .seq(1000)
//!     .build();
//! let parsed = TcpFrame::parse(&frame).unwrap();
//! assert_eq!(parsed.tcp.dst_port, 25);
//! assert_eq!(parsed.vlans.len(), 2);
//! ```
//!
//! The checksum code ([`internet_checksum`], [`transport_checksum`]) is
//! written independently of the kernel program's
//! (RFC 1071 one's-complement sum, RFC 793 / RFC 8200 pseudo-headers), so a
//! reply that passes [`TcpFrame::parse`] was checked by a second
//! implementation.

mod builder;
mod checksum;
mod parse;

pub use builder::{Ipv6Ext, PacketBuilder};
pub use checksum::{internet_checksum, transport_checksum};
pub use parse::{ParseError, ParsedIp, ParsedIpv4, ParsedIpv6, ParsedTcp, TcpFrame};

/// EtherType values.
pub mod ethertype {
    pub const IPV4: u16 = 0x0800;
    pub const ARP: u16 = 0x0806;
    pub const IPV6: u16 = 0x86DD;
    /// IEEE 802.1Q customer VLAN tag (also the inner tag of QinQ).
    pub const VLAN_8021Q: u16 = 0x8100;
    /// IEEE 802.1ad service VLAN tag (the outer tag of QinQ).
    pub const VLAN_8021AD: u16 = 0x88A8;
}

/// IP protocol numbers and IPv6 next-header values.
pub mod ip_proto {
    pub const HOP_BY_HOP: u8 = 0;
    pub const ICMP: u8 = 1;
    pub const TCP: u8 = 6;
    pub const UDP: u8 = 17;
    pub const ROUTING: u8 = 43;
    pub const FRAGMENT: u8 = 44;
    pub const AH: u8 = 51;
    pub const ICMPV6: u8 = 58;
    pub const NO_NEXT_HEADER: u8 = 59;
    pub const DEST_OPTS: u8 = 60;
}

/// TCP flag bits (the 13th octet of the TCP header).
pub mod tcp_flags {
    pub const FIN: u8 = 0x01;
    pub const SYN: u8 = 0x02;
    pub const RST: u8 = 0x04;
    pub const PSH: u8 = 0x08;
    pub const ACK: u8 = 0x10;
    pub const URG: u8 = 0x20;
    pub const ECE: u8 = 0x40;
    pub const CWR: u8 = 0x80;
}

pub const ETH_HDR_LEN: usize = 14;
pub const VLAN_TAG_LEN: usize = 4;
pub const IPV4_HDR_LEN: usize = 20;
/// Largest IPv4 header: IHL 15.
pub const IPV4_MAX_HDR_LEN: usize = 60;
pub const IPV6_HDR_LEN: usize = 40;
pub const TCP_HDR_LEN: usize = 20;
pub const UDP_HDR_LEN: usize = 8;
/// Smallest Ethernet frame without FCS; shorter frames are padded on the wire.
pub const ETH_MIN_FRAME_LEN: usize = 60;

/// Source MAC of built frames unless [`PacketBuilder::macs`] says otherwise
/// (locally administered).
pub const DEFAULT_SRC_MAC: [u8; 6] = [0x02, 0x00, 0x00, 0x00, 0x00, 0x01];
/// Destination MAC of built frames unless [`PacketBuilder::macs`] says otherwise.
pub const DEFAULT_DST_MAC: [u8; 6] = [0x02, 0x00, 0x00, 0x00, 0x00, 0x02];

/// The options a Linux client puts in a SYN: MSS 1460, SACK permitted,
/// timestamps, NOP, window scale 7 (20 octets, so data offset 10).
pub const LINUX_SYN_OPTIONS: [u8; 20] = [
    0x02, 0x04, 0x05, 0xb4, // MSS 1460
    0x04, 0x02, // SACK permitted
    0x08, 0x0a, 0x00, 0x01, 0x02, 0x03, 0x00, 0x00, 0x00, 0x00, // timestamps
    0x01, // NOP
    0x03, 0x03, 0x07, // window scale 7
];

/// IPv4 Router Alert option (RFC 2113), 4 octets.
pub const IPV4_OPTION_ROUTER_ALERT: [u8; 4] = [0x94, 0x04, 0x00, 0x00];
/// IPv4 No-Operation option, 1 octet.
pub const IPV4_OPTION_NOP: u8 = 0x01;

/// One VLAN tag: its TPID (the EtherType that announces it) and TCI.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct VlanTag {
    /// [`ethertype::VLAN_8021Q`] or [`ethertype::VLAN_8021AD`] (any value
    /// is written as given).
    pub tpid: u16,
    /// Priority (3 bits), drop eligible (1 bit), VLAN id (12 bits).
    pub tci: u16,
}

impl VlanTag {
    /// An 802.1Q tag with VLAN id `vid` and priority 0.
    pub fn dot1q(vid: u16) -> Self {
        Self {
            tpid: ethertype::VLAN_8021Q,
            tci: vid & 0x0fff,
        }
    }

    /// An 802.1ad (QinQ service) tag with VLAN id `vid` and priority 0.
    pub fn dot1ad(vid: u16) -> Self {
        Self {
            tpid: ethertype::VLAN_8021AD,
            tci: vid & 0x0fff,
        }
    }

    /// The same tag with priority code point `pcp` (0..=7).
    pub fn with_priority(self, pcp: u8) -> Self {
        Self {
            tci: (self.tci & 0x1fff) | (u16::from(pcp & 7) << 13),
            ..self
        }
    }

    /// The 12-bit VLAN id.
    pub fn vid(&self) -> u16 {
        self.tci & 0x0fff
    }
}

/// Addresses of the unit tests' frames.
#[cfg(test)]
mod test_addresses {
    use std::net::{Ipv4Addr, Ipv6Addr};

    pub const C4: Ipv4Addr = Ipv4Addr::new(203, 0, 113, 7);
    pub const S4: Ipv4Addr = Ipv4Addr::new(10, 0, 0, 25);
    pub const C6: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 0xbad, 0, 0, 0, 0, 7);
    pub const S6: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 0x25, 0, 0, 0, 0, 0x25);
}
