//! Stage 6, disks: `disk.raw`, literally an install of the bundle into a
//! sparse image, and the cloud images converted from it.

use std::path::Path;

use anyhow::Result;
use artifacts::cloud::{gce, qcow2, vhd, vmdk};

use super::bundle::Release;
use super::outputs::OutputDir;
use super::{machine_config, ReleaseKey, Run};
use crate::profile::{Output, Profile};
use crate::release;
use crate::stage::KeyBuilder;

/// A cloud image: its output, its file name, and how it is made from
/// `disk.raw` (with the epoch and the media seed).
type Cloud = (
    Output,
    &'static str,
    fn(&Path, &Path, u64, &[u8]) -> Result<()>,
);

/// In the order they are made and listed in the manifest.
const CLOUDS: [Cloud; 4] = [
    (Output::Qcow2, "disk.qcow2", |raw, to, _, _| {
        qcow2::convert(raw, to, &qcow2::Qcow2Options::default())?;
        Ok(())
    }),
    (Output::Vhd, "disk.vhd", |raw, to, epoch, seed| {
        vhd::convert(raw, to, epoch, seed)?;
        Ok(())
    }),
    (Output::Vmdk, "disk.vmdk", |raw, to, _, seed| {
        vmdk::convert(raw, to, seed)?;
        Ok(())
    }),
    (Output::Gce, "gce.tar.gz", |raw, to, epoch, _| {
        gce::convert(raw, to, epoch)?;
        Ok(())
    }),
];

pub(super) fn build(
    run: &mut Run,
    out: &mut OutputDir,
    profile: &Profile,
    release: &Release,
    key: &ReleaseKey,
) -> Result<()> {
    let Some(raw_name) = raw_name(&profile.outputs) else {
        return Ok(());
    };
    let machine_config = machine_config(profile);
    let mut k = KeyBuilder::new("disk.raw");
    k.str("bundle", &release.bundle.display().to_string())
        .str("size", &profile.disk.total.0.to_string());
    if let Some(cfg) = machine_config {
        k.file("machine-config", cfg)?;
    }
    let raw_key = k.finish();
    let raw = out.dir().join(raw_name);
    let (stages, progress) = (&mut run.stages, &run.progress);
    out.produce(stages, raw_name, &raw_key, |_| {
        progress.step("disk.raw (install of the bundle)", || {
            release::installed_disk(
                &release.bundle,
                &key.public,
                machine_config,
                profile.disk.total.0,
                &raw,
            )
        })
    })?;
    if raw_name == "disk.raw" {
        out.list(&["disk.raw"]);
    }
    for (output, name, convert) in CLOUDS {
        if !profile.outputs.contains(&output) {
            continue;
        }
        // Made from disk.raw alone: disk.raw's key is theirs.
        out.produce(stages, name, &raw_key, |dir| {
            convert(&raw, &dir.join(name), run.epoch, &release.seed)
        })?;
        out.list(&[name]);
    }
    if raw_name != "disk.raw" {
        // Kept (hidden) so an unchanged cloud build needs no new install.
        tracing::debug!("{} kept for the next build", raw.display());
    }
    Ok(())
}

/// disk.raw is the source of every cloud image, and kept under its own
/// name only when asked for; `None` when no output needs it.
fn raw_name(outputs: &[Output]) -> Option<&'static str> {
    if outputs.contains(&Output::Raw) {
        Some("disk.raw")
    } else if CLOUDS.iter().any(|(o, _, _)| outputs.contains(o)) {
        Some(".disk.raw.tmp")
    } else {
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn disk_raw_is_hidden_when_only_cloud_images_want_it() {
        assert_eq!(raw_name(&[Output::Raw, Output::Iso]), Some("disk.raw"));
        assert_eq!(raw_name(&[Output::Gce]), Some(".disk.raw.tmp"));
        assert_eq!(raw_name(&[Output::Vhd, Output::Raw]), Some("disk.raw"));
        assert_eq!(raw_name(&[Output::Iso, Output::Bundle, Output::Oci]), None);
    }
}
