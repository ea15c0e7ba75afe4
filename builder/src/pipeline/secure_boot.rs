//! Secure Boot: Authenticode signatures with the db key, for the installed
//! UKI and systemd-boot and for the installer UKI.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result};

use crate::stage::{KeyBuilder, StageCache};

/// Signs a UKI and systemd-boot with the db key in `keys` (`cairn
/// secureboot-keygen` makes a set); returns the signed pair. Cached by the
/// unsigned inputs and the certificate.
pub(super) fn sign(
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
