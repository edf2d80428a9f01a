//! [`TcpFrame::parse`]: an Ethernet frame with one whole TCP segment,
//! parsed and its lengths and checksums checked.

use std::{
    fmt,
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
};

use super::{
    ethertype, internet_checksum, ip_proto, transport_checksum, VlanTag, ETH_HDR_LEN, IPV4_HDR_LEN,
    IPV6_HDR_LEN, TCP_HDR_LEN, VLAN_TAG_LEN,
};

/// Why [`TcpFrame::parse`] refused a frame.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ParseError(pub String);

impl fmt::Display for ParseError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for ParseError {}

macro_rules! bail {
    ($($arg:tt)*) => {
        return Err(ParseError(format!($($arg)*)))
    };
}

/// The IPv4 header of a parsed frame.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ParsedIpv4 {
    pub src: Ipv4Addr,
    pub dst: Ipv4Addr,
    /// Header length in octets (IHL * 4).
    pub header_len: usize,
    pub total_len: u16,
    pub tos: u8,
    pub id: u16,
    pub dont_fragment: bool,
    pub ttl: u8,
    pub protocol: u8,
    pub checksum: u16,
    pub options: Vec<u8>,
}

/// The IPv6 header of a parsed frame.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ParsedIpv6 {
    pub src: Ipv6Addr,
    pub dst: Ipv6Addr,
    pub traffic_class: u8,
    pub flow_label: u32,
    pub payload_len: u16,
    pub hop_limit: u8,
    /// Types of the extension headers, in order.
    pub ext_kinds: Vec<u8>,
}

/// The network header of a parsed frame.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ParsedIp {
    V4(ParsedIpv4),
    V6(ParsedIpv6),
}

impl ParsedIp {
    pub fn src(&self) -> IpAddr {
        match self {
            Self::V4(ip) => ip.src.into(),
            Self::V6(ip) => ip.src.into(),
        }
    }

    pub fn dst(&self) -> IpAddr {
        match self {
            Self::V4(ip) => ip.dst.into(),
            Self::V6(ip) => ip.dst.into(),
        }
    }
}

/// The TCP header of a parsed frame.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ParsedTcp {
    pub src_port: u16,
    pub dst_port: u16,
    pub seq: u32,
    pub ack: u32,
    /// Data offset in 32-bit words.
    pub data_offset: u8,
    pub flags: u8,
    pub window: u16,
    pub checksum: u16,
    pub urgent: u16,
    pub options: Vec<u8>,
}

/// An Ethernet frame carrying one whole TCP segment over IPv4 or IPv6,
/// parsed and checked by [`TcpFrame::parse`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TcpFrame {
    pub dst_mac: [u8; 6],
    pub src_mac: [u8; 6],
    /// VLAN tags, outer first.
    pub vlans: Vec<VlanTag>,
    pub ip: ParsedIp,
    pub tcp: ParsedTcp,
    pub payload: Vec<u8>,
    /// Where the network header starts.
    pub l3_offset: usize,
    /// Where the TCP header starts.
    pub l4_offset: usize,
    /// Octets after the IP datagram (Ethernet padding).
    pub trailer_len: usize,
}

/// At most this many VLAN tags or IPv6 extension headers are walked.
const PARSE_MAX_CHAIN: usize = 16;

impl TcpFrame {
    /// Parses Ethernet, any number of VLAN tags (TPID 0x8100 or 0x88A8, up
    /// to 16), IPv4 or IPv6 (extension headers hop-by-hop, routing,
    /// destination options, AH and an unfragmented fragment header) and
    /// TCP, and checks on the way that:
    ///
    /// - every header lies inside the frame and the IP lengths fit in it;
    /// - the IPv4 header checksum is correct;
    /// - the packet is not a fragment;
    /// - the TCP data offset is at least 5 and fits in the segment;
    /// - the TCP checksum over the pseudo-header is correct (the IPv6
    ///   pseudo-header uses the destination of the IPv6 header, which is
    ///   the final one unless a routing header still has segments left).
    pub fn parse(frame: &[u8]) -> Result<Self, ParseError> {
        let get = |at: usize, len: usize, what: &str| -> Result<&[u8], ParseError> {
            match frame.get(at..at + len) {
                Some(bytes) => Ok(bytes),
                None => Err(ParseError(format!(
                    "{what} (octets {at}..{}) does not fit in the {}-octet frame",
                    at + len,
                    frame.len()
                ))),
            }
        };
        let be16 = |b: &[u8], at: usize| u16::from_be_bytes([b[at], b[at + 1]]);
        let be32 =
            |b: &[u8], at: usize| u32::from_be_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]]);

        let eth = get(0, ETH_HDR_LEN, "Ethernet header")?;
        let dst_mac: [u8; 6] = eth[0..6].try_into().unwrap();
        let src_mac: [u8; 6] = eth[6..12].try_into().unwrap();
        let mut kind = be16(eth, 12);
        let mut offset = ETH_HDR_LEN;
        let mut vlans = Vec::new();
        while kind == ethertype::VLAN_8021Q || kind == ethertype::VLAN_8021AD {
            if vlans.len() == PARSE_MAX_CHAIN {
                bail!("more than {PARSE_MAX_CHAIN} VLAN tags");
            }
            let tag = get(offset, VLAN_TAG_LEN, "VLAN tag")?;
            vlans.push(VlanTag {
                tpid: kind,
                tci: be16(tag, 0),
            });
            kind = be16(tag, 2);
            offset += VLAN_TAG_LEN;
        }
        let l3_offset = offset;

        let (ip, l4_offset, datagram_end) = match kind {
            ethertype::IPV4 => {
                let fixed = get(l3_offset, IPV4_HDR_LEN, "IPv4 header")?;
                if fixed[0] >> 4 != 4 {
                    bail!("IPv4 EtherType but IP version {}", fixed[0] >> 4);
                }
                let header_len = usize::from(fixed[0] & 0x0f) * 4;
                if header_len < IPV4_HDR_LEN {
                    bail!("IPv4 IHL {} is below 5", header_len / 4);
                }
                let header = get(l3_offset, header_len, "IPv4 header with options")?;
                let total_len = be16(header, 2);
                if usize::from(total_len) < header_len {
                    bail!("IPv4 total length {total_len} is below the header length {header_len}");
                }
                let datagram_end = l3_offset + usize::from(total_len);
                if datagram_end > frame.len() {
                    bail!(
                        "IPv4 total length {total_len} runs past the frame end ({} octets of IP)",
                        frame.len() - l3_offset
                    );
                }
                verify_checksum("IPv4 header checksum", header, 10, |h| {
                    internet_checksum(&[h])
                })?;
                let flags_frag = be16(header, 6);
                if flags_frag & 0x3fff != 0 {
                    bail!(
                        "IPv4 fragment (MF {}, offset {})",
                        flags_frag >> 13 & 1,
                        flags_frag & 0x1fff
                    );
                }
                if header[9] != ip_proto::TCP {
                    bail!("IPv4 protocol {} is not TCP", header[9]);
                }
                let ip = ParsedIpv4 {
                    src: Ipv4Addr::from(be32(header, 12)),
                    dst: Ipv4Addr::from(be32(header, 16)),
                    header_len,
                    total_len,
                    tos: header[1],
                    id: be16(header, 4),
                    dont_fragment: flags_frag & 0x4000 != 0,
                    ttl: header[8],
                    protocol: header[9],
                    checksum: be16(header, 10),
                    options: header[IPV4_HDR_LEN..].to_vec(),
                };
                (ParsedIp::V4(ip), l3_offset + header_len, datagram_end)
            }
            ethertype::IPV6 => {
                let header = get(l3_offset, IPV6_HDR_LEN, "IPv6 header")?;
                if header[0] >> 4 != 6 {
                    bail!("IPv6 EtherType but IP version {}", header[0] >> 4);
                }
                let vcf = be32(header, 0);
                let payload_len = be16(header, 4);
                // Payload length 0 before a hop-by-hop header: Linux takes
                // the length from the frame (RFC 2675 without a jumbo
                // option).
                let datagram_end = if payload_len == 0 && header[6] == ip_proto::HOP_BY_HOP {
                    frame.len()
                } else {
                    l3_offset + IPV6_HDR_LEN + usize::from(payload_len)
                };
                if datagram_end > frame.len() {
                    bail!(
                        "IPv6 payload length {payload_len} runs past the frame end ({} octets of payload)",
                        frame.len() - l3_offset - IPV6_HDR_LEN
                    );
                }
                let mut next = header[6];
                let mut at = l3_offset + IPV6_HDR_LEN;
                let mut ext_kinds = Vec::new();
                while next != ip_proto::TCP {
                    if ext_kinds.len() == PARSE_MAX_CHAIN {
                        bail!("more than {PARSE_MAX_CHAIN} IPv6 extension headers");
                    }
                    let ext = get(at, 2, "IPv6 extension header")?;
                    let len = match next {
                        ip_proto::HOP_BY_HOP | ip_proto::ROUTING | ip_proto::DEST_OPTS => {
                            (usize::from(ext[1]) + 1) * 8
                        }
                        ip_proto::AH => (usize::from(ext[1]) + 2) * 4,
                        ip_proto::FRAGMENT => {
                            let frag = get(at, 8, "IPv6 fragment header")?;
                            let offset_flags = be16(frag, 2);
                            if offset_flags & 0xfff9 != 0 {
                                bail!(
                                    "IPv6 fragment (M {}, offset {})",
                                    offset_flags & 1,
                                    offset_flags >> 3
                                );
                            }
                            8
                        }
                        other => bail!(
                            "IPv6 next header {other} is neither TCP nor a known extension header"
                        ),
                    };
                    get(at, len, "IPv6 extension header body")?;
                    ext_kinds.push(next);
                    next = ext[0];
                    at += len;
                }
                if at > datagram_end {
                    bail!("IPv6 extension headers run past the payload length {payload_len}");
                }
                let ip = ParsedIpv6 {
                    src: Ipv6Addr::from(<[u8; 16]>::try_from(&header[8..24]).unwrap()),
                    dst: Ipv6Addr::from(<[u8; 16]>::try_from(&header[24..40]).unwrap()),
                    traffic_class: (vcf >> 20) as u8,
                    flow_label: vcf & 0xfffff,
                    payload_len,
                    hop_limit: header[7],
                    ext_kinds,
                };
                (ParsedIp::V6(ip), at, datagram_end)
            }
            other => bail!("EtherType {other:#06x} is neither IPv4 nor IPv6"),
        };

        let segment = &frame[l4_offset..datagram_end];
        if segment.len() < TCP_HDR_LEN {
            bail!(
                "TCP segment of {} octets is shorter than a TCP header",
                segment.len()
            );
        }
        let data_offset = segment[12] >> 4;
        let header_len = usize::from(data_offset) * 4;
        if header_len < TCP_HDR_LEN {
            bail!("TCP data offset {data_offset} is below 5");
        }
        if header_len > segment.len() {
            bail!(
                "TCP data offset {data_offset} runs past the {}-octet segment",
                segment.len()
            );
        }
        verify_checksum("TCP checksum", segment, 16, |s| {
            transport_checksum(ip.src(), ip.dst(), ip_proto::TCP, s)
        })?;
        let tcp = ParsedTcp {
            src_port: be16(segment, 0),
            dst_port: be16(segment, 2),
            seq: be32(segment, 4),
            ack: be32(segment, 8),
            data_offset,
            flags: segment[13],
            window: be16(segment, 14),
            checksum: be16(segment, 16),
            urgent: be16(segment, 18),
            options: segment[TCP_HDR_LEN..header_len].to_vec(),
        };
        Ok(Self {
            dst_mac,
            src_mac,
            vlans,
            ip,
            tcp,
            payload: segment[header_len..].to_vec(),
            l3_offset,
            l4_offset,
            trailer_len: frame.len() - datagram_end,
        })
    }
}

/// Checks the 16-bit checksum field at `at` of `data`: `checksum` over
/// `data` as it is must give 0. Else the error names `what`, the value in
/// the field and the one it should hold (`checksum` over `data` with the
/// field zeroed).
fn verify_checksum(
    what: &str,
    data: &[u8],
    at: usize,
    checksum: impl Fn(&[u8]) -> u16,
) -> Result<(), ParseError> {
    if checksum(data) == 0 {
        return Ok(());
    }
    let mut zeroed = data.to_vec();
    zeroed[at..at + 2].fill(0);
    Err(ParseError(format!(
        "{what} is {:#06x}, should be {:#06x}",
        u16::from_be_bytes([data[at], data[at + 1]]),
        checksum(&zeroed)
    )))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::packets::{
        tcp_flags, test_addresses::*, Ipv6Ext, PacketBuilder, ETH_MIN_FRAME_LEN,
        IPV4_OPTION_ROUTER_ALERT, LINUX_SYN_OPTIONS,
    };

    #[test]
    fn built_frames_parse_back() {
        let frame = PacketBuilder::ipv4(C4, S4)
            .qinq(10, 20)
            .ipv4_options(&IPV4_OPTION_ROUTER_ALERT)
            .tcp(40000, 25, tcp_flags::SYN)
            .seq(7)
            .tcp_options(&LINUX_SYN_OPTIONS)
            .payload(b"hello")
            .pad_to(ETH_MIN_FRAME_LEN)
            .build();
        let p = TcpFrame::parse(&frame).expect("IPv4 frame parses");
        assert_eq!(p.vlans, vec![VlanTag::dot1ad(10), VlanTag::dot1q(20)]);
        assert_eq!(p.l3_offset, 22);
        assert_eq!(p.l4_offset, 22 + 24);
        assert_eq!(p.ip.src(), IpAddr::from(C4));
        assert_eq!(p.tcp.seq, 7);
        assert_eq!(p.tcp.data_offset, 10);
        assert_eq!(p.payload, b"hello");
        assert_eq!(p.trailer_len, 0);

        let frame = PacketBuilder::ipv6(C6, S6)
            .exts([
                Ipv6Ext::HOP_BY_HOP,
                Ipv6Ext::ROUTING,
                Ipv6Ext::Fragment {
                    offset: 0,
                    more: false,
                    id: 9,
                },
                Ipv6Ext::AH,
                Ipv6Ext::DestOpts { len: 2 },
            ])
            .tcp(40000, 587, tcp_flags::SYN)
            .build();
        let p = TcpFrame::parse(&frame).expect("IPv6 frame parses");
        match &p.ip {
            ParsedIp::V6(ip) => assert_eq!(ip.ext_kinds, vec![0, 43, 44, 51, 60]),
            other => panic!("not IPv6: {other:?}"),
        }
        assert_eq!(p.l4_offset, 14 + 40 + 8 + 8 + 8 + 24 + 24);
    }

    #[test]
    fn parser_catches_bad_checksums() {
        let mut frame = PacketBuilder::ipv4(C4, S4)
            .tcp(1, 25, tcp_flags::SYN)
            .build();
        frame[14 + 8] ^= 1; // TTL
        let err = TcpFrame::parse(&frame).unwrap_err();
        assert!(err.0.contains("IPv4 header checksum"), "{err}");

        let mut frame = PacketBuilder::ipv6(C6, S6)
            .tcp(1, 25, tcp_flags::SYN)
            .build();
        frame[14 + 40 + 4] ^= 1; // sequence number
        let err = TcpFrame::parse(&frame).unwrap_err();
        assert!(err.0.contains("TCP checksum"), "{err}");
    }
}
