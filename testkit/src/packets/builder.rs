//! [`PacketBuilder`]: one Ethernet frame, layer by layer, with lengths and
//! checksums computed from what is written unless a test overrides them.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use super::{
    ethertype, internet_checksum, ip_proto, tcp_flags, transport_checksum, VlanTag,
    DEFAULT_DST_MAC, DEFAULT_SRC_MAC, ETH_HDR_LEN, IPV4_HDR_LEN, IPV4_MAX_HDR_LEN, IPV6_HDR_LEN,
    TCP_HDR_LEN, UDP_HDR_LEN, VLAN_TAG_LEN,
};

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

/// IPv4 or TCP `options` padded with End-of-Option-List octets to a
/// multiple of 4, as their header length counts 4-octet words. Panics past
/// 40 octets, the most either header's length field can add.
fn padded_options(options: &[u8], header: &str) -> Vec<u8> {
    let mut padded = options.to_vec();
    padded.resize(options.len().div_ceil(4) * 4, 0);
    assert!(
        padded.len() <= IPV4_MAX_HDR_LEN - IPV4_HDR_LEN,
        "{header} options longer than 40 octets"
    );
    padded
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
    /// [`ETH_MIN_FRAME_LEN`](super::ETH_MIN_FRAME_LEN). A frame already
    /// that long is left alone.
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
        self.ipv4_spec("ipv4_options").options = padded_options(options, "IPv4");
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
        self.tcp_spec("tcp_options").options = padded_options(options, "TCP");
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::packets::test_addresses::*;

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
