//! `cairn build` and `cairn assemble`.

use std::path::PathBuf;

use anyhow::{Context, Result};
use builder::assemble::{self, DiskSizes, EspContent, UkiSpec};
use builder::pipeline::{self, BuildOptions};
use builder::stage::StageCache;

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
    /// Repository root holding pkgs/ (default: the current directory).
    #[arg(long, default_value = ".")]
    repo: PathBuf,
    /// Print the summary as JSON on stdout (for CI).
    #[arg(long)]
    json: bool,
}

pub fn build(a: BuildArgs) -> Result<()> {
    let summary = pipeline::build(&BuildOptions {
        profile: a.profile,
        out: a.out,
        key: a.key,
        cache: a.cache,
        repo: a.repo,
    })?;
    if a.json {
        println!("{}", serde_json::to_string_pretty(&summary)?);
    } else {
        pipeline::print_table(&summary);
    }
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
    /// Kernel command line (cairn.rootfs=/cairn.verity= are appended).
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
    #[arg(long)]
    out: PathBuf,
}

pub fn assemble(a: AssembleArgs) -> Result<()> {
    let cache = a
        .cache
        .clone()
        .unwrap_or_else(builder::pkgs::default_cache_dir);
    let mut stages = StageCache::new(&cache)?;
    std::fs::create_dir_all(&a.out)?;
    let osrel_path = a
        .osrel
        .clone()
        .unwrap_or_else(|| a.rootfs.join("usr/lib/os-release"));
    let osrel = std::fs::read_to_string(&osrel_path)
        .with_context(|| format!("reading os-release {}", osrel_path.display()))?;
    // The rootfs is the user's: key it by its content (the squashfs block
    // cache makes an unchanged tree cheap to re-key and re-pack).
    let key = tree_key(&a.rootfs, a.source_date_epoch)?;
    let rootfs = assemble::rootfs_image(&mut stages, &key, &a.rootfs, a.source_date_epoch)?;
    let uki = assemble::uki(
        &mut stages,
        "uki",
        &UkiSpec {
            stub: &a.stub,
            kernel: &a.kernel,
            initrd: &a.initrd,
            cmdline: format!("{} {}", a.cmdline, rootfs.cmdline),
            osrel,
        },
    )?;
    std::fs::copy(&uki, a.out.join("uki.efi"))?;
    std::fs::copy(&rootfs.image, a.out.join("rootfs.img"))?;
    let total = builder::profile::Size::parse(&a.disk_size).map_err(anyhow::Error::msg)?;
    assemble::installed_disk(
        &a.out.join("disk.raw"),
        DiskSizes {
            disk: total.0,
            esp: 128 << 20,
            boot: (rootfs.image_size + (64 << 20)).next_multiple_of(1 << 20),
            state: 64 << 20,
        },
        &rootfs,
        &EspContent {
            systemd_boot: &a.systemd_boot,
            ukis: vec![("cairn+3.efi".into(), uki)],
            machine_config: None,
            loader_conf: assemble::LOADER_CONF,
        },
        rootfs.root_hash.as_bytes(),
        a.source_date_epoch,
    )?;
    for r in &stages.reports {
        eprintln!(
            "{:<14} {:>8.2}s cached={}",
            r.name,
            r.time.as_secs_f64(),
            r.cached
        );
    }
    println!("root hash {}", rootfs.root_hash);
    Ok(())
}

/// A content key for a tree: paths, modes, link targets and file hashes.
fn tree_key(dir: &std::path::Path, epoch: u64) -> Result<String> {
    use artifacts::tree::{Kind, Normalize, Tree};
    let tree = Tree::read(dir, Normalize::root_owned(epoch))?;
    let mut k = builder::stage::KeyBuilder::new("byo-rootfs");
    k.str("epoch", &epoch.to_string());
    for e in &tree.entries {
        k.str("path", &e.path.to_string_lossy())
            .str("mode", &format!("{:o}", e.st_mode()));
        match &e.kind {
            Kind::File { .. } => {
                let (_, d) = signing::hash_file(&e.source)?;
                k.str("sha256", &d.to_hex());
            }
            Kind::Symlink { target } => {
                k.str("target", &target.to_string_lossy());
            }
            other => {
                k.str("kind", &format!("{other:?}"));
            }
        }
        if let Some(g) = e.link_group {
            k.str("link", &g.to_string());
        }
    }
    Ok(k.finish())
}
