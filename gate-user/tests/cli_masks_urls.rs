//! The binary's command line errors never show a bus URL's password:
//! clap quotes what it refuses (an unexpected argument, a bad value), and
//! main.rs masks every URL in what it prints (bus/url.rs). No root
//! needed: nothing gets past the parsing.

use std::process::Command;

fn run(args: &[&str]) -> (i32, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_smtp-gate"))
        .args(args)
        .output()
        .expect("running smtp-gate");
    (
        out.status.code().expect("an exit code"),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn a_url_clap_refuses_is_shown_without_its_password() {
    for args in [
        // Forgot --bus: an unexpected argument, quoted by clap.
        &["agent", "--iface", "eth0", "redis://edge:Pw1@engine"][..],
        &[
            "agent",
            "--iface",
            "eth0",
            "rediss://edge:Pw1/Pw2@engine:6380",
        ],
        // A value clap refuses for another flag.
        &["agent", "--bus-timeout", "redis://edge:Pw1@engine"],
        // --bus's own parser.
        &["serve", "--bus", "redis://:Pw1#Pw2@engine"],
    ] {
        let (code, stderr) = run(args);
        assert_eq!(code, 2, "{args:?}: {stderr}");
        assert!(stderr.contains("error:"), "{args:?}: {stderr}");
        for piece in ["Pw1", "Pw2"] {
            assert!(!stderr.contains(piece), "{args:?}: {stderr}");
        }
        assert!(stderr.contains(":***@engine"), "{args:?}: {stderr}");
    }
    // Help and errors without a URL are clap's own.
    let (code, stderr) = run(&["agent", "--no-such-flag"]);
    assert_eq!(code, 2);
    assert!(stderr.contains("--no-such-flag"), "{stderr}");
}
