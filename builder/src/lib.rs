//! cairn's build pipeline as a library, so integration tests and the CLI share it.

pub mod pkgs;
