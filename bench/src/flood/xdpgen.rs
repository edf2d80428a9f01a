//! The second generator: XDP live frames (BPF_PROG_TEST_RUN with
//! BPF_F_TEST_XDP_LIVE_FRAMES, as the kernel's xdp-trafficgen does). A
//! tiny XDP program, assembled here, runs on a SYN frame "received" on the
//! client veth, gives it a random source (198.18.x.y, /16 of the spoofed
//! range) and source port with incrementally updated checksums, and
//! returns XDP_TX: the client veth hands the frame to the server veth as
//! an xdp_frame, the way a NIC hands DMA buffers to its driver. The
//! server's XDP program then sees raw frames with no socket buffer, and
//! everything else (tc, nftables, TCP) sees socket buffers that the veth
//! builds for it, as a NIC driver would.
//!
//! Bounded like the AF_PACKET generator: each syscall runs a bounded number
//! of frames, the loop stops at the deadline, after `max_packets`, or on
//! `stop`.

use std::{
    io,
    net::Ipv4Addr,
    sync::atomic::{AtomicBool, Ordering},
    time::Instant,
};

use testkit::packets::{tcp_flags, PacketBuilder, LINUX_SYN_OPTIONS};

use super::{
    gen::{GenConfig, GenResult},
    sys,
};
use crate::bpf_asm::{
    self, bpf, insn, load_xdp as load, put_u32, Insn, ProgFd, ADD64_IMM, ADD64_REG, AND64_IMM,
    BPF_LINK_CREATE, BPF_XDP, CALL, EXIT, JGT_REG, JNE_IMM, LDX_H, LDX_W, MOV64_IMM, MOV64_REG,
    OR64_IMM, RSH64_IMM, STX_H, ST_B, ST_H, ST_W, XDP_DROP, XDP_PASS, XDP_TX, XOR64_IMM,
};

const BPF_F_TEST_XDP_LIVE_FRAMES: u32 = 1 << 1;
/// Generator CPU time one BPF_PROG_TEST_RUN call is sized to.
const CALL_CPU_SECONDS: f64 = 0.1;
const BPF_FUNC_GET_PRANDOM_U32: i32 = 7;

/// Offsets in an untagged Ethernet + IPv4 (no options) + TCP frame.
const IP_CSUM: i16 = 14 + 10;
const IP_SRC_LOW: i16 = 14 + 14;
const TCP_SPORT: i16 = 14 + 20;
const TCP_CSUM: i16 = 14 + 20 + 16;

/// r4 = ~(fold(r4)) over 16 bits, r5 scratch.
fn fold_and_invert(p: &mut Vec<Insn>) {
    for _ in 0..2 {
        p.push(insn(MOV64_REG, 5, 4, 0, 0));
        p.push(insn(RSH64_IMM, 5, 0, 0, 16));
        p.push(insn(AND64_IMM, 4, 0, 0, 0xffff));
        p.push(insn(ADD64_REG, 4, 5, 0, 0));
    }
    p.push(insn(XOR64_IMM, 4, 0, 0, 0xffff));
}

/// r4 += ~reg (16 bits), r5 scratch.
fn add_complement(p: &mut Vec<Insn>, reg: u8) {
    p.push(insn(MOV64_REG, 5, reg, 0, 0));
    p.push(insn(XOR64_IMM, 5, 0, 0, 0xffff));
    p.push(insn(ADD64_REG, 4, 5, 0, 0));
}

/// The program: rewrites the whole `template` frame first (pages are
/// recycled: a frame the gate turned into a RST in place comes back to the
/// generator as one), then a random low 16 bits of the source address and
/// a random source port (>= 1024), IPv4 and TCP checksums updated as RFC
/// 1624 says, XDP_TX. All 16-bit words are loaded and stored alike (little
/// endian), which one's complement sums do not mind.
fn program(template: &[u8]) -> Vec<Insn> {
    let mut p = vec![
        insn(MOV64_REG, 6, 1, 0, 0),                   // r6 = ctx
        insn(CALL, 0, 0, 0, BPF_FUNC_GET_PRANDOM_U32), // r0 = random
        insn(MOV64_REG, 7, 0, 0, 0),                   // r7 = random
        insn(LDX_W, 2, 6, 0, 0),                       // r2 = data
        insn(LDX_W, 3, 6, 4, 0),                       // r3 = data_end
        insn(MOV64_REG, 4, 2, 0, 0),
        insn(ADD64_IMM, 4, 0, 0, template.len() as i32),
        insn(JGT_REG, 4, 3, 0, 0), // if data + len > data_end: out (patched)
    ];
    let mut at = 0;
    while at < template.len() {
        let rest = &template[at..];
        let (code, size, imm) = match rest.len() {
            4.. => (
                ST_W,
                4,
                i32::from_le_bytes(rest[..4].try_into().expect("4 octets")),
            ),
            2 | 3 => (ST_H, 2, i32::from(u16::from_le_bytes([rest[0], rest[1]]))),
            _ => (ST_B, 1, i32::from(rest[0])),
        };
        p.push(insn(code, 2, 0, at as i16, imm));
        at += size;
    }
    p.extend([
        insn(MOV64_REG, 8, 7, 0, 0),
        insn(AND64_IMM, 8, 0, 0, 0xffff), // r8 = new address word
        insn(LDX_H, 9, 2, IP_SRC_LOW, 0), // r9 = old address word
        insn(STX_H, 2, 8, IP_SRC_LOW, 0),
        insn(MOV64_REG, 0, 7, 0, 0),
        insn(RSH64_IMM, 0, 0, 0, 16),
        insn(OR64_IMM, 0, 0, 0, 4), // r0 = new port (first octet >= 4)
        insn(LDX_H, 1, 2, TCP_SPORT, 0), // r1 = old port
        insn(STX_H, 2, 0, TCP_SPORT, 0),
        insn(LDX_H, 4, 2, IP_CSUM, 0),
        insn(XOR64_IMM, 4, 0, 0, 0xffff),
    ]);
    add_complement(&mut p, 9);
    p.push(insn(ADD64_REG, 4, 8, 0, 0));
    fold_and_invert(&mut p);
    p.push(insn(STX_H, 2, 4, IP_CSUM, 0));
    p.push(insn(LDX_H, 4, 2, TCP_CSUM, 0));
    p.push(insn(XOR64_IMM, 4, 0, 0, 0xffff));
    add_complement(&mut p, 9);
    p.push(insn(ADD64_REG, 4, 8, 0, 0));
    add_complement(&mut p, 1);
    p.push(insn(ADD64_REG, 4, 0, 0, 0));
    fold_and_invert(&mut p);
    p.push(insn(STX_H, 2, 4, TCP_CSUM, 0));
    let out = p.len();
    p[7].off = (out - 8) as i16;
    p.push(insn(MOV64_IMM, 0, 0, 0, XDP_TX));
    p.push(insn(EXIT, 0, 0, 0, 0));
    p
}

/// The client veth's guard: drops every IPv4 frame addressed to
/// 198.18.0.0/15 (the server's answers to spoofed sources: SYN-ACKs,
/// RSTs) before it costs the client namespace anything, passes the rest.
/// Being an XDP program, it also lets the veth deliver the gate's XDP_TX
/// RSTs.
fn guard_program() -> Vec<Insn> {
    vec![
        insn(LDX_W, 2, 1, 0, 0), // r2 = data
        insn(LDX_W, 3, 1, 4, 0), // r3 = data_end
        insn(MOV64_REG, 4, 2, 0, 0),
        insn(ADD64_IMM, 4, 0, 0, 34),
        insn(JGT_REG, 4, 3, 7, 0),      // too short: pass
        insn(LDX_H, 5, 2, 12, 0),       // EtherType, as loaded little endian
        insn(JNE_IMM, 5, 0, 5, 0x0008), // not IPv4: pass
        insn(LDX_H, 5, 2, 30, 0),       // first two octets of the destination
        insn(AND64_IMM, 5, 0, 0, 0xfeff),
        insn(JNE_IMM, 5, 0, 2, 0x12c6), // not 198.18/15: pass
        insn(MOV64_IMM, 0, 0, 0, XDP_DROP),
        insn(EXIT, 0, 0, 0, 0),
        insn(MOV64_IMM, 0, 0, 0, XDP_PASS),
        insn(EXIT, 0, 0, 0, 0),
    ]
}

/// An XDP program attached through a BPF link: detached when dropped (or
/// when its interface goes away).
pub struct XdpLink {
    _link: ProgFd,
    _prog: ProgFd,
}

/// Attaches the guard to `ifindex` of the calling thread's namespace
/// (native mode where the driver has it, as a veth does).
pub fn attach_guard(ifindex: u32) -> io::Result<XdpLink> {
    let prog = load(&guard_program(), "flood_guard", BPF_XDP)?;
    let mut attr = [0u8; 128];
    put_u32(&mut attr, 0, prog.raw());
    put_u32(&mut attr, 4, ifindex);
    put_u32(&mut attr, 8, BPF_XDP);
    // SAFETY: this bpf_attr holds no pointers.
    let link = unsafe { bpf(BPF_LINK_CREATE, &mut attr) }
        .map_err(|e| io::Error::new(e.kind(), format!("attaching the XDP guard: {e}")))?;
    Ok(XdpLink {
        // SAFETY: a descriptor the kernel just gave us.
        _link: unsafe { ProgFd::from_raw(link) },
        _prog: prog,
    })
}

/// One BPF_PROG_TEST_RUN in live-frames mode: `repeat` frames.
fn test_run(prog: &ProgFd, frame: &[u8], ifindex: u32, repeat: u32) -> io::Result<()> {
    // struct xdp_md: data, data_end, data_meta, ingress_ifindex,
    // rx_queue_index, egress_ifindex.
    let ctx: [u32; 6] = [0, frame.len() as u32, 0, ifindex, 0, 0];
    bpf_asm::test_run(
        prog,
        frame,
        repeat,
        Some((BPF_F_TEST_XDP_LIVE_FRAMES, &ctx)),
    )
    .map(|_| ())
}

/// Runs the generator on the calling thread, which it moves into the
/// client namespace and onto `cfg.cpu` (call it on a thread of its own).
pub fn run(cfg: &GenConfig, stop: &AtomicBool) -> io::Result<GenResult> {
    testkit::netns::enter_netns(&cfg.ns)?;
    sys::set_affinity(0, cfg.cpu)?;
    let name = std::ffi::CString::new(cfg.iface.clone()).expect("interface name with NUL");
    // SAFETY: name is NUL-terminated.
    let ifindex = unsafe { libc::if_nametoindex(name.as_ptr()) };
    if ifindex == 0 {
        return Err(io::Error::last_os_error());
    }
    let frame = PacketBuilder::ipv4(Ipv4Addr::new(198, 18, 0, 1), cfg.dst)
        .macs(cfg.src_mac, cfg.dst_mac)
        .tcp(40_000, cfg.port, tcp_flags::SYN)
        .seq(0x5eed_0001)
        .tcp_options(&LINUX_SYN_OPTIONS)
        .build();
    let prog = load(&program(&frame), "flood_gen", 0)?;
    let mut result = GenResult::default();
    let cpu_start = sys::thread_cpu_time();
    let started = Instant::now();
    let deadline = started + cfg.duration;
    // Frames per syscall: each call sets up and tears down a page pool
    // (the teardown waits for an RCU grace period), so calls are sized to
    // ~100 ms of the generator's CPU time, and cut to the time left.
    let mut repeat: f64 = 4096.0;
    while result.sent < cfg.max_packets && !stop.load(Ordering::Relaxed) {
        let now = Instant::now();
        if now >= deadline {
            break;
        }
        let left = (deadline - now).as_secs_f64();
        let n = repeat.clamp(1.0, (cfg.max_packets - result.sent) as f64) as u32;
        let cpu = sys::thread_cpu_time();
        test_run(&prog, &frame, ifindex, n)?;
        result.calls += 1;
        result.sent += n as u64;
        let spent = (sys::thread_cpu_time() - cpu).as_secs_f64().max(1e-6);
        let rate = n as f64 / spent;
        repeat = (rate * CALL_CPU_SECONDS.min(left)).clamp(64.0, 16_000_000.0);
    }
    result.seconds = started.elapsed().as_secs_f64();
    result.cpu_seconds = (sys::thread_cpu_time() - cpu_start).as_secs_f64();
    Ok(result)
}

#[cfg(test)]
mod tests {
    //! The hand-assembled programs, run with BPF_PROG_TEST_RUN (root).
    use super::*;
    use crate::bpf_asm::run_once_into;

    /// Runs `prog` once on `frame` (not live): (verdict, frame after).
    fn run_once(prog: &ProgFd, frame: &[u8]) -> (i32, Vec<u8>) {
        let mut out = vec![0u8; frame.len() + 256];
        let (retval, len) =
            run_once_into(prog, frame, &mut out).expect("BPF_PROG_TEST_RUN (run as root)");
        out.truncate(len);
        (retval as i32, out)
    }

    fn ones_complement_sum(chunks: &[&[u8]]) -> u16 {
        let mut sum: u32 = 0;
        for chunk in chunks {
            for pair in chunk.chunks(2) {
                let word = u16::from_be_bytes([pair[0], *pair.get(1).unwrap_or(&0)]);
                sum += u32::from(word);
            }
        }
        while sum > 0xffff {
            sum = (sum & 0xffff) + (sum >> 16);
        }
        sum as u16
    }

    fn syn(src: Ipv4Addr, dst: Ipv4Addr) -> Vec<u8> {
        PacketBuilder::ipv4(src, dst)
            .tcp(40_000, 25, tcp_flags::SYN)
            .tcp_options(&LINUX_SYN_OPTIONS)
            .build()
    }

    #[test]
    fn generator_randomizes_sources_with_valid_checksums() {
        let frame = syn(Ipv4Addr::new(198, 18, 0, 1), Ipv4Addr::new(10, 231, 1, 1));
        let prog = load(&program(&frame), "flood_gen", 0).expect("loading the generator program");
        let mut sources = std::collections::HashSet::new();
        let mut input = frame.clone();
        for _ in 0..200 {
            let (verdict, out) = run_once(&prog, &input);
            assert_eq!(verdict, XDP_TX);
            assert_eq!(out.len(), frame.len());
            let ip = &out[14..34];
            assert_eq!(ones_complement_sum(&[ip]), 0xffff, "IPv4 header checksum");
            assert_eq!(&ip[12..14], &[198, 18], "source outside 198.18.0.0/16");
            let tcp = &out[34..];
            let pseudo = [&ip[12..20], &[0, 6], &(tcp.len() as u16).to_be_bytes()[..]].concat();
            assert_eq!(ones_complement_sum(&[&pseudo, tcp]), 0xffff, "TCP checksum");
            assert!(u16::from_be_bytes([tcp[0], tcp[1]]) >= 1024, "source port");
            assert_eq!(&out[..14], &frame[..14], "Ethernet header changed");
            assert_eq!(&out[30..34], &frame[30..34], "destination changed");
            assert_eq!(&tcp[2..4], &25u16.to_be_bytes(), "destination port");
            assert_eq!(tcp[13], tcp_flags::SYN, "flags");
            sources.insert(ip[12..16].to_vec());
            // Live frames keep what happened to them (the gate's reset
            // turns a SYN into a RST in place): the program starts over.
            input = out;
            input[20..]
                .iter_mut()
                .for_each(|b| *b = b.wrapping_mul(7).wrapping_add(1));
        }
        assert!(
            sources.len() > 150,
            "only {} distinct sources",
            sources.len()
        );
    }

    #[test]
    fn guard_drops_answers_to_the_spoofed_range_only() {
        let prog = load(&guard_program(), "flood_guard", BPF_XDP).expect("loading the guard");
        let server = Ipv4Addr::new(10, 231, 1, 1);
        for (dst, want) in [
            (Ipv4Addr::new(198, 18, 0, 1), XDP_DROP),
            (Ipv4Addr::new(198, 19, 255, 254), XDP_DROP),
            (Ipv4Addr::new(198, 20, 0, 1), XDP_PASS),
            (Ipv4Addr::new(198, 17, 0, 1), XDP_PASS),
            (Ipv4Addr::new(10, 231, 1, 2), XDP_PASS),
        ] {
            assert_eq!(run_once(&prog, &syn(server, dst)).0, want, "to {dst}");
        }
        let arp = PacketBuilder::arp_request(server, Ipv4Addr::new(198, 18, 0, 1)).build();
        assert_eq!(run_once(&prog, &arp).0, XDP_PASS, "ARP");
        assert_eq!(run_once(&prog, &[0u8; 20]).0, XDP_PASS, "runt");
    }
}
