//! The floor under the gate's cost: what DESIGN.md makes every gated SYN
//! do (an exempt lookup in the LPM trie, a grant lookup in the LRU hash,
//! `bpf_ktime_get_boot_ns` to compare the stamp with), each in a program
//! of a few instructions assembled here, on the gate's own maps, measured
//! like the gate beside the empty program. No parsing, no settings, no
//! counters: what is left of the gate's cost above this is its own work.

use std::{
    net::IpAddr,
    os::fd::{AsRawFd, OwnedFd},
};

use anyhow::{Context, Result};

use crate::bpf_asm::{
    insn, ld_map_fd, load_xdp, test_run, Insn, ProgFd, ADD64_IMM, CALL, EXIT, JEQ_IMM, JNE_IMM,
    MOV64_IMM, MOV64_REG, ST_W, XDP_DROP, XDP_PASS,
};

const BPF_FUNC_MAP_LOOKUP_ELEM: i32 = 1;
const BPF_FUNC_KTIME_GET_BOOT_NS: i32 = 125;
const BPF_FUNC_KTIME_GET_COARSE_NS: i32 = 160;

/// The maps of the loaded gate that the floor programs look into.
pub struct GateMapFds {
    pub grants_v4: OwnedFd,
    pub exempt_v4: OwnedFd,
    pub grants_v6: OwnedFd,
    pub exempt_v6: OwnedFd,
}

/// One floor program and what it stands for.
pub struct FloorProgram {
    pub name: &'static str,
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
        if ins.code == JEQ_IMM || ins.code == JNE_IMM {
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

/// The floor programs for a SYN from `client` (granted, not exempt).
pub fn programs(maps: &GateMapFds, client: IpAddr) -> Result<Vec<FloorProgram>> {
    let (octets, grants, exempt): (Vec<u8>, _, _) = match client {
        IpAddr::V4(a) => (a.octets().into(), &maps.grants_v4, &maps.exempt_v4),
        IpAddr::V6(a) => (a.octets().into(), &maps.grants_v6, &maps.exempt_v6),
    };
    let len = octets.len() as i16;
    // Stack: the LPM key (prefix length, address) below the LRU key.
    let lru_key = -len;
    let lpm_key = lru_key - 4 - len;
    let lpm_prefix = (8 * octets.len() as u32).to_le_bytes();
    let keys = |p: &mut Vec<Insn>| {
        store(p, lru_key, &octets);
        store(p, lpm_key, &lpm_prefix);
        store(p, lpm_key + 4, &octets);
    };
    let mut built = Vec::new();
    let mut add = |name: &'static str, body: &dyn Fn(&mut Vec<Insn>)| -> Result<()> {
        let mut p = Vec::new();
        body(&mut p);
        finish(&mut p);
        let prog = load_xdp(&p, "gate_floor", 0).with_context(|| format!("floor: {name}"))?;
        built.push(FloorProgram { name, prog });
        Ok(())
    };
    add("bpf_ktime_get_boot_ns", &|p| {
        p.push(insn(CALL, 0, 0, 0, BPF_FUNC_KTIME_GET_BOOT_NS))
    })?;
    add("bpf_ktime_get_coarse_ns (for comparison)", &|p| {
        p.push(insn(CALL, 0, 0, 0, BPF_FUNC_KTIME_GET_COARSE_NS))
    })?;
    add("grant lookup (LRU hash, hit)", &|p| {
        keys(p);
        lookup(p, grants, lru_key, true);
    })?;
    add("exempt lookup (LPM trie, miss)", &|p| {
        keys(p);
        lookup(p, exempt, lpm_key, false);
    })?;
    add("all three: the design's minimum for a granted SYN", &|p| {
        keys(p);
        lookup(p, exempt, lpm_key, false);
        lookup(p, grants, lru_key, true);
        p.push(insn(CALL, 0, 0, 0, BPF_FUNC_KTIME_GET_BOOT_NS));
    })?;
    Ok(built)
}

/// Mean ns per run of a floor program on `packet`; fails if a lookup did
/// not go as meant (the grant missing, the address exempt).
pub fn mean_ns(program: &FloorProgram, packet: &[u8], repeat: u32) -> Result<f64> {
    let run = test_run(&program.prog, packet, repeat, None)
        .with_context(|| format!("BPF_PROG_TEST_RUN of the floor program {}", program.name))?;
    if run.retval != XDP_PASS as u32 {
        anyhow::bail!(
            "floor program {}: a lookup did not find what it should (verdict {})",
            program.name,
            run.retval
        );
    }
    Ok(run.duration_ns.into())
}

#[cfg(test)]
mod tests {
    //! The floor programs on the gate's maps, with BPF_PROG_TEST_RUN (root).
    use std::net::{Ipv4Addr, Ipv6Addr};

    use super::*;
    use crate::kernel::{load, syn, CLIENT_V4, CLIENT_V6, SERVER_V4, SERVER_V6};

    #[test]
    fn floor_programs_take_the_paths_they_stand_for() {
        let loaded = load(1).expect("loading the gate (run as root)");
        let families: [(IpAddr, IpAddr, IpAddr); 2] = [
            (
                CLIENT_V4.into(),
                Ipv4Addr::new(198, 51, 100, 200).into(),
                SERVER_V4.into(),
            ),
            (
                CLIENT_V6.into(),
                Ipv6Addr::new(0x2001, 0xdb8, 1, 0, 0, 0, 0, 200).into(),
                SERVER_V6.into(),
            ),
        ];
        for (client, stranger, server) in families {
            let packet = syn(client, server, 25);
            for program in programs(&loaded.map_fds, client).unwrap() {
                mean_ns(&program, &packet, 10)
                    .unwrap_or_else(|e| panic!("{client}: {}: {e:#}", program.name));
            }
            // A stranger has no grant: every program that looks for one
            // says so instead of timing the wrong path.
            for program in programs(&loaded.map_fds, stranger).unwrap() {
                let looks_for_grant =
                    program.name.contains("grant") || program.name.contains("all");
                assert_eq!(
                    mean_ns(&program, &packet, 1).is_err(),
                    looks_for_grant,
                    "{stranger}: {}",
                    program.name
                );
            }
        }
    }
}
