//! The lockdown level and the active LSMs, read from securityfs and printed
//! once per boot so the console shows what the kernel enforces (the e2e
//! test asserts the level).

use std::fs;
use std::path::Path;

/// Where stage 2 mounts securityfs (stage2::mount_extras).
pub const SECURITYFS: &str = "/sys/kernel/security";

/// The bracketed entry of `/sys/kernel/security/lockdown`:
/// `none integrity [confidentiality]` gives `confidentiality`.
pub fn lockdown_level(text: &str) -> Option<&str> {
    text.split_whitespace()
        .find_map(|w| w.strip_prefix('[')?.strip_suffix(']'))
}

/// The two console lines: `lockdown <level>` (or `lockdown unavailable
/// (<why>)`) and `lsm <list>` (or `lsm unavailable (<why>)`).
pub fn report(dir: &Path) -> [String; 2] {
    let path = dir.join("lockdown");
    let lockdown = match fs::read_to_string(&path) {
        Ok(t) => match lockdown_level(&t) {
            Some(l) => format!("lockdown {l}"),
            None => format!("lockdown unavailable (no level marked in {:?})", t.trim()),
        },
        Err(e) => format!("lockdown unavailable (reading {}: {e})", path.display()),
    };
    let path = dir.join("lsm");
    let lsm = match fs::read_to_string(&path) {
        Ok(t) => format!("lsm {}", t.trim()),
        Err(e) => format!("lsm unavailable (reading {}: {e})", path.display()),
    };
    [lockdown, lsm]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_bracketed_level_is_the_active_one() {
        assert_eq!(
            lockdown_level("none integrity [confidentiality]\n"),
            Some("confidentiality")
        );
        assert_eq!(
            lockdown_level("none [integrity] confidentiality"),
            Some("integrity")
        );
        assert_eq!(
            lockdown_level("[none] integrity confidentiality"),
            Some("none")
        );
        assert_eq!(lockdown_level("none integrity"), None);
    }

    #[test]
    fn report_reads_securityfs_or_says_why_not() {
        let d = tempfile::tempdir().unwrap();
        fs::write(
            d.path().join("lockdown"),
            "none [integrity] confidentiality\n",
        )
        .unwrap();
        fs::write(d.path().join("lsm"), "lockdown,capability,landlock,yama").unwrap();
        assert_eq!(
            report(d.path()),
            [
                "lockdown integrity",
                "lsm lockdown,capability,landlock,yama"
            ]
        );
        let empty = tempfile::tempdir().unwrap();
        let [l, s] = report(empty.path());
        assert!(l.starts_with("lockdown unavailable (reading "), "{l}");
        assert!(s.starts_with("lsm unavailable ("), "{s}");
    }
}
