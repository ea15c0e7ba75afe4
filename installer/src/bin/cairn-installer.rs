//! cairn-installer: install, upgrade, roll back and inspect cairn disks.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{Context, Result};
use clap::{Parser, Subcommand};

use installer::install::{install, InstallOptions};
use installer::upgrade::{upgrade, UpgradeOptions};
use installer::verify::load_keys;

/// Where the install media keeps its trusted keys (design.md, install media).
const MEDIA_KEYS: &str = "/payload/keys";

#[derive(Parser)]
#[command(
    name = "cairn-installer",
    version,
    after_help = contract::exit::HELP,
    about = "Install and upgrade cairn on disks and disk images"
)]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Install a release on an empty disk (or image file).
    Install {
        #[arg(long)]
        disk: PathBuf,
        #[arg(long)]
        bundle: PathBuf,
        /// Trusted manifest key (PEM); repeatable. Default: /payload/keys/*.pub.
        #[arg(long = "pubkey")]
        pubkeys: Vec<PathBuf>,
        /// Machine config copied to cairn/machine.toml on the ESP.
        #[arg(long)]
        config: Option<PathBuf>,
        /// The install media (never a target); repeatable.
        #[arg(long)]
        media: Vec<PathBuf>,
        /// Destroy existing partition tables and filesystems.
        #[arg(long)]
        wipe: bool,
        /// Print the plan and write nothing.
        #[arg(long)]
        dry_run: bool,
    },
    /// Write a new release into the inactive slot and boot it next.
    Upgrade {
        #[arg(long)]
        disk: PathBuf,
        #[arg(long)]
        bundle: PathBuf,
        /// Trusted manifest key (PEM); repeatable. Default: the running
        /// release's set, /etc/cairn/keys/*.pub (contract::trust).
        #[arg(long = "pubkey")]
        pubkeys: Vec<PathBuf>,
        #[arg(long)]
        allow_downgrade: bool,
        /// Replace systemd-boot even if the bundle's is signed for Secure Boot
        /// by a certificate the installed one is not (enroll it first).
        #[arg(long)]
        replace_loader: bool,
        #[arg(long)]
        dry_run: bool,
        /// DISK is the disk this system runs from: write only the ESP and
        /// the inactive slot, each held exclusively while written.
        #[arg(long)]
        live: bool,
    },
    /// Check an update channel once and install what it offers, live: the
    /// check the node's update agent runs (verify against the running
    /// release's keys; skip known-bad and not-newer releases).
    Update {
        /// The disk the running system booted from (or an installed image).
        #[arg(long)]
        disk: PathBuf,
        /// A machine config whose [update] section names the channel.
        #[arg(long)]
        config: PathBuf,
        /// Trusted manifest key (PEM); repeatable. Default: /etc/cairn/keys/*.pub.
        #[arg(long = "pubkey")]
        pubkeys: Vec<PathBuf>,
        /// Where the release is pulled before it is written (on disk, not
        /// tmpfs). Default: EPHEMERAL's update directory.
        #[arg(long)]
        work: Option<PathBuf>,
        /// The bad-release record. Default: STATE's.
        #[arg(long)]
        bad_releases: Option<PathBuf>,
    },
    /// Make the release in the other slot the next boot.
    Rollback {
        #[arg(long)]
        disk: PathBuf,
    },
    /// Show slots, releases and what boots next.
    Status {
        #[arg(long)]
        disk: PathBuf,
        #[arg(long)]
        json: bool,
        /// Also re-hash every slot against its release's verity root hash
        /// (reads the whole slot); exits non-zero if one is corrupt.
        #[arg(long)]
        verify: bool,
    },
}

/// `--pubkey`s, else the default set: the install media's for an install,
/// the running release's (what its rootfs trusts) for an upgrade.
fn keys(paths: Vec<PathBuf>, default_dir: &str) -> Result<Vec<signing::PublicKey>> {
    if paths.is_empty() {
        let dir = PathBuf::from(default_dir);
        return signing::keys::load_trusted_dir(&dir).with_context(|| {
            format!("no --pubkey given; loading trusted keys from {default_dir}")
        });
    }
    Ok(load_keys(&paths)?)
}

fn run(cli: Cli) -> Result<()> {
    match cli.cmd {
        Cmd::Install {
            disk,
            bundle,
            pubkeys,
            config,
            media,
            wipe,
            dry_run,
        } => {
            let opts = InstallOptions {
                trusted: keys(pubkeys, MEDIA_KEYS)?,
                disk: disk.clone(),
                bundle: bundle.clone(),
                machine_config: config,
                media,
                wipe,
                dry_run,
                loader_device_var: None,
            };
            let report = install(&opts).with_context(|| {
                format!("installing {} on {}", bundle.display(), disk.display())
            })?;
            print!("{}", report.plan);
            println!(
                "{}",
                if report.written {
                    "installed"
                } else {
                    "dry run: nothing written"
                }
            );
        }
        Cmd::Upgrade {
            disk,
            bundle,
            pubkeys,
            allow_downgrade,
            replace_loader,
            dry_run,
            live,
        } => {
            let opts = UpgradeOptions {
                live,
                trusted: keys(pubkeys, contract::trust::NODE_KEYS_DIR)?,
                disk: disk.clone(),
                bundle: bundle.clone(),
                allow_downgrade,
                replace_loader,
                dry_run,
            };
            let plan = upgrade(&opts).with_context(|| {
                format!("upgrading {} with {}", disk.display(), bundle.display())
            })?;
            print!("{plan}");
            println!(
                "{}",
                if dry_run {
                    "dry run: nothing written"
                } else {
                    "upgraded"
                }
            );
        }
        Cmd::Update {
            disk,
            config,
            pubkeys,
            work,
            bad_releases,
        } => {
            let cfg = contract::machine::MachineConfig::load(&config)?;
            let upd = cfg
                .update
                .with_context(|| format!("{}: no [update] section", config.display()))?;
            let bad_path = bad_releases.unwrap_or_else(|| {
                PathBuf::from(contract::disk::STATE_MOUNT).join(contract::update::BAD_RELEASES)
            });
            let bad = contract::update::read_bad_releases(&bad_path)
                .with_context(|| format!("reading {}", bad_path.display()))?;
            let node = installer::update::Node {
                running: installer::update::running_version(&disk)?,
                disk,
                trusted: keys(pubkeys, contract::trust::NODE_KEYS_DIR)?,
                bad,
                work: work.unwrap_or_else(|| {
                    PathBuf::from(contract::disk::EPHEMERAL_MOUNT).join(contract::update::WORK_DIR)
                }),
                now: std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .map_or(0, |d| d.as_secs()),
                progress: |m| eprintln!("{m}"),
            };
            let a = installer::update::check_once(&upd, &node);
            println!("{}", serde_json::to_string_pretty(&a)?);
            if a.outcome == contract::update::Outcome::Failed {
                anyhow::bail!("update from {} failed: {}", a.source, a.detail);
            }
        }
        Cmd::Rollback { disk } => {
            let r = installer::rollback::rollback(&disk)
                .with_context(|| format!("rolling back {}", disk.display()))?;
            for (from, to) in &r.renames {
                println!("renamed {from} -> {to}");
            }
            println!(
                "next boot: {} in {} (was {})",
                r.to_version.as_deref().unwrap_or("?"),
                r.to_slot,
                r.from_version.as_deref().unwrap_or("?")
            );
        }
        Cmd::Status { disk, json, verify } => {
            let s = installer::status::status_with(&disk, verify)
                .with_context(|| format!("reading the status of {}", disk.display()))?;
            if json {
                println!("{}", serde_json::to_string_pretty(&s)?);
            } else {
                for slot in &s.slots {
                    println!(
                        "{:<7} {} {}{}",
                        slot.name,
                        slot.partuuid,
                        if slot.versions.is_empty() {
                            "-".into()
                        } else {
                            slot.versions.join(",")
                        },
                        if slot.active { "  (active)" } else { "" }
                    );
                }
                for e in &s.entries {
                    println!(
                        "{:<32} version {:<10} slot {:<7} {}",
                        e.file,
                        e.version.as_deref().unwrap_or("?"),
                        e.slot.as_deref().unwrap_or("none"),
                        match (e.blessed, e.tries_left) {
                            (true, _) => "blessed".to_string(),
                            (false, Some(l)) => format!("{l} tries left"),
                            _ => String::new(),
                        }
                    );
                }
                match &s.next_boot {
                    Some(n) => println!("next boot: {} ({})", n.file, n.reason),
                    None => println!("next boot: nothing bootable"),
                }
                for slot in &s.slots {
                    if let Some(v) = &slot.verity {
                        println!(
                            "verity {:<7} {}{}",
                            slot.name,
                            v.state,
                            v.detail
                                .as_deref()
                                .map_or(String::new(), |d| format!(" ({d})"))
                        );
                    }
                }
            }
            let corrupt: Vec<&str> = s
                .slots
                .iter()
                .filter(|x| x.verity.as_ref().is_some_and(|v| v.state == "corrupt"))
                .map(|x| x.name.as_str())
                .collect();
            if !corrupt.is_empty() {
                return Err(installer::error::CorruptSlots {
                    disk: disk.clone(),
                    slots: corrupt.join(", "),
                }
                .into());
            }
        }
    }
    Ok(())
}

fn main() -> ExitCode {
    match run(Cli::parse()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::from(installer::error::exit_code(e.as_ref()))
        }
    }
}
