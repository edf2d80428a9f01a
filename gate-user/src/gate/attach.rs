//! Loading the program, attaching it to an interface with a pinned link,
//! and taking it away again.

use std::{fmt, fs, io, time::Duration};

use anyhow::{anyhow, bail, Context, Result};
use aya::{
    programs::{
        links::{FdLink, PinnedLink},
        tc::TcAttachOptions,
        xdp::XdpMode,
        LinkOrder, ProgramError, SchedClassifier, TcAttachType, Xdp,
    },
    EbpfLoader,
};
use gate_common::{
    map_names::{
        AYA_LOGS, EXEMPT_V4, EXEMPT_V6, GRANTS_V4, GRANTS_V6, LOCAL_V4, LOCAL_V6, LOG_BUCKETS,
        SCOPE_V4, SCOPE_V6, SETTINGS, STATS,
    },
    program_names, DenyMode, Settings, DEFAULT_GRANT_CAPACITY, DEFAULT_WINDOW_NS, MAX_PORTS,
};

use super::{
    link_info,
    maps::GateMaps,
    object,
    pins::{PinDir, PinnedLinkEntry},
};
use crate::addr::Cidr;

/// Maps that go away with the last detach unless grants are kept.
const SHARED_MAPS: [&str; 10] = [
    EXEMPT_V4, EXEMPT_V6, SETTINGS, STATS, LOG_BUCKETS, AYA_LOGS, SCOPE_V4, SCOPE_V6, LOCAL_V4,
    LOCAL_V6,
];
const GRANT_MAPS: [&str; 2] = [GRANTS_V4, GRANTS_V6];

pub const DEFAULT_LOG_RATE_PER_SEC: u32 = 5;
pub const DEFAULT_LOG_BURST: u32 = 10;

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum AttachMode {
    /// Native XDP in the driver (falls back to generic XDP where the driver
    /// has no XDP support).
    Xdp,
    /// Generic (skb) XDP: works on every interface, a little slower.
    XdpSkb,
    /// A TC classifier on clsact ingress (tcx).
    Tc,
}

impl AttachMode {
    pub fn pin_tag(self) -> &'static str {
        match self {
            Self::Xdp => "xdp",
            Self::XdpSkb => "xdpskb",
            Self::Tc => "tc",
        }
    }

    pub fn from_pin_tag(tag: &str) -> Option<Self> {
        match tag {
            "xdp" => Some(Self::Xdp),
            "xdpskb" => Some(Self::XdpSkb),
            "tc" => Some(Self::Tc),
            _ => None,
        }
    }
}

impl fmt::Display for AttachMode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Xdp => "xdp",
            Self::XdpSkb => "xdp-skb",
            Self::Tc => "tc",
        })
    }
}

/// What `attach` was asked for. `None` means "keep what is there" on an
/// interface that is already attached, and "the default" on a new one.
#[derive(Clone, Debug, Default)]
pub struct AttachRequest {
    pub iface: String,
    pub mode: Option<AttachMode>,
    pub window: Option<Duration>,
    pub ports: Option<Vec<u16>>,
    pub deny: Option<DenyMode>,
    pub exempt: Option<Vec<Cidr>>,
    pub capacity: Option<u32>,
    pub log_rate_per_sec: Option<u32>,
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
}

/// The settings of a new gate: window 15m, port 25, drop, 5 log lines/s.
pub fn default_settings() -> Settings {
    let mut settings = Settings::UNCONFIGURED;
    settings.window_ns = DEFAULT_WINDOW_NS;
    settings.ports[0] = 25;
    settings.port_count = 1;
    settings.deny_mode = DenyMode::Drop as u32;
    settings.log_rate_per_sec = DEFAULT_LOG_RATE_PER_SEC;
    settings.log_burst = DEFAULT_LOG_BURST;
    settings
}

/// Checks a port list: 1 to MAX_PORTS distinct ports, none of them 0.
pub fn validate_ports(ports: &[u16]) -> Result<()> {
    if ports.is_empty() || ports.len() > MAX_PORTS {
        bail!("--ports takes 1 to {MAX_PORTS} ports, got {}", ports.len());
    }
    if ports.contains(&0) {
        bail!("--ports: 0 is not a port");
    }
    let mut sorted = ports.to_vec();
    sorted.sort_unstable();
    sorted.dedup();
    if sorted.len() != ports.len() {
        bail!("--ports: a port is listed twice");
    }
    Ok(())
}

/// Applies the parts of `req` that are set on top of `base`.
pub fn merge_settings(base: Settings, req: &AttachRequest) -> Result<Settings> {
    let mut settings = base;
    if let Some(window) = req.window {
        settings.window_ns = window.as_nanos().min(u64::MAX as u128) as u64;
    }
    if let Some(ports) = &req.ports {
        validate_ports(ports)?;
        settings.ports = [0; MAX_PORTS];
        settings.ports[..ports.len()].copy_from_slice(ports);
        settings.port_count = ports.len() as u32;
    }
    if let Some(deny) = req.deny {
        settings.deny_mode = deny as u32;
    }
    if let Some(rate) = req.log_rate_per_sec {
        settings.log_rate_per_sec = rate;
        settings.log_burst = rate.saturating_mul(2);
    }
    Ok(settings)
}

pub fn ifindex(iface: &str) -> Result<u32> {
    let name = std::ffi::CString::new(iface).map_err(|_| anyhow!("bad interface name"))?;
    // SAFETY: name is NUL-terminated.
    let index = unsafe { libc::if_nametoindex(name.as_ptr()) };
    if index == 0 {
        bail!("no such interface: {iface}");
    }
    Ok(index)
}

/// Attaches the gate to `req.iface`, or updates its settings if it is
/// already attached there. Returns once the link is pinned: the gate stays
/// after this process exits.
pub fn attach(dir: &PinDir, req: &AttachRequest) -> Result<AttachReport> {
    let ifindex = ifindex(&req.iface)?;
    // Everything that can be checked is checked before anything is pinned.
    merge_settings(default_settings(), req)?;
    let capacity = req.capacity.unwrap_or(DEFAULT_GRANT_CAPACITY);
    if capacity == 0 {
        bail!("--capacity must be at least 1");
    }
    let entries = object::lru_max_entries(capacity);
    if req.capacity.is_some() {
        check_existing_capacity(dir, entries, capacity)?;
    }
    let existing = dir.link_for(&req.iface)?;
    // No mode asked for: keep the attachment there is (a daemon adopting
    // it), or native XDP on a new one.
    let mode = req
        .mode
        .or(existing.as_ref().map(|l| l.mode))
        .unwrap_or(AttachMode::Xdp);

    if let Some(link) = &existing {
        let live = link_info::pinned_link_ifindex(&link.path).ok() == Some(ifindex);
        if link.mode == mode && live {
            configure(dir, req)?;
            return Ok(AttachReport::Updated { mode });
        }
    }

    let first_attach = !dir.map(SETTINGS).exists();
    let result = load_and_attach(dir, req, mode, entries, first_attach, existing.as_ref());
    if result.is_err() && first_attach && dir.links()?.is_empty() {
        // Leave no gate half-made: pins without a link would make every
        // command believe a gate exists that nothing can detach.
        remove_maps(dir, false)?;
    }
    let fd_link = result?;
    let link_path = dir.link(&req.iface, mode);
    fd_link
        .pin(&link_path)
        .with_context(|| format!("pinning the link at {}", link_path.display()))?;
    if !first_attach {
        configure(dir, req)?;
    }
    Ok(match existing {
        Some(old) => AttachReport::Replaced {
            old: old.mode,
            new: mode,
        },
        None => AttachReport::Attached { mode },
    })
}

fn load_and_attach(
    dir: &PinDir,
    req: &AttachRequest,
    mode: AttachMode,
    entries: u32,
    first_attach: bool,
    existing: Option<&PinnedLinkEntry>,
) -> Result<FdLink> {
    dir.prepare()?;
    let mut loader = EbpfLoader::new();
    loader
        .map_max_entries(GRANTS_V4, entries)
        .map_max_entries(GRANTS_V6, entries);
    let pin_paths: Vec<(&str, std::path::PathBuf)> = SHARED_MAPS
        .iter()
        .chain(GRANT_MAPS.iter())
        .map(|name| (*name, dir.map(name)))
        .collect();
    for (name, path) in &pin_paths {
        loader.map_pin_path(name, path.as_path());
    }
    let mut ebpf = loader
        .load(object::GATE_EBPF)
        .context("loading the smtp-gate eBPF object")?;

    // A new gate is configured before its program runs, so it never runs
    // unconfigured; a running gate keeps its settings until this attach
    // has succeeded.
    if first_attach {
        configure_with(dir, req, true)?;
    }

    let fd_link: FdLink = match mode {
        AttachMode::Xdp | AttachMode::XdpSkb => {
            let program: &mut Xdp = ebpf
                .program_mut(program_names::XDP)
                .ok_or_else(|| anyhow!("the object has no XDP program"))?
                .try_into()?;
            program.load().map_err(explain_load)?;
            // An interface holds one XDP link, so an old XDP attachment
            // must go first; an old TC one stays until the new gate is in.
            let old_xdp = existing.filter(|old| old.mode != AttachMode::Tc);
            if let Some(old) = old_xdp {
                remove_link(old.path.as_path())?;
            }
            let xdp_mode = if mode == AttachMode::Xdp {
                XdpMode::Default
            } else {
                XdpMode::Skb
            };
            let id = program
                .attach(&req.iface, xdp_mode)
                .map_err(|e| explain_attach(e, &req.iface))?;
            if let Some(old) = existing.filter(|old| old.mode == AttachMode::Tc) {
                remove_link(old.path.as_path())?;
            }
            program.take_link(id)?.try_into()?
        }
        AttachMode::Tc => {
            let program: &mut SchedClassifier = ebpf
                .program_mut(program_names::TC)
                .ok_or_else(|| anyhow!("the object has no TC program"))?
                .try_into()?;
            program.load().map_err(explain_load)?;
            let id = program
                .attach_with_options(
                    &req.iface,
                    TcAttachType::Ingress,
                    TcAttachOptions::TcxOrder(LinkOrder::default()),
                )
                .map_err(|e| explain_attach(e, &req.iface))?;
            // tcx links stack, so the new one is in place before the old
            // one goes: no moment without a gate.
            if let Some(old) = existing {
                remove_link(old.path.as_path())?;
            }
            program.take_link(id)?.try_into()?
        }
    };
    Ok(fd_link)
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
        bail!(
            "--capacity {capacity}: the grant maps in {} already exist with another size \
             ({existing} slots); detach without --keep-grants to resize them",
            dir.path().display()
        );
    }
    Ok(())
}

fn configure(dir: &PinDir, req: &AttachRequest) -> Result<()> {
    configure_with(dir, req, false)
}

fn configure_with(dir: &PinDir, req: &AttachRequest, first_attach: bool) -> Result<()> {
    let mut maps = GateMaps::open(dir)?;
    let current = maps.settings()?;
    let base = if first_attach || current.port_count == 0 {
        default_settings()
    } else {
        current
    };
    maps.set_settings(&merge_settings(base, req)?)?;
    if let Some(exempt) = &req.exempt {
        maps.exempt_replace(exempt)?;
    }
    Ok(())
}

fn remove_link(path: &std::path::Path) -> Result<()> {
    match PinnedLink::from_pin(path) {
        // Dropping the last reference to the link detaches the program.
        Ok(link) => drop(
            link.unpin()
                .with_context(|| format!("unpinning {}", path.display()))?,
        ),
        Err(_) => match fs::remove_file(path) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(e).with_context(|| format!("removing {}", path.display())),
        },
    }
    Ok(())
}

/// Detaches the gate from `iface`. When no interface is left, the maps go
/// too, except the grants with `keep_grants`.
pub fn detach(dir: &PinDir, iface: &str, keep_grants: bool) -> Result<()> {
    let Some(link) = dir.link_for(iface)? else {
        bail!(
            "nothing attached to {iface} (no link in {})",
            dir.path().display()
        );
    };
    remove_link(&link.path)?;
    if dir.links()?.is_empty() {
        remove_maps(dir, keep_grants)?;
    }
    Ok(())
}

/// Unpins the maps (the grants too unless `keep_grants`) and removes the
/// directory if nothing else is in it.
fn remove_maps(dir: &PinDir, keep_grants: bool) -> Result<()> {
    let mut doomed: Vec<&str> = SHARED_MAPS.to_vec();
    if !keep_grants {
        doomed.extend(GRANT_MAPS);
    }
    for name in doomed {
        match fs::remove_file(dir.map(name)) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(e).with_context(|| format!("removing pin {name}")),
        }
    }
    dir.remove_if_empty();
    Ok(())
}

fn explain_load(err: ProgramError) -> anyhow::Error {
    match err {
        ProgramError::LoadError {
            io_error,
            verifier_log,
        } => anyhow!("the kernel refused the program: {io_error}\nverifier log:\n{verifier_log}"),
        other => anyhow::Error::new(other).context("loading the program"),
    }
}

fn explain_attach(err: ProgramError, iface: &str) -> anyhow::Error {
    let text = format!("{err:#}");
    if let ProgramError::SyscallError(sys) = &err {
        if sys.io_error.raw_os_error() == Some(libc::EBUSY)
            || sys.io_error.raw_os_error() == Some(libc::EEXIST)
        {
            return anyhow!(
                "{iface} already has an XDP program that is not smtp-gate's \
                 (see `ip link show {iface}`): {text}"
            );
        }
    }
    anyhow::Error::new(err).context(format!("attaching to {iface}"))
}
