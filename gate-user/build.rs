//! Builds the eBPF program (gate-ebpf) and hands its object file to the
//! `smtp-gate` binary, which embeds it. The BPF target needs a rustc that
//! ships a prebuilt `core` for bpfel-unknown-none (Debian's rustc-web) and
//! bpf-linker; `cargo xtask setup` installs both. aya-build is not used: it
//! adds `-Z build-std=core`, which cannot work without rust-src.
//!
//! Without that toolchain the build goes on with an empty object, so that
//! `cargo check`, clippy and the host-only crates' tests work on any
//! machine; the binary built so refuses to load the gate and says how to
//! set the toolchain up (gate/object.rs).

use std::{env, path::PathBuf, process::Command};

// The search for the BPF rustc, the same one `cargo xtask setup` uses.
include!("../xtask/src/bpf_toolchain.rs");

/// Changes whenever a Debian package is installed.
const DPKG_STATUS: &str = "/var/lib/dpkg/status";
/// Tells gate/object.rs why the embedded object is empty.
const MISSING_VAR: &str = "SMTP_GATE_EBPF_MISSING";

fn main() {
    let manifest_dir = PathBuf::from(env::var_os("CARGO_MANIFEST_DIR").unwrap());
    let workspace = manifest_dir.parent().unwrap().to_path_buf();
    let out_dir = PathBuf::from(env::var_os("OUT_DIR").unwrap());
    let object_out = out_dir.join("gate-ebpf.o");
    for watched in [
        "gate-ebpf/src",
        "gate-ebpf/Cargo.toml",
        "gate-packet/src",
        "gate-common/src",
        "Cargo.lock",
        "xtask/src/bpf_toolchain.rs",
    ] {
        println!(
            "cargo:rerun-if-changed={}",
            workspace.join(watched).display()
        );
    }
    println!("cargo:rerun-if-env-changed={BPF_RUSTC_VAR}");

    let toolchain = match find_toolchain() {
        Ok(rustc) => rustc,
        Err(missing) => {
            println!(
                "cargo:warning=the eBPF toolchain is missing ({missing}): building smtp-gate \
                 without its kernel program; run `cargo xtask setup` to build the real one"
            );
            println!("cargo:rustc-env={MISSING_VAR}={missing}");
            // Looked for again once something is installed: Debian's
            // packages (rustc-web and its BPF `core`) or a cargo binary
            // (bpf-linker).
            for installs in [Some(PathBuf::from(DPKG_STATUS)), cargo_bin()]
                .into_iter()
                .flatten()
                .filter(|path| path.exists())
            {
                println!("cargo:rerun-if-changed={}", installs.display());
            }
            std::fs::write(&object_out, b"")
                .unwrap_or_else(|e| panic!("cannot write {}: {e}", object_out.display()));
            return;
        }
    };
    println!("cargo:rustc-env={MISSING_VAR}=");

    // A target dir of its own: the outer cargo holds the lock on the
    // workspace's target dir while build scripts run.
    let target_dir = workspace.join("target").join("ebpf");
    let cargo = env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let mut cmd = Command::new(cargo);
    cmd.current_dir(&workspace)
        .args([
            "build",
            "--package",
            "gate-ebpf",
            "--release",
            "--target",
            BPF_TARGET,
        ])
        .arg("--target-dir")
        .arg(&target_dir)
        .env("RUSTC", &toolchain)
        // aya-ebpf enables feature(asm_experimental_arch) on the BPF target.
        .env("RUSTC_BOOTSTRAP", "1")
        .env(
            "CARGO_ENCODED_RUSTFLAGS",
            "-Cdebuginfo=2\x1f-Clink-arg=--btf",
        );
    // Settings of the outer build that must not leak into the BPF build
    // (clippy's driver, coverage flags, a host target).
    for key in [
        "RUSTC_WORKSPACE_WRAPPER",
        "RUSTC_WRAPPER",
        "RUSTFLAGS",
        "CARGO_BUILD_TARGET",
        "CARGO_TARGET_DIR",
        "CARGO_BUILD_RUSTFLAGS",
    ] {
        cmd.env_remove(key);
    }
    let status = cmd
        .status()
        .unwrap_or_else(|e| panic!("cannot run cargo for the eBPF build: {e}"));
    if !status.success() {
        panic!("building gate-ebpf for {BPF_TARGET} failed (see the errors above)");
    }
    let object = target_dir
        .join(BPF_TARGET)
        .join("release")
        .join("gate-ebpf");
    std::fs::copy(&object, &object_out)
        .unwrap_or_else(|e| panic!("cannot copy {}: {e}", object.display()));
}

/// The rustc to build the BPF target with (see bpf_toolchain.rs), and
/// bpf-linker found on PATH or in ~/.cargo/bin, as cargo finds it; or
/// what is missing.
fn find_toolchain() -> Result<PathBuf, String> {
    let rustc = bpf_rustc()?;
    let linker_found = env::split_paths(&env::var_os("PATH").unwrap_or_default())
        .chain(cargo_bin())
        .any(|dir| dir.join("bpf-linker").is_file());
    if !linker_found {
        return Err("no bpf-linker on PATH or in ~/.cargo/bin".to_string());
    }
    Ok(rustc)
}

/// Where `cargo install` (and so `cargo xtask setup`) puts bpf-linker.
fn cargo_bin() -> Option<PathBuf> {
    env::var_os("CARGO_HOME")
        .map(PathBuf::from)
        .or_else(|| env::var_os("HOME").map(|home| PathBuf::from(home).join(".cargo")))
        .map(|home| home.join("bin"))
}
