//! Typed errors: each names the peer (`host:port`), the repository, what was
//! asked for (a tag or a digest) and, for HTTP answers, the status.

use std::io;
use std::path::PathBuf;

pub type Result<T, E = Error> = std::result::Result<T, E>;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("registry {peer} is unreachable: {source}")]
    Unreachable {
        peer: String,
        #[source]
        source: Box<ureq::Error>,
    },
    #[error("registry {peer}: {what} in {repo}: not found (HTTP 404){detail}")]
    NotFound {
        peer: String,
        repo: String,
        what: String,
        detail: String,
    },
    #[error("registry {peer}: {what} in {repo}: access denied (HTTP {status}){detail}")]
    Denied {
        peer: String,
        repo: String,
        what: String,
        status: u16,
        detail: String,
    },
    #[error("registry {peer}: {what} in {repo}: unexpected HTTP {status}{detail}")]
    Status {
        peer: String,
        repo: String,
        what: String,
        status: u16,
        detail: String,
    },
    #[error("registry {peer}: {what} in {repo}: authentication failed: {why}")]
    Auth {
        peer: String,
        repo: String,
        what: String,
        why: String,
    },
    #[error("registry {peer}: {what} in {repo}: transfer failed: {source}")]
    Transport {
        peer: String,
        repo: String,
        what: String,
        #[source]
        source: Box<ureq::Error>,
    },
    #[error("registry {peer}: blob {digest} in {repo}: digest mismatch: the bytes hash to sha256:{actual}")]
    DigestMismatch {
        peer: String,
        repo: String,
        digest: String,
        actual: String,
    },
    #[error("registry {peer}: blob {digest} in {repo}: size mismatch: {actual} bytes, expected {expected}")]
    SizeMismatch {
        peer: String,
        repo: String,
        digest: String,
        expected: u64,
        /// `more than N` when the stream ran past the expected size.
        actual: String,
    },
    #[error("registry {peer}: blob {digest} in {repo}: truncated stream: ended after {read} of {expected} bytes{detail}")]
    Truncated {
        peer: String,
        repo: String,
        digest: String,
        read: u64,
        expected: u64,
        detail: String,
    },
    #[error("registry {peer}: {what} in {repo}: manifest too large: {size} bytes, over the limit of {limit}; refused unread")]
    TooLarge {
        peer: String,
        repo: String,
        what: String,
        size: String,
        limit: u64,
    },
    #[error("registry {peer}: image manifest {reference} in {repo}: {why}")]
    BadImage {
        peer: String,
        repo: String,
        reference: String,
        why: String,
    },
    #[error(
        "registry {peer}: release {reference} in {repo}: signed bundle manifest refused: {source}"
    )]
    Verify {
        peer: String,
        repo: String,
        reference: String,
        #[source]
        source: Box<signing::VerifyError>,
    },
    #[error("registry {release}: annotation {key} is {annotated:?} but the signed manifest says {signed:?}")]
    Annotation {
        /// `peer: release REF in REPO`
        release: String,
        key: String,
        annotated: String,
        signed: String,
    },
    #[error("registry {peer}: release {reference} in {repo}: {name} is not listed in the signed manifest")]
    NotListed {
        peer: String,
        repo: String,
        reference: String,
        name: String,
    },
    #[error(
        "reference {reference:?}: {why} (expected REGISTRY/REPO:TAG or REGISTRY/REPO@sha256:HEX)"
    )]
    BadReference { reference: String, why: String },
    #[error("credentials {path}: {why}")]
    Credentials { path: PathBuf, why: String },
    #[error("CA certificates {path}: {why}")]
    Ca { path: PathBuf, why: String },
    #[error("{what} {path}: {source}")]
    Local {
        what: &'static str,
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("OCI layout {path}: {why}")]
    Layout { path: PathBuf, why: String },
}

impl Error {
    /// Recovers the registry error a [`crate::BlobReader`] returned through
    /// `io::Read` (it wraps its errors in `io::Error`); any other I/O error
    /// is kept as a local one on `path`.
    pub fn from_io(e: io::Error, what: &'static str, path: impl Into<PathBuf>) -> Error {
        if e.get_ref().is_some_and(|i| i.is::<Error>()) {
            let kind = e.kind();
            return match e.into_inner().map(|i| i.downcast::<Error>()) {
                Some(Ok(err)) => *err,
                _ => Error::Local {
                    what,
                    path: path.into(),
                    source: kind.into(),
                },
            };
        }
        Error::Local {
            what,
            path: path.into(),
            source: e,
        }
    }
}
