//! The gate's own cost of one dropped SYN: BPF_PROG_TEST_RUN of the XDP
//! and TC programs on an ungranted SYN to port 25 (deny drop, one grant
//! for someone else), mean ns per run as the kernel reports it.

use std::net::Ipv4Addr;

use anyhow::{Context, Result};
use aya::programs::{SchedClassifier, Xdp};
use gate_common::program_names;
use testkit::packets::{tcp_flags, PacketBuilder, LINUX_SYN_OPTIONS};

use crate::kernel::{load_programs, mean_ns};

#[derive(Clone, Copy, Debug, serde::Serialize)]
pub struct TestRunCost {
    pub xdp_drop_ns: f64,
    pub tc_drop_ns: f64,
    pub repeat: u32,
}

/// Median of `runs` measurements of `repeat` repetitions each.
pub fn measure(repeat: u32, runs: usize) -> Result<TestRunCost> {
    let (ebpf, mut maps) = load_programs(1024)?;
    maps.grant(Ipv4Addr::new(10, 231, 1, 2).into(), None)?;
    let packet: &'static [u8] = Box::leak(
        PacketBuilder::ipv4(Ipv4Addr::new(198, 18, 7, 9), Ipv4Addr::new(10, 231, 1, 1))
            .tcp(40_000, 25, tcp_flags::SYN)
            .tcp_options(&LINUX_SYN_OPTIONS)
            .build()
            .into_boxed_slice(),
    );
    let xdp: &Xdp = ebpf
        .program(program_names::XDP)
        .context("xdp")?
        .try_into()?;
    let tc: &SchedClassifier = ebpf.program(program_names::TC).context("tc")?.try_into()?;
    let (mut x, mut t) = (Vec::new(), Vec::new());
    for _ in 0..runs {
        x.push(mean_ns(xdp, packet, repeat)?);
        t.push(mean_ns(tc, packet, repeat)?);
    }
    drop(maps);
    Ok(TestRunCost {
        xdp_drop_ns: crate::report::Figure::of(&x).median,
        tc_drop_ns: crate::report::Figure::of(&t).median,
        repeat,
    })
}
