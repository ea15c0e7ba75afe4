//! Updates from a registry (docs/design.md "Updates"): the machine config's
//! `[update]` section, the bad-release record in STATE and the attempt
//! record under /run that status and the node API serve.
//!
//! ```toml
//! [update]
//! source = "registry.example.com/fleet/cairn"   # REGISTRY/REPO
//! tag = "stable"                                # the channel to follow
//! interval_s = 3600
//! reboot = "window"                             # or "immediate"
//! window = "02:00-04:00"                        # UTC; with reboot = "window"
//! ```
//! Off unless the section is present.

use serde::{Deserialize, Serialize};

/// The `[update]` section.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Update {
    /// `REGISTRY/REPO`, no tag or digest: the channel is `tag`.
    pub source: String,
    #[serde(default = "default_tag")]
    pub tag: String,
    #[serde(default = "default_interval")]
    pub interval_s: u64,
    #[serde(default)]
    pub reboot: Reboot,
    /// `HH:MM-HH:MM` (UTC; may wrap past midnight); required with
    /// `reboot = "window"`.
    pub window: Option<String>,
    /// Speak plain HTTP to the registry (only for a registry on a trusted
    /// link, e.g. loopback in tests); HTTPS otherwise.
    #[serde(default)]
    pub plain_http: bool,
    /// A CA bundle (PEM) for the registry's certificate, instead of the
    /// system's.
    pub ca_file: Option<String>,
}

fn default_tag() -> String {
    "stable".into()
}

fn default_interval() -> u64 {
    3600
}

/// When a node reboots into an update it wrote.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize, Default)]
#[serde(rename_all = "kebab-case")]
pub enum Reboot {
    /// As soon as the new release is written.
    #[default]
    Immediate,
    /// At the next start of the daily `window`.
    Window,
}

/// The shortest check interval a config may ask for: a fleet polling its
/// registry every few seconds is a denial of service, not a policy.
pub const MIN_INTERVAL_S: u64 = 10;

/// A daily window in minutes after 00:00 UTC, `start..end`, wrapping past
/// midnight when `end < start`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Window {
    pub start: u32,
    pub end: u32,
}

impl Window {
    pub fn parse(s: &str) -> Option<Window> {
        let (a, b) = s.split_once('-')?;
        let hm = |t: &str| {
            let (h, m) = t.trim().split_once(':')?;
            if h.len() != 2 || m.len() != 2 {
                return None;
            }
            let (h, m): (u32, u32) = (h.parse().ok()?, m.parse().ok()?);
            (h < 24 && m < 60).then_some(h * 60 + m)
        };
        let (start, end) = (hm(a)?, hm(b)?);
        (start != end).then_some(Window { start, end })
    }

    /// Whether `unix_s` (seconds since the epoch, UTC) lies in the window.
    pub fn contains(&self, unix_s: u64) -> bool {
        let m = ((unix_s % 86_400) / 60) as u32;
        if self.start < self.end {
            (self.start..self.end).contains(&m)
        } else {
            m >= self.start || m < self.end
        }
    }

    /// Seconds from `unix_s` until the window next opens (0 inside it).
    pub fn wait_s(&self, unix_s: u64) -> u64 {
        if self.contains(unix_s) {
            return 0;
        }
        let now = unix_s % 86_400;
        let open = self.start as u64 * 60;
        (open + 86_400 - now) % 86_400
    }
}

impl Update {
    /// Checks what serde cannot; `Err` names the field.
    pub fn validate(&self) -> Result<(), String> {
        let (host, repo) = self.source.split_once('/').ok_or_else(|| {
            format!(
                "update.source {:?}: expected REGISTRY/REPO, e.g. registry.example.com/fleet/cairn",
                self.source
            )
        })?;
        if host.is_empty()
            || repo.is_empty()
            || self.source.contains('@')
            || repo.contains(':')
            || self.source.contains("://")
        {
            return Err(format!(
                "update.source {:?}: expected REGISTRY/REPO without scheme, tag or digest (the channel is update.tag)",
                self.source
            ));
        }
        if self.tag.is_empty()
            || self.tag.len() > 128
            || !self
                .tag
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b))
        {
            return Err(format!(
                "update.tag {:?}: 1-128 of [A-Za-z0-9._-] (an OCI tag)",
                self.tag
            ));
        }
        if self.interval_s < MIN_INTERVAL_S {
            return Err(format!(
                "update.interval_s {}: at least {MIN_INTERVAL_S}",
                self.interval_s
            ));
        }
        match (self.reboot, &self.window) {
            (Reboot::Window, None) => {
                return Err(
                    "update.reboot = \"window\" needs update.window = \"HH:MM-HH:MM\"".into(),
                )
            }
            (Reboot::Immediate, Some(_)) => {
                return Err("update.window is set but update.reboot is \"immediate\"".into())
            }
            (_, Some(w)) if Window::parse(w).is_none() => {
                return Err(format!(
                    "update.window {w:?}: expected HH:MM-HH:MM (UTC, start and end differ)"
                ))
            }
            _ => {}
        }
        Ok(())
    }

    pub fn window(&self) -> Option<Window> {
        Window::parse(self.window.as_deref()?)
    }
}

/// Releases that failed to bless on this machine (systemd-boot fell back
/// from them), one version per line, under the STATE mount: never installed
/// again automatically. An operator may still install one by hand.
pub const BAD_RELEASES: &str = "cairn/bad-releases";

/// The bad-release file's versions (blank lines and `#` comments skipped).
pub fn parse_bad_releases(text: &str) -> Vec<String> {
    text.lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .map(String::from)
        .collect()
}

/// The versions of the bad-release file at `path` (BAD_RELEASES under the
/// STATE mount on a node); none when it does not exist (nothing has failed
/// here yet).
pub fn read_bad_releases(path: &std::path::Path) -> std::io::Result<Vec<String>> {
    match std::fs::read_to_string(path) {
        Ok(t) => Ok(parse_bad_releases(&t)),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Vec::new()),
        Err(e) => Err(e),
    }
}

/// `text` with `version` added (once).
pub fn add_bad_release(text: &str, version: &str) -> String {
    let mut v = parse_bad_releases(text);
    if !v.iter().any(|x| x == version) {
        v.push(version.to_string());
    }
    v.iter().map(|x| format!("{x}\n")).collect()
}

/// Where a node pulls a release before writing it, under the EPHEMERAL
/// mount (disk, not RAM).
pub const WORK_DIR: &str = "cairn/updates";

/// The last update attempt, as JSON under /run for status and the node API.
pub const ATTEMPT_FILE: &str = "/run/cairn/update.json";

/// One update check and what came of it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Attempt {
    /// Seconds since the epoch (the node's clock, set by SNTP).
    pub at: u64,
    /// `REGISTRY/REPO:TAG` checked.
    pub source: String,
    pub running: String,
    /// The version the channel offered, once its manifest verified.
    pub offered: Option<String>,
    pub outcome: Outcome,
    /// What went wrong or why nothing was done, in words.
    pub detail: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Outcome {
    /// The channel offers nothing newer than the running release.
    UpToDate,
    /// The offered release failed to bless here before.
    SkippedBad,
    /// Written into the inactive slot; boots next.
    Installed,
    /// Refused or failed; nothing the loader reaches was written.
    Failed,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn upd(extra: &str) -> Result<Update, String> {
        let u: Update = toml::from_str(&format!("source = \"10.0.2.100:5000/cairn\"\n{extra}"))
            .map_err(|e| e.to_string())?;
        u.validate().map(|_| u)
    }

    #[test]
    fn defaults_and_fields() {
        let u = upd("").unwrap();
        assert_eq!(
            (u.tag.as_str(), u.interval_s, u.reboot),
            ("stable", 3600, Reboot::Immediate)
        );
        let u = upd("tag = \"beta\"\ninterval_s = 60\nreboot = \"window\"\nwindow = \"23:30-01:00\"\nplain_http = true").unwrap();
        assert_eq!(
            u.window(),
            Some(Window {
                start: 1410,
                end: 60
            })
        );
        assert!(u.plain_http);
    }

    #[test]
    fn errors_name_the_field() {
        for (src, field) in [
            ("interval_s = 1", "update.interval_s"),
            ("reboot = \"window\"", "update.window"),
            ("window = \"02:00-03:00\"", "update.window"),
            (
                "reboot = \"window\"\nwindow = \"2:00-3:00\"",
                "update.window",
            ),
            (
                "reboot = \"window\"\nwindow = \"02:00-02:00\"",
                "update.window",
            ),
            ("tag = \"a b\"", "update.tag"),
        ] {
            let e = upd(src).unwrap_err();
            assert!(e.contains(field), "{src}: {e}");
        }
        for source in [
            "cairn",
            "r.example/cairn:1.0",
            "https://r.example/cairn",
            "r/c@sha256:00",
            "/cairn",
        ] {
            let u: Update = toml::from_str(&format!("source = {source:?}")).unwrap();
            assert!(
                u.validate().unwrap_err().contains("update.source"),
                "{source}"
            );
        }
        assert!(upd("reboot = \"later\"").unwrap_err().contains("later"));
        assert!(upd("bogus = 1").unwrap_err().contains("bogus"));
    }

    #[test]
    fn window_contains_and_waits_across_midnight() {
        let w = Window::parse("23:30-01:00").unwrap();
        let at = |h: u64, m: u64| 20_000 * 86_400 + h * 3600 + m * 60;
        assert!(w.contains(at(23, 45)) && w.contains(at(0, 59)));
        assert!(!w.contains(at(1, 0)) && !w.contains(at(12, 0)));
        assert_eq!(w.wait_s(at(23, 0)), 30 * 60);
        assert_eq!(w.wait_s(at(1, 0)), (22 * 60 + 30) * 60);
        assert_eq!(w.wait_s(at(0, 10)), 0);
    }

    #[test]
    fn bad_releases_round_trip() {
        let t = add_bad_release("", "3.0.0");
        let t = add_bad_release(&t, "3.0.0");
        let t = add_bad_release(&("# failed to bless\n".to_string() + &t), "4.0.0");
        assert_eq!(t, "3.0.0\n4.0.0\n");
        assert_eq!(parse_bad_releases(&t), ["3.0.0", "4.0.0"]);
    }

    #[test]
    fn attempt_json_is_stable() {
        let a = Attempt {
            at: 1,
            source: "r/c:stable".into(),
            running: "1.0.0".into(),
            offered: Some("2.0.0".into()),
            outcome: Outcome::SkippedBad,
            detail: "2.0.0 failed to bless before".into(),
        };
        let j = serde_json::to_string(&a).unwrap();
        assert!(j.contains("\"outcome\":\"skipped-bad\""), "{j}");
        assert_eq!(serde_json::from_str::<Attempt>(&j).unwrap(), a);
    }
}
