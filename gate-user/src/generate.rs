//! `smtp-gate generate`: the man pages and the shell completions, made
//! from the clap definitions (cli.rs) for the Debian package (`cargo xtask
//! deb` runs the binary it packages). The subcommand is hidden: main.rs
//! adds it to the command line it parses, but it is no part of
//! [`Cli`], from which the pages and completions are made, so neither
//! they nor `--help` show it.

use std::{
    fs,
    path::{Path, PathBuf},
};

use anyhow::{Context, Result};
use clap::{Arg, ArgAction, Command, CommandFactory, Parser, Subcommand};
use clap_complete::Shell;
use clap_mangen::Man;
use roff::{bold, italic, roman, Inline, Roff};

use crate::cli::Cli;

/// The hidden subcommand's name.
pub const NAME: &str = "generate";

/// The section of every page: system administration commands and daemons
/// (the binary goes to /usr/sbin).
pub const SECTION: &str = "8";

#[derive(Parser, Debug)]
#[command(
    name = NAME,
    about = "Write the man pages or a shell's completions (for packaging)"
)]
pub struct GenerateArgs {
    #[command(subcommand)]
    pub what: What,
}

#[derive(Subcommand, Debug)]
pub enum What {
    /// Man pages of section 8: smtp-gate.8 and one per subcommand
    /// (smtp-gate-serve.8, smtp-gate-exempt-add.8, ...), as roff, not
    /// compressed.
    Man {
        /// Directory to write them into (it must exist).
        dir: PathBuf,
    },
    /// The completion script of one shell, named as clap_complete names
    /// it (bash: smtp-gate.bash, zsh: _smtp-gate, fish: smtp-gate.fish).
    Completions {
        #[arg(value_enum)]
        shell: Shell,
        /// Directory to write it into (it must exist).
        dir: PathBuf,
    },
}

/// Writes what was asked and prints each file's path on a line.
pub fn run(args: GenerateArgs) -> Result<()> {
    let written = match args.what {
        What::Man { dir } => man_pages(&dir)?,
        What::Completions { shell, dir } => vec![completions(shell, &dir)?],
    };
    for path in written {
        println!("{}", path.display());
    }
    Ok(())
}

/// The command line as documented: [`Cli`] without clap's `help`
/// subcommand (`--help` is there on every command), built, so that every
/// subcommand knows its full name (smtp-gate-exempt-add).
fn documented() -> Command {
    let mut cmd = Cli::command().disable_help_subcommand(true);
    cmd.build();
    cmd
}

/// Writes smtp-gate.8 and a page per (nested) subcommand into `dir`;
/// gives their paths, the main page's first.
pub fn man_pages(dir: &Path) -> Result<Vec<PathBuf>> {
    let cmd = documented();
    let mut written = Vec::new();
    page(&cmd, dir, true, &mut written)?;
    Ok(written)
}

fn page(cmd: &Command, dir: &Path, top: bool, written: &mut Vec<PathBuf>) -> Result<()> {
    let man = Man::new(cmd.clone())
        .title(
            cmd.get_display_name()
                .unwrap_or(cmd.get_name())
                .to_uppercase(),
        )
        .section(SECTION)
        .source(format!("smtp-gate {}", env!("CARGO_PKG_VERSION")))
        .manual("System Manager's Manual");
    let mut rendered = Vec::new();
    man.render(&mut rendered).context("rendering a man page")?;
    let rendered = String::from_utf8(rendered).context("a man page that is not UTF-8")?;
    let mut text = with_section(&rendered, "SYNOPSIS", &synopsis(cmd));
    text.push_str(daemon_sections(cmd.get_name(), top));
    text.push_str(if top { MAIN_PAGE_END } else { SUBPAGE_END });
    let path = dir.join(man.get_filename());
    fs::write(&path, text).with_context(|| format!("writing {}", path.display()))?;
    written.push(path);
    for sub in cmd.get_subcommands().filter(|s| !s.is_hide_set()) {
        page(sub, dir, false, written)?;
    }
    Ok(())
}

/// `page` (roff) with the body of its section `name` replaced by `body`.
fn with_section(page: &str, name: &str, body: &str) -> String {
    let heading = format!(".SH {name}\n");
    let Some(start) = page.find(&heading).map(|at| at + heading.len()) else {
        return page.to_string();
    };
    let end = page[start..]
        .find("\n.SH ")
        .map_or(page.len(), |at| start + at + 1);
    format!("{}{body}{}", &page[..start], &page[end..])
}

/// The SYNOPSIS as man pages write it: every option with its value
/// (`[--mail-root DIR]`; clap_mangen 0.3 gives `[--mail-root]`), a
/// repeatable one followed by `...`, the ones of a required group as a
/// choice, then the arguments and the subcommand.
fn synopsis(cmd: &Command) -> String {
    let name = cmd.get_bin_name().unwrap_or_else(|| cmd.get_name());
    let mut line = vec![bold(name)];
    let required: Vec<&clap::ArgGroup> = cmd.get_groups().filter(|g| g.is_required_set()).collect();
    let in_required = |arg: &Arg| {
        required
            .iter()
            .any(|g| g.get_args().any(|id| id == arg.get_id()))
    };
    let shown = |arg: &&Arg| !arg.is_hide_set() && !arg.is_positional();
    for group in &required {
        line.push(roman(" ("));
        let members: Vec<&Arg> = group
            .get_args()
            .filter_map(|id| cmd.get_arguments().find(|a| a.get_id() == id))
            .filter(shown)
            .collect();
        for (i, arg) in members.iter().enumerate() {
            if i > 0 {
                line.push(roman(" | "));
            }
            line.extend(option_usage(arg));
        }
        line.push(roman(")"));
    }
    for arg in cmd.get_arguments().filter(shown) {
        if in_required(arg) {
            continue;
        }
        line.push(roman(" "));
        let required = arg.is_required_set();
        if !required {
            line.push(roman("["));
        }
        line.extend(option_usage(arg));
        if !required {
            line.push(roman("]"));
        }
        if matches!(arg.get_action(), ArgAction::Append) {
            line.push(roman("..."));
        }
    }
    for arg in cmd.get_positionals().filter(|a| !a.is_hide_set()) {
        let value = value_name(arg);
        let (open, close) = if arg.is_required_set() {
            (" ", "")
        } else {
            (" [", "]")
        };
        line.extend([roman(open), italic(value), roman(close)]);
    }
    if cmd.get_subcommands().any(|s| !s.is_hide_set()) {
        line.extend([roman(" "), italic("COMMAND"), roman(" ...")]);
    }
    // Option names and values are not to be hyphenated, nor the line
    // stretched between them: left-justified, without hyphenation, from
    // here to the end of the page (whose options are names too).
    let mut roff = Roff::new();
    roff.control("nh", []).control("ad", ["l"]).text(line);
    roff.to_roff()
}

/// `--long VALUE` (or `-s VALUE`), the value in italics.
fn option_usage(arg: &Arg) -> Vec<Inline> {
    let flag = match (arg.get_long(), arg.get_short()) {
        (Some(long), _) => format!("--{long}"),
        (None, Some(short)) => format!("-{short}"),
        (None, None) => arg.get_id().to_string(),
    };
    let mut usage = vec![bold(flag)];
    if arg.get_num_args().is_some_and(|n| n.takes_values()) {
        usage.push(roman(" "));
        usage.push(italic(value_name(arg)));
    }
    usage
}

/// An argument's value as the help names it: its value name, else its
/// possible values (`xdp|xdp-skb|tc`), else its id in capitals.
fn value_name(arg: &Arg) -> String {
    if let Some(names) = arg.get_value_names() {
        return names
            .iter()
            .map(ToString::to_string)
            .collect::<Vec<_>>()
            .join(" ");
    }
    let possible: Vec<String> = arg
        .get_possible_values()
        .iter()
        .filter(|v| !v.is_hide_set())
        .map(|v| v.get_name().to_string())
        .collect();
    if possible.is_empty() {
        arg.get_id().to_string().to_uppercase()
    } else {
        possible.join("|")
    }
}

/// The sections a daemon's page has beyond its options: its signals,
/// environment, files and exit status.
fn daemon_sections(name: &str, top: bool) -> &'static str {
    match (name, top) {
        ("serve", false) => SERVE_SECTIONS,
        ("agent", false) => AGENT_SECTIONS,
        _ => "",
    }
}

/// `smtp-gate serve`'s page: what deploy/README.md says of its signals,
/// environment and files, for an operator with only the man page.
const SERVE_SECTIONS: &str = r#".SH SIGNALS
.TP
\fBSIGHUP\fR
Reload (\fBsystemctl reload smtp\-gate\fR): the config file is read again
under the same flags, and the users file, the TLS certificate and the
Dovecot hook's secret with it. What can change while the daemon runs
changes (the gate's settings, the POP3 limits and timeouts, the users,
the certificate); a key only a restart applies keeps its value, with a
warning; a file that cannot be taken changes nothing of its part. Open
sessions stay. One log line says what changed and what was refused.
The gate's settings wait up to 10 s for the pin directory's lock (an
\fBattach\fR or \fBsettings\fR from the shell holds it), then stay as
they are. Under systemd: \fBRELOADING=1\fR when it starts, \fBREADY=1\fR
when it is done, with a status line naming what it refused.
.TP
\fBSIGTERM\fR, \fBSIGINT\fR
Stop: no new connection is taken, sessions get \fB\-\-shutdown\-grace\fR
(10 s by default) to finish and are then cut without applying their
deletions; the daemon exits 0. The gate stays attached, with its grants.
.SH ENVIRONMENT
.TP
\fBRUST_LOG\fR
What is logged, as env_logger reads it (\fBinfo\fR by default; e.g.
\fBdebug\fR, \fBsmtp_gate=debug\fR).
.TP
\fBJOURNAL_STREAM\fR
Set by systemd when stderr is the journal: when it names the daemon's
stderr, each log line starts with its syslog priority (\fB<3>\fR error to
\fB<7>\fR debug) and carries no timestamp; elsewhere the log is
env_logger's, with timestamps.
.TP
\fBNOTIFY_SOCKET\fR
Set by systemd for a \fBType=notify\fR unit: the daemon says
\fBREADY=1\fR once every listener is bound and the gate is in place,
\fBRELOADING=1\fR and \fBREADY=1\fR around a reload, \fBSTOPPING=1\fR,
and a \fBSTATUS=\fR line with its logins and grants.
.TP
\fBWATCHDOG_USEC\fR, \fBWATCHDOG_PID\fR
Set by systemd for \fBWatchdogSec=\fR: \fBWATCHDOG=1\fR every half of it
(at most every 100 ms), as long as the daemon's loops (the gate's watch,
the reloader) check in; one that hangs stops it, and systemd restarts the
daemon. These three variables are removed from the environment at start:
the commands the daemon runs do not see them.
.SH FILES
.TP
\fI/etc/smtp\-gate/smtp\-gate.toml\fR
The configuration (\fB\-\-config\fR): every key is also a flag, with
\fB\-\fR for \fB_\fR; flags win.
.TP
\fI/etc/smtp\-gate/users\fR
The users (\fBusers\fR key): a Dovecot passwd\-file,
\fIuser\fR\fB:{\fR\fISCHEME\fR\fB}\fR\fIsecret\fR per line. It must be a
regular file owned by root or the daemon's user, with no access for group
or others (mode 0600): otherwise the daemon does not start, and a reload
keeps the users it has.
.TP
\fI/sys/fs/bpf/smtp\-gate\fR
The gate's pins (\fB\-\-pin\-dir\fR); the gate outlives the daemon.
.SH EXIT STATUS
0 after \fBSIGTERM\fR or \fBSIGINT\fR; 1 when the daemon cannot start (a
file or a key refused, a port it cannot listen on, a gate it cannot
attach), the reason on stderr; 2 for a command line it does not take.
"#;

/// `smtp-gate agent`'s page.
const AGENT_SECTIONS: &str = r#".SH SIGNALS
.TP
\fBSIGHUP\fR
The agent reads its configuration only at start: the signal is logged
and changes nothing (restart it to apply a change). Under systemd it
answers \fBRELOADING=1\fR and \fBREADY=1\fR.
.TP
\fBSIGTERM\fR, \fBSIGINT\fR
Stop: the agent writes its position and status and exits 0. The gate
stays attached, with its grants.
.SH ENVIRONMENT
.TP
\fBRUST_LOG\fR
What is logged, as env_logger reads it (\fBinfo\fR by default).
.TP
\fBJOURNAL_STREAM\fR
Set by systemd when stderr is the journal: each log line then starts
with its syslog priority and carries no timestamp.
.TP
\fBNOTIFY_SOCKET\fR
Set by systemd for a \fBType=notify\fR unit: \fBREADY=1\fR once the gate
is in place (the agent does not wait for the engine), \fBSTOPPING=1\fR,
and a \fBSTATUS=\fR line with the engine's state, the lag and what was
applied.
.TP
\fBWATCHDOG_USEC\fR, \fBWATCHDOG_PID\fR
Set by systemd for \fBWatchdogSec=\fR: \fBWATCHDOG=1\fR every half of it
(at most every 100 ms), as long as the bus follower and the gate's watch
check in; a follower stuck in a write to its state files stops it, and
systemd restarts the agent. These three variables are removed from the
environment at start.
.SH FILES
.TP
\fI/etc/smtp\-gate/smtp\-gate\-agent.toml\fR
The configuration (\fB\-\-config\fR): every key is also a flag; flags
win.
.TP
\fI/var/lib/smtp\-gate/bus\-position\fR
The id of the last entry applied (\fB\-\-bus\-position\-file\fR), and
beside it \fIbus\-position.status.json\fR, which \fBsmtp\-gate bus
status\fR shows.
.TP
\fBbus_password_file\fR
The engine's password, one line, with no access for group or others
(mode 0600).
.TP
\fI/sys/fs/bpf/smtp\-gate\fR
The gate's pins (\fB\-\-pin\-dir\fR); the gate outlives the agent.
.SH EXIT STATUS
0 after \fBSIGTERM\fR or \fBSIGINT\fR; 1 when the agent cannot start, the
reason on stderr; 2 for a command line it does not take.
"#;

/// The main page's last sections: the files, and where to read on.
/// (Left-justified, not hyphenated: most words there are paths.)
const MAIN_PAGE_END: &str = r#".ad l
.nh
.SH FILES
.TP
\fI/etc/smtp\-gate/smtp\-gate.toml\fR
The configuration of \fBsmtp\-gate serve\fR (every key is also a flag of
\fBsmtp\-gate\-serve\fR(8)); the example installed there explains each
key. \fBsystemctl reload smtp\-gate\fR applies it (most keys) and the users
file again.
.TP
\fI/etc/smtp\-gate/users\fR
The users who may log in to POP3 (a Dovecot passwd\-file), mode 0600,
owned by root or the daemon's user; \fI/etc/smtp\-gate/users.example\fR
shows the format.
.TP
\fI/etc/smtp\-gate/smtp\-gate\-agent.toml\fR
The configuration of \fBsmtp\-gate agent\fR, the grant bus's edge.
.TP
\fI/sys/fs/bpf/smtp\-gate\fR
The gate's pinned maps and links: the gate stays in force while the
daemon is stopped; \fBsmtp\-gate detach \-\-iface\fR \fIIF\fR removes it.
.TP
\fI/var/lib/smtp\-gate/bus\-position\fR
The agent's position in the bus's stream, and beside it
\fIbus\-position.status.json\fR, which \fBsmtp\-gate bus status\fR shows.
.SH SEE ALSO
\fBsmtp\-gate\-serve\fR(8), \fBsmtp\-gate\-agent\fR(8),
\fBsmtp\-gate\-attach\fR(8), \fBsystemctl\fR(1), \fBbpftool\fR(8);
the units \fIsmtp\-gate.service\fR and \fIsmtp\-gate\-agent.service\fR;
\fI/usr/share/doc/smtp\-gate/\fR.
"#;

const SUBPAGE_END: &str = r#".SH SEE ALSO
\fBsmtp\-gate\fR(8)
"#;

/// Writes `shell`'s completion script for smtp-gate into `dir`; gives its
/// path.
pub fn completions(shell: Shell, dir: &Path) -> Result<PathBuf> {
    let mut cmd = documented();
    let name = cmd.get_name().to_string();
    clap_complete::generate_to(shell, &mut cmd, name, dir)
        .with_context(|| format!("writing the {shell} completions into {}", dir.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Scratch(PathBuf);

    impl Scratch {
        fn new(tag: &str) -> Self {
            let dir = std::env::temp_dir()
                .join(format!("smtp-gate-generate-{tag}-{}", std::process::id()));
            let _ = fs::remove_dir_all(&dir);
            fs::create_dir_all(&dir).unwrap();
            Self(dir)
        }
    }

    impl Drop for Scratch {
        fn drop(&mut self) {
            let _ = fs::remove_dir_all(&self.0);
        }
    }

    fn names(paths: &[PathBuf]) -> Vec<String> {
        paths
            .iter()
            .map(|p| p.file_name().unwrap().to_string_lossy().into_owned())
            .collect()
    }

    #[test]
    fn a_page_for_the_command_and_each_subcommand() {
        let scratch = Scratch::new("man");
        let written = man_pages(&scratch.0).unwrap();
        let names = names(&written);
        assert_eq!(names[0], "smtp-gate.8");
        for sub in Cli::command().get_subcommands() {
            let page = format!("smtp-gate-{}.8", sub.get_name());
            assert!(names.contains(&page), "no {page} in {names:?}");
        }
        assert!(names.contains(&"smtp-gate-exempt-add.8".to_string()));
        assert!(
            !names.iter().any(|n| n.contains("help") || n.contains(NAME)),
            "{names:?}"
        );
        let main = fs::read_to_string(&written[0]).unwrap();
        assert!(main.contains(".TH SMTP-GATE 8 "), "{main}");
        assert!(main.contains("smtp\\-gate\\-serve(8)"), "{main}");
        assert!(main.contains(".SH FILES"), "{main}");
        let serve = fs::read_to_string(scratch.0.join("smtp-gate-serve.8")).unwrap();
        assert!(serve.contains("\\-\\-mail\\-root"), "{serve}");
    }

    /// The SYNOPSIS names each option's value, as OPTIONS does; a
    /// required choice is shown as one.
    #[test]
    fn the_synopsis_gives_every_option_its_value() {
        let scratch = Scratch::new("synopsis");
        man_pages(&scratch.0).unwrap();
        let synopsis_of = |page: &str| {
            let text = fs::read_to_string(scratch.0.join(page)).unwrap();
            let start = text.find(".SH SYNOPSIS\n").expect("a SYNOPSIS");
            let end = text[start..].find("\n.SH DESCRIPTION").unwrap() + start;
            text[start..end].to_string()
        };
        let serve = synopsis_of("smtp-gate-serve.8");
        for wanted in [
            "[\\fB\\-\\-mail\\-root\\fR \\fIDIR\\fR]",
            "[\\fB\\-\\-listen\\fR \\fIADDR:PORT\\fR]...",
            "[\\fB\\-\\-allow\\-private\\-bpffs\\fR]",
        ] {
            assert!(serve.contains(wanted), "no {wanted} in {serve}");
        }
        let exempt = synopsis_of("smtp-gate-exempt-add.8");
        assert!(
            exempt.ends_with(
                "[\\fB\\-\\-pin\\-dir\\fR \\fIDIR\\fR] [\\fB\\-\\-help\\fR] \\fICIDR\\fR"
            ),
            "{exempt}"
        );
        let detach = synopsis_of("smtp-gate-detach.8");
        assert!(
            detach.contains("(\\fB\\-\\-iface\\fR \\fIIF\\fR | \\fB\\-\\-all\\fR)"),
            "{detach}"
        );
    }

    /// The daemons' pages say what their signals do, which variables
    /// they read, their files and exit status; the other pages do not.
    #[test]
    fn the_daemons_pages_have_signals_environment_files_and_exit_status() {
        let scratch = Scratch::new("daemons");
        man_pages(&scratch.0).unwrap();
        let page = |name: &str| fs::read_to_string(scratch.0.join(name)).unwrap();
        for name in ["smtp-gate-serve.8", "smtp-gate-agent.8"] {
            let text = page(name);
            for wanted in [
                ".SH SIGNALS",
                "\\fBSIGHUP\\fR",
                "\\fBSIGTERM\\fR",
                ".SH ENVIRONMENT",
                "\\fBRUST_LOG\\fR",
                "\\fBNOTIFY_SOCKET\\fR",
                "\\fBWATCHDOG_USEC\\fR",
                "\\fBJOURNAL_STREAM\\fR",
                ".SH FILES",
                ".SH EXIT STATUS",
            ] {
                assert!(text.contains(wanted), "no {wanted} in {name}");
            }
            // Before SEE ALSO, which ends the page.
            assert!(text.find(".SH SIGNALS") < text.find(".SH SEE ALSO"));
        }
        assert!(page("smtp-gate-serve.8").contains("mode 0600"));
        assert!(page("smtp-gate-serve.8").contains("/etc/smtp\\-gate/users"));
        assert!(!page("smtp-gate-list.8").contains(".SH SIGNALS"));
    }

    #[test]
    fn completions_know_the_subcommands_but_not_this_one() {
        let scratch = Scratch::new("completions");
        for (shell, file) in [
            (Shell::Bash, "smtp-gate.bash"),
            (Shell::Zsh, "_smtp-gate"),
            (Shell::Fish, "smtp-gate.fish"),
        ] {
            let path = completions(shell, &scratch.0).unwrap();
            assert_eq!(path, scratch.0.join(file));
            let text = fs::read_to_string(&path).unwrap();
            assert!(
                text.contains("mail-root") && text.contains("agent"),
                "{shell}"
            );
            assert!(!text.contains(NAME), "{shell} completes `{NAME}`");
        }
    }
}
