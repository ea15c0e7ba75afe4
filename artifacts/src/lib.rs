//! Deterministic writers for cairn's on-disk formats.
//!
//! Every writer is a pure function of its inputs: no wall clock (callers pass
//! `SOURCE_DATE_EPOCH`), no randomness (GUIDs, volume ids and salts are derived
//! from a seed), sorted directory walks and fixed compression settings. Two
//! runs with the same inputs produce the same bytes.

pub mod bundle;
pub mod cloud;
pub mod cpio;
pub mod date;
pub mod fat;
pub mod gpt;
pub mod iso;
pub mod oci;
pub mod pe;
pub mod squashfs;
pub mod tar;
pub mod tree;
pub mod uki;
pub mod verity;

pub use tree::{ModeRule, Normalize, Tree};
