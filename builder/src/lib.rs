//! The cairn image builder: profiles, packages, the pipeline stages.

pub mod pkgs;
pub mod profile;
pub mod rootfs;
pub mod stage;
