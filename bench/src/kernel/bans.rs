//! What the ban check costs: the same packets through the gate's XDP
//! program with no ban looked for (`Settings::bans_in_use` clear, as on a
//! gate that never banned) and with both ban maps looked into (a daemon
//! with bans on), alternated with the empty XDP program in each run.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use anyhow::Result;
use aya::programs::Xdp;
use gate_common::{Ban, BANS_V4_IN_USE, BANS_V6_IN_USE};
use smtp_gate::gate::GateMaps;

use super::{
    mean_ns, syn, CLIENT_V4, CLIENT_V6, RUNS, SERVER_V4, SERVER_V6, STRANGER_V4, STRANGER_V6,
};
use crate::report::Figure;

const BANNED_V4: Ipv4Addr = Ipv4Addr::new(198, 51, 100, 201);
/// In a /64 of its own: the clients' /64 is not banned.
const BANNED_V6: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 0xbad, 0, 0, 0, 0, 1);

/// One packet measured three ways in each run.
pub(super) struct BanRow {
    pub case: &'static str,
    pub baseline: Figure,
    /// No ban looked for.
    pub off: Figure,
    /// Both ban maps looked into.
    pub on: Figure,
}

impl BanRow {
    /// What looking for bans adds to this packet, in ns.
    pub fn added(&self) -> f64 {
        self.on.median - self.off.median
    }
}

fn cases() -> Vec<(&'static str, Vec<u8>)> {
    let (c4, s4, c6, s6): (IpAddr, IpAddr, IpAddr, IpAddr) = (
        CLIENT_V4.into(),
        SERVER_V4.into(),
        CLIENT_V6.into(),
        SERVER_V6.into(),
    );
    vec![
        ("TCP SYN, other port (IPv4)", syn(c4, s4, 443)),
        ("gated SYN, granted (IPv4)", syn(c4, s4, 25)),
        (
            "gated SYN, ungranted: drop (IPv4)",
            syn(STRANGER_V4.into(), s4, 25),
        ),
        ("gated SYN, granted (IPv6)", syn(c6, s6, 25)),
        (
            "gated SYN, ungranted: drop (IPv6)",
            syn(STRANGER_V6.into(), s6, 25),
        ),
        (
            "SYN to the login port 110, not banned (IPv4)",
            syn(c4, s4, 110),
        ),
        ("gated SYN, banned (IPv4)", syn(BANNED_V4.into(), s4, 25)),
        ("gated SYN, banned (IPv6)", syn(BANNED_V6.into(), s6, 25)),
    ]
}

fn look_for_bans(maps: &mut GateMaps, on: bool) -> Result<()> {
    let mut settings = maps.settings()?;
    settings.bans_in_use = if on {
        BANS_V4_IN_USE | BANS_V6_IN_USE
    } else {
        0
    };
    maps.set_settings(&settings)
}

/// Bans the two banned sources for an hour, then measures every case.
/// Leaves no ban looked for.
pub(super) fn measure(
    maps: &mut GateMaps,
    xdp: &Xdp,
    xdp_pass: &Xdp,
    repeat: u32,
    only: Option<&str>,
) -> Result<Vec<BanRow>> {
    let now = maps.now_ns()?;
    for addr in [IpAddr::from(BANNED_V4), BANNED_V6.into()] {
        maps.ban_at(
            addr,
            Ban {
                banned_at_ns: now,
                until_ns: now + 3_600_000_000_000,
                count: 1,
                reserved: 0,
            },
        )?;
    }
    let mut rows = Vec::new();
    for (case, packet) in cases() {
        if only.is_some_and(|only| !case.contains(only)) {
            continue;
        }
        let packet: &'static [u8] = Box::leak(packet.into_boxed_slice());
        let [mut base, mut off, mut on] = [(); 3].map(|_| Vec::new());
        for _ in 0..RUNS {
            base.push(mean_ns(xdp_pass, packet, repeat)?);
            look_for_bans(maps, false)?;
            off.push(mean_ns(xdp, packet, repeat)?);
            look_for_bans(maps, true)?;
            on.push(mean_ns(xdp, packet, repeat)?);
        }
        rows.push(BanRow {
            case,
            baseline: Figure::of(&base),
            off: Figure::of(&off),
            on: Figure::of(&on),
        });
    }
    look_for_bans(maps, false)?;
    Ok(rows)
}

/// The table of the report.
pub(super) fn markdown(rows: &[BanRow]) -> String {
    let mut md = String::from(
        "\n## The cost of the ban check\n\nThe gate's XDP program on the same packet with no \
         ban looked for (`bans_in_use` clear: a gate that never banned) and with both ban maps \
         looked into (a daemon with bans on; two bans in the maps, of other sources than the \
         rows' but the banned ones), alternated with the empty XDP program in each run. A \
         banned SYN is dropped as `denied_banned` with bans looked for; without, it is judged \
         as any other. A SYN to a login port is not judged at all without bans. Ratios are \
         against the empty program measured in the same runs.\n\n\
         | case | empty XDP ns | gate, no bans ns | gate, bans ns | ratio no bans | ratio bans | the ban check adds ns |\n\
         |---|---:|---:|---:|---:|---:|---:|\n",
    );
    for r in rows {
        let base = r.baseline.median.max(1.0);
        md += &format!(
            "| {} | {} | {} | {} | {:.2} | {:.2} | {:+.1} |\n",
            r.case,
            r.baseline.cell(1),
            r.off.cell(1),
            r.on.cell(1),
            r.off.median / base,
            r.on.median / base,
            r.added()
        );
    }
    md
}
