//! The daemon's own hold on the gate. A pinned gate lives only as long as
//! its pins: unmount the bpffs or remove the pin directory and the link
//! goes, the program with it, and every grant. A daemon that runs keeps an
//! fd on the link and on every map, so that the gate cannot end under it;
//! it checks now and then that the pins are still there, puts them back
//! from its fds when they are not, follows a gate that another smtp-gate
//! command replaced, and attaches again when its link lost its interface
//! (deleted and made again).

use std::{fs, path::Path};

use anyhow::{Context, Result};
use aya::maps::MapData;

use super::{
    attach::{self, AttachRequest},
    iface, layout,
    link_fd::LinkFd,
    mode::AttachMode,
    pins::{PinDir, ALL_MAPS},
};

pub struct HeldGate {
    dir: PinDir,
    iface: String,
    mode: AttachMode,
    link: LinkFd,
    maps: Vec<(&'static str, MapData)>,
}

/// What one check found and did.
#[derive(Debug, Default)]
pub struct Check {
    /// What was wrong: each is an error the daemon logs and counts.
    pub problems: Vec<String>,
    /// What was done about it, or what changed without being wrong.
    pub repairs: Vec<String>,
    /// The gate's maps are not the ones held before: whoever writes grants
    /// must open them again.
    pub maps_changed: bool,
}

impl HeldGate {
    /// Holds the attachment just made on `iface` and the maps pinned in
    /// `dir`.
    pub fn new(dir: &PinDir, iface: &str, mode: AttachMode, link: LinkFd) -> Result<Self> {
        Ok(Self {
            dir: dir.clone(),
            iface: iface.to_string(),
            mode,
            link,
            maps: open_maps(dir)?,
        })
    }

    pub fn mode(&self) -> AttachMode {
        self.mode
    }

    /// Checks the gate and repairs what it can (see the module comment).
    /// `req` is what the daemon attaches with when it must attach again.
    pub fn check(&mut self, req: &AttachRequest) -> Check {
        let mut check = Check::default();
        let held = match self.link.info() {
            Ok(info) => info,
            Err(e) => {
                check.problems.push(format!(
                    "cannot read the gate's link on {}: {e}",
                    self.iface
                ));
                return check;
            }
        };
        if let Some((entry_mode, pinned)) = self.pinned_link() {
            if pinned.info.id != held.id && pinned.info.ifindex != 0 {
                // Another smtp-gate command replaced the attachment (a mode
                // switch, an upgrade): follow it.
                self.link = pinned.link;
                self.mode = entry_mode;
                check.repairs.push(format!(
                    "the gate on {} was replaced by another smtp-gate command ({}); the \
                     daemon holds the new one",
                    self.iface, self.mode
                ));
                self.reopen_maps(&mut check);
                return check;
            }
        }
        let current_ifindex = iface::ifindex(&self.iface).ok();
        if held.ifindex == 0 || Some(held.ifindex) != current_ifindex {
            self.attach_again(req, current_ifindex, &mut check);
            return check;
        }
        self.restore_pins(req.allow_private_bpffs, &mut check);
        let replaced = self.maps.iter().any(|(name, data)| {
            let pinned = pinned_map_id(&self.dir.map(name));
            pinned.is_some() && pinned != map_id(data)
        });
        if replaced {
            check.repairs.push(format!(
                "the maps in {} were replaced by another smtp-gate command (an upgrade?); the \
                 daemon uses the new ones",
                self.dir.path().display()
            ));
            self.reopen_maps(&mut check);
        }
        check
    }

    /// True if the pinned link for the interface is the live link this
    /// daemon holds and every map is pinned: the gate outlives the daemon.
    pub fn outlives_daemon(&self) -> bool {
        let Ok(held) = self.link.info() else {
            return false;
        };
        let link_pinned = self
            .pinned_link()
            .is_some_and(|(_, pinned)| pinned.info.id == held.id);
        let maps_pinned = self
            .maps
            .iter()
            .all(|(name, data)| pinned_map_id(&self.dir.map(name)) == map_id(data));
        held.ifindex != 0 && link_pinned && maps_pinned
    }

    fn pinned_link(&self) -> Option<(AttachMode, PinnedLink)> {
        let entry = self.dir.link_for(&self.iface).ok()??;
        let link = LinkFd::open_pinned(&entry.path).ok()?;
        let info = link.info().ok()?;
        Some((entry.mode, PinnedLink { link, info }))
    }

    fn attach_again(&mut self, req: &AttachRequest, now: Option<u32>, check: &mut Check) {
        let Some(_) = now else {
            check.problems.push(format!(
                "{} is gone (its link is detached): nothing to gate until it is back; the \
                 daemon attaches again then",
                self.iface
            ));
            return;
        };
        check.problems.push(format!(
            "the gate's link on {} no longer gates it (the interface was deleted and made \
             again, or the link was detached)",
            self.iface
        ));
        // The maps first, so that the new link runs with the same grants
        // and settings if their pins were gone too.
        self.restore_map_pins(req.allow_private_bpffs, check);
        // Maps that are pinned (still, or again) hold the settings, exempt
        // networks and scope as they are now, changes since the daemon
        // started included: the link comes back with them. The daemon's
        // own settings only make a gate whose maps are gone.
        let maps_kept = self.dir.map(gate_common::map_names::SETTINGS).exists();
        let mut req = if maps_kept {
            AttachRequest {
                iface: req.iface.clone(),
                allow_private_bpffs: req.allow_private_bpffs,
                ..AttachRequest::default()
            }
        } else {
            req.clone()
        };
        req.mode = Some(self.mode);
        match attach::attach_holding(&self.dir, &req) {
            Ok(attachment) => {
                self.link = attachment.link;
                check
                    .repairs
                    .push(format!("attached again to {} ({})", self.iface, self.mode));
                self.reopen_maps(check);
            }
            Err(e) => check.problems.push(format!(
                "attaching again to {} failed: {e:#}; retrying at the next check",
                self.iface
            )),
        }
    }

    fn reopen_maps(&mut self, check: &mut Check) {
        match open_maps(&self.dir) {
            Ok(maps) => {
                let changed = maps
                    .iter()
                    .zip(&self.maps)
                    .any(|((_, new), (_, old))| map_id(new) != map_id(old));
                self.maps = maps;
                check.maps_changed |= changed;
            }
            Err(e) => check
                .problems
                .push(format!("opening the gate's maps again: {e:#}")),
        }
    }

    /// Pins again, from the held fds, whatever pin of the gate is gone.
    fn restore_pins(&mut self, allow_private: bool, check: &mut Check) {
        let mut lost = self.restore_map_pins(allow_private, check);
        let link_pinned = self
            .pinned_link()
            .and_then(|(_, pinned)| self.link.info().ok().map(|h| h.id == pinned.info.id))
            .unwrap_or(false);
        if !link_pinned && self.dir.path().is_dir() {
            let path = self.dir.link(&self.iface, self.mode);
            let _ = fs::remove_file(&path);
            match self.link.pin(&path) {
                Ok(()) => lost.push(path.display().to_string()),
                Err(e) => check.problems.push(format!(
                    "the link pin {} is gone and cannot be made again: {e}; the gate on {} \
                     lasts only as long as this daemon",
                    path.display(),
                    self.iface
                )),
            }
        }
        if !lost.is_empty() {
            check.problems.push(format!(
                "pins of the gate were gone from {} (bpffs unmounted or pins removed): {}",
                self.dir.path().display(),
                lost.join(", ")
            ));
            check.repairs.push(format!(
                "pinned again from the daemon's own fds; the gate on {} never stopped",
                self.iface
            ));
        }
    }

    /// Returns the paths that had to be pinned again.
    fn restore_map_pins(&mut self, allow_private: bool, check: &mut Check) -> Vec<String> {
        let missing: Vec<&(&'static str, MapData)> = self
            .maps
            .iter()
            .filter(|(name, _)| !self.dir.map(name).exists())
            .collect();
        let link_missing = self.dir.link_for(&self.iface).ok().flatten().is_none();
        if missing.is_empty() && !link_missing {
            return Vec::new();
        }
        if let Err(e) = self.dir.prepare(allow_private) {
            check.problems.push(format!(
                "the pins of the gate are gone and cannot be made again: {e:#}; the gate on {} \
                 lasts only as long as this daemon",
                self.iface
            ));
            return Vec::new();
        }
        let _lock = self.dir.lock();
        let mut restored = Vec::new();
        for (name, data) in missing {
            let path = self.dir.map(name);
            match data.pin(&path) {
                Ok(()) => restored.push(path.display().to_string()),
                Err(e) => check
                    .problems
                    .push(format!("pinning {} again: {e}", path.display())),
            }
        }
        restored
    }
}

struct PinnedLink {
    link: LinkFd,
    info: super::link_fd::LinkInfo,
}

fn open_maps(dir: &PinDir) -> Result<Vec<(&'static str, MapData)>> {
    layout::require_current(dir)?;
    ALL_MAPS
        .iter()
        .map(|name| {
            let path = dir.map(name);
            let data =
                MapData::from_pin(&path).with_context(|| format!("opening {}", path.display()))?;
            Ok((*name, data))
        })
        .collect()
}

fn map_id(data: &MapData) -> Option<u32> {
    data.info().ok().map(|i| i.id())
}

fn pinned_map_id(path: &Path) -> Option<u32> {
    aya::maps::MapInfo::from_pin(path).ok().map(|i| i.id())
}
