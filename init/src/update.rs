//! Updates on the running node: the releases that failed to bless here are
//! recorded in STATE at every boot, and with `[update]` in the machine
//! config an agent thread checks the channel every `interval_s`
//! (installer::update::check_once: verify against this release's keys, skip
//! known-bad and not-newer, pull to EPHEMERAL, upgrade live), records each
//! attempt on the console and in /run/cairn/update.json, and reboots into an
//! installed release as the reboot policy says.
//!
//! Nothing here is needed for the boot to be healthy: the agent starts after
//! blessing, and a registry or network that is down only gives failed
//! attempts and retries.

use std::fs;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::Duration;

use contract::control::EventKind;
use contract::esp::{version_of, EntryName};
use contract::update::{Attempt, Outcome, Reboot, Update};

use crate::net::status::write_atomic;
use crate::say;

/// Versions of the `EFI/Linux` entries whose tries are used up: systemd-boot
/// fell back from them. The running release is never one of them (it is
/// booting fine, whatever its counter says).
pub fn failed_releases<'a>(files: impl IntoIterator<Item = &'a str>, running: &str) -> Vec<String> {
    let mut v: Vec<String> = files
        .into_iter()
        .filter_map(EntryName::parse)
        .filter(|e| e.exhausted())
        .filter_map(|e| version_of(&e.base).map(String::from))
        .filter(|v| v != running)
        .collect();
    v.sort();
    v.dedup();
    v
}

/// Adds what [`failed_releases`] finds on the mounted ESP to STATE's
/// bad-release record (contract::update::BAD_RELEASES), with a console line
/// for each release recorded the first time.
pub fn record_failed_releases(esp: &Path, state: &Path, running: &str) -> std::io::Result<()> {
    let names: Vec<String> = match fs::read_dir(esp.join(contract::esp::ENTRY_DIR)) {
        Ok(d) => d
            .flatten()
            .filter_map(|e| e.file_name().into_string().ok())
            .collect(),
        Err(_) => return Ok(()),
    };
    let failed = failed_releases(names.iter().map(String::as_str), running);
    if failed.is_empty() {
        return Ok(());
    }
    let path = state.join(contract::update::BAD_RELEASES);
    let old = fs::read_to_string(&path).unwrap_or_default();
    let known = contract::update::parse_bad_releases(&old);
    let mut text = old.clone();
    for v in &failed {
        if !known.contains(v) {
            say!("release {v} failed to boot and was fallen back from: marked bad, never installed again automatically");
            text = contract::update::add_bad_release(&text, v);
        }
    }
    if text != old {
        write_atomic(&path, text)?;
    }
    Ok(())
}

/// Who is upgrading now (the agent or an API request): one upgrade at a
/// time, since both write the same inactive slot and ESP. A rollback takes
/// it too (it renames entries on the ESP an upgrade may be writing).
static UPGRADING: Mutex<Option<String>> = Mutex::new(None);

/// Held while an upgrade (or rollback) runs; released when dropped.
#[derive(Debug)]
pub struct UpgradeLock(());

impl Drop for UpgradeLock {
    fn drop(&mut self) {
        *UPGRADING.lock().unwrap_or_else(|e| e.into_inner()) = None;
    }
}

/// Takes the upgrade lock for `who`; `Err` names who holds it.
pub fn begin_upgrade(who: &str) -> Result<UpgradeLock, String> {
    let mut g = UPGRADING.lock().unwrap_or_else(|e| e.into_inner());
    if let Some(holder) = g.as_ref() {
        return Err(holder.clone());
    }
    *g = Some(who.to_string());
    Ok(UpgradeLock(()))
}

/// What an upgrade tells as it goes: a console line and an upgrade event
/// (the control socket streams those to the client that asked).
pub fn progress(m: &str) {
    say!("update: {m}");
    crate::ring::event(EventKind::Upgrade, None, m);
}

/// Runs one check of `cfg` against this node and records the attempt
/// (console, ATTEMPT_FILE, status). Shared by the agent and the control
/// socket's `upgrade`; the caller holds the upgrade lock.
pub fn check_now(
    cfg: &Update,
    disk: &Path,
    running: &str,
    state: &Path,
    work: &Path,
) -> Result<Attempt, String> {
    let node = live_node(disk, running, state, work)?;
    let a = installer::update::check_once(cfg, &node);
    record(&a);
    Ok(a)
}

/// This node as an upgrade sees it: the keys the running release trusts,
/// the releases known bad here, the disk and the work directory.
fn live_node(
    disk: &Path,
    running: &str,
    state: &Path,
    work: &Path,
) -> Result<installer::update::Node, String> {
    let trusted = signing::load_trusted_dir(Path::new(contract::trust::NODE_KEYS_DIR))
        .map_err(|e| format!("this release trusts no key to sign the next ({e})"))?;
    Ok(installer::update::Node {
        disk: disk.to_path_buf(),
        running: running.to_string(),
        trusted,
        bad: known_bad(state)?,
        work: work.to_path_buf(),
        now: unix_now(),
        progress,
    })
}

/// Installs an uploaded bundle tar (the node API's `upgrade --bundle`) by
/// the rules of [`check_now`]: `size` must fit the free space of `work`
/// (EPHEMERAL) before a byte is read; the tar is verified while it is
/// unpacked there, so nothing reaches the disk before it all checks.
pub fn install_stream_now(
    source: &str,
    size: u64,
    r: Box<dyn std::io::Read + Send>,
    disk: &Path,
    running: &str,
    state: &Path,
    work: &Path,
) -> Result<Attempt, String> {
    let node = live_node(disk, running, state, work)?;
    fs::create_dir_all(work).map_err(|e| format!("creating {}: {e}", work.display()))?;
    let free = free_bytes(work).map_err(|e| format!("statvfs {}: {e}", work.display()))?;
    if size > free {
        return Err(format!(
            "{source} is {size} bytes; {} has {free} bytes free",
            work.display()
        ));
    }
    let a = installer::update::install_stream(source, r, &node);
    record(&a);
    Ok(a)
}

/// Bytes an unprivileged writer may still put on the filesystem of `p`.
fn free_bytes(p: &Path) -> std::io::Result<u64> {
    use std::os::unix::ffi::OsStrExt;
    let c = std::ffi::CString::new(p.as_os_str().as_bytes())
        .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidInput, e))?;
    // SAFETY: plain data, filled by statvfs from a valid C string.
    let mut st: libc::statvfs = unsafe { std::mem::zeroed() };
    if unsafe { libc::statvfs(c.as_ptr(), &mut st) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(st.f_bavail as u64 * st.f_frsize as u64)
}

/// What the agent knows of this node.
pub struct Agent {
    pub cfg: Update,
    /// Whole-disk device the running system booted from.
    pub disk: PathBuf,
    pub running: String,
    /// The STATE mount (for the bad-release record).
    pub state: PathBuf,
    /// Where releases are pulled to (on EPHEMERAL).
    pub work: PathBuf,
}

/// The first retry after a failed check; doubled per failure, up to the
/// check interval.
const FIRST_RETRY: Duration = Duration::from_secs(10);
/// How long the first check waits for an address.
const NETWORK_WAIT: Duration = Duration::from_secs(60);

impl Agent {
    /// Runs the agent on its own thread (signals stay blocked there, as on
    /// every thread of PID 1: the main loop takes them).
    pub fn spawn(self) {
        let r = std::thread::Builder::new()
            .name("update".into())
            .spawn(move || self.run());
        if let Err(e) = r {
            say!("update: cannot start the agent thread: {e}");
        }
    }

    fn run(self) {
        let trusted = match signing::load_trusted_dir(Path::new(contract::trust::NODE_KEYS_DIR)) {
            Ok(k) => k,
            Err(e) => {
                say!("update: off: this release trusts no key to sign the next ({e})");
                return;
            }
        };
        say!(
            "update: following {} every {} s",
            installer::update::channel(&self.cfg),
            self.cfg.interval_s
        );
        // A check before any link has an address can only fail: give the
        // network its first lease (DHCP's first tries take seconds), then
        // check anyway and let the retries say what is wrong.
        if !crate::net::wait_up(Duration::from_secs(0)) {
            say!(
                "update: waiting for the network (at most {} s)",
                NETWORK_WAIT.as_secs()
            );
            crate::net::wait_up(NETWORK_WAIT);
        }
        let interval = Duration::from_secs(self.cfg.interval_s);
        let mut retry = FIRST_RETRY.min(interval);
        loop {
            let bad = match known_bad(&self.state) {
                Ok(b) => b,
                Err(why) => {
                    // Checking without the list could reinstall a release
                    // that already failed its boots on this node.
                    say!("update: not checking: {why}");
                    let w = retry;
                    retry = (retry * 2).min(interval);
                    say!("update: retrying in {} s", w.as_secs());
                    std::thread::sleep(w);
                    continue;
                }
            };
            // An upgrade asked for through the API is running: check at
            // the next interval (it reboots the node if it installs).
            let lock = match begin_upgrade("the update agent") {
                Ok(l) => l,
                Err(holder) => {
                    say!("update: not checking: an upgrade started by {holder} is running");
                    std::thread::sleep(interval);
                    continue;
                }
            };
            let node = installer::update::Node {
                disk: self.disk.clone(),
                running: self.running.clone(),
                trusted: trusted.clone(),
                bad,
                work: self.work.clone(),
                now: unix_now(),
                progress,
            };
            let a = installer::update::check_once(&self.cfg, &node);
            record(&a);
            if a.outcome != Outcome::Installed {
                drop(lock);
            } else {
                // Held until the reboot: nothing else writes the disk now.
                std::mem::forget(lock);
            }
            let wait = match a.outcome {
                Outcome::Installed => return self.reboot(&a),
                Outcome::Failed => {
                    let w = retry;
                    retry = (retry * 2).min(interval);
                    say!("update: retrying in {} s", w.as_secs());
                    w
                }
                Outcome::UpToDate | Outcome::SkippedBad => {
                    retry = FIRST_RETRY.min(interval);
                    interval
                }
            };
            std::thread::sleep(wait);
        }
    }

    /// Asks the main loop for a reboot (SIGTERM to PID 1: services stop,
    /// filesystems unmount), now or when the window opens.
    fn reboot(&self, a: &Attempt) {
        let offered = a.offered.as_deref().unwrap_or("the new release");
        if let (Reboot::Window, Some(w)) = (self.cfg.reboot, self.cfg.window()) {
            let wait = w.wait_s(unix_now());
            if wait > 0 {
                say!(
                    "update: {offered} installed; rebooting in the window {} (in {wait} s)",
                    self.cfg.window.as_deref().unwrap_or("")
                );
                std::thread::sleep(Duration::from_secs(wait));
            }
        }
        say!("update: rebooting into {offered}");
        // SAFETY: kill(2) with a constant pid and signal has no memory effects.
        unsafe { libc::kill(1, libc::SIGTERM) };
    }
}

/// The releases this node must not install again (STATE's record). An
/// absent file is an empty list; an unreadable one is an error, not an
/// empty list.
fn known_bad(state: &Path) -> Result<Vec<String>, String> {
    let path = state.join(contract::update::BAD_RELEASES);
    contract::update::read_bad_releases(&path).map_err(|e| {
        format!(
            "the bad-release list {} cannot be read: {e}",
            path.display()
        )
    })
}

fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// One console line per attempt, and the last attempt as JSON for status
/// and the node API.
pub fn record(a: &Attempt) {
    let outcome = match a.outcome {
        Outcome::UpToDate => "up to date",
        Outcome::SkippedBad => "skipped (known bad)",
        Outcome::Installed => "installed",
        Outcome::Failed => "failed",
    };
    say!("update: {} {outcome}: {}", a.source, a.detail);
    let path = Path::new(contract::update::ATTEMPT_FILE);
    let json = serde_json::to_vec_pretty(a).unwrap_or_default();
    if let Err(e) = write_atomic(path, &json) {
        say!("update: writing {}: {e}", path.display());
    }
    if a.outcome == Outcome::Installed {
        crate::status::disk_changed();
    } else {
        crate::status::refresh();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exhausted_entries_are_failed_releases_but_never_the_running_one() {
        let files = [
            "cairn-1.0.0.efi",
            "cairn-3.0.0+0-3.efi",
            "cairn-2.0.0+0-3.efi",
            "cairn-4.0.0+2-1.efi",
            "cairn-5.0.0+0-3.EFI",
            "cairn-3.0.0+0-3.tmp",
            "BOOTX64.EFI",
        ];
        assert_eq!(failed_releases(files, "2.0.0"), ["3.0.0", "5.0.0"]);
        assert!(failed_releases(["cairn-2.0.0+3.efi"], "1.0.0").is_empty());
    }

    #[test]
    fn recording_is_idempotent_and_keeps_earlier_entries() {
        let t = tempfile::tempdir().unwrap();
        let (esp, state) = (t.path().join("esp"), t.path().join("state"));
        fs::create_dir_all(esp.join(contract::esp::ENTRY_DIR)).unwrap();
        fs::write(esp.join("EFI/Linux/cairn-3.0.0+0-3.efi"), b"").unwrap();
        fs::create_dir_all(state.join("cairn")).unwrap();
        fs::write(state.join(contract::update::BAD_RELEASES), "0.9.0\n").unwrap();
        record_failed_releases(&esp, &state, "2.0.0").unwrap();
        record_failed_releases(&esp, &state, "2.0.0").unwrap();
        assert_eq!(
            fs::read_to_string(state.join(contract::update::BAD_RELEASES)).unwrap(),
            "0.9.0\n3.0.0\n"
        );
    }

    /// Missing: nothing is bad yet. Unreadable (here a directory where the
    /// file should be): an error naming the file, never an empty list the
    /// agent would check against.
    #[test]
    fn bad_list_missing_is_empty_but_unreadable_is_an_error() {
        let t = tempfile::tempdir().unwrap();
        assert_eq!(known_bad(t.path()).unwrap(), Vec::<String>::new());
        fs::create_dir_all(t.path().join(contract::update::BAD_RELEASES)).unwrap();
        let e = known_bad(t.path()).unwrap_err();
        assert!(e.contains("cairn/bad-releases cannot be read"), "{e}");
        fs::remove_dir(t.path().join(contract::update::BAD_RELEASES)).unwrap();
        fs::write(t.path().join(contract::update::BAD_RELEASES), "3.0.0\n").unwrap();
        assert_eq!(known_bad(t.path()).unwrap(), ["3.0.0"]);
    }
}
