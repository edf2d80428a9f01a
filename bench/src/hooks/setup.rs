//! What the hooks suite runs: labs (namespaces without a default route),
//! `smtp-gate serve` serving the hooks only, the floor policy servers, the
//! shipped Dovecot snippet pointed at the lab's endpoint, and running a
//! piece of the harness inside a lab's namespace.

use std::{
    fs,
    io::{BufRead, BufReader},
    net::SocketAddr,
    path::{Path, PathBuf},
    process::{Child, ChildStdin, Stdio},
    time::{Duration, Instant},
};

use anyhow::{bail, Context, Result};
use testkit::{lab::Lab, netns::netns_command, serve::ServeDaemon};

use super::load::{self, Connection, EXEMPT_NET};

/// Where the daemon takes Dovecot's and Postfix's requests, and where the
/// floor servers listen, on the server namespace's loopback.
pub const DOVECOT_POLICY: ([u8; 4], u16) = ([127, 0, 0, 1], 10030);
pub const POSTFIX_POLICY: ([u8; 4], u16) = ([127, 0, 0, 1], 10031);
pub const FLOOR_DOVECOT: ([u8; 4], u16) = ([127, 0, 0, 1], 10040);
pub const FLOOR_POSTFIX: ([u8; 4], u16) = ([127, 0, 0, 1], 10041);
/// How long a server may take to answer its first request: only a hang
/// takes longer.
const READY_BOUND: Duration = Duration::from_secs(60);

pub fn addr((ip, port): ([u8; 4], u16)) -> SocketAddr {
    (ip, port).into()
}

/// A directory of the run for configs and logs, removed on drop.
pub struct RunDir(pub PathBuf);

impl RunDir {
    pub fn new(name: &str) -> Result<Self> {
        let dir =
            std::env::temp_dir().join(format!("smtp-gate-bench-{name}-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
        Ok(Self(dir))
    }
}

impl Drop for RunDir {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.0);
    }
}

/// Runs `work` on a thread inside network namespace `ns`, on a tokio
/// runtime of its own (one thread): its sockets are the namespace's.
pub fn in_ns<R, F, Fut>(ns: &str, work: F) -> Result<R>
where
    F: FnOnce() -> Fut + Send,
    Fut: std::future::Future<Output = Result<R>>,
    R: Send,
{
    testkit::netns::in_netns(ns, || {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        runtime.block_on(work())
    })
}

/// `smtp-gate serve` in `lab`'s server namespace with `listen = []`: the
/// hooks only, the gate on the client's veth (its maps are what the hooks
/// write and read), the window long enough that no grant lapses during a
/// run.
pub fn start_daemon(lab: &Lab, dir: &Path, dovecot: bool, postfix: bool) -> Result<ServeDaemon> {
    let mut config = format!(
        "iface = \"{}\"\nwindow = \"1h\"\nlisten = []\nexempt = [\"{}.{}.0.0/16\"]\n",
        lab.client.server_iface, EXEMPT_NET[0], EXEMPT_NET[1]
    );
    if dovecot {
        config += &format!("dovecot_policy_listen = \"{}\"\n", addr(DOVECOT_POLICY));
    }
    if postfix {
        config += &format!("postfix_policy_listen = \"{}\"\n", addr(POSTFIX_POLICY));
    }
    let path = dir.join("smtp-gate.toml");
    fs::write(&path, config)?;
    let pin = lab.pin_dir_str();
    let path = path.to_str().context("a config path that is not UTF-8")?;
    let mut daemon = lab.spawn_serve(
        &["--config", path, "--pin-dir", &pin],
        &dir.join("serve.log"),
    );
    let waited = (|| {
        if dovecot {
            wait_answering(
                &lab.server_ns,
                addr(DOVECOT_POLICY),
                true,
                Some(&mut daemon),
            )?;
        }
        if postfix {
            wait_answering(
                &lab.server_ns,
                addr(POSTFIX_POLICY),
                false,
                Some(&mut daemon),
            )?;
        }
        anyhow::Ok(())
    })();
    if let Err(e) = waited {
        bail!("{e:#}\n--- smtp-gate serve's log ---\n{}", daemon.log());
    }
    Ok(daemon)
}

/// Waits until the policy server at `addr` (in `ns`) answers a request
/// (an HTTP `allow` if `dovecot`, else a Postfix request).
pub fn wait_answering(
    ns: &str,
    addr: SocketAddr,
    dovecot: bool,
    mut daemon: Option<&mut ServeDaemon>,
) -> Result<()> {
    let deadline = Instant::now() + READY_BOUND;
    let probe_client = load::in_net(load::REFUSED_NET, 0);
    loop {
        let answered = in_ns(ns, || async move {
            let ask = async {
                let mut connection = Connection::open(addr).await?;
                if dovecot {
                    let (code, _) = connection
                        .http(&load::dovecot_request("allow", probe_client, false))
                        .await?;
                    anyhow::ensure!(code == 200, "answered {code}");
                } else {
                    connection
                        .postfix(&load::postfix_request(probe_client))
                        .await?;
                }
                anyhow::Ok(())
            };
            tokio::time::timeout(Duration::from_secs(3), ask)
                .await
                .map_err(|_| anyhow::anyhow!("no answer within 3 s"))?
        });
        let Err(e) = answered else {
            return Ok(());
        };
        if let Some(daemon) = daemon.as_deref_mut() {
            if let Some(status) = daemon.exited() {
                bail!("smtp-gate serve exited ({status}) before answering on {addr}");
            }
        }
        if Instant::now() > deadline {
            bail!("nothing answers policy requests on {addr} after {READY_BOUND:?}: {e:#}");
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// A floor policy server (bench/src/bin/policy-floor.rs) in a namespace.
pub struct Floor {
    child: Child,
    stdin: Option<ChildStdin>,
}

impl Floor {
    pub fn start(ns: &str, dovecot: bool) -> Result<Self> {
        let binary = crate::binaries::build("gate-bench", "policy-floor")?;
        let (protocol, at) = if dovecot {
            ("dovecot", addr(FLOOR_DOVECOT))
        } else {
            ("postfix", addr(FLOOR_POSTFIX))
        };
        let mut child = netns_command(ns, &binary)
            .args([protocol, &at.to_string()])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .with_context(|| format!("starting {}", binary.display()))?;
        let stdin = child.stdin.take();
        let mut line = String::new();
        BufReader::new(child.stdout.take().context("no stdout")?).read_line(&mut line)?;
        let floor = Self { child, stdin };
        if line.trim() != "ready" {
            bail!("policy-floor {protocol} did not start (said {line:?})");
        }
        wait_answering(ns, at, dovecot, None)?;
        Ok(floor)
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }
}

impl Drop for Floor {
    fn drop(&mut self) {
        // Closing stdin is its signal to stop.
        drop(self.stdin.take());
        let deadline = Instant::now() + Duration::from_secs(5);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The shipped Dovecot 2.3 snippet (deploy/dovecot/, the file whose name
/// says 2.3), its `auth_policy_server_url` pointed at `url`; written to
/// `dir` and returned with the name of the file it came from.
pub fn shipped_snippet(dir: &Path, url: &str) -> Result<(PathBuf, String)> {
    let deploy = Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/dovecot");
    let entries = fs::read_dir(&deploy).with_context(|| {
        format!(
            "reading {} (the Dovecot snippets come with the dovecot branch)",
            deploy.display()
        )
    })?;
    let mut found: Vec<PathBuf> = entries
        .filter_map(|e| Some(e.ok()?.path()))
        .filter(|p| {
            p.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.contains("2.3") && n.ends_with(".conf"))
        })
        .collect();
    found.sort();
    let [source] = found.as_slice() else {
        bail!(
            "expected one Dovecot 2.3 snippet (*2.3*.conf) in {}, found {found:?}",
            deploy.display()
        );
    };
    let text = fs::read_to_string(source)?;
    let mut pointed = 0;
    let rewritten: String = text
        .lines()
        .map(|line| {
            if line.trim_start().starts_with("auth_policy_server_url") {
                pointed += 1;
                format!("auth_policy_server_url = {url}\n")
            } else {
                format!("{line}\n")
            }
        })
        .collect();
    if pointed != 1 {
        bail!(
            "{} sets auth_policy_server_url {pointed} times, not once",
            source.display()
        );
    }
    let out = dir.join("policy.conf");
    fs::write(&out, rewritten)?;
    let name = source
        .strip_prefix(Path::new(env!("CARGO_MANIFEST_DIR")).join(".."))
        .unwrap_or(source)
        .display()
        .to_string();
    Ok((out, name))
}
