//! Network-namespace labs: a mail server and its clients in throwaway
//! network namespaces, joined by veth pairs, with a private bpffs for the
//! gate's pins.
//!
//! ```text
//!   client ns  (10.231.1.2, fd00:231:1::2)  ──veth──┐
//!                                                   ├── server ns  (gate on each server-side veth,
//!   exempt ns  (10.231.2.2, fd00:231:2::2)  ──veth──┘               SMTP listener on [::]:25)
//! ```
//!
//! Every client has its own veth pair and its own /24 (and /64): link `k`
//! (1 for the client, 2 for the optional exempt client) uses
//! `10.231.k.0/24` and `fd00:231:k::/64`, the server being `.1`/`::1` and
//! the client `.2`/`::2`. No namespace has a default route, so nothing in
//! a lab can reach anything outside it.
//!
//! The gate is the real `smtp-gate` binary, run through `ip netns exec` in
//! the server namespace for `attach`, and from the root namespace for the
//! map commands (`grant`, `list`, `stats`, …); all of them get the lab's
//! `--pin-dir`, a directory on a bpffs that the lab mounts privately under
//! `/run/smtp-gate-tests/` (the `/sys/fs/bpf` an `ip netns exec` command
//! sees is a throwaway).
//!
//! Names carry the process id and a per-process counter, so labs of tests
//! running in parallel, and of other processes, never collide. Dropping a
//! [`Lab`] detaches the gate, unmounts the bpffs and deletes the
//! namespaces, also when a test panics. Leftovers of killed processes are
//! swept by the next lab that starts.
//!
//! Only root can build a lab; [`require_prerequisites`] panics with a clear
//! message when something is missing, it never skips.
//!
//! The lab's pieces are the crate's other modules: [`crate::netns`],
//! [`crate::bpffs`], the SMTP listener and clients ([`crate::smtp`]), the
//! binary ([`crate::gate_binary`]) and the `smtp-gate serve` daemon
//! ([`crate::serve`]).

use std::{
    fs,
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
    path::{Path, PathBuf},
    process::{Command, Output},
    sync::{
        atomic::{AtomicBool, AtomicU32, AtomicUsize, Ordering},
        Arc, Once,
    },
    thread::{self, JoinHandle},
    time::{Duration, Instant},
};

use aya::programs::{SchedClassifier, TcAttachType, Xdp, XdpMode};
use gate_common::program_names;

use crate::{
    bpffs::{is_mount_point, mount_bpffs, unmount_all},
    dirs::sorted_names,
    gate_binary::{smtp_gate, smtp_gate_bin, smtp_gate_in},
    netns::{
        add_netns, assert_no_default_route, bring_up_with_addresses, delete_netns, in_netns, ip,
        netns_sysctl,
    },
    process::describe,
    serve::POP3_PORT,
    smtp::{
        attempt, connect, open_session, spawn_smtp_server, Attempt, ConnectResult, Session,
        DENY_TIMEOUT, SMTP_PORT,
    },
};

/// Where the labs mount their bpffs instances (one directory per lab).
pub const RUN_ROOT: &str = "/run/smtp-gate-tests";
/// How long a lab waits for its clients to reach a listener: only a hang
/// takes longer.
const REACH_BOUND: Duration = Duration::from_secs(30);
/// Prefix of lab namespace names: `sg-<pid>-<n>-<role>`.
const NS_PREFIX: &str = "sg-";

static LAB_COUNTER: AtomicU32 = AtomicU32::new(0);
static SWEEP: Once = Once::new();

/// Panics with a clear message unless the process is root, iproute2's `ip`
/// runs, the kernel has bpffs and the `smtp-gate` binary has been built.
pub fn require_prerequisites() {
    // SAFETY: geteuid cannot fail.
    if unsafe { libc::geteuid() } != 0 {
        panic!(
            "the smtp-gate lab needs root (network namespaces, bpffs, XDP): \
             run as root, e.g. `sudo -E cargo test -p gate-tests`"
        );
    }
    match Command::new("ip").arg("-V").output() {
        Ok(out) if out.status.success() => {}
        Ok(out) => panic!("`ip -V` failed: {}", describe(&out)),
        Err(e) => panic!("iproute2's `ip` is needed for the lab but cannot be run: {e}"),
    }
    let filesystems = fs::read_to_string("/proc/filesystems")
        .unwrap_or_else(|e| panic!("cannot read /proc/filesystems: {e}"));
    if !filesystems
        .lines()
        .any(|l| l.split_whitespace().last() == Some("bpf"))
    {
        panic!("the kernel has no bpf filesystem (bpffs): the lab cannot pin the gate");
    }
    smtp_gate_bin();
}

fn pid_alive(pid: u32) -> bool {
    Path::new("/proc").join(pid.to_string()).exists()
}

/// Removes namespaces and bpffs mounts of labs whose process is gone (a
/// test run that was killed cannot run its Drop). Only names this module
/// makes are touched.
fn sweep_stale() {
    let own = std::process::id();
    if let Ok(entries) = fs::read_dir("/run/netns") {
        for entry in entries.flatten() {
            let name = entry.file_name().to_string_lossy().into_owned();
            let Some(rest) = name.strip_prefix(NS_PREFIX) else {
                continue;
            };
            let Some(pid) = rest.split('-').next().and_then(|p| p.parse::<u32>().ok()) else {
                continue;
            };
            if pid != own && !pid_alive(pid) {
                eprintln!("lab: removing stale namespace {name} (process {pid} is gone)");
                delete_netns(&name);
            }
        }
    }
    if let Ok(entries) = fs::read_dir(RUN_ROOT) {
        for entry in entries.flatten() {
            let name = entry.file_name().to_string_lossy().into_owned();
            let Some(pid) = name.split('-').next().and_then(|p| p.parse::<u32>().ok()) else {
                continue;
            };
            if pid != own && !pid_alive(pid) {
                eprintln!("lab: removing stale pin mount {}", entry.path().display());
                unmount_all(&entry.path());
                let _ = fs::remove_dir(entry.path());
            }
        }
    }
}

/// Creates `link`'s veth pair between `server` and the client namespace,
/// with its addresses, up.
fn make_link(server: &str, link: &Link) {
    ip(
        server,
        &[
            "link",
            "add",
            &link.server_iface,
            "type",
            "veth",
            "peer",
            "name",
            &link.client_iface,
            "netns",
            &link.client_ns,
        ],
    );
    bring_up_with_addresses(server, &link.server_iface, link.server_v4, link.server_v6);
    bring_up_with_addresses(
        &link.client_ns,
        &link.client_iface,
        link.client_v4,
        link.client_v6,
    );
}

/// One client's veth pair, addresses and namespace.
#[derive(Clone, Debug)]
pub struct Link {
    /// The client's network namespace.
    pub client_ns: String,
    /// The veth end in the client namespace.
    pub client_iface: String,
    /// The veth end in the server namespace: where the gate goes.
    pub server_iface: String,
    pub client_v4: Ipv4Addr,
    pub server_v4: Ipv4Addr,
    pub client_v6: Ipv6Addr,
    pub server_v6: Ipv6Addr,
    /// The link's IPv4 network, e.g. `10.231.1.0/24`.
    pub net_v4: String,
    /// The link's IPv6 network, e.g. `fd00:231:1::/64`.
    pub net_v6: String,
}

impl Link {
    fn new(id_ifaces: &str, k: u8, client_ns: String) -> Self {
        Self {
            client_ns,
            client_iface: format!("{id_ifaces}c{k}"),
            server_iface: format!("{id_ifaces}s{k}"),
            client_v4: Ipv4Addr::new(10, 231, k, 2),
            server_v4: Ipv4Addr::new(10, 231, k, 1),
            client_v6: Ipv6Addr::new(0xfd00, 0x231, k as u16, 0, 0, 0, 0, 2),
            server_v6: Ipv6Addr::new(0xfd00, 0x231, k as u16, 0, 0, 0, 0, 1),
            net_v4: format!("10.231.{k}.0/24"),
            net_v6: format!("fd00:231:{k}::/64"),
        }
    }

    /// Connects from this client to the server's IPv4 address.
    pub fn connect_v4(&self, port: u16, timeout: Duration) -> ConnectResult {
        connect(&self.client_ns, self.server_v4.into(), port, timeout)
    }

    /// Connects from this client to the server's IPv6 address.
    pub fn connect_v6(&self, port: u16, timeout: Duration) -> ConnectResult {
        connect(&self.client_ns, self.server_v6.into(), port, timeout)
    }

    /// Like [`Link::connect_v4`], also saying how many SYNs it took.
    pub fn attempt_v4(&self, port: u16, timeout: Duration) -> Attempt {
        attempt(&self.client_ns, self.server_v4.into(), port, timeout)
    }

    /// Like [`Link::connect_v6`], also saying how many SYNs it took.
    pub fn attempt_v6(&self, port: u16, timeout: Duration) -> Attempt {
        attempt(&self.client_ns, self.server_v6.into(), port, timeout)
    }

    /// Opens a connection to the server's IPv4 address and keeps it.
    pub fn session_v4(&self, port: u16, timeout: Duration) -> Result<Session, ConnectResult> {
        open_session(&self.client_ns, self.server_v4.into(), port, timeout)
    }

    /// Opens a connection to the server's IPv6 address and keeps it.
    pub fn session_v6(&self, port: u16, timeout: Duration) -> Result<Session, ConnectResult> {
        open_session(&self.client_ns, self.server_v6.into(), port, timeout)
    }
}

/// How to build a [`Lab`].
#[derive(Clone, Debug)]
pub struct LabOptions {
    /// Add a second client namespace (link 2, `10.231.2.0/24`) meant to be
    /// exempted by the tests.
    pub exempt_client: bool,
    /// Load the pass-everything XDP program on every client-side veth. A
    /// veth only delivers XDP_TX frames (the gate's RST in `--mode xdp
    /// --deny reset`) to a peer that runs XDP itself.
    pub xdp_pass_on_clients: bool,
    /// Ports the lab's SMTP listener serves.
    pub smtp_ports: Vec<u16>,
}

impl Default for LabOptions {
    fn default() -> Self {
        Self {
            exempt_client: false,
            xdp_pass_on_clients: false,
            smtp_ports: vec![SMTP_PORT],
        }
    }
}

/// A server namespace and one or two client namespaces joined by veth
/// pairs, an SMTP listener in the server namespace, and a private bpffs pin
/// directory for the gate. See the module documentation for the layout.
pub struct Lab {
    /// `<pid>-<n>`, unique per lab on this machine.
    pub id: String,
    /// The server's network namespace.
    pub server_ns: String,
    /// The client that needs grants.
    pub client: Link,
    /// The client meant to be exempted (with `LabOptions::exempt_client`).
    pub exempt: Option<Link>,
    mount_point: PathBuf,
    pin_dir: PathBuf,
    mounted: bool,
    /// Namespaces created so far, deleted on drop.
    namespaces: Vec<String>,
    stop: Arc<AtomicBool>,
    servers: Vec<JoinHandle<()>>,
    accepted: Arc<AtomicUsize>,
    /// Keeps the XDP_PASS programs on the client veths attached.
    xdp_pass: Vec<aya::Ebpf>,
}

impl Lab {
    /// A server and one client, the SMTP listener on port 25, no gate yet.
    pub fn new() -> Self {
        Self::with_options(LabOptions::default())
    }

    /// A lab as `options` say. Panics (after cleaning up) if anything
    /// cannot be set up.
    pub fn with_options(options: LabOptions) -> Self {
        require_prerequisites();
        SWEEP.call_once(sweep_stale);
        let pid = std::process::id();
        let n = LAB_COUNTER.fetch_add(1, Ordering::Relaxed);
        let id = format!("{pid}-{n}");
        // Interface names: "sg<pid>-<n>" + "s1"/"c1": at most 15 bytes.
        let id_ifaces = format!("sg{id}");
        assert!(
            id_ifaces.len() + 2 <= 15,
            "lab interface names would be longer than 15 bytes ({id_ifaces}..); \
             too many labs in one process"
        );
        let ns = |role: &str| format!("{NS_PREFIX}{id}-{role}");
        let client = Link::new(&id_ifaces, 1, ns("cli"));
        let exempt = options
            .exempt_client
            .then(|| Link::new(&id_ifaces, 2, ns("exm")));
        let mount_point = Path::new(RUN_ROOT).join(&id);
        let pin_dir = mount_point.join("gate");
        let server_ns = ns("srv");
        let mut lab = Lab {
            id,
            server_ns,
            client,
            exempt,
            mount_point,
            pin_dir,
            mounted: false,
            namespaces: Vec::new(),
            stop: Arc::new(AtomicBool::new(false)),
            servers: Vec::new(),
            accepted: Arc::new(AtomicUsize::new(0)),
            xdp_pass: Vec::new(),
        };
        lab.set_up(&options);
        lab
    }

    fn set_up(&mut self, options: &LabOptions) {
        let server = self.server_ns.clone();
        let links = self.links().into_iter().cloned().collect::<Vec<_>>();
        let mut all_ns = vec![server.clone()];
        all_ns.extend(links.iter().map(|l| l.client_ns.clone()));
        for ns in &all_ns {
            add_netns(ns);
            self.namespaces.push(ns.clone());
            // No duplicate address detection: addresses are usable at once.
            netns_sysctl(ns, "net/ipv6/conf/all/accept_dad", "0");
            netns_sysctl(ns, "net/ipv6/conf/default/accept_dad", "0");
            ip(ns, &["link", "set", "lo", "up"]);
        }
        for link in &links {
            make_link(&server, link);
        }
        for ns in &all_ns {
            assert_no_default_route(ns);
        }

        fs::create_dir_all(&self.mount_point)
            .unwrap_or_else(|e| panic!("cannot create {}: {e}", self.mount_point.display()));
        mount_bpffs(&self.mount_point);
        self.mounted = true;
        fs::create_dir(&self.pin_dir)
            .unwrap_or_else(|e| panic!("cannot create {}: {e}", self.pin_dir.display()));

        for port in &options.smtp_ports {
            self.serve_smtp(*port);
        }
        if options.xdp_pass_on_clients {
            self.load_xdp_pass_on_clients();
        }
        if let Some(port) = options.smtp_ports.first() {
            self.wait_ready(*port);
        }
    }

    /// Waits until every client reaches the listener on `port` over IPv4
    /// and IPv6 (also fills the neighbour caches).
    fn wait_ready(&self, port: u16) {
        for link in self.links() {
            for addr in [IpAddr::from(link.server_v4), IpAddr::from(link.server_v6)] {
                let deadline = Instant::now() + REACH_BOUND;
                loop {
                    let result = connect(&link.client_ns, addr, port, DENY_TIMEOUT);
                    if result.is_connected() {
                        break;
                    }
                    if Instant::now() > deadline {
                        panic!(
                            "lab {}: {} cannot reach {addr}:{port} before any gate: {result}",
                            self.id, link.client_ns
                        );
                    }
                    thread::sleep(Duration::from_millis(50));
                }
            }
        }
    }

    /// The client links: the client, then the exempt client if any.
    pub fn links(&self) -> Vec<&Link> {
        let mut links = vec![&self.client];
        links.extend(self.exempt.as_ref());
        links
    }

    /// The exempt client; panics if the lab was built without one.
    pub fn exempt(&self) -> &Link {
        self.exempt
            .as_ref()
            .expect("this lab has no exempt client (LabOptions::exempt_client)")
    }

    /// The server-side veths, one per client: where the gate goes.
    pub fn server_ifaces(&self) -> Vec<String> {
        self.links()
            .iter()
            .map(|l| l.server_iface.clone())
            .collect()
    }

    /// The lab's pin directory (on its private bpffs).
    pub fn pin_dir(&self) -> &Path {
        &self.pin_dir
    }

    /// Where the lab's bpffs is mounted (the pin directory's parent).
    pub fn bpffs_mount_point(&self) -> &Path {
        &self.mount_point
    }

    /// Unmounts the lab's bpffs in this (the root) mount namespace, as an
    /// operator's `umount` would; the directory stays. Processes started
    /// by `ip netns exec` before keep their own copy of the mount.
    pub fn unmount_bpffs(&self) {
        unmount_all(&self.mount_point);
        assert!(
            !is_mount_point(&self.mount_point),
            "{} is still mounted",
            self.mount_point.display()
        );
    }

    /// `ip -n NS ARGS`; panics unless it succeeds. Returns its stdout.
    pub fn ip(&self, ns: &str, args: &[&str]) -> String {
        ip(ns, args)
    }

    /// Deletes `link`'s veth pair and makes it again, with the same names
    /// and addresses (as a VLAN or bond recreated by networkd would be):
    /// the kernel detaches whatever was attached to the old interfaces.
    /// Waits until the client reaches the listener again.
    pub fn recreate_link(&self, link: &Link) {
        ip(&self.server_ns, &["link", "del", &link.server_iface]);
        make_link(&self.server_ns, link);
        let deadline = Instant::now() + REACH_BOUND;
        while !link.connect_v4(SMTP_PORT, DENY_TIMEOUT).is_connected()
            && !link.connect_v4(POP3_PORT, DENY_TIMEOUT).is_connected()
            && Instant::now() < deadline
        {
            thread::sleep(Duration::from_millis(50));
        }
    }

    /// The pin directory as a string, for command lines.
    pub fn pin_dir_str(&self) -> String {
        self.pin_dir.to_string_lossy().into_owned()
    }

    /// Connections the lab's SMTP listeners have accepted so far.
    pub fn accepted(&self) -> usize {
        self.accepted.load(Ordering::Relaxed)
    }

    /// Starts another SMTP listener on `port` in the server namespace.
    pub fn serve_smtp(&mut self, port: u16) {
        let handle = spawn_smtp_server(
            &self.server_ns,
            port,
            Arc::clone(&self.stop),
            Arc::clone(&self.accepted),
        );
        self.servers.push(handle);
    }

    /// Attaches the pass-everything XDP program to every client-side veth
    /// (kept until the lab drops).
    pub fn load_xdp_pass_on_clients(&mut self) {
        let links: Vec<Link> = self.links().into_iter().cloned().collect();
        for link in links {
            self.load_xdp_pass(&link.client_ns, &link.client_iface);
        }
    }

    /// Attaches the pass-everything XDP program (native mode where the
    /// driver has it) to `iface` in namespace `ns`, for as long as the lab
    /// lives: the benchmarks' baseline, a peer that accepts XDP_TX frames,
    /// or a "foreign" XDP program the gate must not replace.
    pub fn load_xdp_pass(&mut self, ns: &str, iface: &str) {
        let ebpf = in_netns(ns, || {
            let mut ebpf = smtp_gate::gate::object::load_unpinned(1024)
                .unwrap_or_else(|e| panic!("loading the eBPF object: {e:#}"));
            let program: &mut Xdp = ebpf
                .program_mut(program_names::XDP_PASS)
                .unwrap_or_else(|| panic!("no {} program", program_names::XDP_PASS))
                .try_into()
                .expect("XDP_PASS is not an XDP program");
            program
                .load()
                .unwrap_or_else(|e| panic!("loading {}: {e}", program_names::XDP_PASS));
            program
                .attach(iface, XdpMode::default())
                .unwrap_or_else(|e| panic!("attaching XDP_PASS to {iface} in {ns}: {e}"));
            ebpf
        });
        self.xdp_pass.push(ebpf);
    }

    fn with_pin_dir<'a>(&'a self, args: &[&'a str], pin: &'a str) -> Vec<&'a str> {
        let mut all = args.to_vec();
        all.extend(["--pin-dir", pin]);
        all
    }

    /// Runs `smtp-gate ARGS --pin-dir <lab pin dir>` in the root namespace.
    pub fn gate(&self, args: &[&str]) -> Output {
        let pin = self.pin_dir_str();
        smtp_gate(&self.with_pin_dir(args, &pin))
    }

    /// Like [`Lab::gate`], inside the server namespace (needed by `attach`).
    pub fn gate_in_server(&self, args: &[&str]) -> Output {
        let pin = self.pin_dir_str();
        smtp_gate_in(&self.server_ns, &self.with_pin_dir(args, &pin))
    }

    /// Runs [`Lab::gate`], panics unless it succeeds, returns its stdout.
    pub fn gate_ok(&self, args: &[&str]) -> String {
        let out = self.gate(args);
        if !out.status.success() {
            panic!("`smtp-gate {}` failed: {}", args.join(" "), describe(&out));
        }
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// Runs [`Lab::gate`], panics unless it fails, returns its stderr.
    pub fn gate_err(&self, args: &[&str]) -> String {
        let out = self.gate(args);
        if out.status.success() {
            panic!(
                "`smtp-gate {}` succeeded but should have failed: {}",
                args.join(" "),
                describe(&out)
            );
        }
        String::from_utf8_lossy(&out.stderr).into_owned()
    }

    /// `smtp-gate attach --iface IF ARGS` on every server-side veth; panics
    /// unless each succeeds. Returns the commands' stdout.
    pub fn attach(&self, args: &[&str]) -> String {
        let mut stdout = String::new();
        for iface in self.server_ifaces() {
            let mut all = vec!["attach", "--iface", iface.as_str()];
            all.extend_from_slice(args);
            let out = self.gate_in_server(&all);
            if !out.status.success() {
                panic!("`smtp-gate {}` failed: {}", all.join(" "), describe(&out));
            }
            stdout.push_str(&String::from_utf8_lossy(&out.stdout));
        }
        stdout
    }

    /// `smtp-gate detach --iface IF` for every interface with a link in the
    /// pin directory; panics unless each succeeds. Returns the stdout.
    pub fn detach(&self) -> String {
        let mut stdout = String::new();
        for iface in self.attached_ifaces() {
            let out = self.gate_in_server(&["detach", "--iface", &iface]);
            if !out.status.success() {
                panic!(
                    "`smtp-gate detach --iface {iface}` failed: {}",
                    describe(&out)
                );
            }
            stdout.push_str(&String::from_utf8_lossy(&out.stdout));
        }
        stdout
    }

    /// Names of the files in the pin directory (empty if it is gone).
    pub fn pins(&self) -> Vec<String> {
        sorted_names(&self.pin_dir)
    }

    /// Interfaces with a pinned link (`link_<mode>_<iface>`) in the pin
    /// directory.
    pub fn attached_ifaces(&self) -> Vec<String> {
        self.pins()
            .iter()
            .filter_map(|name| name.strip_prefix("link_"))
            .filter_map(|rest| rest.split_once('_'))
            .map(|(_mode, iface)| iface.to_string())
            .collect()
    }

    /// `ip -d link show dev IFACE` in the server namespace.
    pub fn server_link_show(&self, iface: &str) -> String {
        ip(&self.server_ns, &["-d", "link", "show", "dev", iface])
    }

    /// Ids of the XDP programs attached to a server-side interface, as
    /// `ip link` reports them (`prog/xdp id N`, `prog/xdpdrv id N`, …).
    pub fn xdp_prog_ids(&self, iface: &str) -> Vec<u32> {
        let text = self.server_link_show(iface);
        let words: Vec<&str> = text.split_whitespace().collect();
        words
            .windows(3)
            .filter(|w| w[0].starts_with("prog/xdp") && w[1] == "id")
            .filter_map(|w| w[2].parse().ok())
            .collect()
    }

    /// Id and name of each program on the tcx ingress of a server-side
    /// interface (where `--mode tc` attaches), in run order.
    pub fn tc_ingress_programs(&self, iface: &str) -> Vec<(u32, String)> {
        in_netns(&self.server_ns, || {
            let (_revision, programs) = SchedClassifier::query_tcx(iface, TcAttachType::Ingress)
                .unwrap_or_else(|e| panic!("querying the tcx ingress of {iface}: {e}"));
            programs
                .iter()
                .map(|p| (p.id(), p.name_as_str().unwrap_or("?").to_string()))
                .collect()
        })
    }

    /// `smtp-gate stats --json`, parsed.
    pub fn stats(&self) -> serde_json::Value {
        let text = self.gate_ok(&["stats", "--json"]);
        serde_json::from_str(&text)
            .unwrap_or_else(|e| panic!("stats --json is not JSON ({e}): {text}"))
    }

    /// One counter of `smtp-gate stats --json` (e.g. `denied_drop`).
    pub fn stat(&self, name: &str) -> u64 {
        let stats = self.stats();
        stats[name]
            .as_u64()
            .unwrap_or_else(|| panic!("stats --json has no counter {name}: {stats}"))
    }

    /// `smtp-gate list --json` (add `--all` through `extra`), parsed.
    pub fn list(&self, extra: &[&str]) -> Vec<serde_json::Value> {
        let mut args = vec!["list", "--json"];
        args.extend_from_slice(extra);
        let text = self.gate_ok(&args);
        serde_json::from_str(&text)
            .unwrap_or_else(|e| panic!("list --json is not a JSON array ({e}): {text}"))
    }

    fn tear_down(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        for handle in self.servers.drain(..) {
            let _ = handle.join();
        }
        if self.mounted && self.namespaces.contains(&self.server_ns) {
            for iface in self.attached_ifaces() {
                let pin = self.pin_dir_str();
                let out = smtp_gate_in(
                    &self.server_ns,
                    &["detach", "--iface", &iface, "--pin-dir", &pin],
                );
                if !out.status.success() {
                    eprintln!(
                        "lab {} teardown: detach from {iface} failed (unmounting drops the \
                         pins anyway): {}",
                        self.id,
                        describe(&out)
                    );
                }
            }
        }
        self.xdp_pass.clear();
        if self.mounted {
            unmount_all(&self.mount_point);
            self.mounted = false;
        }
        let _ = fs::remove_dir(&self.mount_point);
        for ns in self.namespaces.drain(..).rev() {
            delete_netns(&ns);
        }
    }
}

impl Default for Lab {
    fn default() -> Self {
        Self::new()
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        self.tear_down();
    }
}

/// One host of a [`Hosts`] lab: its namespace, its one interface on the
/// lab's switch, its addresses, and a pin directory of its own on the
/// lab's bpffs.
#[derive(Clone, Debug)]
pub struct Host {
    /// What the test calls it (`engine`, `pop`, `edge1`, `client`, ...).
    pub name: String,
    pub ns: String,
    /// Its interface (to the switch): where its gate goes, if it has one.
    pub iface: String,
    pub v4: Ipv4Addr,
    pub v6: Ipv6Addr,
    /// Its own pin directory (made empty; a gate is pinned there only if
    /// the test attaches one).
    pub pin_dir: PathBuf,
}

impl Host {
    /// The pin directory as a string, for command lines.
    pub fn pin_dir_str(&self) -> String {
        self.pin_dir.to_string_lossy().into_owned()
    }
}

/// Several hosts on one network, as the machines of a site are: each a
/// namespace with one veth into a bridge that a switch namespace holds,
/// all in `10.232.0.0/24` and `fd00:232::/64` (host `k`, counted from 1,
/// is `.k` and `::k`). Every host reaches every other one (a connected
/// route); no namespace has a default route. The multi-host sibling of
/// [`Lab`], built from the same pieces, with the same teardown (gates
/// detached, the bpffs unmounted, the namespaces deleted, also when a
/// test panics).
///
/// ```text
///   engine ──┐
///   pop    ──┤
///   edge1  ──┼── switch ns (bridge)
///   edge2  ──┤
///   client ──┘
/// ```
pub struct Hosts {
    /// `<pid>-<n>`, unique per lab on this machine.
    pub id: String,
    pub hosts: Vec<Host>,
    switch_ns: String,
    mount_point: PathBuf,
    mounted: bool,
    namespaces: Vec<String>,
    stop: Arc<AtomicBool>,
    servers: Vec<JoinHandle<()>>,
    /// Per host (same order as `hosts`): connections its SMTP listeners
    /// accepted.
    accepted: Vec<Arc<AtomicUsize>>,
}

impl Hosts {
    /// The hosts named `names` (at most 9), joined by the switch, nothing
    /// running on them yet. Panics (after cleaning up) if anything cannot
    /// be set up.
    pub fn new(names: &[&str]) -> Self {
        require_prerequisites();
        SWEEP.call_once(sweep_stale);
        assert!(
            (1..=9).contains(&names.len()),
            "a Hosts lab has 1 to 9 hosts"
        );
        let pid = std::process::id();
        let n = LAB_COUNTER.fetch_add(1, Ordering::Relaxed);
        let id = format!("{pid}-{n}");
        let id_ifaces = format!("sg{id}");
        assert!(
            id_ifaces.len() + 2 <= 15,
            "lab interface names would be longer than 15 bytes ({id_ifaces}..)"
        );
        let ns = |role: &str| format!("{NS_PREFIX}{id}-{role}");
        let mount_point = Path::new(RUN_ROOT).join(&id);
        let hosts: Vec<Host> = names
            .iter()
            .enumerate()
            .map(|(i, name)| {
                let k = i as u8 + 1;
                Host {
                    name: name.to_string(),
                    ns: ns(&format!("h{k}")),
                    iface: format!("{id_ifaces}h{k}"),
                    v4: Ipv4Addr::new(10, 232, 0, k),
                    v6: Ipv6Addr::new(0xfd00, 0x232, 0, 0, 0, 0, 0, k as u16),
                    pin_dir: mount_point.join(name),
                }
            })
            .collect();
        let switch_ns = ns("sw");
        let mut lab = Hosts {
            accepted: hosts.iter().map(|_| Arc::default()).collect(),
            id,
            hosts,
            switch_ns,
            mount_point,
            mounted: false,
            namespaces: Vec::new(),
            stop: Arc::new(AtomicBool::new(false)),
            servers: Vec::new(),
        };
        lab.set_up(&id_ifaces);
        lab
    }

    fn set_up(&mut self, id_ifaces: &str) {
        let switch = self.switch_ns.clone();
        let mut all_ns = vec![switch.clone()];
        all_ns.extend(self.hosts.iter().map(|h| h.ns.clone()));
        for ns in &all_ns {
            add_netns(ns);
            self.namespaces.push(ns.clone());
            netns_sysctl(ns, "net/ipv6/conf/all/accept_dad", "0");
            netns_sysctl(ns, "net/ipv6/conf/default/accept_dad", "0");
            ip(ns, &["link", "set", "lo", "up"]);
        }
        let bridge = format!("{id_ifaces}br");
        ip(&switch, &["link", "add", &bridge, "type", "bridge"]);
        ip(&switch, &["link", "set", &bridge, "up"]);
        for (i, host) in self.hosts.iter().enumerate() {
            let port = format!("{id_ifaces}p{}", i + 1);
            ip(
                &switch,
                &[
                    "link",
                    "add",
                    &port,
                    "type",
                    "veth",
                    "peer",
                    "name",
                    &host.iface,
                    "netns",
                    &host.ns,
                ],
            );
            ip(&switch, &["link", "set", &port, "master", &bridge]);
            ip(&switch, &["link", "set", &port, "up"]);
            bring_up_with_addresses(&host.ns, &host.iface, host.v4, host.v6);
        }
        for ns in &all_ns {
            assert_no_default_route(ns);
        }
        fs::create_dir_all(&self.mount_point)
            .unwrap_or_else(|e| panic!("cannot create {}: {e}", self.mount_point.display()));
        mount_bpffs(&self.mount_point);
        self.mounted = true;
        for host in &self.hosts {
            fs::create_dir(&host.pin_dir)
                .unwrap_or_else(|e| panic!("cannot create {}: {e}", host.pin_dir.display()));
        }
    }

    /// The host called `name`; panics if there is none.
    pub fn host(&self, name: &str) -> &Host {
        self.hosts
            .iter()
            .find(|h| h.name == name)
            .unwrap_or_else(|| panic!("this lab has no host {name}"))
    }

    fn index(&self, name: &str) -> usize {
        self.hosts
            .iter()
            .position(|h| h.name == name)
            .unwrap_or_else(|| panic!("this lab has no host {name}"))
    }

    /// Starts an SMTP listener on `port` of host `name` and waits until
    /// every other host reaches it (before any gate: a lab that cannot
    /// carry a SYN panics here, not in the test's checks).
    pub fn serve_smtp(&mut self, name: &str, port: u16) {
        let i = self.index(name);
        let handle = spawn_smtp_server(
            &self.hosts[i].ns,
            port,
            Arc::clone(&self.stop),
            Arc::clone(&self.accepted[i]),
        );
        self.servers.push(handle);
        for from in &self.hosts {
            if from.name != name {
                self.wait_reachable(&from.name, name, port);
            }
        }
    }

    /// Waits until host `from` reaches `to`'s `port` over IPv4 and IPv6.
    pub fn wait_reachable(&self, from: &str, to: &str, port: u16) {
        let (from, to) = (self.host(from), self.host(to));
        for addr in [IpAddr::from(to.v4), IpAddr::from(to.v6)] {
            let deadline = Instant::now() + REACH_BOUND;
            loop {
                let result = connect(&from.ns, addr, port, DENY_TIMEOUT);
                if result.is_connected() {
                    break;
                }
                assert!(
                    Instant::now() < deadline,
                    "lab {}: {} cannot reach {} at {addr}:{port}: {result}",
                    self.id,
                    from.name,
                    to.name
                );
                thread::sleep(Duration::from_millis(50));
            }
        }
    }

    /// Connections the SMTP listeners of host `name` accepted so far.
    pub fn accepted(&self, name: &str) -> usize {
        self.accepted[self.index(name)].load(Ordering::Relaxed)
    }

    /// Connects from host `from` to `to`'s `port` over IPv4.
    pub fn connect_v4(&self, from: &str, to: &str, port: u16, timeout: Duration) -> ConnectResult {
        connect(&self.host(from).ns, self.host(to).v4.into(), port, timeout)
    }

    /// Runs `smtp-gate ARGS --pin-dir <host's pin dir>` in the root
    /// namespace (the map commands: `list`, `stats`, ...).
    pub fn gate(&self, name: &str, args: &[&str]) -> Output {
        let pin = self.host(name).pin_dir_str();
        let mut all = args.to_vec();
        all.extend(["--pin-dir", pin.as_str()]);
        smtp_gate(&all)
    }

    /// `smtp-gate list --json` of host `name`'s gate, parsed.
    pub fn list(&self, name: &str, extra: &[&str]) -> Vec<serde_json::Value> {
        let mut args = vec!["list", "--json"];
        args.extend_from_slice(extra);
        let out = self.gate(name, &args);
        if !out.status.success() {
            panic!(
                "`smtp-gate {}` of {name} failed: {}",
                args.join(" "),
                describe(&out)
            );
        }
        serde_json::from_slice(&out.stdout)
            .unwrap_or_else(|e| panic!("list --json is not a JSON array ({e}): {out:?}"))
    }

    /// `ip -n NS ARGS` in host `name`'s namespace; panics unless it
    /// succeeds. Returns its stdout.
    pub fn ip(&self, name: &str, args: &[&str]) -> String {
        ip(&self.host(name).ns, args)
    }

    fn tear_down(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        for handle in self.servers.drain(..) {
            let _ = handle.join();
        }
        if self.mounted {
            for host in &self.hosts {
                if !self.namespaces.contains(&host.ns) {
                    continue;
                }
                let pin = host.pin_dir_str();
                let attached: Vec<String> = sorted_names(&host.pin_dir)
                    .iter()
                    .filter_map(|name| name.strip_prefix("link_"))
                    .filter_map(|rest| rest.split_once('_'))
                    .map(|(_mode, iface)| iface.to_string())
                    .collect();
                for iface in attached {
                    let out =
                        smtp_gate_in(&host.ns, &["detach", "--iface", &iface, "--pin-dir", &pin]);
                    if !out.status.success() {
                        eprintln!(
                            "lab {} teardown: detach from {iface} on {} failed (unmounting \
                             drops the pins anyway): {}",
                            self.id,
                            host.name,
                            describe(&out)
                        );
                    }
                }
            }
            unmount_all(&self.mount_point);
            self.mounted = false;
        }
        let _ = fs::remove_dir(&self.mount_point);
        for ns in self.namespaces.drain(..).rev() {
            delete_netns(&ns);
        }
    }
}

impl Drop for Hosts {
    fn drop(&mut self) {
        self.tear_down();
    }
}
