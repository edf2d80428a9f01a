//! `cargo xtask setup`: everything the build and the tests need on a fresh
//! Debian 12 machine of this project's kind, installed only if missing.
//!
//! The BPF target needs a rustc that ships `core` for bpfel-unknown-none:
//! Debian's rustc-web with libstd-rust-web-dev-bpf. bpf-linker must be
//! built against the same LLVM major as that rustc, which is read from
//! `/usr/bin/rustc -vV` rather than assumed, because the security suite
//! moves. (See ../shared/TOOLCHAIN.md for how this was found.)

use std::{path::PathBuf, process::Command};

use anyhow::{bail, Context, Result};

use crate::cmd::{output, run};

use crate::bpf_toolchain;

/// The rustc the build will use for the BPF target (the packages above
/// provide one), as a command.
fn bpf_rustc() -> Result<String> {
    let rustc = bpf_toolchain::bpf_rustc().map_err(|why| anyhow::anyhow!("{why}"))?;
    Ok(rustc.to_string_lossy().into_owned())
}
const BPF_LINKER_VERSION: &str = "0.13.0";
/// LLVM majors bpf-linker 0.13 has features for.
const BPF_LINKER_LLVMS: [u32; 3] = [21, 22, 23];

/// Packages needed whatever the LLVM version: the rust for BPF, and the
/// tools the tests and the demo use (ip, bpftool, ethtool, python3).
const BASE_PACKAGES: &[&str] = &[
    "rustc-web",
    "cargo-web",
    "libstd-rust-web-dev-bpf",
    "libzstd-dev",
    "zlib1g-dev",
    "bpftool",
    "iproute2",
    "ethtool",
    "python3",
    // Real POP3 clients for the end-to-end tests (poplib is in python3),
    // over TLS too: openssl s_client, curl, poplib, fetchmail.
    "curl",
    "openssl",
    "fetchmail",
    // systemd-analyze, to verify the unit in deploy/.
    "systemd",
    // The mail servers the hooks serve (issue 12), each started by the
    // tests with a private config in a namespace: Dovecot for IMAP and
    // POP3 logins, Postfix asking our policy service, swaks to send.
    "dovecot-imapd",
    "dovecot-pop3d",
    "postfix",
    "swaks",
    // The grant bus's engine (issue 13), started by the tests with its
    // own port, directory and settings.
    "redis-server",
    // libfaketime: a bus host whose own clock is off (the agent's tests).
    "faketime",
    // The Debian package (`cargo xtask deb`, issue 14): dpkg-deb and
    // dpkg-shlibdeps, strip, gzip; and what its test installs it with:
    // the maintainer scripts' adduser and deb-systemd-helper, man to
    // render its pages.
    "dpkg-dev",
    "binutils",
    "gzip",
    "adduser",
    "init-system-helpers",
    "man-db",
    "groff-base",
    // promtool, which checks the daemons' metrics pages and `stats
    // --prometheus` (issue 14). The package is Prometheus itself: on a
    // host booted with systemd it also starts a Prometheus server on
    // port 9090 (--no-install-recommends leaves node-exporter out).
    "prometheus",
];

pub fn setup() -> Result<()> {
    if effective_uid() != 0 {
        bail!("cargo xtask setup installs Debian packages and must run as root");
    }
    let mut apt = Apt::default();
    apt.ensure(BASE_PACKAGES)?;
    let llvm = rustc_llvm_major()?;
    if !BPF_LINKER_LLVMS.contains(&llvm) {
        bail!(
            "{} uses LLVM {llvm}, which bpf-linker {BPF_LINKER_VERSION} does not \
             support (it knows {BPF_LINKER_LLVMS:?})",
            bpf_rustc()?
        );
    }
    apt.ensure(&[
        &format!("llvm-{llvm}-dev"),
        &format!("libpolly-{llvm}-dev"),
        &format!("clang-{llvm}"),
        &format!("lld-{llvm}"),
    ])?;
    ensure_bpf_linker(llvm)?;
    eprintln!(
        "setup: eBPF toolchain ready (rustc-web with LLVM {llvm}, bpf-linker {BPF_LINKER_VERSION})"
    );
    Ok(())
}

fn effective_uid() -> u32 {
    // Avoids a libc dependency for one call: `id -u` is always there.
    output("id", &["-u"])
        .ok()
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(u32::MAX)
}

#[derive(Default)]
struct Apt {
    updated: bool,
}

impl Apt {
    fn ensure(&mut self, packages: &[&str]) -> Result<()> {
        let missing: Vec<&str> = packages.iter().copied().filter(|p| !installed(p)).collect();
        if missing.is_empty() {
            return Ok(());
        }
        if !self.updated {
            run("apt-get", &["update"])?;
            self.updated = true;
        }
        // Postfix's and Dovecot's installs ask questions; nobody answers
        // in CI, and the defaults are fine (the tests bring their configs).
        let mut args = vec![
            "DEBIAN_FRONTEND=noninteractive",
            "apt-get",
            "install",
            "-y",
            "--no-install-recommends",
        ];
        args.extend(&missing);
        run("env", &args)
    }
}

fn installed(package: &str) -> bool {
    Command::new("dpkg-query")
        .args(["-W", "-f=${Status}", package])
        .output()
        .map(|o| o.status.success() && String::from_utf8_lossy(&o.stdout).contains("ok installed"))
        .unwrap_or(false)
}

fn rustc_llvm_major() -> Result<u32> {
    let rustc = bpf_rustc()?;
    let version = output(&rustc, &["-vV"])?;
    let line = version
        .lines()
        .find_map(|l| l.strip_prefix("LLVM version: "))
        .with_context(|| format!("`{rustc} -vV` prints no LLVM version"))?;
    line.split('.')
        .next()
        .and_then(|major| major.trim().parse().ok())
        .with_context(|| format!("cannot read the LLVM major from `{line}`"))
}

fn cargo_bin_dir() -> PathBuf {
    std::env::var_os("CARGO_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cargo")))
        .unwrap_or_else(|| PathBuf::from("/root/.cargo"))
        .join("bin")
}

/// bpf-linker of the pinned version, linked against LLVM `llvm`.
fn bpf_linker_ok(llvm: u32) -> bool {
    let linker = cargo_bin_dir().join("bpf-linker");
    let Ok(version) = output(linker.to_str().unwrap_or("bpf-linker"), &["--version"]) else {
        return false;
    };
    if !version.contains(BPF_LINKER_VERSION) {
        return false;
    }
    // It links libLLVM dynamically; the soname carries the major.
    output("ldd", &[linker.to_str().unwrap_or("bpf-linker")])
        .map(|libs| libs.contains(&format!("libLLVM.so.{llvm}")))
        .unwrap_or(false)
}

fn ensure_bpf_linker(llvm: u32) -> Result<()> {
    if bpf_linker_ok(llvm) {
        return Ok(());
    }
    eprintln!(
        "setup: building bpf-linker {BPF_LINKER_VERSION} against LLVM {llvm} (a few minutes)"
    );
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".to_string());
    let status = Command::new(&cargo)
        .args([
            "install",
            "--force",
            "bpf-linker",
            "--version",
            BPF_LINKER_VERSION,
            "--no-default-features",
            "--features",
            &format!("llvm-{llvm}"),
        ])
        // Without it the build script looks in /usr/lib64 and cannot find
        // -lLLVM.
        .env("LLVM_PREFIX", format!("/usr/lib/llvm-{llvm}"))
        .status()
        .context("cannot run cargo install")?;
    if !status.success() {
        bail!("cargo install bpf-linker failed ({status})");
    }
    if !bpf_linker_ok(llvm) {
        bail!("bpf-linker was installed but does not report version {BPF_LINKER_VERSION} with LLVM {llvm}");
    }
    Ok(())
}
