//! The start of a daemon that keeps a gate (`serve`, and `agent`, the
//! bus's edge): attach the gate or adopt the one there, say which, and
//! hold it (gate/held.rs).

use anyhow::Result;
use log::{info, warn};

use crate::gate::{self, held::HeldGate, AttachReport, AttachRequest, PinDir};

/// Attaches (or adopts) the gate on `req.iface`, logs what was done, and
/// holds it.
pub fn attach_and_hold(dir: &PinDir, req: &AttachRequest) -> Result<HeldGate> {
    let iface = &req.iface;
    let attachment = gate::attach_holding(dir, req)?;
    let mode = attachment.report.mode();
    match &attachment.report {
        AttachReport::Attached { mode } => info!("gate attached to {iface} ({mode})"),
        AttachReport::Updated { mode } => {
            info!("gate on {iface} ({mode}) adopted, settings applied")
        }
        AttachReport::Replaced { old, new } => {
            info!("gate on {iface} moved from {old} to {new}")
        }
        AttachReport::Upgraded {
            mode,
            replaced,
            warnings,
        } => {
            info!(
                "gate on {iface} ({mode}) upgraded: it was pinned by an older smtp-gate; {}",
                gate::attach::upgrade_summary(replaced)
            );
            for warning in warnings {
                warn!("upgrade: {warning}");
            }
        }
    }
    HeldGate::new(dir, iface, mode, attachment.link)
}
