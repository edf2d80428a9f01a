//! Byte-level encoders for the differential test: Ethernet with any VLAN
//! stack, IPv4 headers with any option bytes and fragment fields, IPv6
//! headers and extension headers whose option areas Linux accepts, and TCP
//! segments. Unlike [`testkit::packets::PacketBuilder`], nothing here is
//! "one whole packet": the generator cuts datagrams into fragments and
//! writes length fields as it likes. Checksums come from
//! [`testkit::packets`] (RFC 1071), computed over the whole segment before
//! any cutting.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use super::rng::Rng;
use testkit::packets::{internet_checksum, ip_proto, tcp_flags, transport_checksum};

pub const TPID_8021Q: u16 = 0x8100;
pub const TPID_8021AD: u16 = 0x88a8;
pub const ETHERTYPE_IPV4: u16 = 0x0800;
pub const ETHERTYPE_IPV6: u16 = 0x86dd;

/// One VLAN tag as written: TPID and TCI (PCP, DEI, VID).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Tag {
    pub tpid: u16,
    pub tci: u16,
}

impl Tag {
    pub fn vid(&self) -> u16 {
        self.tci & 0x0fff
    }

    /// `Q:0/p5` style: TPID kind, VID, priority if any.
    pub fn describe(&self) -> String {
        let kind = match self.tpid {
            TPID_8021Q => "Q",
            TPID_8021AD => "AD",
            _ => "?",
        };
        let pcp = self.tci >> 13;
        if pcp != 0 {
            format!("{kind}:{}/p{pcp}", self.vid())
        } else {
            format!("{kind}:{}", self.vid())
        }
    }
}

/// An Ethernet frame: MACs, the VLAN tags (outer first), the EtherType of
/// the body, the body.
pub fn ethernet(dst: [u8; 6], src: [u8; 6], tags: &[Tag], ethertype: u16, body: &[u8]) -> Vec<u8> {
    let mut frame = Vec::with_capacity(14 + 4 * tags.len() + body.len());
    frame.extend_from_slice(&dst);
    frame.extend_from_slice(&src);
    for tag in tags {
        frame.extend_from_slice(&tag.tpid.to_be_bytes());
        frame.extend_from_slice(&tag.tci.to_be_bytes());
    }
    frame.extend_from_slice(&ethertype.to_be_bytes());
    frame.extend_from_slice(body);
    frame
}

/// The fields of one IPv4 header.
#[derive(Clone, Debug)]
pub struct V4 {
    pub src: Ipv4Addr,
    pub dst: Ipv4Addr,
    pub tos: u8,
    pub id: u16,
    pub df: bool,
    pub mf: bool,
    /// In 8-octet units.
    pub offset_units: u16,
    pub ttl: u8,
    pub protocol: u8,
    /// Option octets, a multiple of 4, at most 40.
    pub options: Vec<u8>,
    /// Written instead of the real total length.
    pub total_len: Option<u16>,
}

impl V4 {
    /// The header (checksum filled in) for a payload of `payload_len` octets.
    pub fn header(&self, payload_len: usize) -> Vec<u8> {
        assert!(
            self.options.len().is_multiple_of(4) && self.options.len() <= 40,
            "IPv4 options must be a multiple of 4 octets, at most 40"
        );
        let header_len = 20 + self.options.len();
        let total = self.total_len.unwrap_or((header_len + payload_len) as u16);
        let frag = (u16::from(self.df) << 14) | (u16::from(self.mf) << 13) | self.offset_units;
        let mut h = Vec::with_capacity(header_len);
        h.push(0x40 | (header_len / 4) as u8);
        h.push(self.tos);
        h.extend_from_slice(&total.to_be_bytes());
        h.extend_from_slice(&self.id.to_be_bytes());
        h.extend_from_slice(&frag.to_be_bytes());
        h.push(self.ttl);
        h.push(self.protocol);
        h.extend_from_slice(&[0, 0]);
        h.extend_from_slice(&self.src.octets());
        h.extend_from_slice(&self.dst.octets());
        h.extend_from_slice(&self.options);
        let sum = internet_checksum(&[&h]);
        h[10..12].copy_from_slice(&sum.to_be_bytes());
        h
    }
}

/// A fixed IPv6 header.
pub fn ipv6_header(
    src: Ipv6Addr,
    dst: Ipv6Addr,
    traffic_class: u8,
    flow_label: u32,
    payload_len: u16,
    next: u8,
    hop_limit: u8,
) -> Vec<u8> {
    let vcf = (6u32 << 28) | (u32::from(traffic_class) << 20) | (flow_label & 0xfffff);
    let mut h = Vec::with_capacity(40);
    h.extend_from_slice(&vcf.to_be_bytes());
    h.extend_from_slice(&payload_len.to_be_bytes());
    h.push(next);
    h.push(hop_limit);
    h.extend_from_slice(&src.octets());
    h.extend_from_slice(&dst.octets());
    h
}

/// One IPv6 extension header: its type and its bytes. Octet 0 (the next
/// header) is filled in by [`chain`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Ext {
    pub kind: u8,
    pub bytes: Vec<u8>,
    /// How [`Ext::describe`] names it.
    pub what: String,
}

/// The experimental option types of RFC 4727 whose two high bits say
/// "skip if unknown" (0x1e: no change en route; 0x3e: may change).
const SKIPPABLE_OPTIONS: [u8; 2] = [0x1e, 0x3e];
/// Linux refuses more non-padding options per header than this
/// (net.ipv6.max_hbh_opts_number / max_dst_opts_number default 8).
const MAX_TLV_OPTIONS: usize = 8;

/// Fills `n` octets of an options area the way Linux's ip6_parse_tlv()
/// accepts it: no run of padding longer than 7 octets, PadN all zero, at
/// most 8 other options (unknown ones of the "skip" kind).
fn fill_tlv(n: usize, rng: &mut Rng, out: &mut Vec<u8>) -> usize {
    let mut left = n;
    let mut options = 0;
    while left > 0 {
        if left <= 7 && (options > 0 || rng.chance(50) || left == 1) {
            if left == 1 {
                out.push(0); // Pad1
            } else {
                out.push(1); // PadN
                out.push((left - 2) as u8);
                out.extend(std::iter::repeat_n(0, left - 2));
            }
            break;
        }
        let size = if left > 257 {
            257
        } else {
            rng.range(left.saturating_sub(7).max(2), left)
        };
        out.push(*rng.pick(&SKIPPABLE_OPTIONS));
        out.push((size - 2) as u8);
        out.extend(rng.bytes(size - 2));
        options += 1;
        left -= size;
    }
    assert!(
        options <= MAX_TLV_OPTIONS,
        "an options area of {n} octets took {options} options"
    );
    options
}

impl Ext {
    /// Hop-by-hop (`kind` 0) or destination options (60) of
    /// `(units + 1) * 8` octets. `router_alert` puts a Router Alert option
    /// first (hop-by-hop only makes sense); `jumbo` a Jumbo Payload option
    /// with that value.
    pub fn options(
        kind: u8,
        units: u8,
        rng: &mut Rng,
        router_alert: bool,
        jumbo: Option<u32>,
    ) -> Self {
        let total = (usize::from(units) + 1) * 8;
        let mut bytes = vec![0, units];
        let mut extra = Vec::new();
        // Linux counts Router Alert and Jumbo among the 8 options a header
        // may hold: only in headers small enough to need few fillers.
        if router_alert && total <= 1536 {
            bytes.extend_from_slice(&[0x05, 0x02, 0x00, 0x00]);
            extra.push("RA");
        }
        if let Some(value) = jumbo {
            // Jumbo Payload wants offset 4n+2 from the IPv6 header (Linux
            // checks it): 42, or 46 after a Router Alert.
            if bytes.len() + 6 <= total && total <= 1536 {
                bytes.extend_from_slice(&[0xc2, 0x04]);
                bytes.extend_from_slice(&value.to_be_bytes());
                extra.push("jumbo");
            }
        }
        let left = total - bytes.len();
        fill_tlv(left, rng, &mut bytes);
        debug_assert_eq!(bytes.len(), total);
        let name = if kind == ip_proto::HOP_BY_HOP {
            "HBH"
        } else {
            "DST"
        };
        let what = if extra.is_empty() {
            format!("{name}({total})")
        } else {
            format!("{name}({total},{})", extra.join(","))
        };
        Self { kind, bytes, what }
    }

    /// A routing header of `(units + 1) * 8` octets with segments left 0 (a
    /// node that does not know `routing_type` ignores it).
    pub fn routing(units: u8, routing_type: u8, rng: &mut Rng) -> Self {
        let total = (usize::from(units) + 1) * 8;
        let mut bytes = vec![0, units, routing_type, 0];
        bytes.extend(rng.bytes(total - 4));
        Self {
            kind: ip_proto::ROUTING,
            bytes,
            what: format!("RT{routing_type}({total})"),
        }
    }

    /// A fragment header.
    pub fn fragment(offset_units: u16, more: bool, id: u32) -> Self {
        let mut bytes = vec![0, 0];
        bytes.extend_from_slice(&(((offset_units & 0x1fff) << 3) | u16::from(more)).to_be_bytes());
        bytes.extend_from_slice(&id.to_be_bytes());
        let what = if offset_units == 0 && !more {
            "FRAG(atomic)".to_string()
        } else {
            format!("FRAG(off {}, M {})", offset_units * 8, u8::from(more))
        };
        Self {
            kind: ip_proto::FRAGMENT,
            bytes,
            what,
        }
    }

    /// An authentication header of `(len + 2) * 4` octets.
    pub fn ah(len: u8, rng: &mut Rng) -> Self {
        let total = (usize::from(len) + 2) * 4;
        let mut bytes = vec![0, len, 0, 0];
        bytes.extend(rng.bytes(total - 4));
        Self {
            kind: ip_proto::AH,
            bytes,
            what: format!("AH({total})"),
        }
    }

    pub fn len(&self) -> usize {
        self.bytes.len()
    }

    pub fn is_empty(&self) -> bool {
        self.bytes.is_empty()
    }
}

/// Writes `exts` one after the other, each naming the next, the last
/// naming `last`. Returns the type of the first (or `last` if none).
pub fn chain(exts: &[Ext], last: u8) -> (u8, Vec<u8>) {
    let mut out = Vec::new();
    for (i, ext) in exts.iter().enumerate() {
        let next = exts.get(i + 1).map_or(last, |e| e.kind);
        out.push(next);
        out.extend_from_slice(&ext.bytes[1..]);
    }
    (exts.first().map_or(last, |e| e.kind), out)
}

/// `HBH(8) DST(16) ...`
pub fn describe_chain(exts: &[Ext]) -> String {
    if exts.is_empty() {
        return "none".to_string();
    }
    exts.iter()
        .map(|e| e.what.as_str())
        .collect::<Vec<_>>()
        .join(" ")
}

/// A TCP segment before it is written.
#[derive(Clone, Debug)]
pub struct Tcp {
    pub src_port: u16,
    pub dst_port: u16,
    pub seq: u32,
    pub ack: u32,
    pub flags: u8,
    /// The 4 low bits of octet 12 (reserved, AE).
    pub reserved: u8,
    pub window: u16,
    pub urgent: u16,
    /// Option octets, a multiple of 4, at most 40.
    pub options: Vec<u8>,
    pub payload: Vec<u8>,
    /// Written instead of the real data offset.
    pub data_offset: Option<u8>,
    /// Write a wrong checksum.
    pub bad_checksum: bool,
}

impl Tcp {
    pub fn header_len(&self) -> usize {
        20 + self.options.len()
    }

    /// The segment, checksum computed with the pseudo-header of `src`,
    /// `dst` over all of it.
    pub fn segment(&self, src: IpAddr, dst: IpAddr) -> Vec<u8> {
        let offset = self.data_offset.unwrap_or((self.header_len() / 4) as u8);
        let mut s = Vec::with_capacity(self.header_len() + self.payload.len());
        s.extend_from_slice(&self.src_port.to_be_bytes());
        s.extend_from_slice(&self.dst_port.to_be_bytes());
        s.extend_from_slice(&self.seq.to_be_bytes());
        s.extend_from_slice(&self.ack.to_be_bytes());
        s.push((offset << 4) | (self.reserved & 0x0f));
        s.push(self.flags);
        s.extend_from_slice(&self.window.to_be_bytes());
        s.extend_from_slice(&[0, 0]);
        s.extend_from_slice(&self.urgent.to_be_bytes());
        s.extend_from_slice(&self.options);
        s.extend_from_slice(&self.payload);
        let mut sum = transport_checksum(src, dst, ip_proto::TCP, &s);
        if self.bad_checksum {
            sum ^= 0x0101;
        }
        s[16..18].copy_from_slice(&sum.to_be_bytes());
        s
    }
}

/// `SYN|PSH` style names of TCP flags.
pub fn flag_names(flags: u8) -> String {
    let names = [
        (tcp_flags::SYN, "SYN"),
        (tcp_flags::ACK, "ACK"),
        (tcp_flags::FIN, "FIN"),
        (tcp_flags::RST, "RST"),
        (tcp_flags::PSH, "PSH"),
        (tcp_flags::URG, "URG"),
        (tcp_flags::ECE, "ECE"),
        (tcp_flags::CWR, "CWR"),
    ];
    let set: Vec<&str> = names
        .iter()
        .filter(|(bit, _)| flags & bit != 0)
        .map(|(_, n)| *n)
        .collect();
    if set.is_empty() {
        "none".to_string()
    } else {
        set.join("|")
    }
}

/// TCP options of exactly `len` octets (a multiple of 4, at most 40):
/// options a SYN may carry, in random order and sizes, then NOP or EOL
/// padding (after an EOL, random junk). Never MD5 (19) or TCP-AO (29),
/// which make Linux drop a segment to a socket without keys, nor MPTCP (30)
/// or a Fast Open cookie (34). Returns the octets and a short description.
pub fn tcp_options(len: usize, rng: &mut Rng) -> (Vec<u8>, String) {
    assert!(len.is_multiple_of(4) && len <= 40);
    let mut out = Vec::with_capacity(len);
    let mut names = Vec::new();
    while out.len() < len {
        let left = len - out.len();
        let choice = rng.below(9);
        match choice {
            0 if left >= 4 => {
                let mss = rng.range(536, 9000) as u16;
                out.extend_from_slice(&[2, 4]);
                out.extend_from_slice(&mss.to_be_bytes());
                names.push("MSS".to_string());
            }
            1 if left >= 3 => {
                out.extend_from_slice(&[3, 3, rng.range(0, 14) as u8]);
                names.push("WS".to_string());
            }
            2 if left >= 2 => {
                out.extend_from_slice(&[4, 2]);
                names.push("SACKOK".to_string());
            }
            3 if left >= 10 => {
                out.extend_from_slice(&[8, 10]);
                out.extend(rng.bytes(8));
                names.push("TS".to_string());
            }
            4 if left >= 10 => {
                let blocks = rng.range(1, (left - 2) / 8);
                out.extend_from_slice(&[5, (2 + 8 * blocks) as u8]);
                out.extend(rng.bytes(8 * blocks));
                names.push(format!("SACK{blocks}"));
            }
            5 if left >= 2 => {
                let size = rng.range(2, left);
                out.extend_from_slice(&[*rng.pick(&[253u8, 254]), size as u8]);
                out.extend(rng.bytes(size - 2));
                names.push(format!("EXP{size}"));
            }
            6 => {
                out.push(1);
                names.push("NOP".to_string());
            }
            7 if rng.chance(30) => {
                // End of list, then junk the parser never reads.
                out.push(0);
                let junk = len - out.len();
                out.extend(rng.bytes(junk));
                names.push(format!("EOL+{junk}junk"));
            }
            _ => {
                if left <= 3 {
                    out.extend(std::iter::repeat_n(1, left));
                    names.push(format!("NOPx{left}"));
                }
            }
        }
    }
    (out, names.join(","))
}

/// IPv4 options of exactly `len` octets (a multiple of 4, at most 40) that
/// Linux accepts on input: NOP, Router Alert and experimental options
/// (RFC 4727 types 30 and 94, unknown to Linux and skipped), then EOL and
/// padding. No source routes (refused by default) and no timestamps or
/// record route (rewritten).
pub fn ipv4_options(len: usize, rng: &mut Rng) -> (Vec<u8>, String) {
    assert!(len.is_multiple_of(4) && len <= 40);
    let mut out = Vec::with_capacity(len);
    let mut names = Vec::new();
    while out.len() < len {
        let left = len - out.len();
        match rng.below(5) {
            0 => {
                out.push(1);
                names.push("NOP".to_string());
            }
            1 if left >= 4 => {
                out.extend_from_slice(&[148, 4, 0, 0]);
                names.push("RA".to_string());
            }
            2 | 3 if left >= 2 => {
                let size = rng.range(2, left);
                out.push(*rng.pick(&[30u8, 94]));
                out.push(size as u8);
                out.extend(std::iter::repeat_n(0, size - 2));
                names.push(format!("EXP{size}"));
            }
            _ => {
                out.push(0);
                let pad = len - out.len();
                out.extend(std::iter::repeat_n(0, pad));
                names.push(format!("EOL+{pad}"));
            }
        }
    }
    (out, names.join(","))
}

/// Lower-case hex, no separators.
pub fn hex(bytes: &[u8]) -> String {
    use std::fmt::Write;
    let mut s = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        let _ = write!(s, "{b:02x}");
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    /// What Linux's ip6_parse_tlv() checks, written again.
    fn linux_accepts_tlv(area: &[u8]) -> bool {
        let mut off = 0;
        let mut pad = 0;
        let mut count = 0;
        while off < area.len() {
            if area[off] == 0 {
                pad += 1;
                if pad > 7 {
                    return false;
                }
                off += 1;
                continue;
            }
            if area.len() - off < 2 {
                return false;
            }
            let optlen = usize::from(area[off + 1]) + 2;
            if optlen > area.len() - off {
                return false;
            }
            if area[off] == 1 {
                pad += optlen;
                if pad > 7 || area[off + 2..off + optlen].iter().any(|b| *b != 0) {
                    return false;
                }
            } else {
                count += 1;
                if count > 8 {
                    return false;
                }
                pad = 0;
            }
            off += optlen;
        }
        true
    }

    #[test]
    fn option_headers_are_what_linux_accepts() {
        let mut rng = Rng::new(3);
        for units in 0..=255u8 {
            for _ in 0..4 {
                let ra = rng.chance(30);
                let ext = Ext::options(ip_proto::DEST_OPTS, units, &mut rng, ra, None);
                assert_eq!(ext.len(), (usize::from(units) + 1) * 8);
                assert!(
                    linux_accepts_tlv(&ext.bytes[2..]),
                    "units {units}: {}",
                    hex(&ext.bytes)
                );
            }
        }
    }

    #[test]
    fn option_areas_have_the_asked_length() {
        let mut rng = Rng::new(5);
        for len in (0..=40).step_by(4) {
            for _ in 0..50 {
                assert_eq!(tcp_options(len, &mut rng).0.len(), len);
                assert_eq!(ipv4_options(len, &mut rng).0.len(), len);
            }
        }
    }

    #[test]
    fn chain_links_next_headers() {
        let mut rng = Rng::new(9);
        let exts = [
            Ext::options(ip_proto::HOP_BY_HOP, 0, &mut rng, false, None),
            Ext::routing(1, 253, &mut rng),
            Ext::fragment(0, false, 7),
        ];
        let (first, bytes) = chain(&exts, ip_proto::TCP);
        assert_eq!(first, ip_proto::HOP_BY_HOP);
        assert_eq!(bytes.len(), 8 + 16 + 8);
        assert_eq!(bytes[0], ip_proto::ROUTING);
        assert_eq!(bytes[8], ip_proto::FRAGMENT);
        assert_eq!(bytes[24], ip_proto::TCP);
    }
}
