//! `cairn iso customize` and `cairn iso show`: install settings on a built
//! installer.iso (builder::iso_customize does the work).

use std::path::PathBuf;

use anyhow::{Context, Result};
use clap::{Args, Subcommand};
use contract::install::InstallSettings;

#[derive(Subcommand)]
pub enum IsoCommand {
    /// Write install settings into an installer.iso without rebuilding it.
    ///
    /// The signed installer UKI is not touched: the settings go into a
    /// fixed-size file on the ISO's ESP (loader/credentials/cairn-install.cred)
    /// that install mode reads and validates. Each run replaces all earlier
    /// settings (give every setting you want each time); --reset removes them.
    /// Everything is checked before anything is written.
    Customize(CustomizeArgs),
    /// Print the install settings an installer.iso carries.
    Show {
        /// The installer ISO.
        iso: PathBuf,
    },
}

#[derive(Args)]
#[command(group(clap::ArgGroup::new("target").required(true).args(["output", "in_place"])))]
pub struct CustomizeArgs {
    /// The installer ISO to customise (`cairn build` writes out/installer.iso).
    iso: PathBuf,
    /// Write the customised ISO here; the input is left as it is.
    #[arg(short, long)]
    output: Option<PathBuf>,
    /// Change the input ISO itself instead of writing a copy.
    #[arg(long)]
    in_place: bool,
    /// Install on this disk (an absolute /dev path, e.g. /dev/vdb or
    /// /dev/disk/by-id/...) instead of the one fixed disk the installer
    /// would choose or the build's cairn.install.disk=.
    #[arg(long, value_name = "DEVICE")]
    dest_device: Option<String>,
    /// Install even if the destination disk is not blank, destroying what is
    /// on it. Needs --dest-device: the installer never wipes a disk it chose.
    #[arg(long)]
    wipe: bool,
    /// A machine.toml for the installed system, replacing the one built into
    /// the installer. Checked by the same parser the node uses.
    #[arg(long, value_name = "FILE")]
    machine_config: Option<PathBuf>,
    /// Remove all settings: the ISO installs exactly as built.
    #[arg(long, conflicts_with_all = ["dest_device", "wipe", "machine_config"])]
    reset: bool,
}

pub fn run(cmd: IsoCommand) -> Result<()> {
    match cmd {
        IsoCommand::Customize(a) => customize(a),
        IsoCommand::Show { iso } => {
            let s = builder::iso_customize::read_settings(&iso)?;
            if s.is_empty() {
                println!("{}: no install settings", iso.display());
            } else {
                print!("{}", toml::to_string(&s)?);
            }
            Ok(())
        }
    }
}

fn customize(a: CustomizeArgs) -> Result<()> {
    if !a.reset && a.dest_device.is_none() && !a.wipe && a.machine_config.is_none() {
        return Err(builder::exit::Invalid(
            "nothing to customise: give --dest-device, --wipe, --machine-config or --reset".into(),
        )
        .into());
    }
    let machine_config = match &a.machine_config {
        Some(p) => {
            // Parsed here too so an error names the operator's file.
            contract::machine::MachineConfig::load(p)?;
            Some(std::fs::read_to_string(p).with_context(|| format!("reading {}", p.display()))?)
        }
        None => None,
    };
    let settings = InstallSettings {
        dest_device: a.dest_device,
        wipe: a.wipe,
        machine_config,
    };
    let output = if a.in_place {
        None
    } else {
        a.output.as_deref()
    };
    let at = builder::iso_customize::customize(&a.iso, output, &settings)?;
    let written = output.unwrap_or(&a.iso);
    if settings.is_empty() {
        eprintln!("{}: install settings removed", written.display());
    } else {
        eprintln!(
            "{}: install settings written (area at byte {at}):\n{}",
            written.display(),
            toml::to_string(&settings)?.trim_end()
        );
    }
    Ok(())
}
