//! Where each operation lives over HTTP: one table shared by the server's
//! router and the client, so they cannot disagree.

use crate::role::Operation;

/// HTTP methods used by the API: reads are GET, changes are POST.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Method {
    Get,
    Post,
}

impl Method {
    pub fn as_str(self) -> &'static str {
        match self {
            Method::Get => "GET",
            Method::Post => "POST",
        }
    }
}

/// The Content-Type of an `upgrade` whose body is a bundle tar
/// (`update.tar`) rather than the JSON naming a registry image.
pub const BUNDLE_CONTENT_TYPE: &str = "application/x-tar";

/// The method and path of `op` (API version 1).
pub fn route(op: Operation) -> (Method, &'static str) {
    use Method::*;
    use Operation::*;
    match op {
        Version => (Get, "/v1/version"),
        Status => (Get, "/v1/status"),
        Logs => (Get, "/v1/logs"),
        Dmesg => (Get, "/v1/dmesg"),
        Events => (Get, "/v1/events"),
        Health => (Post, "/v1/health"),
        Reboot => (Post, "/v1/reboot"),
        Shutdown => (Post, "/v1/shutdown"),
        Upgrade => (Post, "/v1/upgrade"),
        Rollback => (Post, "/v1/rollback"),
        ConfigGet => (Get, "/v1/config"),
        ConfigApply => (Post, "/v1/config/apply"),
        RotateCerts => (Post, "/v1/certs/rotate"),
    }
}
