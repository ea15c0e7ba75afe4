//! `cairn build` and `cairn assemble`.

use std::path::PathBuf;

use anyhow::{Context, Result};
use builder::assemble::{self, UkiSpec};
use builder::pipeline::{self, BuildOptions};
use builder::release;
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
    /// Sign the UKI and systemd-boot for Secure Boot with the db key of this
    /// key set (`cairn secureboot-keygen`), whatever the profile says.
    #[arg(long, value_name = "DIR")]
    secure_boot_keys: Option<PathBuf>,
    /// Print the summary as JSON on stdout (for CI).
    #[arg(long)]
    json: bool,
    /// Build twice in fresh temporary directories (other paths, umask and
    /// TZ, empty stage caches) and compare every output byte for byte.
    #[arg(long)]
    check_reproducible: bool,
}

pub fn build(a: BuildArgs) -> Result<()> {
    if a.check_reproducible {
        return check_reproducible(&a);
    }
    let summary = pipeline::build(&BuildOptions {
        profile: a.profile,
        out: a.out,
        key: a.key,
        cache: a.cache,
        stage_cache: None,
        repo: a.repo,
        secure_boot_keys: a.secure_boot_keys,
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
            cmdline: assemble::installed_cmdline(&a.cmdline, &rootfs),
            osrel,
        },
    )?;
    std::fs::copy(&uki, a.out.join("uki.efi"))?;
    std::fs::copy(&rootfs.image, a.out.join("rootfs.img"))?;
    // The disk is an install of a signed bundle, exactly as `cairn build`
    // makes it; the version comes from the UKI's own .osrel.
    let facts = installer::verify::uki_facts(&uki)?;
    let (key_path, _) = builder::pipeline::signing_key(a.key.as_deref(), None)?;
    let key = signing::PrivateKey::load(&key_path)?;
    let pubkey = signing::PublicKey::load(&signing::keys::pub_path_for(&key_path))?;
    let total = builder::profile::Size::parse(&a.disk_size).map_err(anyhow::Error::msg)?;
    let boot = (rootfs.image_size + (64 << 20)).next_multiple_of(1 << 20);
    let bundle = release::bundle_dir(
        &mut stages,
        &release::BundleInputs {
            uki: &uki,
            rootfs_img: &rootfs.image,
            systemd_boot: &a.systemd_boot,
            layout: (128 << 20, boot, 64 << 20),
            meta: signing::ReleaseMeta {
                os_name: "cairn".into(),
                os_version: semver::Version::parse(&facts.version)
                    .with_context(|| format!("UKI version {:?} is not semver", facts.version))?,
                profile: "assemble".into(),
                source_date_epoch: a.source_date_epoch,
                arch: "x86_64".into(),
                inputs: Default::default(),
                verity_root_hash: Some(rootfs.root_hash.clone()),
            },
            key: &key,
        },
    )?;
    release::installed_disk(&bundle, &pubkey, None, total.0, &a.out.join("disk.raw"))?;
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

fn check_reproducible(a: &BuildArgs) -> Result<()> {
    // One signing key for both builds: the signature is part of the output.
    let keydir = tempfile::tempdir()?;
    let key = match &a.key {
        Some(k) => k.clone(),
        None => {
            let k = keydir.path().join("repro.key");
            signing::PrivateKey::generate()?.write_new(&k)?;
            k
        }
    };
    let mut outs = Vec::new();
    let runs: [(&str, u32, &str); 2] =
        [("a", 0o022, "UTC"), ("b-other-path", 0o077, "Asia/Kolkata")];
    let mut temps = Vec::new();
    for (name, umask, tz) in runs {
        let dir = tempfile::Builder::new()
            .prefix(&format!("cairn-repro-{name}-"))
            .tempdir()?;
        // SAFETY: single-threaded here; umask and TZ only affect this process.
        unsafe {
            libc::umask(umask);
            std::env::set_var("TZ", tz);
        }
        eprintln!(
            "reproducibility build {name}: {} (umask {umask:03o}, TZ={tz})",
            dir.path().display()
        );
        pipeline::build(&BuildOptions {
            profile: a.profile.clone(),
            out: dir.path().join("out"),
            key: Some(key.clone()),
            cache: a.cache.clone(),
            stage_cache: Some(dir.path().join("stages")),
            repo: a.repo.clone(),
            secure_boot_keys: a.secure_boot_keys.clone(),
        })?;
        outs.push(dir.path().join("out"));
        temps.push(dir);
    }
    unsafe {
        libc::umask(0o022);
    }
    // Every output file, `oci/` included; hidden bookkeeping (.cairn-outputs.json:
    // mtimes and inode numbers of this machine) is not an output.
    fn files(root: &std::path::Path, rel: &std::path::Path, v: &mut Vec<String>) -> Result<()> {
        for e in std::fs::read_dir(root.join(rel))? {
            let e = e?;
            let name = e.file_name().to_string_lossy().into_owned();
            if name.starts_with('.') {
                continue;
            }
            let r = rel.join(&name);
            if e.file_type()?.is_dir() {
                files(root, &r, v)?;
            } else {
                v.push(r.to_string_lossy().into_owned());
            }
        }
        Ok(())
    }
    let names = |d: &std::path::Path| -> Result<Vec<String>> {
        let mut v = Vec::new();
        files(d, std::path::Path::new(""), &mut v)?;
        v.sort();
        Ok(v)
    };
    let (na, nb) = (names(&outs[0])?, names(&outs[1])?);
    if na != nb {
        anyhow::bail!("the two builds produced different file sets: {na:?} vs {nb:?}");
    }
    for n in &na {
        let (pa, pb) = (outs[0].join(n), outs[1].join(n));
        let (ha, hb) = (signing::hash_file(&pa)?.1, signing::hash_file(&pb)?.1);
        if ha != hb {
            let off = first_difference(&pa, &pb)?;
            anyhow::bail!(
                "NOT reproducible: {n} differs ({} vs {}), first difference at byte offset {off}",
                ha.to_hex(),
                hb.to_hex()
            );
        }
        println!("{:<20} {}  identical", n, ha.to_hex());
    }
    println!(
        "reproducible: {} outputs identical across both builds",
        na.len()
    );
    Ok(())
}

fn first_difference(a: &std::path::Path, b: &std::path::Path) -> Result<u64> {
    use std::io::Read;
    let (mut fa, mut fb) = (std::fs::File::open(a)?, std::fs::File::open(b)?);
    let (mut ba, mut bb) = (vec![0u8; 1 << 16], vec![0u8; 1 << 16]);
    let mut off = 0u64;
    loop {
        let na = fa.read(&mut ba)?;
        let nb = fb.read(&mut bb)?;
        let n = na.min(nb);
        if let Some(i) = (0..n).find(|&i| ba[i] != bb[i]) {
            return Ok(off + i as u64);
        }
        if na != nb || n == 0 {
            return Ok(off + n as u64);
        }
        off += n as u64;
    }
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
}

pub fn secureboot_keygen(a: SecureBootKeygenArgs) -> Result<()> {
    if a.out.join("db.key").exists() {
        anyhow::bail!(
            "{} already holds a key set: refusing to overwrite",
            a.out.display()
        );
    }
    std::fs::create_dir_all(&a.out)?;
    let epoch = std::env::var("SOURCE_DATE_EPOCH")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1_735_689_600);
    signing::secureboot::SecureBootKeys::generate(&a.owner, a.bits, epoch)?.write(&a.out)?;
    println!(
        "wrote PK, KEK and db to {}; enroll them in the firmware and set secure_boot.keys",
        a.out.display()
    );
    Ok(())
}
