//! cairn-init: PID 1 of cairn images, in two stages (initramfs `/init`, then
//! `/sbin/init` in the verity-protected root). Decisions live in pure modules
//! (`bless`, `fsprobe`, `slot`, `record`, the dm table text, supervisor
//! policy); the formats it shares with the installer and builder (GPT through
//! `artifacts`; command line, machine config, ESP names from `contract`);
//! syscalls sit in `sys` and the stage modules.

pub mod log;

pub mod api;
pub mod bless;
pub mod control;
pub mod disks;
pub mod dm;
pub mod error;
pub mod fsprobe;
pub mod health;
pub mod install;
pub mod lsm;
pub mod net;
pub mod privs;
pub mod record;
pub mod ring;
pub mod slot;
pub mod stage1;
pub mod stage2;
pub mod status;
pub mod supervisor;
pub mod sys;
pub mod sysctl;
pub mod update;
