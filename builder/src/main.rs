#[allow(dead_code)] // used by the build pipeline, landing next
mod profile;
#[allow(dead_code)]
mod stage;
#[allow(dead_code)]
mod rootfs;

use clap::Parser;

mod sign_cmd;

/// cairn: build reproducible, signed, immutable OS images.
#[derive(Parser)]
#[command(name = "cairn", version)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(clap::Subcommand)]
enum Command {
    #[command(flatten)]
    Sign(sign_cmd::SignCommand),
}

fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .with_writer(std::io::stderr)
        .init();
    match Cli::parse().command {
        Command::Sign(cmd) => sign_cmd::run(cmd),
    }
}
