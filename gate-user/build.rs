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

use std::{
    env,
    path::{Path, PathBuf},
    process::Command,
};

const BPF_TARGET: &str = "bpfel-unknown-none";
/// Names the rustc for the BPF target, where PATH would find another.
const BPF_RUSTC_VAR: &str = "SMTP_GATE_BPF_RUSTC";
/// Where Debian's rustc-web puts it (what `cargo xtask setup` installs).
const DEBIAN_RUSTC: &str = "/usr/bin/rustc";
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
    ] {
        println!(
            "cargo:rerun-if-changed={}",
            workspace.join(watched).display()
        );
    }
    println!("cargo:rerun-if-env-changed={BPF_RUSTC_VAR}");
    println!("cargo:rerun-if-env-changed=PATH");

    let toolchain = match find_toolchain() {
        Ok(rustc) => rustc,
        Err(missing) => {
            println!(
                "cargo:warning=the eBPF toolchain is missing ({missing}): building smtp-gate \
                 without its kernel program; run `cargo xtask setup` to build the real one"
            );
            println!("cargo:rustc-env={MISSING_VAR}={missing}");
            // Checked again on every build until it is there: the
            // toolchain's files are not ones cargo can watch.
            println!(
                "cargo:rerun-if-changed={}",
                out_dir.join("recheck").display()
            );
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

/// The rustc to build the BPF target with, or what is missing. The rustc
/// is the one `SMTP_GATE_BPF_RUSTC` names, else the first on PATH, else
/// Debian's, whose sysroot has a `core` for the target (rustup's do not);
/// bpf-linker is found on PATH or in ~/.cargo/bin, as cargo finds it.
fn find_toolchain() -> Result<PathBuf, String> {
    let path_dirs: Vec<PathBuf> = env::split_paths(&env::var_os("PATH").unwrap_or_default())
        .chain(env::var_os("HOME").map(|h| PathBuf::from(h).join(".cargo/bin")))
        .collect();
    let candidates: Vec<PathBuf> = match env::var_os(BPF_RUSTC_VAR) {
        Some(named) => vec![PathBuf::from(named)],
        None => path_dirs
            .iter()
            .map(|dir| dir.join("rustc"))
            .chain([PathBuf::from(DEBIAN_RUSTC)])
            .filter(|rustc| rustc.is_file())
            .collect(),
    };
    let rustc = candidates
        .into_iter()
        .find(|rustc| has_bpf_core(rustc))
        .ok_or_else(|| match env::var_os(BPF_RUSTC_VAR) {
            Some(named) => format!(
                "{BPF_RUSTC_VAR}={} has no `core` for {BPF_TARGET}",
                Path::new(&named).display()
            ),
            None => format!("no rustc with a `core` for {BPF_TARGET}"),
        })?;
    if !path_dirs.iter().any(|dir| dir.join("bpf-linker").is_file()) {
        return Err("no bpf-linker on PATH or in ~/.cargo/bin".to_string());
    }
    Ok(rustc)
}

/// True if `rustc`'s sysroot holds a prebuilt `core` for the BPF target.
fn has_bpf_core(rustc: &Path) -> bool {
    let Ok(out) = Command::new(rustc)
        .args(["--print", "sysroot"])
        .env_remove("RUSTC_WORKSPACE_WRAPPER")
        .output()
    else {
        return false;
    };
    let sysroot = PathBuf::from(String::from_utf8_lossy(&out.stdout).trim());
    std::fs::read_dir(sysroot.join("lib/rustlib").join(BPF_TARGET).join("lib"))
        .map(|dir| {
            dir.flatten()
                .any(|e| e.file_name().to_string_lossy().starts_with("libcore-"))
        })
        .unwrap_or(false)
}
