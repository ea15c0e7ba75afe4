//! `cairn inspect PATH`: what any output is, read with the same parsers the
//! installer and init use (nothing here parses a format a second time):
//! a release (directory, `update.tar`, OCI layout), a disk image, the
//! installer ISO, a UKI. Reads only; with `--pubkey` the release's
//! signature is checked too.

use std::io::Read;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use artifacts::gpt;
use builder::exit::Invalid;
use serde::Serialize;
use signing::{PublicKey, MANIFEST_FILE, SIGNATURE_FILE};

#[derive(clap::Args)]
pub struct InspectArgs {
    /// An output: a release directory (out/), update.tar, an OCI layout
    /// (out/oci), a disk image (raw, qcow2, vhd, vmdk), installer.iso, or
    /// a UKI (.efi).
    path: PathBuf,
    /// Check the release's signature against this public key (or a
    /// directory of *.pub); repeatable. Without it the signing key is only
    /// named, not checked.
    #[arg(long = "pubkey", value_name = "KEY")]
    pubkeys: Vec<PathBuf>,
    /// Print the report as JSON on stdout.
    #[arg(long)]
    json: bool,
}

#[derive(Debug, Serialize)]
#[serde(tag = "kind", rename_all = "kebab-case")]
enum Report {
    Release {
        path: String,
        /// directory, tar or oci.
        container: &'static str,
        release: Release,
    },
    Disk {
        path: String,
        /// The QEMU format name (raw, qcow2, vpc, vmdk).
        format: String,
        partitions: Vec<Part>,
        status: installer::status::Status,
    },
    Iso {
        path: String,
        partitions: Vec<Part>,
        esp: Vec<String>,
        installer: Uki,
        /// What `cairn iso customize` set (`None`: an ISO older than the
        /// settings area).
        install_settings: Option<contract::install::InstallSettings>,
    },
    Uki {
        path: String,
        uki: Uki,
    },
}

#[derive(Debug, Serialize)]
struct Release {
    os_name: String,
    version: String,
    profile: String,
    arch: String,
    source_date_epoch: u64,
    root_hash: Option<String>,
    key_id: String,
    /// `verified`, or `not checked` without --pubkey.
    signature: &'static str,
    artifacts: Vec<Artifact>,
}

#[derive(Debug, Serialize)]
struct Artifact {
    name: String,
    size: u64,
    sha256: String,
}

#[derive(Debug, Serialize)]
struct Part {
    number: u32,
    name: String,
    type_guid: String,
    partuuid: String,
    offset: u64,
    size: u64,
}

#[derive(Debug, Serialize)]
struct Uki {
    version: Option<String>,
    pretty_name: Option<String>,
    cmdline: String,
    /// `boot` or `install`.
    mode: String,
    root_hash: Option<String>,
    /// An Authenticode signature is present (Secure Boot).
    signed: bool,
    sections: Vec<(String, u32)>,
}

pub fn run(args: InspectArgs) -> Result<()> {
    let trusted = super::sign_cmd::trusted_keys(&args.pubkeys)?;
    let p = &args.path;
    let shown = p.display().to_string();
    let report = if p.is_dir() {
        if p.join(MANIFEST_FILE).is_file() {
            Report::Release {
                path: shown,
                container: "directory",
                release: release_dir(p, &trusted)?,
            }
        } else if p.join("index.json").is_file() {
            Report::Release {
                path: shown,
                container: "oci",
                release: release_oci(p, &trusted)?,
            }
        } else {
            return Err(Invalid(format!(
                "{shown}: neither a release directory (no {MANIFEST_FILE}) nor an OCI layout (no index.json)"
            ))
            .into());
        }
    } else {
        file(p, &trusted)?
    };
    if args.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        print!("{}", human(&report));
    }
    Ok(())
}

fn file(p: &Path, trusted: &[PublicKey]) -> Result<Report> {
    let shown = p.display().to_string();
    let mut head = Vec::new();
    std::fs::File::open(p)
        .with_context(|| format!("opening {shown}"))?
        .take(0x8006)
        .read_to_end(&mut head)?;
    if head.starts_with(b"MZ") {
        return Ok(Report::Uki {
            uki: uki(p)?,
            path: shown,
        });
    }
    // A tar's "ustar" magic sits at 257.
    if head.get(257..262) == Some(b"ustar") {
        return Ok(Report::Release {
            path: shown,
            container: "tar",
            release: release_tar(p, trusted)?,
        });
    }
    if head.get(0x8001..0x8006) == Some(b"CD001") {
        return iso(p);
    }
    if head.starts_with(&[0x1f, 0x8b]) {
        return Err(Invalid(format!(
            "{shown}: a gzip file (gce.tar.gz holds disk.raw: `tar -xzf {shown}` and inspect that)"
        ))
        .into());
    }
    disk(p)
}

fn release_of(m: signing::Manifest, verified: bool) -> Release {
    Release {
        os_name: m.os_name,
        version: m.os_version.to_string(),
        profile: m.profile,
        arch: m.arch,
        source_date_epoch: m.source_date_epoch,
        root_hash: m.verity_root_hash,
        key_id: m.key_id,
        signature: if verified { "verified" } else { "not checked" },
        artifacts: m
            .artifacts
            .into_iter()
            .map(|a| Artifact {
                sha256: a.sha256.clone(),
                name: a.name,
                size: a.size,
            })
            .collect(),
    }
}

/// The manifest, checked against `trusted` when there are keys (signature
/// only: the artifacts are `cairn verify`'s job), else parsed as is.
fn manifest(bytes: &[u8], sig: &[u8], trusted: &[PublicKey], at: &str) -> Result<Release> {
    if trusted.is_empty() {
        let m =
            signing::Manifest::parse(bytes).with_context(|| format!("{at}: {MANIFEST_FILE}"))?;
        return Ok(release_of(m, false));
    }
    let m = signing::verify_manifest(bytes, sig, trusted)
        .with_context(|| format!("{at}: signature"))?;
    Ok(release_of(m, true))
}

fn release_dir(dir: &Path, trusted: &[PublicKey]) -> Result<Release> {
    let read = |f: &str| {
        let p = dir.join(f);
        std::fs::read(&p).with_context(|| format!("reading {}", p.display()))
    };
    let sig = if trusted.is_empty() {
        Vec::new()
    } else {
        read(SIGNATURE_FILE)?
    };
    manifest(
        &read(MANIFEST_FILE)?,
        &sig,
        trusted,
        &dir.display().to_string(),
    )
}

fn release_tar(path: &Path, trusted: &[PublicKey]) -> Result<Release> {
    let f = std::fs::File::open(path).with_context(|| format!("opening {}", path.display()))?;
    let (mut m, mut s) = (None, None);
    let mut ar = tar::Archive::new(f);
    for e in ar
        .entries()
        .with_context(|| format!("reading {}", path.display()))?
    {
        let mut e = e.with_context(|| format!("reading {}", path.display()))?;
        let name = e.path()?.to_string_lossy().into_owned();
        let mut buf = Vec::new();
        if name == MANIFEST_FILE || name == SIGNATURE_FILE {
            // The manifest is small; a member claiming gigabytes is not one.
            (&mut e).take(1 << 20).read_to_end(&mut buf)?;
        }
        match name.as_str() {
            MANIFEST_FILE => m = Some(buf),
            SIGNATURE_FILE => s = Some(buf),
            _ => {}
        }
        if m.is_some() && s.is_some() {
            break;
        }
    }
    let at = path.display().to_string();
    let m = m.ok_or_else(|| {
        Invalid(format!(
            "{at}: no {MANIFEST_FILE} member: not a cairn bundle"
        ))
    })?;
    manifest(&m, &s.unwrap_or_default(), trusted, &at)
}

fn release_oci(dir: &Path, trusted: &[PublicKey]) -> Result<Release> {
    let blob = |digest: &str| -> Result<Vec<u8>> {
        let hex = digest
            .strip_prefix("sha256:")
            .filter(|_| registry::image::digest_ok(digest))
            .ok_or_else(|| {
                Invalid(format!(
                    "{}: digest {digest:?} is not sha256:<64 hex>",
                    dir.display()
                ))
            })?;
        let p = dir.join("blobs/sha256").join(hex);
        let b = std::fs::read(&p).with_context(|| format!("reading {}", p.display()))?;
        let got = signing::Sha256Digest::of(&b).to_string();
        if got != hex {
            bail!("{}: content has sha256 {got}, not its name", p.display());
        }
        Ok(b)
    };
    let index_path = dir.join("index.json");
    let index: serde_json::Value = serde_json::from_slice(
        &std::fs::read(&index_path).with_context(|| format!("reading {}", index_path.display()))?,
    )
    .with_context(|| format!("{}: not JSON", index_path.display()))?;
    let digest = index["manifests"][0]["digest"]
        .as_str()
        .ok_or_else(|| Invalid(format!("{}: no manifests[0].digest", index_path.display())))?;
    let image = registry::image::ImageManifest::parse(&blob(digest)?)
        .map_err(|e| Invalid(format!("{}: {digest}: {e}", dir.display())))?;
    let layers = image
        .bundle_layers()
        .map_err(|e| Invalid(format!("{}: {digest}: {e}", dir.display())))?;
    let layer = |name: &str| -> Result<Vec<u8>> {
        let d = layers
            .get(name)
            .ok_or_else(|| Invalid(format!("{}: no {name} layer", dir.display())))?;
        blob(&d.digest)
    };
    let sig = if trusted.is_empty() {
        Vec::new()
    } else {
        layer(SIGNATURE_FILE)?
    };
    manifest(
        &layer(MANIFEST_FILE)?,
        &sig,
        trusted,
        &dir.display().to_string(),
    )
}

fn uki(path: &Path) -> Result<Uki> {
    use artifacts::uki::Uki as Pe;
    let shown = path.display().to_string();
    let section = |name: &str| {
        Pe::read_section(path, name).ok().map(|b| {
            String::from_utf8_lossy(&b)
                .trim_end_matches(['\0', '\n', ' '])
                .to_string()
        })
    };
    let osrel = section(".osrel").unwrap_or_default();
    let cmdline = section(".cmdline").ok_or_else(|| {
        Invalid(format!(
            "{shown}: a PE file without a .cmdline section: not a UKI"
        ))
    })?;
    let parsed = contract::cmdline::parse(&cmdline)
        .map_err(|e| Invalid(format!("{shown}: .cmdline: {e}")))?;
    let bytes = std::fs::read(path).with_context(|| format!("reading {shown}"))?;
    let pe = artifacts::pe::PeLayout::parse(path, &bytes)
        .map_err(|e| Invalid(format!("{shown}: not a PE image: {}", e.what)))?;
    Ok(Uki {
        version: installer::bootmodel::osrel_field(&osrel, "IMAGE_VERSION")
            .or_else(|| installer::bootmodel::osrel_field(&osrel, "VERSION_ID")),
        pretty_name: installer::bootmodel::osrel_field(&osrel, "PRETTY_NAME"),
        mode: match parsed.mode {
            contract::cmdline::Mode::Install => "install".into(),
            _ => "boot".into(),
        },
        root_hash: parsed.rootfs.map(|h| contract::cmdline::hex(&h)),
        cmdline,
        signed: pe
            .certificate_table(&bytes)
            .is_some_and(|(_, size)| size > 0),
        sections: pe
            .sections
            .iter()
            .map(|s| (s.name_str(), s.virtual_size))
            .collect(),
    })
}

fn partitions(path: &Path) -> Result<Vec<Part>> {
    let mut f = std::fs::File::open(path).with_context(|| format!("opening {}", path.display()))?;
    let read =
        gpt::read_disk(&mut f).with_context(|| format!("{}: partition table", path.display()))?;
    Ok(read
        .layout
        .partitions
        .iter()
        .map(|p| Part {
            number: p.slot + 1,
            name: p.name.clone(),
            type_guid: p.type_guid.to_string(),
            partuuid: p.guid.to_string(),
            offset: p.offset(),
            size: p.size_bytes(),
        })
        .collect())
}

fn iso(path: &Path) -> Result<Report> {
    let shown = path.display().to_string();
    let parts = partitions(path)?;
    let esp_part = parts
        .iter()
        .find(|p| p.type_guid == gpt::ESP_TYPE.to_string())
        .ok_or_else(|| {
            Invalid(format!(
                "{shown}: an ISO without an EFI system partition: not cairn's installer"
            ))
        })?;
    let mut f = std::fs::File::options()
        .read(true)
        .open(path)
        .with_context(|| format!("opening {shown}"))?;
    let mut vol = artifacts::fat::Fat32::open(
        installer::status::ReadOnly(&mut f),
        esp_part.offset,
        esp_part.size,
    )
    .with_context(|| format!("{shown}: ESP at offset {}", esp_part.offset))?;
    let mut esp = Vec::new();
    let mut stack = vec![String::new()];
    while let Some(dir) = stack.pop() {
        for e in vol
            .list(&dir)
            .with_context(|| format!("{shown}: ESP {dir}/"))?
        {
            if e.name == "." || e.name == ".." {
                continue;
            }
            let p = format!("{dir}/{}", e.name);
            if e.is_dir {
                stack.push(p);
            } else {
                esp.push(format!("{p} ({} bytes)", e.size));
            }
        }
    }
    esp.sort();
    let entry = esp
        .iter()
        .filter_map(|e| e.split(' ').next())
        .find(|p| p.starts_with(&format!("/{}", contract::esp::ENTRY_DIR)) && p.ends_with(".efi"))
        .map(str::to_string)
        .ok_or_else(|| {
            Invalid(format!(
                "{shown}: no UKI under /{} on the ESP",
                contract::esp::ENTRY_DIR
            ))
        })?;
    let settings_file = format!("/{}", contract::install::ESP_PATH);
    let install_settings = if esp
        .iter()
        .any(|e| e.starts_with(&format!("{settings_file} ")))
    {
        let area = vol
            .read_file(&settings_file)
            .with_context(|| format!("{shown}: ESP {settings_file}"))?;
        Some(
            contract::install::InstallSettings::decode(&area, &settings_file)
                .map_err(|e| Invalid(format!("{shown}: {e}")))?,
        )
    } else {
        None
    };
    let tmp = tempfile::NamedTempFile::new()?;
    std::fs::write(
        tmp.path(),
        vol.read_file(&entry)
            .with_context(|| format!("{shown}: ESP {entry}"))?,
    )?;
    Ok(Report::Iso {
        installer: uki(tmp.path()).with_context(|| format!("{shown}: ESP {entry}"))?,
        path: shown,
        partitions: parts,
        esp,
        install_settings,
    })
}

fn disk(path: &Path) -> Result<Report> {
    let format = match super::run_cmd::kind(path)? {
        super::run_cmd::Kind::Disk(f) => f,
        super::run_cmd::Kind::Iso => return iso(path),
    };
    // The status reader wants the disk's own bytes: other formats are
    // converted to a sparse raw copy by qemu-img (QEMU's own reader).
    let tmp;
    let raw = if format == "raw" {
        path.to_path_buf()
    } else {
        tmp = tempfile::tempdir()?;
        let raw = tmp.path().join("disk.raw");
        let o = std::process::Command::new("qemu-img")
            .args(["convert", "-f", format, "-O", "raw"])
            .arg(path)
            .arg(&raw)
            .output()
            .context("running qemu-img (Debian package qemu-utils) to read a non-raw disk")?;
        if !o.status.success() {
            bail!(
                "qemu-img could not read {} as {format}: {}",
                path.display(),
                String::from_utf8_lossy(&o.stderr).trim()
            );
        }
        raw
    };
    let mut status = installer::status::status(&raw)
        .with_context(|| format!("{}: reading the disk", path.display()))?;
    status.disk = path.display().to_string();
    Ok(Report::Disk {
        path: path.display().to_string(),
        format: format.to_string(),
        partitions: partitions(&raw)?,
        status,
    })
}

fn human(r: &Report) -> String {
    use std::fmt::Write;
    let mut s = String::new();
    let parts = |s: &mut String, parts: &[Part]| {
        let _ = writeln!(s, "partitions:");
        for p in parts {
            let _ = writeln!(
                s,
                "  {:>2} {:<10} offset {:>12}  size {:>12}  partuuid {}",
                p.number, p.name, p.offset, p.size, p.partuuid
            );
        }
    };
    let uki = |s: &mut String, u: &Uki| {
        let _ = writeln!(s, "version:   {}", u.version.as_deref().unwrap_or("(none)"));
        let _ = writeln!(s, "mode:      {}", u.mode);
        if let Some(h) = &u.root_hash {
            let _ = writeln!(s, "root hash: {h}");
        }
        let _ = writeln!(
            s,
            "signed:    {}",
            if u.signed { "yes (Authenticode)" } else { "no" }
        );
        let _ = writeln!(s, "cmdline:   {}", u.cmdline);
        let names: Vec<&str> = u.sections.iter().map(|(n, _)| n.as_str()).collect();
        let _ = writeln!(s, "sections:  {}", names.join(" "));
    };
    match r {
        Report::Release {
            path,
            container,
            release: m,
        } => {
            let _ = writeln!(s, "{path}: cairn release ({container})");
            let _ = writeln!(
                s,
                "os:        {} {} ({}, {})",
                m.os_name, m.version, m.profile, m.arch
            );
            let _ = writeln!(
                s,
                "root hash: {}",
                m.root_hash.as_deref().unwrap_or("(none)")
            );
            let _ = writeln!(
                s,
                "signed by: key {} ({})",
                m.key_id,
                if m.signature == "verified" {
                    "signature verified"
                } else {
                    "not checked: give --pubkey"
                }
            );
            let _ = writeln!(s, "epoch:     {}", m.source_date_epoch);
            let _ = writeln!(s, "artifacts:");
            for a in &m.artifacts {
                let _ = writeln!(s, "  {:<16} {:>12}  sha256 {}", a.name, a.size, a.sha256);
            }
        }
        Report::Disk {
            path,
            format,
            partitions,
            status,
        } => {
            let _ = writeln!(
                s,
                "{path}: cairn disk ({format}, {} bytes, {} GPT)",
                status.disk_size, status.table_copy
            );
            parts(&mut s, partitions);
            let _ = writeln!(s, "slots:");
            for sl in &status.slots {
                let _ = writeln!(
                    s,
                    "  {}{}: {}",
                    sl.name,
                    if sl.active { " (active)" } else { "" },
                    if sl.versions.is_empty() {
                        "empty".to_string()
                    } else {
                        sl.versions.join(", ")
                    }
                );
            }
            let _ = writeln!(s, "boot entries:");
            for e in &status.entries {
                let _ = writeln!(
                    s,
                    "  {} {} slot {} {}",
                    e.file,
                    e.version.as_deref().unwrap_or("?"),
                    e.slot.as_deref().unwrap_or("?"),
                    match (e.blessed, e.tries_left) {
                        (true, _) => "blessed".to_string(),
                        (false, Some(n)) => format!("{n} tries left"),
                        (false, None) => "not blessed".to_string(),
                    }
                );
            }
            if let Some(n) = &status.next_boot {
                let _ = writeln!(s, "next boot: {} ({})", n.file, n.reason);
            }
        }
        Report::Iso {
            path,
            partitions,
            esp,
            installer,
            install_settings,
        } => {
            let _ = writeln!(s, "{path}: cairn installer ISO");
            let _ = match install_settings {
                None => writeln!(
                    s,
                    "install settings: (no area: built before `cairn iso customize`)"
                ),
                Some(st) if st.is_empty() => writeln!(
                    s,
                    "install settings: none (the only fixed disk, never wiped)"
                ),
                Some(st) => writeln!(
                    s,
                    "install settings: dest_device {}, wipe {}, machine config {}",
                    st.dest_device.as_deref().unwrap_or("(chosen)"),
                    st.wipe,
                    if st.machine_config.is_some() {
                        "replaced"
                    } else {
                        "the payload's"
                    }
                ),
            };
            parts(&mut s, partitions);
            let _ = writeln!(s, "ESP:");
            for e in esp {
                let _ = writeln!(s, "  {e}");
            }
            let _ = writeln!(s, "installer UKI:");
            uki(&mut s, installer);
        }
        Report::Uki { path, uki: u } => {
            let _ = writeln!(s, "{path}: unified kernel image");
            uki(&mut s, u);
        }
    }
    s
}
