use anyhow::{bail, Result};
use serde::Serialize;
use smtp_gate::{
    cli::{AttachArgs, DetachArgs},
    gate::{self, AttachReport, AttachRequest, PinDir},
    keys,
};

/// What the given flags ask of the gate: the flags are the keys of an
/// `AttachRequest`, as in serve's config file.
pub fn request(flags: &impl Serialize) -> Result<AttachRequest> {
    keys::read(keys::given_flags(flags)?).map_err(|e| e.as_flag())
}

pub fn attach(args: AttachArgs) -> Result<()> {
    let dir = PinDir::new(&args.pins.pin_dir);
    let req = request(&args)?;
    let report = gate::attach(&dir, &req)?;
    let pins = dir.path().display();
    let mode = match &report {
        AttachReport::Attached { mode }
        | AttachReport::Updated { mode }
        | AttachReport::Upgraded { mode, .. } => *mode,
        AttachReport::Replaced { new, .. } => *new,
    };
    if mode == gate::AttachMode::XdpSkb {
        eprintln!(
            "smtp-gate: warning: generic XDP does not see packets redirected into {} \
             (tc mirred, bpf_redirect): where anyone who can redirect traffic into it \
             (a container's root on the other end of a veth) must be gated, use --mode tc",
            args.iface
        );
    }
    match report {
        AttachReport::Attached { mode } => {
            println!("attached to {} ({mode}), pinned in {pins}", args.iface)
        }
        AttachReport::Updated { mode } => {
            println!(
                "already attached to {} ({mode}): settings updated",
                args.iface
            )
        }
        AttachReport::Replaced { old, new } => {
            println!(
                "attached to {} ({new}, replacing {old}), pinned in {pins}",
                args.iface
            )
        }
        AttachReport::Upgraded {
            mode,
            replaced,
            warnings,
        } => {
            let maps = gate::attach::upgrade_summary(&replaced);
            println!(
                "upgraded the gate on {} ({mode}): it was pinned by an older smtp-gate; \
                 {maps}; pinned in {pins}",
                args.iface
            );
            for warning in warnings {
                eprintln!("smtp-gate: warning: {warning}");
            }
        }
    }
    Ok(())
}

pub fn detach(args: DetachArgs) -> Result<()> {
    let dir = PinDir::new(&args.pins.pin_dir);
    let Some(iface) = &args.iface else {
        return detach_all(&dir, args.keep_grants);
    };
    gate::detach(&dir, iface, args.keep_grants)?;
    println!("detached from {iface}");
    Ok(())
}

/// `detach --all`: one line per interface, and what became of the maps;
/// an error naming every interface the gate could not be taken off.
fn detach_all(dir: &PinDir, keep_grants: bool) -> Result<()> {
    let pins = dir.path().display();
    let Some(done) = gate::attach::detach_all(dir, keep_grants)? else {
        println!("no gate in {pins}");
        return Ok(());
    };
    for iface in &done.detached {
        println!("detached from {iface}");
    }
    if done.detached.is_empty() && done.failed.is_empty() {
        println!("no interface had the gate in {pins}");
    }
    if keep_grants {
        println!("the grants and bans stay pinned in {pins}");
    } else {
        println!("the gate's maps in {pins} are removed");
    }
    if !done.failed.is_empty() {
        bail!(
            "the gate in {pins} could not be taken off {}",
            done.failed.join("; ")
        );
    }
    Ok(())
}
