//! One update check of a running node against its `[update]` channel
//! (contract::update), reading as the story it is:
//! 1. fetch the channel's release manifest-first and verify it against the
//!    keys the **running** release trusts (contract::trust): nothing from
//!    the registry (tag, annotations, image manifest) counts before that;
//! 2. skip it when it is not newer than the running release, or when it
//!    failed to bless on this machine before (STATE's bad-release record);
//! 3. pull its small artifacts (UKI, boot loader, layout) into a work
//!    directory on disk (EPHEMERAL), each with its signed size and sha256
//!    checked;
//! 4. upgrade live: the ESP and the inactive slot, held exclusively, in the
//!    crash-safe order of [`crate::upgrade`], the rootfs streamed from the
//!    registry straight into the slot, hashed as it arrives and read back
//!    before anything points at the slot: no copy of it on disk or in
//!    memory, so memory stays flat as releases grow.
//!
//! Every check ends in a [`contract::update::Attempt`], also on failure, so
//! status and the console can say what happened, when, and why.

use std::path::{Path, PathBuf};

use contract::update::{Attempt, Outcome, Update};
use signing::PublicKey;

use crate::bundle::Bundle;
use crate::upgrade::{upgrade_verified, UpgradeOptions};
use crate::verify::open_streamed;

/// What a check needs to know of the node it runs on.
#[derive(Debug, Clone)]
pub struct Node {
    /// The disk the running system booted from.
    pub disk: PathBuf,
    /// The running release's version.
    pub running: String,
    /// The keys the running release trusts (its rootfs's set).
    pub trusted: Vec<PublicKey>,
    /// Versions that failed to bless here (contract::update::BAD_RELEASES).
    pub bad: Vec<String>,
    /// Where a release is pulled to before it is written (on disk, never a
    /// tmpfs: a rootfs is hundreds of MiB).
    pub work: PathBuf,
    /// Seconds since the epoch, for the record.
    pub now: u64,
    /// Told what is being done once the release is accepted (init: a
    /// console line), for a check that may take a while.
    pub progress: fn(&str),
}

/// A [`Node::progress`] that says nothing.
pub fn quiet(_: &str) {}

/// The version of the release `disk` runs (its active slot's, as
/// [`crate::status`] judges it): what a channel's offer is compared with.
pub fn running_version(disk: &Path) -> crate::Result<String> {
    let mut d = crate::blockdev::Disk::open(disk, false)?;
    let state = crate::status::DiskState::read(&mut crate::status::ReadOnly(&mut d), disk)?;
    let active = state.active().ok_or_else(|| crate::Error::Boot {
        path: disk.to_path_buf(),
        what: "no UKI on the ESP points at BOOT-A or BOOT-B: no running release".into(),
    })?;
    active
        .entry
        .version
        .clone()
        .ok_or_else(|| crate::Error::Boot {
            path: disk.to_path_buf(),
            what: format!("the running entry {} names no version", active.entry.file),
        })
}

/// `REGISTRY/REPO:TAG` of a channel.
pub fn channel(cfg: &Update) -> String {
    format!("{}:{}", cfg.source, cfg.tag)
}

/// Checks `cfg`'s channel once and installs what it offers when that is
/// newer, signed by a trusted key and not known bad.
pub fn check_once(cfg: &Update, node: &Node) -> Attempt {
    let mut attempt = Attempt {
        at: node.now,
        source: channel(cfg),
        running: node.running.clone(),
        offered: None,
        outcome: Outcome::Failed,
        detail: String::new(),
    };
    match check(cfg, node, &mut attempt) {
        Ok((outcome, detail)) => {
            attempt.outcome = outcome;
            attempt.detail = detail;
        }
        Err(detail) => attempt.detail = detail,
    }
    attempt
}

fn check(cfg: &Update, node: &Node, attempt: &mut Attempt) -> Result<(Outcome, String), String> {
    let reference = registry::Reference::parse(&attempt.source).map_err(|e| e.to_string())?;
    let opts = registry::ClientOptions {
        plain_http: cfg.plain_http,
        ca_file: cfg.ca_file.as_ref().map(PathBuf::from),
        ..Default::default()
    };
    let client = registry::Client::for_reference(&reference, &opts).map_err(|e| e.to_string())?;
    let release = registry::fetch_verified_manifest(&client, &reference, &node.trusted)
        .map_err(|e| e.to_string())?;
    let offered = release.version().to_string();
    attempt.offered = Some(offered.clone());
    if let Some(skip) = skip(release.version(), &attempt.source, node)? {
        return Ok(skip);
    }

    (node.progress)(&format!(
        "{offered} verified against this release's keys; writing it live"
    ));
    let dir = node.work.join(&offered);
    // A leftover from an interrupted pull is never trusted: start afresh.
    remove_dir(&dir)?;
    let result = (|| {
        release
            .pull_to_dir_except(&dir, &[contract::bundle::ROOTFS])
            .map_err(|e| e.to_string())?;
        let rootfs = release
            .artifact(contract::bundle::ROOTFS)
            .map_err(|e| e.to_string())?;
        let bundle = open_streamed(&dir, &node.trusted, Box::new(rootfs))
            .map_err(|e| format!("checking {offered}: {e}"))?;
        write_live(node, &bundle, &offered)
    })();
    remove_dir(&dir)?;
    result
}

/// Writes a verified `bundle` into the inactive slot of the running disk
/// (the crash-safe order of [`crate::upgrade`]); its answer for the attempt.
fn write_live(node: &Node, bundle: &Bundle, offered: &str) -> Result<(Outcome, String), String> {
    let opts = UpgradeOptions {
        disk: node.disk.clone(),
        bundle: bundle.dir.clone(),
        trusted: node.trusted.clone(),
        live: true,
        ..Default::default()
    };
    let plan =
        upgrade_verified(&opts, bundle).map_err(|e| format!("installing {offered}: {e:#}"))?;
    Ok((
        Outcome::Installed,
        format!(
            "{offered} written to {}; boots next ({} stays as fallback)",
            plan.target_slot, plan.running_slot
        ),
    ))
}

/// Why a verified release `offered` is not installed here, if it is not:
/// not newer than the running one, or known bad on this machine.
fn skip(
    offered: &semver::Version,
    source: &str,
    node: &Node,
) -> Result<Option<(Outcome, String)>, String> {
    match semver::Version::parse(&node.running) {
        Ok(running) if *offered <= running => {
            return Ok(Some((
                Outcome::UpToDate,
                format!("{source} offers {offered}; running {running}"),
            )))
        }
        Ok(_) => {}
        Err(e) => return Err(format!("running version {:?}: {e}", node.running)),
    }
    if node.bad.contains(&offered.to_string()) {
        return Ok(Some((
            Outcome::SkippedBad,
            format!("{offered} failed to bless on this machine before; not installing it again"),
        )));
    }
    Ok(None)
}

/// Installs the bundle tar that `r` streams (a client's upload through the
/// node API), by the same rules as a channel's release: verified completely
/// against the running release's keys while it is unpacked into
/// `node.work` (nothing reaches the disk before that), installed only when
/// newer and not known bad, then written live. A stream that ends early (a
/// client gone) fails before any write: the old release keeps booting.
/// `source` names the upload in the attempt and in errors.
pub fn install_stream(source: &str, r: impl std::io::Read, node: &Node) -> Attempt {
    let mut attempt = Attempt {
        at: node.now,
        source: source.to_string(),
        running: node.running.clone(),
        offered: None,
        outcome: Outcome::Failed,
        detail: String::new(),
    };
    let result = (|| {
        std::fs::create_dir_all(&node.work)
            .map_err(|e| format!("creating {}: {e}", node.work.display()))?;
        let bundle =
            crate::verify::open_verified_stream(Path::new(source), r, &node.trusted, &node.work)
                .map_err(|e| e.to_string())?;
        let offered = bundle.manifest.os_version.clone();
        attempt.offered = Some(offered.to_string());
        if let Some(skip) = skip(&offered, source, node)? {
            return Ok(skip);
        }
        (node.progress)(&format!(
            "{offered} verified against this release's keys; writing it live"
        ));
        write_live(node, &bundle, &offered.to_string())
    })();
    match result {
        Ok((outcome, detail)) => {
            attempt.outcome = outcome;
            attempt.detail = detail;
        }
        Err(detail) => attempt.detail = detail,
    }
    attempt
}

fn remove_dir(dir: &Path) -> Result<(), String> {
    match std::fs::remove_dir_all(dir) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
            Err(format!("removing {}: {e}", dir.display()))
        }
        _ => Ok(()),
    }
}
