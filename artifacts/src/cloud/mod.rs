//! Cloud image writers: a raw (sparse) disk image in, one provider format
//! out. qcow2 (OpenStack/KVM), fixed VHD (Azure), streamOptimized VMDK
//! (vSphere/OVA) and the GCE `disk.raw` tarball.
//!
//! Every writer reads the raw image through [`RawImage`], which asks the
//! filesystem where data lives (SEEK_DATA/SEEK_HOLE) so holes are never read,
//! and treats all-zero chunks inside data regions as holes too: holes become
//! unallocated clusters (qcow2), missing grains (VMDK), holes in the output
//! file (VHD) or gaps in a sparse tar entry (GCE). Outputs are pure
//! functions of the raw bytes and the caller's epoch/seed.

pub mod gce;
pub mod qcow2;
pub mod vhd;
pub mod vmdk;

mod raw;

pub use raw::RawImage;

use std::path::PathBuf;

/// Raw images are whole 512-byte sectors, as every target format assumes.
pub const SECTOR: u64 = 512;

#[derive(Debug, thiserror::Error)]
pub enum CloudError {
    #[error("cannot open raw image {path}: {source}")]
    Open {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("raw image {path} is empty (0 bytes)")]
    EmptyInput { path: PathBuf },
    #[error("raw image {path} is {size} bytes, not a multiple of {SECTOR}")]
    UnalignedSize { path: PathBuf, size: u64 },
    #[error("raw image {path}: {op} at offset {offset} failed: {source}")]
    Read {
        path: PathBuf,
        op: &'static str,
        offset: u64,
        source: std::io::Error,
    },
    #[error("cannot create {path}: {source}")]
    Create {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("writing {path} at offset {offset} failed: {source}")]
    Write {
        path: PathBuf,
        offset: u64,
        source: std::io::Error,
    },
    #[error("qcow2 cluster size {cluster_size} is not a power of two between 512 and 2097152")]
    BadClusterSize { cluster_size: u64 },
    #[error("chunk size {chunk_size} is not a non-zero multiple of {SECTOR}")]
    BadChunkSize { chunk_size: u64 },
    #[error("qcow2 zstd level {level} is outside 1..=19")]
    BadCompressionLevel { level: i32 },
    #[error("raw image {path} is {size} bytes; {format} holds at most {limit}")]
    TooLarge {
        path: PathBuf,
        size: u64,
        format: &'static str,
        limit: u64,
    },
    #[error("epoch {epoch} cannot be stored as a {format} timestamp ({why})")]
    EpochOutOfRange {
        epoch: u64,
        format: &'static str,
        why: &'static str,
    },
    #[error("raw image {path} changed while being converted: the data map no longer matches at offset {offset}")]
    Changed { path: PathBuf, offset: u64 },
    #[error("compressing {path}: {source}")]
    Compress {
        path: PathBuf,
        source: std::io::Error,
    },
}

/// sha256(len(seed) || seed || label): the same derivation scheme as GPT
/// GUIDs, so one build seed yields distinct, stable ids per format.
pub(crate) fn derive(seed: &[u8], label: &str) -> [u8; 32] {
    use sha2::{Digest, Sha256};
    let mut h = Sha256::new();
    h.update((seed.len() as u64).to_le_bytes());
    h.update(seed);
    h.update(label.as_bytes());
    h.finalize().into()
}
