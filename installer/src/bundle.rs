//! A release bundle: what `cairn build` emits for installs and upgrades.
//!
//! A directory, or a `.tar` of one (flat, no subdirectories), holding
//! `manifest.json`, `manifest.json.sig`, and the artifacts the signed
//! manifest lists: `uki.efi`, `rootfs.img`, `systemd-bootx64.efi`,
//! `layout.json`. See docs/installer.md.

use std::path::{Path, PathBuf};

use signing::{Artifact, Manifest};

use crate::error::{Error, Result};
use contract::layout::LayoutSpec;

pub use contract::bundle::{BOOTLOADER, LAYOUT, REQUIRED, ROOTFS, UKI};

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
        contract::esp::entry_base(&self.version())
    }
}

/// Largest bundle entry accepted from a tar (a rootfs is far smaller).
pub const MAX_ENTRY: u64 = 64 << 30;

/// Unpacks a `.tar` bundle (as `cairn build` writes it, read with
/// `artifacts::bundle`'s strict reader: manifest first, only the bundle's
/// file names, plain files) into a temporary directory.
pub(crate) fn unpack_tar(path: &Path) -> Result<tempfile::TempDir> {
    use artifacts::bundle::{open, ReadPolicy, BUNDLE_FILES};
    let bad = |what: String| Error::Bundle {
        path: path.to_path_buf(),
        what,
    };
    let policy = ReadPolicy {
        allowed: BUNDLE_FILES.iter().map(|s| s.to_string()).collect(),
        max_entry_size: MAX_ENTRY,
        first: Some(signing::MANIFEST_FILE.to_string()),
    };
    let mut ar = open(path, policy).map_err(|e| bad(format!("opening the tar: {e}")))?;
    let dir = tempfile::tempdir().map_err(|source| Error::File {
        what: "creating a directory to unpack the bundle in",
        path: std::env::temp_dir(),
        source,
    })?;
    while let Some(mut entry) = ar.next_entry().map_err(|e| bad(e.to_string()))? {
        // The reader allows only the bundle's own plain names.
        let out = dir.path().join(entry.name());
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
