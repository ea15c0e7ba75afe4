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
        #[command(flatten)]
        overrides: crate::build_cmd::OverrideArgs,
    },
}

pub fn run(cmd: ProfileCommand) -> Result<()> {
    match cmd {
        ProfileCommand::Show { profile, overrides } => {
            let p = Profile::load_overridden(
                &profile,
                &Overrides {
                    version: overrides.release_version,
                    outputs: overrides.outputs,
                    kernel_args: overrides.kernel_args,
                    ..Default::default()
                },
            )?;
            print!("{}", p.show());
        }
    }
    Ok(())
}
