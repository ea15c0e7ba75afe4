//! cairn-init: PID 1 of cairn images, in two stages (initramfs `/init`, then
//! `/sbin/init` in the verity-protected root). Decisions live in pure modules
//! (`cmdline`, `config`, `bless`, `fsprobe`, `slot`, `record`, the dm
//! table text, supervisor policy); syscalls sit in `sys` and the stage modules.

pub mod log;

pub mod bless;
pub mod cmdline;
pub mod config;
pub mod disks;
pub mod dm;
pub mod error;
pub mod fsprobe;
pub mod health;
pub mod install;
pub mod record;
pub mod slot;
pub mod stage1;
pub mod stage2;
pub mod supervisor;
pub mod sys;
