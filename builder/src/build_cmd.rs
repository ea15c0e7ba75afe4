//! `cairn build`, `cairn assemble` and `cairn secureboot-keygen`: arguments
//! in, the library's result printed.

use std::path::PathBuf;

use anyhow::{bail, Context, Result};
use builder::assemble::{self, AssembleOptions};
use builder::pipeline::{self, BuildOptions, Summary};
use builder::profile::Size;
use builder::repro::{self, Verdict};

/// What the command line sets over a profile (`cairn build`, `cairn
/// profile show`).
#[derive(clap::Args)]
pub struct OverrideArgs {
    /// The release's version over the profile's `os.version` (CI stamps it
    /// from a tag): MAJOR.MINOR.PATCH[-PRE].
    #[arg(long = "version", value_name = "VERSION")]
    pub release_version: Option<String>,
    /// What to produce instead of the profile's `outputs`, comma-separated
    /// (raw, iso, qcow2, vhd, vmdk, gce, bundle, oci).
    #[arg(long = "output", value_name = "LIST", value_delimiter = ',', value_parser = builder::profile::Output::parse)]
    pub outputs: Option<Vec<builder::profile::Output>>,
    /// One more kernel command line argument after the profile's; repeatable.
    #[arg(long = "kernel-arg", value_name = "ARG")]
    pub kernel_args: Vec<String>,
}

#[derive(clap::Args)]
pub struct BuildArgs {
    /// Image profile (TOML).
    #[arg(long, default_value = "profiles/default.toml")]
    profile: PathBuf,
    /// Output directory.
    #[arg(long, default_value = "out")]
    out: PathBuf,
    /// ed25519 key for the release manifest (default: the profile's, else a development key).
    #[arg(long)]
    key: Option<PathBuf>,
    /// Package and stage cache (default: the user's cache directory).
    #[arg(long, env = "CAIRN_CACHE")]
    cache: Option<PathBuf>,
    /// Repository root holding pkgs/ (default: found above the profile's
    /// files, else the current directory).
    #[arg(long)]
    repo: Option<PathBuf>,
    /// Sign the UKI and systemd-boot for Secure Boot with the db key of this
    /// key set (`cairn secureboot-keygen`), whatever the profile says.
    #[arg(long, value_name = "DIR")]
    secure_boot_keys: Option<PathBuf>,
    #[command(flatten)]
    overrides: OverrideArgs,
    /// Check everything a build checks first and print what it would do
    /// (packages to build or take from the cache, outputs); build nothing.
    #[arg(long, conflicts_with = "check_reproducible")]
    dry_run: bool,
    /// Print the summary (or the dry run's plan) as JSON on stdout (for CI).
    #[arg(long)]
    json: bool,
    /// Build twice in fresh temporary directories (other paths, umask and
    /// TZ, empty stage caches) and compare every output byte for byte.
    #[arg(long)]
    check_reproducible: bool,
}

/// The repository for `profile` when `--repo` is not given.
fn find_repo(profile: &std::path::Path) -> Result<PathBuf> {
    // Only the chain's files: the profile may need what the command line
    // adds (--secure-boot-keys) to resolve, and that is the build's to say.
    let chain = builder::profile::Profile::chain_files(profile)?;
    builder::pkgs::Pkgs::find_repo(&chain).ok_or_else(|| {
        builder::exit::Invalid(format!(
            "no cairn repository (a directory with pkgs/*/recipe.toml) above {} or in the current directory: give --repo",
            chain
                .iter()
                .map(|f| f.display().to_string())
                .collect::<Vec<_>>()
                .join(", ")
        ))
        .into()
    })
}

pub fn build(a: BuildArgs) -> Result<()> {
    let check = a.check_reproducible;
    let json = a.json;
    let repo = match a.repo {
        Some(r) => r,
        None => find_repo(&a.profile)?,
    };
    let opts = BuildOptions {
        profile: a.profile,
        out: a.out,
        key: a.key,
        cache: a.cache,
        stage_cache: None,
        repo,
        secure_boot_keys: a.secure_boot_keys,
        version: a.overrides.release_version,
        outputs: a.overrides.outputs,
        kernel_args: a.overrides.kernel_args,
    };
    if check {
        return check_reproducible(&opts);
    }
    if a.dry_run {
        let plan = pipeline::plan(&opts)?;
        if json {
            println!("{}", serde_json::to_string_pretty(&plan)?);
            return Ok(());
        }
        println!(
            "{} {}: would write {} to {}",
            plan.profile,
            plan.version,
            plan.outputs.join(", "),
            plan.out.display()
        );
        for p in &plan.packages {
            let what = if p.cached { "cached" } else { "to build" };
            println!(
                "  {:<14} {:<22} {}  {what}",
                p.name,
                p.version,
                &p.key[..12]
            );
        }
        let n = plan.packages.iter().filter(|p| !p.cached).count();
        println!("{n} package(s) to build; nothing done (--dry-run)");
        return Ok(());
    }
    let summary = pipeline::build(&opts)?;
    if json {
        println!("{}", serde_json::to_string_pretty(&summary)?);
    } else {
        print_table(&summary);
    }
    Ok(())
}

fn print_table(s: &Summary) {
    println!(
        "cairn {} (profile {}), root hash {}",
        s.version, s.profile, s.root_hash
    );
    println!(
        "rootfs binaries ({}): {}",
        s.binaries.len(),
        s.binaries.join(" ")
    );
    println!("\n{:<22} {:>14}  sha256", "artifact", "size");
    for a in &s.artifacts {
        println!("{:<22} {:>14}  {}", a.name, a.size, a.sha256);
    }
    println!("\n{:<22} {:>9}  cached", "stage", "seconds");
    for st in &s.stages {
        println!(
            "{:<22} {:>9.2}  {}",
            st.name,
            st.time.as_secs_f64(),
            if st.cached { "yes" } else { "no" }
        );
    }
    if s.dev_key {
        println!("\nWARNING: signed with a development key.");
    }
}

fn check_reproducible(opts: &BuildOptions) -> Result<()> {
    let report = repro::check(opts)?;
    for (name, sha256) in &report.identical {
        println!("{name:<20} {sha256}  identical");
    }
    if report.verdict != Verdict::Reproducible {
        bail!("{}", report.verdict);
    }
    println!(
        "reproducible: {} outputs identical across both builds",
        report.identical.len()
    );
    Ok(())
}

/// Bring your own kernel, initramfs and rootfs: the assembly stages alone.
#[derive(clap::Args)]
pub struct AssembleArgs {
    #[arg(long)]
    kernel: PathBuf,
    #[arg(long)]
    initrd: PathBuf,
    /// Root filesystem tree.
    #[arg(long)]
    rootfs: PathBuf,
    /// Kernel command line (`gpt` and cairn.rootfs=/cairn.verity= are appended).
    #[arg(long, default_value = "console=ttyS0")]
    cmdline: String,
    /// os-release for the UKI's .osrel (default: the rootfs's usr/lib/os-release).
    #[arg(long)]
    osrel: Option<PathBuf>,
    #[arg(long, default_value = "/usr/lib/systemd/boot/efi/linuxx64.efi.stub")]
    stub: PathBuf,
    #[arg(long, default_value = "/usr/lib/systemd/boot/efi/systemd-bootx64.efi")]
    systemd_boot: PathBuf,
    /// Disk image size.
    #[arg(long, default_value = "2GiB")]
    disk_size: String,
    #[arg(long, env = "SOURCE_DATE_EPOCH", default_value_t = 0)]
    source_date_epoch: u64,
    #[arg(long, env = "CAIRN_CACHE")]
    cache: Option<PathBuf>,
    /// ed25519 key for the bundle manifest (default: the development key).
    #[arg(long)]
    key: Option<PathBuf>,
    #[arg(long)]
    out: PathBuf,
}

pub fn assemble(a: AssembleArgs) -> Result<()> {
    let disk_size = Size::parse(&a.disk_size)
        .map_err(anyhow::Error::msg)
        .context("--disk-size")?;
    let done = assemble::assemble(&AssembleOptions {
        kernel: a.kernel,
        initrd: a.initrd,
        rootfs: a.rootfs,
        cmdline: a.cmdline,
        osrel: a.osrel,
        stub: a.stub,
        systemd_boot: a.systemd_boot,
        disk_size: disk_size.0,
        source_date_epoch: a.source_date_epoch,
        cache: a.cache,
        key: a.key,
        out: a.out,
    })?;
    for r in &done.stages {
        eprintln!(
            "{:<14} {:>8.2}s cached={}",
            r.name,
            r.time.as_secs_f64(),
            r.cached
        );
    }
    println!("root hash {}", done.root_hash);
    Ok(())
}

/// Generates a Secure Boot key set (PK, KEK, db) for users who bring none.
#[derive(clap::Args)]
pub struct SecureBootKeygenArgs {
    /// Directory to write PK/KEK/db .key (0600), .crt and .der into.
    #[arg(long)]
    out: PathBuf,
    /// Certificate subject prefix.
    #[arg(long, default_value = "cairn")]
    owner: String,
    #[arg(long, default_value_t = 2048)]
    bits: usize,
    /// The certificates' notBefore (seconds since 1970; no wall clock).
    #[arg(long, env = "SOURCE_DATE_EPOCH", default_value_t = 1_735_689_600)]
    not_before: u64,
}

pub fn secureboot_keygen(a: SecureBootKeygenArgs) -> Result<()> {
    signing::secureboot::SecureBootKeys::create(&a.out, &a.owner, a.bits, a.not_before)?;
    println!(
        "wrote PK, KEK and db to {}; enroll them in the firmware and set secure_boot.keys",
        a.out.display()
    );
    Ok(())
}
