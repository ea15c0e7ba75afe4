//! The release manifest and its one canonical serialization.
//!
//! `manifest.json` is pretty-printed JSON (two-space indent, fields in the
//! order of [`Manifest`], maps sorted by key, artifacts sorted by name) with a
//! trailing newline. Parsing accepts only that exact form: a manifest that
//! would re-serialize to different bytes is rejected, so one release has
//! exactly one signed byte string and readers never see fields or
//! duplicates the writer would not produce.

use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use crate::keys::KeyId;
use crate::stream::{hash_file, Sha256Digest, StreamError};

/// The manifest format this crate writes and reads.
pub const FORMAT_VERSION: u32 = 1;

#[derive(Debug, thiserror::Error)]
pub enum ManifestError {
    #[error("manifest is not valid JSON for format {FORMAT_VERSION}: {0}")]
    Json(String),
    #[error("manifest format {found} is not supported (this build reads {FORMAT_VERSION})")]
    Format { found: u32 },
    #[error("manifest is not in canonical form (first difference at byte {offset})")]
    NotCanonical { offset: usize },
    #[error("manifest field {field}: {reason}")]
    Field { field: String, reason: String },
    #[error("artifact {name}: {source}")]
    Hash {
        name: String,
        #[source]
        source: StreamError,
    },
    #[error("reading {path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

fn field(field: impl Into<String>, reason: impl Into<String>) -> ManifestError {
    ManifestError::Field {
        field: field.into(),
        reason: reason.into(),
    }
}

/// One released file, by name within the release directory.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Artifact {
    pub name: String,
    pub size: u64,
    /// 64 lowercase hex digits.
    pub sha256: String,
}

impl Artifact {
    pub fn digest(&self) -> Sha256Digest {
        // validate() guarantees the form for every parsed or built manifest.
        Sha256Digest::from_hex(&self.sha256).unwrap_or(Sha256Digest([0; 32]))
    }
}

/// A signed release description. Field order here is the serialization order.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Manifest {
    pub format: u32,
    pub os_name: String,
    pub os_version: semver::Version,
    pub profile: String,
    pub source_date_epoch: u64,
    pub arch: String,
    pub artifacts: Vec<Artifact>,
    /// Source pins and package cache keys that produced the release.
    pub inputs: BTreeMap<String, String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub verity_root_hash: Option<String>,
    /// 32 hex digits; see [`KeyId`].
    pub key_id: String,
}

/// What the pipeline knows about a release before the artifacts are hashed.
/// Also the form of an unsigned `manifest.json` handed to `cairn sign`: the
/// manifest fields without `format`/`key_id`, and `artifacts` as a list of
/// names (or of full entries, whose size/sha256 are recomputed).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ReleaseMeta {
    pub os_name: String,
    pub os_version: semver::Version,
    pub profile: String,
    pub source_date_epoch: u64,
    pub arch: String,
    #[serde(default)]
    pub inputs: BTreeMap<String, String>,
    #[serde(default)]
    pub verity_root_hash: Option<String>,
}

#[derive(Deserialize)]
#[serde(untagged)]
enum DraftArtifact {
    Name(String),
    Entry {
        name: String,
        #[allow(dead_code)]
        size: Option<u64>,
        #[allow(dead_code)]
        sha256: Option<String>,
    },
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Draft {
    #[serde(default)]
    format: Option<u32>,
    #[serde(flatten)]
    meta: DraftMeta,
    artifacts: Vec<DraftArtifact>,
    #[serde(default)]
    #[allow(dead_code)]
    key_id: Option<String>,
}

// serde cannot combine flatten with deny_unknown_fields, so the draft lists
// the meta fields itself.
#[derive(Deserialize)]
struct DraftMeta {
    os_name: String,
    os_version: semver::Version,
    profile: String,
    source_date_epoch: u64,
    arch: String,
    #[serde(default)]
    inputs: BTreeMap<String, String>,
    #[serde(default)]
    verity_root_hash: Option<String>,
}

/// Architectures a release may name.
pub const ARCHES: &[&str] = &["x86_64"];

/// Reserved names in a release directory that are never artifacts.
pub const RESERVED: &[&str] = &["manifest.json", "manifest.json.sig"];

impl ReleaseMeta {
    /// Parses an unsigned draft manifest: the meta plus the artifact names.
    pub fn parse_draft(bytes: &[u8]) -> Result<(ReleaseMeta, Vec<String>), ManifestError> {
        let d: Draft = serde_json::from_slice(bytes)
            .map_err(|e| ManifestError::Json(format!("unsigned manifest: {e}")))?;
        if let Some(found) = d.format {
            if found != FORMAT_VERSION {
                return Err(ManifestError::Format { found });
            }
        }
        let names = d
            .artifacts
            .into_iter()
            .map(|a| match a {
                DraftArtifact::Name(n) | DraftArtifact::Entry { name: n, .. } => n,
            })
            .collect();
        let m = d.meta;
        Ok((
            ReleaseMeta {
                os_name: m.os_name,
                os_version: m.os_version,
                profile: m.profile,
                source_date_epoch: m.source_date_epoch,
                arch: m.arch,
                inputs: m.inputs,
                verity_root_hash: m.verity_root_hash,
            },
            names,
        ))
    }
}

impl Manifest {
    /// Builds a manifest by hashing `files` (plain names in `dir`), streaming
    /// each one. `key_id` is filled in when the manifest is signed.
    pub fn from_dir(dir: &Path, meta: ReleaseMeta, files: &[&str]) -> Result<Self, ManifestError> {
        let mut names: Vec<&str> = files.to_vec();
        names.sort_unstable();
        let mut artifacts = Vec::with_capacity(names.len());
        for name in names {
            check_name(name)?;
            let path = dir.join(name);
            let meta = std::fs::symlink_metadata(&path).map_err(|source| ManifestError::Io {
                path: path.clone(),
                source,
            })?;
            if !meta.file_type().is_file() {
                return Err(field(
                    format!("artifacts[{name}]"),
                    format!("{} is not a regular file", path.display()),
                ));
            }
            let (size, digest) = hash_file(&path).map_err(|source| ManifestError::Hash {
                name: name.to_string(),
                source,
            })?;
            artifacts.push(Artifact {
                name: name.to_string(),
                size,
                sha256: digest.to_hex(),
            });
        }
        let m = Manifest {
            format: FORMAT_VERSION,
            os_name: meta.os_name,
            os_version: meta.os_version,
            profile: meta.profile,
            source_date_epoch: meta.source_date_epoch,
            arch: meta.arch,
            artifacts,
            inputs: meta.inputs,
            verity_root_hash: meta.verity_root_hash,
            key_id: String::new(),
        };
        m.validate_unsigned()?;
        Ok(m)
    }

    /// The release version, for refusing downgrades. Compare with
    /// [`semver::Version::cmp_precedence`] to follow semver precedence
    /// exactly (build metadata ignored); `Ord` also orders build metadata.
    pub fn version(&self) -> &semver::Version {
        &self.os_version
    }

    pub fn artifact(&self, name: &str) -> Option<&Artifact> {
        self.artifacts
            .binary_search_by(|a| a.name.as_str().cmp(name))
            .ok()
            .map(|i| &self.artifacts[i])
    }

    pub fn key_id(&self) -> Option<KeyId> {
        KeyId::from_hex(&self.key_id)
    }

    /// The canonical bytes. Only for valid manifests; [`Manifest::parse`]
    /// and [`Manifest::from_dir`] produce those.
    pub fn to_canonical_bytes(&self) -> Vec<u8> {
        let mut out =
            serde_json::to_vec_pretty(self).expect("manifest serializes: no non-string map keys");
        out.push(b'\n');
        out
    }

    /// Parses and validates a signed manifest, accepting only canonical bytes.
    pub fn parse(bytes: &[u8]) -> Result<Self, ManifestError> {
        let m: Manifest =
            serde_json::from_slice(bytes).map_err(|e| ManifestError::Json(e.to_string()))?;
        if m.format != FORMAT_VERSION {
            return Err(ManifestError::Format { found: m.format });
        }
        m.validate_unsigned()?;
        if m.key_id().is_none() {
            return Err(field(
                "key_id",
                format!("{:?} is not 32 lowercase hex digits", m.key_id),
            ));
        }
        let canon = m.to_canonical_bytes();
        if canon != bytes {
            let offset = canon
                .iter()
                .zip(bytes)
                .position(|(a, b)| a != b)
                .unwrap_or(canon.len().min(bytes.len()));
            return Err(ManifestError::NotCanonical { offset });
        }
        Ok(m)
    }

    /// Every rule except the key id, which is only set when signing.
    pub fn validate_unsigned(&self) -> Result<(), ManifestError> {
        for (name, value) in [("os_name", &self.os_name), ("profile", &self.profile)] {
            if value.is_empty() || value.chars().any(|c| c.is_control() || c == '/') {
                return Err(field(
                    name,
                    format!("{value:?} must be non-empty, without '/' or control characters"),
                ));
            }
        }
        if !ARCHES.contains(&self.arch.as_str()) {
            return Err(field(
                "arch",
                format!("{:?} is not one of {ARCHES:?}", self.arch),
            ));
        }
        if self.artifacts.is_empty() {
            return Err(field("artifacts", "a release lists at least one artifact"));
        }
        for (i, a) in self.artifacts.iter().enumerate() {
            check_name(&a.name)?;
            if Sha256Digest::from_hex(&a.sha256).is_none() {
                return Err(field(
                    format!("artifacts[{}].sha256", a.name),
                    format!("{:?} is not 64 lowercase hex digits", a.sha256),
                ));
            }
            if i > 0 && self.artifacts[i - 1].name >= a.name {
                return Err(field(
                    "artifacts",
                    format!(
                        "names must be unique and sorted: {:?} follows {:?}",
                        a.name,
                        self.artifacts[i - 1].name
                    ),
                ));
            }
        }
        if let Some(h) = &self.verity_root_hash {
            if Sha256Digest::from_hex(h).is_none() {
                return Err(field(
                    "verity_root_hash",
                    format!("{h:?} is not 64 lowercase hex digits"),
                ));
            }
        }
        for k in self.inputs.keys() {
            if k.is_empty() {
                return Err(field("inputs", "empty input name"));
            }
        }
        Ok(())
    }
}

/// Artifact names are single path components, so verification can never be
/// steered outside the release directory.
fn check_name(name: &str) -> Result<(), ManifestError> {
    let bad = name.is_empty()
        || name == "."
        || name == ".."
        || name.contains('/')
        || name.chars().any(|c| c.is_control())
        || RESERVED.contains(&name);
    if bad {
        return Err(field(
            format!("artifacts[{name:?}]"),
            "must be a plain file name (no '/', not '.', '..', manifest.json or manifest.json.sig)",
        ));
    }
    Ok(())
}
