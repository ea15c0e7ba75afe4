//! `cairn keygen`, `cairn sign`, `cairn verify`: thin wrappers over the
//! signing crate, which the pipeline and installer call directly.

use anyhow::{bail, Context, Result};
use clap::Subcommand;
use signing::keys::{ensure_outside, load_trusted_dir};
use signing::{
    sign_dir, verify_dir, PrivateKey, PublicKey, ReleaseMeta, MANIFEST_FILE, SIGNATURE_FILE,
};
use std::path::PathBuf;

#[derive(Subcommand)]
pub enum SignCommand {
    /// Generate an ed25519 signing key: PATH (PKCS#8 PEM, mode 0600) and PATH.pub (SPKI PEM).
    Keygen {
        #[arg(long)]
        out: PathBuf,
    },
    /// Hash the artifacts listed in DIR/manifest.json and sign it (writes
    /// manifest.json and manifest.json.sig).
    Sign {
        /// Private key (PKCS#8 PEM, not group/other readable, outside DIR).
        #[arg(long)]
        key: PathBuf,
        dir: PathBuf,
    },
    /// Check a release's manifest signature against trusted keys, then every
    /// artifact: a release directory, or an upgrade bundle (`update.tar`),
    /// which is also checked as an installer would (UKI and rootfs agree).
    Verify {
        /// Trusted public key (SPKI PEM), or a directory of *.pub files;
        /// repeat to trust several.
        #[arg(long = "pubkey", required = true)]
        pubkeys: Vec<PathBuf>,
        /// A release directory (`cairn build`'s output) or `update.tar`.
        #[arg(value_name = "DIR|TAR")]
        dir: PathBuf,
        /// Print the verified release as JSON on stdout (os, version,
        /// profile, arch, key_id, root_hash, artifacts).
        #[arg(long)]
        json: bool,
    },
}

pub fn run(cmd: SignCommand) -> Result<()> {
    match cmd {
        SignCommand::Keygen { out } => {
            let key = PrivateKey::generate()?;
            let pub_path = key.write_new(&out)?;
            println!(
                "key {} written to {} and {}",
                key.id(),
                out.display(),
                pub_path.display()
            );
        }
        SignCommand::Sign { key, dir } => {
            if !dir.is_dir() {
                bail!("{}: not a directory", dir.display());
            }
            ensure_outside(&key, &dir)?;
            let private = PrivateKey::load(&key)?;
            let draft_path = dir.join(MANIFEST_FILE);
            let draft = std::fs::read(&draft_path)
                .with_context(|| format!("reading {}", draft_path.display()))?;
            let (meta, names) = ReleaseMeta::parse_draft(&draft)
                .with_context(|| format!("{}", draft_path.display()))?;
            let names: Vec<&str> = names.iter().map(String::as_str).collect();
            let manifest = sign_dir(&dir, meta, &names, &private)?;
            println!(
                "signed {} {} ({} artifacts) with key {}: {}, {}",
                manifest.os_name,
                manifest.os_version,
                manifest.artifacts.len(),
                private.id(),
                draft_path.display(),
                dir.join(SIGNATURE_FILE).display()
            );
        }
        SignCommand::Verify { pubkeys, dir, json } => {
            let trusted = trusted_keys(&pubkeys)?;
            if dir.is_file() {
                // A bundle tar: the installer's own check (signature first,
                // members hashed as they are unpacked into a temp dir).
                let b = installer::verify::open_verified(&dir, &trusted)
                    .with_context(|| format!("{}: verification failed", dir.display()))?;
                report(&b.manifest, "bundle", json)?;
                return Ok(());
            }
            let checked = verify_dir(&dir, &trusted)
                .with_context(|| format!("{}: verification failed", dir.display()))?;
            for extra in &checked.extra_files {
                eprintln!("note: {extra} is not listed in the manifest (ignored)");
            }
            report(&checked.manifest, "directory", json)?;
        }
    }
    Ok(())
}

/// The keys of `--pubkey` flags (`cairn verify`, `cairn inspect`): a
/// public key file, or a directory of `*.pub`.
pub fn trusted_keys(paths: &[PathBuf]) -> Result<Vec<PublicKey>> {
    let mut trusted = Vec::new();
    for p in paths {
        if p.is_dir() {
            trusted.extend(load_trusted_dir(p)?);
        } else {
            trusted.push(PublicKey::load(p)?);
        }
    }
    Ok(trusted)
}

/// What `cairn verify` prints for a release that verified: one line, or
/// JSON for scripts.
fn report(m: &signing::Manifest, container: &str, json: bool) -> Result<()> {
    if !json {
        match container {
            "bundle" => println!("{} (bundle)", verified(m)),
            _ => println!("{}", verified(m)),
        }
        return Ok(());
    }
    let v = serde_json::json!({
        "verified": true,
        "container": container,
        "os_name": m.os_name,
        "version": m.os_version.to_string(),
        "profile": m.profile,
        "arch": m.arch,
        "key_id": m.key_id,
        "root_hash": m.verity_root_hash,
        "artifacts": m.artifacts.iter().map(|a| serde_json::json!({
            "name": a.name, "size": a.size, "sha256": a.sha256,
        })).collect::<Vec<_>>(),
    });
    println!("{}", serde_json::to_string_pretty(&v)?);
    Ok(())
}

/// The line `cairn verify` prints for a release that verified.
fn verified(m: &signing::Manifest) -> String {
    format!(
        "ok: {} {} ({}, {}) signed by key {}, {} artifacts verified",
        m.os_name,
        m.os_version,
        m.profile,
        m.arch,
        m.key_id,
        m.artifacts.len()
    )
}
