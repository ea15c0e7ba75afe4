//! Installing cairn releases on disks and disk images, and A/B upgrades with
//! systemd-boot boot counting. The same code runs on a block device and on
//! an image file; see docs/installer.md.

pub mod blockdev;
pub mod bootmodel;
pub mod bundle;
pub mod error;
pub mod install;
pub mod probe;
pub mod rollback;
pub mod status;
pub mod table;
#[cfg(feature = "update")]
pub mod update;
pub mod upgrade;
pub mod verify;

pub use error::{Error, Result};
