//! Who holds the service's connection slots, by client network, and who is
//! let in when they are all taken.
//!
//! A client network is the client's address cut to a prefix (`/32` and
//! `/64` by default): one host with a /64 can pick any number of IPv6
//! addresses, so counting addresses would not limit it.
//!
//! When every slot is taken, a newcomer is not simply refused: the
//! network with the most connections that have not logged in gives up its
//! newest one (it is cut with `-ERR [SYS/TEMP]`), as long as the
//! newcomer's network then has no more of them than that one. So a few
//! hosts that open hundreds of idle connections cannot keep out a user
//! from anywhere else, and two networks cannot cut each other back and
//! forth. A session that has logged in is never cut for a newcomer, nor
//! counted against its network here: a NAT whose users are logged in is
//! not "busy" for that, and its next user is not the one cut while an
//! attacker spreads idle connections over many addresses.
//!
//! The limits can change while the service runs (a reload): they apply to
//! the connections that come from then on. None is cut for them: below a
//! lowered limit, nobody more is let in (nor is room made) until enough
//! connections have ended.

use std::{
    collections::{BTreeMap, HashMap},
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
    sync::{Arc, Mutex},
};

use tokio_util::sync::CancellationToken;

use crate::config::ServerConfig;

/// A client network: an address with its host bits cleared.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct ClientNetwork {
    base: IpAddr,
    prefix: u8,
}

impl ClientNetwork {
    /// The network of `ip` (normalised: IPv4-mapped IPv6 is IPv4) with
    /// `prefix_v4` or `prefix_v6` bits.
    pub fn of(ip: IpAddr, prefix_v4: u8, prefix_v6: u8) -> Self {
        match ip {
            IpAddr::V4(v4) => {
                let prefix = prefix_v4.min(32);
                let mask = u32::MAX.checked_shl(32 - u32::from(prefix)).unwrap_or(0);
                Self {
                    base: Ipv4Addr::from(u32::from(v4) & mask).into(),
                    prefix,
                }
            }
            IpAddr::V6(v6) => {
                let prefix = prefix_v6.min(128);
                let mask = u128::MAX.checked_shl(128 - u32::from(prefix)).unwrap_or(0);
                Self {
                    base: Ipv6Addr::from(u128::from(v6) & mask).into(),
                    prefix,
                }
            }
        }
    }
}

impl std::fmt::Display for ClientNetwork {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.base, self.prefix)
    }
}

/// The limits the table enforces.
#[derive(Clone, Copy, Debug, Default)]
pub struct SlotLimits {
    pub max_connections: usize,
    pub max_per_network: usize,
    pub prefix_v4: u8,
    pub prefix_v6: u8,
}

impl SlotLimits {
    /// The limits `config` sets.
    pub fn of(config: &ServerConfig) -> Self {
        Self {
            max_connections: config.max_connections,
            max_per_network: config.max_connections_per_ip,
            prefix_v4: config.client_prefix_v4,
            prefix_v6: config.client_prefix_v6,
        }
    }
}

/// The service's connection slots.
pub struct Slots {
    table: Mutex<Table>,
}

#[derive(Default)]
struct Table {
    limits: SlotLimits,
    /// Slots held, summed over `networks`.
    held: usize,
    /// Each network's connections by arrival (ids only grow).
    networks: HashMap<ClientNetwork, BTreeMap<u64, Stage>>,
    next_id: u64,
}

enum Stage {
    /// Not logged in yet: can be cut for a newcomer through this token.
    LoggingIn(CancellationToken),
    LoggedIn,
}

/// What became of a new connection.
pub enum Admission {
    /// Served, in this slot; `made_room` tells whose connection was cut.
    Admitted {
        slot: Slot,
        made_room: Option<ClientNetwork>,
    },
    /// Its network holds `max_per_network` already.
    NetworkFull(ClientNetwork),
    /// Every slot is taken and none can be given up for it.
    ServerFull,
}

/// One connection's slot; dropping it frees the slot.
pub struct Slot {
    slots: Arc<Slots>,
    network: ClientNetwork,
    id: u64,
    /// Cancelled when the connection is cut to make room for a newcomer.
    cut: CancellationToken,
}

impl Slots {
    pub fn new(limits: SlotLimits) -> Arc<Self> {
        Arc::new(Self {
            table: Mutex::new(Table {
                limits,
                ..Table::default()
            }),
        })
    }

    /// Makes `limits` the limits of the connections that come from now on.
    pub fn set_limits(&self, limits: SlotLimits) {
        self.table().limits = limits;
    }

    fn table(&self) -> std::sync::MutexGuard<'_, Table> {
        self.table.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Gives a connection from `ip` a slot, cutting another one if the
    /// table is full and the rules above allow it.
    pub fn admit(self: &Arc<Self>, ip: IpAddr) -> Admission {
        let mut table = self.table();
        let limits = table.limits;
        let network = ClientNetwork::of(ip, limits.prefix_v4, limits.prefix_v6);
        let own = table.networks.get(&network).map_or(0, BTreeMap::len);
        if own >= limits.max_per_network {
            return Admission::NetworkFull(network);
        }
        let mut made_room = None;
        if table.held > limits.max_connections {
            // Over a limit lowered by a reload: nobody more, not even in
            // exchange for another, until enough connections have ended.
            return Admission::ServerFull;
        }
        if table.held == limits.max_connections {
            let own_logging_in = table.networks.get(&network).map_or(0, logging_in);
            match table.make_room_for(own_logging_in) {
                Some(cut) => made_room = Some(cut),
                None => return Admission::ServerFull,
            }
        }
        let id = table.next_id;
        table.next_id += 1;
        let cut = CancellationToken::new();
        table
            .networks
            .entry(network)
            .or_default()
            .insert(id, Stage::LoggingIn(cut.clone()));
        table.held += 1;
        Admission::Admitted {
            slot: Slot {
                slots: Arc::clone(self),
                network,
                id,
                cut,
            },
            made_room,
        }
    }

    /// Slots held now.
    #[cfg(test)]
    fn held(&self) -> usize {
        self.table().held
    }
}

impl Table {
    /// Cuts the newest connection not logged in of the network that has
    /// the most of them, if the newcomer's network (with `own` not logged
    /// in) then has no more than that one. Returns the network that gave
    /// up a slot.
    fn make_room_for(&mut self, own: usize) -> Option<ClientNetwork> {
        let (network, waiting, id) = self
            .networks
            .iter()
            .filter_map(|(network, conns)| {
                let newest = conns
                    .iter()
                    .rev()
                    .find(|(_, stage)| matches!(stage, Stage::LoggingIn(_)))?;
                Some((*network, logging_in(conns), *newest.0))
            })
            .max_by_key(|&(_, waiting, _)| waiting)?;
        if own + 1 > waiting - 1 {
            return None;
        }
        let conns = self.networks.get_mut(&network)?;
        if let Some(Stage::LoggingIn(cut)) = conns.remove(&id) {
            cut.cancel();
        }
        self.held -= 1;
        Some(network)
    }
}

/// How many of a network's connections have not logged in.
fn logging_in(conns: &BTreeMap<u64, Stage>) -> usize {
    conns
        .values()
        .filter(|stage| matches!(stage, Stage::LoggingIn(_)))
        .count()
}

impl Slot {
    /// The client's network.
    pub fn network(&self) -> ClientNetwork {
        self.network
    }

    /// Cancelled when this connection is cut to make room for a newcomer
    /// (only ever before it logs in).
    pub fn cut(&self) -> &CancellationToken {
        &self.cut
    }

    /// The session logged in: from now on it is never cut for a newcomer.
    /// Had it just been picked to make room, it takes its slot back (the
    /// table may hold one more than `max_connections` until a connection
    /// ends) and the cut is not carried out: a login is never undone.
    pub fn logged_in(&self) {
        let mut table = self.slots.table();
        let conns = table.networks.entry(self.network).or_default();
        if conns.insert(self.id, Stage::LoggedIn).is_none() {
            table.held += 1;
        }
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        let mut table = self.slots.table();
        let Some(conns) = table.networks.get_mut(&self.network) else {
            return;
        };
        // Absent when it was cut to make room: its slot went then.
        let freed = conns.remove(&self.id).is_some();
        if conns.is_empty() {
            table.networks.remove(&self.network);
        }
        if freed {
            table.held -= 1;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limits(max_connections: usize, max_per_network: usize) -> SlotLimits {
        SlotLimits {
            max_connections,
            max_per_network,
            prefix_v4: 32,
            prefix_v6: 64,
        }
    }

    fn ip(text: &str) -> IpAddr {
        text.parse().unwrap()
    }

    fn admitted(admission: Admission) -> (Slot, Option<ClientNetwork>) {
        match admission {
            Admission::Admitted { slot, made_room } => (slot, made_room),
            Admission::NetworkFull(n) => panic!("refused: {n} is full"),
            Admission::ServerFull => panic!("refused: the server is full"),
        }
    }

    #[test]
    fn networks_are_cut_to_their_prefix() {
        let v6 = ClientNetwork::of(ip("2001:db8:1:2:3:4:5:6"), 32, 64);
        assert_eq!(v6.to_string(), "2001:db8:1:2::/64");
        assert_eq!(v6, ClientNetwork::of(ip("2001:db8:1:2::ffff"), 32, 64));
        assert_ne!(v6, ClientNetwork::of(ip("2001:db8:1:3::6"), 32, 64));
        let v4 = ClientNetwork::of(ip("192.0.2.77"), 32, 64);
        assert_eq!(v4.to_string(), "192.0.2.77/32");
        assert_eq!(
            ClientNetwork::of(ip("192.0.2.77"), 24, 64).to_string(),
            "192.0.2.0/24"
        );
        assert_eq!(
            ClientNetwork::of(ip("2001:db8::1"), 32, 128).to_string(),
            "2001:db8::1/128"
        );
        assert_eq!(
            ClientNetwork::of(ip("255.1.2.3"), 1, 1).to_string(),
            "128.0.0.0/1"
        );
        assert_eq!(
            ClientNetwork::of(ip("ffff::1"), 1, 1).to_string(),
            "8000::/1"
        );
    }

    /// Defect 4 of issue 10: the limit counted single IPv6 addresses, so
    /// one /64 held any number of slots.
    #[test]
    fn addresses_of_one_ipv6_64_share_one_budget() {
        let slots = Slots::new(limits(100, 2));
        let _a = admitted(slots.admit(ip("2001:db8:0:1::a")));
        let _b = admitted(slots.admit(ip("2001:db8:0:1::b")));
        assert!(matches!(
            slots.admit(ip("2001:db8:0:1:ffff::c")),
            Admission::NetworkFull(n) if n.to_string() == "2001:db8:0:1::/64"
        ));
        let _other = admitted(slots.admit(ip("2001:db8:0:2::a")));
        drop(_a);
        let _c = admitted(slots.admit(ip("2001:db8:0:1::c")));
        assert_eq!(slots.held(), 3);
    }

    #[test]
    fn a_newcomer_cuts_the_newest_unlogged_connection_of_the_biggest_network() {
        let slots = Slots::new(limits(6, 4));
        let (a1, _) = admitted(slots.admit(ip("192.0.2.1")));
        let (a2, _) = admitted(slots.admit(ip("192.0.2.1")));
        let (a3, _) = admitted(slots.admit(ip("192.0.2.1")));
        let (a4, _) = admitted(slots.admit(ip("192.0.2.1")));
        a4.logged_in();
        let (b1, _) = admitted(slots.admit(ip("192.0.2.2")));
        let (b2, _) = admitted(slots.admit(ip("192.0.2.2")));
        let (c1, made_room) = admitted(slots.admit(ip("192.0.2.3")));
        assert_eq!(made_room, Some(a1.network()));
        assert!(a3.cut().is_cancelled(), "the newest not logged in");
        assert!(!a4.cut().is_cancelled(), "logged in: never cut");
        assert!(!a1.cut().is_cancelled() && !a2.cut().is_cancelled());
        assert!(!b1.cut().is_cancelled());
        assert!(!b2.cut().is_cancelled() && !c1.cut().is_cancelled());
        assert_eq!(slots.held(), 6);
        // Now 2, 2 and 1 not logged in: a second newcomer of the third
        // network would end up with as many as the one it cut, so it is
        // refused.
        assert!(matches!(
            slots.admit(ip("192.0.2.3")),
            Admission::ServerFull
        ));
        // The cut connection's end frees nothing more.
        drop(a3);
        assert_eq!(slots.held(), 6);
        drop(b2);
        assert_eq!(slots.held(), 5);
        let (_c2, made_room) = admitted(slots.admit(ip("192.0.2.3")));
        assert_eq!(made_room, None);
    }

    /// Attack review 10: a NAT with 4 users logged in and a fifth logging
    /// in was ranked the busiest network by all its slots, and its newcomer
    /// was cut while an attacker held idle connections from several
    /// addresses. Only connections that have not logged in count.
    #[test]
    fn logged_in_sessions_do_not_make_a_network_the_busiest() {
        let slots = Slots::new(limits(10, 5));
        let nat_users: Vec<_> = (0..4)
            .map(|_| admitted(slots.admit(ip("192.0.2.1"))).0)
            .collect();
        for user in &nat_users {
            user.logged_in();
        }
        let (nat_newcomer, _) = admitted(slots.admit(ip("192.0.2.1")));
        let attacker: Vec<_> = ["198.51.100.1", "198.51.100.1", "198.51.100.1"]
            .into_iter()
            .chain(["198.51.100.2", "198.51.100.2"])
            .map(|a| admitted(slots.admit(ip(a))).0)
            .collect();
        assert_eq!(slots.held(), 10);
        let (_other, made_room) = admitted(slots.admit(ip("203.0.113.9")));
        assert_eq!(made_room, Some(attacker[0].network()));
        assert!(attacker[2].cut().is_cancelled(), "the attacker's newest");
        assert!(
            !nat_newcomer.cut().is_cancelled(),
            "the NAT's newcomer stays"
        );
    }

    /// The newcomer's own network is judged the same way: a NAT's
    /// logged-in users do not keep its next user out of a full server.
    #[test]
    fn a_newcomer_is_judged_by_its_networks_connections_not_logged_in() {
        let slots = Slots::new(limits(6, 5));
        let nat_users: Vec<_> = (0..3)
            .map(|_| admitted(slots.admit(ip("192.0.2.1"))).0)
            .collect();
        for user in &nat_users {
            user.logged_in();
        }
        let attacker: Vec<_> = (0..3)
            .map(|_| admitted(slots.admit(ip("198.51.100.1"))).0)
            .collect();
        let (_nat_newcomer, made_room) = admitted(slots.admit(ip("192.0.2.1")));
        assert_eq!(made_room, Some(attacker[0].network()));
    }

    #[test]
    fn logged_in_connections_are_never_cut() {
        let slots = Slots::new(limits(2, 2));
        let (a1, _) = admitted(slots.admit(ip("192.0.2.1")));
        let (a2, _) = admitted(slots.admit(ip("192.0.2.1")));
        a1.logged_in();
        a2.logged_in();
        assert!(matches!(
            slots.admit(ip("192.0.2.9")),
            Admission::ServerFull
        ));
    }

    /// A connection picked to make room that logs in before it sees the
    /// cut keeps its session, and the table counts it again.
    #[test]
    fn a_login_that_races_its_cut_is_counted_again() {
        let slots = Slots::new(limits(2, 2));
        let (a1, _) = admitted(slots.admit(ip("192.0.2.1")));
        let (a2, _) = admitted(slots.admit(ip("192.0.2.1")));
        let (_b, _) = admitted(slots.admit(ip("192.0.2.2")));
        assert!(a2.cut().is_cancelled());
        a2.logged_in();
        assert_eq!(slots.held(), 3, "one over the limit until one ends");
        drop(a2);
        drop(a1);
        assert_eq!(slots.held(), 1);
    }

    /// A reload's limits: a higher one lets more in at once; a lower one
    /// cuts nobody and lets nobody in, not even in exchange for another,
    /// until enough connections have ended.
    #[test]
    fn limits_change_for_the_connections_to_come() {
        let slots = Slots::new(limits(1, 1));
        let (_a, _) = admitted(slots.admit(ip("192.0.2.1")));
        assert!(matches!(
            slots.admit(ip("192.0.2.1")),
            Admission::NetworkFull(_)
        ));
        slots.set_limits(limits(3, 2));
        let (b, _) = admitted(slots.admit(ip("192.0.2.1")));
        let (c, _) = admitted(slots.admit(ip("192.0.2.2")));
        slots.set_limits(limits(1, 2));
        for conn in [&b, &c] {
            assert!(!conn.cut().is_cancelled(), "a lower limit cuts nobody");
        }
        assert!(matches!(
            slots.admit(ip("192.0.2.3")),
            Admission::ServerFull
        ));
        drop(b);
        drop(c);
        assert!(matches!(
            slots.admit(ip("192.0.2.3")),
            Admission::ServerFull
        ));
        drop(_a);
        let (_d, made_room) = admitted(slots.admit(ip("192.0.2.3")));
        assert_eq!(made_room, None);
        assert_eq!(slots.held(), 1);
        let prefixes = SlotLimits {
            prefix_v4: 24,
            ..limits(10, 1)
        };
        slots.set_limits(prefixes);
        let (_e, _) = admitted(slots.admit(ip("192.0.2.77")));
        assert!(matches!(
            slots.admit(ip("192.0.2.78")),
            Admission::NetworkFull(n) if n.to_string() == "192.0.2.0/24"
        ));
    }
}
