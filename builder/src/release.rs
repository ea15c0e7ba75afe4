//! The release: a signed bundle (what the installer takes), and the media
//! made from it. `disk.raw` is literally an install of the bundle into a
//! sparse image, so a built disk and an installed disk cannot drift apart.

use std::fs;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use artifacts::cpio::{Content, Extra};
use artifacts::fat::{self, FatFile, FatSource, FormatOptions};
use artifacts::{bundle, iso};
use contract::bundle::{self as names, PAYLOAD_DIR, PAYLOAD_KEYS, PAYLOAD_MACHINE_CONFIG};
use contract::esp;
use contract::layout::LayoutSpec;
use installer::install::{install, InstallOptions};

use crate::stage::{KeyBuilder, StageCache};

/// Inputs of a release bundle.
pub struct BundleInputs<'a> {
    pub uki: &'a Path,
    pub rootfs_img: &'a Path,
    pub systemd_boot: &'a Path,
    /// (esp, boot, state) in bytes.
    pub layout: (u64, u64, u64),
    pub meta: signing::ReleaseMeta,
    pub key: &'a signing::PrivateKey,
}

/// The signed bundle directory (docs/installer.md), cached.
pub fn bundle_dir(stages: &mut StageCache, b: &BundleInputs) -> Result<PathBuf> {
    let layout = LayoutSpec {
        esp: b.layout.0,
        boot: b.layout.1,
        state: b.layout.2,
    }
    .to_json();
    let mut k = KeyBuilder::new("bundle");
    k.file("uki", b.uki)?
        .file("rootfs", b.rootfs_img)?
        .file("systemd-boot", b.systemd_boot)?
        .str("layout", &layout)
        .str("meta", &serde_json::to_string(&b.meta)?)
        .str("key", &b.key.id().to_string());
    stages.run("bundle", &k.finish(), |out| {
        fs::copy(b.uki, out.join(names::UKI))?;
        fs::copy(b.rootfs_img, out.join(names::ROOTFS))?;
        fs::copy(b.systemd_boot, out.join(names::BOOTLOADER))?;
        fs::write(out.join(names::LAYOUT), &layout)?;
        signing::sign_dir(out, b.meta.clone(), &names::REQUIRED, b.key)
            .context("signing the bundle manifest")?;
        Ok(())
    })
}

/// `disk.raw`: the bundle installed into a fresh sparse image of `size` bytes.
pub fn installed_disk(
    bundle: &Path,
    pubkey: &signing::PublicKey,
    machine_config: Option<&Path>,
    size: u64,
    out: &Path,
) -> Result<()> {
    let tmp = out.with_extension("partial");
    let _ = fs::remove_file(&tmp);
    fs::File::create(&tmp)?
        .set_len(size)
        .with_context(|| format!("creating sparse {}", tmp.display()))?;
    install(&InstallOptions {
        disk: tmp.clone(),
        bundle: bundle.to_path_buf(),
        trusted: vec![pubkey.clone()],
        machine_config: machine_config.map(Path::to_path_buf),
        media: Vec::new(),
        wipe: false,
        dry_run: false,
        // A build host's own boot variables say nothing about this image.
        loader_device_var: Some(PathBuf::from("/nonexistent/cairn-build")),
    })
    .with_context(|| format!("installing the bundle into {}", tmp.display()))?;
    fs::rename(&tmp, out)?;
    Ok(())
}

fn bundle_files(bundle: &Path) -> Vec<(&'static str, PathBuf)> {
    names::FILES.iter().map(|n| (*n, bundle.join(n))).collect()
}

/// `update.tar`: the bundle as one file, manifest first.
pub fn update_tar(bundle: &Path, out: &Path, epoch: u64) -> Result<()> {
    let files = bundle_files(bundle);
    let refs: Vec<(&str, &Path)> = files.iter().map(|(n, p)| (*n, p.as_path())).collect();
    bundle::write_tar(out, &refs, epoch).context("writing update.tar")?;
    Ok(())
}

/// `oci/`: the bundle as an OCI artifact, tagged with the version.
pub fn oci_layout(
    bundle: &Path,
    out: &Path,
    version: &str,
    root_hash: &str,
    epoch: u64,
) -> Result<()> {
    if out.exists() {
        fs::remove_dir_all(out).with_context(|| format!("removing old {}", out.display()))?;
    }
    names::oci::write_release_layout(bundle, out, version, root_hash, epoch)
        .context("writing the OCI layout")?;
    Ok(())
}

/// The installer initramfs payload: the bundle, the trusted key, and an
/// optional machine config (docs/design.md "Install media").
pub fn payload(bundle: &Path, pubkey: &Path, machine_config: Option<&Path>) -> Vec<Extra> {
    let mut extras: Vec<Extra> = bundle_files(bundle)
        .into_iter()
        .map(|(n, p)| Extra::file(&format!("{PAYLOAD_DIR}/{n}"), 0o444, Content::Path(p)))
        .collect();
    extras.push(Extra::file(
        &format!("{PAYLOAD_DIR}/{PAYLOAD_KEYS}/release.pub"),
        0o444,
        Content::Path(pubkey.to_path_buf()),
    ));
    if let Some(cfg) = machine_config {
        extras.push(Extra::file(
            &format!("{PAYLOAD_DIR}/{PAYLOAD_MACHINE_CONFIG}"),
            0o444,
            Content::Path(cfg.to_path_buf()),
        ));
    }
    extras
}

/// `installer.iso`: El Torito + GPT hybrid whose ESP holds systemd-boot and
/// the installer UKI.
pub fn installer_iso(
    systemd_boot: &Path,
    installer_uki: &Path,
    version: &str,
    epoch: u64,
    seed: &[u8],
    out: &Path,
) -> Result<()> {
    let work = out.with_extension("esp.partial");
    let uki_len = fs::metadata(installer_uki)?.len();
    let sd_len = fs::metadata(systemd_boot)?.len();
    // Room for both files plus FAT overhead, never below the FAT32 minimum.
    let size = (uki_len + sd_len + (8 << 20))
        .max(fat::minimum_size())
        .next_multiple_of(1 << 20);
    let files = vec![
        FatFile {
            path: esp::LOADER.into(),
            source: FatSource::Host(systemd_boot.to_path_buf()),
        },
        FatFile {
            path: esp::LOADER_CONF.into(),
            source: FatSource::Bytes(esp::LOADER_CONF_TEXT.as_bytes().to_vec()),
        },
        FatFile {
            path: esp::installer_entry(version),
            source: FatSource::Host(installer_uki.to_path_buf()),
        },
        // The install settings area `cairn iso customize` rewrites in place
        // (contract::install): empty, so the build stays reproducible, and
        // written whole by the FAT writer, so it is one contiguous run.
        FatFile {
            path: contract::install::ESP_PATH.into(),
            source: FatSource::Bytes(contract::install::empty_area()),
        },
    ];
    let _ = fs::remove_file(&work);
    fat::format_path(
        &work,
        &FormatOptions {
            size,
            label: "CAIRN".into(),
            seed: seed.to_vec(),
            epoch,
        },
        &files,
    )
    .context("writing the installer ESP image")?;
    let volume_id = format!("CAIRN_{}", version.replace(['.', '-', '+'], "_")).to_uppercase();
    iso::write(
        out,
        &iso::IsoOptions {
            volume_id: volume_id.chars().take(32).collect(),
            epoch,
            seed: seed.to_vec(),
        },
        &work,
        &[],
    )
    .context("writing installer.iso")?;
    fs::remove_file(&work)?;
    Ok(())
}
