//! Everything checked before a single byte goes to disk: the manifest
//! signature against trusted keys, every artifact's size and sha256, and the
//! cross-checks that tie the UKI to the rootfs it will mount.

use std::io::Read;
use std::path::Path;

use artifacts::pe::{PeLayout, MACHINE_X86_64};
use artifacts::uki::Uki;
use signing::PublicKey;

use crate::bootmodel::osrel_field;
use crate::bundle::{self, Bundle, UkiFacts};
use crate::error::{Error, Result};
use contract::layout::LayoutSpec;

/// The architecture this installer writes (the GPT root type it uses).
pub const ARCH: &str = "x86_64";

/// Loads trusted public keys from `.pub` PEM files.
pub fn load_keys(paths: &[std::path::PathBuf]) -> Result<Vec<PublicKey>> {
    paths
        .iter()
        .map(|p| {
            PublicKey::load(p).map_err(|source| Error::Key {
                path: p.clone(),
                source,
            })
        })
        .collect()
}

/// Opens a bundle directory or `.tar` and verifies it completely.
pub fn open_verified(path: &Path, trusted: &[PublicKey]) -> Result<Bundle> {
    // Signature first, then every listed artifact's size and sha256 (for a
    // tar, while it is unpacked); see bundle::open.
    checked(bundle::open(path, trusted)?, path, None)
}

/// A bundle tar read from `r` (a client's upload) and verified
/// completely, unpacked under `unpack_in`; `name` is what errors call it.
pub fn open_verified_stream(
    name: &Path,
    r: impl Read,
    trusted: &[PublicKey],
    unpack_in: &Path,
) -> Result<Bundle> {
    checked(
        bundle::open_tar_stream(name, r, trusted, unpack_in)?,
        name,
        None,
    )
}

/// A bundle directory holding everything but rootfs.img, which `rootfs`
/// streams (a registry blob that checks its own size and digest): the
/// signature and every other artifact are verified now, the same
/// cross-checks made; the rootfs is written to the slot straight from the
/// stream and its verity superblock checked there, after the read-back and
/// before anything points at the slot.
pub fn open_streamed(
    dir: &Path,
    trusted: &[PublicKey],
    rootfs: Box<dyn std::io::Read + Send>,
) -> Result<Bundle> {
    let opened = bundle::open_dir_except(dir, trusted, &[bundle::ROOTFS])?;
    checked(opened, dir, Some(bundle::RootfsStream::new(rootfs)))
}

fn checked(
    opened: bundle::Opened,
    path: &Path,
    rootfs_stream: Option<bundle::RootfsStream>,
) -> Result<Bundle> {
    let bad = |what: String| Error::Bundle {
        path: path.to_path_buf(),
        what,
    };
    let bundle::Opened {
        dir,
        unpacked,
        manifest,
        manifest_bytes,
    } = opened;
    for name in bundle::REQUIRED {
        if manifest.artifact(name).is_none() {
            return Err(bad(format!("the signed manifest does not list {name}")));
        }
    }
    if manifest.arch != ARCH {
        return Err(Error::Arch {
            bundle: manifest.arch.clone(),
            supported: ARCH,
        });
    }
    for name in [bundle::UKI, bundle::BOOTLOADER] {
        let p = dir.join(name);
        let machine = pe_machine(&p)?;
        if machine != MACHINE_X86_64 {
            return Err(Error::Arch {
                bundle: format!("{name} has PE machine type {machine:#06x}"),
                supported: "x86_64 (PE machine 0x8664)",
            });
        }
    }
    let version = manifest.os_version.to_string();
    if version.contains('+') {
        return Err(bad(format!(
            "version {version} has build metadata ('+'), which would read as a boot counter in the UKI file name"
        )));
    }
    // Parsed from the very bytes that were hashed: the file may change
    // after `verify_dir` read it.
    let layout_art = manifest.artifact(bundle::LAYOUT).expect("checked above");
    let layout_bytes = read_verified(&dir, layout_art, MAX_LAYOUT, path)?;
    let layout = LayoutSpec::parse(&layout_bytes).map_err(|e| Error::Bundle {
        path: path.to_path_buf(),
        what: e.to_string(),
    })?;
    let uki = uki_facts(&dir.join(bundle::UKI))?;
    if uki.version != version {
        return Err(bad(format!(
            "uki.efi .osrel says version {}, the manifest says {version}",
            uki.version
        )));
    }
    match &manifest.verity_root_hash {
        Some(h) if *h == uki.root_hash => {}
        other => {
            return Err(bad(format!(
                "uki.efi boots rootfs {} but the manifest's verity_root_hash is {}",
                uki.root_hash,
                other.as_deref().unwrap_or("absent")
            )))
        }
    }
    let rootfs = manifest.artifact(bundle::ROOTFS).expect("checked above");
    if rootfs_stream.is_none() {
        check_rootfs(&dir.join(bundle::ROOTFS), &uki, path)?;
    } else if rootfs.size < superblock_offset(&uki) + artifacts::verity::BLOCK {
        return Err(bad(format!(
            "rootfs.img is {} bytes in the signed manifest; the UKI's {} data blocks need a verity superblock at {}",
            rootfs.size,
            uki.data_blocks,
            superblock_offset(&uki)
        )));
    }
    if rootfs.size > layout.boot {
        return Err(Error::DoesNotFit {
            what: format!("rootfs.img ({} bytes)", rootfs.size),
            partition: "a BOOT slot in layout.json".into(),
            need: rootfs.size,
            have: layout.boot,
        });
    }
    Ok(Bundle {
        dir,
        origin: path.to_path_buf(),
        manifest,
        manifest_bytes,
        layout,
        uki,
        rootfs_stream,
        _unpacked: unpacked,
    })
}

/// Where the verity superblock sits in a slot: right after the data blocks
/// the UKI names (design.md "Slot content").
pub(crate) fn superblock_offset(uki: &UkiFacts) -> u64 {
    uki.data_blocks * artifacts::verity::BLOCK
}

/// `layout.json` is three numbers; anything near this size is not one.
const MAX_LAYOUT: u64 = 64 << 10;

/// Reads the artifact `art` from `dir` once, at most `limit` bytes and
/// never more than its signed size, and returns those bytes only if they
/// are exactly the signed ones: whoever parses them parses what was hashed.
pub(crate) fn read_verified(
    dir: &Path,
    art: &signing::Artifact,
    limit: u64,
    origin: &Path,
) -> Result<Vec<u8>> {
    let path = dir.join(&art.name);
    let bad = |what: String| Error::Bundle {
        path: origin.to_path_buf(),
        what,
    };
    if art.size > limit {
        return Err(bad(format!(
            "{} is {} bytes in the signed manifest; at most {limit} are accepted",
            art.name, art.size
        )));
    }
    let f = std::fs::File::open(&path).map_err(|source| Error::File {
        what: "opening",
        path: path.clone(),
        source,
    })?;
    // One byte more than signed, to see a file that grew.
    let mut bytes = Vec::with_capacity(art.size as usize + 1);
    f.take(art.size + 1)
        .read_to_end(&mut bytes)
        .map_err(|source| Error::File {
            what: "reading",
            path: path.clone(),
            source,
        })?;
    let digest = signing::Sha256Digest::of(&bytes);
    if bytes.len() as u64 != art.size || digest != art.digest() {
        return Err(bad(format!(
            "{} changed after verification: {}{} bytes with sha256 {digest}, the manifest lists {} bytes with sha256 {}",
            art.name,
            if bytes.len() as u64 > art.size { "more than " } else { "" },
            bytes.len().min(art.size as usize),
            art.size,
            art.sha256
        )));
    }
    Ok(bytes)
}

/// The COFF machine type of a PE file (what the firmware checks too).
pub fn pe_machine(path: &Path) -> Result<u16> {
    let b = std::fs::read(path).map_err(|source| Error::File {
        what: "reading",
        path: path.to_path_buf(),
        source,
    })?;
    PeLayout::parse(path, &b)
        .map(|pe| pe.machine)
        .map_err(|e| Error::Bundle {
            path: e.path,
            what: format!("not a PE image: {}", e.what),
        })
}

/// Reads `.osrel` and `.cmdline` from the release UKI.
pub fn uki_facts(path: &Path) -> Result<UkiFacts> {
    let shown = path.display().to_string();
    let section = |name: &str| {
        Uki::read_section(path, name).map_err(|source| Error::Uki {
            what: format!("reading section {name}"),
            path: shown.clone(),
            source: Box::new(source),
        })
    };
    let osrel = String::from_utf8_lossy(&section(".osrel")?).into_owned();
    let cmdline = String::from_utf8_lossy(&section(".cmdline")?)
        .trim_end_matches(['\0', '\n', ' '])
        .to_string();
    let bad = |what: String| Error::Bundle {
        path: path.to_path_buf(),
        what,
    };
    if osrel_field(&osrel, "ID").as_deref() != Some("cairn") {
        return Err(bad("uki.efi .osrel has no ID=cairn".into()));
    }
    let version = osrel_field(&osrel, "IMAGE_VERSION")
        .or_else(|| osrel_field(&osrel, "VERSION_ID"))
        .ok_or_else(|| bad("uki.efi .osrel has no IMAGE_VERSION or VERSION_ID".into()))?;
    // The same parser init runs at boot: a UKI init would refuse is refused here.
    let parsed = contract::cmdline::parse(&cmdline)
        .map_err(|e| bad(format!("uki.efi .cmdline: {e}: {cmdline:?}")))?;
    let root_hash = parsed
        .rootfs
        .map(|h| contract::cmdline::hex(&h))
        .ok_or_else(|| {
            bad(format!(
                "uki.efi .cmdline has no 64-hex-digit cairn.rootfs=: {cmdline:?}"
            ))
        })?;
    let data_blocks = parsed.verity.map(|v| v.data_blocks).ok_or_else(|| {
        bad(format!(
            "uki.efi .cmdline has no cairn.verity=<blocks>,<salt>: {cmdline:?}"
        ))
    })?;
    if parsed.mode == contract::cmdline::Mode::Install {
        return Err(bad(
            "uki.efi is an installer UKI (cairn.mode=install), not a release".into(),
        ));
    }
    Ok(UkiFacts {
        cmdline,
        version,
        root_hash,
        data_blocks,
    })
}

/// The rootfs must hold the data blocks the UKI names and a verity
/// superblock right after them (design.md "Slot content").
fn check_rootfs(path: &Path, uki: &UkiFacts, origin: &Path) -> Result<()> {
    let bad = |what: String| Error::Bundle {
        path: origin.to_path_buf(),
        what,
    };
    let mut f = std::fs::File::open(path).map_err(|source| Error::File {
        what: "opening",
        path: path.to_path_buf(),
        source,
    })?;
    let len = f.metadata().map(|m| m.len()).unwrap_or(0);
    let sb = superblock_offset(uki);
    if len < sb + artifacts::verity::BLOCK {
        return Err(bad(format!(
            "rootfs.img is {len} bytes; the UKI's {} data blocks need a verity superblock at {sb}",
            uki.data_blocks
        )));
    }
    use std::io::{Seek, SeekFrom};
    let mut magic = [0u8; 8];
    f.seek(SeekFrom::Start(sb))
        .and_then(|_| f.read_exact(&mut magic))
        .map_err(|source| Error::File {
            what: "reading the verity superblock of",
            path: path.to_path_buf(),
            source,
        })?;
    if &magic != b"verity\0\0" {
        return Err(bad(format!(
            "rootfs.img has no verity superblock at offset {sb} (after {} data blocks)",
            uki.data_blocks
        )));
    }
    Ok(())
}
