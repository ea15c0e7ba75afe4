//! `[api]` in the machine config: the node's API identity (issue 14), and
//! the names init and cairnd share on the node.
//!
//! The identity (the API CA's certificate, the node's serving certificate
//! and its key) reaches the node only through the machine config given at
//! install, never through the image: `cairn gen secrets` makes it, and
//! `cairn gen machine-api` turns it into this table. Without `[api]` the
//! node runs no API.

use serde::Deserialize;

/// The port the API listens on unless `[api] listen` says otherwise.
pub const DEFAULT_PORT: u16 = 50000;
/// cairnd's binary in the rootfs.
pub const CAIRND: &str = "/usr/bin/cairnd";
/// The uid and gid cairnd runs as (no capabilities; its port is above
/// 1024). Named `cairnd` in the image's /etc/passwd and /etc/group.
pub const UID: u32 = 600;
pub const GID: u32 = 600;
pub const USER_NAME: &str = "cairnd";
/// Where init writes the identity for cairnd: a 0700 directory owned by
/// [`UID`] on /run (RAM), with `ca.crt`, `server.crt` and `server.key`
/// (0600). The key never touches a disk except in the stored config.
pub const SECRETS_DIR: &str = "/run/cairn/api";
/// The service name cairnd has in logs and events.
pub const SERVICE_NAME: &str = "cairnd";
/// What `config get` shows instead of the serving key.
pub const REDACTED: &str = "(redacted)";

#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Api {
    /// `ADDRESS:PORT`; default `0.0.0.0:50000`.
    #[serde(default = "default_listen")]
    pub listen: String,
    /// The machine API CA's certificate (PEM): clients must chain to it.
    pub ca: String,
    /// The node's serving certificate (PEM), signed by `ca`.
    pub crt: String,
    /// Its private key (PEM, PKCS#8).
    pub key: String,
}

fn default_listen() -> String {
    format!("0.0.0.0:{DEFAULT_PORT}")
}

/// Checks the framing of one PEM field: full parsing is cairnd's (it has
/// the X.509 stack); a field pasted wrong is caught here, at install.
fn pem(field: &str, text: &str, label: &str) -> Result<(), String> {
    let begin = format!("-----BEGIN {label}-----");
    let end = format!("-----END {label}-----");
    let t = text.trim();
    if !t.starts_with(&begin) || !t.contains(&end) {
        return Err(format!(
            "api.{field}: expected a PEM block {begin} ... {end}"
        ));
    }
    Ok(())
}

impl Api {
    pub fn validate(&self) -> Result<(), String> {
        self.listen
            .parse::<std::net::SocketAddr>()
            .map_err(|_| format!("api.listen {:?}: expected ADDRESS:PORT", self.listen))?;
        pem("ca", &self.ca, "CERTIFICATE")?;
        pem("crt", &self.crt, "CERTIFICATE")?;
        pem("key", &self.key, "PRIVATE KEY")?;
        Ok(())
    }
}

/// `text` (a machine config) with the value of `[api] key` replaced by
/// [`REDACTED`], for showing it: the serving key is never served or
/// logged. Text that does not parse as TOML is returned with every line
/// from a `key =` on blanked, so nothing after it can leak either.
pub fn redact(text: &str) -> String {
    let Ok(mut doc) = text.parse::<toml::Table>() else {
        return text
            .lines()
            .take_while(|l| !l.trim_start().starts_with("key"))
            .map(|l| format!("{l}\n"))
            .collect();
    };
    let Some(api) = doc.get_mut("api").and_then(|a| a.as_table_mut()) else {
        return text.to_string();
    };
    if api.contains_key("key") {
        api.insert("key".into(), toml::Value::String(REDACTED.into()));
        return toml::to_string(&doc).unwrap_or_default();
    }
    text.to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn api() -> Api {
        Api {
            listen: default_listen(),
            ca: "-----BEGIN CERTIFICATE-----\nAA\n-----END CERTIFICATE-----\n".into(),
            crt: "-----BEGIN CERTIFICATE-----\nBB\n-----END CERTIFICATE-----\n".into(),
            key: "-----BEGIN PRIVATE KEY-----\nCC\n-----END PRIVATE KEY-----\n".into(),
        }
    }

    #[test]
    fn validates_listen_and_pem_framing() {
        api().validate().unwrap();
        let mut a = api();
        a.listen = "50000".into();
        assert!(a.validate().unwrap_err().contains("api.listen"));
        let mut a = api();
        a.key = a.crt.clone();
        assert!(a.validate().unwrap_err().contains("api.key"));
    }

    #[test]
    fn redact_hides_only_the_key() {
        let text = "hostname = \"n\"\n[api]\nca = \"C\"\ncrt = \"R\"\nkey = \"SECRET\"\n";
        let r = redact(text);
        assert!(!r.contains("SECRET"), "{r}");
        assert!(r.contains(REDACTED) && r.contains("\"C\"") && r.contains("hostname"));
        assert_eq!(redact("hostname = \"n\"\n"), "hostname = \"n\"\n");
        // Unparseable: nothing from the key line on.
        let bad = "[api\nkey = \"SECRET\"\nmore";
        assert!(!redact(bad).contains("SECRET"));
    }
}
