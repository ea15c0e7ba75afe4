//! The client configuration file (`cairn gen client --out FILE`), like a
//! talosconfig: where the nodes are and the credentials to reach them.
//!
//! ```toml
//! endpoints = ["10.0.0.5:50000"]
//! ca = "-----BEGIN CERTIFICATE-----\n..."   # the API CA, to verify nodes
//! crt = "-----BEGIN CERTIFICATE-----\n..."  # this client's certificate
//! key = "-----BEGIN PRIVATE KEY-----\n..."  # and its key
//! ```
//!
//! The file holds a private key, so it is written 0600 and, unlike a
//! talosconfig, loading refuses a file others can read or write (as
//! OpenSSH refuses a private key with loose permissions): a readable
//! admin config is a readable admin key.

use serde::{Deserialize, Serialize};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{path}: {message}")]
    Parse { path: PathBuf, message: String },
    #[error("{path} is readable or writable by others (mode {mode:o}); it holds a private key: chmod 600 {path}")]
    Permissions { path: PathBuf, mode: u32 },
    #[error("{path}: no endpoints (give --nodes or add endpoints = [\"HOST:PORT\"])")]
    NoEndpoints { path: PathBuf },
    #[error(transparent)]
    Write(#[from] crate::pki::PkiError),
}

#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClientConfig {
    /// `HOST:PORT` of each node; a command goes to each in turn.
    pub endpoints: Vec<String>,
    /// The API CA certificate (PEM) the node's certificate must chain to.
    pub ca: String,
    /// The client certificate (PEM); its O field is the role.
    pub crt: String,
    /// The client key (PEM). Never logged.
    pub key: String,
}

impl std::fmt::Debug for ClientConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClientConfig")
            .field("endpoints", &self.endpoints)
            .field("key", &"<redacted>")
            .finish_non_exhaustive()
    }
}

impl ClientConfig {
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let io = |source| ConfigError::Io {
            path: path.to_path_buf(),
            source,
        };
        let meta = std::fs::metadata(path).map_err(io)?;
        let mode = meta.permissions().mode() & 0o777;
        if mode & 0o077 != 0 {
            return Err(ConfigError::Permissions {
                path: path.to_path_buf(),
                mode,
            });
        }
        let text = std::fs::read_to_string(path).map_err(io)?;
        Self::parse(&text, path)
    }

    pub fn parse(text: &str, path: &Path) -> Result<Self, ConfigError> {
        // toml's message names the line and key, never echoes values here
        // (the key is a string value; errors point at keys and positions).
        let c: ClientConfig = toml::from_str(text).map_err(|e| ConfigError::Parse {
            path: path.to_path_buf(),
            message: e.message().to_string(),
        })?;
        Ok(c)
    }

    /// Writes the config 0600, atomically (see [`crate::pki::write_file`]).
    pub fn write(&self, path: &Path) -> Result<(), ConfigError> {
        let text = toml::to_string(self).map_err(|e| ConfigError::Parse {
            path: path.to_path_buf(),
            message: e.to_string(),
        })?;
        crate::pki::write_file(path, &text, true)?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> ClientConfig {
        ClientConfig {
            endpoints: vec!["127.0.0.1:50000".into()],
            ca: "ca".into(),
            crt: "crt".into(),
            key: "secret-key".into(),
        }
    }

    #[test]
    fn round_trip_mode_and_refusal_of_loose_files() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("c.toml");
        sample().write(&p).unwrap();
        let mode = std::fs::metadata(&p).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        assert_eq!(ClientConfig::load(&p).unwrap(), sample());
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o644)).unwrap();
        let e = ClientConfig::load(&p).unwrap_err().to_string();
        assert!(e.contains("chmod 600"), "{e}");
        assert!(!format!("{:?}", sample()).contains("secret-key"));
    }

    #[test]
    fn unknown_fields_refused() {
        let e = ClientConfig::parse(
            "endpoints=[]\nca=''\ncrt=''\nkey=''\nroles=1\n",
            Path::new("c"),
        )
        .unwrap_err();
        assert!(e.to_string().contains("roles"), "{e}");
    }
}
