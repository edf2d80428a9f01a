// Which rustc builds the BPF target: one answer for `cargo xtask setup`
// (which checks that rustc's LLVM against bpf-linker's) and gate-user's
// build script (which builds with it). The build script takes this file
// in with `include!`, hence plain comments and whole paths, no `use`.

pub const BPF_TARGET: &str = "bpfel-unknown-none";
/// Names the rustc for the BPF target, where the search would find another.
pub const BPF_RUSTC_VAR: &str = "SMTP_GATE_BPF_RUSTC";
/// Where Debian's rustc-web puts it (what `cargo xtask setup` installs).
const DEBIAN_RUSTC: &str = "/usr/bin/rustc";

/// The rustc `SMTP_GATE_BPF_RUSTC` names, else the first on PATH whose
/// sysroot holds a prebuilt `core` for the BPF target (rustup's have
/// none), else Debian's; or why there is none.
pub fn bpf_rustc() -> Result<std::path::PathBuf, String> {
    if let Some(named) = std::env::var_os(BPF_RUSTC_VAR) {
        let named = std::path::PathBuf::from(named);
        return if has_bpf_core(&named) {
            Ok(named)
        } else {
            Err(format!(
                "{BPF_RUSTC_VAR}={} has no `core` for {BPF_TARGET}",
                named.display()
            ))
        };
    }
    std::env::split_paths(&std::env::var_os("PATH").unwrap_or_default())
        .map(|dir| dir.join("rustc"))
        .chain([std::path::PathBuf::from(DEBIAN_RUSTC)])
        .filter(|rustc| rustc.is_file())
        .find(|rustc| has_bpf_core(rustc))
        .ok_or_else(|| format!("no rustc with a `core` for {BPF_TARGET}"))
}

/// True if `rustc`'s sysroot holds a prebuilt `core` for the BPF target.
fn has_bpf_core(rustc: &std::path::Path) -> bool {
    let Ok(out) = std::process::Command::new(rustc)
        .args(["--print", "sysroot"])
        .env_remove("RUSTC_WORKSPACE_WRAPPER")
        .output()
    else {
        return false;
    };
    let sysroot = std::path::PathBuf::from(String::from_utf8_lossy(&out.stdout).trim());
    std::fs::read_dir(sysroot.join("lib/rustlib").join(BPF_TARGET).join("lib"))
        .map(|dir| {
            dir.flatten()
                .any(|e| e.file_name().to_string_lossy().starts_with("libcore-"))
        })
        .unwrap_or(false)
}
