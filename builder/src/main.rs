use clap::{Parser, Subcommand};

mod sign_cmd;

/// cairn: build reproducible, signed, immutable OS images.
#[derive(Parser)]
#[command(name = "cairn", version)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Package layer: pinned sources, cached builds (see pkgs/README.md).
    Pkg(builder::pkgs::cli::PkgArgs),
    #[command(flatten)]
    Sign(sign_cmd::SignCommand),
}

fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .with_writer(std::io::stderr)
        .init();
    match Cli::parse().command {
        Command::Pkg(args) => builder::pkgs::cli::run(args),
        Command::Sign(cmd) => sign_cmd::run(cmd),
    }
}
