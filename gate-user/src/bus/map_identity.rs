//! Which grant maps the agent's position was applied to.
//!
//! A position says what the agent's map already holds: the grants of
//! every entry up to it. That is true only of the map it was applied to.
//! After a reboot the gate is attached anew with empty maps (pins live on
//! a bpffs, which does not outlive the boot), while the position file in
//! /var/lib does; so after a detach and an attach, a removed pin
//! directory, an upgrade that replaced the grant maps. Resuming from the
//! position then left out every grant published before it and still
//! valid, while the agent said it was ready (attack review: agent reboot
//! position).
//!
//! So the position file names the maps beside the position: the kernel's
//! ids of the two grant maps (unique on one boot until they wrap, after
//! two thousand million maps) and the boot's id
//! (/proc/sys/kernel/random/boot_id; ids start again at each boot). When
//! they are not the maps the agent writes to now, every grant is loaded
//! from the keys first. The revoke tombstones beside the position
//! (tombstones.rs) hold for any map: they are kept.

use std::{fmt, fs, sync::OnceLock};

/// Where the kernel tells the boot's id (a random UUID made at boot).
const BOOT_ID: &str = "/proc/sys/kernel/random/boot_id";

/// The grant maps of one boot, by the kernel's ids.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MapIdentity {
    /// The boot's id (a UUID).
    pub boot: u128,
    /// The ids of the IPv4 and the IPv6 grant map.
    pub grants: [u32; 2],
}

/// The first word of the position file's line naming the maps.
const WORD: &str = "grant-maps";

impl MapIdentity {
    /// The grant maps of `ids` (gate/maps: [`crate::gate::GateMaps::grant_map_ids`])
    /// on this boot; `None` if either is not known.
    pub fn on_this_boot(ids: Option<[u32; 2]>) -> Option<Self> {
        Some(Self {
            boot: this_boot()?,
            grants: ids?,
        })
    }

    /// The position file's line: `grant-maps <boot id> <v4 id> <v6 id>`.
    pub fn line(&self) -> String {
        format!(
            "{WORD} {} {} {}",
            uuid_text(self.boot),
            self.grants[0],
            self.grants[1]
        )
    }

    /// The line [`MapIdentity::line`] wrote; `None` if `line` is not one.
    pub fn parse_line(line: &[u8]) -> Option<Self> {
        let line = std::str::from_utf8(line).ok()?;
        let mut words = line.split(' ');
        if words.next()? != WORD {
            return None;
        }
        let boot = parse_uuid(words.next()?)?;
        let v4 = parse_id(words.next()?)?;
        let v6 = parse_id(words.next()?)?;
        if words.next().is_some() {
            return None;
        }
        Some(Self {
            boot,
            grants: [v4, v6],
        })
    }
}

impl fmt::Display for MapIdentity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "ids {} and {} on boot {}",
            self.grants[0],
            self.grants[1],
            uuid_text(self.boot)
        )
    }
}

/// Why the position saved beside `saved` cannot be followed on into the
/// maps `now`, so that every grant must be loaded from the keys first;
/// `None` if they are the same maps.
pub fn why_load(saved: Option<MapIdentity>, now: Option<MapIdentity>) -> Option<&'static str> {
    match (saved, now) {
        (None, _) => Some(UNNAMED),
        (Some(_), None) => Some(UNKNOWN),
        (Some(saved), Some(now)) if saved.boot != now.boot => Some(REBOOTED),
        (Some(saved), Some(now)) if saved.grants != now.grants => Some(NEW_MAP),
        _ => None,
    }
}

/// The position file names no grant maps (an older agent wrote it).
pub const UNNAMED: &str =
    "the position file does not name the grant map it was applied to (an older agent wrote it)";
/// This gate's grant maps cannot be named.
pub const UNKNOWN: &str = "the kernel does not tell the ids of the gate's grant maps";
/// The host booted since the position was saved.
pub const REBOOTED: &str =
    "the gate's grant map is new: the host booted since the position was saved";
/// The maps were made anew on this boot.
pub const NEW_MAP: &str =
    "the gate's grant map is new: the gate was attached anew since the position was saved";
/// The maps were replaced while the agent ran.
pub const REPLACED: &str =
    "the gate's grant map is new: the gate was attached anew while the agent ran";

/// This boot's id, read once.
fn this_boot() -> Option<u128> {
    static BOOT: OnceLock<Option<u128>> = OnceLock::new();
    *BOOT.get_or_init(|| {
        let text = fs::read_to_string(BOOT_ID).ok()?;
        parse_uuid(text.trim_end())
    })
}

/// A UUID as the kernel writes it: 8-4-4-4-12 hexadecimal digits.
fn parse_uuid(text: &str) -> Option<u128> {
    let groups: Vec<&str> = text.split('-').collect();
    let lengths: Vec<usize> = groups.iter().map(|g| g.len()).collect();
    if lengths != [8, 4, 4, 4, 12] || !groups.iter().all(|g| is_hex(g)) {
        return None;
    }
    u128::from_str_radix(&groups.concat(), 16).ok()
}

fn is_hex(text: &str) -> bool {
    text.bytes().all(|b| b.is_ascii_hexdigit())
}

fn uuid_text(uuid: u128) -> String {
    let hex = format!("{uuid:032x}");
    format!(
        "{}-{}-{}-{}-{}",
        &hex[..8],
        &hex[8..12],
        &hex[12..16],
        &hex[16..20],
        &hex[20..]
    )
}

/// A map id: digits only, no sign, no leading zero.
fn parse_id(text: &str) -> Option<u32> {
    if text.is_empty() || !text.bytes().all(|b| b.is_ascii_digit()) || text.starts_with('0') {
        return None;
    }
    text.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    const BOOT: &str = "91d07573-7d3f-45ad-89ab-f7a67736d373";

    fn maps(boot: &str, v4: u32, v6: u32) -> MapIdentity {
        MapIdentity {
            boot: parse_uuid(boot).unwrap(),
            grants: [v4, v6],
        }
    }

    #[test]
    fn the_line_reads_back_and_anything_else_is_refused() {
        let identity = maps(BOOT, 41, 42);
        let line = identity.line();
        assert_eq!(line, format!("grant-maps {BOOT} 41 42"));
        assert_eq!(MapIdentity::parse_line(line.as_bytes()), Some(identity));
        let upper = format!("grant-maps {} 41 42", BOOT.to_uppercase());
        assert_eq!(MapIdentity::parse_line(upper.as_bytes()), Some(identity));
        for bad in [
            String::new(),
            "grant-maps".into(),
            format!("grant-maps {BOOT} 41"),
            format!("grant-maps {BOOT} 41 42 43"),
            format!("grant-maps {BOOT}  41 42"),
            format!("grant-maps {BOOT} 41 -42"),
            format!("grant-maps {BOOT} 41 042"),
            format!("grant-maps {BOOT} 41 4294967296"),
            format!("grant-map {BOOT} 41 42"),
            format!("grant-maps {} 41 42", BOOT.replace('-', "")),
            format!("grant-maps {}x 41 42", &BOOT[..35]),
            "grant-maps 91d07573-7d3f-45ad-89ab-f7a67736d37 41 42".into(),
            format!("grant-maps {BOOT} 41 42\n"),
        ] {
            assert_eq!(MapIdentity::parse_line(bad.as_bytes()), None, "{bad:?}");
        }
        assert_eq!(MapIdentity::parse_line(b"grant-maps \xff 1 2"), None);
    }

    #[test]
    fn the_position_holds_only_for_the_maps_it_was_applied_to() {
        let fed = maps(BOOT, 41, 42);
        assert_eq!(why_load(Some(fed), Some(fed)), None, "the same maps");
        assert_eq!(
            why_load(Some(fed), Some(maps(BOOT, 43, 44))),
            Some(NEW_MAP),
            "attached anew"
        );
        assert_eq!(
            why_load(Some(fed), Some(maps(BOOT, 41, 44))),
            Some(NEW_MAP),
            "either map"
        );
        // After a reboot the ids start again: the same ids are other maps.
        let other_boot = "0b5e1c8e-0000-4000-8000-000000000001";
        assert_eq!(
            why_load(Some(fed), Some(maps(other_boot, 41, 42))),
            Some(REBOOTED)
        );
        assert_eq!(why_load(None, Some(fed)), Some(UNNAMED), "an older file");
        assert_eq!(why_load(Some(fed), None), Some(UNKNOWN));
        assert_eq!(why_load(None, None), Some(UNNAMED));
    }

    #[test]
    fn this_boot_is_named_and_its_maps_need_both_ids() {
        let boot = this_boot().expect("the kernel tells the boot's id");
        let text = fs::read_to_string(BOOT_ID).unwrap();
        assert_eq!(uuid_text(boot), text.trim_end().to_lowercase());
        assert_eq!(
            MapIdentity::on_this_boot(Some([7, 8])),
            Some(MapIdentity {
                boot,
                grants: [7, 8]
            })
        );
        assert_eq!(MapIdentity::on_this_boot(None), None);
    }
}
