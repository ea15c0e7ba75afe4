//! The contracts of docs/design.md in code, once: every crate that writes or
//! reads one of these formats or names uses this copy.
//!
//! - [`disk`]: partition names, types and the slot PARTUUID rule;
//! - [`slot`]: what a slot holds and the verity superblock check;
//! - [`cmdline`]: the `cairn.*` kernel command line (parse and format);
//! - [`esp`]: ESP paths, loader.conf, UKI entry names and boot counters;
//! - [`install`]: install settings `cairn iso customize` writes on the media;
//! - [`api`]: `[api]` (the node API's identity) and cairnd's names on the node;
//! - [`control`]: the control socket between cairnd and init;
//! - [`bundle`]: bundle file names, payload paths, OCI media types;
//! - [`layout`]: `layout.json` and the disk layout it gives;
//! - [`caps`]: capability names and numbers, and the set a service may hold;
//! - [`machine`]: the machine config (`machine.toml`) schema and validation;
//! - [`sysctl`]: the sysctls init sets and the subset `[sysctl]` may change;
//! - [`trust`]: where a rootfs carries the keys its release trusts;
//! - [`update`]: `[update]`, the bad-release record and the attempt record.
//!
//! Formats themselves (GPT, FAT, squashfs, verity, PE) live in `artifacts`;
//! what cairn puts in them lives here.

pub mod api;
pub mod bundle;
pub mod caps;
pub mod cmdline;
pub mod control;
pub mod disk;
pub mod esp;
pub mod exit;
pub mod install;
pub mod layout;
pub mod machine;
pub mod slot;
pub mod sysctl;
pub mod trust;
pub mod update;
