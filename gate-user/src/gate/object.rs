//! The compiled kernel program, embedded at build time by build.rs.

use anyhow::{bail, Context, Result};
use aya::{Ebpf, EbpfLoader};
use gate_common::map_names::{GRANTS_V4, GRANTS_V6};

static GATE_EBPF: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/gate-ebpf.o"));

/// The kernel program's object file, or why this binary has none: built
/// without the eBPF toolchain, it holds an empty one (build.rs).
pub fn embedded() -> Result<&'static [u8]> {
    if GATE_EBPF.is_empty() {
        bail!(
            "this smtp-gate was built without its kernel program ({}); run `cargo xtask \
             setup` (it installs the eBPF toolchain), then build again",
            env!("SMTP_GATE_EBPF_MISSING")
        );
    }
    Ok(GATE_EBPF)
}

/// The kernel's LRU hash hands out free slots through per-CPU lists of 128
/// (LOCAL_FREE_TARGET in kernel/bpf/bpf_lru_list.c). Slots parked on one
/// CPU's list cannot be used by an insert running on another CPU, which
/// then evicts instead. Sizing the map with that much headroom per possible
/// CPU (twice over) keeps every one of `capacity` grants.
pub fn lru_max_entries(capacity: u32) -> u32 {
    let cpus = aya::util::nr_cpus().unwrap_or(1) as u32;
    capacity.saturating_add(cpus.saturating_mul(2 * 128))
}

/// Loads the object without pinning anything: for tests and benchmarks that
/// drive the programs with BPF_PROG_TEST_RUN.
pub fn load_unpinned(capacity: u32) -> Result<Ebpf> {
    let entries = lru_max_entries(capacity);
    EbpfLoader::new()
        .map_max_entries(GRANTS_V4, entries)
        .map_max_entries(GRANTS_V6, entries)
        .load(embedded()?)
        .context("loading the smtp-gate eBPF object")
}
