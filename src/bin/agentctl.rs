use clap::Parser;

fn main() {
    let cli = image_policy_agent::ctl::Cli::parse();
    match image_policy_agent::ctl::run(cli) {
        Ok(code) => std::process::exit(code),
        Err(e) => {
            eprintln!("agentctl: {e:#}");
            std::process::exit(2);
        }
    }
}
