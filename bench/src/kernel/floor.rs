//! The floor under the gate's cost: the map lookups and clock reads that
//! each path of a gated SYN cannot do without, each in a program of a few
//! instructions assembled here, on the gate's own maps, measured like the
//! gate beside the empty program. The gate looks up the grant (LRU hash)
//! first and reads `bpf_jiffies64` to compare a grant's stamp; only a SYN
//! without a fresh grant is looked up in the exempt networks (LPM trie).
//! So a granted SYN needs a grant hit and the clock, an ungranted one a
//! grant miss and an exempt miss, an exempt one a grant miss and an exempt
//! hit. No parsing, no settings, no counters: what is left of the gate's
//! cost above its path's floor is its own work. The old design's floor
//! (exempt lookup first, stamp compared with `bpf_ktime_get_boot_ns`) is
//! kept for comparison.
//!
//! A packet that is not gated has a floor too: the gate counts every
//! packet (one per-CPU counter), and a SYN is not gated only once its
//! port was compared with the settings. The bare reads that tell a SYN to
//! a port that is not gated - the EtherType, the protocol, the flags and
//! the port at the offsets of the plain shape, no check of lengths,
//! versions or fragments - with the settings read and the counter moved,
//! are the least any program that counts can do for it.

use std::{
    net::IpAddr,
    os::fd::{AsRawFd, OwnedFd},
};

use anyhow::{Context, Result};

use super::Path;
use crate::bpf_asm::{
    insn, ld_map_fd, load_xdp, test_run, Insn, ProgFd, ADD64_IMM, AND64_IMM, CALL, EXIT, JEQ_IMM,
    JGT_REG, JNE_IMM, LDX_H, LDX_W, MOV64_IMM, MOV64_REG, STX_DW, ST_W, XDP_DROP, XDP_PASS,
};

const LDX_B: u8 = 0x71;
const LDX_DW: u8 = 0x79;
const XOR64_REG: u8 = 0xaf;
/// BPF_ALU | BPF_END | BPF_TO_BE: the byte swap of a big-endian field.
const END_TO_BE: u8 = 0xdc;

const BPF_FUNC_MAP_LOOKUP_ELEM: i32 = 1;
const BPF_FUNC_KTIME_GET_BOOT_NS: i32 = 125;
const BPF_FUNC_KTIME_GET_COARSE_NS: i32 = 160;
const BPF_FUNC_JIFFIES64: i32 = 118;

/// The maps of the loaded gate that the floor programs look into.
pub struct GateMapFds {
    pub grants_v4: OwnedFd,
    pub exempt_v4: OwnedFd,
    pub grants_v6: OwnedFd,
    pub exempt_v6: OwnedFd,
    /// The settings (array of one value) and the counters (per-CPU array
    /// of one value), which every packet's verdict reads or moves.
    pub settings: OwnedFd,
    pub stats: OwnedFd,
}

/// Which of the gate's maps a floor program looks into.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Table {
    /// The grants (LRU hash).
    Grants,
    /// The exempt networks (LPM trie).
    Exempt,
}

/// One lookup a floor program makes: the key's address and the answer it
/// must get (`hit`: an entry found), or the program returns XDP_DROP.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Lookup {
    pub table: Table,
    pub key: IpAddr,
    pub hit: bool,
}

/// One floor program and what it stands for.
pub struct FloorProgram {
    pub name: &'static str,
    /// The path of a gated SYN whose minimum this program is, under the
    /// gate's design (grant first, `bpf_jiffies64`); `None` for a single
    /// operation and for the old design's floor.
    pub path: Option<Path>,
    /// The lookups it makes, in order, as they were assembled.
    pub lookups: Vec<Lookup>,
    pub prog: ProgFd,
}

/// `*(u32 *)(r10 + off + 4i) = bytes[4i..]` for every 4 octets.
fn store(p: &mut Vec<Insn>, off: i16, bytes: &[u8]) {
    for (i, word) in bytes.chunks(4).enumerate() {
        let imm = i32::from_le_bytes(word.try_into().expect("whole words"));
        p.push(insn(ST_W, 10, 0, off + 4 * i as i16, imm));
    }
}

/// r0 = lookup(map, key at r10 + off); then to the end with XDP_DROP
/// unless the lookup found an entry (`hit`) or found none: the verdict
/// shows that the measured path is the one meant.
fn lookup(p: &mut Vec<Insn>, map: &OwnedFd, off: i16, hit: bool) {
    p.extend(ld_map_fd(1, map.as_raw_fd()));
    p.push(insn(MOV64_REG, 2, 10, 0, 0));
    p.push(insn(ADD64_IMM, 2, 0, 0, off.into()));
    p.push(insn(CALL, 0, 0, 0, BPF_FUNC_MAP_LOOKUP_ELEM));
    // Offset patched by `finish`.
    p.push(insn(if hit { JEQ_IMM } else { JNE_IMM }, 0, 0, 0, 0));
}

/// XDP_PASS at the end, XDP_DROP for every lookup that went wrong.
fn finish(p: &mut Vec<Insn>) {
    p.push(insn(MOV64_IMM, 0, 0, 0, XDP_PASS));
    p.push(insn(EXIT, 0, 0, 0, 0));
    let drop_at = p.len();
    let mut checked = false;
    for (i, ins) in p.iter_mut().enumerate() {
        if ins.code == JEQ_IMM || ins.code == JNE_IMM || ins.code == JGT_REG {
            ins.off = (drop_at - i - 1) as i16;
            checked = true;
        }
    }
    // The verifier refuses code that no path reaches.
    if !checked {
        return;
    }
    p.push(insn(MOV64_IMM, 0, 0, 0, XDP_DROP));
    p.push(insn(EXIT, 0, 0, 0, 0));
}

/// The sources the floor programs look up: one granted and not exempt,
/// one neither, one exempt and not granted.
#[derive(Clone, Copy, Debug)]
pub struct Sources {
    pub client: IpAddr,
    pub stranger: IpAddr,
    pub exempt: IpAddr,
}

fn octets(addr: IpAddr) -> Vec<u8> {
    match addr {
        IpAddr::V4(a) => a.octets().into(),
        IpAddr::V6(a) => a.octets().into(),
    }
}

/// A floor program being assembled: its instructions, and its lookups as
/// they are emitted (so what the program is said to do is what it does).
struct Body<'m> {
    p: Vec<Insn>,
    lookups: Vec<Lookup>,
    /// The address whose keys are on the stack.
    key: Option<IpAddr>,
    grants: &'m OwnedFd,
    exempt: &'m OwnedFd,
    maps: &'m GateMapFds,
    len: i16,
}

impl Body<'_> {
    /// Stack: the LRU key (the address) at the top, the LPM key (prefix
    /// length, address) below it.
    fn lru_key(&self) -> i16 {
        -self.len
    }

    fn lpm_key(&self) -> i16 {
        self.lru_key() - 4 - self.len
    }

    /// Both keys of `addr` on the stack.
    fn keys_of(&mut self, addr: IpAddr) {
        let octets = octets(addr);
        assert_eq!(octets.len() as i16, self.len, "{addr}: another family");
        let (lru_key, lpm_key) = (self.lru_key(), self.lpm_key());
        let lpm_prefix = (8 * self.len as u32).to_le_bytes();
        store(&mut self.p, lru_key, &octets);
        store(&mut self.p, lpm_key, &lpm_prefix);
        store(&mut self.p, lpm_key + 4, &octets);
        self.key = Some(addr);
    }

    /// A lookup of the keys on the stack in `table`, which must `hit` (or
    /// miss).
    fn lookup(&mut self, table: Table, hit: bool) {
        let key = self.key.expect("keys_of before lookup");
        let (map, off) = match table {
            Table::Grants => (self.grants, self.lru_key()),
            Table::Exempt => (self.exempt, self.lpm_key()),
        };
        lookup(&mut self.p, map, off, hit);
        self.lookups.push(Lookup { table, key, hit });
    }

    fn call(&mut self, helper: i32) {
        self.p.push(insn(CALL, 0, 0, 0, helper));
    }

    /// r0 = the one value of the array `map` (index 0), which exists.
    /// The index lies below both keys of `keys_of`.
    fn first_value(&mut self, map: &OwnedFd) {
        let index = self.lpm_key() - 4;
        self.p.push(insn(ST_W, 10, 0, index, 0));
        lookup(&mut self.p, map, index, true);
    }

    /// The gate's counting of a packet: this CPU's counters looked up and
    /// one of them moved.
    fn count(&mut self) {
        let maps = self.maps;
        self.first_value(&maps.stats);
        self.p.push(insn(LDX_DW, 1, 0, 0, 0));
        self.p.push(insn(ADD64_IMM, 1, 0, 0, 1));
        self.p.push(insn(STX_DW, 0, 1, 0, 0));
    }

    /// The settings looked up and their first port compared with the one
    /// in r8 (the comparison's outcome is not used: the floor does the
    /// work, whichever way it goes).
    fn compare_port(&mut self) {
        let maps = self.maps;
        self.first_value(&maps.settings);
        // ports: [u16; 8] right after window_ns.
        self.p.push(insn(LDX_H, 3, 0, 8, 0));
        self.p.push(insn(XOR64_REG, 8, 3, 0, 0));
    }

    /// The reads that tell a TCP SYN of the plain shape (IPv4 without
    /// options, IPv6 without extension headers) and its destination port,
    /// which ends in r8; a frame that is not one fails the run.
    fn read_syn_port(&mut self) {
        let (ethertype, protocol_at, l4) = if self.len == 4 {
            (0x0008, 14 + 9, 14 + 20)
        } else {
            (0xdd86, 14 + 6, 14 + 40)
        };
        let p = &mut self.p;
        p.push(insn(LDX_W, 6, 1, 0, 0)); // data
        p.push(insn(LDX_W, 7, 1, 4, 0)); // data_end
        p.push(insn(MOV64_REG, 2, 6, 0, 0));
        p.push(insn(ADD64_IMM, 2, 0, 0, l4 + 20));
        p.push(insn(JGT_REG, 2, 7, 0, 0));
        p.push(insn(LDX_H, 3, 6, 12, 0));
        p.push(insn(JNE_IMM, 3, 0, 0, ethertype));
        p.push(insn(LDX_B, 3, 6, protocol_at, 0));
        p.push(insn(JNE_IMM, 3, 0, 0, 6));
        p.push(insn(LDX_B, 3, 6, (l4 + 13) as i16, 0));
        p.push(insn(AND64_IMM, 3, 0, 0, 0x17));
        p.push(insn(JNE_IMM, 3, 0, 0, 2));
        p.push(insn(LDX_H, 8, 6, (l4 + 2) as i16, 0));
        p.push(insn(END_TO_BE, 8, 0, 0, 16));
    }
}

/// The floor programs for SYNs from `sources` (all of one family).
pub fn programs(maps: &GateMapFds, sources: Sources) -> Result<Vec<FloorProgram>> {
    let (grants, exempt) = match sources.client {
        IpAddr::V4(_) => (&maps.grants_v4, &maps.exempt_v4),
        IpAddr::V6(_) => (&maps.grants_v6, &maps.exempt_v6),
    };
    let len = octets(sources.client).len() as i16;
    let mut built = Vec::new();
    let mut add = |name: &'static str, path: Option<Path>, code: &dyn Fn(&mut Body)| {
        let mut body = Body {
            p: Vec::new(),
            lookups: Vec::new(),
            key: None,
            grants,
            exempt,
            maps,
            len,
        };
        code(&mut body);
        finish(&mut body.p);
        let prog = load_xdp(&body.p, "gate_floor", 0).with_context(|| format!("floor: {name}"))?;
        built.push(FloorProgram {
            name,
            path,
            lookups: body.lookups,
            prog,
        });
        anyhow::Ok(())
    };
    add("bpf_jiffies64 (the gate's clock)", None, &|b| {
        b.call(BPF_FUNC_JIFFIES64)
    })?;
    add("bpf_ktime_get_boot_ns (the old clock)", None, &|b| {
        b.call(BPF_FUNC_KTIME_GET_BOOT_NS)
    })?;
    add("bpf_ktime_get_coarse_ns (for comparison)", None, &|b| {
        b.call(BPF_FUNC_KTIME_GET_COARSE_NS)
    })?;
    add("grant lookup (LRU hash, hit)", None, &|b| {
        b.keys_of(sources.client);
        b.lookup(Table::Grants, true);
    })?;
    add("grant lookup (LRU hash, miss)", None, &|b| {
        b.keys_of(sources.stranger);
        b.lookup(Table::Grants, false);
    })?;
    add("exempt lookup (LPM trie, hit)", None, &|b| {
        b.keys_of(sources.exempt);
        b.lookup(Table::Exempt, true);
    })?;
    add("exempt lookup (LPM trie, miss)", None, &|b| {
        b.keys_of(sources.client);
        b.lookup(Table::Exempt, false);
    })?;
    add(
        "granted: grant hit + bpf_jiffies64",
        Some(Path::Granted),
        &|b| {
            b.keys_of(sources.client);
            b.lookup(Table::Grants, true);
            b.call(BPF_FUNC_JIFFIES64);
        },
    )?;
    add(
        "ungranted: grant miss + exempt miss",
        Some(Path::Ungranted),
        &|b| {
            b.keys_of(sources.stranger);
            b.lookup(Table::Grants, false);
            b.lookup(Table::Exempt, false);
        },
    )?;
    add(
        "exempt: grant miss + exempt hit",
        Some(Path::Exempt),
        &|b| {
            b.keys_of(sources.exempt);
            b.lookup(Table::Grants, false);
            b.lookup(Table::Exempt, true);
        },
    )?;
    add("per-CPU counter (lookup + increment)", None, &|b| b.count())?;
    add(
        "not gated, SYN to another port: header reads + settings' port + counter",
        None,
        &|b| {
            b.read_syn_port();
            b.compare_port();
            b.count();
        },
    )?;
    add(
        "old design's floor, granted: exempt miss + grant hit + bpf_ktime_get_boot_ns",
        None,
        &|b| {
            b.keys_of(sources.client);
            b.lookup(Table::Exempt, false);
            b.lookup(Table::Grants, true);
            b.call(BPF_FUNC_KTIME_GET_BOOT_NS);
        },
    )?;
    Ok(built)
}

/// Mean ns per run of a floor program on `packet`; fails if a lookup did
/// not go as meant (the grant missing, the address exempt).
pub fn mean_ns(program: &FloorProgram, packet: &[u8], repeat: u32) -> Result<f64> {
    let run = test_run(&program.prog, packet, repeat, None)
        .with_context(|| format!("BPF_PROG_TEST_RUN of the floor program {}", program.name))?;
    if run.retval != XDP_PASS as u32 {
        let wanted: Vec<String> = program
            .lookups
            .iter()
            .map(|l| {
                let table = match l.table {
                    Table::Grants => "grants",
                    Table::Exempt => "exempt networks",
                };
                let answer = if l.hit { "found" } else { "absent" };
                format!("{} {answer} in the {table}", l.key)
            })
            .collect();
        anyhow::bail!(
            "floor program {}: a lookup did not find what it should (verdict {}; wanted: {})",
            program.name,
            run.retval,
            wanted.join(", ")
        );
    }
    Ok(run.duration_ns.into())
}

#[cfg(test)]
mod tests {
    //! The floor programs on the gate's maps, with BPF_PROG_TEST_RUN (root).
    use std::net::{Ipv4Addr, Ipv6Addr};

    use super::*;
    use crate::kernel::{
        load, syn, CLIENT_V4, CLIENT_V6, EXEMPT_V4, EXEMPT_V6, SERVER_V4, SERVER_V6, STRANGER_V4,
        STRANGER_V6,
    };

    /// What the minimum of each path must look up, in order: the table
    /// and whether the lookup finds an entry.
    fn design(path: Path) -> Vec<(Table, bool)> {
        match path {
            Path::Granted => vec![(Table::Grants, true)],
            Path::Ungranted => vec![(Table::Grants, false), (Table::Exempt, false)],
            Path::Exempt => vec![(Table::Grants, false), (Table::Exempt, true)],
        }
    }

    /// The verdict of one run: XDP_PASS if every lookup got the answer the
    /// program waits for, XDP_DROP if one did not.
    fn verdict(program: &FloorProgram, packet: &[u8]) -> i32 {
        let run = test_run(&program.prog, packet, 1, None)
            .unwrap_or_else(|e| panic!("{}: BPF_PROG_TEST_RUN: {e}", program.name));
        run.retval as i32
    }

    #[test]
    fn floor_programs_take_the_paths_they_stand_for() {
        let mut loaded = load(1).expect("loading the gate (run as root)");
        // A fourth source, granted and in an exempt network: with it every
        // lookup of every program, the second of two as well, can be made
        // to find the opposite answer.
        let both_v4: IpAddr = Ipv4Addr::new(192, 0, 2, 77).into();
        let both_v6: IpAddr = Ipv6Addr::new(0x2001, 0xdb8, 2, 0, 0, 0, 0, 0x77).into();
        let now = loaded.maps.now_ns().unwrap();
        for addr in [both_v4, both_v6] {
            loaded.maps.grant_at(addr, now, None).unwrap();
        }
        // What the maps hold, read back from them rather than assumed.
        let granted: Vec<IpAddr> = loaded
            .maps
            .grants()
            .unwrap()
            .into_iter()
            .filter(|g| g.is_fresh())
            .map(|g| g.addr)
            .collect();
        let exempt_nets = loaded.maps.exempt_list().unwrap();
        let present = |table: Table, addr: IpAddr| match table {
            Table::Grants => granted.contains(&addr),
            Table::Exempt => exempt_nets.iter().any(|net| net.net().contains(&addr)),
        };
        let families = [
            (
                Sources {
                    client: CLIENT_V4.into(),
                    stranger: STRANGER_V4.into(),
                    exempt: EXEMPT_V4.into(),
                },
                both_v4,
            ),
            (
                Sources {
                    client: CLIENT_V6.into(),
                    stranger: STRANGER_V6.into(),
                    exempt: EXEMPT_V6.into(),
                },
                both_v6,
            ),
        ];
        for (sources, both) in families {
            let Sources {
                client,
                stranger,
                exempt,
            } = sources;
            assert!(present(Table::Grants, client) && !present(Table::Exempt, client));
            assert!(!present(Table::Grants, stranger) && !present(Table::Exempt, stranger));
            assert!(!present(Table::Grants, exempt) && present(Table::Exempt, exempt));
            assert!(present(Table::Grants, both) && present(Table::Exempt, both));
            let server: IpAddr = match client {
                IpAddr::V4(_) => SERVER_V4.into(),
                IpAddr::V6(_) => SERVER_V6.into(),
            };
            let packet = syn(client, server, 25);

            // The proper sources: every lookup finds what it waits for,
            // every program passes, and each path's minimum makes exactly
            // the lookups of its path, on its path's source.
            let mut paths = Vec::new();
            let mut kinds = Vec::new();
            for program in programs(&loaded.map_fds, sources).unwrap() {
                for l in &program.lookups {
                    assert_eq!(present(l.table, l.key), l.hit, "{client}: {}", program.name);
                    if !kinds.contains(&(l.table, l.hit)) {
                        kinds.push((l.table, l.hit));
                    }
                }
                assert_eq!(
                    verdict(&program, &packet),
                    XDP_PASS,
                    "{client}: {}",
                    program.name
                );
                mean_ns(&program, &packet, 10)
                    .unwrap_or_else(|e| panic!("{client}: {}: {e:#}", program.name));
                if let Some(path) = program.path {
                    let made: Vec<_> = program.lookups.iter().map(|l| (l.table, l.hit)).collect();
                    assert_eq!(made, design(path), "{client}: {}", program.name);
                    let source = match path {
                        Path::Granted => client,
                        Path::Ungranted => stranger,
                        Path::Exempt => exempt,
                    };
                    assert!(
                        program.lookups.iter().all(|l| l.key == source),
                        "{client}: {}: {:?}",
                        program.name,
                        program.lookups
                    );
                    paths.push(path);
                }
            }
            assert_eq!(paths, [Path::Granted, Path::Ungranted, Path::Exempt]);

            // The non-gated floor reads the frame it claims to: a SYN of
            // the plain shape passes, an ACK or a UDP datagram fails it.
            let reading: Vec<_> = programs(&loaded.map_fds, sources)
                .unwrap()
                .into_iter()
                .filter(|p| p.name.starts_with("not gated"))
                .collect();
            assert_eq!(reading.len(), 1);
            let ack = testkit::packets::PacketBuilder::ip(client, server)
                .tcp(40_000, 25, testkit::packets::tcp_flags::ACK)
                .build();
            let udp = testkit::packets::PacketBuilder::ip(client, server)
                .udp(40_000, 25)
                .build();
            assert_eq!(verdict(&reading[0], &syn(client, server, 443)), XDP_PASS);
            assert_eq!(verdict(&reading[0], &ack), XDP_DROP, "{client}: ACK");
            assert_eq!(verdict(&reading[0], &udp), XDP_DROP, "{client}: UDP");
            assert_eq!(
                verdict(&reading[0], &packet[..40]),
                XDP_DROP,
                "{client}: cut"
            );
            // Hits and misses of both tables are among the programs, so
            // the checks below are not vacuous.
            assert_eq!(kinds.len(), 4, "{kinds:?}");

            // Sources chosen so that every lookup finds the opposite
            // answer: the client (granted, not exempt) looked up as not
            // granted and exempt, the stranger (neither) as both, the
            // exempt source (exempt, not granted) as granted, not exempt.
            // Exactly the programs that look something up fail.
            let opposite = Sources {
                client: exempt,
                stranger: both,
                exempt: client,
            };
            let mut failed = 0;
            for program in programs(&loaded.map_fds, opposite).unwrap() {
                for l in &program.lookups {
                    assert_ne!(present(l.table, l.key), l.hit, "{client}: {}", program.name);
                }
                let wanted = if program.lookups.is_empty() {
                    XDP_PASS
                } else {
                    failed += 1;
                    XDP_DROP
                };
                assert_eq!(
                    verdict(&program, &packet),
                    wanted,
                    "{client}, opposite sources: {}",
                    program.name
                );
                if wanted == XDP_DROP {
                    assert!(mean_ns(&program, &packet, 1).is_err(), "{}", program.name);
                }
            }
            assert!(failed >= 4, "only {failed} programs look something up");

            // Every source in every role: each program passes exactly when
            // each of its lookups finds its answer. A hit fails on an absent
            // key, a miss on a present one, the second lookup as well.
            for addr in [client, stranger, exempt, both] {
                let same = Sources {
                    client: addr,
                    stranger: addr,
                    exempt: addr,
                };
                for program in programs(&loaded.map_fds, same).unwrap() {
                    let passes = program
                        .lookups
                        .iter()
                        .all(|l| present(l.table, l.key) == l.hit);
                    assert_eq!(
                        verdict(&program, &packet),
                        if passes { XDP_PASS } else { XDP_DROP },
                        "{addr} in every role: {}",
                        program.name
                    );
                }
            }
        }
    }
}
