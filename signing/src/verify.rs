//! Signing and verifying a release directory.
//!
//! `manifest.json.sig` format (version 1): one line of canonical compact JSON
//! and a newline,
//!
//! ```text
//! {"format":1,"algorithm":"ed25519","key_id":"<32 hex>","signature":"<128 hex>"}
//! ```
//!
//! `signature` is a plain RFC 8032 ed25519 signature by the key named by
//! `key_id` over the message `"cairn-manifest-v1\0"` followed by the exact
//! bytes of `manifest.json`. The prefix keeps a manifest signature from ever
//! being valid for some other message signed with the same key. The manifest
//! repeats the key id, so the signed bytes themselves say who signed them.
//! Any tool can check a release by hand:
//! `printf 'cairn-manifest-v1\0' | cat - manifest.json > msg;
//!  openssl pkeyutl -verify -pubin -inkey KEY.pub -rawin -in msg -sigfile SIG.bin`.

use serde::{Deserialize, Serialize};
use std::fs;
use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};

use crate::keys::{KeyId, PrivateKey, PublicKey};
use crate::manifest::{Manifest, ManifestError, ReleaseMeta, RESERVED};
use crate::stream::{hash_file, Sha256Digest, StreamError};

pub const MANIFEST_FILE: &str = "manifest.json";
pub const SIGNATURE_FILE: &str = "manifest.json.sig";
/// Largest manifest or signature a reader accepts: both are read into
/// memory before anything is trusted, so they are bounded.
pub const MAX_MANIFEST_BYTES: u64 = 1 << 20;

/// Domain separation prefix of the signed message.
pub const SIGNING_CONTEXT: &[u8] = b"cairn-manifest-v1\0";

const SIG_FORMAT: u32 = 1;
const SIG_ALGORITHM: &str = "ed25519";

#[derive(Debug, thiserror::Error)]
pub enum VerifyError {
    #[error("{SIGNATURE_FILE}: {reason}")]
    SignatureFormat { reason: String },
    #[error("{SIGNATURE_FILE}: signed by key {key_id}, which is not trusted (trusted: {trusted})")]
    UnknownKey { key_id: KeyId, trusted: String },
    #[error("{SIGNATURE_FILE}: signature by key {key_id} does not match {MANIFEST_FILE} (edited after signing, or corrupted)")]
    BadSignature { key_id: KeyId },
    #[error("{MANIFEST_FILE}: {0}")]
    Manifest(#[from] ManifestError),
    #[error(
        "{MANIFEST_FILE} names signing key {manifest} but {SIGNATURE_FILE} is by key {signature}"
    )]
    KeyIdMismatch { manifest: String, signature: KeyId },
    #[error("{}", artifact_summary(.problems))]
    Artifacts { problems: Vec<ArtifactProblem> },
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
}

fn artifact_summary(problems: &[ArtifactProblem]) -> String {
    let list: Vec<String> = problems.iter().map(|p| p.to_string()).collect();
    format!(
        "{} artifact(s) failed verification: {}",
        problems.len(),
        list.join("; ")
    )
}

/// Why one listed artifact does not match.
#[derive(Debug, thiserror::Error)]
pub enum ArtifactProblem {
    #[error("artifact {name}: missing")]
    Missing { name: String },
    #[error("artifact {name}: not a regular file")]
    NotAFile { name: String },
    #[error("artifact {name}: size {actual} bytes, manifest lists {expected}")]
    Size {
        name: String,
        expected: u64,
        actual: u64,
    },
    #[error("artifact {name}: sha256 {actual}, manifest lists {expected}")]
    Hash {
        name: String,
        expected: Sha256Digest,
        actual: Sha256Digest,
    },
    #[error("artifact {name}: {source}")]
    Io {
        name: String,
        #[source]
        source: StreamError,
    },
}

impl ArtifactProblem {
    pub fn name(&self) -> &str {
        match self {
            ArtifactProblem::Missing { name }
            | ArtifactProblem::NotAFile { name }
            | ArtifactProblem::Size { name, .. }
            | ArtifactProblem::Hash { name, .. }
            | ArtifactProblem::Io { name, .. } => name,
        }
    }
}

/// The parsed `manifest.json.sig`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SignatureFile {
    pub format: u32,
    pub algorithm: String,
    pub key_id: String,
    pub signature: String,
}

impl SignatureFile {
    fn new(key_id: KeyId, signature: &[u8; 64]) -> Self {
        SignatureFile {
            format: SIG_FORMAT,
            algorithm: SIG_ALGORITHM.into(),
            key_id: key_id.to_string(),
            signature: hex::encode(signature),
        }
    }

    pub fn to_bytes(&self) -> Vec<u8> {
        let mut out = serde_json::to_vec(self).expect("signature file serializes");
        out.push(b'\n');
        out
    }

    /// Parses and checks the signature file, accepting only canonical bytes.
    pub fn parse(bytes: &[u8]) -> Result<(KeyId, [u8; 64]), VerifyError> {
        let bad = |reason: String| VerifyError::SignatureFormat { reason };
        let s: SignatureFile = serde_json::from_slice(bytes).map_err(|e| {
            if e.is_eof() {
                bad(format!("truncated after {} bytes ({e})", bytes.len()))
            } else {
                bad(format!("not a signature file: {e}"))
            }
        })?;
        if s.format != SIG_FORMAT {
            return Err(bad(format!(
                "format {} is not supported (this build reads {SIG_FORMAT})",
                s.format
            )));
        }
        if s.algorithm != SIG_ALGORITHM {
            return Err(bad(format!(
                "algorithm {:?} is not supported (only {SIG_ALGORITHM})",
                s.algorithm
            )));
        }
        let key_id = KeyId::from_hex(&s.key_id).ok_or_else(|| {
            bad(format!(
                "key_id {:?} is not 32 lowercase hex digits",
                s.key_id
            ))
        })?;
        let mut sig = [0u8; 64];
        if s.signature.len() != 128
            || s.signature.bytes().any(|b| b.is_ascii_uppercase())
            || hex::decode_to_slice(&s.signature, &mut sig).is_err()
        {
            return Err(bad(format!(
                "signature is {} characters, expected 128 lowercase hex digits (64 bytes)",
                s.signature.len()
            )));
        }
        if s.to_bytes() != bytes {
            return Err(bad("not in canonical form".into()));
        }
        Ok((key_id, sig))
    }
}

fn signed_message(manifest_bytes: &[u8]) -> Vec<u8> {
    let mut msg = Vec::with_capacity(SIGNING_CONTEXT.len() + manifest_bytes.len());
    msg.extend_from_slice(SIGNING_CONTEXT);
    msg.extend_from_slice(manifest_bytes);
    msg
}

/// Stamps the key id into `manifest` and returns the canonical manifest bytes
/// and the signature file bytes.
pub fn sign_manifest(
    manifest: &mut Manifest,
    key: &PrivateKey,
) -> Result<(Vec<u8>, Vec<u8>), ManifestError> {
    manifest.key_id = key.id().to_string();
    let bytes = manifest.to_canonical_bytes();
    // Round-trip through the reader: never sign something verify would refuse.
    Manifest::parse(&bytes)?;
    let sig = key.sign(&signed_message(&bytes));
    Ok((bytes, SignatureFile::new(key.id(), &sig).to_bytes()))
}

/// Checks the signature against the trusted keys, then parses the manifest.
/// Nothing in the manifest is trusted or even parsed before the signature
/// verifies.
pub fn verify_manifest(
    manifest_bytes: &[u8],
    sig_bytes: &[u8],
    trusted: &[PublicKey],
) -> Result<Manifest, VerifyError> {
    let (key_id, sig) = SignatureFile::parse(sig_bytes)?;
    let key = trusted
        .iter()
        .find(|k| k.id() == key_id)
        .ok_or_else(|| VerifyError::UnknownKey {
            key_id,
            trusted: if trusted.is_empty() {
                "none".into()
            } else {
                trusted
                    .iter()
                    .map(|k| k.id().to_string())
                    .collect::<Vec<_>>()
                    .join(", ")
            },
        })?;
    if !key.verify(&signed_message(manifest_bytes), &sig) {
        return Err(VerifyError::BadSignature { key_id });
    }
    let manifest = Manifest::parse(manifest_bytes)?;
    if manifest.key_id() != Some(key_id) {
        return Err(VerifyError::KeyIdMismatch {
            manifest: manifest.key_id.clone(),
            signature: key_id,
        });
    }
    Ok(manifest)
}

/// A verified release directory.
#[derive(Debug)]
pub struct DirReport {
    pub manifest: Manifest,
    /// Entries in the directory the manifest does not list (allowed).
    pub extra_files: Vec<String>,
}

/// Hashes `files` in `dir`, signs, and writes `manifest.json` and
/// `manifest.json.sig` there (each via a temporary file and rename).
pub fn sign_dir(
    dir: &Path,
    meta: ReleaseMeta,
    files: &[&str],
    key: &PrivateKey,
) -> Result<Manifest, VerifyError> {
    let mut manifest = Manifest::from_dir(dir, meta, files)?;
    let (bytes, sig) = sign_manifest(&mut manifest, key)?;
    write_replace(&dir.join(MANIFEST_FILE), &bytes)?;
    write_replace(&dir.join(SIGNATURE_FILE), &sig)?;
    Ok(manifest)
}

fn write_replace(path: &Path, data: &[u8]) -> Result<(), VerifyError> {
    let io_err = |p: &Path| {
        let p = p.to_path_buf();
        move |source| VerifyError::Io { path: p, source }
    };
    let mut tmp_name = path.as_os_str().to_os_string();
    tmp_name.push(".tmp");
    let tmp = PathBuf::from(tmp_name);
    let mut f = fs::File::create(&tmp).map_err(io_err(&tmp))?;
    f.write_all(data).map_err(io_err(&tmp))?;
    f.sync_all().map_err(io_err(&tmp))?;
    fs::rename(&tmp, path).map_err(io_err(path))
}

/// Verifies `dir/manifest.json` with its signature, then every listed
/// artifact's size and sha256 (streamed). All artifact problems are reported
/// together.
pub fn verify_dir(dir: &Path, trusted: &[PublicKey]) -> Result<DirReport, VerifyError> {
    // Both are read whole before anything is trusted: bounded.
    let read = |name: &str| {
        let p = dir.join(name);
        let mut out = Vec::new();
        fs::File::open(&p)
            .and_then(|f| f.take(MAX_MANIFEST_BYTES + 1).read_to_end(&mut out))
            .map_err(|source| VerifyError::Io {
                path: p.clone(),
                source,
            })?;
        if out.len() as u64 > MAX_MANIFEST_BYTES {
            return Err(VerifyError::Io {
                path: p,
                source: io::Error::new(
                    io::ErrorKind::InvalidData,
                    format!("over the limit of {MAX_MANIFEST_BYTES} bytes"),
                ),
            });
        }
        Ok(out)
    };
    let manifest_bytes = read(MANIFEST_FILE)?;
    let sig_bytes = read(SIGNATURE_FILE)?;
    let manifest = verify_manifest(&manifest_bytes, &sig_bytes, trusted)?;

    let mut problems = Vec::new();
    for a in &manifest.artifacts {
        if let Some(p) = check_artifact(dir, a) {
            problems.push(p);
        }
    }
    if !problems.is_empty() {
        return Err(VerifyError::Artifacts { problems });
    }

    let mut extra_files = Vec::new();
    let entries = fs::read_dir(dir).map_err(|source| VerifyError::Io {
        path: dir.to_path_buf(),
        source,
    })?;
    for e in entries {
        let e = e.map_err(|source| VerifyError::Io {
            path: dir.to_path_buf(),
            source,
        })?;
        let name = e.file_name().to_string_lossy().into_owned();
        if !RESERVED.contains(&name.as_str()) && manifest.artifact(&name).is_none() {
            extra_files.push(name);
        }
    }
    extra_files.sort();
    Ok(DirReport {
        manifest,
        extra_files,
    })
}

/// One listed artifact of a bundle directory: a regular file of its signed
/// size and sha256. The installer checks directory bundles with this too.
pub fn check_artifact(dir: &Path, a: &crate::Artifact) -> Option<ArtifactProblem> {
    let (size, expected) = (a.size, a.digest());
    let path = dir.join(&a.name);
    let name = a.name.clone();
    let meta = match fs::metadata(&path) {
        Ok(m) => m,
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            return Some(ArtifactProblem::Missing { name })
        }
        Err(e) => {
            return Some(ArtifactProblem::Io {
                name,
                source: StreamError::Io { path, source: e },
            })
        }
    };
    if !meta.is_file() {
        return Some(ArtifactProblem::NotAFile { name });
    }
    // Cheap check first; the hash below re-counts the bytes it actually read
    // in case the file changes underneath.
    if meta.len() != size {
        return Some(ArtifactProblem::Size {
            name,
            expected: size,
            actual: meta.len(),
        });
    }
    match hash_file(&path) {
        Err(source) => Some(ArtifactProblem::Io { name, source }),
        Ok((actual_size, _)) if actual_size != size => Some(ArtifactProblem::Size {
            name,
            expected: size,
            actual: actual_size,
        }),
        Ok((_, actual)) if actual != expected => Some(ArtifactProblem::Hash {
            name,
            expected,
            actual,
        }),
        Ok(_) => None,
    }
}
