//! The gate against the Linux stack: crafted frame sequences around "a
//! TCP SYN to a gated port" (fragments of every split and order, IP and
//! TCP options, IPv6 extension chains, VLAN stacks, odd length fields,
//! paged frames) are sent raw from a client namespace to the server
//! namespace, where the gate drops SYNs from clients without a grant. Any
//! SYN-ACK that comes back is a bypass: the stack accepted as a SYN
//! something the gate let through. See `gate_tests::stackdiff`.
//!
//! One test per attach mode (native XDP, generic XDP, tc), run one after
//! the other. Each sends the fixed regression shapes and 250 random cases
//! (seed 0x5ca1ab1e) through four passes: drop with no grant (any SYN-ACK
//! fails the test), monitor (the stack must accept a good share of every
//! category, or the test proves nothing), granted and to a non-gated port
//! (plausible SYNs the stack accepts must be answered), then checks that
//! ordinary traffic passes (fragmented UDP, VLAN devices, IPv6 extension
//! headers, an established connection after its grant is revoked).
//!
//! `GATE_DIFF_SEED` (decimal or 0x-hex) and `GATE_DIFF_CASES` change the
//! seed and the number of random cases; `GATE_DIFF_DUMP=DIR` writes every
//! case and what each pass saw to DIR/<mode>.txt; `cargo xtask fuzz gate`
//! runs long.
//!
//! Needs root and a built binary (`cargo build`); panics otherwise.

use std::sync::Mutex;

use gate_tests::stackdiff::{
    report::{Detail, Thresholds},
    runner::{self, Config, Mode},
};

/// The labs would compete for the two CPUs and the veth queues.
static SERIAL: Mutex<()> = Mutex::new(());

const DEFAULT_SEED: u64 = 0x5ca1_ab1e;
const DEFAULT_CASES: usize = 400;

fn env_number(name: &str) -> Option<u64> {
    let text = std::env::var(name).ok()?;
    let text = text.trim();
    let parsed = match text.strip_prefix("0x") {
        Some(hex) => u64::from_str_radix(hex, 16),
        None => text.parse(),
    };
    Some(parsed.unwrap_or_else(|e| panic!("{name}={text}: {e}")))
}

fn differential(mode: Mode) {
    let _serial = SERIAL.lock().unwrap_or_else(|p| p.into_inner());
    let config = Config::bounded(
        mode,
        env_number("GATE_DIFF_SEED").unwrap_or(DEFAULT_SEED),
        env_number("GATE_DIFF_CASES").map_or(DEFAULT_CASES, |n| n as usize),
    );
    let report = runner::run(&config, |line| eprintln!("{line}"));
    let thresholds = Thresholds::default();
    eprintln!("{}", report.summary());
    if let Some(dir) = std::env::var_os("GATE_DIFF_DUMP") {
        std::fs::create_dir_all(&dir)
            .unwrap_or_else(|e| panic!("creating {}: {e}", dir.to_string_lossy()));
        let path = std::path::Path::new(&dir).join(format!("{}.txt", mode.arg()));
        std::fs::write(
            &path,
            report.dump() + &report.render(&thresholds, Detail::ALL),
        )
        .unwrap_or_else(|e| panic!("writing {}: {e}", path.display()));
        eprintln!("every case: {}", path.display());
    }
    if !report.failures(&thresholds).is_empty() {
        // Everything (every bypass in hex) to a file; the message shows the
        // counts and a few of each shape.
        let dir = std::path::Path::new(env!("CARGO_TARGET_TMPDIR")).join("stack-differential");
        let path = dir.join(format!("{}-{:#x}.txt", mode.arg(), config.seed));
        let written = std::fs::create_dir_all(&dir)
            .and_then(|()| std::fs::write(&path, report.render(&thresholds, Detail::ALL)));
        panic!(
            "{}\n{}",
            report.render(&thresholds, Detail::BRIEF),
            match written {
                Ok(()) => format!("every bypass, in hex: {}", path.display()),
                Err(e) => format!("could not write {}: {e}", path.display()),
            }
        );
    }
}

#[test]
fn differential_native_xdp() {
    differential(Mode::Xdp);
}

#[test]
fn differential_generic_xdp() {
    differential(Mode::XdpSkb);
}

#[test]
fn differential_tc() {
    differential(Mode::Tc);
}
