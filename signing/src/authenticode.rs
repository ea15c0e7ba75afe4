//! Authenticode signing of PE images (UEFI binaries, UKIs) as Secure Boot
//! firmware verifies them: the PE image hash from the Microsoft "Windows
//! Authenticode Portable Executable Signature Format" specification, wrapped
//! in PKCS#7 SignedData over SpcIndirectDataContent, appended as a
//! WIN_CERTIFICATE in the attribute certificate table.
//!
//! Signing is deterministic for a given key and image: no signing time, no
//! random padding (PKCS#1 v1.5).

use std::fs;
use std::path::{Path, PathBuf};

use sha2_010::{Digest, Sha256};

use artifacts::pe::{pe_checksum, NotPe, PeLayout, DIR_SECURITY};

use rsa::pkcs8::DecodePublicKey;
use rsa::{Pkcs1v15Sign, RsaPublicKey};

use crate::secureboot::der::{self, alg_null, ctx, oid, seq, set_of, tlv, uint};
use crate::secureboot::{
    cert_issuer_serial, cert_spki, SecureBootError, SecureBootKey, OID_RSA_ENCRYPTION, OID_SHA256,
    OID_SHA256_WITH_RSA,
};

const OID_SIGNED_DATA: &str = "1.2.840.113549.1.7.2";
const OID_CONTENT_TYPE: &str = "1.2.840.113549.1.9.3";
const OID_MESSAGE_DIGEST: &str = "1.2.840.113549.1.9.4";
const OID_SPC_INDIRECT_DATA: &str = "1.3.6.1.4.1.311.2.1.4";
const OID_SPC_PE_IMAGE_DATA: &str = "1.3.6.1.4.1.311.2.1.15";
const OID_SPC_SP_OPUS_INFO: &str = "1.3.6.1.4.1.311.2.1.12";
const WIN_CERT_REVISION_2_0: u16 = 0x0200;
const WIN_CERT_TYPE_PKCS_SIGNED_DATA: u16 = 0x0002;

#[derive(Debug, thiserror::Error)]
pub enum AuthenticodeError {
    #[error("{path}: not a PE image: {what}")]
    NotPe { path: PathBuf, what: String },
    #[error("{path}: already signed (certificate table at {offset:#x}, {size} bytes)")]
    AlreadySigned {
        path: PathBuf,
        offset: u32,
        size: u32,
    },
    #[error(
        "{path}: certificate table at {offset:#x}+{size} is not at the end of the {len}-byte file"
    )]
    BadCertTable {
        path: PathBuf,
        offset: u32,
        size: u32,
        len: usize,
    },
    #[error("signing certificate is not a parsable X.509 v3 certificate")]
    BadCert,
    #[error("{path}: signature at {offset:#x}: {what}")]
    BadSignature {
        path: PathBuf,
        offset: usize,
        what: String,
    },
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
    #[error(transparent)]
    Key(#[from] SecureBootError),
}

/// Header positions the image hash and the certificate table depend on.
struct Layout {
    checksum: usize,
    cert_dir: usize,
    size_of_headers: usize,
    /// (PointerToRawData, SizeOfRawData) of the sections with raw data,
    /// sorted by file position.
    sections: Vec<(usize, usize)>,
    cert_table: Option<(u32, u32)>,
}

fn le16(b: &[u8], o: usize) -> Option<u16> {
    Some(u16::from_le_bytes(b.get(o..o + 2)?.try_into().ok()?))
}
fn le32(b: &[u8], o: usize) -> Option<u32> {
    Some(u32::from_le_bytes(b.get(o..o + 4)?.try_into().ok()?))
}

impl From<NotPe> for AuthenticodeError {
    fn from(NotPe { path, what }: NotPe) -> Self {
        AuthenticodeError::NotPe { path, what }
    }
}

/// The headers read by the workspace's PE reader, plus what Authenticode
/// itself requires: a certificate-table entry, inside SizeOfHeaders.
fn layout(path: &Path, b: &[u8]) -> Result<Layout, AuthenticodeError> {
    let pe = PeLayout::parse(path, b)?;
    let bad = |what: String| AuthenticodeError::NotPe {
        path: path.to_path_buf(),
        what,
    };
    let cert_dir = pe.data_dir_offset(DIR_SECURITY).ok_or_else(|| {
        bad(format!(
            "only {} data directories, no certificate table entry",
            pe.data_dir_count()
        ))
    })?;
    let size_of_headers = pe.size_of_headers as usize;
    if size_of_headers > b.len() || size_of_headers < cert_dir + 8 {
        return Err(bad(format!(
            "SizeOfHeaders {size_of_headers:#x} does not cover the certificate table entry at {cert_dir:#x} or runs past the end of the {}-byte file",
            b.len()
        )));
    }
    let mut sections: Vec<(usize, usize)> = pe
        .sections
        .iter()
        .filter(|s| s.size_of_raw_data != 0)
        .map(|s| (s.pointer_to_raw_data as usize, s.size_of_raw_data as usize))
        .collect();
    sections.sort();
    Ok(Layout {
        checksum: pe.checksum_offset(),
        cert_dir,
        size_of_headers,
        sections,
        cert_table: pe.certificate_table(b),
    })
}

/// The Authenticode SHA-256 image hash of `image` (`path` only names it in errors).
///
/// Hashes the headers without the checksum and the certificate-table
/// directory entry, then each section's raw data in file order, then any
/// data after the last section up to the certificate table.
pub fn image_digest(path: &Path, image: &[u8]) -> Result<[u8; 32], AuthenticodeError> {
    let l = layout(path, image)?;
    let data_end = match l.cert_table {
        Some((off, size)) => {
            if off as usize + size as usize != image.len() || (off as usize) < l.size_of_headers {
                return Err(AuthenticodeError::BadCertTable {
                    path: path.to_path_buf(),
                    offset: off,
                    size,
                    len: image.len(),
                });
            }
            off as usize
        }
        None => image.len(),
    };
    let mut h = Sha256::new();
    h.update(&image[..l.checksum]);
    h.update(&image[l.checksum + 4..l.cert_dir]);
    h.update(&image[l.cert_dir + 8..l.size_of_headers]);
    let mut hashed = l.size_of_headers;
    for &(ptr, size) in &l.sections {
        h.update(&image[ptr..ptr + size]);
        hashed = hashed.max(ptr + size);
    }
    if data_end > hashed {
        h.update(&image[hashed..data_end]);
    }
    Ok(h.finalize().into())
}

/// DER of SpcIndirectDataContent for a PE image with this SHA-256 hash.
fn spc_indirect_data(digest: &[u8; 32]) -> Vec<u8> {
    // SpcPeImageData: no flags, and the file link "<<<Obsolete>>>" as a
    // BMPString, which is what every PE signer emits.
    let obsolete: Vec<u8> = "<<<Obsolete>>>"
        .encode_utf16()
        .flat_map(|u| u.to_be_bytes())
        .collect();
    let file = tlv(ctx(2), &tlv(0x80, &obsolete));
    let pe_image_data = seq(&[&tlv(der::BIT_STRING, &[0x00]), &tlv(ctx(0), &file)]);
    seq(&[
        &seq(&[&oid(OID_SPC_PE_IMAGE_DATA), &pe_image_data]),
        &seq(&[&alg_null(OID_SHA256), &tlv(der::OCTET_STRING, digest)]),
    ])
}

/// PKCS#7 SignedData (DER ContentInfo) carrying the Authenticode signature.
pub fn signed_data(digest: &[u8; 32], key: &SecureBootKey) -> Result<Vec<u8>, AuthenticodeError> {
    let idc = spc_indirect_data(digest);
    // Authenticode quirk: messageDigest covers the content octets of the
    // SpcIndirectDataContent SEQUENCE, without its tag and length.
    let (idc_tlv, _) = der::parse(&idc).expect("we just encoded it");
    let content_digest = Sha256::digest(idc_tlv.content);
    let attrs = [
        seq(&[
            &oid(OID_CONTENT_TYPE),
            &set_of(&[&oid(OID_SPC_INDIRECT_DATA)]),
        ]),
        seq(&[&oid(OID_SPC_SP_OPUS_INFO), &set_of(&[&seq(&[])])]),
        seq(&[
            &oid(OID_MESSAGE_DIGEST),
            &set_of(&[&tlv(der::OCTET_STRING, &content_digest)]),
        ]),
    ];
    let attr_refs: Vec<&[u8]> = attrs.iter().map(Vec::as_slice).collect();
    // Signed over as a SET OF; stored as [0] IMPLICIT with the same content.
    let attrs_set = set_of(&attr_refs);
    let (attrs_tlv, _) = der::parse(&attrs_set).expect("we just encoded it");
    let signature = key.sign_sha256(&Sha256::digest(&attrs_set).into())?;
    let cert = key.cert_der();
    let (issuer, serial) = cert_issuer_serial(cert).ok_or(AuthenticodeError::BadCert)?;
    let signer_info = seq(&[
        &uint(&[1]),
        &seq(&[issuer, serial]),
        &alg_null(OID_SHA256),
        &tlv(ctx(0), attrs_tlv.content),
        &alg_null(OID_RSA_ENCRYPTION),
        &tlv(der::OCTET_STRING, &signature),
    ]);
    let signed = seq(&[
        &uint(&[1]),
        &set_of(&[&alg_null(OID_SHA256)]),
        &seq(&[&oid(OID_SPC_INDIRECT_DATA), &tlv(ctx(0), &idc)]),
        &tlv(ctx(0), cert),
        &set_of(&[&signer_info]),
    ]);
    Ok(seq(&[&oid(OID_SIGNED_DATA), &tlv(ctx(0), &signed)]))
}

/// Returns `image` signed with `key`. The image is padded to 8 bytes (the
/// padding is part of the hash), the WIN_CERTIFICATE is appended and the
/// certificate-table directory entry and PE checksum are updated.
pub fn sign_image(
    path: &Path,
    image: &[u8],
    key: &SecureBootKey,
) -> Result<Vec<u8>, AuthenticodeError> {
    let l = layout(path, image)?;
    if let Some((offset, size)) = l.cert_table {
        return Err(AuthenticodeError::AlreadySigned {
            path: path.to_path_buf(),
            offset,
            size,
        });
    }
    let mut out = image.to_vec();
    out.resize(image.len().next_multiple_of(8), 0);
    let digest = image_digest(path, &out)?;
    let pkcs7 = signed_data(&digest, key)?;
    let table_off = out.len();
    let entry_len = 8 + pkcs7.len();
    out.extend_from_slice(&(entry_len as u32).to_le_bytes());
    out.extend_from_slice(&WIN_CERT_REVISION_2_0.to_le_bytes());
    out.extend_from_slice(&WIN_CERT_TYPE_PKCS_SIGNED_DATA.to_le_bytes());
    out.extend_from_slice(&pkcs7);
    out.resize(out.len().next_multiple_of(8), 0);
    let table_len = out.len() - table_off;
    out[l.cert_dir..l.cert_dir + 4].copy_from_slice(&(table_off as u32).to_le_bytes());
    out[l.cert_dir + 4..l.cert_dir + 8].copy_from_slice(&(table_len as u32).to_le_bytes());
    out[l.checksum..l.checksum + 4].fill(0);
    let sum = pe_checksum(&out, l.checksum);
    out[l.checksum..l.checksum + 4].copy_from_slice(&sum.to_le_bytes());
    Ok(out)
}

/// Signs the PE file `input` into `output` (which may be the same path).
pub fn sign_file(
    input: &Path,
    output: &Path,
    key: &SecureBootKey,
) -> Result<(), AuthenticodeError> {
    let image = fs::read(input).map_err(|source| AuthenticodeError::Read {
        path: input.to_path_buf(),
        source,
    })?;
    let signed = sign_image(input, &image, key)?;
    fs::write(output, signed).map_err(|source| AuthenticodeError::Write {
        path: output.to_path_buf(),
        source,
    })
}

/// The certificates embedded in `image`'s Authenticode signatures (each
/// PKCS#7 SignedData's `certificates`), as DER; empty for an unsigned image.
/// They are what the signatures claim, not what they prove: see
/// [`verify_signatures`] before trusting a signer.
pub fn signer_certificates(path: &Path, image: &[u8]) -> Result<Vec<Vec<u8>>, AuthenticodeError> {
    let mut certs = Vec::new();
    for (at, blob) in signature_blobs(path, image)? {
        let p = Pkcs7::parse(blob).map_err(|what| bad_signature(path, at, &what))?;
        certs.extend(p.certs.iter().map(|c| c.to_vec()));
    }
    Ok(certs)
}

/// Checks every Authenticode signature in `image` as firmware does before
/// it trusts the signer: the image hash the signature carries is the
/// image's own ([`image_digest`]), the signed attributes' messageDigest is
/// the hash of that content, and the RSA signature over the attributes
/// verifies with the public key of the signer's certificate (found by
/// issuer and serial among the embedded ones). Returns each signature's
/// signer certificate (DER), empty for an unsigned image; the first
/// signature that does not hold is an error naming its offset and why.
///
/// Whether a signer is trusted is the caller's question: compare the
/// certificates with the ones the firmware holds (e.g. an installed loader's).
pub fn verify_signatures(path: &Path, image: &[u8]) -> Result<Vec<Vec<u8>>, AuthenticodeError> {
    let blobs = signature_blobs(path, image)?;
    if blobs.is_empty() {
        return Ok(Vec::new());
    }
    let digest = image_digest(path, image)?;
    let mut signers = Vec::new();
    for (at, blob) in blobs {
        let bad = |what: String| bad_signature(path, at, &what);
        let p = Pkcs7::parse(blob).map_err(bad)?;
        if p.signers.is_empty() {
            return Err(bad("PKCS#7 has no SignerInfo".into()));
        }
        p.check_image_digest(&digest).map_err(bad)?;
        for si in &p.signers {
            signers.push(p.verify_signer(si).map_err(bad)?.to_vec());
        }
    }
    Ok(signers)
}

fn bad_signature(path: &Path, offset: usize, what: &str) -> AuthenticodeError {
    AuthenticodeError::BadSignature {
        path: path.to_path_buf(),
        offset,
        what: what.to_string(),
    }
}

/// The PKCS#7 blobs of the certificate table's WIN_CERTIFICATE entries of
/// type PKCS_SIGNED_DATA, each with its file offset.
fn signature_blobs<'a>(
    path: &Path,
    image: &'a [u8],
) -> Result<Vec<(usize, &'a [u8])>, AuthenticodeError> {
    let l = layout(path, image)?;
    let Some((off, size)) = l.cert_table else {
        return Ok(Vec::new());
    };
    let (off, size) = (off as usize, size as usize);
    let table = image.get(off..off.saturating_add(size)).ok_or_else(|| {
        bad_signature(path, off, "certificate table runs past the end of the file")
    })?;
    let mut blobs = Vec::new();
    let mut pos = 0;
    // WIN_CERTIFICATE entries, each 8-byte aligned.
    while pos + 8 <= table.len() {
        let len = le32(table, pos).unwrap_or(0) as usize;
        let kind = le16(table, pos + 6).unwrap_or(0);
        if len < 8 || pos + len > table.len() {
            return Err(bad_signature(
                path,
                off + pos,
                "WIN_CERTIFICATE length out of range",
            ));
        }
        if kind == WIN_CERT_TYPE_PKCS_SIGNED_DATA {
            blobs.push((off + pos + 8, &table[pos + 8..pos + len]));
        }
        pos += (len + 7) & !7;
    }
    Ok(blobs)
}

/// One Authenticode PKCS#7 SignedData, as far as verifying it needs:
/// ContentInfo { signedData, [0] SignedData { version, digestAlgorithms,
/// encapContentInfo { SpcIndirectDataContent }, [0] certificates,
/// [1] crls, signerInfos } }.
struct Pkcs7<'a> {
    /// SpcIndirectDataContent { data, DigestInfo }.
    indirect: der::Tlv<'a>,
    certs: Vec<&'a [u8]>,
    signers: Vec<der::Tlv<'a>>,
}

/// The elements of a DER value of tag `tag`.
fn fields<'a>(t: &der::Tlv<'a>, tag: u8, what: &str) -> Result<Vec<der::Tlv<'a>>, String> {
    if t.tag != tag {
        return Err(format!(
            "{what} has tag {:#04x}, expected {tag:#04x}",
            t.tag
        ));
    }
    der::children(t.content).ok_or_else(|| format!("{what} is not valid DER"))
}

/// The `i`th element, which must exist.
fn nth<'a>(v: &[der::Tlv<'a>], i: usize, what: &str) -> Result<der::Tlv<'a>, String> {
    v.get(i)
        .copied()
        .ok_or_else(|| format!("{what} is missing"))
}

/// The elements of the `i`th element, a SEQUENCE.
fn seq_at<'a>(v: &[der::Tlv<'a>], i: usize, what: &str) -> Result<Vec<der::Tlv<'a>>, String> {
    fields(&nth(v, i, what)?, der::SEQUENCE, what)
}

fn is_oid(t: &der::Tlv<'_>, dotted: &str) -> bool {
    t.whole == oid(dotted).as_slice()
}

impl<'a> Pkcs7<'a> {
    fn parse(b: &'a [u8]) -> Result<Pkcs7<'a>, String> {
        // Trailing bytes are the WIN_CERTIFICATE's alignment padding.
        let (ci, _) = der::parse(b).ok_or("ContentInfo is not valid DER")?;
        let ci = fields(&ci, der::SEQUENCE, "ContentInfo")?;
        if !is_oid(&nth(&ci, 0, "ContentInfo contentType")?, OID_SIGNED_DATA) {
            return Err("ContentInfo is not signedData".into());
        }
        let explicit = fields(&nth(&ci, 1, "ContentInfo content")?, ctx(0), "[0] content")?;
        let sd = seq_at(&explicit, 0, "SignedData")?;
        let encap = seq_at(&sd, 2, "encapContentInfo")?;
        if !is_oid(&nth(&encap, 0, "eContentType")?, OID_SPC_INDIRECT_DATA) {
            return Err("the signed content is not SpcIndirectDataContent".into());
        }
        let content = fields(&nth(&encap, 1, "eContent")?, ctx(0), "[0] eContent")?;
        let indirect = nth(&content, 0, "SpcIndirectDataContent")?;
        let mut certs = Vec::new();
        let mut rest = &sd[3..];
        if let Some(t) = rest.first().filter(|t| t.tag == ctx(0)) {
            certs = fields(t, ctx(0), "certificates")?
                .iter()
                .map(|c| c.whole)
                .collect();
            rest = &rest[1..];
        }
        if rest.first().is_some_and(|t| t.tag == ctx(1)) {
            rest = &rest[1..];
        }
        let signers = fields(&nth(rest, 0, "signerInfos")?, der::SET, "signerInfos")?;
        Ok(Pkcs7 {
            indirect,
            certs,
            signers,
        })
    }

    /// The image hash the signed content names must be the image's own.
    fn check_image_digest(&self, image_digest: &[u8; 32]) -> Result<(), String> {
        let idc = fields(&self.indirect, der::SEQUENCE, "SpcIndirectDataContent")?;
        let digest_info = seq_at(&idc, 1, "DigestInfo")?;
        let alg = seq_at(&digest_info, 0, "AlgorithmIdentifier")?;
        if !is_oid(&nth(&alg, 0, "DigestInfo algorithm")?, OID_SHA256) {
            return Err("the image hash is not SHA-256".into());
        }
        let signed_hash = nth(&digest_info, 1, "DigestInfo digest")?;
        if signed_hash.tag != der::OCTET_STRING || signed_hash.content != image_digest {
            return Err(format!(
                "the signature is for image hash {}, the image hashes to {} (changed after signing)",
                hex::encode(signed_hash.content),
                hex::encode(image_digest)
            ));
        }
        Ok(())
    }

    /// Checks one SignerInfo { version, issuerAndSerialNumber,
    /// digestAlgorithm, [0] authenticatedAttributes, digestEncryptionAlgorithm,
    /// encryptedDigest, ... } over the signed content; returns its
    /// certificate.
    fn verify_signer(&self, si: &der::Tlv<'a>) -> Result<&'a [u8], String> {
        let f = fields(si, der::SEQUENCE, "SignerInfo")?;
        let ias = seq_at(&f, 1, "issuerAndSerialNumber")?;
        let (issuer, serial) = (nth(&ias, 0, "issuer")?, nth(&ias, 1, "serialNumber")?);
        let dalg = seq_at(&f, 2, "digestAlgorithm")?;
        if !is_oid(&nth(&dalg, 0, "digestAlgorithm")?, OID_SHA256) {
            return Err("SignerInfo digestAlgorithm is not SHA-256".into());
        }
        let attrs = nth(&f, 3, "authenticatedAttributes")?;
        let attr_list = fields(&attrs, ctx(0), "authenticatedAttributes")?;
        let idc_hash = Sha256::digest(self.indirect.content);
        let mut message_digest = None;
        for a in &attr_list {
            let a = fields(a, der::SEQUENCE, "Attribute")?;
            if is_oid(&nth(&a, 0, "attribute type")?, OID_MESSAGE_DIGEST) {
                let values = fields(
                    &nth(&a, 1, "messageDigest values")?,
                    der::SET,
                    "messageDigest values",
                )?;
                message_digest = Some(nth(&values, 0, "messageDigest")?.content);
            }
        }
        match message_digest {
            Some(d) if d == idc_hash.as_slice() => {}
            Some(d) => {
                return Err(format!(
                    "messageDigest {} is not the hash of the signed content ({})",
                    hex::encode(d),
                    hex::encode(idc_hash)
                ))
            }
            None => return Err("no messageDigest among the authenticated attributes".into()),
        }
        let enc = seq_at(&f, 4, "digestEncryptionAlgorithm")?;
        let enc = nth(&enc, 0, "digestEncryptionAlgorithm")?;
        if !is_oid(&enc, OID_RSA_ENCRYPTION) && !is_oid(&enc, OID_SHA256_WITH_RSA) {
            return Err("the signature is not RSA".into());
        }
        let sig = nth(&f, 5, "encryptedDigest")?;
        let cert = self
            .certs
            .iter()
            .copied()
            .find(|c| cert_issuer_serial(c) == Some((issuer.whole, serial.whole)))
            .ok_or("no embedded certificate matches the signer's issuer and serial")?;
        let spki = cert_spki(cert).ok_or("the signer's certificate has no public key")?;
        let key = RsaPublicKey::from_public_key_der(spki)
            .map_err(|e| format!("the signer's public key is not RSA: {e}"))?;
        // The attributes are signed as a SET OF, stored as [0] IMPLICIT:
        // same length and content, other tag.
        let mut signed = attrs.whole.to_vec();
        signed[0] = der::SET;
        key.verify(
            Pkcs1v15Sign::new::<Sha256>(),
            &Sha256::digest(&signed),
            sig.content,
        )
        .map_err(|_| {
            "the RSA signature does not verify with the signer's certificate".to_string()
        })?;
        Ok(cert)
    }
}
