//! Roles and the operations they allow.
//!
//! As in Talos, a client's role is carried in the Organization (O) field of
//! its certificate, so the CA alone decides who may do what: the node keeps
//! no user list. Roles are ordered; each one allows everything the lower
//! ones do.

use std::fmt;

/// A role, ordered from least to most powerful.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Role {
    /// Reads: version, status, logs, events, health.
    Reader,
    /// Also changes what runs: reboot, shutdown, upgrade, rollback.
    Operator,
    /// Also changes the configuration and the API's own certificates.
    Admin,
}

impl Role {
    pub const ALL: [Role; 3] = [Role::Reader, Role::Operator, Role::Admin];

    /// The Organization string that grants this role.
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Reader => "os:reader",
            Role::Operator => "os:operator",
            Role::Admin => "os:admin",
        }
    }

    /// The role named by one Organization value; other values (a company
    /// name, say) grant nothing and are ignored.
    pub fn from_organization(o: &str) -> Option<Role> {
        Role::ALL.into_iter().find(|r| r.as_str() == o)
    }

    /// The role granted by a certificate's Organization values: the highest
    /// one named, or none (no access at all).
    pub fn granted<'a>(organizations: impl IntoIterator<Item = &'a str>) -> Option<Role> {
        organizations
            .into_iter()
            .filter_map(Role::from_organization)
            .max()
    }
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl std::str::FromStr for Role {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Role::from_organization(s).ok_or_else(|| {
            format!("unknown role {s:?} (expected os:reader, os:operator or os:admin)")
        })
    }
}

/// Every operation of the node API (issue 14), including the ones not
/// implemented yet: they are authorized like the others.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Operation {
    Version,
    Status,
    Logs,
    Dmesg,
    Events,
    Health,
    Reboot,
    Shutdown,
    Upgrade,
    Rollback,
    ConfigGet,
    ConfigApply,
    RotateCerts,
}

impl Operation {
    pub const ALL: [Operation; 13] = [
        Operation::Version,
        Operation::Status,
        Operation::Logs,
        Operation::Dmesg,
        Operation::Events,
        Operation::Health,
        Operation::Reboot,
        Operation::Shutdown,
        Operation::Upgrade,
        Operation::Rollback,
        Operation::ConfigGet,
        Operation::ConfigApply,
        Operation::RotateCerts,
    ];

    /// The least role allowed to call this operation: the role matrix.
    pub fn needs(self) -> Role {
        use Operation::*;
        match self {
            // Reading the machine config is a read. Once the API's server
            // key travels in the machine config (issue 14, PKI), config_get
            // must redact it for non-admins, as Talos does for os:reader.
            Version | Status | Logs | Dmesg | Events | Health | ConfigGet => Role::Reader,
            Reboot | Shutdown | Upgrade | Rollback => Role::Operator,
            ConfigApply | RotateCerts => Role::Admin,
        }
    }

    /// Whether a call changes the node (and so is logged with the subject).
    pub fn mutates(self) -> bool {
        self.needs() > Role::Reader
    }

    /// The name used in messages, logs and the docs.
    pub fn as_str(self) -> &'static str {
        use Operation::*;
        match self {
            Version => "version",
            Status => "status",
            Logs => "logs",
            Dmesg => "dmesg",
            Events => "events",
            Health => "health",
            Reboot => "reboot",
            Shutdown => "shutdown",
            Upgrade => "upgrade",
            Rollback => "rollback",
            ConfigGet => "config_get",
            ConfigApply => "config_apply",
            RotateCerts => "rotate_certs",
        }
    }
}

impl fmt::Display for Operation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A call refused for its role. The message names the role needed and the
/// one the certificate has, so the operator knows which config to use.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{op} needs role {needs}; the client certificate ({subject}) has {}", granted.map_or("no os: role".to_string(), |r| r.to_string()))]
pub struct Refused {
    pub op: Operation,
    pub needs: Role,
    pub granted: Option<Role>,
    pub subject: String,
}

/// Allows `op` for a client granted `granted`, or says why not. `subject`
/// (e.g. `CN=alice`) only goes into the message.
pub fn authorize(granted: Option<Role>, op: Operation, subject: &str) -> Result<(), Refused> {
    match granted {
        Some(r) if r >= op.needs() => Ok(()),
        _ => Err(Refused {
            op,
            needs: op.needs(),
            granted,
            subject: subject.to_string(),
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn highest_organization_wins_and_others_are_ignored() {
        assert_eq!(
            Role::granted(["Acme", "os:reader", "os:admin"]),
            Some(Role::Admin)
        );
        assert_eq!(
            Role::granted(["os:operator", "os:reader"]),
            Some(Role::Operator)
        );
        assert_eq!(Role::granted(["Acme", "os:root", "OS:ADMIN"]), None);
        assert_eq!(Role::granted([]), None);
    }

    #[test]
    fn refusal_names_needed_and_granted_roles() {
        let e = authorize(Some(Role::Reader), Operation::Reboot, "CN=alice").unwrap_err();
        assert_eq!(
            e.to_string(),
            "reboot needs role os:operator; the client certificate (CN=alice) has os:reader"
        );
        let e = authorize(None, Operation::Version, "CN=bob").unwrap_err();
        assert!(e.to_string().contains("has no os: role"), "{e}");
    }

    #[test]
    fn matrix_is_monotonic() {
        for op in Operation::ALL {
            for r in Role::ALL {
                assert_eq!(authorize(Some(r), op, "").is_ok(), r >= op.needs());
            }
        }
    }
}
