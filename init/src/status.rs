//! The node's status as one JSON file under /run
//! (contract::machine::NODE_STATUS), for whatever serves it (the node API):
//! the booted release, the disk as `cairn-installer status --json` shows it,
//! the network, the last update attempt and the releases marked bad.
//!
//! Each part is kept where it is made: the disk is read with the installer's
//! own status reader (once the boot is judged, and again after an update
//! wrote the disk), the network and update threads write their own files
//! under /run, STATE holds the bad-release record. Whoever changes a part
//! calls [`refresh`], which puts the parts together and replaces the file
//! atomically. Before the boot is judged there is no status file.

use std::fs;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use serde::Serialize;

use crate::say;

/// The document at contract::machine::NODE_STATUS (docs/updates.md).
#[derive(Debug, Serialize)]
pub struct NodeStatus {
    pub version: String,
    pub slot: String,
    pub blessed: bool,
    /// `cairn-installer status --json` of the boot disk, or null with
    /// `disk_error` saying why it could not be read.
    pub disk: Option<installer::status::Status>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub disk_error: Option<String>,
    /// contract::machine::NETWORK_STATE's document; null without a network
    /// thread (no link to manage yet).
    pub network: Option<serde_json::Value>,
    /// The last update attempt (contract::update::ATTEMPT_FILE); null when
    /// no `[update]` is configured or no attempt finished yet.
    pub update: Option<serde_json::Value>,
    /// Releases that failed to boot here: never installed again
    /// automatically (contract::update::BAD_RELEASES in STATE).
    pub bad_releases: Vec<String>,
}

/// What the boot knows of itself, and where the other parts live (tests
/// point these at a temporary directory).
#[derive(Debug, Clone)]
pub struct Node {
    pub version: String,
    pub slot: String,
    pub blessed: bool,
    pub disk: PathBuf,
    /// STATE's mount point.
    pub state: PathBuf,
    pub network_file: PathBuf,
    pub update_file: PathBuf,
    pub out: PathBuf,
}

impl Node {
    /// The node's parts at their contract paths.
    pub fn booted(version: &str, slot: &str, blessed: bool, disk: &Path, state: &Path) -> Node {
        Node {
            version: version.into(),
            slot: slot.into(),
            blessed,
            disk: disk.into(),
            state: state.into(),
            network_file: contract::machine::NETWORK_STATE.into(),
            update_file: contract::update::ATTEMPT_FILE.into(),
            out: contract::machine::NODE_STATUS.into(),
        }
    }
}

struct Known {
    node: Node,
    disk: Result<installer::status::Status, String>,
}

static KNOWN: Mutex<Option<Known>> = Mutex::new(None);

/// Called once the boot is judged: from now on the status file exists.
pub fn start(node: Node) {
    let disk = read_disk(&node.disk);
    *lock() = Some(Known { node, disk });
    refresh();
}

/// The disk changed (an update wrote a slot and the ESP): read it again.
pub fn disk_changed() {
    if let Some(k) = lock().as_mut() {
        k.disk = read_disk(&k.node.disk);
    }
    refresh();
}

/// Puts the parts together and replaces the status file; a no-op before
/// [`start`]. Called by every thread that changed a part.
pub fn refresh() {
    let guard = lock();
    let Some(k) = guard.as_ref() else { return };
    let doc = compose(&k.node, &k.disk);
    let json = serde_json::to_string_pretty(&doc).unwrap_or_default() + "\n";
    if let Err(e) = crate::net::status::write_atomic(&k.node.out, &json) {
        say!("status: writing {}: {e}", k.node.out.display());
    }
}

fn lock() -> std::sync::MutexGuard<'static, Option<Known>> {
    KNOWN.lock().unwrap_or_else(|e| e.into_inner())
}

fn read_disk(disk: &Path) -> Result<installer::status::Status, String> {
    // Read-only and not exclusive: the running system holds its partitions.
    installer::status::status(disk).map_err(|e| format!("{e:#}"))
}

/// The document from the parts as they are now. A part file that is
/// missing is null; one that does not parse is kept as a string with the
/// error, so a reader sees that something is wrong and where.
pub fn compose(node: &Node, disk: &Result<installer::status::Status, String>) -> NodeStatus {
    let bad = contract::update::read_bad_releases(&node.state.join(contract::update::BAD_RELEASES))
        .unwrap_or_default();
    NodeStatus {
        version: node.version.clone(),
        slot: node.slot.clone(),
        blessed: node.blessed,
        disk: disk.as_ref().ok().cloned(),
        disk_error: disk.as_ref().err().cloned(),
        network: part(&node.network_file),
        update: part(&node.update_file),
        bad_releases: bad,
    }
}

fn part(path: &Path) -> Option<serde_json::Value> {
    let text = fs::read_to_string(path).ok()?;
    Some(serde_json::from_str(&text).unwrap_or_else(|e| {
        serde_json::Value::String(format!("{}: not JSON: {e}", path.display()))
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn node(dir: &Path) -> Node {
        Node {
            version: "2.0.0".into(),
            slot: "BOOT-B".into(),
            blessed: true,
            disk: dir.join("no-such-disk"),
            state: dir.join("state"),
            network_file: dir.join("network.json"),
            update_file: dir.join("update.json"),
            out: dir.join("status.json"),
        }
    }

    #[test]
    fn parts_are_put_together_and_missing_ones_are_null() {
        let t = tempfile::tempdir().unwrap();
        let n = node(t.path());
        let disk = read_disk(&n.disk);
        let doc = serde_json::to_value(compose(&n, &disk)).unwrap();
        assert_eq!(doc["version"], "2.0.0");
        assert_eq!(doc["slot"], "BOOT-B");
        assert_eq!(doc["blessed"], true);
        assert!(doc["disk"].is_null());
        let err = doc["disk_error"].as_str().unwrap();
        assert!(err.contains("no-such-disk"), "{err}");
        assert!(doc["network"].is_null() && doc["update"].is_null());
        assert_eq!(doc["bad_releases"], serde_json::json!([]));

        fs::create_dir_all(t.path().join("state/cairn")).unwrap();
        fs::write(
            t.path().join("state").join(contract::update::BAD_RELEASES),
            "3.0.0\n",
        )
        .unwrap();
        fs::write(&n.network_file, r#"{"links":[{"name":"eth0"}]}"#).unwrap();
        fs::write(&n.update_file, "{truncated").unwrap();
        let doc = serde_json::to_value(compose(&n, &disk)).unwrap();
        assert_eq!(doc["bad_releases"], serde_json::json!(["3.0.0"]));
        assert_eq!(doc["network"]["links"][0]["name"], "eth0");
        let upd = doc["update"].as_str().unwrap();
        assert!(upd.contains("update.json: not JSON"), "{upd}");
    }
}
