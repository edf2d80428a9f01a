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
use clap::{Command, CommandFactory, Parser, Subcommand};
use clap_complete::Shell;
use clap_mangen::Man;

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
    let mut text = Vec::new();
    man.render(&mut text).context("rendering a man page")?;
    text.extend_from_slice(if top { MAIN_PAGE_END } else { SUBPAGE_END }.as_bytes());
    let path = dir.join(man.get_filename());
    fs::write(&path, text).with_context(|| format!("writing {}", path.display()))?;
    written.push(path);
    for sub in cmd.get_subcommands().filter(|s| !s.is_hide_set()) {
        page(sub, dir, false, written)?;
    }
    Ok(())
}

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
