//! The generator: structured, randomised frame sequences around "a TCP SYN
//! to a gated port", built to probe where the gate's parser and the Linux
//! stack's may disagree.
//!
//! Every case is a function of its seed alone (plus the source port,
//! fragment identification and destination port it is given), so a case
//! printed by a failing run is rebuilt exactly from `(run seed, index)`.
//! The shapes:
//!
//! - `plain`: one whole SYN, IPv4 (with IP options of every length) or
//!   IPv6; TCP options of every length and kind, SYN flag combinations,
//!   SYN payload, length fields shorter or longer than the frame.
//! - `frag-v4`, `frag-v6`: the SYN cut into 2 to 5 fragments at every
//!   multiple of 8 (with weight on cuts inside the TCP header and, for
//!   IPv6, inside the extension chain after the Fragment header), sent in
//!   order, reversed or shuffled, sometimes with a non-last fragment whose
//!   length is not a multiple of 8 (Linux trims it), a duplicate, a
//!   conflicting copy of the first fragment or an overlapping fragment.
//! - `vlan`: 1 to 10 VLAN tags, 802.1Q and 802.1ad, priority tags (VID 0)
//!   anywhere in the stack, towards the server's VLAN devices or to a VID
//!   nobody serves.
//! - `ext-chain`: IPv6 extension header chains of 0 to 16 headers
//!   (hop-by-hop, destination options, routing, atomic fragments, AH) of
//!   every length the frame allows.
//! - `hbh-len0`: IPv6 payload length 0 with a hop-by-hop header and no
//!   Jumbo option: Linux then takes the length from the frame.
//! - `nonlinear`: frames of 4 KiB and more, which AF_PACKET sends as paged
//!   socket buffers (only the Ethernet header linear), with the TCP header
//!   beyond the first 256 octets.
//!
//! Any case may also get a few priority tags in front. Each case records
//! the features that matter for grouping ([`Case::shape`]) and whether it
//! is `plausible`: something a real client or network may send, which a
//! gate must therefore let through for a granted client and to a port it
//! does not gate.

use std::{
    fmt::Write as _,
    net::{Ipv4Addr, Ipv6Addr},
};

use super::{
    rng::{mix, Rng},
    wire::{
        self, chain, describe_chain, Ext, Tag, Tcp, ETHERTYPE_IPV4, ETHERTYPE_IPV6, TPID_8021AD,
        TPID_8021Q, V4,
    },
};
use testkit::packets::{
    ip_proto,
    tcp_flags::{ACK, CWR, ECE, FIN, PSH, RST, SYN, URG},
};

/// Frames shorter than this are padded with zeros, as a NIC pads them.
pub const MIN_FRAME: usize = 60;
/// Frames at least this long leave an AF_PACKET socket as paged socket
/// buffers (packet_snd: `reserve + len >= PAGE_SIZE`), so the receiving
/// side sees only the Ethernet header in the linear area.
pub const PAGED_FRAME: usize = 4096;
/// The shortest frame of the `nonlinear` category (some room above
/// [`PAGED_FRAME`]).
pub const NONLINEAR_FRAME: usize = 4160;

/// Features left out of [`Case::shape_key`]: they do not change how a
/// parser walks to the TCP flags.
const INCIDENTAL: [&str; 2] = ["tcp-reserved-bits", "doff-short"];

/// What a case is mainly about.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Category {
    Plain,
    FragV4,
    FragV6,
    Vlan,
    ExtChain,
    HbhLen0,
    Nonlinear,
}

impl Category {
    pub const ALL: [Self; 7] = [
        Self::Plain,
        Self::FragV4,
        Self::FragV6,
        Self::Vlan,
        Self::ExtChain,
        Self::HbhLen0,
        Self::Nonlinear,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Self::Plain => "plain",
            Self::FragV4 => "frag-v4",
            Self::FragV6 => "frag-v6",
            Self::Vlan => "vlan",
            Self::ExtChain => "ext-chain",
            Self::HbhLen0 => "hbh-len0",
            Self::Nonlinear => "nonlinear",
        }
    }
}

/// One network the client reaches the server on: the veth itself or a
/// VLAN device on it, with the tags (outer first, VID only) that lead
/// there.
#[derive(Clone, Debug)]
pub struct Net {
    pub name: String,
    pub path: Vec<Tag>,
    pub client_v4: Ipv4Addr,
    pub server_v4: Ipv4Addr,
    pub client_v6: Ipv6Addr,
    pub server_v6: Ipv6Addr,
}

impl Net {
    /// The lab's subnet `k`: 10.231.k.0/24 and fd00:231:k::/64, the
    /// server at .1 / ::1, the client at .2 / ::2.
    pub fn numbered(name: &str, path: Vec<Tag>, k: u8) -> Self {
        Self {
            name: name.to_string(),
            path,
            client_v4: Ipv4Addr::new(10, 231, k, 2),
            server_v4: Ipv4Addr::new(10, 231, k, 1),
            client_v6: Ipv6Addr::new(0xfd00, 0x231, u16::from(k), 0, 0, 0, 0, 2),
            server_v6: Ipv6Addr::new(0xfd00, 0x231, u16::from(k), 0, 0, 0, 0, 1),
        }
    }
}

/// What the generator needs to know about the lab.
#[derive(Clone, Debug)]
pub struct Env {
    pub client_mac: [u8; 6],
    pub server_mac: [u8; 6],
    /// `nets[0]` is the veth itself; the others are VLAN devices.
    pub nets: Vec<Net>,
    /// The longest frame the client veth can send (MTU + 14).
    pub max_frame: usize,
}

impl Env {
    fn net(&self, name: &str) -> &Net {
        self.nets
            .iter()
            .find(|n| n.name == name)
            .unwrap_or_else(|| panic!("the lab has no network {name}"))
    }

    /// Whether frames long enough to be paged can be sent.
    pub fn nonlinear_possible(&self) -> bool {
        self.max_frame >= NONLINEAR_FRAME + 64
    }
}

/// The identifiers that make a case's reply and fragments its own.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Ids {
    pub src_port: u16,
    /// IPv6 fragment identification; the low 16 bits are the IPv4 ID.
    pub frag_id: u32,
}

/// How to build a case again (with other identifiers).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Recipe {
    /// The `n`th random case of the run seed.
    Random {
        n: usize,
        seed: u64,
        category: Category,
    },
    /// A fixed shape of [`REGRESSIONS`].
    Regression(usize),
}

/// One probe: the frames to send and what they are.
#[derive(Clone, Debug)]
pub struct Case {
    pub recipe: Recipe,
    pub category: Category,
    /// Features for grouping results (cut position, tag count, ...).
    pub shape: Vec<&'static str>,
    /// Something real clients or networks send (see the module docs).
    pub plausible: bool,
    pub ids: Ids,
    pub dst_port: u16,
    /// The SYN's sequence number: a SYN-ACK acknowledges `seq + 1`.
    pub seq: u32,
    pub frames: Vec<Vec<u8>>,
    /// How the frames were built, one fact per line.
    pub lines: Vec<String>,
}

impl Case {
    /// `random #17 (seed 0x...)` or `regression v4-tcp-header-cut-24`.
    pub fn label(&self) -> String {
        match self.recipe {
            Recipe::Random { n, seed, .. } => format!("random #{n} (case seed {seed:#018x})"),
            Recipe::Regression(k) => format!("regression {}", REGRESSIONS[k]),
        }
    }

    /// The shape features that matter for grouping, sorted and joined
    /// (incidental ones, like reserved TCP bits, stay in the description).
    pub fn shape_key(&self) -> String {
        let mut key: Vec<&str> = self
            .shape
            .iter()
            .copied()
            .filter(|f| !INCIDENTAL.contains(f))
            .collect();
        key.sort_unstable();
        if key.is_empty() {
            "-".to_string()
        } else {
            key.join(" ")
        }
    }

    /// Label, description and every frame in hex.
    pub fn describe(&self) -> String {
        self.describe_within(None)
    }

    /// Like [`Case::describe`], the hex of each frame cut after
    /// `hex_octets` octets if given.
    pub fn describe_within(&self, hex_octets: Option<usize>) -> String {
        let mut s = format!(
            "{} [{}] {}, source port {}, fragment id {:#x}{}\n",
            self.category.name(),
            self.shape.join(" "),
            self.label(),
            self.ids.src_port,
            self.ids.frag_id,
            if self.plausible { ", plausible" } else { "" }
        );
        for line in &self.lines {
            let _ = writeln!(s, "    {line}");
        }
        for (i, frame) in self.frames.iter().enumerate() {
            let shown = hex_octets.unwrap_or(usize::MAX).min(frame.len());
            let _ = writeln!(
                s,
                "    frame {}/{} ({} octets): {}{}",
                i + 1,
                self.frames.len(),
                frame.len(),
                wire::hex(&frame[..shown]),
                if shown < frame.len() { " ..." } else { "" }
            );
        }
        s
    }
}

/// The order random cases take their categories in: fragments and VLAN
/// stacks twice per round, paged frames only where the MTU allows them.
pub fn schedule(env: &Env) -> Vec<Category> {
    use Category::*;
    let mut s = vec![
        FragV4, FragV6, Vlan, ExtChain, HbhLen0, Plain, FragV4, FragV6, Vlan, ExtChain,
    ];
    if env.nonlinear_possible() {
        s.push(Nonlinear);
    }
    s
}

/// The recipe of the `n`th random case of `run_seed`.
pub fn random_recipe(env: &Env, run_seed: u64, n: usize) -> Recipe {
    let s = schedule(env);
    Recipe::Random {
        n,
        seed: mix(run_seed, n as u64),
        category: s[n % s.len()],
    }
}

/// The fixed shapes every bounded run sends first: the bypasses known when
/// this test was written, one case each.
pub const REGRESSIONS: [&str; 11] = [
    "v4-tcp-header-cut-24",
    "v4-tcp-header-cut-32-second-first",
    "v4-ip-options-40-tcp-header-cut-24",
    "v4-odd-first-fragment-28-of-40",
    "v6-frag-tcp-header-cut-24",
    "v6-frag-chain-cut-dst-dst",
    "v6-frag-chain-cut-inside-routing",
    "v6-payload-len-0-hbh",
    "vlan-3-priority-tags-v4",
    "vlan-4-priority-tags-v6",
    "nonlinear-v6-dst-224",
];

/// The regression recipes that `env` can send (the paged one needs a
/// large MTU).
pub fn regression_recipes(env: &Env) -> Vec<Recipe> {
    (0..REGRESSIONS.len())
        .filter(|k| REGRESSIONS[*k] != "nonlinear-v6-dst-224" || env.nonlinear_possible())
        .map(Recipe::Regression)
        .collect()
}

/// Builds the case `recipe` with these identifiers, to `dst_port`.
pub fn build(env: &Env, recipe: Recipe, ids: Ids, dst_port: u16) -> Case {
    let (seed, category) = match recipe {
        Recipe::Random { seed, category, .. } => (seed, category),
        Recipe::Regression(k) => (mix(0x5eed_0000, k as u64), regression_category(k)),
    };
    let mut rng = Rng::new(seed);
    // A random shape may come out longer than the MTU: draw again (the
    // generator keeps sizes inside the budget, so this is rare).
    for _ in 0..32 {
        let mut ctx = Ctx {
            rng: rng.clone(),
            env,
            ids,
            dst_port,
            lines: Vec::new(),
            shape: Vec::new(),
            plausible: true,
            seq: 0,
        };
        let frames = match recipe {
            Recipe::Random { .. } => match category {
                Category::Plain => ctx.plain(),
                Category::FragV4 => ctx.frag_v4(),
                Category::FragV6 => ctx.frag_v6(),
                Category::Vlan => ctx.vlan(),
                Category::ExtChain => ctx.ext_chain(),
                Category::HbhLen0 => ctx.hbh_len0(),
                Category::Nonlinear => ctx.nonlinear(),
            },
            Recipe::Regression(k) => ctx.regression(k),
        };
        if frames.iter().all(|f| f.len() <= env.max_frame) {
            if frames.iter().any(|f| f.len() >= PAGED_FRAME) {
                ctx.shape("paged");
            }
            return Case {
                recipe,
                category,
                shape: ctx.shape,
                plausible: ctx.plausible,
                ids,
                dst_port,
                seq: ctx.seq,
                frames,
                lines: ctx.lines,
            };
        }
        rng = ctx.rng;
    }
    panic!(
        "{recipe:?}: could not build frames of at most {} octets",
        env.max_frame
    )
}

fn regression_category(k: usize) -> Category {
    match REGRESSIONS[k] {
        n if n.starts_with("v4-") => Category::FragV4,
        n if n.starts_with("v6-frag") => Category::FragV6,
        n if n.starts_with("v6-payload") => Category::HbhLen0,
        n if n.starts_with("vlan") => Category::Vlan,
        _ => Category::Nonlinear,
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Order {
    Ascending,
    Reversed,
    Shuffled,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Overlap {
    /// An exact copy of piece `n` (Linux ignores it).
    Duplicate(usize),
    /// A copy of the first piece with the flags turned to ACK.
    ConflictingFirst,
    /// A piece of true data across the cut at this position (Linux drops
    /// the whole datagram).
    Across(usize),
}

/// How to cut a fragmentable part into pieces.
#[derive(Clone, Debug)]
struct FragPlan {
    /// Cut positions, ascending, multiples of 8.
    cuts: Vec<usize>,
    /// Piece, extra octets past its end, extra octets are garbage.
    odd: Option<(usize, usize, bool)>,
    overlap: Option<Overlap>,
    order: Order,
}

/// Where things lie in the fragmentable part.
#[derive(Clone, Copy, Debug)]
struct Layout {
    v6: bool,
    /// Octets of extension headers before the TCP header.
    chain: usize,
    /// Where the last of them starts (0 without any).
    last_ext: usize,
    /// TCP header length as written.
    header: usize,
    total: usize,
}

struct Piece {
    start: usize,
    bytes: Vec<u8>,
    more: bool,
    label: String,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Len4 {
    Exact,
    Trailer,
    PastFrame,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Len6 {
    Exact,
    Trailer,
    PastFrame,
    Zero,
    Value(u16),
}

struct Ctx<'a> {
    rng: Rng,
    env: &'a Env,
    ids: Ids,
    dst_port: u16,
    lines: Vec<String>,
    shape: Vec<&'static str>,
    plausible: bool,
    seq: u32,
}

impl Ctx<'_> {
    fn note(&mut self, line: impl Into<String>) {
        self.lines.push(line.into());
    }

    fn shape(&mut self, feature: &'static str) {
        if !self.shape.contains(&feature) {
            self.shape.push(feature);
        }
    }

    fn implausible(&mut self) {
        self.plausible = false;
    }

    fn base(&self) -> Net {
        self.env.nets[0].clone()
    }

    // ---- building blocks ------------------------------------------------

    fn vid0_tag(&mut self) -> Tag {
        let tpid = self.rng.weighted(&[(70, TPID_8021Q), (30, TPID_8021AD)]);
        let pcp = if self.rng.chance(50) {
            0
        } else {
            self.rng.range(1, 7) as u16
        };
        let dei = u16::from(self.rng.chance(10));
        Tag {
            tpid,
            tci: (pcp << 13) | (dei << 12),
        }
    }

    /// Now and then a few priority tags in front of another shape.
    fn decoration(&mut self) -> Vec<Tag> {
        if !self.rng.chance(10) {
            return Vec::new();
        }
        let n = self.rng.range(1, 4);
        let tags: Vec<Tag> = (0..n).map(|_| self.vid0_tag()).collect();
        self.tags_feature(&tags);
        tags
    }

    fn tags_feature(&mut self, tags: &[Tag]) {
        match tags.len() {
            0 => {}
            1 | 2 => self.shape("tags-1-2"),
            3 | 4 => self.shape("tags-3-4"),
            _ => self.shape("tags-5+"),
        }
        if tags.len() > 2 {
            self.implausible();
        }
        if !tags.is_empty() {
            let list: Vec<String> = tags.iter().map(Tag::describe).collect();
            self.note(format!("VLAN tags (outer first): {}", list.join(" ")));
        }
    }

    fn tcp_opt_len(&mut self, forty: u32) -> usize {
        let random = 4 * self.rng.range(1, 10);
        self.rng
            .weighted(&[(20, 0), (15, 20), (forty, 40), (40, random)])
    }

    fn payload_len(&mut self) -> usize {
        let small = self.rng.range(1, 64);
        let mid = self.rng.range(65, 400);
        self.rng.weighted(&[(65, 0), (20, small), (15, mid)])
    }

    /// A SYN (mostly: some flag combinations Linux does not answer with a
    /// SYN-ACK are mixed in) with options of `opt_len` octets.
    fn syn(&mut self, opt_len: usize, payload_len: usize) -> Tcp {
        #[derive(Clone, Copy)]
        enum F {
            Syn,
            Extras,
            Refused,
        }
        let flags = match self
            .rng
            .weighted(&[(55, F::Syn), (33, F::Extras), (12, F::Refused)])
        {
            F::Syn => SYN,
            F::Extras => {
                let bits = [PSH, URG, ECE, CWR];
                let mut f = SYN | *self.rng.pick(&bits);
                for bit in bits {
                    if self.rng.chance(30) {
                        f |= bit;
                    }
                }
                f
            }
            F::Refused => {
                self.shape("flags-not-opening");
                *self.rng.pick(&[
                    SYN | FIN,
                    SYN | RST,
                    SYN | ACK,
                    ACK,
                    0,
                    SYN | FIN | PSH | URG,
                ])
            }
        };
        let (options, options_desc) = wire::tcp_options(opt_len, &mut self.rng);
        let mut tcp = Tcp {
            src_port: self.ids.src_port,
            dst_port: self.dst_port,
            seq: self.rng.u32(),
            ack: if self.rng.chance(20) {
                self.rng.u32()
            } else {
                0
            },
            flags,
            reserved: 0,
            window: self.rng.u16(),
            urgent: if flags & URG != 0 || self.rng.chance(10) {
                self.rng.u16()
            } else {
                0
            },
            options,
            payload: Vec::new(),
            data_offset: None,
            bad_checksum: false,
        };
        tcp.payload = self.rng.bytes(payload_len);
        let mut extra = String::new();
        if self.rng.chance(5) {
            tcp.reserved = self.rng.range(1, 15) as u8;
            let _ = write!(extra, ", reserved bits {:#x}", tcp.reserved);
            self.shape("tcp-reserved-bits");
        }
        if self.rng.chance(2) {
            tcp.bad_checksum = true;
            extra.push_str(", WRONG checksum");
            self.shape("bad-tcp-checksum");
        }
        if self.rng.chance(3) {
            if !tcp.options.is_empty() && self.rng.chance(50) {
                let words = 5 + self.rng.below(tcp.options.len() / 4) as u8;
                tcp.data_offset = Some(words);
                let _ = write!(
                    extra,
                    ", data offset written {words} (options read as data)"
                );
                self.shape("doff-short");
            } else if tcp.header_len() + tcp.payload.len() < 60 {
                tcp.data_offset = Some(15);
                extra.push_str(", data offset written 15 (past the segment)");
                self.shape("doff-past-segment");
            }
        }
        self.seq = tcp.seq;
        self.note(format!(
            "TCP {} -> {}, seq {:#010x}, flags {}, header {} octets (options {}: {}), \
             payload {} octets{extra}",
            tcp.src_port,
            tcp.dst_port,
            tcp.seq,
            wire::flag_names(tcp.flags),
            tcp.header_len(),
            tcp.options.len(),
            if options_desc.is_empty() {
                "-"
            } else {
                options_desc.as_str()
            },
            tcp.payload.len(),
        ));
        tcp
    }

    /// The header length the gate and Linux will read (the data offset as
    /// written).
    fn written_header_len(tcp: &Tcp) -> usize {
        usize::from(tcp.data_offset.unwrap_or((tcp.header_len() / 4) as u8)) * 4
    }

    fn ipv4_opts(&mut self, percent: u32) -> Vec<u8> {
        if !self.rng.chance(percent) {
            return Vec::new();
        }
        let len = 4 * self.rng.range(1, 10);
        let (bytes, desc) = wire::ipv4_options(len, &mut self.rng);
        self.note(format!("IPv4 options {len} octets: {desc}"));
        if len == 40 {
            self.shape("ip-options-40");
        }
        bytes
    }

    fn v4_header(&mut self, net: &Net, options: Vec<u8>) -> V4 {
        V4 {
            src: net.client_v4,
            dst: net.server_v4,
            tos: if self.rng.chance(70) {
                0
            } else {
                self.rng.u8()
            },
            id: self.ids.frag_id as u16,
            df: self.rng.chance(60),
            mf: false,
            offset_units: 0,
            ttl: self.rng.range(1, 255) as u8,
            protocol: ip_proto::TCP,
            options,
            total_len: None,
        }
    }

    fn frame(&self, tags: &[Tag], ethertype: u16, body: &[u8]) -> Vec<u8> {
        let mut f = wire::ethernet(
            self.env.server_mac,
            self.env.client_mac,
            tags,
            ethertype,
            body,
        );
        if f.len() < MIN_FRAME {
            f.resize(MIN_FRAME, 0);
        }
        f
    }

    fn len4(&mut self) -> Len4 {
        self.rng
            .weighted(&[(80, Len4::Exact), (15, Len4::Trailer), (5, Len4::PastFrame)])
    }

    /// One whole IPv4 datagram carrying `tcp`.
    fn single_v4(
        &mut self,
        tags: &[Tag],
        net: &Net,
        tcp: &Tcp,
        options: Vec<u8>,
        len: Len4,
    ) -> Vec<u8> {
        let seg = tcp.segment(net.client_v4.into(), net.server_v4.into());
        let mut hdr = self.v4_header(net, options);
        let header_len = 20 + hdr.options.len();
        let mut trailer = Vec::new();
        let mut what = "total length exact".to_string();
        match len {
            Len4::Exact => {}
            Len4::Trailer => {
                let n = self.rng.range(1, 64);
                trailer = self.rng.bytes(n);
                what = format!("{} octets after the datagram", trailer.len());
                self.shape("trailing-octets");
            }
            Len4::PastFrame => {
                let more = self.rng.range(1, 64);
                hdr.total_len = Some((header_len + seg.len() + more) as u16);
                what = format!("total length {more} octets past the frame");
                self.shape("length-past-frame");
            }
        }
        self.note(format!(
            "IPv4 {} -> {}, id {:#06x}, DF {}, TTL {}, header {header_len} octets, {what}",
            hdr.src,
            hdr.dst,
            hdr.id,
            u8::from(hdr.df),
            hdr.ttl
        ));
        let mut body = hdr.header(seg.len());
        body.extend_from_slice(&seg);
        body.extend_from_slice(&trailer);
        self.frame(tags, ETHERTYPE_IPV4, &body)
    }

    /// One whole IPv6 packet: header, `exts`, `tcp`.
    fn single_v6(
        &mut self,
        tags: &[Tag],
        net: &Net,
        exts: &[Ext],
        tcp: &Tcp,
        len: Len6,
    ) -> Vec<u8> {
        let seg = tcp.segment(net.client_v6.into(), net.server_v6.into());
        let (first, ext_bytes) = chain(exts, ip_proto::TCP);
        let real = ext_bytes.len() + seg.len();
        let mut trailer = Vec::new();
        let (payload_len, what) = match len {
            Len6::Exact => (real as u16, "payload length exact".to_string()),
            Len6::Trailer => {
                let n = self.rng.range(1, 64);
                trailer = self.rng.bytes(n);
                self.shape("trailing-octets");
                (
                    real as u16,
                    format!("payload length exact, {} octets after it", trailer.len()),
                )
            }
            Len6::PastFrame => {
                let more = self.rng.range(1, 64);
                self.shape("length-past-frame");
                (
                    (real + more) as u16,
                    format!("payload length {more} octets past the frame"),
                )
            }
            Len6::Zero => (0, format!("payload length 0 (real {real})")),
            Len6::Value(v) => (v, format!("payload length {v} (real {real})")),
        };
        let tclass = if self.rng.chance(70) {
            0
        } else {
            self.rng.u8()
        };
        let flow = if self.rng.chance(50) {
            0
        } else {
            self.rng.u32() & 0xfffff
        };
        let hop = self.rng.range(1, 255) as u8;
        self.note(format!(
            "IPv6 {} -> {}, hop limit {hop}, {what}; extension headers: {}",
            net.client_v6,
            net.server_v6,
            describe_chain(exts)
        ));
        let mut body = wire::ipv6_header(
            net.client_v6,
            net.server_v6,
            tclass,
            flow,
            payload_len,
            first,
            hop,
        );
        body.extend_from_slice(&ext_bytes);
        body.extend_from_slice(&seg);
        body.extend_from_slice(&trailer);
        self.frame(tags, ETHERTYPE_IPV6, &body)
    }

    /// `(units + 1) * 8`-octet options or routing header units, weighted
    /// to small, capped by `budget` octets.
    fn ext_units(&mut self, budget: usize) -> u8 {
        let small = self.rng.range(1, 3);
        let mid = self.rng.range(4, 31);
        let large = self.rng.range(32, 255);
        let units = self
            .rng
            .weighted(&[(50, 0), (30, small), (15, mid), (5, large)]);
        let max_units = (budget / 8).saturating_sub(1).min(255);
        units.min(max_units) as u8
    }

    /// A random extension header of a kind weighted as given.
    fn ext_of(&mut self, kind: u8, budget: usize) -> Ext {
        match kind {
            ip_proto::HOP_BY_HOP | ip_proto::DEST_OPTS => {
                let units = self.ext_units(budget);
                let ra = kind == ip_proto::HOP_BY_HOP && self.rng.chance(20);
                Ext::options(kind, units, &mut self.rng, ra, None)
            }
            ip_proto::ROUTING => {
                let units = self.ext_units(budget);
                let rtype = *self.rng.pick(&[253u8, 254, 0, 100, 200]);
                Ext::routing(units, rtype, &mut self.rng)
            }
            ip_proto::FRAGMENT => Ext::fragment(0, false, self.rng.u32()),
            ip_proto::AH => {
                let len = (self.rng.range(1, 8) * 2) as u8;
                self.shape("AH");
                self.implausible();
                Ext::ah(len, &mut self.rng)
            }
            other => unreachable!("no extension header of type {other}"),
        }
    }

    /// Destination options, routing or an atomic fragment header (AH,
    /// which Linux never accepts without a security association, is added
    /// separately and rarely).
    fn random_ext_kind(&mut self) -> u8 {
        self.rng.weighted(&[
            (50, ip_proto::DEST_OPTS),
            (35, ip_proto::ROUTING),
            (15, ip_proto::FRAGMENT),
        ])
    }

    /// Octets left for extension headers in a frame with `tags`, room kept
    /// for the TCP header, `payload` and a trailer.
    fn ext_budget(&self, tags: usize, payload: usize) -> usize {
        self.env
            .max_frame
            .saturating_sub(14 + 4 * tags + 40 + 60 + payload + 64)
            .min(4096)
    }

    fn chain_features(&mut self, exts: &[Ext], tags: usize) {
        let len: usize = exts.iter().map(Ext::len).sum();
        match exts.len() {
            0 => self.shape("chain-0"),
            1..=3 => self.shape("chain-1-3"),
            4..=8 => self.shape("chain-4-8"),
            _ => self.shape("chain-9+"),
        }
        match len {
            0..=255 => {}
            256..=1023 => self.shape("ext-256-1023"),
            _ => self.shape("ext-1024+"),
        }
        if 14 + 4 * tags + 40 + len > 1024 {
            self.shape("l4-past-1024");
        }
        if exts.len() > 8 || len > 512 {
            self.implausible();
        }
    }

    // ---- fragments -------------------------------------------------------

    /// A random cutting plan for a fragmentable part of this layout.
    fn random_plan(&mut self, layout: Layout) -> FragPlan {
        let Layout {
            v6,
            chain,
            last_ext,
            header,
            total,
        } = layout;
        let multiples = |from: usize, to: usize| -> Vec<usize> {
            (from.div_ceil(8).max(1)..)
                .map(|u| u * 8)
                .take_while(|p| *p < to.min(total))
                .collect()
        };
        // Linux takes a first fragment whose chain it cannot read to the
        // end (ipv6_skip_exthdr() fails), but refuses one where it reads
        // the last extension header and finds the TCP header cut (RFC 8200
        // section 4.5): cut before the last header starts, or inside it.
        let chain_cut = multiples(8, last_ext + 1);
        let last_cut = multiples(last_ext + 1, chain);
        let base_cut = multiples(chain, chain + 20);
        let header_cut = multiples(chain + 21, chain + header);
        let whole = multiples(chain + header, total);
        let any = multiples(8, total);
        #[derive(Clone, Copy)]
        enum K {
            Chain,
            Last,
            Base,
            Header,
            Whole,
            Any,
        }
        let k = self.rng.weighted(&[
            (if v6 { 35 } else { 0 }, K::Chain),
            (if v6 { 4 } else { 0 }, K::Last),
            (if v6 { 4 } else { 16 }, K::Base),
            (if v6 { 25 } else { 30 }, K::Header),
            (35, K::Whole),
            (if v6 { 5 } else { 14 }, K::Any),
        ]);
        let from = match k {
            K::Chain => &chain_cut,
            K::Last => &last_cut,
            K::Base => &base_cut,
            K::Header => &header_cut,
            K::Whole => &whole,
            K::Any => &any,
        };
        let from = if from.is_empty() { &any } else { from };
        let first = *self.rng.pick(from);
        let mut cuts = vec![first];
        let later: Vec<usize> = any.iter().copied().filter(|p| *p > first).collect();
        for _ in 0..self.rng.range(0, 3) {
            if later.is_empty() {
                break;
            }
            let p = *self.rng.pick(&later);
            if !cuts.contains(&p) {
                cuts.push(p);
            }
        }
        cuts.sort_unstable();
        let pieces = cuts.len() + 1;
        let odd = if self.rng.chance(if v6 { 5 } else { 20 }) {
            let piece = if self.rng.chance(60) {
                0
            } else {
                self.rng.below(pieces - 1)
            };
            Some((piece, self.rng.range(1, 7), self.rng.chance(50)))
        } else {
            None
        };
        let overlap = if self.rng.chance(12) {
            Some(match self.rng.below(3) {
                0 => Overlap::Duplicate(self.rng.below(pieces)),
                1 if cuts[0] >= chain + 14 => Overlap::ConflictingFirst,
                _ => Overlap::Across(*self.rng.pick(&cuts)),
            })
        } else {
            None
        };
        let order = self.rng.weighted(&[
            (30, Order::Ascending),
            (20, Order::Reversed),
            (50, Order::Shuffled),
        ]);
        FragPlan {
            cuts,
            odd,
            overlap,
            order,
        }
    }

    /// Cuts `bytes` by `plan` and returns the pieces in sending order.
    fn cut(&mut self, bytes: &[u8], layout: Layout, plan: &FragPlan) -> Vec<Piece> {
        let total = bytes.len();
        let first = plan.cuts[0];
        let c = layout.chain;
        self.shape(if first <= layout.last_ext && c > 0 {
            "chain-cut"
        } else if first < c {
            "last-ext-header-cut"
        } else if first < c + 8 && !layout.v6 {
            "ports-only-first"
        } else if first < c + 20 {
            "tcp-base-cut"
        } else if first < c + layout.header {
            "tcp-header-cut"
        } else {
            "whole-header-first"
        });
        if first < c + layout.header {
            self.implausible();
        }
        let mut bounds = vec![0];
        bounds.extend_from_slice(&plan.cuts);
        bounds.push(total);
        let mut pieces: Vec<Piece> = bounds
            .windows(2)
            .enumerate()
            .map(|(i, w)| Piece {
                start: w[0],
                bytes: bytes[w[0]..w[1]].to_vec(),
                more: w[1] < total,
                label: format!("#{i}"),
            })
            .collect();
        let mut notes = Vec::new();
        if let Some((i, extra, garbage)) = plan.odd {
            let end = pieces[i].start + pieces[i].bytes.len();
            let extra = extra.min(total - end);
            if extra > 0 && pieces[i].more {
                let tail = if garbage {
                    self.rng.bytes(extra)
                } else {
                    bytes[end..end + extra].to_vec()
                };
                pieces[i].bytes.extend_from_slice(&tail);
                notes.push(format!(
                    "#{i} carries {extra} more octets ({}) past its multiple of 8",
                    if garbage { "garbage" } else { "true data" }
                ));
                self.shape("odd-length-fragment");
                if garbage {
                    self.shape("garbage-tail");
                }
                self.implausible();
            }
        }
        match plan.overlap {
            None => {}
            Some(Overlap::Duplicate(i)) => {
                let i = i.min(pieces.len() - 1);
                let copy = Piece {
                    start: pieces[i].start,
                    bytes: pieces[i].bytes.clone(),
                    more: pieces[i].more,
                    label: format!("#{i}'"),
                };
                notes.push(format!("#{i}' is an exact copy of #{i}"));
                self.shape("duplicate-fragment");
                pieces.push(copy);
            }
            Some(Overlap::ConflictingFirst) => {
                let mut bytes0 = pieces[0].bytes.clone();
                let at = c + 13;
                if at < bytes0.len() {
                    bytes0[at] = (bytes0[at] & !SYN) | ACK;
                    notes.push(
                        "#0' is #0 with the TCP flags turned to ACK (checksum not fixed)"
                            .to_string(),
                    );
                    self.shape("conflicting-first-fragment");
                    self.implausible();
                    pieces.push(Piece {
                        start: 0,
                        bytes: bytes0,
                        more: true,
                        label: "#0'".to_string(),
                    });
                }
            }
            Some(Overlap::Across(at)) => {
                let start = at.saturating_sub(8);
                let end = (at + 8).min(total);
                notes.push(format!("#x [{start},{end}) overlaps the cut at {at}"));
                self.shape("overlapping-fragment");
                self.implausible();
                pieces.push(Piece {
                    start,
                    bytes: bytes[start..end].to_vec(),
                    more: end < total,
                    label: "#x".to_string(),
                });
            }
        }
        match plan.order {
            Order::Ascending => {}
            Order::Reversed => pieces.reverse(),
            Order::Shuffled => self.rng.shuffle(&mut pieces),
        }
        let list: Vec<String> = pieces
            .iter()
            .map(|p| {
                format!(
                    "{} [{},{}){}",
                    p.label,
                    p.start,
                    p.start + p.bytes.len(),
                    if p.more { " MF" } else { "" }
                )
            })
            .collect();
        self.note(format!(
            "fragmentable part {total} octets (extension headers {c}, TCP header {}), \
             fragment id {:#x}, sent in this order ({:?}): {}",
            layout.header,
            if layout.v6 {
                self.ids.frag_id
            } else {
                u32::from(self.ids.frag_id as u16)
            },
            plan.order,
            list.join(", ")
        ));
        for n in notes {
            self.note(n);
        }
        pieces
    }

    fn emit_v4_fragments(
        &mut self,
        tags: &[Tag],
        net: &Net,
        options: &[u8],
        pieces: &[Piece],
    ) -> Vec<Vec<u8>> {
        let options_everywhere = !options.is_empty() && self.rng.chance(30);
        if !options.is_empty() {
            self.note(if options_everywhere {
                "IP options in every fragment"
            } else {
                "IP options in the first fragment only"
            });
        }
        let mut template = self.v4_header(net, Vec::new());
        template.df = false;
        self.note(format!(
            "IPv4 {} -> {}, TTL {}",
            template.src, template.dst, template.ttl
        ));
        pieces
            .iter()
            .map(|p| {
                let mut h = template.clone();
                h.mf = p.more;
                h.offset_units = (p.start / 8) as u16;
                if p.start == 0 || options_everywhere {
                    h.options = options.to_vec();
                }
                let mut body = h.header(p.bytes.len());
                body.extend_from_slice(&p.bytes);
                self.frame(tags, ETHERTYPE_IPV4, &body)
            })
            .collect()
    }

    /// IPv6 fragments: `unfrag` (repeated in every fragment or only in the
    /// first), the Fragment header naming `next`, the piece.
    fn emit_v6_fragments(
        &mut self,
        tags: &[Tag],
        net: &Net,
        unfrag: &[Ext],
        next: u8,
        pieces: &[Piece],
    ) -> Vec<Vec<u8>> {
        let repeat = unfrag.is_empty() || self.rng.chance(80);
        let hop = self.rng.range(1, 255) as u8;
        self.note(format!(
            "IPv6 {} -> {}, unfragmentable headers: {}{}",
            net.client_v6,
            net.server_v6,
            describe_chain(unfrag),
            if repeat { "" } else { " (first fragment only)" }
        ));
        pieces
            .iter()
            .map(|p| {
                let mut exts: Vec<Ext> = if p.start == 0 || repeat {
                    unfrag.to_vec()
                } else {
                    Vec::new()
                };
                exts.push(Ext::fragment(
                    (p.start / 8) as u16,
                    p.more,
                    self.ids.frag_id,
                ));
                let (first, mut ext_bytes) = chain(&exts, next);
                ext_bytes.extend_from_slice(&p.bytes);
                let mut body = wire::ipv6_header(
                    net.client_v6,
                    net.server_v6,
                    0,
                    0,
                    ext_bytes.len() as u16,
                    first,
                    hop,
                );
                body.extend_from_slice(&ext_bytes);
                self.frame(tags, ETHERTYPE_IPV6, &body)
            })
            .collect()
    }

    // ---- categories -------------------------------------------------------

    fn plain(&mut self) -> Vec<Vec<u8>> {
        let tags = self.decoration();
        let net = self.base();
        let opt_len = self.tcp_opt_len(25);
        let payload = self.payload_len();
        if self.rng.chance(50) {
            let tcp = self.syn(opt_len, payload);
            let len =
                self.rng
                    .weighted(&[(80, Len6::Exact), (15, Len6::Trailer), (5, Len6::PastFrame)]);
            vec![self.single_v6(&tags, &net, &[], &tcp, len)]
        } else {
            let options = self.ipv4_opts(40);
            let tcp = self.syn(opt_len, payload);
            let len = self.len4();
            vec![self.single_v4(&tags, &net, &tcp, options, len)]
        }
    }

    fn frag_v4(&mut self) -> Vec<Vec<u8>> {
        let tags = self.decoration();
        let net = self.base();
        let options = self.ipv4_opts(40);
        let opt_len = self.tcp_opt_len(40);
        let payload = self.payload_len();
        let tcp = self.syn(opt_len, payload);
        let seg = tcp.segment(net.client_v4.into(), net.server_v4.into());
        let layout = Layout {
            v6: false,
            chain: 0,
            last_ext: 0,
            header: Self::written_header_len(&tcp),
            total: seg.len(),
        };
        let plan = self.random_plan(layout);
        let pieces = self.cut(&seg, layout, &plan);
        self.emit_v4_fragments(&tags, &net, &options, &pieces)
    }

    fn frag_v6(&mut self) -> Vec<Vec<u8>> {
        let tags = self.decoration();
        let net = self.base();
        let mut unfrag = Vec::new();
        if self.rng.chance(30) {
            unfrag.push(self.ext_of(ip_proto::HOP_BY_HOP, 64));
        }
        if self.rng.chance(30) {
            let kind = *self.rng.pick(&[ip_proto::DEST_OPTS, ip_proto::ROUTING]);
            unfrag.push(self.ext_of(kind, 64));
        }
        let count = self.rng.weighted(&[(35, 0), (30, 1), (20, 2), (15, 3)]);
        let mut exts = Vec::new();
        for _ in 0..count {
            // No fragment header behind the real one (Linux refuses a
            // nested one, atomic or not), but now and then.
            let kind = self.rng.weighted(&[
                (55, ip_proto::DEST_OPTS),
                (40, ip_proto::ROUTING),
                (2, ip_proto::FRAGMENT),
                (3, ip_proto::AH),
            ]);
            if kind == ip_proto::FRAGMENT {
                self.shape("nested-fragment-header");
                self.implausible();
            }
            exts.push(self.ext_of(kind, 96));
        }
        let opt_len = self.tcp_opt_len(40);
        let payload = self.payload_len();
        let tcp = self.syn(opt_len, payload);
        let seg = tcp.segment(net.client_v6.into(), net.server_v6.into());
        let (next, mut part) = chain(&exts, ip_proto::TCP);
        if !exts.is_empty() {
            self.note(format!(
                "extension headers after the Fragment header: {}",
                describe_chain(&exts)
            ));
        }
        let mut all = unfrag.clone();
        all.extend(exts.iter().cloned());
        all.push(Ext::fragment(0, true, 0));
        if all.len() > 8 {
            self.implausible();
        }
        let layout = Layout {
            v6: true,
            chain: part.len(),
            last_ext: part.len() - exts.last().map_or(0, Ext::len),
            header: Self::written_header_len(&tcp),
            total: part.len() + seg.len(),
        };
        part.extend_from_slice(&seg);
        let plan = self.random_plan(layout);
        let pieces = self.cut(&part, layout, &plan);
        self.emit_v6_fragments(&tags, &net, &unfrag, next, &pieces)
    }

    fn vlan(&mut self) -> Vec<Vec<u8>> {
        let many = self.rng.range(5, 10);
        let count = self
            .rng
            .weighted(&[(10, 1), (15, 2), (25, 3), (20, 4), (30, many)]);
        #[derive(Clone, Copy)]
        enum T {
            Base,
            Q100,
            Ad300,
            QinQ,
            Unknown,
        }
        let has = |name: &str| self.env.nets.iter().any(|n| n.name == name);
        let target = self.rng.weighted(&[
            (60, T::Base),
            (if has("Q100") { 15 } else { 0 }, T::Q100),
            (if has("AD300") { 5 } else { 0 }, T::Ad300),
            (if has("AD300/Q400") { 10 } else { 0 }, T::QinQ),
            (10, T::Unknown),
        ]);
        let (net, path) = match target {
            T::Unknown => {
                let mut vid = self.rng.range(1, 4094) as u16;
                if [100, 300, 400].contains(&vid) {
                    vid += 1;
                }
                let tpid = *self.rng.pick(&[TPID_8021Q, TPID_8021AD]);
                self.shape("unserved-vid");
                self.implausible();
                (self.base(), vec![Tag { tpid, tci: vid }])
            }
            other => {
                let name = match other {
                    T::Base => "base",
                    T::Q100 => "Q100",
                    T::Ad300 => "AD300",
                    _ => "AD300/Q400",
                };
                let net = self.env.net(name).clone();
                let path = net.path.clone();
                (net, path)
            }
        };
        self.shape(match target {
            T::Base => "to-veth",
            T::Q100 => "to-Q100",
            T::Ad300 => "to-AD300",
            T::QinQ => "to-AD300/Q400",
            T::Unknown => "to-nowhere",
        });
        let total = count.max(path.len());
        let mut slots: Vec<usize> = (0..total).collect();
        self.rng.shuffle(&mut slots);
        let mut at: Vec<usize> = slots[..path.len()].to_vec();
        at.sort_unstable();
        let mut tags = Vec::with_capacity(total);
        let mut next_path = 0;
        for slot in 0..total {
            if next_path < path.len() && at[next_path] == slot {
                let pcp = self.rng.range(0, 7) as u16;
                tags.push(Tag {
                    tpid: path[next_path].tpid,
                    tci: (pcp << 13) | path[next_path].vid(),
                });
                next_path += 1;
            } else {
                tags.push(self.vid0_tag());
            }
        }
        self.tags_feature(&tags);
        let opt_len = self.tcp_opt_len(20);
        let payload = self.payload_len();
        if self.rng.chance(50) {
            let exts = if self.rng.chance(20) {
                let kind = *self.rng.pick(&[ip_proto::HOP_BY_HOP, ip_proto::DEST_OPTS]);
                vec![self.ext_of(kind, 64)]
            } else {
                Vec::new()
            };
            let tcp = self.syn(opt_len, payload);
            vec![self.single_v6(&tags, &net, &exts, &tcp, Len6::Exact)]
        } else {
            let options = self.ipv4_opts(20);
            let tcp = self.syn(opt_len, payload);
            vec![self.single_v4(&tags, &net, &tcp, options, Len4::Exact)]
        }
    }

    fn ext_chain(&mut self) -> Vec<Vec<u8>> {
        let tags = self.decoration();
        let net = self.base();
        let (few, some, many) = (
            self.rng.range(0, 3),
            self.rng.range(4, 8),
            self.rng.range(9, 16),
        );
        let count = self.rng.weighted(&[(40, few), (35, some), (25, many)]);
        let payload = self.payload_len();
        let mut budget = self.ext_budget(tags.len(), payload);
        let mut exts = Vec::new();
        // Linux refuses a second fragment header (also an atomic one), a
        // hop-by-hop header that is not first, and AH without a security
        // association: each only now and then.
        let ah_at = self.rng.chance(8).then(|| self.rng.below(count.max(1)));
        let mut fragment_seen = false;
        for i in 0..count {
            if budget < 8 {
                break;
            }
            let mut kind = if Some(i) == ah_at {
                ip_proto::AH
            } else if i == 0 && self.rng.chance(40) {
                ip_proto::HOP_BY_HOP
            } else if i > 0 && self.rng.chance(2) {
                self.shape("hbh-not-first");
                self.implausible();
                ip_proto::HOP_BY_HOP
            } else {
                self.random_ext_kind()
            };
            if kind == ip_proto::FRAGMENT {
                if fragment_seen && !self.rng.chance(10) {
                    kind = ip_proto::DEST_OPTS;
                } else if fragment_seen {
                    self.shape("fragment-header-twice");
                    self.implausible();
                }
                fragment_seen = true;
            }
            let ext = self.ext_of(kind, budget);
            budget = budget.saturating_sub(ext.len());
            exts.push(ext);
        }
        self.chain_features(&exts, tags.len());
        let opt_len = self.tcp_opt_len(25);
        let tcp = self.syn(opt_len, payload);
        let len = self.rng.weighted(&[(85, Len6::Exact), (15, Len6::Trailer)]);
        vec![self.single_v6(&tags, &net, &exts, &tcp, len)]
    }

    fn hbh_len0(&mut self) -> Vec<Vec<u8>> {
        let tags = self.decoration();
        let net = self.base();
        self.implausible();
        let payload = self.payload_len();
        let mut budget = self.ext_budget(tags.len(), payload);
        let mut exts = Vec::new();
        if self.rng.chance(95) {
            let (small, large) = (self.rng.range(1, 4), self.rng.range(5, 63));
            let units = self.rng.weighted(&[(40, 0), (40, small), (20, large)]);
            let units = units.min((budget / 8).saturating_sub(1)) as u8;
            let ra = self.rng.chance(20);
            let jumbo = if self.rng.chance(4) {
                self.shape("jumbo-option");
                Some(self.rng.range(65536, 200_000) as u32)
            } else {
                None
            };
            let hbh = Ext::options(ip_proto::HOP_BY_HOP, units, &mut self.rng, ra, jumbo);
            budget = budget.saturating_sub(hbh.len());
            exts.push(hbh);
        } else {
            self.shape("no-hbh");
        }
        let two_or_three = self.rng.range(2, 3);
        let more = self.rng.weighted(&[(50, 0), (25, 1), (25, two_or_three)]);
        for _ in 0..more {
            if budget < 8 {
                break;
            }
            let kind = self.rng.weighted(&[
                (50, ip_proto::DEST_OPTS),
                (40, ip_proto::ROUTING),
                (5, ip_proto::FRAGMENT),
                (5, ip_proto::AH),
            ]);
            if kind == ip_proto::FRAGMENT {
                self.shape("fragment-header");
            }
            let ext = self.ext_of(kind, budget.min(512));
            budget = budget.saturating_sub(ext.len());
            exts.push(ext);
        }
        self.chain_features(&exts, tags.len());
        let opt_len = self.tcp_opt_len(25);
        let tcp = self.syn(opt_len, payload);
        let len = if self.rng.chance(90) {
            self.shape("payload-len-0");
            Len6::Zero
        } else {
            self.shape("payload-len-hbh-only");
            Len6::Value(exts.first().map_or(0, |e| e.len() as u16))
        };
        vec![self.single_v6(&tags, &net, &exts, &tcp, len)]
    }

    fn nonlinear(&mut self) -> Vec<Vec<u8>> {
        let target = self
            .rng
            .range(NONLINEAR_FRAME, self.env.max_frame.min(9000));
        self.shape("paged");
        if self.rng.chance(80) {
            let tags = self.decoration();
            let net = self.base();
            // 136 to 320 octets of extension headers, in 1 to 3 headers.
            let mut units_left = self.rng.range(17, 40);
            let n = self.rng.range(1, 3);
            let mut exts = Vec::new();
            for i in 0..n {
                let share = if i + 1 == n {
                    units_left
                } else {
                    self.rng.range(1, units_left - (n - i - 1))
                };
                units_left -= share;
                let kind = if i == 0 && self.rng.chance(30) {
                    ip_proto::HOP_BY_HOP
                } else {
                    *self.rng.pick(&[ip_proto::DEST_OPTS, ip_proto::ROUTING])
                };
                let units = (share - 1) as u8;
                exts.push(match kind {
                    ip_proto::ROUTING => {
                        let rtype = *self.rng.pick(&[253u8, 254, 0]);
                        Ext::routing(units, rtype, &mut self.rng)
                    }
                    k => Ext::options(k, units, &mut self.rng, false, None),
                });
            }
            self.chain_features(&exts, tags.len());
            let ext_len: usize = exts.iter().map(Ext::len).sum();
            let opt_len = self.tcp_opt_len(30);
            let fixed = 14 + 4 * tags.len() + 40 + ext_len + 20 + opt_len;
            // Where the fixed TCP header and its options end, against the
            // 256 octets a TC program commonly pulls into the linear area.
            let base_end = fixed - opt_len;
            self.shape(if base_end > 256 {
                "tcp-header-past-256"
            } else if fixed > 256 {
                "tcp-options-past-256"
            } else {
                "tcp-header-within-256"
            });
            let fill = target.saturating_sub(fixed);
            if self.rng.chance(60) {
                let tcp = self.syn(opt_len, fill);
                self.note("made long by SYN payload".to_string());
                vec![self.single_v6(&tags, &net, &exts, &tcp, Len6::Exact)]
            } else {
                let tcp = self.syn(opt_len, 0);
                let mut f = self.single_v6(&tags, &net, &exts, &tcp, Len6::Exact);
                let pad = target.saturating_sub(f.len());
                f.extend(self.rng.bytes(pad));
                self.note(format!("made long by {pad} octets after the packet"));
                self.shape("trailing-octets");
                vec![f]
            }
        } else {
            let n = self.rng.range(0, 8);
            let tags: Vec<Tag> = (0..n).map(|_| self.vid0_tag()).collect();
            self.tags_feature(&tags);
            let net = self.base();
            let options = self.ipv4_opts(50);
            let opt_len = self.tcp_opt_len(30);
            let fixed = 14 + 4 * tags.len() + 20 + options.len() + 20 + opt_len;
            let tcp = self.syn(opt_len, target.saturating_sub(fixed));
            vec![self.single_v4(&tags, &net, &tcp, options, Len4::Exact)]
        }
    }

    // ---- the fixed shapes ---------------------------------------------------

    /// A plain SYN (flags SYN only) with `opt_len` octets of options.
    fn fixed_syn(&mut self, opt_len: usize, payload: usize) -> Tcp {
        let (options, desc) = wire::tcp_options(opt_len, &mut self.rng);
        let tcp = Tcp {
            src_port: self.ids.src_port,
            dst_port: self.dst_port,
            seq: self.rng.u32(),
            ack: 0,
            flags: SYN,
            reserved: 0,
            window: 64240,
            urgent: 0,
            options,
            payload: self.rng.bytes(payload),
            data_offset: None,
            bad_checksum: false,
        };
        self.seq = tcp.seq;
        self.note(format!(
            "TCP {} -> {}, seq {:#010x}, flags SYN, header {} octets (options: {desc}), \
             payload {payload} octets",
            tcp.src_port,
            tcp.dst_port,
            tcp.seq,
            tcp.header_len()
        ));
        tcp
    }

    fn fixed_frag_v4(&mut self, ip_opts: usize, opt_len: usize, plan: FragPlan) -> Vec<Vec<u8>> {
        let net = self.base();
        let options = if ip_opts > 0 {
            let (bytes, desc) = wire::ipv4_options(ip_opts, &mut self.rng);
            self.note(format!("IPv4 options {ip_opts} octets: {desc}"));
            bytes
        } else {
            Vec::new()
        };
        let tcp = self.fixed_syn(opt_len, 0);
        let seg = tcp.segment(net.client_v4.into(), net.server_v4.into());
        let layout = Layout {
            v6: false,
            chain: 0,
            last_ext: 0,
            header: tcp.header_len(),
            total: seg.len(),
        };
        let pieces = self.cut(&seg, layout, &plan);
        self.emit_v4_fragments(&[], &net, &options, &pieces)
    }

    fn fixed_frag_v6(&mut self, exts: Vec<Ext>, opt_len: usize, plan: FragPlan) -> Vec<Vec<u8>> {
        let net = self.base();
        let tcp = self.fixed_syn(opt_len, 0);
        let seg = tcp.segment(net.client_v6.into(), net.server_v6.into());
        let (next, mut part) = chain(&exts, ip_proto::TCP);
        self.note(format!(
            "extension headers after the Fragment header: {}",
            describe_chain(&exts)
        ));
        let layout = Layout {
            v6: true,
            chain: part.len(),
            last_ext: part.len() - exts.last().map_or(0, Ext::len),
            header: tcp.header_len(),
            total: part.len() + seg.len(),
        };
        part.extend_from_slice(&seg);
        let pieces = self.cut(&part, layout, &plan);
        self.emit_v6_fragments(&[], &net, &[], next, &pieces)
    }

    fn regression(&mut self, k: usize) -> Vec<Vec<u8>> {
        let plan = |cuts: Vec<usize>, order: Order| FragPlan {
            cuts,
            odd: None,
            overlap: None,
            order,
        };
        match REGRESSIONS[k] {
            "v4-tcp-header-cut-24" => self.fixed_frag_v4(0, 40, plan(vec![24], Order::Ascending)),
            "v4-tcp-header-cut-32-second-first" => {
                self.fixed_frag_v4(0, 40, plan(vec![32], Order::Reversed))
            }
            "v4-ip-options-40-tcp-header-cut-24" => {
                self.fixed_frag_v4(40, 40, plan(vec![24], Order::Ascending))
            }
            "v4-odd-first-fragment-28-of-40" => self.fixed_frag_v4(
                0,
                20,
                FragPlan {
                    cuts: vec![24],
                    odd: Some((0, 4, false)),
                    overlap: None,
                    order: Order::Ascending,
                },
            ),
            "v6-frag-tcp-header-cut-24" => {
                self.fixed_frag_v6(Vec::new(), 40, plan(vec![24], Order::Ascending))
            }
            "v6-frag-chain-cut-dst-dst" => {
                let exts = vec![
                    Ext::options(ip_proto::DEST_OPTS, 0, &mut self.rng, false, None),
                    Ext::options(ip_proto::DEST_OPTS, 0, &mut self.rng, false, None),
                ];
                self.fixed_frag_v6(exts, 0, plan(vec![8], Order::Ascending))
            }
            "v6-frag-chain-cut-inside-routing" => {
                let exts = vec![
                    Ext::options(ip_proto::DEST_OPTS, 0, &mut self.rng, false, None),
                    Ext::routing(2, 253, &mut self.rng),
                    Ext::options(ip_proto::DEST_OPTS, 0, &mut self.rng, false, None),
                ];
                self.fixed_frag_v6(exts, 0, plan(vec![16], Order::Reversed))
            }
            "v6-payload-len-0-hbh" => {
                self.implausible();
                self.shape("payload-len-0");
                let net = self.base();
                let exts = vec![Ext::options(
                    ip_proto::HOP_BY_HOP,
                    0,
                    &mut self.rng,
                    false,
                    None,
                )];
                let tcp = self.fixed_syn(20, 0);
                vec![self.single_v6(&[], &net, &exts, &tcp, Len6::Zero)]
            }
            "vlan-3-priority-tags-v4" => {
                let net = self.base();
                let tags = vec![
                    Tag {
                        tpid: TPID_8021Q,
                        tci: 0
                    };
                    3
                ];
                self.tags_feature(&tags);
                self.shape("to-veth");
                let tcp = self.fixed_syn(20, 0);
                vec![self.single_v4(&tags, &net, &tcp, Vec::new(), Len4::Exact)]
            }
            "vlan-4-priority-tags-v6" => {
                let net = self.base();
                let mut tags = vec![
                    Tag {
                        tpid: TPID_8021Q,
                        tci: 0
                    };
                    4
                ];
                tags[0].tpid = TPID_8021AD;
                self.tags_feature(&tags);
                self.shape("to-veth");
                let tcp = self.fixed_syn(20, 0);
                vec![self.single_v6(&tags, &net, &[], &tcp, Len6::Exact)]
            }
            "nonlinear-v6-dst-224" => {
                self.shape("paged");
                self.shape("tcp-header-past-256");
                let net = self.base();
                let exts = vec![Ext::options(
                    ip_proto::DEST_OPTS,
                    27,
                    &mut self.rng,
                    false,
                    None,
                )];
                let fixed = 14 + 40 + 224 + 20;
                let tcp = self.fixed_syn(0, 4200 - fixed);
                vec![self.single_v6(&[], &net, &exts, &tcp, Len6::Exact)]
            }
            other => unreachable!("no regression {other}"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use testkit::packets::TcpFrame;

    fn env(max_frame: usize) -> Env {
        let net = Net::numbered;
        Env {
            client_mac: [2, 0, 0, 0, 0, 1],
            server_mac: [2, 0, 0, 0, 0, 2],
            nets: vec![
                net("base", vec![], 1),
                net(
                    "Q100",
                    vec![Tag {
                        tpid: TPID_8021Q,
                        tci: 100,
                    }],
                    100,
                ),
                net(
                    "AD300",
                    vec![Tag {
                        tpid: TPID_8021AD,
                        tci: 300,
                    }],
                    103,
                ),
                net(
                    "AD300/Q400",
                    vec![
                        Tag {
                            tpid: TPID_8021AD,
                            tci: 300,
                        },
                        Tag {
                            tpid: TPID_8021Q,
                            tci: 400,
                        },
                    ],
                    104,
                ),
            ],
            max_frame,
        }
    }

    fn ids(n: usize) -> Ids {
        Ids {
            src_port: 10_000 + n as u16,
            frag_id: 0x1000 + n as u32,
        }
    }

    #[test]
    fn cases_are_reproducible_and_fit() {
        for max in [1514, 3414, 9014] {
            let env = env(max);
            for n in 0..600 {
                let recipe = random_recipe(&env, 42, n);
                let a = build(&env, recipe, ids(n), 25);
                let b = build(&env, recipe, ids(n), 25);
                assert_eq!(a.frames, b.frames, "{}", a.describe());
                assert!(a
                    .frames
                    .iter()
                    .all(|f| f.len() <= max && f.len() >= MIN_FRAME));
                // Other identifiers and port: same shape.
                let c = build(&env, recipe, ids(n + 1), 2525);
                assert_eq!(a.frames.len(), c.frames.len());
                assert_eq!(a.shape, c.shape);
                assert_eq!(a.plausible, c.plausible);
            }
            for recipe in regression_recipes(&env) {
                let case = build(&env, recipe, ids(0), 25);
                assert!(!case.frames.is_empty(), "{}", case.describe());
            }
        }
    }

    /// Unfragmented cases with ordinary lengths parse with the independent
    /// parser of `packets`, checksums included.
    #[test]
    fn whole_segments_parse_back() {
        let env = env(1514);
        let mut parsed = 0;
        for n in 0..400 {
            let recipe = random_recipe(&env, 7, n);
            let case = build(&env, recipe, ids(n), 25);
            let simple = matches!(case.category, Category::Plain | Category::Vlan)
                && case.frames.len() == 1
                && !case.shape.iter().any(|s| {
                    matches!(
                        *s,
                        "bad-tcp-checksum"
                            | "length-past-frame"
                            | "doff-past-segment"
                            | "doff-short"
                            | "tags-5+"
                    )
                });
            if !simple {
                continue;
            }
            let frame = TcpFrame::parse(&case.frames[0])
                .unwrap_or_else(|e| panic!("{e}:\n{}", case.describe()));
            assert_eq!(frame.tcp.src_port, case.ids.src_port);
            assert_eq!(frame.tcp.seq, case.seq);
            parsed += 1;
        }
        assert!(parsed > 50, "only {parsed} simple cases");
    }

    /// Reassembling the fragments of a case (in offset order, first copy
    /// wins) gives back a segment whose checksum is right.
    #[test]
    fn v4_fragments_reassemble() {
        let env = env(1514);
        let mut checked = 0;
        for n in 0..600 {
            let recipe = random_recipe(&env, 11, n);
            let case = build(&env, recipe, ids(n), 25);
            if case.category != Category::FragV4
                || case.shape.iter().any(|s| {
                    matches!(
                        *s,
                        "odd-length-fragment"
                            | "conflicting-first-fragment"
                            | "overlapping-fragment"
                            | "bad-tcp-checksum"
                    )
                })
                || !case.lines.iter().all(|l| !l.contains("VLAN"))
            {
                continue;
            }
            let mut data = vec![None; 65536];
            let mut end = 0;
            for f in &case.frames {
                let ihl = usize::from(f[14] & 0x0f) * 4;
                let total = usize::from(u16::from_be_bytes([f[16], f[17]]));
                let frag = u16::from_be_bytes([f[20], f[21]]);
                let off = usize::from(frag & 0x1fff) * 8;
                let payload = &f[14 + ihl..14 + total];
                for (i, b) in payload.iter().enumerate() {
                    data[off + i].get_or_insert(*b);
                }
                if frag & 0x2000 == 0 {
                    end = off + payload.len();
                }
            }
            let seg: Vec<u8> = data[..end].iter().map(|b| b.expect("hole")).collect();
            let sum = testkit::packets::transport_checksum(
                env.nets[0].client_v4.into(),
                env.nets[0].server_v4.into(),
                ip_proto::TCP,
                &seg,
            );
            assert_eq!(sum, 0, "{}", case.describe());
            checked += 1;
        }
        assert!(checked > 20, "only {checked} fragment cases checked");
    }
}
