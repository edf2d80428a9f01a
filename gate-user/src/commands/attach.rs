use anyhow::Result;
use smtp_gate::gate::{self, AttachReport, AttachRequest, PinDir};

use smtp_gate::cli::{AttachArgs, DetachArgs, GateSettingsArgs};

pub fn request(iface: &str, settings: &GateSettingsArgs) -> Result<AttachRequest> {
    Ok(AttachRequest {
        iface: iface.to_string(),
        window: settings.window,
        ports: settings.ports.clone(),
        deny: settings.deny.map(Into::into),
        log_rate_per_sec: settings.log_rate,
        dest: settings.dest()?,
        ..AttachRequest::default()
    })
}

pub fn attach(args: AttachArgs) -> Result<()> {
    let dir = PinDir::new(&args.pins.pin_dir);
    let mut req = request(&args.iface, &args.settings)?;
    req.mode = args.attachment.mode;
    req.exempt = args.attachment.exempt();
    req.capacity = args.attachment.capacity;
    req.allow_private_bpffs = args.attachment.allow_private_bpffs;
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
