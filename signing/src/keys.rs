//! ed25519 keys in standard files: private keys as PKCS#8 PEM
//! (`-----BEGIN PRIVATE KEY-----`, as `openssl genpkey -algorithm ed25519`
//! writes), public keys as SPKI PEM (`-----BEGIN PUBLIC KEY-----`).
//!
//! A key id is the first 16 bytes of sha256 over the raw 32-byte public key,
//! written as 32 hex digits. It is derived, never stored, so it cannot
//! disagree with the key; it lets a manifest name which of several trusted
//! keys signed it, which is what makes rotation possible.

use ed25519_dalek::pkcs8::spki::der::pem::LineEnding;
use ed25519_dalek::pkcs8::{
    DecodePrivateKey, DecodePublicKey, EncodePrivateKey, EncodePublicKey, KeypairBytes,
};
use ed25519_dalek::{Signature, Signer, SigningKey, VerifyingKey};
use std::fmt;
use std::fs::{self, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use crate::stream::Sha256Digest;

#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("{path}: already exists, refusing to overwrite a key")]
    Exists { path: PathBuf },
    #[error(
        "{path}: private key file mode is {mode:04o}, readable or writable by group/other; \
         run `chmod 600 {path}`"
    )]
    TooOpen { path: PathBuf, mode: u32 },
    #[error("{path}: not an ed25519 {expected} PEM file: {reason}")]
    Format {
        path: PathBuf,
        expected: &'static str,
        reason: String,
    },
    #[error("generating a key: no system randomness: {0}")]
    Random(String),
    #[error("private key {key} is inside the output directory {dir}; keep keys out of release directories")]
    KeyInOutput { key: PathBuf, dir: PathBuf },
}

/// First 16 bytes of sha256(raw public key).
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct KeyId(pub [u8; 16]);

impl KeyId {
    pub fn of(key: &VerifyingKey) -> Self {
        let d = Sha256Digest::of(key.as_bytes());
        let mut id = [0u8; 16];
        id.copy_from_slice(&d.0[..16]);
        KeyId(id)
    }

    /// Parses exactly 32 lowercase hex digits.
    pub fn from_hex(s: &str) -> Option<Self> {
        if s.len() != 32 || s.bytes().any(|b| b.is_ascii_uppercase()) {
            return None;
        }
        let mut id = [0u8; 16];
        hex::decode_to_slice(s, &mut id).ok()?;
        Some(KeyId(id))
    }
}

impl fmt::Display for KeyId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&hex::encode(self.0))
    }
}

impl fmt::Debug for KeyId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "KeyId({self})")
    }
}

/// A trusted verification key.
#[derive(Clone, PartialEq, Eq)]
pub struct PublicKey {
    key: VerifyingKey,
    id: KeyId,
}

impl fmt::Debug for PublicKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "PublicKey({})", self.id)
    }
}

impl PublicKey {
    pub fn from_verifying_key(key: VerifyingKey) -> Self {
        PublicKey {
            id: KeyId::of(&key),
            key,
        }
    }

    pub fn id(&self) -> KeyId {
        self.id
    }

    pub fn verifying_key(&self) -> &VerifyingKey {
        &self.key
    }

    /// Parses an SPKI PEM; `origin` names the source in errors.
    pub fn from_pem(pem: &str, origin: &Path) -> Result<Self, KeyError> {
        let key = VerifyingKey::from_public_key_pem(pem).map_err(|e| KeyError::Format {
            path: origin.to_path_buf(),
            expected: "public key (SPKI)",
            reason: e.to_string(),
        })?;
        Ok(Self::from_verifying_key(key))
    }

    pub fn load(path: &Path) -> Result<Self, KeyError> {
        let text = read_text(path, "public key (SPKI)")?;
        Self::from_pem(&text, path)
    }

    pub fn to_pem(&self) -> String {
        // Encoding a valid 32-byte key as SPKI cannot fail: the only errors are
        // allocation and length overflow, neither reachable for 44 bytes.
        self.key
            .to_public_key_pem(LineEnding::LF)
            .expect("SPKI encoding of an ed25519 key")
    }

    /// ed25519 strict verification (rejects non-canonical and small-order
    /// encodings, so one message has one valid signature per key).
    pub fn verify(&self, message: &[u8], signature: &[u8; 64]) -> bool {
        let sig = Signature::from_bytes(signature);
        self.key.verify_strict(message, &sig).is_ok()
    }
}

/// A signing key. Never written anywhere but the path given to [`write_new`].
///
/// [`write_new`]: PrivateKey::write_new
pub struct PrivateKey {
    key: SigningKey,
}

impl fmt::Debug for PrivateKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "PrivateKey({})", self.id())
    }
}

impl PrivateKey {
    /// A fresh key from the OS random source. Keys are the one thing that
    /// must not be derived from build inputs.
    pub fn generate() -> Result<Self, KeyError> {
        let mut seed = [0u8; 32];
        getrandom::fill(&mut seed).map_err(|e| KeyError::Random(e.to_string()))?;
        Ok(Self::from_seed(&seed))
    }

    /// A key from a 32-byte ed25519 seed (tests and fixtures).
    pub fn from_seed(seed: &[u8; 32]) -> Self {
        PrivateKey {
            key: SigningKey::from_bytes(seed),
        }
    }

    pub fn public(&self) -> PublicKey {
        PublicKey::from_verifying_key(self.key.verifying_key())
    }

    pub fn id(&self) -> KeyId {
        self.public().id
    }

    pub fn sign(&self, message: &[u8]) -> [u8; 64] {
        self.key.sign(message).to_bytes()
    }

    /// Parses a PKCS#8 PEM without the file-mode check; `origin` names the
    /// source in errors.
    pub fn from_pem(pem: &str, origin: &Path) -> Result<Self, KeyError> {
        let key = SigningKey::from_pkcs8_pem(pem).map_err(|e| KeyError::Format {
            path: origin.to_path_buf(),
            expected: "private key (PKCS#8)",
            reason: e.to_string(),
        })?;
        Ok(PrivateKey { key })
    }

    /// Loads a private key, refusing files that group or other can access.
    pub fn load(path: &Path) -> Result<Self, KeyError> {
        let meta = fs::metadata(path).map_err(|source| KeyError::Io {
            path: path.to_path_buf(),
            source,
        })?;
        let mode = meta.mode() & 0o7777;
        if mode & 0o077 != 0 {
            return Err(KeyError::TooOpen {
                path: path.to_path_buf(),
                mode,
            });
        }
        let text = read_text(path, "private key (PKCS#8)")?;
        Self::from_pem(&text, path)
    }

    /// Writes the private key to `path` (mode 0600) and the public key to
    /// `path.pub`; refuses if either exists.
    pub fn write_new(&self, path: &Path) -> Result<PathBuf, KeyError> {
        let pub_path = pub_path_for(path);
        for p in [path, pub_path.as_path()] {
            if fs::symlink_metadata(p).is_ok() {
                return Err(KeyError::Exists {
                    path: p.to_path_buf(),
                });
            }
        }
        // PKCS#8 v1 (seed only), the form `openssl genpkey` writes: OpenSSL 3.0
        // cannot read the v2 form (with the public key) that dalek emits.
        let v1 = KeypairBytes {
            secret_key: self.key.to_bytes(),
            public_key: None,
        };
        let pem = v1
            .to_pkcs8_pem(LineEnding::LF)
            .expect("PKCS#8 encoding of an ed25519 key");
        // create_new + mode at open time: the key is never visible with a
        // wider mode, and a racing creator makes us fail instead of clobber.
        write_new_file(path, pem.as_bytes(), 0o600)?;
        write_new_file(&pub_path, self.public().to_pem().as_bytes(), 0o644)?;
        Ok(pub_path)
    }
}

/// Every `*.pub` file in `dir` (sorted by name), e.g. the installer's
/// `/payload/keys/`. An empty or missing set is an error: verifying against
/// no keys could only ever fail, and that is a packaging mistake to surface.
pub fn load_trusted_dir(dir: &Path) -> Result<Vec<PublicKey>, KeyError> {
    let io_err = |source| KeyError::Io {
        path: dir.to_path_buf(),
        source,
    };
    let mut paths = Vec::new();
    for entry in fs::read_dir(dir).map_err(io_err)? {
        let path = entry.map_err(io_err)?.path();
        if path.extension().is_some_and(|e| e == "pub") {
            paths.push(path);
        }
    }
    paths.sort();
    if paths.is_empty() {
        return Err(KeyError::Format {
            path: dir.to_path_buf(),
            expected: "public key (SPKI)",
            reason: "directory holds no *.pub files".into(),
        });
    }
    paths.iter().map(|p| PublicKey::load(p)).collect()
}

/// `PATH.pub` for a private key at `PATH`.
pub fn pub_path_for(path: &Path) -> PathBuf {
    let mut s = path.as_os_str().to_os_string();
    s.push(".pub");
    PathBuf::from(s)
}

/// Refuses a private key path that is, or resolves to, somewhere inside `dir`, so
/// signing can never place key material into a release directory.
pub fn ensure_outside(key: &Path, dir: &Path) -> Result<(), KeyError> {
    let canon = |p: &Path| {
        fs::canonicalize(p).map_err(|source| KeyError::Io {
            path: p.to_path_buf(),
            source,
        })
    };
    let d = canon(dir)?;
    // Both where the path is (a symlink in DIR would ship with the release)
    // and what it resolves to.
    let resolved = canon(key)?;
    let parent = match key.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    };
    let located = canon(parent)?.join(key.file_name().unwrap_or_default());
    if resolved.starts_with(&d) || located.starts_with(&d) {
        return Err(KeyError::KeyInOutput {
            key: key.to_path_buf(),
            dir: dir.to_path_buf(),
        });
    }
    Ok(())
}

fn read_text(path: &Path, expected: &'static str) -> Result<String, KeyError> {
    let bytes = fs::read(path).map_err(|source| KeyError::Io {
        path: path.to_path_buf(),
        source,
    })?;
    String::from_utf8(bytes).map_err(|_| KeyError::Format {
        path: path.to_path_buf(),
        expected,
        reason: "file is not text".into(),
    })
}

fn write_new_file(path: &Path, data: &[u8], mode: u32) -> Result<(), KeyError> {
    let io_err = |source: io::Error| {
        if source.kind() == io::ErrorKind::AlreadyExists {
            KeyError::Exists {
                path: path.to_path_buf(),
            }
        } else {
            KeyError::Io {
                path: path.to_path_buf(),
                source,
            }
        }
    };
    let mut f = OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode)
        .open(path)
        .map_err(io_err)?;
    f.write_all(data).map_err(io_err)?;
    f.sync_all().map_err(io_err)
}
