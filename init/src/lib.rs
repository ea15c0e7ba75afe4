//! cairn-init: PID 1 of cairn images, in two stages (initramfs `/init`, then
//! `/sbin/init` in the verity-protected root). Decisions live in pure modules
//! (`cmdline`, `config`, `bless`, `fsprobe`, `gpt`, `dm` table text,
//! supervisor policy); syscalls sit in `sys` and the stage modules.

pub mod bless;
pub mod cmdline;
pub mod config;
pub mod dm;
pub mod fsprobe;
pub mod gpt;
pub mod slot;
pub mod supervisor;
