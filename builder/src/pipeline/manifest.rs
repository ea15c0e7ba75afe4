//! Stage 9, the output manifest: every file listed so far, signed with the
//! release key; then the artifact table of the build summary.

use std::fs;
use std::path::Path;

use anyhow::{Context, Result};

use super::bundle::Release;
use super::outputs::OutputDir;
use super::{ArtifactRow, ReleaseKey};
use crate::stage::KeyBuilder;

const MANIFEST: &str = "manifest.json";
const SIGNATURE: &str = "manifest.json.sig";

/// Signs the listed outputs unless the manifest there already covers them
/// as they are now (same release facts, same key, same files untouched).
pub(super) fn sign(
    out: &mut OutputDir,
    release: &Release,
    key: &ReleaseKey,
) -> Result<signing::Manifest> {
    let mut k = KeyBuilder::new("manifest");
    k.str("meta", &serde_json::to_string(&release.meta)?)
        .str("key", &key.key.id().to_string());
    for name in out.listed() {
        k.str(name, &out.stamp(name));
    }
    let manifest_key = k.finish();
    if out.fresh(MANIFEST, &manifest_key) && out.fresh(SIGNATURE, &manifest_key) {
        return Ok(signing::Manifest::parse(&fs::read(
            out.dir().join(MANIFEST),
        )?)?);
    }
    let listed = out.listed().to_vec();
    let m = signing::sign_dir(out.dir(), release.meta.clone(), &listed, &key.key)
        .context("signing the release manifest")?;
    out.record(MANIFEST, &manifest_key)?;
    out.record(SIGNATURE, &manifest_key)?;
    Ok(m)
}

/// One row per output: hashes from the signed manifest, so nothing large is
/// read twice; the manifest and its signature hashed here.
pub(super) fn rows(signed: &signing::Manifest, out: &Path) -> Result<Vec<ArtifactRow>> {
    let mut rows: Vec<ArtifactRow> = signed
        .artifacts
        .iter()
        .map(|a| ArtifactRow {
            name: a.name.clone(),
            size: a.size,
            sha256: a.sha256.clone(),
        })
        .collect();
    for name in [MANIFEST, SIGNATURE] {
        let (size, digest) = signing::hash_file(&out.join(name))?;
        rows.push(ArtifactRow {
            name: name.to_string(),
            size,
            sha256: digest.to_hex(),
        });
    }
    Ok(rows)
}
