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
