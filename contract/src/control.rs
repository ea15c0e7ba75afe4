//! The control socket: how cairnd (unprivileged) asks init (PID 1) for what
//! only init can do or knows: power, rollback, upgrade, the stored config,
//! the log ring, the event stream, dmesg and health checks.
//!
//! A Unix stream socket at [`SOCKET`]. init accepts a connection only from
//! uid 0 or [`crate::api::UID`] (SO_PEERCRED) and reads one [`Request`] as a
//! JSON line; it answers with [`Reply`] JSON lines. A request that does not
//! follow ([`Request::Logs`]/[`Request::Events`] with `follow = false`, and
//! every other request) ends with exactly one `Done` or `Error` line; a
//! following one streams `Log`/`Event` lines until the client hangs up.
//! [`Request::Upgrade`] streams the upgrade's `Event`s, then `Done`/`Error`.
//! [`Request::UpgradeBundle`] is the one request with a body: exactly
//! `size` bytes of a bundle tar follow its line on the same connection.
//!
//! Authorization is cairnd's (roles from the client certificate); `by` is
//! the certificate's subject, which init logs on the console and in the
//! event stream with every change.

use serde::{Deserialize, Serialize};

/// The socket's path (on /run: RAM, gone at reboot).
pub const SOCKET: &str = "/run/cairn/control.sock";
/// Lines kept per log source in init's ring (RAM only, as Talos does).
pub const RING_LINES: usize = 1000;
/// Longest line kept; longer ones are cut (and marked with `…`).
pub const MAX_LINE: usize = 4096;
/// Events kept for a new reader.
pub const EVENTS_KEPT: usize = 500;
/// Longest request line init reads (a machine config fits many times).
pub const MAX_REQUEST: usize = 2 * 1024 * 1024;
/// The log source of init's own lines (the `cairn:` console lines).
pub const INIT_SOURCE: &str = "init";
/// Largest bundle upload (`update.tar`) accepted: a release is a UKI, a
/// boot loader and a rootfs that fits a BOOT slot, far below this. Bigger
/// uploads are refused from their declared size, before a byte is read.
pub const MAX_BUNDLE: u64 = 4 << 30;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case", deny_unknown_fields)]
pub enum Request {
    /// The sources that have lines (init, every service, health checks).
    LogSources,
    /// The last `tail` lines (all kept if absent) of `source`, then, with
    /// `follow`, every new line.
    Logs {
        source: String,
        #[serde(default)]
        follow: bool,
        #[serde(default)]
        tail: Option<usize>,
    },
    /// The kept events, then, with `follow`, every new one.
    Events {
        #[serde(default)]
        follow: bool,
    },
    /// The kernel log as it is now.
    Dmesg,
    /// Runs the machine config's health checks now.
    Health,
    Reboot {
        by: String,
    },
    Shutdown {
        by: String,
    },
    /// Makes the other slot's release boot next (no reboot).
    Rollback {
        by: String,
    },
    /// Pulls `image` (`REGISTRY/REPO:TAG`), verifies it against this
    /// release's keys, writes it to the inactive slot and reboots into it.
    Upgrade {
        by: String,
        image: String,
        /// The registry speaks plain HTTP (the manifest is verified anyway).
        #[serde(default)]
        insecure: bool,
    },
    /// Installs the bundle tar (`update.tar`) of `size` bytes that follows
    /// this line: verified against this release's keys while it is
    /// unpacked on EPHEMERAL, written to the inactive slot, then a reboot
    /// into it. Answered like [`Request::Upgrade`].
    UpgradeBundle {
        by: String,
        size: u64,
    },
    /// Replaces the node API's serving certificate and key (cairnd checked
    /// that `crt` chains to the API CA and `key` is its key) in the stored
    /// machine config and in cairnd's secrets on /run; cairnd then
    /// restarts to serve it. The key is a secret: never logged.
    RotateCerts {
        by: String,
        crt: String,
        key: String,
    },
    /// The stored machine config, with the API key redacted.
    ConfigGet,
    /// Validates `config` with the parser init boots with; unless
    /// `dry_run`, stores it in STATE for the next boot.
    ConfigApply {
        by: String,
        config: String,
        #[serde(default)]
        dry_run: bool,
    },
}

impl Request {
    /// The certificate subject of a request that changes the node.
    pub fn by(&self) -> Option<&str> {
        match self {
            Request::Reboot { by }
            | Request::Shutdown { by }
            | Request::Rollback { by }
            | Request::Upgrade { by, .. }
            | Request::UpgradeBundle { by, .. }
            | Request::RotateCerts { by, .. }
            | Request::ConfigApply { by, .. } => Some(by),
            _ => None,
        }
    }
}

/// One line of a service's (or init's) output.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LogLine {
    pub source: String,
    /// Per source, from 1; a gap means lines fell out of the ring.
    pub seq: u64,
    /// Monotonic time since boot, in milliseconds.
    pub ms: u64,
    /// `out` or `err` for a service; `init` for init's own lines.
    pub stream: String,
    pub text: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum EventKind {
    /// Boot progress: blessed, booted version, slot.
    Boot,
    /// A service started, exited or is backing off.
    Service,
    /// A health check's result.
    Health,
    /// Upgrade progress (pull, verify, write, reboot) or its failure.
    Upgrade,
    /// A machine config stored (or refused).
    Config,
    /// Reboot, shutdown and rollback requests.
    Power,
    /// The network got or lost an address.
    Network,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Event {
    /// From 1 per boot.
    pub seq: u64,
    pub ms: u64,
    pub kind: EventKind,
    /// The certificate subject that caused it, for API requests.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub by: Option<String>,
    pub message: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "reply", rename_all = "snake_case", deny_unknown_fields)]
pub enum Reply {
    Log(LogLine),
    Event(Event),
    /// The request's result: the shape is the request's (docs/api.md).
    Done {
        result: serde_json::Value,
    },
    /// Refused or failed; `field` names what was wrong in a config.
    Error {
        error: String,
        #[serde(default)]
        kind: ErrorKind,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        field: Option<String>,
    },
}

/// Why a request failed: cairnd maps it to an HTTP status.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum ErrorKind {
    /// It ran and failed (500).
    #[default]
    Failed,
    /// The input is wrong: a config that does not parse or validate, an
    /// image reference that is not one (422).
    Invalid,
    /// Something that excludes it is running: a second upgrade (409).
    Busy,
    /// What it names does not exist: a log source (404).
    NotFound,
}

impl Reply {
    pub fn error(e: impl Into<String>) -> Reply {
        Reply::Error {
            error: e.into(),
            kind: ErrorKind::Failed,
            field: None,
        }
    }
    pub fn refused(kind: ErrorKind, e: impl Into<String>) -> Reply {
        Reply::Error {
            error: e.into(),
            kind,
            field: None,
        }
    }
    /// One JSON line, newline included.
    pub fn line(&self) -> String {
        let mut s = serde_json::to_string(self).unwrap_or_else(|e| {
            format!("{{\"reply\":\"error\",\"error\":\"encoding a reply: {e}\"}}")
        });
        s.push('\n');
        s
    }
}

/// Cuts `text` to [`MAX_LINE`] bytes at a character boundary.
pub fn clip(text: &str) -> String {
    if text.len() <= MAX_LINE {
        return text.to_string();
    }
    let mut i = MAX_LINE;
    while !text.is_char_boundary(i) {
        i -= 1;
    }
    format!("{}…", &text[..i])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_round_trip_and_refuse_unknown_fields() {
        let r: Request =
            serde_json::from_str(r#"{"op":"logs","source":"web","follow":true}"#).unwrap();
        assert_eq!(
            r,
            Request::Logs {
                source: "web".into(),
                follow: true,
                tail: None
            }
        );
        let up = Request::Upgrade {
            by: "CN=ops".into(),
            image: "r/cairn:2.0.0".into(),
            insecure: false,
        };
        let back: Request = serde_json::from_str(&serde_json::to_string(&up).unwrap()).unwrap();
        assert_eq!(back, up);
        assert_eq!(up.by(), Some("CN=ops"));
        assert!(serde_json::from_str::<Request>(r#"{"op":"reboot","by":"x","extra":1}"#).is_err());
        assert!(serde_json::from_str::<Request>(r#"{"op":"format_disk"}"#).is_err());
    }

    #[test]
    fn reply_lines_are_one_json_line() {
        let l = Reply::error("no").line();
        assert!(l.ends_with('\n') && l.matches('\n').count() == 1);
        let back: Reply = serde_json::from_str(l.trim()).unwrap();
        assert_eq!(back, Reply::error("no"));
    }

    #[test]
    fn clip_keeps_char_boundaries() {
        let long = "é".repeat(MAX_LINE);
        let c = clip(&long);
        assert!(c.len() <= MAX_LINE + '…'.len_utf8());
        assert!(c.ends_with('…'));
        assert_eq!(clip("short"), "short");
    }
}
