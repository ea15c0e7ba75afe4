//! Release manifests and their signatures.
//!
//! A release directory holds the artifacts, `manifest.json` (canonical JSON,
//! see [`manifest`]) and `manifest.json.sig` (detached ed25519 signature, see
//! [`verify`]). Secure Boot keys and Authenticode
//! signatures for PE images live in [`secureboot`] and [`authenticode`]. The installer calls [`verify_manifest`] / [`verify_dir`] and
//! hashes payload streams with [`HashingReader`] / [`HashingWriter`].

pub mod authenticode;
pub mod keys;
pub mod manifest;
pub mod secureboot;
pub mod stream;
pub mod verify;

pub use keys::{load_trusted_dir, KeyError, KeyId, PrivateKey, PublicKey};
pub use manifest::{Artifact, Manifest, ManifestError, ReleaseMeta};
pub use stream::{hash_file, HashingReader, HashingWriter, Sha256Digest, StreamError};
pub use verify::{
    sign_dir, sign_manifest, verify_dir, verify_manifest, ArtifactProblem, DirReport,
    SignatureFile, VerifyError, MANIFEST_FILE, SIGNATURE_FILE,
};
