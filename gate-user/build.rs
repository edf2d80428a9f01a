//! Builds the eBPF program (gate-ebpf) and hands its object file to the
//! `smtp-gate` binary, which embeds it. The BPF target needs Debian's
//! rustc-web (it ships a prebuilt `core` for bpfel-unknown-none) and
//! bpf-linker; `cargo xtask setup` installs both. aya-build is not used: it
//! adds `-Z build-std=core`, which cannot work without rust-src.

use std::{
    env,
    path::{Path, PathBuf},
    process::Command,
};

const BPF_TARGET: &str = "bpfel-unknown-none";
const BPF_RUSTC: &str = "/usr/bin/rustc";

fn main() {
    let manifest_dir = PathBuf::from(env::var_os("CARGO_MANIFEST_DIR").unwrap());
    let workspace = manifest_dir.parent().unwrap().to_path_buf();
    let out_dir = PathBuf::from(env::var_os("OUT_DIR").unwrap());
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

    check_toolchain();

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
        .env("RUSTC", BPF_RUSTC)
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
    std::fs::copy(&object, out_dir.join("gate-ebpf.o"))
        .unwrap_or_else(|e| panic!("cannot copy {}: {e}", object.display()));
}

fn check_toolchain() {
    let core_present =
        std::fs::read_dir(Path::new("/usr/lib/rustlib").join(BPF_TARGET).join("lib"))
            .map(|dir| {
                dir.flatten()
                    .any(|e| e.file_name().to_string_lossy().starts_with("libcore-"))
            })
            .unwrap_or(false);
    let linker_present = env::split_paths(&env::var_os("PATH").unwrap_or_default())
        .chain(env::var_os("HOME").map(|h| PathBuf::from(h).join(".cargo/bin")))
        .any(|dir| dir.join("bpf-linker").is_file());
    if !Path::new(BPF_RUSTC).is_file() || !core_present || !linker_present {
        panic!(
            "\n\nThe eBPF toolchain is missing (need {BPF_RUSTC} with a `core` for {BPF_TARGET}, \
             and bpf-linker).\nRun `cargo xtask setup` once, then build again.\n\n"
        );
    }
}
