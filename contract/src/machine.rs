//! The machine configuration (`machine.toml`), the one file an operator
//! writes. Parsing is strict (unknown keys are errors) so a typo fails the
//! boot loudly instead of silently dropping a service.

use serde::Deserialize;
use std::path::Path;
use thiserror::Error;

#[derive(Debug, Error, PartialEq, Eq)]
pub enum ConfigError {
    #[error("{file}:{line}:{column}: {message}")]
    Syntax {
        file: String,
        line: usize,
        column: usize,
        message: String,
    },
    #[error("{file}: {what}")]
    Invalid { file: String, what: String },
    #[error("reading {file}: {message}")]
    Read { file: String, message: String },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "kebab-case")]
pub enum Restart {
    #[default]
    Always,
    OnFailure,
    Never,
}

#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Service {
    pub name: String,
    pub exec: String,
    #[serde(default)]
    pub args: Vec<String>,
    #[serde(default)]
    pub restart: Restart,
}

#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Health {
    pub name: String,
    pub exec: String,
    #[serde(default)]
    pub args: Vec<String>,
    pub timeout_s: u32,
}

#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct MachineConfig {
    pub hostname: Option<String>,
    pub console_loglevel: Option<u8>,
    #[serde(default, rename = "service")]
    pub services: Vec<Service>,
    #[serde(default, rename = "health")]
    pub health: Vec<Health>,
    /// Off unless present (contract::update).
    pub update: Option<crate::update::Update>,
}

/// 1-based line and column (in characters) of a byte offset.
fn line_col(src: &str, offset: usize) -> (usize, usize) {
    let offset = offset.min(src.len());
    let before = &src[..src.floor_char_boundary_compat(offset)];
    let line = before.matches('\n').count() + 1;
    let col = before.rsplit('\n').next().map_or(0, |l| l.chars().count()) + 1;
    (line, col)
}

trait FloorBoundary {
    fn floor_char_boundary_compat(&self, i: usize) -> usize;
}
impl FloorBoundary for str {
    fn floor_char_boundary_compat(&self, mut i: usize) -> usize {
        while !self.is_char_boundary(i) {
            i -= 1;
        }
        i
    }
}

fn valid_name(n: &str) -> bool {
    !n.is_empty()
        && n.len() <= 64
        && n.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_' || b == b'.')
}

fn valid_hostname(h: &str) -> bool {
    !h.is_empty()
        && h.len() <= 64
        && h.split('.').all(|l| {
            !l.is_empty()
                && !l.starts_with('-')
                && !l.ends_with('-')
                && l.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
        })
}

impl MachineConfig {
    /// `file` only names the source in error messages.
    pub fn parse(src: &str, file: &str) -> Result<Self, ConfigError> {
        let cfg: MachineConfig = toml::from_str(src).map_err(|e| {
            let (line, column) = e.span().map_or((1, 1), |s| line_col(src, s.start));
            ConfigError::Syntax {
                file: file.to_string(),
                line,
                column,
                message: e.message().to_string(),
            }
        })?;
        cfg.validate(file)?;
        Ok(cfg)
    }

    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let file = path.display().to_string();
        let src = std::fs::read_to_string(path).map_err(|e| ConfigError::Read {
            file: file.clone(),
            message: e.to_string(),
        })?;
        Self::parse(&src, &file)
    }

    fn validate(&self, file: &str) -> Result<(), ConfigError> {
        let bad = |what: String| ConfigError::Invalid {
            file: file.to_string(),
            what,
        };
        if let Some(h) = &self.hostname {
            if !valid_hostname(h) {
                return Err(bad(format!(
                    "hostname {h:?}: letters, digits and '-' in dot-separated labels, at most 64 bytes"
                )));
            }
        }
        if let Some(l) = self.console_loglevel {
            if l > 8 {
                return Err(bad(format!("console_loglevel {l}: must be 0..=8")));
            }
        }
        let mut seen = std::collections::BTreeSet::new();
        for (kind, name, exec) in self
            .services
            .iter()
            .map(|s| ("service", &s.name, &s.exec))
            .chain(self.health.iter().map(|h| ("health", &h.name, &h.exec)))
        {
            if !valid_name(name) {
                return Err(bad(format!(
                    "{kind} name {name:?}: use 1-64 of [A-Za-z0-9._-]"
                )));
            }
            if !seen.insert((kind, name.clone())) {
                return Err(bad(format!("{kind} {name:?} is defined twice")));
            }
            if !exec.starts_with('/') {
                return Err(bad(format!(
                    "{kind} {name:?}: exec {exec:?} must be an absolute path (there is no PATH search)"
                )));
            }
        }
        if let Some(u) = &self.update {
            u.validate().map_err(bad)?;
        }
        for h in &self.health {
            if h.timeout_s == 0 {
                return Err(bad(format!(
                    "health {:?}: timeout_s must be at least 1",
                    h.name
                )));
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: &str = r#"
hostname = "node-1.example"
console_loglevel = 4

[[service]]
name = "web"
exec = "/usr/bin/web"
args = ["--port", "80"]
restart = "on-failure"

[[service]]
name = "logger"
exec = "/usr/bin/logger"

[[health]]
name = "web-up"
exec = "/usr/bin/check"
args = ["http://localhost/"]
timeout_s = 30
"#;

    #[test]
    fn parses_full_config_in_order() {
        let c = MachineConfig::parse(GOOD, "machine.toml").unwrap();
        assert_eq!(c.hostname.as_deref(), Some("node-1.example"));
        assert_eq!(c.console_loglevel, Some(4));
        let names: Vec<_> = c.services.iter().map(|s| s.name.as_str()).collect();
        assert_eq!(names, ["web", "logger"]);
        assert_eq!(c.services[0].args, ["--port", "80"]);
        assert_eq!(c.services[0].restart, Restart::OnFailure);
        assert_eq!(c.services[1].restart, Restart::Always);
        assert_eq!(c.health[0].timeout_s, 30);
    }

    #[test]
    fn empty_config_is_valid() {
        assert_eq!(
            MachineConfig::parse("", "f").unwrap(),
            MachineConfig::default()
        );
    }

    fn syntax(src: &str) -> (usize, usize, String) {
        match MachineConfig::parse(src, "m.toml") {
            Err(ConfigError::Syntax {
                line,
                column,
                message,
                file,
            }) => {
                assert_eq!(file, "m.toml");
                (line, column, message)
            }
            other => panic!("expected syntax error, got {other:?}"),
        }
    }

    #[test]
    fn syntax_errors_carry_line_and_column() {
        let (l, c, _) = syntax("hostname = \"a\"\n\n[[service]]\nname = \"x\"\nexec = /bin/x\n");
        assert_eq!((l, c), (5, 8));
        // unknown key: points at the key, message names it
        let (l, c, m) = syntax(
            "hostname = \"a\"\n[[service]]\nname = \"x\"\nexec = \"/x\"\n  restrat = \"never\"\n",
        );
        assert_eq!((l, c), (5, 3));
        assert!(m.contains("restrat"), "{m}");
        // wrong type
        let (l, c, _) = syntax("console_loglevel = \"loud\"\n");
        assert_eq!((l, c), (1, 20));
        // bad enum value
        let (l, _, m) = syntax("[[service]]\nname=\"a\"\nexec=\"/a\"\nrestart = \"sometimes\"\n");
        assert_eq!(l, 4);
        assert!(m.contains("sometimes"), "{m}");
        // missing field: error still located (at the table)
        let (l, _, m) = syntax("[[health]]\nname = \"h\"\nexec = \"/h\"\n");
        assert_eq!(l, 1);
        assert!(m.contains("timeout_s"), "{m}");
    }

    #[test]
    fn semantic_errors_name_the_field() {
        let inv = |src: &str| match MachineConfig::parse(src, "m.toml") {
            Err(ConfigError::Invalid { what, .. }) => what,
            other => panic!("expected invalid, got {other:?}"),
        };
        assert!(inv("hostname = \"bad host\"").contains("hostname"));
        assert!(inv("console_loglevel = 9").contains("console_loglevel 9"));
        assert!(inv("[[service]]\nname=\"a\"\nexec=\"sh\"").contains("absolute"));
        assert!(
            inv("[[service]]\nname=\"a\"\nexec=\"/a\"\n[[service]]\nname=\"a\"\nexec=\"/b\"")
                .contains("defined twice")
        );
        assert!(inv("[[service]]\nname=\"a b\"\nexec=\"/a\"").contains("name"));
        assert!(inv("[[health]]\nname=\"h\"\nexec=\"/h\"\ntimeout_s=0").contains("timeout_s"));
        assert!(
            inv("[update]\nsource=\"r.example/cairn\"\ninterval_s=1").contains("update.interval_s")
        );
    }

    #[test]
    fn line_col_counts_characters() {
        assert_eq!(line_col("ab\ncé d", 6), (2, 3));
        assert_eq!(line_col("x", 99), (1, 2));
    }
}
