//! Secure Boot key sets (PK, KEK, db): RSA keys with self-signed X.509
//! certificates, as firmware enrolls them and as Authenticode signs with them.
//!
//! These are real keys, so they come from the OS RNG; the certificates carry
//! no wall-clock time (notBefore is the caller's SOURCE_DATE_EPOCH, notAfter
//! the RFC 5280 "no expiry" value) and a serial derived from the public key.

pub(crate) mod der;

use std::fs;
use std::io::Write;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use rsa::pkcs8::{DecodePrivateKey, EncodePrivateKey, EncodePublicKey, LineEnding};
use rsa::{Pkcs1v15Sign, RsaPrivateKey};
use sha2_010::{Digest, Sha256};

use artifacts::date::Civil;

use der::{alg_null, ctx, oid, seq, set_of, tlv, uint};

pub(crate) const OID_SHA256: &str = "2.16.840.1.101.3.4.2.1";
pub(crate) const OID_RSA_ENCRYPTION: &str = "1.2.840.113549.1.1.1";
pub(crate) const OID_SHA256_WITH_RSA: &str = "1.2.840.113549.1.1.11";
const OID_COMMON_NAME: &str = "2.5.4.3";
const OID_BASIC_CONSTRAINTS: &str = "2.5.29.19";
const OID_KEY_USAGE: &str = "2.5.29.15";
const OID_SUBJECT_KEY_ID: &str = "2.5.29.14";
/// Firmware rejects keys below this; 2048 is what OVMF and shim expect.
pub const MIN_RSA_BITS: usize = 2048;

#[derive(Debug, thiserror::Error)]
pub enum SecureBootError {
    #[error("RSA key size {bits} is below the {MIN_RSA_BITS}-bit minimum")]
    KeyTooSmall { bits: usize },
    #[error("generating a {bits}-bit RSA key: {source}")]
    KeyGen {
        bits: usize,
        #[source]
        source: rsa::Error,
    },
    #[error("RSA signing: {0}")]
    Sign(#[source] rsa::Error),
    #[error("encoding {what}: {detail}")]
    Encode { what: &'static str, detail: String },
    #[error("reading {path}: {source}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("writing {path}: {source}")]
    Write {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{path}: not a PKCS#8 RSA private key: {detail}")]
    BadKey { path: PathBuf, detail: String },
    #[error("{path}: not an X.509 certificate: {detail}")]
    BadCert { path: PathBuf, detail: String },
    #[error("{key} does not belong to the certificate {cert}")]
    KeyCertMismatch { key: PathBuf, cert: PathBuf },
    #[error("{path} exists: refusing to overwrite a Secure Boot key set")]
    KeySetExists { path: PathBuf },
}

/// One RSA key with its self-signed certificate.
pub struct SecureBootKey {
    key: RsaPrivateKey,
    cert_der: Vec<u8>,
}

impl std::fmt::Debug for SecureBootKey {
    // Never print key material.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SecureBootKey")
            .field("cert_der_len", &self.cert_der.len())
            .finish_non_exhaustive()
    }
}

/// RFC 5280 time: UTCTime through 2049, GeneralizedTime after.
fn x509_time(epoch: u64) -> Vec<u8> {
    let c = Civil::from_epoch(epoch);
    let (y, m, d) = (c.year, c.month, c.day);
    let hms = format!("{:02}{:02}{:02}Z", c.hour, c.minute, c.second);
    if (1950..2050).contains(&y) {
        tlv(
            der::UTC_TIME,
            format!("{:02}{m:02}{d:02}{hms}", y % 100).as_bytes(),
        )
    } else {
        tlv(
            der::GENERALIZED_TIME,
            format!("{y:04}{m:02}{d:02}{hms}").as_bytes(),
        )
    }
}

fn name(common_name: &str) -> Vec<u8> {
    let atv = seq(&[
        &oid(OID_COMMON_NAME),
        &tlv(der::UTF8_STRING, common_name.as_bytes()),
    ]);
    seq(&[&set_of(&[&atv])])
}

fn extension(id: &str, critical: bool, value: &[u8]) -> Vec<u8> {
    let crit = if critical {
        tlv(der::BOOLEAN, &[0xff])
    } else {
        Vec::new()
    };
    seq(&[&oid(id), &crit, &tlv(der::OCTET_STRING, value)])
}

fn read(path: &Path) -> Result<Vec<u8>, SecureBootError> {
    fs::read(path).map_err(|source| SecureBootError::Read {
        path: path.to_path_buf(),
        source,
    })
}

/// The DER SubjectPublicKeyInfo inside a certificate.
pub(crate) fn cert_spki(cert: &[u8]) -> Option<&[u8]> {
    let f = tbs_fields(cert)?;
    Some(f.get(6)?.whole)
}

/// TBSCertificate fields: version, serial, sigalg, issuer, validity, subject, spki, ...
fn tbs_fields(cert: &[u8]) -> Option<Vec<der::Tlv<'_>>> {
    let (c, rest) = der::parse(cert)?;
    if c.tag != der::SEQUENCE || !rest.is_empty() {
        return None;
    }
    let parts = der::children(c.content)?;
    let tbs = parts.first()?;
    if tbs.tag != der::SEQUENCE {
        return None;
    }
    let f = der::children(tbs.content)?;
    // version [0] is present in every v3 certificate we accept
    if f.len() < 7 || f[0].tag != ctx(0) {
        return None;
    }
    Some(f)
}

/// (issuer Name DER, serialNumber INTEGER DER) for IssuerAndSerialNumber.
pub(crate) fn cert_issuer_serial(cert: &[u8]) -> Option<(&[u8], &[u8])> {
    let f = tbs_fields(cert)?;
    if f[1].tag != der::INTEGER {
        return None;
    }
    Some((f[3].whole, f[1].whole))
}

fn write_private(path: &Path, data: &[u8]) -> Result<(), SecureBootError> {
    let err = |source| SecureBootError::Write {
        path: path.to_path_buf(),
        source,
    };
    // Remove first so an existing, wider-permission file is never reused.
    match fs::remove_file(path) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(err(e)),
    }
    let mut f = fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .map_err(err)?;
    f.write_all(data).map_err(err)?;
    // The umask cannot widen 0600, but make the mode explicit regardless.
    fs::set_permissions(path, fs::Permissions::from_mode(0o600)).map_err(err)
}

fn write_public(path: &Path, data: &[u8]) -> Result<(), SecureBootError> {
    fs::write(path, data).map_err(|source| SecureBootError::Write {
        path: path.to_path_buf(),
        source,
    })
}

impl SecureBootKey {
    /// A fresh RSA key and a self-signed CA certificate for `common_name`,
    /// valid from `not_before` (seconds since the epoch) with no expiry.
    pub fn generate(
        common_name: &str,
        bits: usize,
        not_before: u64,
    ) -> Result<Self, SecureBootError> {
        if bits < MIN_RSA_BITS {
            return Err(SecureBootError::KeyTooSmall { bits });
        }
        let mut rng = rsa::rand_core::OsRng;
        let key = RsaPrivateKey::new(&mut rng, bits)
            .map_err(|source| SecureBootError::KeyGen { bits, source })?;
        let cert_der = Self::self_sign(&key, common_name, not_before)?;
        Ok(SecureBootKey { key, cert_der })
    }

    fn self_sign(
        key: &RsaPrivateKey,
        cn: &str,
        not_before: u64,
    ) -> Result<Vec<u8>, SecureBootError> {
        let spki =
            key.to_public_key()
                .to_public_key_der()
                .map_err(|e| SecureBootError::Encode {
                    what: "SubjectPublicKeyInfo",
                    detail: e.to_string(),
                })?;
        let spki = spki.as_bytes();
        let key_id = Sha256::digest(spki);
        // Serial from the key: unique per key, positive, at most 20 octets.
        let mut serial = key_id[..16].to_vec();
        serial[0] &= 0x7f;
        let name = name(cn);
        let sigalg = alg_null(OID_SHA256_WITH_RSA);
        let basic = extension(
            OID_BASIC_CONSTRAINTS,
            true,
            &seq(&[&tlv(der::BOOLEAN, &[0xff])]),
        );
        // digitalSignature (bit 0) | keyCertSign (bit 5): 0b1000_0100, 2 unused bits
        let usage = extension(OID_KEY_USAGE, true, &tlv(der::BIT_STRING, &[0x02, 0x84]));
        let ski = extension(
            OID_SUBJECT_KEY_ID,
            false,
            &tlv(der::OCTET_STRING, &key_id[..20]),
        );
        let tbs = seq(&[
            &tlv(ctx(0), &uint(&[2])),
            &uint(&serial),
            &sigalg,
            &name,
            &seq(&[
                &x509_time(not_before),
                &tlv(der::GENERALIZED_TIME, b"99991231235959Z"),
            ]),
            &name,
            spki,
            &tlv(ctx(3), &seq(&[&basic, &usage, &ski])),
        ]);
        let sig = sign_digest(key, &Sha256::digest(&tbs).into())?;
        let mut bits = vec![0u8];
        bits.extend_from_slice(&sig);
        Ok(seq(&[&tbs, &sigalg, &tlv(der::BIT_STRING, &bits)]))
    }

    pub fn cert_der(&self) -> &[u8] {
        &self.cert_der
    }

    pub fn cert_pem(&self) -> String {
        rsa::pkcs8::der::pem::encode_string("CERTIFICATE", LineEnding::LF, &self.cert_der)
            .expect("PEM encoding of an in-memory buffer cannot fail")
    }

    /// RSASSA-PKCS1-v1_5 over a SHA-256 digest.
    pub fn sign_sha256(&self, digest: &[u8; 32]) -> Result<Vec<u8>, SecureBootError> {
        sign_digest(&self.key, digest)
    }

    /// Writes `STEM.key` (PKCS#8 PEM, mode 0600), `STEM.crt` (PEM) and
    /// `STEM.der` into `dir`.
    pub fn write(&self, dir: &Path, stem: &str) -> Result<(), SecureBootError> {
        let pem = self
            .key
            .to_pkcs8_pem(LineEnding::LF)
            .map_err(|e| SecureBootError::Encode {
                what: "PKCS#8 private key",
                detail: e.to_string(),
            })?;
        write_private(&dir.join(format!("{stem}.key")), pem.as_bytes())?;
        write_public(&dir.join(format!("{stem}.crt")), self.cert_pem().as_bytes())?;
        write_public(&dir.join(format!("{stem}.der")), &self.cert_der)
    }

    /// Loads a key written by [`SecureBootKey::write`] (or by openssl: PKCS#8
    /// PEM key, PEM or DER certificate) and checks that they belong together.
    pub fn load(key_path: &Path, cert_path: &Path) -> Result<Self, SecureBootError> {
        let pem = read(key_path)?;
        let pem = String::from_utf8(pem).map_err(|e| SecureBootError::BadKey {
            path: key_path.to_path_buf(),
            detail: e.to_string(),
        })?;
        let key = RsaPrivateKey::from_pkcs8_pem(&pem).map_err(|e| SecureBootError::BadKey {
            path: key_path.to_path_buf(),
            detail: e.to_string(),
        })?;
        let raw = read(cert_path)?;
        let bad_cert = |detail: String| SecureBootError::BadCert {
            path: cert_path.to_path_buf(),
            detail,
        };
        let cert_der = if raw.starts_with(b"-----BEGIN") {
            let (label, der) =
                rsa::pkcs8::der::pem::decode_vec(&raw).map_err(|e| bad_cert(e.to_string()))?;
            if label != "CERTIFICATE" {
                return Err(bad_cert(format!(
                    "PEM label {label:?}, expected CERTIFICATE"
                )));
            }
            der
        } else {
            raw
        };
        let spki = cert_spki(&cert_der)
            .ok_or_else(|| bad_cert("DER structure is not a v3 Certificate".into()))?;
        let ours =
            key.to_public_key()
                .to_public_key_der()
                .map_err(|e| SecureBootError::Encode {
                    what: "SubjectPublicKeyInfo",
                    detail: e.to_string(),
                })?;
        if spki != ours.as_bytes() {
            return Err(SecureBootError::KeyCertMismatch {
                key: key_path.to_path_buf(),
                cert: cert_path.to_path_buf(),
            });
        }
        Ok(SecureBootKey { key, cert_der })
    }
}

fn sign_digest(key: &RsaPrivateKey, digest: &[u8; 32]) -> Result<Vec<u8>, SecureBootError> {
    key.sign(Pkcs1v15Sign::new::<Sha256>(), digest)
        .map_err(SecureBootError::Sign)
}

/// The file stems of a key set's three keys, in enrollment order.
pub const STEMS: [&str; 3] = ["PK", "KEK", "db"];

/// The three keys UEFI Secure Boot enrolls: Platform Key, Key Exchange Key
/// and the signature database key that signs boot binaries.
#[derive(Debug)]
pub struct SecureBootKeys {
    pub pk: SecureBootKey,
    pub kek: SecureBootKey,
    pub db: SecureBootKey,
}

impl SecureBootKeys {
    /// Three RSA-`bits` keys named "`owner` PK", "`owner` KEK", "`owner` db".
    pub fn generate(owner: &str, bits: usize, not_before: u64) -> Result<Self, SecureBootError> {
        Ok(SecureBootKeys {
            pk: SecureBootKey::generate(&format!("{owner} PK"), bits, not_before)?,
            kek: SecureBootKey::generate(&format!("{owner} KEK"), bits, not_before)?,
            db: SecureBootKey::generate(&format!("{owner} db"), bits, not_before)?,
        })
    }

    /// `cairn secureboot-keygen`: a new set, written to `dir` (created if
    /// missing). A key of an earlier set there is never overwritten: its
    /// certificates may be enrolled in firmware already. That is checked
    /// before any key is generated.
    pub fn create(
        dir: &Path,
        owner: &str,
        bits: usize,
        not_before: u64,
    ) -> Result<Self, SecureBootError> {
        if let Some(path) = STEMS
            .iter()
            .map(|stem| dir.join(format!("{stem}.key")))
            .find(|p| p.exists())
        {
            return Err(SecureBootError::KeySetExists { path });
        }
        let set = Self::generate(owner, bits, not_before)?;
        set.write(dir)?;
        Ok(set)
    }

    /// `PK.{key,crt,der}`, `KEK.*`, `db.*` in `dir` (created if missing).
    pub fn write(&self, dir: &Path) -> Result<(), SecureBootError> {
        fs::create_dir_all(dir).map_err(|source| SecureBootError::Write {
            path: dir.to_path_buf(),
            source,
        })?;
        self.pk.write(dir, "PK")?;
        self.kek.write(dir, "KEK")?;
        self.db.write(dir, "db")
    }

    pub fn load(dir: &Path) -> Result<Self, SecureBootError> {
        let one = |stem: &str| {
            SecureBootKey::load(
                &dir.join(format!("{stem}.key")),
                &dir.join(format!("{stem}.crt")),
            )
        };
        Ok(SecureBootKeys {
            pk: one("PK")?,
            kek: one("KEK")?,
            db: one("db")?,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn create_refuses_a_directory_holding_any_key_of_a_set() {
        for stem in STEMS {
            let d = tempfile::tempdir().unwrap();
            let key = d.path().join(format!("{stem}.key"));
            fs::write(&key, b"enrolled").unwrap();
            let e = SecureBootKeys::create(d.path(), "x", 2048, 0).expect_err("refused");
            assert!(
                matches!(&e, SecureBootError::KeySetExists { path } if *path == key),
                "{e}"
            );
            assert_eq!(fs::read(&key).unwrap(), b"enrolled");
            assert_eq!(
                fs::read_dir(d.path()).unwrap().count(),
                1,
                "nothing written"
            );
        }
    }

    #[test]
    fn x509_time_switches_to_generalized_in_2050() {
        assert_eq!(x509_time(0), tlv(der::UTC_TIME, b"700101000000Z"));
        // 2024-02-29T12:34:56Z: a leap day
        assert_eq!(
            x509_time(1_709_210_096),
            tlv(der::UTC_TIME, b"240229123456Z")
        );
        // 2049-12-31T23:59:59Z and one second later
        assert_eq!(
            x509_time(2_524_607_999),
            tlv(der::UTC_TIME, b"491231235959Z")
        );
        assert_eq!(
            x509_time(2_524_608_000),
            tlv(der::GENERALIZED_TIME, b"20500101000000Z")
        );
    }

    #[test]
    fn der_lengths_and_integers() {
        assert_eq!(tlv(0x04, &[7; 3]), vec![0x04, 3, 7, 7, 7]);
        let long = tlv(0x04, &[0; 300]);
        assert_eq!(&long[..4], &[0x04, 0x82, 0x01, 0x2c]);
        assert_eq!(uint(&[0x80]), vec![0x02, 2, 0x00, 0x80]);
        assert_eq!(uint(&[0, 0, 5]), vec![0x02, 1, 5]);
        assert_eq!(uint(&[0, 0]), vec![0x02, 1, 0]);
        assert_eq!(
            oid(OID_SHA256),
            vec![0x06, 9, 0x60, 0x86, 0x48, 0x01, 0x65, 0x03, 0x04, 0x02, 0x01]
        );
        let (t, rest) = der::parse(&long).unwrap();
        assert_eq!((t.tag, t.content.len(), rest.len()), (0x04, 300, 0));
        assert!(der::parse(&long[..100]).is_none());
    }
}
