//! One file per subcommand; each prints its own output.

mod attach;
mod exempt;
mod grants;
mod serve;
mod settings;
mod stats;

use anyhow::Result;
use smtp_gate::gate::privilege::require_root;

use smtp_gate::cli::Command;

pub fn run(command: Command) -> Result<()> {
    require_root("smtp-gate")?;
    match command {
        Command::Attach(args) => attach::attach(args),
        Command::Detach(args) => attach::detach(args),
        Command::Grant(args) => grants::grant(args),
        Command::Revoke(args) => grants::revoke(args),
        Command::List(args) => grants::list(args),
        Command::Stats(args) => stats::stats(args),
        Command::Exempt(args) => exempt::exempt(args),
        Command::Settings(args) => settings::settings(args),
        Command::Serve(args) => serve::serve(args),
    }
}
