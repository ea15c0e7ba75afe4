//! `cairn build`: a profile in, signed reproducible images out.
//!
//! pkgs (cached) -> staged rootfs -> squashfs + verity -> initramfs -> UKI
//! -> installed disk, installer media, cloud images, bundle -> signed
//! manifest. Every stage is cached by the hash of its inputs.

use std::collections::BTreeMap;
use std::fs;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use artifacts::cpio::{self, Content, Extra, ExtraKind};
use artifacts::tree::{Normalize, Tree};
use indicatif::{ProgressBar, ProgressStyle};
use serde::Serialize;
use sha2::{Digest, Sha256};

use crate::assemble::{self, RootfsImage, UkiSpec};
use crate::pkgs::{default_cache_dir, Pkgs};
use crate::profile::{Output, Profile};
use crate::release;
use crate::rootfs;
use crate::stage::{KeyBuilder, StageCache, StageReport};

pub struct BuildOptions {
    pub profile: PathBuf,
    pub out: PathBuf,
    pub key: Option<PathBuf>,
    pub cache: Option<PathBuf>,
    /// Stage cache (default: `<cache>/`); packages always use `<cache>`.
    pub stage_cache: Option<PathBuf>,
    pub repo: PathBuf,
    /// Secure Boot key set that signs the UKI and systemd-boot, over the
    /// profile's `secure_boot` (keys kept outside the repository, as in CI).
    pub secure_boot_keys: Option<PathBuf>,
}

#[derive(Debug, Serialize)]
pub struct ArtifactRow {
    pub name: String,
    pub size: u64,
    pub sha256: String,
}

#[derive(Debug, Serialize)]
pub struct Summary {
    pub profile: String,
    pub version: String,
    pub root_hash: String,
    pub dev_key: bool,
    pub binaries: Vec<String>,
    pub artifacts: Vec<ArtifactRow>,
    pub stages: Vec<StageReport>,
}

/// Shows one spinner per stage; quiet when stderr is not a terminal.
pub struct Progress {
    started: Instant,
}

impl Progress {
    pub fn new() -> Self {
        Progress {
            started: Instant::now(),
        }
    }

    pub fn step<T>(&self, what: &str, f: impl FnOnce() -> Result<T>) -> Result<T> {
        let pb = ProgressBar::new_spinner();
        pb.set_style(
            ProgressStyle::with_template("{spinner} [{elapsed:>4}] {msg}")
                .unwrap_or_else(|_| ProgressStyle::default_spinner()),
        );
        pb.set_message(what.to_string());
        pb.enable_steady_tick(Duration::from_millis(200));
        let r = f();
        pb.finish_and_clear();
        tracing::info!(
            "{what}: {} ({:.1}s total)",
            if r.is_ok() { "done" } else { "failed" },
            self.started.elapsed().as_secs_f64()
        );
        r
    }
}

impl Default for Progress {
    fn default() -> Self {
        Self::new()
    }
}

/// Packages every image needs besides the profile's rootfs packages.
const BOOT_PACKAGES: &[&str] = &["kernel", "systemd-boot", "init"];

pub fn build(opts: &BuildOptions) -> Result<Summary> {
    let profile = Profile::load_with(&opts.profile, opts.secure_boot_keys.as_deref())?;
    let epoch = profile.epoch();
    let cache_root = opts.cache.clone().unwrap_or_else(default_cache_dir);
    let pkgs = Pkgs::load(&opts.repo)?
        .with_cache(cache_root.clone())
        .with_epoch(epoch);
    let mut stages = StageCache::new(opts.stage_cache.as_deref().unwrap_or(&cache_root))?;
    let progress = Progress::new();

    // 1. Packages, each cached by its own input hash.
    let mut pkg_out: BTreeMap<String, PathBuf> = BTreeMap::new();
    let mut pkg_keys: BTreeMap<String, String> = BTreeMap::new();
    let wanted = BOOT_PACKAGES
        .iter()
        .map(|s| s.to_string())
        .chain(profile.packages.iter().cloned());
    for name in wanted {
        if pkg_out.contains_key(&name) {
            continue;
        }
        let t = Instant::now();
        let key = pkgs.key(&name)?;
        let cached = pkgs.is_cached(&name)?;
        let dir = progress.step(&format!("package {name}"), || Ok(pkgs.build(&name)?))?;
        stages.reports.push(StageReport {
            name: format!("pkg:{name}"),
            key: key.clone(),
            cached,
            time: t.elapsed(),
        });
        pkg_keys.insert(name.clone(), key);
        pkg_out.insert(name, dir);
    }
    let kernel = pkg_out["kernel"].join("bzImage");
    let stub = pkg_out["systemd-boot"].join("linuxx64.efi.stub");
    let sdboot = pkg_out["systemd-boot"].join("systemd-bootx64.efi");
    let init = pkg_out["init"].join("init");

    // 2. The staged rootfs tree: what goes in is a function of the packages
    //    and the profile, so that is its key.
    let osrel = rootfs::os_release(&profile);
    let mut k = KeyBuilder::new("rootfs-tree");
    k.str("osrel", &osrel);
    for name in &profile.packages {
        k.str(name, &pkg_keys[name]);
    }
    for f in &profile.files {
        k.file(&f.dst.to_string_lossy(), &f.src)?
            .str("mode", f.mode.as_deref().unwrap_or(""));
    }
    let tree_key = k.finish();
    let rootfs_pkgs: Vec<(String, PathBuf)> = profile
        .packages
        .iter()
        .map(|n| (n.clone(), pkg_out[n].clone()))
        .collect();
    let mut binaries = Vec::new();
    let tree_dir = progress.step("rootfs tree", || {
        stages.run("rootfs-tree", &tree_key, |out| {
            let staged = rootfs::stage(&profile, &rootfs_pkgs, &out.join("tree"))?;
            let list: Vec<String> = staged
                .binaries
                .iter()
                .map(|b| b.display().to_string())
                .collect();
            fs::write(out.join("binaries.txt"), list.join("\n") + "\n")?;
            Ok(())
        })
    })?;
    for l in fs::read_to_string(tree_dir.join("binaries.txt"))?.lines() {
        if !l.is_empty() {
            binaries.push(l.to_string());
        }
    }
    let tree_dir = tree_dir.join("tree");

    // 3. squashfs + verity.
    let image_key = KeyBuilder::new("rootfs-image")
        .str("tree", &tree_key)
        .str("epoch", &epoch.to_string())
        .finish();
    let rootfs = progress.step("squashfs + verity", || {
        assemble::rootfs_image(&mut stages, &image_key, &tree_dir, epoch)
    })?;

    // 4. initramfs: init alone, as /init.
    let initrd = progress.step("initramfs", || {
        initramfs(&mut stages, "initramfs", &init, &[], epoch)
    })?;

    // 5. The UKI, bound to this rootfs by its root hash.
    let cmdline = assemble::installed_cmdline(&profile.cmdline.join(" "), &rootfs);
    let uki = progress.step("UKI", || {
        assemble::uki(
            &mut stages,
            "uki",
            &UkiSpec {
                stub: &stub,
                kernel: &kernel,
                initrd: &initrd,
                cmdline: cmdline.clone(),
                osrel: osrel.clone(),
            },
        )
    })?;

    // 5b. Secure Boot: the UKI and systemd-boot signed with the db key.
    // The installer UKI is signed later from the unsigned pair: a signed
    // image cannot be signed again.
    let unsigned_sdboot = sdboot.clone();
    let (uki, sdboot) = match &profile.secure_boot {
        Some(keys) => progress.step("Secure Boot signatures", || {
            secure_boot_sign(&mut stages, keys, &uki, &sdboot)
        })?,
        None => (uki, sdboot),
    };

    // 6. Outputs.
    fs::create_dir_all(&opts.out)
        .with_context(|| format!("creating output directory {}", opts.out.display()))?;
    let out = &opts.out;
    let version = profile.version.to_string();
    let seed = {
        let mut h = Sha256::new();
        h.update(b"cairn-disk-seed\0");
        h.update(profile.name.as_bytes());
        h.update(version.as_bytes());
        h.update(rootfs.root_hash.as_bytes());
        h.finalize().to_vec()
    };
    let mut written: Vec<&'static str> = Vec::new();
    let mut state = OutputState::load(out);
    // Stage outputs live in content-keyed directories: their path is their key.
    let uki_key = uki.display().to_string();
    produce(&mut stages, &mut state, out, "uki.efi", &uki_key, || {
        publish(&uki, &out.join("uki.efi"))
    })?;
    written.push("uki.efi");
    let rootfs_key = rootfs.image.display().to_string();
    produce(
        &mut stages,
        &mut state,
        out,
        "rootfs.squashfs",
        &rootfs_key,
        || split_rootfs(&rootfs, out),
    )?;
    written.extend(["rootfs.squashfs", "rootfs.verity"]);

    // 7. The signed bundle, and every medium made from it.
    let (key_path, dev_key) = signing_key(opts.key.as_deref(), profile.signing_key.as_deref())?;
    let key = signing::PrivateKey::load(&key_path)?;
    let pubkey_path = signing::keys::pub_path_for(&key_path);
    let pubkey = signing::PublicKey::load(&pubkey_path)?;
    let meta = signing::ReleaseMeta {
        os_name: profile.os_name.clone(),
        os_version: semver::Version::parse(&version)?,
        profile: profile.name.clone(),
        source_date_epoch: epoch,
        arch: "x86_64".into(),
        inputs: pkg_keys
            .iter()
            .map(|(n, k)| (format!("pkg:{n}"), k.clone()))
            .collect(),
        verity_root_hash: Some(rootfs.root_hash.clone()),
    };
    let bundle = progress.step("bundle", || {
        release::bundle_dir(
            &mut stages,
            &release::BundleInputs {
                uki: &uki,
                rootfs_img: &rootfs.image,
                systemd_boot: &sdboot,
                layout: (
                    profile.disk.esp.0,
                    profile.disk.boot.0,
                    profile.disk.state.0,
                ),
                meta: meta.clone(),
                key: &key,
            },
        )
    })?;
    let machine_config = profile_machine_config(&profile);
    let wants = |o: Output| profile.outputs.contains(&o);
    let needs_raw = [
        Output::Raw,
        Output::Qcow2,
        Output::Vhd,
        Output::Vmdk,
        Output::Gce,
    ]
    .into_iter()
    .any(wants);
    // disk.raw is the source of every cloud image; kept only when asked for.
    let raw = if wants(Output::Raw) {
        out.join("disk.raw")
    } else {
        out.join(".disk.raw.tmp")
    };
    let raw_name = if wants(Output::Raw) {
        "disk.raw"
    } else {
        ".disk.raw.tmp"
    };
    let mut raw_key = KeyBuilder::new("disk.raw");
    raw_key
        .str("bundle", &bundle.display().to_string())
        .str("size", &profile.disk.total.0.to_string());
    if let Some(cfg) = machine_config {
        raw_key.file("machine-config", cfg)?;
    }
    let raw_key = raw_key.finish();
    if needs_raw {
        produce(&mut stages, &mut state, out, raw_name, &raw_key, || {
            progress.step("disk.raw (install of the bundle)", || {
                release::installed_disk(
                    &bundle,
                    &pubkey,
                    machine_config,
                    profile.disk.total.0,
                    &raw,
                )
            })
        })?;
        if wants(Output::Raw) {
            written.push("disk.raw");
        }
    }
    use artifacts::cloud::{gce, qcow2, vhd, vmdk};
    if wants(Output::Qcow2) {
        produce(&mut stages, &mut state, out, "disk.qcow2", &raw_key, || {
            qcow2::convert(
                &raw,
                &out.join("disk.qcow2"),
                &qcow2::Qcow2Options::default(),
            )?;
            Ok(())
        })?;
        written.push("disk.qcow2");
    }
    if wants(Output::Vhd) {
        produce(&mut stages, &mut state, out, "disk.vhd", &raw_key, || {
            vhd::convert(&raw, &out.join("disk.vhd"), epoch, &seed)?;
            Ok(())
        })?;
        written.push("disk.vhd");
    }
    if wants(Output::Vmdk) {
        produce(&mut stages, &mut state, out, "disk.vmdk", &raw_key, || {
            vmdk::convert(&raw, &out.join("disk.vmdk"), &seed)?;
            Ok(())
        })?;
        written.push("disk.vmdk");
    }
    if wants(Output::Gce) {
        produce(&mut stages, &mut state, out, "gce.tar.gz", &raw_key, || {
            gce::convert(&raw, &out.join("gce.tar.gz"), epoch)?;
            Ok(())
        })?;
        written.push("gce.tar.gz");
    }
    if !wants(Output::Raw) && needs_raw {
        // Kept (hidden) so an unchanged cloud build needs no new install.
        tracing::debug!("{} kept for the next build", raw.display());
    }
    if wants(Output::Bundle) {
        produce(
            &mut stages,
            &mut state,
            out,
            "update.tar",
            &bundle.display().to_string(),
            || release::update_tar(&bundle, &out.join("update.tar"), epoch),
        )?;
        written.push("update.tar");
    }
    if wants(Output::Oci) {
        produce(
            &mut stages,
            &mut state,
            out,
            "oci/index.json",
            &bundle.display().to_string(),
            || {
                release::oci_layout(
                    &bundle,
                    &out.join("oci"),
                    &version,
                    &rootfs.root_hash,
                    epoch,
                )
            },
        )?;
    }
    if wants(Output::Iso) {
        let payload = release::payload(&bundle, &pubkey_path, machine_config);
        let installer_initrd = progress.step("installer initramfs", || {
            initramfs(&mut stages, "installer-initramfs", &init, &payload, epoch)
        })?;
        let installer_uki = progress.step("installer UKI", || {
            assemble::uki(
                &mut stages,
                "installer-uki",
                &UkiSpec {
                    stub: &stub,
                    kernel: &kernel,
                    initrd: &installer_initrd,
                    cmdline: format!("{} cairn.mode=install", profile.cmdline.join(" ")),
                    osrel: osrel.clone(),
                },
            )
        })?;
        let installer_uki = match &profile.secure_boot {
            Some(keys) => secure_boot_sign(&mut stages, keys, &installer_uki, &unsigned_sdboot)?.0,
            None => installer_uki,
        };
        let iso_key = format!("{} {}", installer_uki.display(), sdboot.display());
        produce(
            &mut stages,
            &mut state,
            out,
            "installer.iso",
            &iso_key,
            || {
                release::installer_iso(
                    &sdboot,
                    &installer_uki,
                    &version,
                    epoch,
                    &seed,
                    &out.join("installer.iso"),
                )
            },
        )?;
        written.push("installer.iso");
    }
    // 8. The signed manifest over everything in the output directory.
    let mut mk = KeyBuilder::new("manifest");
    mk.str("meta", &serde_json::to_string(&meta)?)
        .str("key", &key.id().to_string());
    for name in &written {
        mk.str(name, &state.stamp(out, name));
    }
    let manifest_key = mk.finish();
    let signed = if state.fresh(out, "manifest.json", &manifest_key)
        && state.fresh(out, "manifest.json.sig", &manifest_key)
    {
        signing::Manifest::parse(&fs::read(out.join("manifest.json"))?)?
    } else {
        let m =
            signing::sign_dir(out, meta, &written, &key).context("signing the release manifest")?;
        state.record(out, "manifest.json", &manifest_key)?;
        state.record(out, "manifest.json.sig", &manifest_key)?;
        m
    };
    state.save(out)?;

    // Hashes from the signed manifest: nothing large is read twice.
    let mut artifacts: Vec<ArtifactRow> = signed
        .artifacts
        .iter()
        .map(|a| ArtifactRow {
            name: a.name.clone(),
            size: a.size,
            sha256: a.sha256.clone(),
        })
        .collect();
    for name in ["manifest.json", "manifest.json.sig"] {
        let (size, digest) = signing::hash_file(&out.join(name))?;
        artifacts.push(ArtifactRow {
            name: name.to_string(),
            size,
            sha256: digest.to_hex(),
        });
    }
    Ok(Summary {
        profile: profile.name.clone(),
        version,
        root_hash: rootfs.root_hash.clone(),
        dev_key,
        binaries,
        artifacts,
        stages: stages.reports,
    })
}

/// The profile's default machine config, if it ships one at the conventional
/// place, goes onto the ESP for init to import on first boot.
fn profile_machine_config(profile: &Profile) -> Option<&Path> {
    profile
        .files
        .iter()
        .find(|f| f.dst == Path::new("/usr/share/cairn/machine.toml"))
        .map(|f| f.src.as_path())
}

/// An initramfs of `init` as `/init` plus `extras` (install payload).
pub fn initramfs(
    stages: &mut StageCache,
    name: &str,
    init: &Path,
    extras: &[Extra],
    epoch: u64,
) -> Result<PathBuf> {
    let mut k = KeyBuilder::new(name);
    k.file("init", init)?.str("epoch", &epoch.to_string());
    for e in extras {
        k.str("extra", &format!("{e:?}"));
        if let ExtraKind::File(Content::Path(p)) = &e.kind {
            k.str("extra-size", &fs::metadata(p)?.len().to_string());
        }
    }
    let dir = stages.run(name, &k.finish(), |out| {
        let empty = out.join("empty");
        fs::create_dir(&empty)?;
        // The archive's root entry: its mode must not come from the umask.
        {
            use std::os::unix::fs::PermissionsExt;
            fs::set_permissions(&empty, fs::Permissions::from_mode(0o755))?;
        }
        let tree = Tree::read(&empty, Normalize::root_owned(epoch))?;
        let mut all = vec![
            Extra::file("init", 0o755, Content::Path(init.to_path_buf())),
            Extra {
                path: "dev/console".into(),
                mode: 0o600,
                kind: ExtraKind::CharDev { major: 5, minor: 1 },
            },
        ];
        // /tmp: the installer's scratch space in install mode.
        for (d, mode) in [
            ("dev", 0o755),
            ("proc", 0o755),
            ("sys", 0o755),
            ("run", 0o755),
            ("newroot", 0o755),
            ("tmp", 0o1777),
        ] {
            all.push(Extra {
                path: d.into(),
                mode,
                kind: ExtraKind::Dir,
            });
        }
        all.extend_from_slice(extras);
        let f = fs::File::create(out.join("initramfs.cpio.zst"))?;
        cpio::write_initramfs(&tree, &all, epoch, std::io::BufWriter::new(f))
            .context("writing the initramfs")?;
        fs::remove_dir(&empty)?;
        Ok(())
    })?;
    Ok(dir.join("initramfs.cpio.zst"))
}

/// Copies a cached artifact into the output directory, atomically (whether
/// it needs copying at all is `produce`'s decision).
fn publish(from: &Path, to: &Path) -> Result<()> {
    let tmp = to.with_extension("partial");
    fs::copy(from, &tmp)
        .with_context(|| format!("copying {} to {}", from.display(), tmp.display()))?;
    fs::rename(&tmp, to)?;
    Ok(())
}

/// `rootfs.squashfs` (the padded data area) and `rootfs.verity` (superblock
/// and hash tree) as separate files, for users who place them themselves.
/// Streamed: the image is as large as the rootfs.
fn split_rootfs(rootfs: &RootfsImage, out: &Path) -> Result<()> {
    let mut f = fs::File::open(&rootfs.image)
        .with_context(|| format!("opening {}", rootfs.image.display()))?;
    copy_part(
        &mut (&mut f).take(rootfs.hash_offset),
        &out.join("rootfs.squashfs"),
    )?;
    copy_part(&mut f, &out.join("rootfs.verity"))?;
    Ok(())
}

/// Writes what `r` yields to `to` through a temporary name, so an
/// interrupted build never leaves a short file under the real name.
fn copy_part(r: &mut impl Read, to: &Path) -> Result<()> {
    let tmp = to.with_extension("partial");
    let mut w = fs::File::create(&tmp).with_context(|| format!("creating {}", tmp.display()))?;
    std::io::copy(r, &mut w).with_context(|| format!("writing {}", tmp.display()))?;
    fs::rename(&tmp, to)
        .with_context(|| format!("renaming {} to {}", tmp.display(), to.display()))?;
    Ok(())
}

/// The manifest key: `--key`, else the profile's, else a development key
/// created once in the user's data directory (loudly).
pub fn signing_key(cli: Option<&Path>, profile: Option<&Path>) -> Result<(PathBuf, bool)> {
    if let Some(k) = cli.or(profile) {
        return Ok((k.to_path_buf(), false));
    }
    let dir = std::env::var_os("XDG_DATA_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".local/share")))
        .context("neither XDG_DATA_HOME nor HOME is set: pass --key")?
        .join("cairn");
    let path = dir.join("dev-signing.key");
    if !path.exists() {
        fs::create_dir_all(&dir)?;
        signing::PrivateKey::generate()?.write_new(&path)?;
    }
    tracing::warn!(
        "SIGNED WITH A DEVELOPMENT KEY ({}): do not ship these images; pass --key or set signing.key",
        path.display()
    );
    Ok((path, true))
}

pub fn print_table(s: &Summary) {
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

/// Runs an output step unless the file is already there, made from the
/// same inputs (`key`) and untouched since; records it in the stage table.
fn produce(
    stages: &mut StageCache,
    state: &mut OutputState,
    out: &Path,
    name: &str,
    key: &str,
    f: impl FnOnce() -> Result<()>,
) -> Result<()> {
    let t = Instant::now();
    let cached = state.fresh(out, name, key);
    if !cached {
        f().with_context(|| format!("writing {name}"))?;
        state.record(out, name, key)?;
    }
    stages.reports.push(StageReport {
        name: name.to_string(),
        key: String::new(),
        cached,
        time: t.elapsed(),
    });
    Ok(())
}

/// `out/.cairn-outputs.json`: per output file, the key of the inputs it was
/// made from and the size and mtime it had then. A file someone changed or
/// replaced is made again.
#[derive(Default, Serialize, serde::Deserialize)]
struct OutputState(BTreeMap<String, (String, String)>);

const OUTPUT_STATE: &str = ".cairn-outputs.json";

impl OutputState {
    fn load(out: &Path) -> Self {
        fs::read(out.join(OUTPUT_STATE))
            .ok()
            .and_then(|b| serde_json::from_slice(&b).ok())
            .unwrap_or_default()
    }

    fn stamp(&self, out: &Path, name: &str) -> String {
        use std::os::unix::fs::MetadataExt;
        fs::metadata(out.join(name))
            .map(|m| format!("{} {}.{} {}", m.len(), m.mtime(), m.mtime_nsec(), m.ino()))
            .unwrap_or_default()
    }

    fn fresh(&self, out: &Path, name: &str, key: &str) -> bool {
        let stamp = self.stamp(out, name);
        !stamp.is_empty() && self.0.get(name) == Some(&(key.to_string(), stamp))
    }

    fn record(&mut self, out: &Path, name: &str, key: &str) -> Result<()> {
        let stamp = self.stamp(out, name);
        if stamp.is_empty() {
            bail!("{} was not written", out.join(name).display());
        }
        self.0.insert(name.to_string(), (key.to_string(), stamp));
        Ok(())
    }

    fn save(&self, out: &Path) -> Result<()> {
        fs::write(out.join(OUTPUT_STATE), serde_json::to_vec_pretty(self)?)?;
        Ok(())
    }
}

/// Authenticode-signs a UKI and systemd-boot with the db key in `keys`
/// (`cairn secureboot-keygen` makes a set). Cached by inputs and certificate.
fn secure_boot_sign(
    stages: &mut StageCache,
    keys: &Path,
    uki: &Path,
    sdboot: &Path,
) -> Result<(PathBuf, PathBuf)> {
    let set = signing::secureboot::SecureBootKeys::load(keys)
        .with_context(|| format!("loading the Secure Boot keys in {}", keys.display()))?;
    let mut k = KeyBuilder::new("secureboot");
    k.file("uki", uki)?
        .file("systemd-boot", sdboot)?
        .part("db-cert", set.db.cert_der());
    let dir = stages.run("secureboot", &k.finish(), |out| {
        signing::authenticode::sign_file(uki, &out.join("uki.efi"), &set.db)?;
        signing::authenticode::sign_file(sdboot, &out.join("systemd-bootx64.efi"), &set.db)?;
        Ok(())
    })?;
    Ok((dir.join("uki.efi"), dir.join("systemd-bootx64.efi")))
}
