use anyhow::Result;
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
    gate::detach(&dir, &args.iface, args.keep_grants)?;
    println!("detached from {}", args.iface);
    Ok(())
}
