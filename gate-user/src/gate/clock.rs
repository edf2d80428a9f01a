//! The gate's clock: the kernel's jiffies times the length of a tick, in
//! nanoseconds. The program reads it with `bpf_jiffies64`, which the
//! verifier inlines into one load (the nanosecond clocks cost as much as
//! the grant lookup itself), so grant stamps are written on it too.
//!
//! User space cannot read jiffies directly. Rather than deriving them from
//! another clock (jiffies follow CLOCK_MONOTONIC at a fixed but unknown
//! offset, and a stamp computed a tick ahead of the kernel would read as a
//! stamp in the future, which is never fresh), a probe program of a few
//! instructions is run with BPF_PROG_TEST_RUN and returns the very value
//! the gate reads. The tick length is the resolution of the coarse clocks
//! (`clock_getres(CLOCK_MONOTONIC_COARSE)` is TICK_NSEC by definition).
//!
//! Like CLOCK_MONOTONIC, jiffies stand still while the host is suspended:
//! a grant lasts its window of time awake. Expiry is exact to one tick.

use std::time::Duration;

use anyhow::{Context, Result};
use nix::time::{clock_getres, clock_gettime, ClockId};

use super::bpf_asm::{
    insn, load_xdp, run_once_into, Insn, ProgFd, ADD64_IMM, CALL, EXIT, JGT_REG, LDX_W, MOV64_IMM,
    MOV64_REG, STX_DW, XDP_PASS,
};

const BPF_FUNC_JIFFIES64: i32 = 118;
const BPF_FUNC_KTIME_GET_BOOT_NS: i32 = 125;
/// The attach type of an XDP program loaded for test runs only.
const BPF_XDP: u32 = 37;
/// The probe's frame: an Ethernet header's worth, which XDP test runs ask
/// for at least.
const PROBE_FRAME_LEN: usize = 64;

/// Nanoseconds per jiffy on this kernel.
pub fn tick_ns() -> Result<u32> {
    let res = clock_getres(ClockId::CLOCK_MONOTONIC_COARSE)
        .context("clock_getres(CLOCK_MONOTONIC_COARSE) for the kernel's tick length")?;
    let ns = Duration::from(res).as_nanos();
    // HZ is at least 24 on every architecture: a tick is under 42 ms.
    match u32::try_from(ns) {
        Ok(ns) if (1..=50_000_000).contains(&ns) => Ok(ns),
        _ => anyhow::bail!("the kernel reports an implausible tick length of {ns} ns"),
    }
}

/// CLOCK_BOOTTIME of this process (a time namespace may offset it): the
/// clock older builds stamped grants on. Upgrades read the kernel's own
/// through the probe (`GateClock::boot_ns`).
pub fn boottime_ns() -> u64 {
    // CLOCK_BOOTTIME always exists on Linux.
    let now = clock_gettime(ClockId::CLOCK_BOOTTIME).expect("clock_gettime(CLOCK_BOOTTIME) failed");
    Duration::from(now).as_nanos() as u64
}

/// Reads the gate's clock: the loaded probe and the tick length.
pub struct GateClock {
    probe: ProgFd,
    tick_ns: u32,
}

/// The probe: writes `bpf_jiffies64()` into the first 8 octets of the
/// frame and `bpf_ktime_get_boot_ns()` into the next 8, and passes it.
fn probe_program() -> [Insn; 11] {
    [
        insn(LDX_W, 6, 1, 0, 0), // r6 = ctx->data
        insn(LDX_W, 7, 1, 4, 0), // r7 = ctx->data_end
        insn(MOV64_REG, 8, 6, 0, 0),
        insn(ADD64_IMM, 8, 0, 0, 16),
        insn(JGT_REG, 8, 7, 4, 0), // frame shorter than 16: skip the writes
        insn(CALL, 0, 0, 0, BPF_FUNC_JIFFIES64),
        insn(STX_DW, 6, 0, 0, 0), // *(u64 *)data = r0
        insn(CALL, 0, 0, 0, BPF_FUNC_KTIME_GET_BOOT_NS),
        insn(STX_DW, 6, 0, 8, 0), // *(u64 *)(data + 8) = r0
        insn(MOV64_IMM, 0, 0, 0, XDP_PASS),
        insn(EXIT, 0, 0, 0, 0),
    ]
}

impl GateClock {
    /// Loads the probe (root, or CAP_BPF with CAP_NET_ADMIN).
    pub fn open() -> Result<Self> {
        let probe = load_xdp(&probe_program(), "smtp_gate_clock", BPF_XDP)
            .context("loading the gate clock's probe program")?;
        Ok(Self {
            probe,
            tick_ns: tick_ns()?,
        })
    }

    pub fn tick_ns(&self) -> u32 {
        self.tick_ns
    }

    /// The kernel's jiffies and CLOCK_BOOTTIME (the kernel's, which no
    /// time namespace offsets), read together.
    fn probe(&self) -> Result<(u64, u64)> {
        let frame = [0u8; PROBE_FRAME_LEN];
        let mut out = [0u8; PROBE_FRAME_LEN];
        let (verdict, len) = run_once_into(&self.probe, &frame, &mut out)
            .context("running the gate clock's probe")?;
        if verdict != XDP_PASS as u32 || len < 16 {
            anyhow::bail!("the gate clock's probe returned {verdict} with {len} octets");
        }
        let word = |at: usize| u64::from_ne_bytes(out[at..at + 8].try_into().expect("8 octets"));
        Ok((word(0), word(8)))
    }

    /// The kernel's jiffies now.
    pub fn jiffies(&self) -> Result<u64> {
        Ok(self.probe()?.0)
    }

    /// The gate's clock and the kernel's CLOCK_BOOTTIME now, in
    /// nanoseconds.
    pub fn now_and_boot_ns(&self) -> Result<(u64, u64)> {
        let (jiffies, boot) = self.probe()?;
        Ok((jiffies.wrapping_mul(self.tick_ns as u64), boot))
    }

    /// The gate's clock now, in nanoseconds.
    pub fn now_ns(&self) -> Result<u64> {
        Ok(self.jiffies()?.wrapping_mul(self.tick_ns as u64))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// CONFIG_HZ, from the kernel's own config where the distribution
    /// installs it.
    fn config_hz() -> Option<u64> {
        let release = std::fs::read_to_string("/proc/sys/kernel/osrelease").ok()?;
        let config = std::fs::read_to_string(format!("/boot/config-{}", release.trim())).ok()?;
        config
            .lines()
            .find_map(|l| l.strip_prefix("CONFIG_HZ="))
            .and_then(|v| v.parse().ok())
    }

    /// The probe reads jiffies: they advance at one per tick.
    #[test]
    fn probe_reads_jiffies() {
        crate::gate::privilege::require(
            "the gate clock's probe",
            crate::gate::privilege::READ_CLOCK,
        )
        .expect("this test must run as root; it does not skip");
        let clock = GateClock::open().expect("loading the probe");
        let tick = clock.tick_ns() as u64;
        let started = std::time::Instant::now();
        let before = clock.jiffies().expect("jiffies");
        std::thread::sleep(std::time::Duration::from_millis(200));
        let after = clock.jiffies().expect("jiffies");
        let elapsed = started.elapsed().as_nanos() as u64;
        let ticks = after - before;
        // Within two ticks of the elapsed time (one at each end), and
        // never ahead of it by more.
        assert!(
            ticks * tick <= elapsed + 2 * tick && ticks * tick + 2 * tick >= 200_000_000,
            "{ticks} ticks of {tick} ns in {elapsed} ns"
        );
        let now = clock.now_ns().expect("now");
        assert!(now >= after * tick, "now_ns is jiffies times the tick");
        // The kernel's boot clock, read beside jiffies, is this process's
        // (no time namespace here).
        let (_, boot) = clock.now_and_boot_ns().expect("boot clock");
        let own = boottime_ns();
        assert!(
            boot <= own && own - boot < 1_000_000_000,
            "probe boot clock {boot} against CLOCK_BOOTTIME {own}"
        );
    }

    #[test]
    fn tick_length_is_a_kernel_tick() {
        let tick = tick_ns().expect("tick length") as u64;
        let hz = 1_000_000_000 / tick;
        assert!(
            [24, 32, 48, 64, 100, 128, 200, 250, 256, 300, 500, 512, 1000, 1024, 1200]
                .contains(&hz),
            "{tick} ns per tick is no CONFIG_HZ"
        );
        if let Some(config) = config_hz() {
            assert_eq!(hz, config, "tick length against the kernel's config");
        }
    }
}
