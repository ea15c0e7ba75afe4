//! The machine API's PKI: a CA, the node's serving identity, client
//! certificates whose Organization is a role, and the peer identity read
//! back from a verified certificate.
//!
//! Keys are ECDSA P-256 (signed with SHA-256). rustls with the ring
//! provider verifies both P-256 and Ed25519, but P-256 is also accepted by
//! every other TLS stack an operator may point at the API while debugging
//! (curl/OpenSSL builds, Go, browsers), where Ed25519 certificates are not.
//!
//! Secrets directory (`cairn gen secrets --out DIR`):
//!
//! | file         | what                                   | mode |
//! |--------------|----------------------------------------|------|
//! | `ca.crt`     | API CA certificate (PEM)               | 0644 |
//! | `ca.key`     | API CA private key (PKCS#8 PEM)        | 0600 |
//! | `server.crt` | node serving certificate, signed by CA | 0644 |
//! | `server.key` | node serving key                       | 0600 |
//!
//! `ca.key` signs client certificates (`cairn gen client`) and never goes
//! to the node; the node gets `ca.crt`, `server.crt` and `server.key`.

use crate::role::Role;
use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose, PKCS_ECDSA_P256_SHA256,
};
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use time::{Duration, OffsetDateTime};

pub const CA_CRT: &str = "ca.crt";
pub const CA_KEY: &str = "ca.key";
pub const SERVER_CRT: &str = "server.crt";
pub const SERVER_KEY: &str = "server.key";

/// The SANs of the serving certificate when none are given: the node
/// reached through a forwarded port on the operator's machine.
pub const DEFAULT_SANS: [&str; 2] = ["127.0.0.1", "localhost"];

#[derive(Debug, thiserror::Error)]
pub enum PkiError {
    #[error("generating {what}: {source}")]
    Generate {
        what: String,
        #[source]
        source: rcgen::Error,
    },
    #[error("invalid subject alternative name {0:?} (expected an IP address or a DNS name)")]
    San(String),
    #[error("{what}: not a valid PEM {expected}")]
    Pem {
        what: String,
        expected: &'static str,
    },
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("client certificate: {0}")]
    Peer(String),
}

/// When a certificate is valid. Callers choose it so tests can make
/// expired or not-yet-valid certificates.
#[derive(Debug, Clone, Copy)]
pub struct Validity {
    pub not_before: OffsetDateTime,
    pub not_after: OffsetDateTime,
}

impl Validity {
    /// From an hour ago (tolerates a node clock a little behind) to
    /// `days` from now.
    pub fn days_from_now(days: i64) -> Self {
        let now = OffsetDateTime::now_utc();
        Validity {
            not_before: now - Duration::hours(1),
            not_after: now + Duration::days(days),
        }
    }
}

/// A certificate and its private key, both PEM. The key is a secret: it
/// is never logged (no Debug with the key).
#[derive(Clone)]
pub struct Identity {
    pub cert_pem: String,
    pub key_pem: String,
}

impl std::fmt::Debug for Identity {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Identity")
            .field("cert_pem", &self.cert_pem)
            .field("key_pem", &"<redacted>")
            .finish()
    }
}

fn gen_err(what: &str) -> impl FnOnce(rcgen::Error) -> PkiError + '_ {
    move |source| PkiError::Generate {
        what: what.to_string(),
        source,
    }
}

fn new_key(what: &str) -> Result<KeyPair, PkiError> {
    KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256).map_err(gen_err(what))
}

/// A new API CA, self-signed, allowed to sign end-entity certificates only.
pub fn generate_ca(name: &str, validity: Validity) -> Result<Identity, PkiError> {
    let key = new_key("CA key")?;
    let mut p = CertificateParams::default();
    p.distinguished_name.push(DnType::CommonName, name);
    p.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    p.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    p.not_before = validity.not_before;
    p.not_after = validity.not_after;
    let cert = p.self_signed(&key).map_err(gen_err("CA certificate"))?;
    Ok(Identity {
        cert_pem: cert.pem(),
        key_pem: key.serialize_pem(),
    })
}

fn issuer(ca: &Identity) -> Result<Issuer<'static, KeyPair>, PkiError> {
    let key = KeyPair::from_pem(&ca.key_pem).map_err(|_| PkiError::Pem {
        what: "CA key".into(),
        expected: "private key",
    })?;
    Issuer::from_ca_cert_pem(&ca.cert_pem, key).map_err(|_| PkiError::Pem {
        what: "CA certificate".into(),
        expected: "certificate",
    })
}

fn issue(
    ca: &Identity,
    mut p: CertificateParams,
    eku: ExtendedKeyUsagePurpose,
    validity: Validity,
    what: &str,
) -> Result<Identity, PkiError> {
    let key = new_key(what)?;
    p.is_ca = IsCa::ExplicitNoCa;
    p.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    p.extended_key_usages = vec![eku];
    p.use_authority_key_identifier_extension = true;
    p.not_before = validity.not_before;
    p.not_after = validity.not_after;
    let cert = p.signed_by(&key, &issuer(ca)?).map_err(gen_err(what))?;
    Ok(Identity {
        cert_pem: cert.pem(),
        key_pem: key.serialize_pem(),
    })
}

/// The node's serving certificate for `sans` (IP addresses or DNS names;
/// a string that parses as an IP is an IP SAN).
pub fn issue_server(
    ca: &Identity,
    sans: &[String],
    validity: Validity,
) -> Result<Identity, PkiError> {
    let mut p = CertificateParams::new(sans.to_vec()).map_err(|_| {
        PkiError::San(
            sans.iter()
                .find(|s| s.parse::<std::net::IpAddr>().is_err() && !is_dns_name(s))
                .cloned()
                .unwrap_or_default(),
        )
    })?;
    p.distinguished_name.push(DnType::CommonName, "cairnd");
    issue(
        ca,
        p,
        ExtendedKeyUsagePurpose::ServerAuth,
        validity,
        "server certificate",
    )
}

/// Checked before rcgen sees a SAN so the error names the bad one.
fn is_dns_name(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 253
        && s.split('.').all(|l| {
            !l.is_empty()
                && l.len() <= 63
                && l.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
                && !l.starts_with('-')
                && !l.ends_with('-')
        })
}

/// Validates SANs up front (IP address or DNS name).
pub fn check_sans(sans: &[String]) -> Result<(), PkiError> {
    match sans
        .iter()
        .find(|s| s.parse::<std::net::IpAddr>().is_err() && !is_dns_name(s))
    {
        Some(bad) => Err(PkiError::San(bad.clone())),
        None => Ok(()),
    }
}

/// A client certificate with CN=`name` and, if given, O=`organization`
/// (normally a role's string; tests pass None or other values).
pub fn issue_client_with_org(
    ca: &Identity,
    name: &str,
    organization: Option<&str>,
    validity: Validity,
) -> Result<Identity, PkiError> {
    let mut p = CertificateParams::default();
    if let Some(o) = organization {
        p.distinguished_name.push(DnType::OrganizationName, o);
    }
    p.distinguished_name.push(DnType::CommonName, name);
    issue(
        ca,
        p,
        ExtendedKeyUsagePurpose::ClientAuth,
        validity,
        "client certificate",
    )
}

/// A client certificate granting `role` to `name`.
pub fn issue_client(
    ca: &Identity,
    name: &str,
    role: Role,
    validity: Validity,
) -> Result<Identity, PkiError> {
    issue_client_with_org(ca, name, Some(role.as_str()), validity)
}

/// What `cairn gen secrets` makes: the CA and the node's identity.
#[derive(Debug, Clone)]
pub struct Secrets {
    pub ca: Identity,
    pub server: Identity,
}

impl Secrets {
    /// A new CA (10 years) and serving identity (1 year) for `sans`
    /// ([`DEFAULT_SANS`] when empty).
    pub fn generate(sans: &[String]) -> Result<Self, PkiError> {
        let sans: Vec<String> = if sans.is_empty() {
            DEFAULT_SANS.iter().map(|s| s.to_string()).collect()
        } else {
            sans.to_vec()
        };
        check_sans(&sans)?;
        let ca = generate_ca("cairn machine API CA", Validity::days_from_now(3650))?;
        let server = issue_server(&ca, &sans, Validity::days_from_now(365))?;
        Ok(Secrets { ca, server })
    }

    /// Writes the four files into `dir` (created 0700 if missing). Refuses
    /// to overwrite an existing secret so a second run cannot orphan the
    /// clients of the first CA.
    pub fn write(&self, dir: &Path) -> Result<(), PkiError> {
        create_private_dir(dir)?;
        for name in [CA_CRT, CA_KEY, SERVER_CRT, SERVER_KEY] {
            let p = dir.join(name);
            if p.exists() {
                return Err(PkiError::Io {
                    path: p,
                    source: std::io::Error::new(
                        std::io::ErrorKind::AlreadyExists,
                        "already exists; not overwriting existing secrets",
                    ),
                });
            }
        }
        write_file(&dir.join(CA_CRT), &self.ca.cert_pem, false)?;
        write_file(&dir.join(CA_KEY), &self.ca.key_pem, true)?;
        write_file(&dir.join(SERVER_CRT), &self.server.cert_pem, false)?;
        write_file(&dir.join(SERVER_KEY), &self.server.key_pem, true)?;
        Ok(())
    }

    pub fn load(dir: &Path) -> Result<Self, PkiError> {
        let read = |n: &str| {
            let p = dir.join(n);
            std::fs::read_to_string(&p).map_err(|source| PkiError::Io { path: p, source })
        };
        Ok(Secrets {
            ca: Identity {
                cert_pem: read(CA_CRT)?,
                key_pem: read(CA_KEY)?,
            },
            server: Identity {
                cert_pem: read(SERVER_CRT)?,
                key_pem: read(SERVER_KEY)?,
            },
        })
    }
}

/// What the node itself needs: the CA certificate to verify clients and
/// its own identity (no CA key).
#[derive(Debug, Clone)]
pub struct NodeSecrets {
    pub ca_pem: String,
    pub server: Identity,
}

impl NodeSecrets {
    pub fn load(dir: &Path) -> Result<Self, PkiError> {
        let read = |n: &str| {
            let p = dir.join(n);
            std::fs::read_to_string(&p).map_err(|source| PkiError::Io { path: p, source })
        };
        Ok(NodeSecrets {
            ca_pem: read(CA_CRT)?,
            server: Identity {
                cert_pem: read(SERVER_CRT)?,
                key_pem: read(SERVER_KEY)?,
            },
        })
    }
}

fn create_private_dir(dir: &Path) -> Result<(), PkiError> {
    use std::os::unix::fs::DirBuilderExt;
    match std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
    {
        Ok(()) => Ok(()),
        Err(source) => Err(PkiError::Io {
            path: dir.to_path_buf(),
            source,
        }),
    }
}

/// Writes `contents` to `path` atomically: a temporary file in the same
/// directory, created with its final mode (0600 for secrets, so a key is
/// never readable by others even for an instant), synced, then renamed.
pub fn write_file(path: &Path, contents: &str, secret: bool) -> Result<(), PkiError> {
    let io = |source| PkiError::Io {
        path: path.to_path_buf(),
        source,
    };
    let dir = path.parent().filter(|p| !p.as_os_str().is_empty());
    let name = path.file_name().ok_or_else(|| {
        io(std::io::Error::new(
            std::io::ErrorKind::InvalidInput,
            "not a file name",
        ))
    })?;
    let tmp = dir.unwrap_or(Path::new(".")).join(format!(
        ".{}.tmp{}",
        name.to_string_lossy(),
        std::process::id()
    ));
    let result = (|| {
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(if secret { 0o600 } else { 0o644 })
            .open(&tmp)?;
        f.write_all(contents.as_bytes())?;
        f.sync_all()?;
        std::fs::rename(&tmp, path)
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result.map_err(io)
}

/// The identity of a client, read from its verified certificate.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Peer {
    /// `CN=alice` (or the full subject if it has no CN): what logs show.
    pub subject: String,
    /// Every Organization value, in order.
    pub organizations: Vec<String>,
    /// The role those grant ([`Role::granted`]).
    pub role: Option<Role>,
}

impl Peer {
    /// Parses the leaf certificate rustls has already verified against the
    /// CA; parsing here only reads names, it does not decide trust.
    pub fn from_der(der: &[u8]) -> Result<Self, PkiError> {
        let (_, cert) = x509_parser::parse_x509_certificate(der)
            .map_err(|e| PkiError::Peer(format!("cannot parse: {e}")))?;
        let subject = cert.subject();
        let organizations: Vec<String> = subject
            .iter_organization()
            .filter_map(|a| a.as_str().ok().map(str::to_string))
            .collect();
        let cn = subject
            .iter_common_name()
            .next()
            .and_then(|a| a.as_str().ok());
        let subject = match cn {
            Some(cn) => format!("CN={cn}"),
            None => subject.to_string(),
        };
        Ok(Peer {
            role: Role::granted(organizations.iter().map(String::as_str)),
            subject,
            organizations,
        })
    }
}

/// The first certificate in a PEM text, DER-encoded.
pub fn cert_der_from_pem(
    pem: &str,
    what: &str,
) -> Result<rustls_pki_types::CertificateDer<'static>, PkiError> {
    use rustls_pki_types::pem::PemObject;
    rustls_pki_types::CertificateDer::from_pem_slice(pem.as_bytes()).map_err(|_| PkiError::Pem {
        what: what.to_string(),
        expected: "certificate",
    })
}

/// The private key in a PEM text.
pub fn key_der_from_pem(
    pem: &str,
    what: &str,
) -> Result<rustls_pki_types::PrivateKeyDer<'static>, PkiError> {
    use rustls_pki_types::pem::PemObject;
    rustls_pki_types::PrivateKeyDer::from_pem_slice(pem.as_bytes()).map_err(|_| PkiError::Pem {
        what: what.to_string(),
        expected: "private key",
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn client_cert_carries_cn_and_role() {
        let ca = generate_ca("t", Validity::days_from_now(1)).unwrap();
        let c = issue_client(&ca, "alice", Role::Operator, Validity::days_from_now(1)).unwrap();
        let der = cert_der_from_pem(&c.cert_pem, "c").unwrap();
        let p = Peer::from_der(&der).unwrap();
        assert_eq!(p.subject, "CN=alice");
        assert_eq!(p.role, Some(Role::Operator));
        assert!(!format!("{c:?}").contains("PRIVATE KEY"));
    }

    #[test]
    fn secrets_written_with_modes_and_not_overwritten() {
        let d = tempfile::tempdir().unwrap();
        let dir = d.path().join("s");
        let s = Secrets::generate(&[]).unwrap();
        s.write(&dir).unwrap();
        let mode = |n: &str| std::fs::metadata(dir.join(n)).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode(CA_KEY), 0o600);
        assert_eq!(mode(SERVER_KEY), 0o600);
        assert_eq!(mode(CA_CRT), 0o644);
        let e = s.write(&dir).unwrap_err();
        assert!(e.to_string().contains("not overwriting"), "{e}");
        Secrets::load(&dir).unwrap();
    }

    #[test]
    fn bad_san_is_named() {
        let e = Secrets::generate(&["bad name!".into()]).unwrap_err();
        assert!(e.to_string().contains("\"bad name!\""), "{e}");
    }
}
