use clap::Parser;

fn main() {
    let args = image_policy_agent::daemon::Args::parse();
    image_policy_agent::logging::init();
    if let Err(e) = image_policy_agent::daemon::run(args.config) {
        tracing::error!("{e:#}");
        eprintln!("image-policy-agent: {e:#}");
        std::process::exit(1);
    }
}
