//! Network namespaces by name (under /run/netns, as `ip netns` keeps
//! them): making and deleting them, running commands and threads inside.

use std::{
    fs, io,
    net::{Ipv4Addr, Ipv6Addr},
    os::fd::AsRawFd,
    path::Path,
    process::Command,
    sync::Mutex,
    thread,
};

use crate::process::{run_ok, run_quiet};

/// `ip netns add/del` mount and unmount under /run/netns; one at a time in
/// this process avoids racing iproute2's first-time setup of that mount.
static NETNS_LOCK: Mutex<()> = Mutex::new(());

/// A command that runs `program` inside namespace `ns` (`ip netns exec`):
/// add arguments, then spawn it (a daemon) or run it to completion.
pub fn netns_command(ns: &str, program: impl AsRef<std::ffi::OsStr>) -> Command {
    let mut command = Command::new("ip");
    command.args(["netns", "exec", ns]).arg(program);
    command
}

/// Moves the calling thread into network namespace `ns` (a name under
/// /run/netns). Irreversible for that thread: call it only on a thread of
/// your own (see [`in_netns`]). Sockets the thread creates afterwards live
/// in `ns`, wherever they are used later.
pub fn enter_netns(ns: &str) -> io::Result<()> {
    let path = Path::new("/run/netns").join(ns);
    let file = fs::File::open(&path)
        .map_err(|e| io::Error::new(e.kind(), format!("opening {}: {e}", path.display())))?;
    // SAFETY: a valid namespace fd; setns only affects the calling thread.
    if unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
        let e = io::Error::last_os_error();
        return Err(io::Error::new(e.kind(), format!("setns into {ns}: {e}")));
    }
    Ok(())
}

/// Runs `f` on a new thread inside network namespace `ns` and returns its
/// result; a panic in `f` is passed on. Sockets created by `f` stay in
/// `ns` after the thread is gone.
pub fn in_netns<R, F>(ns: &str, f: F) -> R
where
    F: FnOnce() -> R + Send,
    R: Send,
{
    thread::scope(|scope| {
        let handle = scope.spawn(|| {
            enter_netns(ns).unwrap_or_else(|e| panic!("cannot enter network namespace: {e}"));
            f()
        });
        match handle.join() {
            Ok(value) => value,
            Err(payload) => std::panic::resume_unwind(payload),
        }
    })
}

/// Writes a sysctl of namespace `ns` (`key` as in `net/ipv6/conf/all/...`).
pub fn netns_sysctl(ns: &str, key: &str, value: &str) {
    in_netns(ns, || {
        let path = Path::new("/proc/sys").join(key);
        fs::write(&path, value)
            .unwrap_or_else(|e| panic!("cannot set {} in {ns}: {e}", path.display()));
    });
}

/// `ip netns add NS`; panics unless it succeeds.
pub(crate) fn add_netns(ns: &str) {
    let _guard = NETNS_LOCK.lock().unwrap_or_else(|p| p.into_inner());
    run_ok("ip", &["netns", "add", ns]);
}

/// `ip netns del NS`, for teardown: a failure is reported, never panicked
/// on.
pub(crate) fn delete_netns(ns: &str) {
    let _guard = NETNS_LOCK.lock().unwrap_or_else(|p| p.into_inner());
    run_quiet("ip", &["netns", "del", ns]);
}

/// `ip -n NS ARGS`; panics unless it succeeds. Returns its stdout.
pub fn ip(ns: &str, args: &[&str]) -> String {
    let mut all = vec!["-n", ns];
    all.extend_from_slice(args);
    run_ok("ip", &all)
}

/// Gives `iface` in `ns` the lab's address pair, `v4`/24 and `v6`/64, and
/// brings it up. The IPv6 address skips duplicate address detection, so
/// both are usable at once.
pub fn bring_up_with_addresses(ns: &str, iface: &str, v4: Ipv4Addr, v6: Ipv6Addr) {
    ip(ns, &["addr", "add", &format!("{v4}/24"), "dev", iface]);
    ip(
        ns,
        &["addr", "add", &format!("{v6}/64"), "dev", iface, "nodad"],
    );
    ip(ns, &["link", "set", "dev", iface, "up"]);
}

/// Panics if `ns` has an IPv4 or IPv6 default route: the network-safety
/// rule of every lab, checked after each change to its links.
pub fn assert_no_default_route(ns: &str) {
    let routes =
        ip(ns, &["route", "show", "default"]) + &ip(ns, &["-6", "route", "show", "default"]);
    assert!(
        routes.trim().is_empty(),
        "namespace {ns} has a default route: {routes}"
    );
}
