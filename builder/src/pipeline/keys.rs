//! The release key: what signs the bundle and the output manifest.

use std::fs;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};

/// The release signing key and its public half (which goes onto installer
/// media as the key installs trust).
pub struct ReleaseKey {
    pub key: signing::PrivateKey,
    pub public: signing::PublicKey,
    pub public_path: PathBuf,
    /// Made on this machine for development: images signed with it must not ship.
    pub dev: bool,
}

impl ReleaseKey {
    /// `cli`, else `profile`, else the development key ([`signing_key`]).
    pub fn load(cli: Option<&Path>, profile: Option<&Path>) -> Result<ReleaseKey> {
        let (path, dev) = signing_key(cli, profile)?;
        let key = signing::PrivateKey::load(&path)?;
        let public_path = signing::keys::pub_path_for(&path);
        let public = signing::PublicKey::load(&public_path)?;
        Ok(ReleaseKey {
            key,
            public,
            public_path,
            dev,
        })
    }
}

/// The keys this release trusts to sign its successors (contract::trust):
/// the profile's `signing.trust`, else the release key's public half. A set
/// without the release key is a rotation: this release is still accepted by
/// nodes trusting the old key, and from its first boot on only the new set
/// signs what follows.
pub fn trusted_set(
    profile: &crate::profile::Profile,
    key: &ReleaseKey,
) -> Result<Vec<signing::PublicKey>> {
    if profile.trust.is_empty() {
        return Ok(vec![key.public.clone()]);
    }
    let mut keys = Vec::new();
    for path in &profile.trust {
        keys.push(signing::PublicKey::load(path).with_context(|| {
            format!(
                "profile {}: signing.trust entry {}",
                profile.path.display(),
                path.display()
            )
        })?);
    }
    let set = contract::trust::key_set(keys);
    if !set.iter().any(|k| k.id() == key.public.id()) {
        tracing::info!(
            "release key {} is not in signing.trust: this release rotates trust to {}",
            key.public.id(),
            set.iter()
                .map(|k| k.id().to_string())
                .collect::<Vec<_>>()
                .join(", ")
        );
    }
    Ok(set)
}

/// The manifest key: `--key`, else the profile's, else a development key
/// created once in the user's data directory (loudly).
pub fn signing_key(cli: Option<&Path>, profile: Option<&Path>) -> Result<(PathBuf, bool)> {
    if let Some(k) = cli.or(profile) {
        return Ok((k.to_path_buf(), false));
    }
    let dir = std::env::var_os("XDG_DATA_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".local/share")))
        .context("neither XDG_DATA_HOME nor HOME is set: pass --key")?
        .join("cairn");
    let path = dir.join("dev-signing.key");
    if !path.exists() {
        fs::create_dir_all(&dir)?;
        signing::PrivateKey::generate()?.write_new(&path)?;
    }
    tracing::warn!(
        "SIGNED WITH A DEVELOPMENT KEY ({}): do not ship these images; pass --key or set signing.key",
        path.display()
    );
    Ok((path, true))
}
