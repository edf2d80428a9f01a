use anyhow::Result;
use smtp_gate::{
    cli::ServeArgs,
    serve::{self, ServeConfig},
};

pub fn serve(args: ServeArgs) -> Result<()> {
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("info")).init();
    serve::run(ServeConfig::load(args.config.as_deref(), &args)?)
}
