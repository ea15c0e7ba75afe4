//! Pushing the bundle artifact of an OCI image layout (`cairn build`'s
//! `oci/`): every blob the registry does not have yet (HEAD to skip), then
//! the image manifest, byte for byte, under the tag. The manifest digest is
//! therefore the layout's, and `skopeo`/`oras` see the same artifact.

use std::fs::File;
use std::io::Read;
use std::path::{Path, PathBuf};

use contract::bundle::oci;
use serde::Deserialize;

use crate::client::{sha256_digest, Client, Upload};
use crate::error::{Error, Result};
use crate::image::{digest_ok, Descriptor, ImageManifest};

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PushSummary {
    /// `sha256:<hex>` of the pushed image manifest.
    pub digest: String,
    pub uploaded: Vec<String>,
    /// Blobs the registry already had.
    pub skipped: Vec<String>,
    pub bytes_uploaded: u64,
}

#[derive(Deserialize)]
struct Index {
    manifests: Vec<Descriptor>,
}

fn read_bounded(path: &Path, limit: u64) -> Result<Vec<u8>> {
    let mut out = Vec::new();
    File::open(path)
        .and_then(|f| f.take(limit + 1).read_to_end(&mut out))
        .map_err(|source| Error::Local {
            what: "reading",
            path: path.to_path_buf(),
            source,
        })?;
    if out.len() as u64 > limit {
        return Err(Error::Layout {
            path: path.to_path_buf(),
            why: format!("over {limit} bytes"),
        });
    }
    Ok(out)
}

fn blob_path(layout: &Path, digest: &str) -> Result<PathBuf> {
    if !digest_ok(digest) {
        return Err(Error::Layout {
            path: layout.to_path_buf(),
            why: format!("digest {digest:?} is not sha256:<64 hex>"),
        });
    }
    Ok(layout.join("blobs/sha256").join(&digest["sha256:".len()..]))
}

/// The one image manifest in `layout` (its bytes and parsed form).
pub fn read_layout_manifest(layout: &Path) -> Result<(Vec<u8>, ImageManifest)> {
    let bad = |why: String| Error::Layout {
        path: layout.to_path_buf(),
        why,
    };
    let index_bytes = read_bounded(&layout.join("index.json"), oci::MAX_IMAGE_MANIFEST_BYTES)?;
    let index: Index =
        serde_json::from_slice(&index_bytes).map_err(|e| bad(format!("index.json: {e}")))?;
    let [entry] = index.manifests.as_slice() else {
        return Err(bad(format!(
            "index.json lists {} manifests; a cairn layout holds one",
            index.manifests.len()
        )));
    };
    let bytes = read_bounded(
        &blob_path(layout, &entry.digest)?,
        oci::MAX_IMAGE_MANIFEST_BYTES,
    )?;
    if sha256_digest(&bytes) != entry.digest || bytes.len() as u64 != entry.size {
        return Err(bad(format!(
            "manifest blob {} does not match its index entry",
            entry.digest
        )));
    }
    let image = ImageManifest::parse(&bytes).map_err(&bad)?;
    image.bundle_layers().map_err(bad)?;
    Ok((bytes, image))
}

/// Pushes the layout's artifact to `repo:tag`.
pub fn push_layout(
    client: &Client,
    layout: &Path,
    repo: &str,
    tag: &str,
    mode: Upload,
) -> Result<PushSummary> {
    let (bytes, image) = read_layout_manifest(layout)?;
    let mut summary = PushSummary {
        digest: String::new(),
        uploaded: Vec::new(),
        skipped: Vec::new(),
        bytes_uploaded: 0,
    };
    for d in std::iter::once(&image.config).chain(&image.layers) {
        let path = blob_path(layout, &d.digest)?;
        let title = d
            .annotations
            .get(oci::ANNOTATION_TITLE)
            .map_or("config", String::as_str);
        if client.blob_exists(repo, &d.digest)? == Some(d.size) {
            tracing::info!("{title}: {} already in {}/{repo}", d.digest, client.peer());
            summary.skipped.push(d.digest.clone());
            continue;
        }
        let mut f = File::open(&path).map_err(|source| Error::Local {
            what: "opening blob",
            path: path.clone(),
            source,
        })?;
        let len = f.metadata().map(|m| m.len()).unwrap_or(u64::MAX);
        if len != d.size {
            return Err(Error::Layout {
                path,
                why: format!("{len} bytes, the manifest says {}", d.size),
            });
        }
        tracing::info!(
            "{title}: uploading {} ({} bytes) to {}/{repo}",
            d.digest,
            d.size,
            client.peer()
        );
        client.upload_blob(repo, &d.digest, d.size, &mut f, mode)?;
        summary.uploaded.push(d.digest.clone());
        summary.bytes_uploaded += d.size;
    }
    let media_type = image
        .media_type
        .as_deref()
        .unwrap_or(oci::MANIFEST_MEDIA_TYPE);
    summary.digest = client.put_manifest(repo, tag, media_type, &bytes)?;
    tracing::info!(
        "pushed {}/{repo}:{tag} as {}",
        client.peer(),
        summary.digest
    );
    Ok(summary)
}
