//! `cairn pkg ...`: kept here so main.rs only routes to it.

use std::path::PathBuf;

use anyhow::Context;
use clap::{Args, Subcommand};

use super::{default_cache_dir, Pkgs};

#[derive(Args)]
pub struct PkgArgs {
    /// Cache directory (default: $CAIRN_CACHE, $XDG_CACHE_HOME/cairn, ~/.cache/cairn).
    #[arg(long, global = true)]
    cache: Option<PathBuf>,
    /// Repository root holding pkgs/ (default: current directory).
    #[arg(long, global = true, default_value = ".")]
    repo: PathBuf,
    /// SOURCE_DATE_EPOCH given to every build (part of the cache key).
    /// Default: the profile's, so `cairn build` reuses what this builds.
    #[arg(long, global = true, env = "SOURCE_DATE_EPOCH")]
    source_date_epoch: Option<u64>,
    /// Profile whose `source_date_epoch` is the default
    /// (default: <repo>/profiles/default.toml if it exists, else epoch 0).
    #[arg(long, global = true)]
    profile: Option<PathBuf>,
    /// Parallel jobs given to build scripts as CAIRN_JOBS.
    #[arg(long, global = true)]
    jobs: Option<u32>,
    #[command(subcommand)]
    command: PkgCommand,
}

#[derive(Subcommand)]
enum PkgCommand {
    /// Show every package, its version, cache key and whether it is cached.
    List {
        /// One JSON array on stdout: name, version, key (full), cached,
        /// error (a recipe whose key cannot be computed).
        #[arg(long)]
        json: bool,
    },
    /// Download and verify a package's sources.
    Fetch { name: String },
    /// Build a package and its dependencies; prints the output directory.
    Build { name: String },
}

/// The epoch `cairn build` would give the packages: flag or environment,
/// else the profile's.
fn epoch(args: &PkgArgs) -> anyhow::Result<u64> {
    if let Some(e) = args.source_date_epoch {
        return Ok(e);
    }
    let profile = match &args.profile {
        Some(p) => p.clone(),
        None => {
            let p = args.repo.join("profiles/default.toml");
            if !p.exists() {
                return Ok(0);
            }
            p
        }
    };
    let prof = crate::profile::Profile::load(&profile)
        .with_context(|| format!("reading SOURCE_DATE_EPOCH from {}", profile.display()))?;
    tracing::debug!(epoch = prof.source_date_epoch, profile = %profile.display(), "package epoch");
    Ok(prof.source_date_epoch)
}

pub fn run(args: PkgArgs) -> anyhow::Result<()> {
    let epoch = epoch(&args)?;
    let mut pkgs = Pkgs::load(&args.repo)
        .with_context(|| format!("loading recipes under {}", args.repo.display()))?
        .with_cache(args.cache.unwrap_or_else(default_cache_dir))
        .with_epoch(epoch);
    if let Some(j) = args.jobs {
        pkgs = pkgs.with_jobs(j);
    }
    match args.command {
        PkgCommand::List { json: true } => {
            let rows: Vec<serde_json::Value> = pkgs
                .list()
                .iter()
                .map(|s| {
                    serde_json::json!({
                        "name": s.name,
                        "version": s.version,
                        "key": s.key.as_ref().ok(),
                        "cached": s.cached,
                        "error": s.key.as_ref().err().map(|e| e.to_string()),
                    })
                })
                .collect();
            println!("{}", serde_json::to_string_pretty(&rows)?);
        }
        PkgCommand::List { json: false } => {
            for s in pkgs.list() {
                let (key, state) = match &s.key {
                    Ok(k) => (&k[..12], if s.cached { "cached" } else { "-" }.to_string()),
                    Err(e) => ("?", e.to_string()),
                };
                println!("{:<16} {:<24} {key:<12} {state}", s.name, s.version);
            }
        }
        PkgCommand::Fetch { name } => pkgs.fetch(&name)?,
        PkgCommand::Build { name } => println!("{}", pkgs.build(&name)?.display()),
    }
    Ok(())
}
