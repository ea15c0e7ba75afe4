//! `cairn profile show`: what a profile resolves to, and from where.

use std::path::PathBuf;

use anyhow::Result;
use builder::profile::{Overrides, Profile};

#[derive(clap::Subcommand)]
pub enum ProfileCommand {
    /// Print the resolved profile (its `extends` chain merged, the command
    /// line's overrides on top) as TOML, each value commented with the file
    /// it comes from.
    Show {
        /// The profile (TOML).
        #[arg(default_value = "profiles/default.toml")]
        profile: PathBuf,
        /// As `cairn build --version`.
        #[arg(long = "version", value_name = "VERSION")]
        release_version: Option<String>,
        /// As `cairn build --output`.
        #[arg(long = "output", value_name = "LIST", value_delimiter = ',', value_parser = builder::profile::Output::parse)]
        outputs: Option<Vec<builder::profile::Output>>,
        /// As `cairn build --kernel-arg`.
        #[arg(long = "kernel-arg", value_name = "ARG")]
        kernel_args: Vec<String>,
    },
}

pub fn run(cmd: ProfileCommand) -> Result<()> {
    match cmd {
        ProfileCommand::Show {
            profile,
            release_version,
            outputs,
            kernel_args,
        } => {
            let p = Profile::load_overridden(
                &profile,
                &Overrides {
                    version: release_version,
                    outputs,
                    kernel_args,
                    ..Default::default()
                },
            )?;
            print!("{}", p.show());
        }
    }
    Ok(())
}
