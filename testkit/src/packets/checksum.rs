//! Internet checksums (RFC 1071), and the TCP, UDP and ICMPv6 checksums
//! over their pseudo-headers.

use std::net::IpAddr;

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

#[cfg(test)]
mod tests {
    use super::*;

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
}
