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
//! The checksum code here is written independently of the kernel program's
//! (RFC 1071 one's-complement sum, RFC 793 / RFC 8200 pseudo-headers), so a
//! reply that passes [`TcpFrame::parse`] was checked by a second
//! implementation.

use std::{
    fmt,
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
};

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

/// An IPv6 extension header, as [`PacketBuilder::ext`] writes it.
///
/// The length fields are the raw header fields, so a test can build exactly
/// the chain it wants: hop-by-hop, routing and destination options count
/// 8-octet units not including the first 8 octets (RFC 8200 section 4.3),
/// AH counts 4-octet units minus 2 (RFC 4302 section 2.2), the fragment
/// header is always 8 octets.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Ipv6Ext {
    /// Hop-by-hop options (next header 0), `(len + 1) * 8` octets, filled
    /// with padding options.
    HopByHop { len: u8 },
    /// Routing header (43), `(len + 1) * 8` octets, routing type 253
    /// (experimental, RFC 4727) with segments left 0, so every node
    /// ignores it and the destination address stays final.
    Routing { len: u8 },
    /// Destination options (60), `(len + 1) * 8` octets, padding options.
    DestOpts { len: u8 },
    /// Fragment header (44): `offset` in 8-octet units (13 bits), the M
    /// (more fragments) flag and the identification.
    Fragment { offset: u16, more: bool, id: u32 },
    /// Authentication header (51), `(len + 2) * 4` octets: SPI, sequence
    /// number and a zero ICV. `len: 4` is the common 12-octet ICV
    /// (HMAC-SHA1-96).
    Ah { len: u8 },
    /// Any header of type `kind`: `bytes` is written as given except that
    /// its first octet is replaced with the next-header value. It must be
    /// at least 1 octet long.
    Raw { kind: u8, bytes: Vec<u8> },
}

impl Ipv6Ext {
    /// Hop-by-hop options of the smallest size (8 octets).
    pub const HOP_BY_HOP: Self = Self::HopByHop { len: 0 };
    /// Destination options of the smallest size (8 octets).
    pub const DEST_OPTS: Self = Self::DestOpts { len: 0 };
    /// Routing header of the smallest size (8 octets).
    pub const ROUTING: Self = Self::Routing { len: 0 };
    /// AH with a 12-octet ICV (24 octets).
    pub const AH: Self = Self::Ah { len: 4 };

    /// A fragment header of the first fragment (offset 0, more fragments).
    pub fn first_fragment(id: u32) -> Self {
        Self::Fragment {
            offset: 0,
            more: true,
            id,
        }
    }

    /// The next-header value that announces this header.
    pub fn kind(&self) -> u8 {
        match self {
            Self::HopByHop { .. } => ip_proto::HOP_BY_HOP,
            Self::Routing { .. } => ip_proto::ROUTING,
            Self::DestOpts { .. } => ip_proto::DEST_OPTS,
            Self::Fragment { .. } => ip_proto::FRAGMENT,
            Self::Ah { .. } => ip_proto::AH,
            Self::Raw { kind, .. } => *kind,
        }
    }

    /// Octets this header occupies in the packet.
    pub fn wire_len(&self) -> usize {
        match self {
            Self::HopByHop { len } | Self::Routing { len } | Self::DestOpts { len } => {
                (usize::from(*len) + 1) * 8
            }
            Self::Fragment { .. } => 8,
            Self::Ah { len } => (usize::from(*len) + 2) * 4,
            Self::Raw { bytes, .. } => bytes.len(),
        }
    }

    fn write(&self, next: u8, out: &mut Vec<u8>) {
        let start = out.len();
        match self {
            Self::HopByHop { len } | Self::DestOpts { len } => {
                out.extend_from_slice(&[next, *len]);
                write_padding_options(self.wire_len() - 2, out);
            }
            Self::Routing { len } => {
                out.extend_from_slice(&[next, *len, 253, 0]);
                out.resize(start + self.wire_len(), 0);
            }
            Self::Fragment { offset, more, id } => {
                let offset_flags = ((offset & 0x1fff) << 3) | u16::from(*more);
                out.extend_from_slice(&[next, 0]);
                out.extend_from_slice(&offset_flags.to_be_bytes());
                out.extend_from_slice(&id.to_be_bytes());
            }
            Self::Ah { len } => {
                out.extend_from_slice(&[next, *len, 0, 0]);
                // SPI and sequence number, as far as the length allows.
                let fixed = [0x00, 0x00, 0x10, 0x00, 0x00, 0x00, 0x00, 0x01];
                let total = self.wire_len();
                out.extend_from_slice(&fixed[..fixed.len().min(total - 4)]);
                out.resize(start + total, 0);
            }
            Self::Raw { bytes, .. } => {
                assert!(!bytes.is_empty(), "Ipv6Ext::Raw needs at least 1 octet");
                out.push(next);
                out.extend_from_slice(&bytes[1..]);
            }
        }
        debug_assert_eq!(out.len() - start, self.wire_len());
    }
}

/// Fills `n` octets of an options area with Pad1/PadN (RFC 8200 4.2).
fn write_padding_options(n: usize, out: &mut Vec<u8>) {
    let mut left = n;
    while left > 0 {
        if left == 1 {
            out.push(0); // Pad1
            left = 0;
        } else {
            let chunk = left.min(257);
            out.push(1); // PadN
            out.push((chunk - 2) as u8);
            out.extend(std::iter::repeat_n(0, chunk - 2));
            left -= chunk;
        }
    }
}

#[derive(Clone, Debug)]
struct Ipv4Spec {
    src: Ipv4Addr,
    dst: Ipv4Addr,
    tos: u8,
    id: u16,
    dont_fragment: bool,
    more_fragments: bool,
    /// In 8-octet units.
    fragment_offset: u16,
    ttl: u8,
    options: Vec<u8>,
    ihl_override: Option<u8>,
    total_len_override: Option<u16>,
    protocol_override: Option<u8>,
}

#[derive(Clone, Debug)]
struct Ipv6Spec {
    src: Ipv6Addr,
    dst: Ipv6Addr,
    traffic_class: u8,
    flow_label: u32,
    hop_limit: u8,
    exts: Vec<Ipv6Ext>,
    payload_len_override: Option<u16>,
}

#[derive(Clone, Debug)]
enum Network {
    Ipv4(Ipv4Spec),
    Ipv6(Ipv6Spec),
    Arp {
        operation: u16,
        sender: Ipv4Addr,
        target: Ipv4Addr,
    },
    Raw {
        ethertype: u16,
    },
}

#[derive(Clone, Debug)]
struct TcpSpec {
    src_port: u16,
    dst_port: u16,
    seq: u32,
    ack: u32,
    flags: u8,
    window: u16,
    urgent: u16,
    options: Vec<u8>,
    data_offset_override: Option<u8>,
}

#[derive(Clone, Debug)]
enum Transport {
    /// Only the payload follows the IP header (protocol 59 "no next header"
    /// for IPv6, 255 for IPv4 unless overridden).
    None,
    Tcp(TcpSpec),
    Udp {
        src_port: u16,
        dst_port: u16,
    },
    /// ICMP echo request (IPv4) or ICMPv6 echo request (IPv6).
    IcmpEcho {
        id: u16,
        seq: u16,
    },
    /// Bytes of protocol `protocol` written as given (no checksum).
    Raw {
        protocol: u8,
    },
}

/// Builds one Ethernet frame (no FCS) layer by layer.
///
/// Start with [`PacketBuilder::ipv4`], [`PacketBuilder::ipv6`],
/// [`PacketBuilder::arp_request`] or [`PacketBuilder::ethernet`], add
/// VLAN tags, IP details and a transport ([`PacketBuilder::tcp`],
/// [`PacketBuilder::udp`], [`PacketBuilder::icmp_echo`]), then
/// [`PacketBuilder::build`]. Methods that only make sense for one network
/// protocol panic if used with another: these are test helpers, and a
/// wrong packet should stop the test at once.
///
/// Lengths (IPv4 total length and IHL, IPv6 payload length, TCP data
/// offset) and checksums (IPv4 header, TCP, UDP, ICMP, ICMPv6) are
/// computed from what is written. The `*_override` style methods
/// ([`PacketBuilder::ipv4_ihl`], [`PacketBuilder::ipv4_total_len`],
/// [`PacketBuilder::ipv6_payload_len`], [`PacketBuilder::tcp_data_offset`],
/// [`PacketBuilder::ip_version`]) write a given value instead; checksums
/// are still computed over the bytes written, so only the overridden field
/// is wrong.
#[derive(Clone, Debug)]
pub struct PacketBuilder {
    src_mac: [u8; 6],
    dst_mac: [u8; 6],
    vlans: Vec<VlanTag>,
    network: Network,
    version_override: Option<u8>,
    transport: Transport,
    payload: Vec<u8>,
    pad_to: usize,
}

impl PacketBuilder {
    fn with_network(network: Network) -> Self {
        Self {
            src_mac: DEFAULT_SRC_MAC,
            dst_mac: DEFAULT_DST_MAC,
            vlans: Vec::new(),
            network,
            version_override: None,
            transport: Transport::None,
            payload: Vec::new(),
            pad_to: 0,
        }
    }

    /// An IPv4 packet from `src` to `dst` (TTL 64, DF set, no options).
    pub fn ipv4(src: Ipv4Addr, dst: Ipv4Addr) -> Self {
        Self::with_network(Network::Ipv4(Ipv4Spec {
            src,
            dst,
            tos: 0,
            id: 0x1234,
            dont_fragment: true,
            more_fragments: false,
            fragment_offset: 0,
            ttl: 64,
            options: Vec::new(),
            ihl_override: None,
            total_len_override: None,
            protocol_override: None,
        }))
    }

    /// An IPv6 packet from `src` to `dst` (hop limit 64, no extension
    /// headers).
    pub fn ipv6(src: Ipv6Addr, dst: Ipv6Addr) -> Self {
        Self::with_network(Network::Ipv6(Ipv6Spec {
            src,
            dst,
            traffic_class: 0,
            flow_label: 0,
            hop_limit: 64,
            exts: Vec::new(),
            payload_len_override: None,
        }))
    }

    /// An IPv4 or IPv6 packet, by the family of the addresses.
    ///
    /// # Panics
    /// If `src` and `dst` are of different families.
    pub fn ip(src: IpAddr, dst: IpAddr) -> Self {
        match (src, dst) {
            (IpAddr::V4(s), IpAddr::V4(d)) => Self::ipv4(s, d),
            (IpAddr::V6(s), IpAddr::V6(d)) => Self::ipv6(s, d),
            _ => panic!("PacketBuilder::ip: {src} and {dst} are of different families"),
        }
    }

    /// An ARP request "who has `target`? tell `sender`", sent to the
    /// broadcast address from the builder's source MAC.
    pub fn arp_request(sender: Ipv4Addr, target: Ipv4Addr) -> Self {
        let mut b = Self::with_network(Network::Arp {
            operation: 1,
            sender,
            target,
        });
        b.dst_mac = [0xff; 6];
        b
    }

    /// A frame of any EtherType whose body is the payload (set it with
    /// [`PacketBuilder::payload`]).
    pub fn ethernet(ethertype: u16) -> Self {
        Self::with_network(Network::Raw { ethertype })
    }

    /// Sets the source and destination MAC addresses.
    pub fn macs(mut self, src: [u8; 6], dst: [u8; 6]) -> Self {
        self.src_mac = src;
        self.dst_mac = dst;
        self
    }

    /// Adds a VLAN tag inside the ones already added: the first call gives
    /// the outer tag.
    pub fn vlan(mut self, tag: VlanTag) -> Self {
        self.vlans.push(tag);
        self
    }

    /// Adds an 802.1ad outer tag and an 802.1Q inner tag (QinQ).
    pub fn qinq(self, outer_vid: u16, inner_vid: u16) -> Self {
        self.vlan(VlanTag::dot1ad(outer_vid))
            .vlan(VlanTag::dot1q(inner_vid))
    }

    /// Pads the frame with zero octets after the IP datagram up to `len`
    /// octets, as a NIC does for frames shorter than
    /// [`ETH_MIN_FRAME_LEN`]. A frame already that long is left alone.
    pub fn pad_to(mut self, len: usize) -> Self {
        self.pad_to = len;
        self
    }

    fn ipv4_spec(&mut self, what: &str) -> &mut Ipv4Spec {
        match &mut self.network {
            Network::Ipv4(spec) => spec,
            _ => panic!("PacketBuilder::{what} needs an IPv4 packet"),
        }
    }

    fn ipv6_spec(&mut self, what: &str) -> &mut Ipv6Spec {
        match &mut self.network {
            Network::Ipv6(spec) => spec,
            _ => panic!("PacketBuilder::{what} needs an IPv6 packet"),
        }
    }

    /// Sets the IPv4 TTL or the IPv6 hop limit.
    pub fn ttl(mut self, ttl: u8) -> Self {
        match &mut self.network {
            Network::Ipv4(spec) => spec.ttl = ttl,
            Network::Ipv6(spec) => spec.hop_limit = ttl,
            _ => panic!("PacketBuilder::ttl needs an IP packet"),
        }
        self
    }

    /// Sets the IPv4 TOS or IPv6 traffic class octet.
    pub fn tos(mut self, tos: u8) -> Self {
        match &mut self.network {
            Network::Ipv4(spec) => spec.tos = tos,
            Network::Ipv6(spec) => spec.traffic_class = tos,
            _ => panic!("PacketBuilder::tos needs an IP packet"),
        }
        self
    }

    /// Sets the IPv6 flow label (20 bits).
    pub fn flow_label(mut self, label: u32) -> Self {
        self.ipv6_spec("flow_label").flow_label = label & 0xfffff;
        self
    }

    /// Sets the IPv4 identification.
    pub fn ipv4_id(mut self, id: u16) -> Self {
        self.ipv4_spec("ipv4_id").id = id;
        self
    }

    /// Sets the IPv4 options; they are padded with End-of-Option-List
    /// octets to a multiple of 4, which raises IHL.
    ///
    /// # Panics
    /// If the padded options exceed 40 octets.
    pub fn ipv4_options(mut self, options: &[u8]) -> Self {
        let mut padded = options.to_vec();
        padded.resize(options.len().div_ceil(4) * 4, 0);
        assert!(
            padded.len() <= IPV4_MAX_HDR_LEN - IPV4_HDR_LEN,
            "IPv4 options longer than 40 octets"
        );
        self.ipv4_spec("ipv4_options").options = padded;
        self
    }

    /// Sets the IPv4 fragment offset (in 8-octet units, 13 bits) and the MF
    /// flag. DF is cleared, as fragments cannot have it.
    pub fn ipv4_fragment(mut self, offset_units: u16, more_fragments: bool) -> Self {
        let spec = self.ipv4_spec("ipv4_fragment");
        spec.fragment_offset = offset_units & 0x1fff;
        spec.more_fragments = more_fragments;
        spec.dont_fragment = false;
        self
    }

    /// Sets the IPv4 DF flag.
    pub fn dont_fragment(mut self, df: bool) -> Self {
        self.ipv4_spec("dont_fragment").dont_fragment = df;
        self
    }

    /// Writes `ihl` (4 bits) as the IPv4 header length field instead of the
    /// real one. The header written is still 20 octets plus options.
    pub fn ipv4_ihl(mut self, ihl: u8) -> Self {
        self.ipv4_spec("ipv4_ihl").ihl_override = Some(ihl & 0x0f);
        self
    }

    /// Writes `len` as the IPv4 total length instead of the real one.
    pub fn ipv4_total_len(mut self, len: u16) -> Self {
        self.ipv4_spec("ipv4_total_len").total_len_override = Some(len);
        self
    }

    /// Writes `protocol` as the IPv4 protocol field instead of the one of
    /// the transport.
    pub fn ipv4_protocol(mut self, protocol: u8) -> Self {
        self.ipv4_spec("ipv4_protocol").protocol_override = Some(protocol);
        self
    }

    /// Writes `version` (4 bits) as the IP version instead of 4 or 6.
    pub fn ip_version(mut self, version: u8) -> Self {
        self.version_override = Some(version & 0x0f);
        self
    }

    /// Appends an IPv6 extension header after the ones already added.
    pub fn ext(mut self, ext: Ipv6Ext) -> Self {
        self.ipv6_spec("ext").exts.push(ext);
        self
    }

    /// Appends IPv6 extension headers in order.
    pub fn exts(mut self, exts: impl IntoIterator<Item = Ipv6Ext>) -> Self {
        self.ipv6_spec("exts").exts.extend(exts);
        self
    }

    /// Writes `len` as the IPv6 payload length instead of the real one.
    pub fn ipv6_payload_len(mut self, len: u16) -> Self {
        self.ipv6_spec("ipv6_payload_len").payload_len_override = Some(len);
        self
    }

    /// Makes the transport TCP from `src_port` to `dst_port` with `flags`
    /// (see [`tcp_flags`]): sequence number 1, acknowledgment number 0
    /// unless ACK is among the flags (then 1), window 64240, no options.
    pub fn tcp(mut self, src_port: u16, dst_port: u16, flags: u8) -> Self {
        self.transport = Transport::Tcp(TcpSpec {
            src_port,
            dst_port,
            seq: 1,
            ack: u32::from(flags & tcp_flags::ACK != 0),
            flags,
            window: 64240,
            urgent: 0,
            options: Vec::new(),
            data_offset_override: None,
        });
        self
    }

    fn tcp_spec(&mut self, what: &str) -> &mut TcpSpec {
        match &mut self.transport {
            Transport::Tcp(spec) => spec,
            _ => panic!("PacketBuilder::{what} needs a TCP transport: call .tcp() first"),
        }
    }

    /// Sets the TCP sequence number.
    pub fn seq(mut self, seq: u32) -> Self {
        self.tcp_spec("seq").seq = seq;
        self
    }

    /// Sets the TCP acknowledgment number (the ACK flag is left as given).
    pub fn ack_number(mut self, ack: u32) -> Self {
        self.tcp_spec("ack_number").ack = ack;
        self
    }

    /// Sets the TCP window.
    pub fn window(mut self, window: u16) -> Self {
        self.tcp_spec("window").window = window;
        self
    }

    /// Sets the TCP urgent pointer.
    pub fn urgent(mut self, urgent: u16) -> Self {
        self.tcp_spec("urgent").urgent = urgent;
        self
    }

    /// Sets the TCP options; they are padded with End-of-Option-List octets
    /// to a multiple of 4, which raises the data offset.
    ///
    /// # Panics
    /// If the padded options exceed 40 octets.
    pub fn tcp_options(mut self, options: &[u8]) -> Self {
        let mut padded = options.to_vec();
        padded.resize(options.len().div_ceil(4) * 4, 0);
        assert!(padded.len() <= 40, "TCP options longer than 40 octets");
        self.tcp_spec("tcp_options").options = padded;
        self
    }

    /// Writes `words` (4 bits) as the TCP data offset instead of the real
    /// one.
    pub fn tcp_data_offset(mut self, words: u8) -> Self {
        self.tcp_spec("tcp_data_offset").data_offset_override = Some(words & 0x0f);
        self
    }

    /// Makes the transport UDP from `src_port` to `dst_port`.
    pub fn udp(mut self, src_port: u16, dst_port: u16) -> Self {
        self.transport = Transport::Udp { src_port, dst_port };
        self
    }

    /// Makes the transport an ICMP (IPv4) or ICMPv6 (IPv6) echo request.
    pub fn icmp_echo(mut self, id: u16, seq: u16) -> Self {
        self.transport = Transport::IcmpEcho { id, seq };
        self
    }

    /// Makes the transport protocol `protocol` with only the payload as its
    /// bytes (no header, no checksum).
    pub fn raw_transport(mut self, protocol: u8) -> Self {
        self.transport = Transport::Raw { protocol };
        self
    }

    /// Sets the payload after the transport header (or the whole body of a
    /// [`PacketBuilder::ethernet`] frame).
    pub fn payload(mut self, payload: &[u8]) -> Self {
        self.payload = payload.to_vec();
        self
    }

    /// Octets from the start of the frame to the network header.
    pub fn l3_offset(&self) -> usize {
        ETH_HDR_LEN + VLAN_TAG_LEN * self.vlans.len()
    }

    /// Octets from the start of the frame to the transport header.
    pub fn l4_offset(&self) -> usize {
        self.l3_offset()
            + match &self.network {
                Network::Ipv4(spec) => IPV4_HDR_LEN + spec.options.len(),
                Network::Ipv6(spec) => {
                    IPV6_HDR_LEN + spec.exts.iter().map(Ipv6Ext::wire_len).sum::<usize>()
                }
                Network::Arp { .. } => 28,
                Network::Raw { .. } => 0,
            }
    }

    fn protocol(&self) -> u8 {
        match &self.transport {
            Transport::None => match self.network {
                Network::Ipv6(_) => ip_proto::NO_NEXT_HEADER,
                _ => 255,
            },
            Transport::Tcp(_) => ip_proto::TCP,
            Transport::Udp { .. } => ip_proto::UDP,
            Transport::IcmpEcho { .. } => match self.network {
                Network::Ipv6(_) => ip_proto::ICMPV6,
                _ => ip_proto::ICMP,
            },
            Transport::Raw { protocol } => *protocol,
        }
    }

    /// The transport header and payload, checksums filled in.
    fn transport_bytes(&self, addrs: Option<(IpAddr, IpAddr)>) -> Vec<u8> {
        let mut out = Vec::new();
        let checksum_at = match &self.transport {
            Transport::None | Transport::Raw { .. } => None,
            Transport::Tcp(tcp) => {
                let header_len = TCP_HDR_LEN + tcp.options.len();
                let offset = tcp.data_offset_override.unwrap_or((header_len / 4) as u8);
                out.extend_from_slice(&tcp.src_port.to_be_bytes());
                out.extend_from_slice(&tcp.dst_port.to_be_bytes());
                out.extend_from_slice(&tcp.seq.to_be_bytes());
                out.extend_from_slice(&tcp.ack.to_be_bytes());
                out.push(offset << 4);
                out.push(tcp.flags);
                out.extend_from_slice(&tcp.window.to_be_bytes());
                out.extend_from_slice(&[0, 0]);
                out.extend_from_slice(&tcp.urgent.to_be_bytes());
                out.extend_from_slice(&tcp.options);
                Some(16)
            }
            Transport::Udp { src_port, dst_port } => {
                let len = (UDP_HDR_LEN + self.payload.len()) as u16;
                out.extend_from_slice(&src_port.to_be_bytes());
                out.extend_from_slice(&dst_port.to_be_bytes());
                out.extend_from_slice(&len.to_be_bytes());
                out.extend_from_slice(&[0, 0]);
                Some(6)
            }
            Transport::IcmpEcho { id, seq } => {
                let kind = match self.network {
                    Network::Ipv6(_) => 128,
                    _ => 8,
                };
                out.extend_from_slice(&[kind, 0, 0, 0]);
                out.extend_from_slice(&id.to_be_bytes());
                out.extend_from_slice(&seq.to_be_bytes());
                Some(2)
            }
        };
        out.extend_from_slice(&self.payload);
        if let Some(at) = checksum_at {
            let protocol = self.protocol();
            let sum = match addrs {
                // ICMP for IPv4 has no pseudo-header.
                Some(_) if protocol == ip_proto::ICMP => internet_checksum(&[&out]),
                Some((src, dst)) => transport_checksum(src, dst, protocol, &out),
                None => internet_checksum(&[&out]),
            };
            // UDP sends 0 as 0xffff: 0 would mean "no checksum".
            let sum = if protocol == ip_proto::UDP && sum == 0 {
                0xffff
            } else {
                sum
            };
            out[at..at + 2].copy_from_slice(&sum.to_be_bytes());
        }
        out
    }

    /// The finished frame.
    pub fn build(&self) -> Vec<u8> {
        let mut frame = Vec::with_capacity(128 + self.payload.len());
        frame.extend_from_slice(&self.dst_mac);
        frame.extend_from_slice(&self.src_mac);
        let inner_type = match &self.network {
            Network::Ipv4(_) => ethertype::IPV4,
            Network::Ipv6(_) => ethertype::IPV6,
            Network::Arp { .. } => ethertype::ARP,
            Network::Raw { ethertype } => *ethertype,
        };
        // Each EtherType field names what follows it: the next tag's TPID,
        // then the network protocol.
        let mut types: Vec<u16> = self.vlans.iter().map(|t| t.tpid).collect();
        types.push(inner_type);
        frame.extend_from_slice(&types[0].to_be_bytes());
        for (tag, next) in self.vlans.iter().zip(&types[1..]) {
            frame.extend_from_slice(&tag.tci.to_be_bytes());
            frame.extend_from_slice(&next.to_be_bytes());
        }

        match &self.network {
            Network::Ipv4(ip) => {
                let l4 = self.transport_bytes(Some((ip.src.into(), ip.dst.into())));
                let header_len = IPV4_HDR_LEN + ip.options.len();
                let ihl = ip.ihl_override.unwrap_or((header_len / 4) as u8);
                let version = self.version_override.unwrap_or(4);
                let total = ip
                    .total_len_override
                    .unwrap_or((header_len + l4.len()) as u16);
                let flags_frag = (u16::from(ip.dont_fragment) << 14)
                    | (u16::from(ip.more_fragments) << 13)
                    | (ip.fragment_offset & 0x1fff);
                let mut header = Vec::with_capacity(header_len);
                header.push((version << 4) | ihl);
                header.push(ip.tos);
                header.extend_from_slice(&total.to_be_bytes());
                header.extend_from_slice(&ip.id.to_be_bytes());
                header.extend_from_slice(&flags_frag.to_be_bytes());
                header.push(ip.ttl);
                header.push(ip.protocol_override.unwrap_or(self.protocol()));
                header.extend_from_slice(&[0, 0]);
                header.extend_from_slice(&ip.src.octets());
                header.extend_from_slice(&ip.dst.octets());
                header.extend_from_slice(&ip.options);
                let sum = internet_checksum(&[&header]);
                header[10..12].copy_from_slice(&sum.to_be_bytes());
                frame.extend_from_slice(&header);
                frame.extend_from_slice(&l4);
            }
            Network::Ipv6(ip) => {
                let l4 = self.transport_bytes(Some((ip.src.into(), ip.dst.into())));
                let mut exts = Vec::new();
                for (i, ext) in ip.exts.iter().enumerate() {
                    let next = ip.exts.get(i + 1).map_or(self.protocol(), Ipv6Ext::kind);
                    ext.write(next, &mut exts);
                }
                let first = ip.exts.first().map_or(self.protocol(), Ipv6Ext::kind);
                let version = self.version_override.unwrap_or(6);
                let payload_len = ip
                    .payload_len_override
                    .unwrap_or((exts.len() + l4.len()) as u16);
                let vcf = (u32::from(version) << 28)
                    | (u32::from(ip.traffic_class) << 20)
                    | (ip.flow_label & 0xfffff);
                frame.extend_from_slice(&vcf.to_be_bytes());
                frame.extend_from_slice(&payload_len.to_be_bytes());
                frame.push(first);
                frame.push(ip.hop_limit);
                frame.extend_from_slice(&ip.src.octets());
                frame.extend_from_slice(&ip.dst.octets());
                frame.extend_from_slice(&exts);
                frame.extend_from_slice(&l4);
            }
            Network::Arp {
                operation,
                sender,
                target,
            } => {
                frame.extend_from_slice(&1u16.to_be_bytes()); // Ethernet
                frame.extend_from_slice(&ethertype::IPV4.to_be_bytes());
                frame.extend_from_slice(&[6, 4]);
                frame.extend_from_slice(&operation.to_be_bytes());
                frame.extend_from_slice(&self.src_mac);
                frame.extend_from_slice(&sender.octets());
                frame.extend_from_slice(&[0; 6]);
                frame.extend_from_slice(&target.octets());
                frame.extend_from_slice(&self.payload);
            }
            Network::Raw { .. } => frame.extend_from_slice(&self.transport_bytes(None)),
        }
        if frame.len() < self.pad_to {
            frame.resize(self.pad_to, 0);
        }
        frame
    }
}

/// The Internet checksum (RFC 1071) of the concatenation of `parts`: the
/// one's complement of the one's-complement sum of 16-bit big-endian words,
/// an odd final octet padded with zero.
///
/// Over data that contains a correct checksum field the result is 0.
pub fn internet_checksum(parts: &[&[u8]]) -> u16 {
    let mut sum: u64 = 0;
    let mut high: Option<u8> = None;
    for part in parts {
        for &byte in *part {
            match high.take() {
                None => high = Some(byte),
                Some(h) => sum += u64::from(u16::from_be_bytes([h, byte])),
            }
        }
    }
    if let Some(h) = high {
        sum += u64::from(h) << 8;
    }
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}

/// The checksum of a TCP, UDP or ICMPv6 `segment` (header and payload, its
/// checksum field included as it is) with the pseudo-header of `src`, `dst`
/// and `protocol`: RFC 793 section 3.1 for IPv4, RFC 8200 section 8.1 for
/// IPv6. Zero the checksum field to compute it; a segment with a correct
/// checksum gives 0.
///
/// # Panics
/// If `src` and `dst` are of different families.
pub fn transport_checksum(src: IpAddr, dst: IpAddr, protocol: u8, segment: &[u8]) -> u16 {
    match (src, dst) {
        (IpAddr::V4(s), IpAddr::V4(d)) => {
            let len = u16::try_from(segment.len()).expect("IPv4 segment longer than 65535");
            let [lh, ll] = len.to_be_bytes();
            let pseudo = [0, protocol, lh, ll];
            internet_checksum(&[&s.octets(), &d.octets(), &pseudo, segment])
        }
        (IpAddr::V6(s), IpAddr::V6(d)) => {
            let len = u32::try_from(segment.len()).expect("IPv6 segment too long");
            let mut pseudo = [0u8; 8];
            pseudo[..4].copy_from_slice(&len.to_be_bytes());
            pseudo[7] = protocol;
            internet_checksum(&[&s.octets(), &d.octets(), &pseudo, segment])
        }
        _ => panic!("transport_checksum: {src} and {dst} are of different families"),
    }
}

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
                let verify = internet_checksum(&[header]);
                if verify != 0 {
                    let mut zeroed = header.to_vec();
                    zeroed[10] = 0;
                    zeroed[11] = 0;
                    bail!(
                        "IPv4 header checksum is {:#06x}, should be {:#06x}",
                        be16(header, 10),
                        internet_checksum(&[&zeroed])
                    );
                }
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
        if transport_checksum(ip.src(), ip.dst(), ip_proto::TCP, segment) != 0 {
            let mut zeroed = segment.to_vec();
            zeroed[16] = 0;
            zeroed[17] = 0;
            bail!(
                "TCP checksum is {:#06x}, should be {:#06x}",
                be16(segment, 16),
                transport_checksum(ip.src(), ip.dst(), ip_proto::TCP, &zeroed)
            );
        }
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

#[cfg(test)]
mod tests {
    use super::*;

    const C4: Ipv4Addr = Ipv4Addr::new(203, 0, 113, 7);
    const S4: Ipv4Addr = Ipv4Addr::new(10, 0, 0, 25);
    const C6: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 0xbad, 0, 0, 0, 0, 7);
    const S6: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 0x25, 0, 0, 0, 0, 0x25);

    /// RFC 1071 section 3 example: words 0001 f203 f4f5 f6f7 sum to ddf2.
    #[test]
    fn checksum_matches_rfc1071_example() {
        let data = [0x00, 0x01, 0xf2, 0x03, 0xf4, 0xf5, 0xf6, 0xf7];
        assert_eq!(internet_checksum(&[&data]), !0xddf2);
        // Split at an odd boundary: same sum.
        assert_eq!(internet_checksum(&[&data[..3], &data[3..]]), !0xddf2);
        // Odd length: the last octet is the high half of a word.
        assert_eq!(internet_checksum(&[&[0x12]]), !0x1200);
    }

    /// A known IPv4 header (from Wikipedia's "IPv4 header checksum"
    /// example) has checksum b861.
    #[test]
    fn ipv4_header_checksum_matches_known_header() {
        let header = [
            0x45, 0x00, 0x00, 0x73, 0x00, 0x00, 0x40, 0x00, 0x40, 0x11, 0x00, 0x00, 0xc0, 0xa8,
            0x00, 0x01, 0xc0, 0xa8, 0x00, 0xc7,
        ];
        assert_eq!(internet_checksum(&[&header]), 0xb861);
    }

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

    #[test]
    fn overrides_write_the_given_fields() {
        let frame = PacketBuilder::ipv4(C4, S4)
            .ipv4_ihl(4)
            .ipv4_total_len(19)
            .tcp(1, 25, tcp_flags::SYN)
            .tcp_data_offset(3)
            .build();
        assert_eq!(frame[14], 0x44);
        assert_eq!(u16::from_be_bytes([frame[16], frame[17]]), 19);
        assert_eq!(frame[14 + 20 + 12], 0x30);
        // The header checksum still covers the bytes written.
        assert_eq!(internet_checksum(&[&frame[14..34]]), 0);
    }

    #[test]
    fn arp_and_udp_frames_have_the_right_shape() {
        let arp = PacketBuilder::arp_request(C4, S4).build();
        assert_eq!(arp.len(), 14 + 28);
        assert_eq!(&arp[12..14], &[0x08, 0x06]);
        let udp = PacketBuilder::ipv6(C6, S6)
            .udp(5353, 25)
            .payload(b"x")
            .build();
        assert_eq!(udp[14 + 6], ip_proto::UDP);
        let seg = &udp[54..];
        assert_eq!(
            transport_checksum(C6.into(), S6.into(), ip_proto::UDP, seg),
            0
        );
    }
}
