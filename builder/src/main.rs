use clap::{CommandFactory, Parser, Subcommand};

mod build_cmd;
mod gen_cmd;
mod inspect_cmd;
mod iso_cmd;
mod profile_cmd;
mod registry_cmd;
mod run_cmd;
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
    /// Boot an output in QEMU + OVMF, serial console on the terminal.
    Run(run_cmd::RunArgs),
    /// Show what an output is: release, disk, ISO or UKI (version, root
    /// hash, signing key, partitions, slots).
    Inspect(inspect_cmd::InspectArgs),
    /// Print a shell completion script: `cairn completions bash >
    /// /etc/bash_completion.d/cairn` (bash, zsh, fish, elvish, powershell).
    Completions {
        #[arg(value_enum)]
        shell: clap_complete::Shell,
    },
    /// Write man pages for cairn and each subcommand into DIR (cairn.1,
    /// cairn-build.1, ...): `man -l DIR/cairn-build.1`.
    Man {
        #[arg(long, value_name = "DIR")]
        out: std::path::PathBuf,
    },
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
        Command::Run(args) => run_cmd::run(args),
        Command::Inspect(args) => inspect_cmd::run(args),
        Command::Completions { shell } => {
            clap_complete::generate(shell, &mut Cli::command(), "cairn", &mut std::io::stdout());
            Ok(())
        }
        Command::Man { out } => man_pages(&out),
        Command::Iso(cmd) => iso_cmd::run(cmd),
    }
}

/// One page per command and subcommand, named as git names its own
/// (`cairn-pkg-build.1`), generated from the same clap definitions as
/// `--help`, so they cannot drift.
fn man_pages(out: &std::path::Path) -> anyhow::Result<()> {
    use anyhow::Context;
    std::fs::create_dir_all(out).with_context(|| format!("creating {}", out.display()))?;
    let mut cmd = Cli::command();
    cmd.build();
    let mut written = 0;
    let mut stack = vec![(String::from("cairn"), cmd)];
    while let Some((name, cmd)) = stack.pop() {
        let page = out.join(format!("{name}.1"));
        let mut buf = Vec::new();
        clap_mangen::Man::new(cmd.clone().name(name.clone()))
            .render(&mut buf)
            .with_context(|| format!("rendering {name}"))?;
        std::fs::write(&page, buf).with_context(|| format!("writing {}", page.display()))?;
        written += 1;
        for sub in cmd
            .get_subcommands()
            .filter(|s| !s.is_hide_set() && s.get_name() != "help")
        {
            stack.push((format!("{name}-{}", sub.get_name()), sub.clone()));
        }
    }
    eprintln!("{written} man pages written to {}", out.display());
    Ok(())
}
