//! The release bundle (docs/design.md "Release manifest and signature",
//! "Install media"): its file names, their archive order, the installer
//! media's payload paths and the OCI media types of the bundle artifact.

/// The manifest and its signature are the signing crate's format; their
/// names and size bound live there.
pub use signing::verify::{
    MANIFEST_FILE as MANIFEST, MAX_MANIFEST_BYTES, SIGNATURE_FILE as SIGNATURE,
};
pub const UKI: &str = "uki.efi";
pub const ROOTFS: &str = "rootfs.img";
pub const BOOTLOADER: &str = "systemd-bootx64.efi";
pub const LAYOUT: &str = "layout.json";

/// The bundle as one file, as `cairn build` writes it.
pub const UPDATE_TAR: &str = "update.tar";

/// Artifacts every bundle manifest must list.
pub const REQUIRED: [&str; 4] = [UKI, ROOTFS, BOOTLOADER, LAYOUT];

/// The files of a bundle in archive order: the manifest and its signature
/// first, so a streaming reader verifies them before it reads anything the
/// manifest describes.
pub const FILES: [&str; 6] = [MANIFEST, SIGNATURE, UKI, ROOTFS, BOOTLOADER, LAYOUT];

/// The installer UKI's initramfs carries the bundle under this directory,
/// plus, inside it, `keys/*.pub` (trusted manifest keys) and an optional
/// machine config.
pub const PAYLOAD_DIR: &str = "payload";
pub const PAYLOAD_KEYS: &str = "keys";
pub const PAYLOAD_MACHINE_CONFIG: &str = "machine.toml";

/// OCI: the bundle as one artifact manifest, one layer per file.
pub mod oci {
    /// The OCI image-spec names the layout writer uses; registry clients
    /// check what they fetch against the same constants.
    pub use artifacts::oci::{ANNOTATION_TITLE, EMPTY_MEDIA_TYPE, MANIFEST_MEDIA_TYPE};

    pub const ARTIFACT_TYPE: &str = "application/vnd.cairn.bundle.v1";
    pub const MEDIA_MANIFEST: &str = "application/vnd.cairn.manifest.v1+json";
    pub const MEDIA_SIGNATURE: &str = "application/vnd.cairn.manifest.signature.v1";
    pub const MEDIA_UKI: &str = "application/vnd.cairn.uki.v1";
    pub const MEDIA_ROOTFS: &str = "application/vnd.cairn.rootfs.v1";
    pub const MEDIA_BOOTLOADER: &str = "application/vnd.cairn.bootloader.v1";
    pub const MEDIA_LAYOUT: &str = "application/vnd.cairn.layout.v1+json";
    pub const ANNOTATION_VERSION: &str = "org.opencontainers.image.version";
    pub const ANNOTATION_ROOT_HASH: &str = "dev.cairn.verity.root-hash";

    /// Largest image manifest a registry client reads (the distribution
    /// spec's recommended limit); it is fetched before anything is verified.
    pub const MAX_IMAGE_MANIFEST_BYTES: u64 = 4 << 20;

    /// Writes bundle directory `bundle` as the release's OCI layout at
    /// `out` (which must not exist): one artifact manifest tagged `version`,
    /// one layer per bundle file in [`super::FILES`] order, annotated with
    /// the version and the verity root hash. `cairn build` writes `oci/`
    /// with it; tests push layouts made the same way.
    pub fn write_release_layout(
        bundle: &std::path::Path,
        out: &std::path::Path,
        version: &str,
        root_hash: &str,
        epoch: u64,
    ) -> Result<artifacts::oci::OciSummary, artifacts::oci::OciError> {
        let paths: Vec<std::path::PathBuf> = super::FILES.iter().map(|n| bundle.join(n)).collect();
        let files: Vec<(&str, &std::path::Path, &str)> = super::FILES
            .iter()
            .zip(&paths)
            .map(|(n, p)| {
                (
                    *n,
                    p.as_path(),
                    media_type(n).expect("every bundle file has one"),
                )
            })
            .collect();
        let annotations = std::collections::BTreeMap::from([
            (ANNOTATION_VERSION.to_string(), version.to_string()),
            (ANNOTATION_ROOT_HASH.to_string(), root_hash.to_string()),
        ]);
        artifacts::oci::write_layout(out, version, ARTIFACT_TYPE, &files, &annotations, epoch)
    }

    /// The media type of each bundle file.
    pub fn media_type(file: &str) -> Option<&'static str> {
        Some(match file {
            super::MANIFEST => MEDIA_MANIFEST,
            super::SIGNATURE => MEDIA_SIGNATURE,
            super::UKI => MEDIA_UKI,
            super::ROOTFS => MEDIA_ROOTFS,
            super::BOOTLOADER => MEDIA_BOOTLOADER,
            super::LAYOUT => MEDIA_LAYOUT,
            _ => return None,
        })
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn every_file_has_a_media_type_and_the_manifest_leads() {
        for f in super::FILES {
            assert!(super::oci::media_type(f).is_some(), "{f}");
        }
        assert_eq!(&super::FILES[..2], &[super::MANIFEST, super::SIGNATURE]);
        for r in super::REQUIRED {
            assert!(super::FILES.contains(&r));
        }
    }
}
