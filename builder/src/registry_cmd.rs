//! `cairn push` and `cairn pull`: a release to and from an OCI registry
//! (the registry crate does the work; see docs/registry.md).

use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use clap::Args;
use registry::{Client, ClientOptions, Reference, Upload};
use signing::keys::load_trusted_dir;
use signing::PublicKey;

#[derive(Args)]
pub struct ConnArgs {
    /// Talk plain HTTP to the registry (also implied by an http:// reference).
    #[arg(long)]
    plain_http: bool,
    /// PEM CA certificates to trust instead of the system's.
    #[arg(long)]
    ca_file: Option<PathBuf>,
    /// A docker config.json with credentials (default: $DOCKER_CONFIG/config.json,
    /// else ~/.docker/config.json).
    #[arg(long)]
    docker_config: Option<PathBuf>,
    /// Give up when the registry sends or takes nothing for this many seconds.
    #[arg(long, default_value_t = 60)]
    io_timeout: u64,
}

impl ConnArgs {
    fn client(&self, r: &Reference) -> Result<Client> {
        Ok(Client::for_reference(
            r,
            &ClientOptions {
                plain_http: self.plain_http,
                ca_file: self.ca_file.clone(),
                docker_config: self.docker_config.clone(),
                credentials: None,
                io_timeout: Some(std::time::Duration::from_secs(self.io_timeout)),
            },
        )?)
    }
}

#[derive(Args)]
pub struct PushArgs {
    /// A `cairn build` output directory (its oci/ is pushed), or an OCI layout.
    out_dir: PathBuf,
    /// REGISTRY/REPO:TAG
    reference: String,
    /// Upload blobs in PATCH chunks of this many MiB instead of one PUT each.
    #[arg(long)]
    chunk_mib: Option<u64>,
    #[command(flatten)]
    conn: ConnArgs,
}

#[derive(Args)]
pub struct PullArgs {
    /// REGISTRY/REPO:TAG or REGISTRY/REPO@sha256:HEX
    reference: String,
    /// Where the bundle directory is written (created if absent).
    dir: PathBuf,
    /// Trusted release key (SPKI PEM), or a directory of *.pub files;
    /// repeat to trust several.
    #[arg(long = "key", required = true)]
    keys: Vec<PathBuf>,
    #[command(flatten)]
    conn: ConnArgs,
}

fn layout_dir(out: &Path) -> PathBuf {
    if out.join("index.json").is_file() {
        out.to_path_buf()
    } else {
        out.join("oci")
    }
}

pub fn push(args: PushArgs) -> Result<()> {
    let r = Reference::parse(&args.reference)?;
    if r.is_digest() {
        bail!("{}: push needs a tag, not a digest", args.reference);
    }
    let client = args.conn.client(&r)?;
    let mode = match args.chunk_mib {
        Some(m) => Upload::Chunked(m.max(1) << 20),
        None => Upload::Monolithic,
    };
    let layout = layout_dir(&args.out_dir);
    let s = registry::push_layout(&client, &layout, &r.repo, &r.reference, mode)
        .with_context(|| format!("pushing {} to {r}", layout.display()))?;
    println!(
        "pushed {r} ({}): {} blobs uploaded ({} bytes), {} already present",
        s.digest,
        s.uploaded.len(),
        s.bytes_uploaded,
        s.skipped.len()
    );
    Ok(())
}

fn trusted_keys(paths: &[PathBuf]) -> Result<Vec<PublicKey>> {
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

pub fn pull(args: PullArgs) -> Result<()> {
    let r = Reference::parse(&args.reference)?;
    let trusted = trusted_keys(&args.keys)?;
    let client = args.conn.client(&r)?;
    let release = registry::fetch_verified_manifest(&client, &r, &trusted)
        .with_context(|| format!("pulling {r}"))?;
    let bytes = release
        .pull_to_dir(&args.dir)
        .with_context(|| format!("pulling {r} into {}", args.dir.display()))?;
    let m = &release.manifest;
    println!(
        "pulled {r} ({}): {} {} signed by key {}, {} artifacts ({bytes} bytes) verified into {}",
        release.image_digest,
        m.os_name,
        m.os_version,
        m.key_id,
        m.artifacts.len(),
        args.dir.display()
    );
    Ok(())
}
