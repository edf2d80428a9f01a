use anyhow::Result;
use smtp_gate::serve::{self, ServeSettings};

use crate::cli::ServeArgs;

pub fn serve(args: ServeArgs) -> Result<()> {
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("info")).init();
    let file = match &args.config {
        Some(path) => ServeSettings::from_file(path)?,
        None => ServeSettings::default(),
    };
    let dest = args.settings.dest()?;
    let flags = ServeSettings {
        listen: (!args.listen.is_empty()).then_some(args.listen),
        users: args.users,
        mail_root: args.mail_root,
        hostname: args.hostname,
        pin_dir: args.pin_dir,
        iface: args.iface,
        mode: args.attachment.mode,
        ports: args.settings.ports,
        window: args.settings.window,
        exempt: args.attachment.exempt(),
        dest,
        deny: args.settings.deny.map(Into::into),
        capacity: args.attachment.capacity,
        log_rate: args.settings.log_rate,
        allow_private_bpffs: args.attachment.allow_private_bpffs.then_some(true),
        idle_timeout: args.idle_timeout,
        max_connections: args.max_connections,
        max_connections_per_ip: args.max_connections_per_ip,
        login_failure_delay: args.login_failure_delay,
        shutdown_grace: args.shutdown_grace,
    };
    serve::run(flags.over(file).resolve()?)
}
