//! The upgrade bundle as an OCI artifact in an OCI image layout directory
//! (`oci-layout`, `index.json`, `blobs/sha256/…`), ready for `skopeo copy`
//! or `oras` to push to any registry.
//!
//! One image manifest with the caller's `artifactType` (cairn's bundle type
//! and layer media types live in `contract::bundle::oci`), the empty config
//! descriptor, and one layer per file (titled with the file name). JSON is compact with a fixed field order (struct order;
//! annotation maps sorted), so the manifest digest is a function of the
//! inputs. Blobs are hashed while they are copied, each lands under a
//! temporary name and is renamed to its digest; `index.json` is written last,
//! so a layout with an index is complete.

use std::collections::BTreeMap;
use std::fs::{self, File};
use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};

use serde::Serialize;
use sha2::{Digest, Sha256};

use crate::date::{Civil, LAST_RFC3339_EPOCH};

pub const MANIFEST_MEDIA_TYPE: &str = "application/vnd.oci.image.manifest.v1+json";
pub const INDEX_MEDIA_TYPE: &str = "application/vnd.oci.image.index.v1+json";
pub const EMPTY_MEDIA_TYPE: &str = "application/vnd.oci.empty.v1+json";
pub const ANNOTATION_TITLE: &str = "org.opencontainers.image.title";
pub const ANNOTATION_CREATED: &str = "org.opencontainers.image.created";
pub const ANNOTATION_REF_NAME: &str = "org.opencontainers.image.ref.name";

const COPY_BUF: usize = 1 << 20;

#[derive(Debug, thiserror::Error)]
pub enum OciError {
    #[error("tag {tag:?}: {why} (OCI ref grammar: components of [A-Za-z0-9]+ joined by one of -._:@+ or --, separated by /)")]
    BadTag { tag: String, why: String },
    #[error("layer {name:?}: media type {media_type:?} is not type/subtype per RFC 6838")]
    BadMediaType { name: String, media_type: String },
    #[error("layer name {name:?}: {why}")]
    BadName { name: String, why: &'static str },
    #[error("layer {name:?} is given twice")]
    DuplicateName { name: String },
    #[error("annotation {key:?}: {why}")]
    BadAnnotation { key: String, why: &'static str },
    #[error("epoch {epoch} is past year 9999 and has no RFC 3339 form")]
    EpochOutOfRange { epoch: u64 },
    #[error("{path} is not empty: an OCI layout is written into a new or empty directory")]
    NotEmpty { path: PathBuf },
    #[error("layer {name:?}: {path} is not a regular file")]
    NotAFile { name: String, path: PathBuf },
    #[error("reading {path}: {source}")]
    Read {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("{path} changed while copying: {expected} bytes when opened, {found} copied")]
    Changed {
        path: PathBuf,
        expected: u64,
        found: u64,
    },
    #[error("writing {path}: {source}")]
    Write {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
}

/// An OCI content descriptor, serialised in the spec's field order.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Descriptor {
    pub media_type: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub artifact_type: Option<String>,
    /// `sha256:<hex>`
    pub digest: String,
    pub size: u64,
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub annotations: BTreeMap<String, String>,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct Manifest<'a> {
    schema_version: u32,
    media_type: &'a str,
    artifact_type: &'a str,
    config: &'a Descriptor,
    layers: &'a [Descriptor],
    annotations: &'a BTreeMap<String, String>,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct Index<'a> {
    schema_version: u32,
    media_type: &'a str,
    manifests: [&'a Descriptor; 1],
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct LayoutFile {
    image_layout_version: &'static str,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OciSummary {
    /// `sha256:<hex>` of the image manifest: what a registry will call it.
    pub manifest_digest: String,
    pub manifest_size: u64,
    pub layers: Vec<Descriptor>,
}

/// Checks `tag` against the image-spec grammar for
/// `org.opencontainers.image.ref.name`:
/// `component ("/" component)*`, `component ::= alphanum (separator alphanum)*`,
/// `alphanum ::= [A-Za-z0-9]+`, `separator ::= [-._:@+] | "--"`.
pub fn check_ref_name(tag: &str) -> Result<(), OciError> {
    let bad = |why: String| OciError::BadTag {
        tag: tag.to_string(),
        why,
    };
    if tag.is_empty() {
        return Err(bad("empty".into()));
    }
    let mut start = 0;
    for (i, component) in tag.split('/').enumerate() {
        let b = component.as_bytes();
        let at = start;
        start += b.len() + 1;
        if b.is_empty() {
            return Err(bad(format!("component {i} is empty")));
        }
        let mut prev_alnum = false;
        let mut j = 0;
        while j < b.len() {
            let c = b[j];
            if c.is_ascii_alphanumeric() {
                prev_alnum = true;
                j += 1;
                continue;
            }
            let sep_len = if c == b'-' && b.get(j + 1) == Some(&b'-') {
                2
            } else if b"-._:@+".contains(&c) {
                1
            } else {
                return Err(bad(format!(
                    "character {:?} at byte {} is not allowed",
                    component[j..].chars().next().unwrap_or('?'),
                    at + j
                )));
            };
            if !prev_alnum {
                return Err(bad(format!(
                    "separator at byte {} must follow a letter or digit",
                    at + j
                )));
            }
            j += sep_len;
            prev_alnum = false;
        }
        if !prev_alnum {
            return Err(bad(format!(
                "component {i} must end with a letter or digit"
            )));
        }
    }
    Ok(())
}

/// RFC 6838 `type "/" subtype`: restricted-name characters, 1–127 each.
fn media_type_ok(m: &str) -> bool {
    let part = |s: &str| {
        let b = s.as_bytes();
        !b.is_empty()
            && b.len() <= 127
            && b[0].is_ascii_alphanumeric()
            && b.iter()
                .all(|&c| c.is_ascii_alphanumeric() || b"!#$&^_.+-".contains(&c))
    };
    match m.split_once('/') {
        Some((t, s)) => part(t) && part(s),
        None => false,
    }
}

fn name_problem(name: &str) -> Option<&'static str> {
    if name.is_empty() {
        Some("empty name")
    } else if name == "." || name == ".." {
        Some("`.` and `..` are not file names")
    } else if name.contains('/') {
        Some("contains `/`: layers are titled with plain file names")
    } else if name.contains('\0') {
        Some("contains a NUL byte")
    } else {
        None
    }
}

/// `YYYY-MM-DDTHH:MM:SSZ` for a Unix time; an error past 9999-12-31.
pub fn rfc3339(epoch: u64) -> Result<String, OciError> {
    if epoch > LAST_RFC3339_EPOCH {
        return Err(OciError::EpochOutOfRange { epoch });
    }
    Ok(Civil::from_epoch(epoch).rfc3339())
}

fn sha256_digest(h: Sha256) -> String {
    format!("sha256:{}", hex::encode(h.finalize()))
}

struct Layout {
    root: PathBuf,
    blobs: PathBuf,
}

impl Layout {
    fn write_err(path: &Path) -> impl FnOnce(io::Error) -> OciError + '_ {
        move |source| OciError::Write {
            path: path.to_path_buf(),
            source,
        }
    }

    /// Writes `bytes` to `final_path` via a temporary sibling and a rename.
    fn put_file(&self, final_path: &Path, tmp_name: &str, bytes: &[u8]) -> Result<(), OciError> {
        let tmp = final_path.with_file_name(tmp_name);
        fs::write(&tmp, bytes).map_err(Self::write_err(&tmp))?;
        fs::rename(&tmp, final_path).map_err(Self::write_err(final_path))
    }

    fn put_blob(&self, bytes: &[u8]) -> Result<String, OciError> {
        let hex = hex::encode(Sha256::digest(bytes));
        self.put_file(&self.blobs.join(&hex), ".partial", bytes)?;
        Ok(format!("sha256:{hex}"))
    }

    /// Copies a host file into the blob store, hashing as it goes.
    fn copy_blob(
        &self,
        name: &str,
        src_path: &Path,
        buf: &mut [u8],
    ) -> Result<(String, u64), OciError> {
        let rd = |source| OciError::Read {
            path: src_path.to_path_buf(),
            source,
        };
        let mut src = File::open(src_path).map_err(rd)?;
        let meta = src.metadata().map_err(rd)?;
        if !meta.is_file() {
            return Err(OciError::NotAFile {
                name: name.to_string(),
                path: src_path.to_path_buf(),
            });
        }
        let tmp = self.blobs.join(".partial");
        let result = Self::copy_into(&tmp, src_path, &mut src, meta.len(), buf);
        if result.is_err() {
            // Best effort: the copy error is the one worth reporting.
            let _ = fs::remove_file(&tmp);
        }
        let (digest, size) = result?;
        let dst = self.blobs.join(&digest["sha256:".len()..]);
        fs::rename(&tmp, &dst).map_err(Self::write_err(&dst))?;
        Ok((digest, size))
    }

    fn copy_into(
        tmp: &Path,
        src_path: &Path,
        src: &mut File,
        expected: u64,
        buf: &mut [u8],
    ) -> Result<(String, u64), OciError> {
        let rd = |source| OciError::Read {
            path: src_path.to_path_buf(),
            source,
        };
        let mut out = File::create(tmp).map_err(Self::write_err(tmp))?;
        let mut hash = Sha256::new();
        let mut size = 0u64;
        loop {
            let n = match src.read(buf) {
                Ok(0) => break,
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(rd(e)),
            };
            hash.update(&buf[..n]);
            out.write_all(&buf[..n]).map_err(Self::write_err(tmp))?;
            size += n as u64;
        }
        if size != expected {
            return Err(OciError::Changed {
                path: src_path.to_path_buf(),
                expected,
                found: size,
            });
        }
        out.sync_all().map_err(Self::write_err(tmp))?;
        Ok((sha256_digest(hash), size))
    }
}

fn json<T: Serialize>(v: &T) -> Vec<u8> {
    // Serialising these plain structs of strings and integers cannot fail.
    serde_json::to_vec(v).unwrap_or_default()
}

fn prepare_dir(dir: &Path) -> Result<Layout, OciError> {
    match fs::read_dir(dir) {
        Ok(mut it) => {
            if it.next().is_some() {
                return Err(OciError::NotEmpty {
                    path: dir.to_path_buf(),
                });
            }
        }
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            fs::create_dir_all(dir).map_err(Layout::write_err(dir))?;
        }
        Err(source) => {
            return Err(OciError::Read {
                path: dir.to_path_buf(),
                source,
            })
        }
    }
    let blobs = dir.join("blobs").join("sha256");
    fs::create_dir_all(&blobs).map_err(Layout::write_err(&blobs))?;
    Ok(Layout {
        root: dir.to_path_buf(),
        blobs,
    })
}

/// Writes an OCI image layout into `dir` (absent or empty) holding one
/// artifact manifest tagged `tag`, with one layer per `(name, host_path,
/// media_type)` in the given order. `annotations` go on the manifest next to
/// `org.opencontainers.image.created` (from `epoch`), which callers may not
/// set themselves. After an error the directory holds no `index.json` and
/// must be removed before retrying.
pub fn write_layout(
    dir: &Path,
    tag: &str,
    artifact_type: &str,
    files: &[(&str, &Path, &str)],
    annotations: &BTreeMap<String, String>,
    epoch: u64,
) -> Result<OciSummary, OciError> {
    check_ref_name(tag)?;
    let mut names = std::collections::BTreeSet::new();
    for (name, _, media_type) in files {
        if let Some(why) = name_problem(name) {
            return Err(OciError::BadName {
                name: name.to_string(),
                why,
            });
        }
        if !names.insert(*name) {
            return Err(OciError::DuplicateName {
                name: name.to_string(),
            });
        }
        if !media_type_ok(media_type) {
            return Err(OciError::BadMediaType {
                name: name.to_string(),
                media_type: media_type.to_string(),
            });
        }
    }
    for key in annotations.keys() {
        if key.is_empty() {
            return Err(OciError::BadAnnotation {
                key: key.clone(),
                why: "empty key",
            });
        }
        if key == ANNOTATION_CREATED {
            return Err(OciError::BadAnnotation {
                key: key.clone(),
                why: "set from the epoch; pass the epoch instead",
            });
        }
    }
    let mut manifest_annotations = annotations.clone();
    manifest_annotations.insert(ANNOTATION_CREATED.to_string(), rfc3339(epoch)?);

    let layout = prepare_dir(dir)?;
    let mut buf = vec![0u8; COPY_BUF];
    let mut layers = Vec::with_capacity(files.len());
    for (name, path, media_type) in files {
        let (digest, size) = layout.copy_blob(name, path, &mut buf)?;
        layers.push(Descriptor {
            media_type: media_type.to_string(),
            artifact_type: None,
            digest,
            size,
            annotations: BTreeMap::from([(ANNOTATION_TITLE.to_string(), name.to_string())]),
        });
    }
    let empty = b"{}";
    let config = Descriptor {
        media_type: EMPTY_MEDIA_TYPE.to_string(),
        artifact_type: None,
        digest: layout.put_blob(empty)?,
        size: empty.len() as u64,
        annotations: BTreeMap::new(),
    };
    let manifest = json(&Manifest {
        schema_version: 2,
        media_type: MANIFEST_MEDIA_TYPE,
        artifact_type,
        config: &config,
        layers: &layers,
        annotations: &manifest_annotations,
    });
    let manifest_digest = layout.put_blob(&manifest)?;
    let entry = Descriptor {
        media_type: MANIFEST_MEDIA_TYPE.to_string(),
        artifact_type: Some(artifact_type.to_string()),
        digest: manifest_digest.clone(),
        size: manifest.len() as u64,
        annotations: BTreeMap::from([(ANNOTATION_REF_NAME.to_string(), tag.to_string())]),
    };
    layout.put_file(
        &layout.root.join("oci-layout"),
        ".oci-layout.partial",
        &json(&LayoutFile {
            image_layout_version: "1.0.0",
        }),
    )?;
    layout.put_file(
        &layout.root.join("index.json"),
        ".index.json.partial",
        &json(&Index {
            schema_version: 2,
            media_type: INDEX_MEDIA_TYPE,
            manifests: [&entry],
        }),
    )?;
    Ok(OciSummary {
        manifest_digest,
        manifest_size: manifest.len() as u64,
        layers,
    })
}
