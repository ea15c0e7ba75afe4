//! A cairn release in a registry, fetched the way the installer reads a
//! bundle (installer/src/bundle.rs): the signed manifest and its signature
//! first, each bounded to `MAX_MANIFEST_BYTES`, verified against the trusted
//! keys before any other blob is asked for; then only the artifacts the
//! signed manifest lists, each streamed with its signed size and sha256
//! checked as it arrives. The image manifest, tags and annotations only say
//! where things are; an annotation that disagrees with the signed manifest
//! is an error.

use std::collections::BTreeMap;
use std::fs::{self, File};
use std::io::{Read, Write};
use std::path::{Path, PathBuf};

use contract::bundle::{self, oci, MAX_MANIFEST_BYTES};
use signing::{Manifest, PublicKey};

use crate::blob::BlobReader;
use crate::client::Client;
use crate::error::{Error, Result};
use crate::image::{Descriptor, ImageManifest};
use crate::reference::Reference;

/// Copy buffer for streaming artifacts to files.
const COPY_BUF: usize = 1 << 20;

/// A release whose signed manifest verified. Artifacts are fetched on
/// demand through [`VerifiedRelease::artifact`].
pub struct VerifiedRelease {
    client: Client,
    reference: Reference,
    /// `sha256:<hex>` of the image manifest the registry served.
    pub image_digest: String,
    pub manifest: Manifest,
    /// The exact bytes the signature covers.
    pub manifest_bytes: Vec<u8>,
    pub signature_bytes: Vec<u8>,
    layers: BTreeMap<String, Descriptor>,
}

/// Fetches the image manifest, then the signed bundle manifest and its
/// signature, and verifies them. No artifact blob is requested.
pub fn fetch_verified_manifest(
    client: &Client,
    reference: &Reference,
    trusted: &[PublicKey],
) -> Result<VerifiedRelease> {
    VerifiedRelease::fetch(client, reference, trusted)
}

impl VerifiedRelease {
    pub fn fetch(
        client: &Client,
        reference: &Reference,
        trusted: &[PublicKey],
    ) -> Result<VerifiedRelease> {
        let repo = reference.repo.as_str();
        let bad = |why: String| Error::BadImage {
            peer: client.peer().to_string(),
            repo: repo.to_string(),
            reference: reference.reference.clone(),
            why,
        };
        let fetched = client.get_manifest(
            repo,
            &reference.reference,
            &[oci::MANIFEST_MEDIA_TYPE],
            oci::MAX_IMAGE_MANIFEST_BYTES,
        )?;
        let image = ImageManifest::parse(&fetched.bytes).map_err(bad)?;
        let layers = image.bundle_layers().map_err(bad)?;
        let small = |name: &str| -> Result<Vec<u8>> {
            let l = &layers[name];
            client.get_blob_bounded(repo, &l.digest, l.size, MAX_MANIFEST_BYTES, name)
        };
        let manifest_bytes = small(bundle::MANIFEST)?;
        let signature_bytes = small(bundle::SIGNATURE)?;
        let manifest = signing::verify_manifest(&manifest_bytes, &signature_bytes, trusted)
            .map_err(|e| Error::Verify {
                peer: client.peer().to_string(),
                repo: repo.to_string(),
                reference: reference.reference.clone(),
                source: Box::new(e),
            })?;
        tracing::info!(
            "{reference}: signed manifest verified (version {}, key {})",
            manifest.os_version,
            manifest.key_id
        );
        let release = VerifiedRelease {
            client: client.clone(),
            reference: reference.clone(),
            image_digest: fetched.digest,
            manifest,
            manifest_bytes,
            signature_bytes,
            layers,
        };
        release.check_annotations(&image.annotations)?;
        release.check_layers()?;
        Ok(release)
    }

    pub fn reference(&self) -> &Reference {
        &self.reference
    }

    /// The signed version.
    pub fn version(&self) -> &semver::Version {
        &self.manifest.os_version
    }

    /// The signed verity root hash.
    pub fn root_hash(&self) -> Option<&str> {
        self.manifest.verity_root_hash.as_deref()
    }

    fn check_annotations(&self, annotations: &BTreeMap<String, String>) -> Result<()> {
        let signed = [
            (
                oci::ANNOTATION_VERSION,
                Some(self.manifest.os_version.to_string()),
            ),
            (
                oci::ANNOTATION_ROOT_HASH,
                self.manifest.verity_root_hash.clone(),
            ),
        ];
        for (key, signed) in signed {
            let Some(annotated) = annotations.get(key) else {
                continue;
            };
            if Some(annotated) != signed.as_ref() {
                return Err(Error::Annotation {
                    release: format!(
                        "{}: release {} in {}",
                        self.client.peer(),
                        self.reference.reference,
                        self.reference.repo
                    ),
                    key: key.to_string(),
                    annotated: annotated.clone(),
                    signed: signed.unwrap_or_else(|| "nothing".into()),
                });
            }
        }
        Ok(())
    }

    /// Every layer is the manifest, its signature or a signed artifact, and
    /// every signed artifact has a layer of its signed size and digest.
    fn check_layers(&self) -> Result<()> {
        let bad = |why: String| Error::BadImage {
            peer: self.client.peer().to_string(),
            repo: self.reference.repo.clone(),
            reference: self.reference.reference.clone(),
            why,
        };
        for name in self.layers.keys() {
            if name != bundle::MANIFEST
                && name != bundle::SIGNATURE
                && self.manifest.artifact(name).is_none()
            {
                return Err(self.not_listed(name));
            }
        }
        for a in &self.manifest.artifacts {
            let l = self.layers.get(&a.name).ok_or_else(|| {
                bad(format!(
                    "the signed manifest lists {}, which has no layer",
                    a.name
                ))
            })?;
            let signed = format!("sha256:{}", a.sha256);
            if l.digest != signed || l.size != a.size {
                return Err(bad(format!(
                    "layer {} is {} ({} bytes), the signed manifest lists {signed} ({} bytes)",
                    a.name, l.digest, l.size, a.size
                )));
            }
        }
        Ok(())
    }

    fn not_listed(&self, name: &str) -> Error {
        Error::NotListed {
            peer: self.client.peer().to_string(),
            repo: self.reference.repo.clone(),
            reference: self.reference.reference.clone(),
            name: name.to_string(),
        }
    }

    /// Streams one signed artifact: exactly its signed size and sha256, or
    /// an error (see [`BlobReader`]). Read it to `Ok(0)`.
    pub fn artifact(&self, name: &str) -> Result<BlobReader<impl Read>> {
        let a = self
            .manifest
            .artifact(name)
            .ok_or_else(|| self.not_listed(name))?;
        self.client.get_blob(
            &self.reference.repo,
            &format!("sha256:{}", a.sha256),
            a.size,
            name,
        )
    }

    /// Writes the release into `dir` as a bundle directory the installer
    /// accepts (`cairn-installer upgrade --bundle DIR`): each artifact is
    /// streamed to `NAME.partial`, synced, and renamed only when every
    /// artifact has verified; `manifest.json` and its signature come last.
    /// On error, the `.partial` files are removed and nothing was renamed.
    pub fn pull_to_dir(&self, dir: &Path) -> Result<u64> {
        let local = |what: &'static str, path: &Path| {
            let path = path.to_path_buf();
            move |source| Error::Local { what, path, source }
        };
        fs::create_dir_all(dir).map_err(local("creating", dir))?;
        let mut partials: Vec<(PathBuf, PathBuf)> = Vec::new();
        let result = (|| -> Result<u64> {
            let mut buf = vec![0u8; COPY_BUF];
            let mut total = 0;
            for a in &self.manifest.artifacts {
                let fin = dir.join(&a.name);
                let tmp = dir.join(format!("{}.partial", a.name));
                partials.push((tmp.clone(), fin));
                let mut f = File::create(&tmp).map_err(local("creating", &tmp))?;
                let mut r = self.artifact(&a.name)?;
                loop {
                    let n = r
                        .read(&mut buf)
                        .map_err(|e| Error::from_io(e, "reading", &tmp))?;
                    if n == 0 {
                        break;
                    }
                    f.write_all(&buf[..n]).map_err(local("writing", &tmp))?;
                }
                f.sync_all().map_err(local("syncing", &tmp))?;
                total += a.size;
            }
            for (name, bytes) in [
                (bundle::MANIFEST, &self.manifest_bytes),
                (bundle::SIGNATURE, &self.signature_bytes),
            ] {
                let tmp = dir.join(format!("{name}.partial"));
                partials.push((tmp.clone(), dir.join(name)));
                let mut f = File::create(&tmp).map_err(local("creating", &tmp))?;
                f.write_all(bytes).map_err(local("writing", &tmp))?;
                f.sync_all().map_err(local("syncing", &tmp))?;
            }
            Ok(total)
        })();
        let total = match result {
            Ok(t) => t,
            Err(e) => {
                for (tmp, _) in &partials {
                    // Best effort: the fetch error is the one to report.
                    let _ = fs::remove_file(tmp);
                }
                return Err(e);
            }
        };
        // Artifacts first, the manifest last: a directory with a manifest
        // holds everything it lists.
        for (tmp, fin) in &partials {
            fs::rename(tmp, fin).map_err(local("renaming into place", fin))?;
        }
        File::open(dir)
            .and_then(|d| d.sync_all())
            .map_err(local("syncing", dir))?;
        Ok(total)
    }
}
