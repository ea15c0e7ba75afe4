//! A release bundle: what `cairn build` emits for installs and upgrades.
//!
//! A directory, or a `.tar` of one (flat, no subdirectories), holding
//! `manifest.json`, `manifest.json.sig`, and the artifacts the signed
//! manifest lists: `uki.efi`, `rootfs.img`, `systemd-bootx64.efi`,
//! `layout.json`. See docs/installer.md.

use std::path::{Path, PathBuf};

use signing::{Artifact, Manifest};

use crate::error::{Error, Result};
use crate::layout::LayoutSpec;

pub const UKI: &str = "uki.efi";
pub const ROOTFS: &str = "rootfs.img";
pub const BOOTLOADER: &str = "systemd-bootx64.efi";
pub const LAYOUT: &str = "layout.json";
/// Artifacts every bundle's manifest must list.
pub const REQUIRED: [&str; 4] = [UKI, ROOTFS, BOOTLOADER, LAYOUT];

/// What the release's UKI says about its rootfs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UkiFacts {
    pub cmdline: String,
    pub version: String,
    /// `cairn.rootfs=`, 64 hex digits.
    pub root_hash: String,
    pub data_blocks: u64,
}

/// A verified bundle (see [`crate::verify::open_verified`]): the signature,
/// every artifact hash and the cross-checks between them all passed.
#[derive(Debug)]
pub struct Bundle {
    /// Where the artifacts are (the directory, or where the tar was unpacked).
    pub dir: PathBuf,
    /// The path the user gave.
    pub origin: PathBuf,
    pub manifest: Manifest,
    pub manifest_bytes: Vec<u8>,
    pub layout: LayoutSpec,
    pub uki: UkiFacts,
    pub(crate) _unpacked: Option<tempfile::TempDir>,
}

impl Bundle {
    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.join(name)
    }

    pub fn artifact(&self, name: &str) -> &Artifact {
        self.manifest
            .artifact(name)
            .expect("open_verified checked every required artifact is listed")
    }

    pub fn version(&self) -> String {
        self.manifest.os_version.to_string()
    }

    /// `cairn-<version>`: the UKI's name on the ESP without counter.
    pub fn entry_base(&self) -> String {
        format!("cairn-{}", self.version())
    }
}

/// Unpacks a `.tar` bundle into a temporary directory. Only plain files at
/// the top level are accepted, so nothing can land outside the directory.
pub(crate) fn unpack_tar(path: &Path) -> Result<tempfile::TempDir> {
    let bad = |what: String| Error::Bundle {
        path: path.to_path_buf(),
        what,
    };
    let file = std::fs::File::open(path).map_err(|source| Error::File {
        what: "opening bundle",
        path: path.to_path_buf(),
        source,
    })?;
    let dir = tempfile::tempdir().map_err(|source| Error::File {
        what: "creating a directory to unpack the bundle in",
        path: std::env::temp_dir(),
        source,
    })?;
    let mut ar = tar::Archive::new(file);
    let entries = ar
        .entries()
        .map_err(|e| bad(format!("not a tar archive: {e}")))?;
    for entry in entries {
        let mut entry = entry.map_err(|e| bad(format!("reading tar entry: {e}")))?;
        let name = entry
            .path()
            .map_err(|e| bad(format!("tar entry name: {e}")))?
            .into_owned();
        let name = name.strip_prefix("./").unwrap_or(&name).to_path_buf();
        if name.as_os_str().is_empty() && entry.header().entry_type().is_dir() {
            continue;
        }
        let flat = name.components().count() == 1
            && matches!(
                name.components().next(),
                Some(std::path::Component::Normal(_))
            );
        if !flat || !entry.header().entry_type().is_file() {
            return Err(bad(format!(
                "tar entry {} is not a plain file at the top level",
                name.display()
            )));
        }
        let out = dir.path().join(&name);
        let mut f = std::fs::File::create(&out).map_err(|source| Error::File {
            what: "unpacking bundle entry to",
            path: out.clone(),
            source,
        })?;
        std::io::copy(&mut entry, &mut f).map_err(|source| Error::File {
            what: "unpacking bundle entry to",
            path: out.clone(),
            source,
        })?;
    }
    Ok(dir)
}
