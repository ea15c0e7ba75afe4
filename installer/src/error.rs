//! The library's one error type: every variant says what was being done and
//! names the file, partition, offset or numbers involved.

use std::path::PathBuf;

use artifacts::fat::FatError;
use artifacts::gpt::GptError;
use artifacts::uki::UkiError;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("{what} {path}: {source}")]
    File {
        what: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("partition {number} ({name}) of {disk} ({device}) is in use (mounted, or held by another device); a live upgrade writes only partitions nothing holds: {source}")]
    PartitionInUse {
        disk: PathBuf,
        device: PathBuf,
        number: u32,
        name: String,
        #[source]
        source: std::io::Error,
    },
    #[error("{disk}: partition {number} ({name}) has no device node the kernel lists (is the partition table the kernel read older than the disk's?)")]
    NoPartitionDevice {
        disk: PathBuf,
        number: u32,
        name: String,
    },
    #[error("{what} at disk offset {offset} ({len} bytes): {source}")]
    DiskIo {
        what: String,
        offset: u64,
        len: u64,
        #[source]
        source: std::io::Error,
    },
    #[error("bundle {path}: {what}")]
    Bundle { path: PathBuf, what: String },
    #[error("bundle {path}: signature or artifact check failed: {source}")]
    Verify {
        path: PathBuf,
        #[source]
        source: Box<signing::VerifyError>,
    },
    #[error("loading trusted key {path}: {source}")]
    Key {
        path: PathBuf,
        #[source]
        source: signing::KeyError,
    },
    #[error("bundle is for architecture {bundle}, this installer installs {supported}")]
    Arch {
        bundle: String,
        supported: &'static str,
    },
    #[error("{what}: UKI {path}: {source}")]
    Uki {
        what: String,
        path: String,
        #[source]
        source: Box<UkiError>,
    },
    #[error("{what}: {source}")]
    Gpt {
        what: String,
        #[source]
        source: Box<GptError>,
    },
    #[error("{what}: {source}")]
    Fat {
        what: String,
        #[source]
        source: Box<FatError>,
    },
    #[error(
        "disk {path} is {size} bytes; this layout needs at least {needed} bytes ({needed_mib} MiB)"
    )]
    DiskTooSmall {
        path: PathBuf,
        size: u64,
        needed: u64,
        needed_mib: u64,
    },
    #[error("disk {disk} is the install media ({media}); refusing to overwrite the installer")]
    IsInstallMedia { disk: PathBuf, media: PathBuf },
    #[error("disk {path} is not empty: {found}; pass --wipe to destroy it")]
    NotEmpty { path: PathBuf, found: String },
    #[error("release {new} is not newer than the running release {running}; pass --allow-downgrade to install it anyway")]
    Downgrade { new: String, running: String },
    #[error("release {version} is already on the disk as {file}")]
    SameVersion { version: String, file: String },
    #[error("{what} does not fit: {need} bytes needed, {partition} holds {have}")]
    DoesNotFit {
        what: String,
        partition: String,
        need: u64,
        have: u64,
    },
    #[error("read-back of {partition} at offset {offset} ({len} bytes) gives sha256 {actual}, wrote {expected}")]
    ReadBack {
        partition: String,
        offset: u64,
        len: u64,
        expected: String,
        actual: String,
    },
    #[error("disk {path} has no cairn layout: {what}")]
    NotCairn { path: PathBuf, what: String },
    #[error("boot entries on {path}: {what}")]
    Boot { path: PathBuf, what: String },
    #[error("install failed while {step}: {source}; {cleanup}")]
    InstallAborted {
        step: String,
        #[source]
        source: Box<Error>,
        /// What happened to the partition table afterwards.
        cleanup: String,
    },
    #[error("machine config {path} is refused (init would refuse it at boot): {what}")]
    MachineConfig { path: PathBuf, what: String },
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

pub(crate) fn disk_io(
    what: impl Into<String>,
    offset: u64,
    len: u64,
) -> impl FnOnce(std::io::Error) -> Error {
    let what = what.into();
    move |source| Error::DiskIo {
        what,
        offset,
        len,
        source,
    }
}

pub(crate) fn gpt(what: impl Into<String>) -> impl FnOnce(GptError) -> Error {
    let what = what.into();
    move |source| Error::Gpt {
        what,
        source: Box::new(source),
    }
}

pub(crate) fn fat(what: impl Into<String>) -> impl FnOnce(FatError) -> Error {
    let what = what.into();
    move |source| Error::Fat {
        what,
        source: Box::new(source),
    }
}

impl Error {
    /// The exit code a tool reports this error with (contract::exit).
    pub fn exit_code(&self) -> u8 {
        use contract::exit::{FAILED, INVALID, IO, VERIFY};
        match self {
            Error::Verify { .. } | Error::ReadBack { .. } | Error::Bundle { .. } => VERIFY,
            Error::File { .. }
            | Error::DiskIo { .. }
            | Error::PartitionInUse { .. }
            | Error::NoPartitionDevice { .. } => IO,
            Error::Key { .. }
            | Error::Arch { .. }
            | Error::DiskTooSmall { .. }
            | Error::IsInstallMedia { .. }
            | Error::NotEmpty { .. }
            | Error::Downgrade { .. }
            | Error::SameVersion { .. }
            | Error::DoesNotFit { .. }
            | Error::NotCairn { .. }
            | Error::MachineConfig { .. } => INVALID,
            _ => FAILED,
        }
    }
}

/// A slot whose verity data does not match its release's root hash
/// (`cairn-installer status --verify`): exit code VERIFY.
#[derive(Debug, thiserror::Error)]
#[error("{disk}: slot {slots} does not match the root hash of its release")]
pub struct CorruptSlots {
    pub disk: PathBuf,
    pub slots: String,
}

/// The exit code for an error and its sources (an anyhow chain is one:
/// `err.as_ref()`): the class of the innermost one that has a class (an
/// installer error, a corrupt slot, a failed verification, an I/O error),
/// else FAILED. Innermost: a check that failed to read its file is I/O.
pub fn exit_code(e: &(dyn std::error::Error + 'static)) -> u8 {
    let mut code = contract::exit::FAILED;
    let mut cause = Some(e);
    while let Some(c) = cause {
        if let Some(x) = c.downcast_ref::<Error>() {
            let x = x.exit_code();
            if x != contract::exit::FAILED {
                code = x;
            }
        } else if c.is::<CorruptSlots>() || c.is::<signing::VerifyError>() {
            code = contract::exit::VERIFY;
        } else if c.is::<std::io::Error>() {
            code = contract::exit::IO;
        }
        cause = c.source();
    }
    code
}
