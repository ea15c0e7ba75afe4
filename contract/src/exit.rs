//! Exit codes of cairn's host tools (`cairn`, `cairn-installer`), one set
//! so CI scripts tell "my input is wrong" from "this artifact is bad" from
//! "the machine could not read or write": docs/exit-codes.md.

/// Success.
pub const OK: u8 = 0;
/// Any failure not classed below.
pub const FAILED: u8 = 1;
/// Invalid input: usage, a profile, a flag, a machine config, a disk that
/// may not be written (not empty without --wipe, the install media, too
/// small), a downgrade not asked for.
pub const INVALID: u8 = 2;
/// Verification failed: a signature, a digest, a size against the signed
/// manifest, a slot that does not match its root hash, a read-back.
pub const VERIFY: u8 = 3;
/// I/O: a file or disk that cannot be read or written.
pub const IO: u8 = 4;

/// The text for a command's `--help` (clap's `after_help`).
pub const HELP: &str = "Exit codes:
  0  success
  1  failure not classed below
  2  invalid input: usage, profile, flag, machine config, a disk that may not be written
  3  verification failed: signature, digest, size, root hash, read-back
  4  I/O error: a file or disk that cannot be read or written";
