//! The flood's network: testkit's lab (a server and a client namespace
//! joined by a veth pair, no default route anywhere, a private bpffs for
//! the gate's pins), set up so that the flood can neither leave nor be
//! answered outside, and so that the server's whole receive path runs on
//! one CPU that can be measured.
//!
//! ```text
//!  client ns: generator (CPU 0), legitimate client 10.231.1.2,    server ns: Postfix on 10.231.1.1:25
//!             rejected client 10.231.1.3, nft drop of anything        (CPU 1), the veth's NAPI thread
//!             addressed to 198.18.0.0/15            ──veth──          (CPU 1), route 198.18.0.0/15 via
//!                                                                     the client, nothing else
//! ```
//!
//! - Spoofed sources are in 198.18.0.0/15 (RFC 2544 benchmarking). The
//!   server routes that range back to the client veth only, so its SYN-ACKs
//!   and RSTs go where a real server's would (to the "sources"), and the
//!   client namespace drops them at ingress (nftables, netdev hook) and has
//!   no route to forward them anywhere (forwarding is off in a new
//!   namespace anyway). Neither namespace has a default route: asserted.
//! - Threaded NAPI on both veths: the server veth's receive path (XDP, tc,
//!   nftables ingress, IP, TCP) runs in one kernel thread pinned to
//!   [`SERVER_CPU`]; the client veth's (SYN-ACKs, RSTs) in one pinned to
//!   [`CLIENT_CPU`] with the generator. The server veth has GRO on so that
//!   it has NAPI without an XDP program; the client veth has TSO off, as a
//!   veth hands TSO-capable traffic to the peer's backlog instead of its
//!   NAPI (veth_skb_is_eligible_for_gro).

use std::{
    collections::BTreeMap,
    net::Ipv4Addr,
    process::Command,
    time::{Duration, Instant},
};

use anyhow::{bail, ensure, Context, Result};
use testkit::{
    lab::{Lab, LabOptions},
    netns::netns_command,
};

use super::{
    sys::{self, run_ok, run_with_input},
    xdpgen::{self, XdpLink},
};

/// The range spoofed sources come from (RFC 2544: benchmarking, unrouted).
pub const SPOOF_NET: &str = "198.18.0.0/15";
pub const SPOOF_BASE: u32 = 0xC612_0000;
pub const SPOOF_HOST_MASK: u32 = 0x0001_FFFF;
/// A second address of the client, never granted nor listed: the rejected
/// sender.
pub const REJECTED_V4: Ipv4Addr = Ipv4Addr::new(10, 231, 1, 3);
/// The generator, the legitimate client and the client veth's NAPI thread.
pub const CLIENT_CPU: usize = 0;
/// The server: its veth's NAPI thread and Postfix.
pub const SERVER_CPU: usize = 1;

/// SCHED_FIFO priority of the NAPI threads: packet processing preempts
/// processes, as softirq processing does on a NIC (and as threaded
/// interrupt handlers do on PREEMPT_RT, at this priority).
pub const NAPI_PRIORITY: i32 = 50;

/// The server's TCP counters kept in the report.
pub const TCP_COUNTERS: &[&str] = &[
    "Tcp.InSegs",
    "Tcp.OutSegs",
    "Tcp.InCsumErrors",
    "TcpExt.SyncookiesSent",
    "TcpExt.ListenOverflows",
    "TcpExt.ListenDrops",
    "TcpExt.TCPReqQFullDrop",
];

const CMD_TIMEOUT: Duration = Duration::from_secs(20);

pub fn in_spoof_net(addr: Ipv4Addr) -> bool {
    u32::from(addr) & !SPOOF_HOST_MASK == SPOOF_BASE
}

/// Counters of one interface (`ip -s link`).
#[derive(Clone, Copy, Debug, Default, serde::Serialize)]
pub struct DevStats {
    pub rx_packets: u64,
    pub rx_dropped: u64,
    pub tx_packets: u64,
    pub tx_dropped: u64,
}

impl DevStats {
    pub fn since(&self, earlier: &Self) -> Self {
        Self {
            rx_packets: self.rx_packets.saturating_sub(earlier.rx_packets),
            rx_dropped: self.rx_dropped.saturating_sub(earlier.rx_dropped),
            tx_packets: self.tx_packets.saturating_sub(earlier.tx_packets),
            tx_dropped: self.tx_dropped.saturating_sub(earlier.tx_dropped),
        }
    }
}

pub struct FloodNet {
    pub lab: Lab,
    pub server_ns: String,
    pub client_ns: String,
    pub server_iface: String,
    pub client_iface: String,
    pub server_v4: Ipv4Addr,
    pub client_v4: Ipv4Addr,
    pub server_mac: [u8; 6],
    pub client_mac: [u8; 6],
    /// The client veth's XDP guard (see xdpgen::attach_guard).
    guard: Option<XdpLink>,
}

fn ip(args: &[&str]) -> Result<String> {
    run_ok(Command::new("ip").args(args), CMD_TIMEOUT)
}

fn in_ns(ns: &str, program: &str, args: &[&str]) -> Result<String> {
    run_ok(netns_command(ns, program).args(args), CMD_TIMEOUT)
}

fn parse_mac(text: &str) -> Result<[u8; 6]> {
    let parts: Vec<u8> = text
        .split(':')
        .map(|p| u8::from_str_radix(p, 16))
        .collect::<Result<_, _>>()
        .with_context(|| format!("bad MAC address {text}"))?;
    parts
        .try_into()
        .map_err(|_| anyhow::anyhow!("bad MAC address {text}"))
}

impl FloodNet {
    pub fn new() -> Result<Self> {
        // The lab panics (after cleaning up) if it cannot be built.
        let lab = Lab::with_options(LabOptions {
            exempt_client: false,
            // The client veth gets the suite's own XDP guard instead.
            xdp_pass_on_clients: false,
            // Postfix listens on port 25, not the lab's own listener.
            smtp_ports: vec![],
        });
        let link = lab.client.clone();
        let mut net = Self {
            server_ns: lab.server_ns.clone(),
            client_ns: link.client_ns.clone(),
            server_iface: link.server_iface.clone(),
            client_iface: link.client_iface.clone(),
            server_v4: link.server_v4,
            client_v4: link.client_v4,
            server_mac: [0; 6],
            client_mac: [0; 6],
            guard: None,
            lab,
        };
        net.set_up()?;
        Ok(net)
    }

    fn set_up(&mut self) -> Result<()> {
        let (srv, cli) = (self.server_ns.clone(), self.client_ns.clone());
        let (s_if, c_if) = (self.server_iface.clone(), self.client_iface.clone());
        ip(&[
            "-n",
            &cli,
            "addr",
            "add",
            &format!("{REJECTED_V4}/24"),
            "dev",
            &c_if,
        ])?;
        // Answers to spoofed sources go back over the veth, where the
        // client namespace drops them.
        ip(&[
            "-n",
            &srv,
            "route",
            "add",
            SPOOF_NET,
            "via",
            &self.client_v4.to_string(),
            "dev",
            &s_if,
        ])?;
        let guard = format!(
            "table netdev flood_guard {{\n  chain ingress {{\n    type filter hook ingress \
             device \"{c_if}\" priority -500; policy accept;\n    meta protocol ip ip daddr \
             {SPOOF_NET} counter drop\n  }}\n}}\n"
        );
        self.nft(&cli, &guard)?;
        // Answers to spoofed sources are dropped on arrival, in XDP; a
        // veth delivers the gate's XDP_TX RSTs only to a peer that runs
        // XDP, and the program gives the client veth its NAPI.
        let guard = testkit::netns::in_netns(&cli, || -> Result<XdpLink> {
            let name = std::ffi::CString::new(c_if.clone())?;
            // SAFETY: name is NUL-terminated.
            let ifindex = unsafe { libc::if_nametoindex(name.as_ptr()) };
            ensure!(ifindex != 0, "no interface {c_if} in {cli}");
            Ok(xdpgen::attach_guard(ifindex)?)
        })?;
        self.guard = Some(guard);
        in_ns(&cli, "ethtool", &["-K", &c_if, "tso", "off"])?;
        in_ns(&srv, "ethtool", &["-K", &s_if, "gro", "on"])?;
        for (ns, iface) in [(&srv, &s_if), (&cli, &c_if)] {
            in_ns(
                ns,
                "sh",
                &["-c", &format!("echo 1 > /sys/class/net/{iface}/threaded")],
            )?;
        }
        self.server_mac = self.mac(&srv, &s_if)?;
        self.client_mac = self.mac(&cli, &c_if)?;
        self.assert_isolated()?;
        self.pin_napi()?;
        Ok(())
    }

    fn mac(&self, ns: &str, iface: &str) -> Result<[u8; 6]> {
        let text = ip(&["-n", ns, "-j", "link", "show", "dev", iface])?;
        let json: serde_json::Value = serde_json::from_str(&text)?;
        parse_mac(json[0]["address"].as_str().context("no address")?)
    }

    /// The network-safety rule, checked: no default route in either
    /// namespace (IPv4 and IPv6), the spoofed range routed only to the
    /// client veth by the server, and unreachable from the client.
    pub fn assert_isolated(&self) -> Result<()> {
        for ns in [&self.server_ns, &self.client_ns] {
            for family in ["-4", "-6"] {
                let routes = ip(&["-n", ns, family, "route", "show", "default"])?;
                ensure!(
                    routes.trim().is_empty(),
                    "namespace {ns} has a default route ({family}): {routes}"
                );
                let all = ip(&["-n", ns, family, "route", "show", "table", "all"])?;
                ensure!(
                    !all.lines().any(|l| l.starts_with("default")),
                    "namespace {ns} has a default route in some table: {all}"
                );
            }
            let links = ip(&["-n", ns, "-o", "link", "show"])?;
            let count = links.lines().count();
            ensure!(
                count == 2,
                "namespace {ns} should have lo and one veth, has: {links}"
            );
        }
        let via = ip(&["-n", &self.server_ns, "route", "get", "198.18.0.1"])?;
        ensure!(
            via.contains(&format!("via {}", self.client_v4))
                && via.contains(&format!("dev {}", self.server_iface)),
            "the server routes the spoofed range elsewhere: {via}"
        );
        let out = netns_command(&self.client_ns, "ip")
            .args(["route", "get", "198.18.0.1"])
            .output()?;
        ensure!(
            !out.status.success(),
            "the client namespace has a route to the spoofed range: {}",
            String::from_utf8_lossy(&out.stdout)
        );
        let forwarding = in_ns(&self.client_ns, "cat", &["/proc/sys/net/ipv4/ip_forward"])?;
        ensure!(
            forwarding.trim() == "0",
            "the client namespace forwards packets"
        );
        Ok(())
    }

    /// Loads an nftables script in namespace `ns`.
    pub fn nft(&self, ns: &str, script: &str) -> Result<()> {
        let out = run_with_input(
            netns_command(ns, "nft").args(["-f", "-"]),
            script,
            CMD_TIMEOUT,
        )?;
        if !out.status.success() {
            bail!(
                "nft -f in {ns} failed: {}\nscript:\n{script}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        Ok(())
    }

    /// Runs `nft ARGS` in namespace `ns` and returns its output.
    pub fn nft_cmd(&self, ns: &str, args: &[&str]) -> Result<String> {
        in_ns(ns, "nft", args)
    }

    /// Packets the client namespace's guard dropped (answers to spoofed
    /// sources).
    pub fn guard_drops(&self) -> Result<u64> {
        let text = self.nft_cmd(
            &self.client_ns,
            &["-j", "list", "table", "netdev", "flood_guard"],
        )?;
        Ok(nft_counter(&text))
    }

    /// Pins the server veth's NAPI thread(s) to [`SERVER_CPU`] and the
    /// client veth's to [`CLIENT_CPU`] (again after anything that may
    /// recreate them), and returns the server's thread ids.
    pub fn pin_napi(&self) -> Result<Vec<i32>> {
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            let server = sys::pids_named(&format!("napi/{}-", self.server_iface));
            let client = sys::pids_named(&format!("napi/{}-", self.client_iface));
            if !server.is_empty() && !client.is_empty() {
                for (tids, cpu) in [(&server, SERVER_CPU), (&client, CLIENT_CPU)] {
                    for tid in tids {
                        sys::set_affinity(*tid, cpu)
                            .with_context(|| format!("pinning NAPI thread {tid}"))?;
                        sys::set_fifo(*tid, NAPI_PRIORITY)
                            .with_context(|| format!("making NAPI thread {tid} SCHED_FIFO"))?;
                    }
                }
                return Ok(server);
            }
            if Instant::now() > deadline {
                bail!(
                    "no threaded NAPI kernel thread for {} ({server:?}) or {} ({client:?})",
                    self.server_iface,
                    self.client_iface
                );
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    pub fn dev_stats(&self, ns: &str, iface: &str) -> Result<DevStats> {
        let text = ip(&["-n", ns, "-j", "-s", "link", "show", "dev", iface])?;
        let json: serde_json::Value = serde_json::from_str(&text)?;
        let s = &json[0]["stats64"];
        let get = |dir: &str, key: &str| s[dir][key].as_u64().unwrap_or(0);
        Ok(DevStats {
            rx_packets: get("rx", "packets"),
            rx_dropped: get("rx", "dropped"),
            tx_packets: get("tx", "packets"),
            tx_dropped: get("tx", "dropped"),
        })
    }

    /// TCP counters of the server namespace (/proc/net/snmp and
    /// /proc/net/netstat as seen from inside it), by "Tcp.InSegs" style
    /// names; only the ones the report uses.
    pub fn tcp_counters(&self) -> Result<BTreeMap<String, u64>> {
        let text = in_ns(
            &self.server_ns,
            "cat",
            &["/proc/net/snmp", "/proc/net/netstat"],
        )?;
        let lines: Vec<&str> = text.lines().collect();
        let mut out = BTreeMap::new();
        for pair in lines.chunks(2) {
            let [names, values] = pair else { continue };
            let mut names = names.split_whitespace();
            let mut values = values.split_whitespace();
            let (Some(proto), Some(_)) = (names.next(), values.next()) else {
                continue;
            };
            let proto = proto.trim_end_matches(':');
            for (name, value) in names.zip(values) {
                let key = format!("{proto}.{name}");
                if TCP_COUNTERS.contains(&key.as_str()) {
                    out.insert(key, value.parse().unwrap_or(0));
                }
            }
        }
        Ok(out)
    }

    pub fn server_stats(&self) -> Result<DevStats> {
        self.dev_stats(&self.server_ns, &self.server_iface)
    }

    pub fn client_stats(&self) -> Result<DevStats> {
        self.dev_stats(&self.client_ns, &self.client_iface)
    }

    /// `smtp-gate stats --json` of the lab's gate, or zeros without one.
    pub fn gate_denied(&self) -> u64 {
        if self.lab.attached_ifaces().is_empty() {
            return 0;
        }
        let out = self.lab.gate(&["stats", "--json"]);
        let stats: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap_or_default();
        ["denied_drop", "denied_reset"]
            .iter()
            .map(|k| stats[*k].as_u64().unwrap_or(0))
            .sum()
    }
}

impl Drop for FloodNet {
    fn drop(&mut self) {
        // The guard's link first, then the lab (namespaces, pins).
        self.guard.take();
    }
}

/// The sum of the `counter` statements in `nft -j` output.
pub fn nft_counter(json_text: &str) -> u64 {
    fn walk(v: &serde_json::Value, sum: &mut u64) {
        match v {
            serde_json::Value::Object(map) => {
                if let Some(c) = map.get("counter") {
                    if let Some(p) = c.get("packets").and_then(|p| p.as_u64()) {
                        *sum += p;
                    }
                }
                for value in map.values() {
                    walk(value, sum);
                }
            }
            serde_json::Value::Array(items) => items.iter().for_each(|i| walk(i, sum)),
            _ => {}
        }
    }
    let mut sum = 0;
    if let Ok(v) = serde_json::from_str::<serde_json::Value>(json_text) {
        walk(&v, &mut sum);
    }
    sum
}
