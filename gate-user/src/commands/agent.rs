use anyhow::{bail, Context, Result};
use smtp_gate::{
    agent::{self, AgentConfig},
    bus::state::{read_status, status_file, DEFAULT_POSITION_FILE},
    cli::{AgentArgs, BusAction, BusStatusArgs},
    systemd::{journal, ServiceManager},
};

pub fn agent(args: AgentArgs) -> Result<()> {
    // SIGHUP's default action would end the agent silently before its
    // handler (agent/mod.rs) is installed.
    super::serve::ignore_early_hangups()?;
    // While no other thread exists (see commands/serve.rs).
    let manager = ServiceManager::from_env();
    journal::init_logger();
    manager.log_setup();
    agent::run(AgentConfig::load(args.config.as_deref(), &args)?, manager)
}

pub fn bus(args: BusStatusArgs) -> Result<()> {
    match args.action {
        BusAction::Status {
            json,
            config,
            bus_position_file,
        } => {
            let position_file = match (config, bus_position_file) {
                (Some(file), _) => {
                    let text = std::fs::read_to_string(&file)
                        .with_context(|| format!("reading {}", file.display()))?;
                    AgentConfig::from_toml(&text)
                        .with_context(|| format!("config file {}", file.display()))?
                        .bus_position_file
                }
                (None, Some(file)) => file,
                (None, None) => DEFAULT_POSITION_FILE.into(),
            };
            let status = match read_status(&status_file(&position_file)) {
                Ok(status) => status,
                Err(e) => bail!("{e}"),
            };
            if json {
                println!("{}", serde_json::to_string_pretty(&status)?);
            } else {
                println!("{}", status.render(smtp_gate::bus::clock::wall_ms()));
            }
            Ok(())
        }
    }
}
