//! Stage 7, what running nodes upgrade from: `update.tar` (the bundle as
//! one file) and `oci/` (the bundle as an OCI artifact for a registry).

use anyhow::Result;

use super::bundle::Release;
use super::outputs::OutputDir;
use super::Run;
use crate::profile::{Output, Profile};
use crate::release;

pub(super) fn build(
    run: &mut Run,
    out: &mut OutputDir,
    profile: &Profile,
    release: &Release,
) -> Result<()> {
    // Both are the bundle repacked: the bundle's path (its key) is theirs.
    let key = release.bundle.display().to_string();
    let epoch = run.epoch;
    if profile.outputs.contains(&Output::Bundle) {
        out.produce(&mut run.stages, "update.tar", &key, |dir| {
            release::update_tar(&release.bundle, &dir.join("update.tar"), epoch)
        })?;
        out.list(&["update.tar"]);
    }
    if profile.outputs.contains(&Output::Oci) {
        // Not listed in the output manifest (a directory, not a file); the
        // layout carries the signed bundle manifest itself.
        out.produce(&mut run.stages, "oci/index.json", &key, |dir| {
            release::oci_layout(
                &release.bundle,
                &dir.join("oci"),
                &release.version,
                &release.root_hash,
                epoch,
            )
        })?;
    }
    Ok(())
}
