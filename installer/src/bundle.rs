//! A release bundle: what `cairn build` emits for installs and upgrades.
//!
//! A directory, or a `.tar` of one (flat, no subdirectories), holding
//! `manifest.json`, `manifest.json.sig`, and the artifacts the signed
//! manifest lists: `uki.efi`, `rootfs.img`, `systemd-bootx64.efi`,
//! `layout.json`. See docs/installer.md.
//!
//! Opening one ([`open`]) trusts nothing before the signature: it reads
//! `manifest.json` and `manifest.json.sig` first, each at most
//! [`MAX_MANIFEST`] bytes, and verifies them against the trusted keys. Only
//! then does it look at any other file: from a directory it hashes the
//! listed artifacts; from a tar, whose first two members must be the
//! manifest and its signature, it extracts only the listed artifacts, each
//! of exactly its signed size (checked from the header, before its data is
//! read) and hashed in the same pass that writes it. Memory stays at a few
//! fixed buffers whatever the bundle's size; an unsigned tar never reaches
//! the temporary directory.

use std::fs::File;
use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};

use signing::{
    Artifact, ArtifactProblem, HashingReader, Manifest, PublicKey, StreamError, VerifyError,
    MANIFEST_FILE, SIGNATURE_FILE,
};

use crate::error::{Error, Result};
use contract::layout::LayoutSpec;

pub use contract::bundle::{BOOTLOADER, LAYOUT, REQUIRED, ROOTFS, UKI};

/// What the release's UKI says about its rootfs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UkiFacts {
    pub cmdline: String,
    pub version: String,
    /// `cairn.rootfs=`, 64 hex digits.
    pub root_hash: String,
    pub data_blocks: u64,
}

/// A rootfs that is not in the bundle directory but arrives as a stream (a
/// registry blob): read once, straight into the slot, hashed as it goes
/// (the reader fails on a wrong size or digest) and read back from the
/// slot before anything points at it. Nothing holds the whole image.
pub struct RootfsStream(std::sync::Mutex<Option<Box<dyn Read + Send>>>);

impl RootfsStream {
    pub fn new(r: Box<dyn Read + Send>) -> RootfsStream {
        RootfsStream(std::sync::Mutex::new(Some(r)))
    }

    /// The stream, once: a second write of the slot has nothing to read.
    pub(crate) fn take(&self) -> Option<Box<dyn Read + Send>> {
        self.0.lock().unwrap_or_else(|e| e.into_inner()).take()
    }
}

impl std::fmt::Debug for RootfsStream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("RootfsStream")
    }
}

/// A verified bundle (see [`crate::verify::open_verified`]): the signature,
/// every artifact hash and the cross-checks between them all passed.
#[derive(Debug)]
pub struct Bundle {
    /// Where the artifacts are (the directory, or where the tar was unpacked).
    pub dir: PathBuf,
    /// The path the user gave.
    pub origin: PathBuf,
    pub manifest: Manifest,
    pub manifest_bytes: Vec<u8>,
    pub layout: LayoutSpec,
    pub uki: UkiFacts,
    /// Set when rootfs.img streams in rather than sitting in `dir`
    /// ([`crate::verify::open_streamed`]).
    pub rootfs_stream: Option<RootfsStream>,
    pub(crate) _unpacked: Option<tempfile::TempDir>,
}

impl Bundle {
    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.join(name)
    }

    pub fn artifact(&self, name: &str) -> &Artifact {
        self.manifest
            .artifact(name)
            .expect("open_verified checked every required artifact is listed")
    }

    pub fn version(&self) -> String {
        self.manifest.os_version.to_string()
    }

    /// `cairn-<version>`: the UKI's name on the ESP without counter.
    pub fn entry_base(&self) -> String {
        contract::esp::entry_base(&self.version())
    }
}

/// Largest `manifest.json` or `manifest.json.sig` read (a manifest is a few
/// KiB): the two are read whole before anything is verified, so their size
/// must not be the bundle's choice.
pub const MAX_MANIFEST: u64 = contract::bundle::MAX_MANIFEST_BYTES;

/// Copy buffer for extracting and hashing: the only memory that would grow
/// with a member's size if it were not fixed.
const COPY_BUF: usize = 1 << 20;

/// A bundle whose manifest signature verified and whose listed artifacts all
/// have their signed size and sha256.
pub(crate) struct Opened {
    /// Where the artifacts are: the bundle directory, or `unpacked`.
    pub dir: PathBuf,
    pub unpacked: Option<tempfile::TempDir>,
    pub manifest: Manifest,
    /// The exact bytes the signature covers.
    pub manifest_bytes: Vec<u8>,
}

/// Opens a bundle directory or tar: signature first, then the artifacts.
pub(crate) fn open(path: &Path, trusted: &[PublicKey]) -> Result<Opened> {
    if path.is_dir() {
        open_dir(path, trusted)
    } else {
        open_tar(path, trusted)
    }
}

fn verify_err(path: &Path, source: VerifyError) -> Error {
    Error::Verify {
        path: path.to_path_buf(),
        source: Box::new(source),
    }
}

fn bad(path: &Path, what: String) -> Error {
    Error::Bundle {
        path: path.to_path_buf(),
        what,
    }
}

fn verify(path: &Path, manifest: &[u8], sig: &[u8], trusted: &[PublicKey]) -> Result<Manifest> {
    signing::verify_manifest(manifest, sig, trusted).map_err(|e| verify_err(path, e))
}

/// Reads `dir/name`, a regular file of at most [`MAX_MANIFEST`] bytes. The
/// read itself is bounded too, so a file that grows after the size check
/// cannot make it larger.
fn read_small(bundle: &Path, name: &str) -> Result<Vec<u8>> {
    let path = bundle.join(name);
    let io_err = |source| {
        verify_err(
            bundle,
            VerifyError::Io {
                path: path.clone(),
                source,
            },
        )
    };
    let meta = std::fs::metadata(&path).map_err(io_err)?;
    if !meta.is_file() {
        return Err(bad(bundle, format!("{name} is not a regular file")));
    }
    if meta.len() > MAX_MANIFEST {
        return Err(too_big(bundle, name, meta.len()));
    }
    let mut out = Vec::with_capacity(meta.len() as usize);
    File::open(&path)
        .and_then(|f| f.take(MAX_MANIFEST + 1).read_to_end(&mut out))
        .map_err(io_err)?;
    if out.len() as u64 > MAX_MANIFEST {
        return Err(too_big(bundle, name, out.len() as u64));
    }
    Ok(out)
}

fn too_big(bundle: &Path, name: &str, size: u64) -> Error {
    bad(
        bundle,
        format!("{name} is {size} bytes, over the limit of {MAX_MANIFEST}; refused unread"),
    )
}

fn open_dir(dir: &Path, trusted: &[PublicKey]) -> Result<Opened> {
    open_dir_except(dir, trusted, &[])
}

/// A bundle directory whose artifacts named in `elsewhere` are not in it
/// (they stream in, see [`RootfsStream`]): every other listed artifact is
/// checked as [`open`] checks it.
pub(crate) fn open_dir_except(
    dir: &Path,
    trusted: &[PublicKey],
    elsewhere: &[&str],
) -> Result<Opened> {
    let manifest_bytes = read_small(dir, MANIFEST_FILE)?;
    let sig = read_small(dir, SIGNATURE_FILE)?;
    let manifest = verify(dir, &manifest_bytes, &sig, trusted)?;
    let problems: Vec<ArtifactProblem> = manifest
        .artifacts
        .iter()
        .filter(|a| !elsewhere.contains(&a.name.as_str()))
        .filter_map(|a| signing::verify::check_artifact(dir, a))
        .collect();
    if !problems.is_empty() {
        return Err(verify_err(dir, VerifyError::Artifacts { problems }));
    }
    Ok(Opened {
        dir: dir.to_path_buf(),
        unpacked: None,
        manifest,
        manifest_bytes,
    })
}

/// Checks what went through `r` against the signed entry, as the problem
/// `signing::verify_dir` would report.
fn expect<R: Read>(r: HashingReader<R>, a: &Artifact) -> std::result::Result<(), ArtifactProblem> {
    let name = a.name.clone();
    match r.expect(a.digest(), a.size) {
        Ok(_) => Ok(()),
        Err(StreamError::Size { expected, actual }) => Err(ArtifactProblem::Size {
            name,
            expected,
            actual,
        }),
        Err(StreamError::Hash {
            expected, actual, ..
        }) => Err(ArtifactProblem::Hash {
            name,
            expected,
            actual,
        }),
        Err(source) => Err(ArtifactProblem::Io { name, source }),
    }
}

/// Which side of a [`pump`] failed.
enum Failed {
    Read(io::Error),
    Write(io::Error),
}

/// `io::copy` through the caller's fixed buffer (std's is 8 KiB, slow on a
/// GiB rootfs), saying which side failed.
fn pump(r: &mut impl Read, w: &mut impl Write, buf: &mut [u8]) -> std::result::Result<(), Failed> {
    loop {
        match r.read(buf) {
            Ok(0) => return Ok(()),
            Ok(n) => w.write_all(&buf[..n]).map_err(Failed::Write)?,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(Failed::Read(e)),
        }
    }
}

/// The policy for a tar's first members: the manifest and its signature,
/// small, in that order; nothing else is read before they verify.
fn leading_policy() -> artifacts::bundle::ReadPolicy {
    let leading = vec![MANIFEST_FILE.to_string(), SIGNATURE_FILE.to_string()];
    artifacts::bundle::ReadPolicy {
        allowed: leading.clone(),
        max_entry_size: MAX_MANIFEST,
        leading,
    }
}

fn open_tar(path: &Path, trusted: &[PublicKey]) -> Result<Opened> {
    let ar = artifacts::bundle::open(path, leading_policy())
        .map_err(|e| bad(path, format!("opening the tar: {e}")))?;
    unpack_tar(path, ar, &std::env::temp_dir(), trusted)
}

/// A bundle tar read from a stream (the node API's upload): verified and
/// unpacked into a new directory under `unpack_in` (on disk: a rootfs is
/// hundreds of MiB), which goes when the bundle does. `name` is what errors
/// call the stream. A stream that ends early is refused like a short tar.
pub(crate) fn open_tar_stream(
    name: &Path,
    r: impl Read,
    trusted: &[PublicKey],
    unpack_in: &Path,
) -> Result<Opened> {
    let ar = artifacts::bundle::BundleReader::new(r, leading_policy());
    unpack_tar(name, ar, unpack_in, trusted)
}

/// Signature first, then every member the signed manifest lists, each
/// checked against its signed size from the header (a wrong one is refused
/// unread) and hashed as it is written into a new directory under
/// `unpack_in`, made only once the signature verified: nothing of an
/// unsigned bundle is written anywhere.
fn unpack_tar<R: Read>(
    path: &Path,
    mut ar: artifacts::bundle::BundleReader<R>,
    unpack_in: &Path,
    trusted: &[PublicKey],
) -> Result<Opened> {
    use artifacts::bundle::ReadPolicy;
    let tar_err = |e: artifacts::bundle::BundleError| bad(path, e.to_string());
    let mut small = |what: &str| -> Result<Vec<u8>> {
        // The reader refuses an archive that ends before its leading
        // members; `None` here would be a bug there, still not a panic.
        let mut entry = ar
            .next_entry()
            .map_err(tar_err)?
            .ok_or_else(|| bad(path, format!("the tar has no {what}")))?;
        // The policy capped the size at MAX_MANIFEST.
        let mut out = Vec::with_capacity(entry.size() as usize);
        entry
            .read_to_end(&mut out)
            .map_err(|e| bad(path, format!("reading {what}: {e}")))?;
        Ok(out)
    };
    let manifest_bytes = small(MANIFEST_FILE)?;
    let sig = small(SIGNATURE_FILE)?;
    let manifest = verify(path, &manifest_bytes, &sig, trusted)?;

    // Verified: from here on the signed manifest says what may follow.
    ar.set_policy(ReadPolicy {
        allowed: manifest.artifacts.iter().map(|a| a.name.clone()).collect(),
        // Each member's exact signed size is checked below, from its header.
        max_entry_size: u64::MAX,
        leading: Vec::new(),
    });
    let dir = tempfile::tempdir_in(unpack_in).map_err(|source| Error::File {
        what: "creating a directory to unpack the bundle in",
        path: unpack_in.to_path_buf(),
        source,
    })?;
    let mut buf = vec![0u8; COPY_BUF];
    let mut seen = std::collections::BTreeSet::new();
    while let Some(entry) = ar.next_entry().map_err(tar_err)? {
        let Some(a) = manifest.artifact(entry.name()) else {
            // The reader's policy admits only listed names.
            return Err(bad(path, format!("member {} is not listed", entry.name())));
        };
        if entry.size() != a.size {
            return Err(bad(
                path,
                format!(
                    "member {} (header at offset {}) is {} bytes, the signed manifest lists {}; refused unread",
                    a.name,
                    entry.offset(),
                    entry.size(),
                    a.size
                ),
            ));
        }
        seen.insert(a.name.clone());
        extract(path, entry, a, dir.path(), &mut buf)?;
    }
    let missing: Vec<&str> = manifest
        .artifacts
        .iter()
        .map(|a| a.name.as_str())
        .filter(|n| !seen.contains(*n))
        .collect();
    if !missing.is_empty() {
        return Err(bad(
            path,
            format!("the signed manifest lists {missing:?}, which the tar does not hold"),
        ));
    }
    Ok(Opened {
        dir: dir.path().to_path_buf(),
        unpacked: Some(dir),
        manifest,
        manifest_bytes,
    })
}

/// Writes one member to `dir`, hashing it on the way: one pass, one buffer.
fn extract(tar: &Path, entry: impl Read, a: &Artifact, dir: &Path, buf: &mut [u8]) -> Result<()> {
    let out = dir.join(&a.name);
    let mut f = File::create_new(&out).map_err(|source| Error::File {
        what: "unpacking bundle member to",
        path: out.clone(),
        source,
    })?;
    let mut r = HashingReader::new(entry);
    pump(&mut r, &mut f, buf).map_err(|e| match e {
        // The tar reader's errors name the member and the offset.
        Failed::Read(e) => bad(tar, format!("reading member {}: {e}", a.name)),
        Failed::Write(source) => Error::File {
            what: "unpacking bundle member to",
            path: out.clone(),
            source,
        },
    })?;
    expect(r, a).map_err(|p| verify_err(tar, VerifyError::Artifacts { problems: vec![p] }))
}
