//! The cairn image builder: profiles, packages, the pipeline stages.

pub mod assemble;
pub mod exit;
pub mod iso_customize;
pub mod pipeline;
pub mod pkgs;
pub mod profile;
pub mod release;
pub mod repro;
pub mod rootfs;
pub mod stage;
