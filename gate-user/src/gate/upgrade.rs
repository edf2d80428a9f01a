//! Upgrading a gate pinned by an older smtp-gate. Its maps of an older
//! layout are unpinned (the old program keeps its own references, so the
//! interface stays gated by it until its link runs the new program), the
//! new program is loaded with new maps pinned in their place, and the old
//! settings are carried over. Maps whose layout did not change (the
//! grants, the exempt networks) are kept as they are. If the upgrade fails
//! before the new gate is in place, the old maps are pinned back.

use std::{fs, io, os::fd::AsFd};

use anyhow::{Context, Result};
use aya::maps::{Array, Map, MapData};
use gate_common::{map_names::SETTINGS, Settings, MAX_PORTS};
use log::warn;

use super::{pins::PinDir, settings::default_ban_settings};

/// An upgrade under way: the outdated maps, still held.
pub struct Upgrade {
    old: Vec<(&'static str, MapData)>,
    /// The old gate's settings, when its settings map is among the
    /// replaced ones (otherwise the pinned settings map is kept).
    pub carried: Option<Settings>,
    /// The old gate stamped its grants on CLOCK_BOOTTIME (a settings
    /// value without a tick length): the kept grants need new stamps.
    pub stamps_on_boottime: bool,
}

impl Upgrade {
    /// Holds and unpins the `outdated` maps of `dir`. `None` if there are
    /// none and no map is `missing` either (nothing to upgrade).
    pub fn begin(dir: &PinDir, outdated: &[&'static str], missing: bool) -> Result<Option<Self>> {
        if outdated.is_empty() && !missing {
            return Ok(None);
        }
        let mut old = Vec::new();
        for name in outdated {
            let path = dir.map(name);
            let data =
                MapData::from_pin(&path).with_context(|| format!("opening {}", path.display()))?;
            old.push((*name, data));
        }
        let (carried, stamps_on_boottime) = match old.iter().find(|(name, _)| *name == SETTINGS) {
            Some((_, data)) => {
                let (settings, boottime) = read_old_settings(data)?;
                (Some(settings), boottime)
            }
            None => (None, false),
        };
        let upgrade = Self {
            old,
            carried,
            stamps_on_boottime,
        };
        for (name, _) in &upgrade.old {
            if let Err(e) = remove_pin(dir, name) {
                upgrade.roll_back(dir);
                return Err(e);
            }
        }
        Ok(Some(upgrade))
    }

    /// The names of the maps that were replaced.
    pub fn replaced(&self) -> Vec<&'static str> {
        self.old.iter().map(|(name, _)| *name).collect()
    }

    /// Puts the old maps back under their names, in place of whatever a
    /// failed upgrade pinned there.
    pub fn roll_back(&self, dir: &PinDir) {
        for (name, data) in &self.old {
            if let Err(e) = remove_pin(dir, name) {
                warn!("rolling back the upgrade: {e:#}");
            }
            if let Err(e) = data.pin(dir.map(name)) {
                warn!("rolling back the upgrade: pinning the old {name} again: {e}");
            }
        }
    }
}

fn remove_pin(dir: &PinDir, name: &str) -> Result<()> {
    match fs::remove_file(dir.map(name)) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(e).with_context(|| format!("unpinning {name}")),
    }
}

/// Size of the settings value before `dest_scoped` and `reserved` came.
const FIRST_SETTINGS_SIZE: usize = 40;
/// Size of the settings value before the gate's clock (`tick_ns`) came;
/// grants were stamped on CLOCK_BOOTTIME until then.
const BOOTTIME_SETTINGS_SIZE: usize = 48;
/// Size of the settings value before the bans came (login ports, which
/// ban maps are in use, the IPv6 ban mask).
const BANLESS_SETTINGS_SIZE: usize = 56;

/// Reads the settings of an older gate by the layout it was written in:
/// window_ns (u64), ports ([u16; 8]), port_count, deny_mode,
/// log_rate_per_sec, log_burst (u32 each), then in the second layout
/// dest_scoped and padding (u32 each), in the third tick_ns,
/// exempt_in_use and padding (recomputed when written), in the host's
/// byte order; and whether its grants were stamped on CLOCK_BOOTTIME (the
/// first two did). The carried settings get the default login ports and
/// ban prefix. Any other size is not a layout this build knows: the new
/// gate starts from its defaults then.
fn read_old_settings(data: &MapData) -> Result<(Settings, bool)> {
    let info = data.info().context("reading the old settings map")?;
    let size = info.value_size() as usize;
    if ![
        FIRST_SETTINGS_SIZE,
        BOOTTIME_SETTINGS_SIZE,
        BANLESS_SETTINGS_SIZE,
    ]
    .contains(&size)
    {
        warn!(
            "the old settings map has {size}-octet values, a layout this build does not know: \
             the upgraded gate starts from the default settings"
        );
        return Ok((Settings::UNCONFIGURED, false));
    }
    let fd = data
        .fd()
        .as_fd()
        .try_clone_to_owned()
        .context("duplicating the old settings map's fd")?;
    let map = Map::from_map_data(MapData::from_fd(fd)?)?;
    let raw = match size {
        FIRST_SETTINGS_SIZE => read_value::<FIRST_SETTINGS_SIZE>(map)?.to_vec(),
        BOOTTIME_SETTINGS_SIZE => read_value::<BOOTTIME_SETTINGS_SIZE>(map)?.to_vec(),
        _ => read_value::<BANLESS_SETTINGS_SIZE>(map)?.to_vec(),
    };
    Ok((parse_old_settings(&raw), size < BANLESS_SETTINGS_SIZE))
}

/// The one value of an array map of `N`-octet values.
fn read_value<const N: usize>(map: Map) -> Result<[u8; N]> {
    let array: Array<MapData, [u8; N]> =
        Array::try_from(map).context("the old settings map is not an array")?;
    array.get(&0, 0).context("reading the old settings")
}

/// Any old layout: each one only added fields at the end.
fn parse_old_settings(raw: &[u8]) -> Settings {
    let u32_at = |at: usize| u32::from_ne_bytes(raw[at..at + 4].try_into().unwrap());
    let mut settings = Settings::UNCONFIGURED;
    default_ban_settings(&mut settings);
    settings.window_ns = u64::from_ne_bytes(raw[0..8].try_into().unwrap());
    for (i, port) in settings.ports.iter_mut().enumerate() {
        let at = 8 + 2 * i;
        *port = u16::from_ne_bytes([raw[at], raw[at + 1]]);
    }
    settings.port_count = u32_at(8 + 2 * MAX_PORTS).min(MAX_PORTS as u32);
    settings.deny_mode = u32_at(28);
    settings.log_rate_per_sec = u32_at(32);
    settings.log_burst = u32_at(36);
    if raw.len() >= BOOTTIME_SETTINGS_SIZE {
        settings.dest_scoped = u32_at(40);
    }
    settings
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn old_settings_layout_is_read_field_by_field() {
        let mut raw = [0u8; FIRST_SETTINGS_SIZE];
        raw[0..8].copy_from_slice(&(420u64 * 1_000_000_000).to_ne_bytes());
        raw[8..10].copy_from_slice(&25u16.to_ne_bytes());
        raw[10..12].copy_from_slice(&587u16.to_ne_bytes());
        raw[24..28].copy_from_slice(&2u32.to_ne_bytes());
        raw[28..32].copy_from_slice(&1u32.to_ne_bytes());
        raw[32..36].copy_from_slice(&7u32.to_ne_bytes());
        raw[36..40].copy_from_slice(&14u32.to_ne_bytes());
        let s = parse_old_settings(&raw);
        assert_eq!(s.window_ns, 420_000_000_000);
        assert_eq!(&s.ports[..2], &[25, 587]);
        assert_eq!(s.port_count, 2);
        assert_eq!(s.deny_mode, 1);
        assert_eq!(s.log_rate_per_sec, 7);
        assert_eq!(s.log_burst, 14);
        assert_eq!(s.dest_scoped, 0);

        let mut second = [0u8; BOOTTIME_SETTINGS_SIZE];
        second[..FIRST_SETTINGS_SIZE].copy_from_slice(&raw);
        second[40..44].copy_from_slice(&1u32.to_ne_bytes());
        let s = parse_old_settings(&second);
        assert_eq!(s.window_ns, 420_000_000_000);
        assert_eq!(s.log_burst, 14);
        assert_eq!(
            s.dest_scoped, 1,
            "the second layout's scope flag is carried"
        );

        let mut third = [0u8; BANLESS_SETTINGS_SIZE];
        third[..BOOTTIME_SETTINGS_SIZE].copy_from_slice(&second);
        third[48..52].copy_from_slice(&4_000_000u32.to_ne_bytes());
        let s = parse_old_settings(&third);
        assert_eq!(
            (s.window_ns, s.port_count, s.dest_scoped),
            (420_000_000_000, 2, 1)
        );
        assert_eq!(
            &s.ban_ports[..s.ban_port_count as usize],
            &[110, 995, 143, 993],
            "a gate without bans gets the default login ports"
        );
        assert_eq!(gate_common::ipv6_mask_prefix(&s.ban_mask_v6), 64);
        assert_eq!(s.bans_in_use, 0, "and looks for no ban until one is made");
    }
}
