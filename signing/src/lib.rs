//! Release manifests and their signatures (filled in by the signing issue).

pub mod authenticode;
pub mod secureboot;
