//! Putting a loaded program on an interface: with a new link, in place of
//! an old link of another mode, or under an old link (an upgrade), so that
//! the interface is never left without a gate where that can be helped.

use std::{
    fs, io,
    os::fd::{AsFd, OwnedFd},
    path::{Path, PathBuf},
};

use anyhow::{anyhow, Context, Result};
use aya::{
    programs::{
        links::FdLink, tc::TcAttachOptions, xdp::XdpMode, LinkOrder, ProgramError, SchedClassifier,
        TcAttachType, Xdp,
    },
    Ebpf, EbpfLoader,
};
use gate_common::{
    map_names::{GRANTS_V4, GRANTS_V6},
    program_names,
};
use log::warn;

use super::{
    link_fd::LinkFd,
    mode::AttachMode,
    object,
    pins::{PinDir, PinnedLinkEntry, ALL_MAPS},
};

/// The link pinned for the interface before this attach, and whether it
/// still gates it (false once its interface was deleted).
pub struct Existing {
    pub link: PinnedLinkEntry,
    pub live: bool,
}

/// Loads the object with every map pinned in `dir` (made and pinned if
/// not there yet).
pub fn load_pinned(dir: &PinDir, entries: u32) -> Result<Ebpf> {
    let mut loader = EbpfLoader::new();
    loader
        .map_max_entries(GRANTS_V4, entries)
        .map_max_entries(GRANTS_V6, entries);
    let pin_paths: Vec<(&str, PathBuf)> =
        ALL_MAPS.iter().map(|name| (*name, dir.map(name))).collect();
    for (name, path) in &pin_paths {
        loader.map_pin_path(name, path.as_path());
    }
    loader
        .load(object::embedded()?)
        .context("loading the smtp-gate eBPF object")
}

/// The object's XDP program, loaded into the kernel on first use.
fn xdp_program(ebpf: &mut Ebpf) -> Result<&mut Xdp> {
    let program: &mut Xdp = ebpf
        .program_mut(program_names::XDP)
        .ok_or_else(|| anyhow!("the object has no XDP program"))?
        .try_into()?;
    if program.fd().is_err() {
        program.load().map_err(explain_load)?;
    }
    Ok(program)
}

/// The object's TC program, loaded into the kernel on first use.
fn tc_program(ebpf: &mut Ebpf) -> Result<&mut SchedClassifier> {
    let program: &mut SchedClassifier = ebpf
        .program_mut(program_names::TC)
        .ok_or_else(|| anyhow!("the object has no TC program"))?
        .try_into()?;
    if program.fd().is_err() {
        program.load().map_err(explain_load)?;
    }
    Ok(program)
}

/// The fd of the loaded program that runs in `mode`.
fn program_fd(ebpf: &mut Ebpf, mode: AttachMode) -> Result<OwnedFd> {
    let fd = match mode {
        AttachMode::Xdp | AttachMode::XdpSkb => xdp_program(ebpf)?.fd()?.as_fd(),
        AttachMode::Tc => tc_program(ebpf)?.fd()?.as_fd(),
    }
    .try_clone_to_owned()
    .context("duplicating the program's fd")?;
    Ok(fd)
}

/// Attaches the loaded program to `iface` in `mode` with a new link and
/// pins it. The interface may hold another attachment meanwhile.
fn attach_new(ebpf: &mut Ebpf, dir: &PinDir, iface: &str, mode: AttachMode) -> Result<LinkFd> {
    let fd_link: FdLink = match mode {
        AttachMode::Xdp | AttachMode::XdpSkb => {
            let program = xdp_program(ebpf)?;
            let xdp_mode = if mode == AttachMode::Xdp {
                XdpMode::Default
            } else {
                XdpMode::Skb
            };
            let id = program
                .attach(iface, xdp_mode)
                .map_err(|e| explain_attach(e, iface, mode))?;
            program.take_link(id)?.try_into()?
        }
        AttachMode::Tc => {
            let program = tc_program(ebpf)?;
            let id = program
                .attach_with_options(
                    iface,
                    TcAttachType::Ingress,
                    TcAttachOptions::TcxOrder(LinkOrder::default()),
                )
                .map_err(|e| explain_attach(e, iface, mode))?;
            program.take_link(id)?.try_into()?
        }
    };
    let path = dir.link(iface, mode);
    // If pinning fails, the link drops here and the attachment with it.
    let pinned = fd_link
        .pin(&path)
        .with_context(|| format!("pinning the link at {}", path.display()))?;
    let link = LinkFd::open_pinned(&path).with_context(|| format!("opening {}", path.display()));
    drop(pinned);
    link
}

/// Puts the loaded program on `iface` in `mode`, in place of `existing`,
/// never leaving the interface ungated where that can be helped:
///
/// - the same mode (an upgrade): the program under the old link is
///   swapped in place, atomically;
/// - TC for XDP or XDP for TC: both can be attached at once, so the new
///   link is in place before the old one goes; if the new one is refused
///   the old one simply stays;
/// - native XDP for generic XDP or back: an interface holds one XDP
///   program, so the old link must go first, while a tcx link of the same
///   program holds the gate; if the new mode is then refused (a driver
///   without native XDP, say), the loaded program is put back in the old
///   mode and pinned again, and the error says so.
pub fn put_on_interface(
    ebpf: &mut Ebpf,
    dir: &PinDir,
    iface: &str,
    mode: AttachMode,
    existing: Option<&Existing>,
) -> Result<LinkFd> {
    let Some(Existing { link: old, live }) = existing else {
        return attach_new(ebpf, dir, iface, mode);
    };
    if !live {
        // Its interface was deleted: the old link gates nothing.
        remove_link(&old.path)?;
        return attach_new(ebpf, dir, iface, mode);
    }
    if old.mode == mode {
        let program = program_fd(ebpf, mode)?;
        let link = LinkFd::open_pinned(&old.path)
            .with_context(|| format!("opening {}", old.path.display()))?;
        match link.update_program(program.as_fd()) {
            Ok(()) => return Ok(link),
            Err(e) => warn!(
                "{iface}: the kernel refused to swap the program under the link in place \
                 ({e}); replacing the link instead"
            ),
        }
    }
    // tcx links stack, on their own and beside an XDP program.
    let both_at_once = old.mode == AttachMode::Tc || mode == AttachMode::Tc;
    if both_at_once {
        let link = attach_new(ebpf, dir, iface, mode).map_err(|e| {
            e.context(format!(
                "attaching to {iface} in {mode} mode failed; the gate stays on {iface} in \
                 {} mode",
                old.mode
            ))
        })?;
        remove_link(&old.path)?;
        return Ok(link);
    }
    // Native XDP for generic or back: an interface holds one XDP program.
    // A tcx link of the same program gates the interface while the XDP
    // link is replaced (everything is loaded, and so verified, first);
    // only a kernel without tcx leaves a gap of one detach and attach.
    xdp_program(ebpf)?;
    let bridge = match attach_new(ebpf, dir, iface, AttachMode::Tc) {
        Ok(_) => Some(dir.link(iface, AttachMode::Tc)),
        Err(e) => {
            warn!("{iface}: no tc link to bridge the mode switch ({e:#}); a short gap follows");
            None
        }
    };
    remove_link(&old.path)?;
    let result = match attach_new(ebpf, dir, iface, mode) {
        Ok(link) => Ok(link),
        Err(refused) => match attach_new(ebpf, dir, iface, old.mode) {
            Ok(_) => Err(refused.context(format!(
                "attaching to {iface} in {mode} mode failed; the gate is back on {iface} in \
                 {} mode (the program loaded again, same maps and grants)",
                old.mode
            ))),
            Err(restore) if bridge.is_some() => {
                // The bridge stays: the interface keeps a gate, in tc mode.
                return Err(refused.context(format!(
                    "attaching to {iface} in {mode} mode failed, and putting it back in {} \
                     mode failed too ({restore:#}); the gate stays on {iface} in tc mode",
                    old.mode
                )));
            }
            Err(restore) => Err(refused.context(format!(
                "attaching to {iface} in {mode} mode failed, and putting the gate back in {} \
                 mode failed too ({restore:#}): {iface} IS NOT GATED",
                old.mode
            ))),
        },
    };
    if let Some(bridge) = bridge {
        remove_link(&bridge)?;
    }
    result
}

/// After an upgrade, the links of the other interfaces still run the old
/// program (with the old maps): swap the new program in under each. What
/// cannot be swapped stays gated by the old program; it is reported.
pub fn upgrade_other_links(ebpf: &mut Ebpf, dir: &PinDir, iface: &str) -> Vec<String> {
    let mut warnings = Vec::new();
    let links = match dir.links() {
        Ok(links) => links,
        Err(e) => return vec![format!("listing the other links: {e:#}")],
    };
    for other in links.into_iter().filter(|l| l.iface != iface) {
        let swapped = LinkFd::open_pinned(&other.path)
            .map_err(anyhow::Error::from)
            .and_then(|link| {
                if link.info()?.ifindex == 0 {
                    return Ok(false);
                }
                let program = program_fd(ebpf, other.mode)?;
                link.update_program(program.as_fd())?;
                Ok(true)
            });
        match swapped {
            Ok(_) => {}
            Err(e) => warnings.push(format!(
                "{} ({}) still runs the old program with the old settings: {e:#}; run \
                 `smtp-gate attach --iface {}` to retry",
                other.iface, other.mode, other.iface
            )),
        }
    }
    warnings
}

/// Detaches the link pinned at `path` and removes the pin. The link is
/// detached for every holder, a daemon's fd included: removing only the
/// pin would leave it attached for as long as someone holds it.
pub fn remove_link(path: &Path) -> Result<()> {
    if let Ok(link) = LinkFd::open_pinned(path) {
        if let Err(e) = link.detach() {
            warn!("detaching {}: {e}; removing its pin only", path.display());
        }
    }
    match fs::remove_file(path) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(e).with_context(|| format!("removing {}", path.display())),
    }
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

fn explain_attach(err: ProgramError, iface: &str, mode: AttachMode) -> anyhow::Error {
    let text = format!("{err:#}");
    if let ProgramError::SyscallError(sys) = &err {
        let errno = sys.io_error.raw_os_error();
        if errno == Some(libc::EBUSY) || errno == Some(libc::EEXIST) {
            return anyhow!(
                "{iface} already has an XDP program that is not smtp-gate's \
                 (see `ip link show {iface}`): {text}"
            );
        }
        if mode == AttachMode::Xdp
            && matches!(
                errno,
                Some(libc::ERANGE) | Some(libc::EOPNOTSUPP) | Some(libc::EINVAL)
            )
        {
            return anyhow!(
                "the driver of {iface} refused native XDP ({text}; on a veth, the peer's MTU \
                 may be too large); --mode xdp-skb works on every interface"
            );
        }
    }
    anyhow::Error::new(err).context(format!("attaching to {iface} in {mode} mode"))
}
