//! Loading the program, attaching it to an interface with a pinned link,
//! and taking it away again.

use std::{fs, io, time::Duration};

use anyhow::{bail, Context, Result};
use gate_common::{
    map_names::{GRANTS_V4, SETTINGS},
    DenyMode, Settings, DEFAULT_GRANT_CAPACITY, EXEMPT_CAPACITY, MAX_PORTS, SCOPE_CAPACITY,
};
use pop3::duration;
use serde::Deserialize;

use super::{
    iface, layout,
    link_fd::{self, LinkFd},
    local_addrs,
    maps::GateMaps,
    mode::AttachMode,
    object,
    pins::{PinDir, ALL_MAPS, KEPT_MAPS, RETIRED_MAPS, SHARED_MAPS},
    settings::{default_settings, validate_ban_ports, validate_ports},
    swap::{self, Existing},
    upgrade::Upgrade,
};
use crate::{
    addr::{deserialize_dest_scope, Cidr},
    keys::KeyError,
};

/// The most grants a map may be asked to hold: 16 Mi addresses, some GiB
/// of kernel memory per map already. A larger `capacity` is refused before
/// anything is made, not by the kernel halfway through an attach.
pub const MAX_CAPACITY: u32 = 1 << 24;

/// The most denial log lines per second per CPU. The program's token
/// bucket multiplies the rate by up to 60 s of nanoseconds in 64 bits
/// (gate-ebpf/src/log.rs), which a rate above about 300 million overflows.
pub const MAX_LOG_RATE: u32 = 1_000_000;

/// What `attach` was asked for. `None` means "keep what is there" on an
/// interface that is already attached, and "the default" on a new one.
/// The fields' names are the config file's keys (`smtp-gate serve`).
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(default)]
pub struct AttachRequest {
    /// The interface mail clients come in on (required).
    pub iface: String,
    /// Default: the mode the interface is gated in, else native XDP.
    pub mode: Option<AttachMode>,
    /// How long a grant lasts.
    #[serde(with = "duration::optional_text")]
    pub window: Option<Duration>,
    /// The gated destination ports: 1 to 8.
    pub ports: Option<Vec<u16>>,
    /// What becomes of a SYN without a grant.
    pub deny: Option<DenyMode>,
    /// Denial log lines per second per CPU (0: none); the burst follows
    /// (twice the rate).
    #[serde(rename = "log_rate")]
    pub log_rate_per_sec: Option<u32>,
    /// The networks always let through; `None`: keep the set there is.
    pub exempt: Option<Vec<Cidr>>,
    /// Grants each map holds; only used when the grant maps are made.
    pub capacity: Option<u32>,
    /// The destination networks to gate (`--dest`); empty: every
    /// destination; `None`: keep the set there is.
    #[serde(deserialize_with = "deserialize_dest_scope")]
    pub dest: Option<Vec<Cidr>>,
    /// Pin on a bpffs that vanishes with this process (see bpffs.rs).
    pub allow_private_bpffs: bool,
    /// The login ports a banned source is shut out of, besides the gated
    /// ports: 0 to 8.
    pub ban_ports: Option<Vec<u16>>,
    /// The network an IPv6 ban covers, in prefix bits (1 to 128).
    pub ban_prefix_v6: Option<u8>,
}

impl AttachRequest {
    /// Refuses a value the gate cannot take, naming its key, before
    /// anything changes.
    pub fn check(&self) -> Result<(), KeyError> {
        if let Some(ports) = &self.ports {
            validate_ports(ports).map_err(|why| KeyError::of("ports", why))?;
        }
        if let Some(ports) = &self.ban_ports {
            validate_ban_ports(ports).map_err(|why| KeyError::of("ban_ports", why))?;
        }
        if let Some(prefix) = self.ban_prefix_v6 {
            if !(1..=128).contains(&prefix) {
                return Err(KeyError::of(
                    "ban_prefix_v6",
                    format!("must be 1 to 128 bits, not {prefix}"),
                ));
            }
        }
        if let Some(capacity) = self.capacity {
            if !(1..=MAX_CAPACITY).contains(&capacity) {
                return Err(KeyError::of(
                    "capacity",
                    format!("must be 1 to {MAX_CAPACITY}, not {capacity}"),
                ));
            }
        }
        if let Some(rate) = self.log_rate_per_sec {
            if rate > MAX_LOG_RATE {
                return Err(KeyError::of(
                    "log_rate",
                    format!("at most {MAX_LOG_RATE} lines per second, not {rate}"),
                ));
            }
        }
        // Each family's networks go into a trie of this many entries: a
        // longer list would fail halfway through writing it.
        for (key, list, room) in [
            ("exempt", &self.exempt, EXEMPT_CAPACITY),
            ("dest", &self.dest, SCOPE_CAPACITY),
        ] {
            let Some(list) = list else { continue };
            let v4 = list.iter().filter(|c| c.net().addr().is_ipv4()).count();
            let v6 = list.len() - v4;
            if v4.max(v6) > room as usize {
                return Err(KeyError::of(
                    key,
                    format!("at most {room} IPv4 and {room} IPv6 networks, not {v4} and {v6}"),
                ));
            }
        }
        Ok(())
    }

    /// True if the request changes any of the settings.
    pub fn changes_settings(&self) -> bool {
        self.window.is_some()
            || self.ports.is_some()
            || self.deny.is_some()
            || self.log_rate_per_sec.is_some()
            || self.ban_ports.is_some()
            || self.ban_prefix_v6.is_some()
    }

    /// `base` with the settings this request gives laid over it; refused
    /// if a value is not one the gate can take.
    pub fn apply_settings(&self, base: Settings) -> Result<Settings> {
        self.check()?;
        let mut settings = base;
        if let Some(window) = self.window {
            settings.window_ns = window.as_nanos().min(u64::MAX as u128) as u64;
        }
        if let Some(ports) = &self.ports {
            settings.ports = [0; MAX_PORTS];
            settings.ports[..ports.len()].copy_from_slice(ports);
            settings.port_count = ports.len() as u32;
        }
        if let Some(deny) = self.deny {
            settings.deny_mode = deny as u32;
        }
        if let Some(rate) = self.log_rate_per_sec {
            settings.log_rate_per_sec = rate;
            settings.log_burst = rate.saturating_mul(2);
        }
        if let Some(ports) = &self.ban_ports {
            settings.ban_ports = [0; MAX_PORTS];
            settings.ban_ports[..ports.len()].copy_from_slice(ports);
            settings.ban_port_count = ports.len() as u32;
        }
        if let Some(prefix) = self.ban_prefix_v6 {
            settings.ban_mask_v6 = gate_common::ipv6_mask(prefix.into());
        }
        Ok(settings)
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum AttachReport {
    Attached {
        mode: AttachMode,
    },
    /// The interface already had the gate in this mode: only settings changed.
    Updated {
        mode: AttachMode,
    },
    /// The interface had the gate in another mode, which was replaced.
    Replaced {
        old: AttachMode,
        new: AttachMode,
    },
    /// The gate was pinned by an older smtp-gate: the maps of an older
    /// layout were replaced (settings carried over, grants kept) and the
    /// new program runs on every interface (or `warnings` say where not).
    Upgraded {
        mode: AttachMode,
        replaced: Vec<&'static str>,
        warnings: Vec<String>,
    },
}

/// What an upgrade did to the maps, for messages.
pub fn upgrade_summary(replaced: &[&str]) -> String {
    if replaced.is_empty() {
        "added the maps new in this build".to_string()
    } else {
        format!(
            "replaced the maps {} (settings carried over, grants kept)",
            replaced.join(", ")
        )
    }
}

impl AttachReport {
    /// The mode the interface is gated in now.
    pub fn mode(&self) -> AttachMode {
        match self {
            Self::Attached { mode } | Self::Updated { mode } | Self::Upgraded { mode, .. } => *mode,
            Self::Replaced { new, .. } => *new,
        }
    }
}

/// An attachment made or adopted, with this process's own fd on its link:
/// a daemon holds it so that the gate cannot end while it runs.
pub struct Attachment {
    pub report: AttachReport,
    pub link: LinkFd,
}

/// Attaches the gate to `req.iface`, or updates its settings if it is
/// already attached there. Returns once the link is pinned: the gate stays
/// after this process exits.
pub fn attach(dir: &PinDir, req: &AttachRequest) -> Result<AttachReport> {
    Ok(attach_holding(dir, req)?.report)
}

/// [`attach`], keeping an fd on the link.
pub fn attach_holding(dir: &PinDir, req: &AttachRequest) -> Result<Attachment> {
    let ifindex = iface::ifindex(&req.iface)?;
    // Everything that can be checked is checked before anything is pinned.
    req.check()?;
    let capacity = req.capacity.unwrap_or(DEFAULT_GRANT_CAPACITY);
    let entries = object::lru_max_entries(capacity);
    dir.prepare(req.allow_private_bpffs)?;
    let _lock = dir.lock()?;
    if req.capacity.is_some() {
        check_existing_capacity(dir, entries, capacity)?;
    }
    let existing = dir.link_for(&req.iface)?;
    let live = existing
        .as_ref()
        .is_some_and(|l| link_fd::pinned_link_ifindex(&l.path).ok() == Some(ifindex));
    // No mode asked for: keep the attachment there is (a daemon adopting
    // it), or native XDP on a new one.
    let mode = req
        .mode
        .or(existing.as_ref().map(|l| l.mode))
        .unwrap_or(AttachMode::Xdp);

    let outdated = layout::outdated_pins(dir)?;
    // A gate of a build that had fewer maps, or one this build retired:
    // its program must be replaced too, or it would never read the new
    // ones (or would go on using the retired one).
    let gate_exists = dir.map(SETTINGS).exists();
    let maps_missing = gate_exists
        && (ALL_MAPS.iter().any(|name| !dir.map(name).exists())
            || RETIRED_MAPS.iter().any(|name| dir.map(name).exists()));
    if outdated.is_empty() && !maps_missing {
        if let Some(link) = existing.as_ref().filter(|l| live && l.mode == mode) {
            configure(dir, req, None)?;
            let link = LinkFd::open_pinned(&link.path)
                .with_context(|| format!("opening {}", link.path.display()))?;
            return Ok(Attachment {
                report: AttachReport::Updated { mode },
                link,
            });
        }
    }

    let upgrade = Upgrade::begin(dir, &outdated, maps_missing)?;
    let first_attach = !dir.map(SETTINGS).exists();
    let existing = existing.map(|link| Existing { link, live });
    let result = install(
        dir,
        req,
        mode,
        entries,
        first_attach,
        existing.as_ref(),
        upgrade.as_ref(),
    );
    let (link, upgrade_warnings) = match result {
        Ok(done) => done,
        Err(e) => {
            if let Some(upgrade) = &upgrade {
                upgrade.roll_back(dir);
            } else if first_attach && dir.links()?.is_empty() {
                // Leave no gate half-made: pins without a link would make
                // every command believe a gate exists that nothing can
                // detach.
                remove_maps(dir, false)?;
            }
            return Err(e);
        }
    };
    // The new program runs: no program of ours reads a retired map any
    // more (the old one kept its own reference while it ran).
    if let Err(e) = remove_pins(dir, &RETIRED_MAPS) {
        log::warn!("{e:#}");
    }
    let report = match (&upgrade, &existing) {
        (Some(upgrade), _) => AttachReport::Upgraded {
            mode,
            replaced: upgrade.replaced(),
            warnings: upgrade_warnings,
        },
        (None, Some(old)) if old.live => AttachReport::Replaced {
            old: old.link.mode,
            new: mode,
        },
        _ => AttachReport::Attached { mode },
    };
    Ok(Attachment { report, link })
}

/// Loads the program over the pinned maps, configures a new gate before
/// its program runs, and puts the program on the interface. Returns the
/// new link and what went wrong upgrading the links of other interfaces.
fn install(
    dir: &PinDir,
    req: &AttachRequest,
    mode: AttachMode,
    entries: u32,
    first_attach: bool,
    existing: Option<&Existing>,
    upgrade: Option<&Upgrade>,
) -> Result<(LinkFd, Vec<String>)> {
    let mut ebpf = swap::load_pinned(dir, entries)?;
    // A new gate (or the new maps of an upgraded one) is configured before
    // its program runs, so it never runs unconfigured; a running gate
    // keeps its settings until this attach has succeeded.
    if first_attach {
        let base = upgrade
            .and_then(|u| u.carried)
            .filter(|s| s.port_count > 0)
            .unwrap_or_else(default_settings);
        configure(dir, req, Some(base))?;
    }
    let link = swap::put_on_interface(&mut ebpf, dir, &req.iface, mode, existing)?;
    let mut warnings = Vec::new();
    // The kept grants of a gate that stamped on CLOCK_BOOTTIME move to the
    // gate's clock once the new program is in place, and only then: a
    // failed attach rolls back to the old program, which needs the old
    // stamps, and a retry must not move them twice. Until they are moved
    // (a fraction of a second) the new program finds them stamped on
    // another clock and denies; a SYN retransmitted a second later finds
    // them moved. A failure here leaves grants unmoved, never fresh.
    if let Some(upgrade) = upgrade.filter(|u| u.stamps_on_boottime) {
        match GateMaps::open(dir).and_then(|mut maps| maps.restamp_from_boottime()) {
            Ok(moved) => log::info!(
                "moved {moved} grant(s) from CLOCK_BOOTTIME stamps to the gate's clock \
                 (replaced maps: {})",
                upgrade.replaced().join(", ")
            ),
            Err(e) => warnings.push(format!(
                "the grants kept from the old gate could not be moved to the gate's clock \
                 and count as expired: {e:#}"
            )),
        }
        warnings.push(
            "if an smtp-gate serve of an older build is still running, restart it with this \
             build: it stamps grants on CLOCK_BOOTTIME, which this gate reads as long expired"
                .to_string(),
        );
    }
    if upgrade.is_some() {
        warnings.extend(swap::upgrade_other_links(&mut ebpf, dir, &req.iface));
    }
    if !first_attach {
        configure(dir, req, None)?;
    }
    Ok((link, warnings))
}

/// `--capacity` only applies when the grant maps are created; refuse to
/// pretend otherwise when they are already pinned with another size.
fn check_existing_capacity(dir: &PinDir, entries: u32, capacity: u32) -> Result<()> {
    let path = dir.map(GRANTS_V4);
    if !path.exists() {
        return Ok(());
    }
    let existing = aya::maps::MapData::from_pin(&path)
        .and_then(|m| m.info())
        .with_context(|| format!("reading {}", path.display()))?
        .max_entries();
    if existing != entries {
        // The key's error: `serve` names the key or the flag it came from.
        return Err(KeyError::of(
            "capacity",
            format!(
                "{capacity}: the grant maps in {} already exist with another size ({existing} \
                 slots); detach without --keep-grants to resize them",
                dir.path().display()
            ),
        )
        .into());
    }
    Ok(())
}

/// Writes the settings `req` asks for on top of `base` (the pinned
/// settings if `None`), the exempt and destination sets if given, and the
/// host's addresses.
fn configure(dir: &PinDir, req: &AttachRequest, base: Option<Settings>) -> Result<()> {
    let mut maps = GateMaps::open(dir)?;
    let base = match base {
        Some(base) => base,
        None => {
            let current = maps.settings()?;
            if current.port_count == 0 {
                default_settings()
            } else {
                current
            }
        }
    };
    maps.set_settings(&req.apply_settings(base)?)?;
    if let Some(exempt) = &req.exempt {
        maps.exempt_replace(exempt)?;
    }
    if let Some(dest) = &req.dest {
        maps.set_scope(dest)?;
    }
    maps.local_replace(&local_addrs::host_addresses()?)?;
    Ok(())
}

/// Detaches the gate from `iface`. When no interface is left, the maps go
/// too, except the grants with `keep_grants`.
pub fn detach(dir: &PinDir, iface: &str, keep_grants: bool) -> Result<()> {
    let _lock = dir.lock()?;
    let Some(link) = dir.link_for(iface)? else {
        bail!(
            "nothing attached to {iface} (no link in {})",
            dir.path().display()
        );
    };
    swap::remove_link(&link.path)?;
    if dir.links()?.is_empty() {
        remove_maps(dir, keep_grants)?;
    }
    Ok(())
}

/// What `detach --all` did in one pin directory.
#[derive(Debug, Default)]
pub struct DetachedAll {
    /// The interfaces the gate is off.
    pub detached: Vec<String>,
    /// The ones it could not be taken off, each with why.
    pub failed: Vec<String>,
}

/// Detaches the gate from every interface linked in `dir` (going on past
/// one that fails), then unpins its maps (the grants and bans too unless
/// `keep_grants`). `None` when `dir` holds no gate: no such directory, not
/// a bpffs, neither a link nor the settings pinned there (nothing is
/// removed from a directory that is not the gate's).
pub fn detach_all(dir: &PinDir, keep_grants: bool) -> Result<Option<DetachedAll>> {
    let path = dir.path();
    if !path.is_dir() || !super::bpffs::is_bpffs(path)? {
        return Ok(None);
    }
    // Bounded: a package's removal must not hang on a holder that does.
    let _lock = dir.lock_within(std::time::Duration::from_secs(30), |_| {})?;
    let links = dir.links()?;
    if links.is_empty() && !dir.map(gate_common::map_names::SETTINGS).exists() {
        return Ok(None);
    }
    let mut done = DetachedAll::default();
    for link in links {
        match swap::remove_link(&link.path) {
            Ok(()) => done.detached.push(link.iface),
            Err(e) => done.failed.push(format!("{}: {e:#}", link.iface)),
        }
    }
    remove_maps(dir, keep_grants)?;
    Ok(Some(done))
}

/// Unpins the maps (the grants too unless `keep_grants`) and removes the
/// directory if nothing else is in it.
fn remove_maps(dir: &PinDir, keep_grants: bool) -> Result<()> {
    let mut doomed: Vec<&str> = SHARED_MAPS.to_vec();
    doomed.extend(RETIRED_MAPS);
    if !keep_grants {
        doomed.extend(KEPT_MAPS);
    }
    remove_pins(dir, &doomed)?;
    dir.remove_if_empty();
    Ok(())
}

/// Unpins the maps `names` of `dir` that are pinned.
fn remove_pins(dir: &PinDir, names: &[&str]) -> Result<()> {
    for name in names {
        match fs::remove_file(dir.map(name)) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(e).with_context(|| format!("removing pin {name}")),
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn networks(count: u32, v4: bool) -> Vec<Cidr> {
        (0..count)
            .map(|i| {
                let text = if v4 {
                    format!("10.{}.{}.0/24", i >> 8, i & 0xff)
                } else {
                    format!("2001:db8:{i:x}::/48")
                };
                text.parse().unwrap()
            })
            .collect()
    }

    /// A list longer than its trie would fail halfway through writing it,
    /// with part of the networks in place: refused before anything.
    #[test]
    fn network_lists_must_fit_their_tries() {
        let fits = AttachRequest {
            exempt: Some(networks(EXEMPT_CAPACITY, true)),
            dest: Some(networks(SCOPE_CAPACITY, false)),
            ..AttachRequest::default()
        };
        fits.check().unwrap();
        let exempt = AttachRequest {
            exempt: Some(networks(EXEMPT_CAPACITY + 1, false)),
            ..AttachRequest::default()
        };
        assert_eq!(exempt.check().unwrap_err().key.as_deref(), Some("exempt"));
        let dest = AttachRequest {
            dest: Some(networks(SCOPE_CAPACITY + 1, true)),
            ..AttachRequest::default()
        };
        let e = dest.check().unwrap_err();
        assert_eq!(e.key.as_deref(), Some("dest"));
        assert_eq!(
            e.to_string(),
            "--dest: at most 1024 IPv4 and 1024 IPv6 networks, not 1025 and 0"
        );
    }

    #[test]
    fn capacity_and_log_rate_are_bounded() {
        let req = |capacity, rate| AttachRequest {
            capacity: Some(capacity),
            log_rate_per_sec: Some(rate),
            ..AttachRequest::default()
        };
        req(1, 0).check().unwrap();
        req(MAX_CAPACITY, MAX_LOG_RATE).check().unwrap();
        assert_eq!(
            req(0, 5).check().unwrap_err().key.as_deref(),
            Some("capacity")
        );
        assert_eq!(
            req(MAX_CAPACITY + 1, 5).check().unwrap_err().key.as_deref(),
            Some("capacity")
        );
        assert_eq!(
            req(5, MAX_LOG_RATE + 1).check().unwrap_err().key.as_deref(),
            Some("log_rate")
        );
        // The settings path refuses the same.
        assert!(req(5, u32::MAX)
            .apply_settings(super::default_settings())
            .is_err());
    }
}
