//! The node as cairnd sees it before it is wired to init: reads from the
//! files init and the image leave behind; operations that need init
//! (reboot, shutdown, rollback, storing a config) answer 501 for now.

use crate::server::{ApplyOutcome, Node, NodeError, Version};
use std::path::PathBuf;

pub struct FileNode {
    /// `/etc/os-release`.
    pub os_release: PathBuf,
    /// [`contract::machine::NODE_STATUS`].
    pub status: PathBuf,
    /// The stored machine config (`contract::machine::STORED_CONFIG`).
    pub machine_config: PathBuf,
}

fn read(p: &std::path::Path) -> Result<String, NodeError> {
    std::fs::read_to_string(p).map_err(|e| NodeError::Failed(format!("{}: {e}", p.display())))
}

pub use contract::machine::line_diff;

impl Node for FileNode {
    fn version(&self) -> Result<Version, NodeError> {
        let osrel = read(&self.os_release)?;
        let field = |k| installer::bootmodel::osrel_field(&osrel, k).unwrap_or_default();
        Ok(Version {
            os: field("NAME"),
            version: field("VERSION_ID"),
            api: env!("CARGO_PKG_VERSION").to_string(),
        })
    }

    fn status(&self) -> Result<serde_json::Value, NodeError> {
        serde_json::from_str(&read(&self.status)?)
            .map_err(|e| NodeError::Failed(format!("{}: {e}", self.status.display())))
    }

    fn reboot(&self) -> Result<(), NodeError> {
        Err(NodeError::NotImplemented("reboot (not wired to init yet)"))
    }

    fn shutdown(&self) -> Result<(), NodeError> {
        Err(NodeError::NotImplemented(
            "shutdown (not wired to init yet)",
        ))
    }

    fn rollback(&self) -> Result<serde_json::Value, NodeError> {
        Err(NodeError::NotImplemented(
            "rollback (not wired to init yet)",
        ))
    }

    fn config_get(&self) -> Result<String, NodeError> {
        read(&self.machine_config)
    }

    /// Validates with the parser init uses; a dry run answers the diff.
    fn config_apply(&self, text: &str, dry_run: bool) -> Result<ApplyOutcome, NodeError> {
        if let Err(e) = contract::machine::MachineConfig::parse(text, "machine.toml") {
            let field = match &e {
                contract::machine::ConfigError::Syntax { line, column, .. } => {
                    format!("machine.toml:{line}:{column}")
                }
                _ => "machine.toml".to_string(),
            };
            return Err(NodeError::Invalid {
                field,
                reason: e.to_string(),
            });
        }
        if !dry_run {
            return Err(NodeError::NotImplemented(
                "storing a config (not wired to init yet; --dry-run works)",
            ));
        }
        let old = std::fs::read_to_string(&self.machine_config).unwrap_or_default();
        Ok(ApplyOutcome {
            dry_run,
            applied: false,
            diff: line_diff(&old, text),
        })
    }
}
