//! An OCI distribution-spec client for cairn releases: blocking (no async
//! runtime) so init can link it, pure Rust except `ring`'s small C/asm core
//! (see Cargo.toml).
//!
//! - [`Client`]: one registry; manifests and blobs by digest (GET/HEAD),
//!   monolithic or chunked uploads, manifest PUT; anonymous, basic and
//!   bearer-token auth with docker `config.json` credentials; HTTPS with the
//!   system's or a given CA, plain HTTP only when asked.
//! - [`BlobReader`]: a blob as an `impl Read` that hashes as it goes and
//!   fails on a wrong size or digest, never buffering the blob.
//! - [`VerifiedRelease`]: a cairn release fetched manifest-first and
//!   verified against trusted keys before any artifact is requested.
//! - [`push_layout`]: `cairn build`'s `oci/` layout to a registry.

pub mod auth;
pub mod blob;
pub mod client;
pub mod error;
pub mod image;
pub mod push;
pub mod reference;
pub mod release;
#[cfg(feature = "testing")]
pub mod testing;

pub use auth::{Credentials, DockerConfig};
pub use blob::{BlobId, BlobReader};
pub use client::{Client, ClientOptions, FetchedManifest, Upload};
pub use error::{Error, Result};
pub use push::{push_layout, PushSummary};
pub use reference::Reference;
pub use release::{fetch_verified_manifest, VerifiedRelease};
