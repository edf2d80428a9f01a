//! Wire layouts of the headers the parser reads, as byte arrays (BPF has
//! no unaligned loads, and a packet promises no alignment).

use crate::cursor::Header;

pub const ETH_P_IPV4: u16 = 0x0800;
pub const ETH_P_IPV6: u16 = 0x86DD;
pub const ETH_P_8021Q: u16 = 0x8100;
pub const ETH_P_8021AD: u16 = 0x88A8;

pub const IPPROTO_TCP: u8 = 6;
pub const IPV6_HOPOPTS: u8 = 0;
pub const IPV6_ROUTING: u8 = 43;
pub const IPV6_FRAGMENT: u8 = 44;
pub const IPV6_AH: u8 = 51;
pub const IPV6_DSTOPTS: u8 = 60;

pub const TCP_FLAG_FIN: u8 = 0x01;
pub const TCP_FLAG_SYN: u8 = 0x02;
pub const TCP_FLAG_RST: u8 = 0x04;
pub const TCP_FLAG_ACK: u8 = 0x10;

pub const ETH_HDR_LEN: usize = 14;
pub const VLAN_HDR_LEN: usize = 4;
pub const IPV4_HDR_LEN: usize = 20;
pub const IPV6_HDR_LEN: usize = 40;
pub const IPV6_FRAG_HDR_LEN: usize = 8;
pub const TCP_HDR_LEN: usize = 20;
/// Ports, sequence and acknowledgment numbers, data offset and flags: the
/// part of a TCP header that says whether a segment opens a connection.
pub const TCP_FLAGS_END: usize = 14;

#[repr(C)]
#[derive(Clone, Copy)]
pub struct EthHdr {
    pub dst: [u8; 6],
    pub src: [u8; 6],
    pub ethertype: [u8; 2],
}

#[repr(C)]
#[derive(Clone, Copy)]
pub struct VlanHdr {
    pub tci: [u8; 2],
    pub ethertype: [u8; 2],
}

#[repr(C)]
#[derive(Clone, Copy)]
pub struct Ipv4Hdr {
    pub version_ihl: u8,
    pub tos: u8,
    pub total_len: [u8; 2],
    pub id: [u8; 2],
    pub frag: [u8; 2],
    pub ttl: u8,
    pub protocol: u8,
    pub check: [u8; 2],
    pub src: [u8; 4],
    pub dst: [u8; 4],
}

#[repr(C)]
#[derive(Clone, Copy)]
pub struct Ipv6Hdr {
    pub version_class_flow: [u8; 4],
    pub payload_len: [u8; 2],
    pub next_header: u8,
    pub hop_limit: u8,
    pub src: [u8; 16],
    pub dst: [u8; 16],
}

/// The first two octets shared by hop-by-hop, routing, destination options
/// and AH headers.
#[repr(C)]
#[derive(Clone, Copy)]
pub struct Ipv6ExtHdr {
    pub next_header: u8,
    pub len: u8,
}

#[repr(C)]
#[derive(Clone, Copy)]
pub struct Ipv6FragHdr {
    pub next_header: u8,
    pub reserved: u8,
    pub offset_flags: [u8; 2],
    pub id: [u8; 4],
}

/// The opening part of a TCP header, up to the flags.
#[repr(C)]
#[derive(Clone, Copy)]
pub struct TcpHead {
    pub src_port: [u8; 2],
    pub dst_port: [u8; 2],
    pub seq: [u8; 4],
    pub ack: [u8; 4],
    pub data_offset: u8,
    pub flags: u8,
}

// SAFETY: all of these are repr(C) structs of u8 and [u8; N] only.
unsafe impl Header for EthHdr {}
unsafe impl Header for VlanHdr {}
unsafe impl Header for Ipv4Hdr {}
unsafe impl Header for Ipv6Hdr {}
unsafe impl Header for Ipv6ExtHdr {}
unsafe impl Header for Ipv6FragHdr {}
unsafe impl Header for TcpHead {}

#[cfg(test)]
mod tests {
    use super::*;
    use core::mem::size_of;

    #[test]
    fn header_sizes_match_the_wire() {
        assert_eq!(size_of::<EthHdr>(), ETH_HDR_LEN);
        assert_eq!(size_of::<VlanHdr>(), VLAN_HDR_LEN);
        assert_eq!(size_of::<Ipv4Hdr>(), IPV4_HDR_LEN);
        assert_eq!(size_of::<Ipv6Hdr>(), IPV6_HDR_LEN);
        assert_eq!(size_of::<Ipv6FragHdr>(), IPV6_FRAG_HDR_LEN);
        assert_eq!(size_of::<TcpHead>(), TCP_FLAGS_END);
    }
}
