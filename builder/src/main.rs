use clap::{Parser, Subcommand};

mod build_cmd;
mod gen_cmd;
mod iso_cmd;
mod profile_cmd;
mod registry_cmd;
mod sign_cmd;

/// cairn: build reproducible, signed, immutable OS images.
#[derive(Parser)]
#[command(name = "cairn", version, after_help = contract::exit::HELP)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Build a profile into signed, reproducible images.
    Build(build_cmd::BuildArgs),
    /// Inspect profiles: `cairn profile show PROFILE`.
    #[command(subcommand)]
    Profile(profile_cmd::ProfileCommand),
    /// Assemble images from a kernel, initramfs and rootfs you bring.
    Assemble(build_cmd::AssembleArgs),
    /// Generate a Secure Boot key set (PK, KEK, db).
    SecurebootKeygen(build_cmd::SecureBootKeygenArgs),
    /// Package layer: pinned sources, cached builds (see pkgs/README.md).
    Pkg(builder::pkgs::cli::PkgArgs),
    #[command(flatten)]
    Sign(sign_cmd::SignCommand),
    /// Push a build's OCI artifact (OUT_DIR/oci) to REGISTRY/REPO:TAG.
    Push(registry_cmd::PushArgs),
    /// Fetch a release from a registry into DIR, verified against --key.
    Pull(registry_cmd::PullArgs),
    /// Generate node API secrets and client configs.
    #[command(subcommand)]
    Gen(gen_cmd::GenCommand),
    /// Installer media after the build: `cairn iso customize`.
    #[command(subcommand)]
    Iso(iso_cmd::IsoCommand),
}

fn main() -> std::process::ExitCode {
    match run() {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            // As a `main` returning the error would print it (with a
            // backtrace when RUST_BACKTRACE asks), then the exit code of
            // its class (contract::exit).
            eprintln!("Error: {e:?}");
            std::process::ExitCode::from(builder::exit::code(&e))
        }
    }
}

fn run() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        // Colour only for a person at a terminal: CI logs and files get
        // plain text, and NO_COLOR (no-color.org) turns it off anywhere.
        .with_ansi(
            std::io::IsTerminal::is_terminal(&std::io::stderr())
                && std::env::var_os("NO_COLOR").is_none_or(|v| v.is_empty()),
        )
        .init();
    match Cli::parse().command {
        Command::Build(args) => build_cmd::build(args),
        Command::Assemble(args) => build_cmd::assemble(args),
        Command::Profile(cmd) => profile_cmd::run(cmd),
        Command::SecurebootKeygen(args) => build_cmd::secureboot_keygen(args),
        Command::Pkg(args) => builder::pkgs::cli::run(args),
        Command::Sign(cmd) => sign_cmd::run(cmd),
        Command::Push(args) => registry_cmd::push(args),
        Command::Pull(args) => registry_cmd::pull(args),
        Command::Gen(cmd) => gen_cmd::run(cmd),
        Command::Iso(cmd) => iso_cmd::run(cmd),
    }
}
