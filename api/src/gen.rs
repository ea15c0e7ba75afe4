//! `cairn gen secrets` and `cairn gen client`: the logic lives here so the
//! `cairn` CLI only parses arguments.

use crate::client_config::{ClientConfig, ConfigError};
use crate::pki::{issue_client, PkiError, Secrets, Validity};
use crate::role::Role;
use std::path::Path;

/// Client certificates last a year unless told otherwise.
pub const CLIENT_DAYS: i64 = 365;

/// Makes the API CA and the node's serving identity in `out`
/// (see [`crate::pki`] for the layout). Never overwrites.
pub fn secrets(out: &Path, sans: &[String]) -> Result<(), PkiError> {
    Secrets::generate(sans)?.write(out)
}

/// Signs a client certificate for `name` with `role` using the CA in
/// `secrets_dir`, and writes a client config (0600) to `out`.
pub fn client(
    secrets_dir: &Path,
    role: Role,
    name: &str,
    endpoints: &[String],
    days: i64,
    out: &Path,
) -> Result<(), ConfigError> {
    let s = Secrets::load(secrets_dir)?;
    let id = issue_client(&s.ca, name, role, Validity::days_from_now(days))?;
    ClientConfig {
        endpoints: endpoints.to_vec(),
        ca: s.ca.cert_pem,
        crt: id.cert_pem,
        key: id.key_pem,
    }
    .write(out)
}

/// The `[api]` table of a machine config (contract::api::Api) holding the
/// node's identity from `secrets_dir` (ca.crt, server.crt, server.key; never
/// ca.key), written 0600 to `out` for appending to the machine config given
/// at install. The PEM blocks go in TOML literal strings (`'''`), which no
/// PEM text can end early; the result is checked with the node's own
/// parser before it is written.
pub fn machine_api(
    secrets_dir: &Path,
    listen: Option<&str>,
    out: &Path,
) -> Result<(), ConfigError> {
    let s = crate::pki::NodeSecrets::load(secrets_dir)?;
    let text = machine_api_text(&s, listen);
    #[derive(serde::Deserialize)]
    struct Doc {
        api: contract::api::Api,
    }
    let parse = |message: String| ConfigError::Parse {
        path: out.to_path_buf(),
        message,
    };
    let doc: Doc = toml::from_str(&text).map_err(|e| parse(e.message().to_string()))?;
    doc.api.validate().map_err(parse)?;
    crate::pki::write_file(out, &text, true)?;
    Ok(())
}

fn machine_api_text(s: &crate::pki::NodeSecrets, listen: Option<&str>) -> String {
    let block = |pem: &str| format!("'''\n{}\n'''", pem.trim());
    let mut t = String::from(
        "# The node API's identity (docs/api.md): made by `cairn gen machine-api`.\n\
         # It holds the node's private key: keep this file 0600.\n[api]\n",
    );
    if let Some(l) = listen {
        t.push_str(&format!("listen = \"{l}\"\n"));
    }
    t.push_str(&format!("ca = {}\n", block(&s.ca_pem)));
    t.push_str(&format!("crt = {}\n", block(&s.server.cert_pem)));
    t.push_str(&format!("key = {}\n", block(&s.server.key_pem)));
    t
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn machine_api_round_trips_through_the_node_parser() {
        let d = tempfile::tempdir().unwrap();
        secrets(&d.path().join("s"), &[]).unwrap();
        let out = d.path().join("api.toml");
        machine_api(&d.path().join("s"), Some("0.0.0.0:50001"), &out).unwrap();
        use std::os::unix::fs::PermissionsExt;
        assert_eq!(
            std::fs::metadata(&out).unwrap().permissions().mode() & 0o777,
            0o600
        );
        let text = std::fs::read_to_string(&out).unwrap();
        let m = contract::machine::MachineConfig::parse(&text, "api.toml")
            .unwrap_or_else(|e| panic!("{e}\n{text}"));
        let api = m.api.unwrap();
        let s = crate::pki::NodeSecrets::load(&d.path().join("s")).unwrap();
        assert_eq!(api.listen, "0.0.0.0:50001");
        assert_eq!(api.key.trim(), s.server.key_pem.trim());
        assert_eq!(api.ca.trim(), s.ca_pem.trim());
        // The CA's key signs clients: it never goes to the node.
        let ca_key = std::fs::read_to_string(d.path().join("s/ca.key")).unwrap();
        assert!(!text.contains(ca_key.trim()));
    }

    #[test]
    fn machine_api_names_a_missing_secret() {
        let d = tempfile::tempdir().unwrap();
        let e = machine_api(d.path(), None, &d.path().join("o"))
            .unwrap_err()
            .to_string();
        assert!(e.contains("ca.crt"), "{e}");
        assert!(!d.path().join("o").exists());
    }
}
