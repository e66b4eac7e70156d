use clap::Parser;
use std::path::PathBuf;

/// Node agent: turns ClusterImagePolicy/ImagePolicy into CRI-O signature policies.
#[derive(Parser, Debug)]
#[command(name = "image-policy-agent", version)]
struct Args {
    /// Main configuration file (default /etc/image-policy-agent/config.toml);
    /// drop-ins are read from /usr/lib/image-policy-agent/config.d and from
    /// config.d beside this file.
    #[arg(long)]
    config: Option<PathBuf>,
}

fn main() {
    let args = Args::parse();
    image_policy_agent::logging::init();
    if let Err(e) = image_policy_agent::daemon::run(args.config) {
        tracing::error!("{e:#}");
        eprintln!("image-policy-agent: {e:#}");
        std::process::exit(1);
    }
}
