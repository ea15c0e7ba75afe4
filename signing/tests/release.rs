//! Signing and verifying releases, checked against OpenSSL and sha256sum as the
//! independent implementations of ed25519, PKCS#8/SPKI and sha256.

use signing::keys::{ensure_outside, load_trusted_dir, KeyError};
use signing::manifest::ManifestError;
use signing::{
    sign_dir, sign_manifest, verify_dir, verify_manifest, ArtifactProblem, Manifest, PrivateKey,
    PublicKey, ReleaseMeta, VerifyError, MANIFEST_FILE, SIGNATURE_FILE,
};
use std::collections::BTreeMap;
use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;

const SEED_A: [u8; 32] = [7; 32];
const SEED_B: [u8; 32] = [9; 32];

fn meta() -> ReleaseMeta {
    let mut inputs = BTreeMap::new();
    inputs.insert("linux".into(), "sha256:4d415b3d".into());
    inputs.insert("pkg/busybox".into(), "cache:0123abcd".into());
    ReleaseMeta {
        os_name: "cairn".into(),
        os_version: "1.4.0".parse().unwrap(),
        profile: "qemu".into(),
        source_date_epoch: 1_700_000_000,
        arch: "x86_64".into(),
        inputs,
        verity_root_hash: Some("ab".repeat(32)),
    }
}

const FILES: &[&str] = &["rootfs.img", "uki.efi"];

/// A release dir with deterministic artifacts (one larger than the hashing
/// buffer, so streaming crosses chunk boundaries).
fn release(dir: &Path, key: &PrivateKey) -> Manifest {
    let big: Vec<u8> = (0..200_003u32).map(|i| (i * 31 % 251) as u8).collect();
    fs::write(dir.join("rootfs.img"), big).unwrap();
    fs::write(dir.join("uki.efi"), b"MZ not really a PE").unwrap();
    sign_dir(dir, meta(), FILES, key).unwrap()
}

fn run(cmd: &mut Command) -> std::process::Output {
    cmd.output()
        .unwrap_or_else(|e| panic!("running {cmd:?}: {e} (is it installed?)"))
}

fn sh(script: &str) -> std::process::Output {
    run(Command::new("bash").arg("-c").arg(script))
}

#[test]
fn signs_and_verifies() {
    let d = tempfile::tempdir().unwrap();
    let key = PrivateKey::from_seed(&SEED_A);
    let m = release(d.path(), &key);
    assert_eq!(m.key_id, key.id().to_string());
    let report = verify_dir(d.path(), &[key.public()]).unwrap();
    assert_eq!(report.manifest, m);
    assert!(report.extra_files.is_empty());
    assert_eq!(m.artifacts.len(), 2);
    assert_eq!(m.artifact("rootfs.img").unwrap().size, 200_003);
}

#[test]
fn reproducible_across_directories() {
    let (a, b) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let key = PrivateKey::from_seed(&SEED_A);
    release(a.path(), &key);
    release(b.path(), &key);
    for f in [MANIFEST_FILE, SIGNATURE_FILE] {
        assert_eq!(
            fs::read(a.path().join(f)).unwrap(),
            fs::read(b.path().join(f)).unwrap(),
            "{f} differs between runs"
        );
    }
}

#[test]
fn hashes_match_sha256sum() {
    let d = tempfile::tempdir().unwrap();
    let m = release(d.path(), &PrivateKey::from_seed(&SEED_A));
    for a in &m.artifacts {
        let out = run(Command::new("sha256sum").arg(d.path().join(&a.name)));
        assert!(out.status.success());
        let text = String::from_utf8(out.stdout).unwrap();
        assert_eq!(
            text.split_whitespace().next().unwrap(),
            a.sha256,
            "{}",
            a.name
        );
        let len = fs::metadata(d.path().join(&a.name)).unwrap().len();
        assert_eq!(len, a.size);
    }
}

/// The documented signature format is checkable with OpenSSL alone.
#[test]
fn openssl_verifies_signature_and_key_id() {
    let d = tempfile::tempdir().unwrap();
    let keys = tempfile::tempdir().unwrap();
    let key = PrivateKey::from_seed(&SEED_A);
    let pub_path = key.write_new(&keys.path().join("k")).unwrap();
    release(d.path(), &key);
    let sig: serde_json::Value =
        serde_json::from_slice(&fs::read(d.path().join(SIGNATURE_FILE)).unwrap()).unwrap();
    let raw = hex::decode(sig["signature"].as_str().unwrap()).unwrap();
    let work = tempfile::tempdir().unwrap();
    fs::write(work.path().join("sig.bin"), raw).unwrap();
    let mut msg = b"cairn-manifest-v1\0".to_vec();
    msg.extend(fs::read(d.path().join(MANIFEST_FILE)).unwrap());
    fs::write(work.path().join("msg"), &msg).unwrap();
    let verify = |pubkey: &Path| {
        run(Command::new("openssl")
            .args(["pkeyutl", "-verify", "-pubin", "-rawin", "-inkey"])
            .arg(pubkey)
            .arg("-in")
            .arg(work.path().join("msg"))
            .arg("-sigfile")
            .arg(work.path().join("sig.bin")))
    };
    let out = verify(&pub_path);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
    // OpenSSL also derives the same public key from the private key file.
    let out = run(Command::new("openssl")
        .args(["pkey", "-pubout", "-in"])
        .arg(keys.path().join("k")));
    assert!(out.status.success());
    assert_eq!(out.stdout, fs::read(&pub_path).unwrap());
    // Key id = first 16 bytes of sha256 over the raw key (last 32 DER bytes).
    let out = sh(&format!(
        "openssl pkey -pubin -in {} -outform DER | tail -c 32 | sha256sum | cut -c1-32",
        pub_path.display()
    ));
    assert_eq!(
        String::from_utf8(out.stdout).unwrap().trim(),
        key.id().to_string()
    );
    assert_eq!(sig["key_id"], key.id().to_string());
    // And a different message fails under OpenSSL too.
    msg.push(b' ');
    fs::write(work.path().join("msg"), &msg).unwrap();
    assert!(!verify(&pub_path).status.success());
}

#[test]
fn loads_openssl_generated_keys() {
    let k = tempfile::tempdir().unwrap();
    let priv_path = k.path().join("o.pem");
    let out = sh(&format!(
        "umask 077 && openssl genpkey -algorithm ed25519 -out {0} && openssl pkey -in {0} -pubout -out {0}.pub",
        priv_path.display()
    ));
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let key = PrivateKey::load(&priv_path).unwrap();
    let public = PublicKey::load(&k.path().join("o.pem.pub")).unwrap();
    assert_eq!(key.public(), public);
    let d = tempfile::tempdir().unwrap();
    release(d.path(), &key);
    verify_dir(d.path(), &[public]).unwrap();
}

#[test]
fn rotation_any_trusted_key_verifies() {
    let d = tempfile::tempdir().unwrap();
    let (a, b) = (
        PrivateKey::from_seed(&SEED_A),
        PrivateKey::from_seed(&SEED_B),
    );
    release(d.path(), &b);
    let r = verify_dir(d.path(), &[a.public(), b.public()]).unwrap();
    assert_eq!(r.manifest.key_id(), Some(b.id()));
}

#[test]
fn unknown_key_is_rejected() {
    let d = tempfile::tempdir().unwrap();
    let (a, b) = (
        PrivateKey::from_seed(&SEED_A),
        PrivateKey::from_seed(&SEED_B),
    );
    release(d.path(), &a);
    match verify_dir(d.path(), &[b.public()]) {
        Err(e @ VerifyError::UnknownKey { .. }) => {
            let msg = e.to_string();
            assert!(
                msg.contains(&a.id().to_string()) && msg.contains(&b.id().to_string()),
                "{msg}"
            );
        }
        other => panic!("expected UnknownKey, got {other:?}"),
    }
    assert!(matches!(
        verify_dir(d.path(), &[]),
        Err(VerifyError::UnknownKey { .. })
    ));
}

/// A signature file naming a trusted key id but signed by another key.
#[test]
fn forged_key_id_is_rejected() {
    let (a, b) = (
        PrivateKey::from_seed(&SEED_A),
        PrivateKey::from_seed(&SEED_B),
    );
    let d = tempfile::tempdir().unwrap();
    let mut m = release(d.path(), &b);
    let (bytes, sig) = sign_manifest(&mut m, &b).unwrap();
    let forged = String::from_utf8(sig)
        .unwrap()
        .replace(&b.id().to_string(), &a.id().to_string());
    assert!(matches!(
        verify_manifest(&bytes, forged.as_bytes(), &[a.public()]),
        Err(VerifyError::BadSignature { .. })
    ));
}

#[test]
fn truncated_signature_is_rejected() {
    let d = tempfile::tempdir().unwrap();
    let key = PrivateKey::from_seed(&SEED_A);
    release(d.path(), &key);
    let m = fs::read(d.path().join(MANIFEST_FILE)).unwrap();
    let sig = fs::read(d.path().join(SIGNATURE_FILE)).unwrap();
    for len in 0..sig.len() {
        let err = verify_manifest(&m, &sig[..len], &[key.public()]).unwrap_err();
        assert!(
            matches!(err, VerifyError::SignatureFormat { .. }),
            "len {len}: {err}"
        );
    }
    let err = verify_manifest(&m, &sig[..sig.len() - 10], &[key.public()]).unwrap_err();
    assert!(err.to_string().contains("truncated"), "{err}");
    // A short signature value inside an otherwise complete file.
    let text = String::from_utf8(sig.clone()).unwrap();
    let sig_hex = &text[text.find("\"signature\":\"").unwrap() + 13..text.len() - 3];
    let short = text.replace(sig_hex, &sig_hex[..126]);
    let err = verify_manifest(&m, short.as_bytes(), &[key.public()]).unwrap_err();
    assert!(err.to_string().contains("126 characters"), "{err}");
}

/// Every field edited after signing (re-serialized canonically, so only the
/// signature can catch it) is rejected.
#[test]
fn manifest_edited_after_signing_is_rejected() {
    let d = tempfile::tempdir().unwrap();
    let key = PrivateKey::from_seed(&SEED_A);
    let m = release(d.path(), &key);
    let sig = fs::read(d.path().join(SIGNATURE_FILE)).unwrap();
    let mut edits: Vec<(&str, Manifest)> = Vec::new();
    let mut e = m.clone();
    e.os_name = "cairm".into();
    edits.push(("os_name", e));
    let mut e = m.clone();
    e.os_version = "1.5.0".parse().unwrap();
    edits.push(("os_version", e));
    let mut e = m.clone();
    e.profile = "aws".into();
    edits.push(("profile", e));
    let mut e = m.clone();
    e.source_date_epoch += 1;
    edits.push(("source_date_epoch", e));
    let mut e = m.clone();
    e.artifacts[0].size += 1;
    edits.push(("artifacts.size", e));
    let mut e = m.clone();
    e.artifacts[1].sha256 = "00".repeat(32);
    edits.push(("artifacts.sha256", e));
    let mut e = m.clone();
    e.artifacts[1].name = "uki2.efi".into();
    edits.push(("artifacts.name", e));
    let mut e = m.clone();
    e.artifacts.pop();
    edits.push(("artifacts (removed)", e));
    let mut e = m.clone();
    e.inputs.insert("linux".into(), "sha256:evil".into());
    edits.push(("inputs", e));
    let mut e = m.clone();
    e.verity_root_hash = Some("cd".repeat(32));
    edits.push(("verity_root_hash", e));
    let mut e = m.clone();
    e.verity_root_hash = None;
    edits.push(("verity_root_hash (removed)", e));
    for (what, e) in edits {
        let bytes = e.to_canonical_bytes();
        assert_ne!(bytes, m.to_canonical_bytes(), "{what}");
        match verify_manifest(&bytes, &sig, &[key.public()]) {
            Err(VerifyError::BadSignature { .. }) => {}
            other => panic!("{what}: expected BadSignature, got {other:?}"),
        }
    }
}

#[test]
fn non_canonical_manifest_is_rejected_even_when_signed() {
    let key = PrivateKey::from_seed(&SEED_A);
    let d = tempfile::tempdir().unwrap();
    let m = release(d.path(), &key);
    let compact = serde_json::to_vec(&m).unwrap();
    assert!(matches!(
        Manifest::parse(&compact),
        Err(ManifestError::NotCanonical { .. })
    ));
    let unknown = String::from_utf8(m.to_canonical_bytes())
        .unwrap()
        .replace("\"format\": 1,", "\"format\": 1,\n  \"extra\": 2,");
    assert!(matches!(
        Manifest::parse(unknown.as_bytes()),
        Err(ManifestError::Json(_))
    ));
}

#[test]
fn flipped_artifact_byte_names_the_artifact() {
    let d = tempfile::tempdir().unwrap();
    let key = PrivateKey::from_seed(&SEED_A);
    release(d.path(), &key);
    let p = d.path().join("rootfs.img");
    let mut data = fs::read(&p).unwrap();
    data[150_000] ^= 0x01;
    fs::write(&p, data).unwrap();
    let err = verify_dir(d.path(), &[key.public()]).unwrap_err();
    match &err {
        VerifyError::Artifacts { problems } => {
            assert_eq!(problems.len(), 1);
            assert!(
                matches!(&problems[0], ArtifactProblem::Hash { name, .. } if name == "rootfs.img")
            );
        }
        other => panic!("expected Artifacts, got {other:?}"),
    }
    assert!(err.to_string().contains("rootfs.img"), "{err}");
}

#[test]
fn missing_and_resized_artifacts_are_reported_together() {
    let d = tempfile::tempdir().unwrap();
    let key = PrivateKey::from_seed(&SEED_A);
    release(d.path(), &key);
    fs::remove_file(d.path().join("uki.efi")).unwrap();
    fs::write(d.path().join("rootfs.img"), b"short").unwrap();
    let err = verify_dir(d.path(), &[key.public()]).unwrap_err();
    let VerifyError::Artifacts { problems } = &err else {
        panic!("expected Artifacts, got {err:?}")
    };
    assert!(
        matches!(&problems[0], ArtifactProblem::Size { name, expected: 200_003, actual: 5 } if name == "rootfs.img")
    );
    assert!(matches!(&problems[1], ArtifactProblem::Missing { name } if name == "uki.efi"));
    let msg = err.to_string();
    assert!(
        msg.contains("uki.efi: missing") && msg.contains("rootfs.img: size 5"),
        "{msg}"
    );
}

#[test]
fn extra_files_are_allowed_and_reported() {
    let d = tempfile::tempdir().unwrap();
    let key = PrivateKey::from_seed(&SEED_A);
    release(d.path(), &key);
    fs::write(d.path().join("notes.txt"), b"x").unwrap();
    fs::create_dir(d.path().join("cache")).unwrap();
    let r = verify_dir(d.path(), &[key.public()]).unwrap();
    assert_eq!(
        r.extra_files,
        vec!["cache".to_string(), "notes.txt".to_string()]
    );
}

#[test]
fn versions_compare_as_semver() {
    let d = tempfile::tempdir().unwrap();
    let key = PrivateKey::from_seed(&SEED_A);
    let old = release(d.path(), &key);
    let mut newer = meta();
    newer.os_version = "1.10.0".parse().unwrap();
    let new = sign_dir(d.path(), newer, FILES, &key).unwrap();
    assert!(new.version() > old.version());
    let mut pre = meta();
    pre.os_version = "1.4.0-rc.1".parse().unwrap();
    let pre = sign_dir(d.path(), pre, FILES, &key).unwrap();
    assert!(pre.version() < old.version());
}

#[test]
fn bad_metadata_is_refused_at_build_time() {
    let d = tempfile::tempdir().unwrap();
    fs::write(d.path().join("a"), b"a").unwrap();
    let cases: Vec<(ReleaseMeta, &[&str], &str)> = vec![
        (
            ReleaseMeta {
                arch: "aarch64".into(),
                ..meta()
            },
            &["a"],
            "arch",
        ),
        (
            ReleaseMeta {
                verity_root_hash: Some("AB".repeat(32)),
                ..meta()
            },
            &["a"],
            "verity_root_hash",
        ),
        (meta(), &["../a"], "plain file name"),
        (meta(), &["manifest.json"], "plain file name"),
        (meta(), &[], "at least one artifact"),
        (meta(), &["a", "a"], "unique"),
        (meta(), &["nope"], "nope"),
    ];
    for (m, files, want) in cases {
        let err = Manifest::from_dir(d.path(), m, files)
            .unwrap_err()
            .to_string();
        assert!(err.contains(want), "{files:?}: {err}");
    }
}

#[test]
fn draft_manifest_lists_names() {
    let draft = br#"{"os_name":"cairn","os_version":"2.0.0","profile":"iso","source_date_epoch":1,
        "arch":"x86_64","artifacts":["b.img",{"name":"a.efi","size":1,"sha256":"x"}]}"#;
    let (meta, names) = ReleaseMeta::parse_draft(draft).unwrap();
    assert_eq!(meta.os_version.major, 2);
    assert_eq!(names, vec!["b.img", "a.efi"]);
    let err = ReleaseMeta::parse_draft(br#"{"os_name":"cairn","typo":1}"#).unwrap_err();
    assert!(err.to_string().contains("unsigned manifest"), "{err}");
}

fn write_mode(path: &Path, data: &[u8], mode: u32) {
    fs::write(path, data).unwrap();
    fs::set_permissions(path, fs::Permissions::from_mode(mode)).unwrap();
}

#[test]
fn keygen_writes_0600_and_refuses_overwrite() {
    let k = tempfile::tempdir().unwrap();
    let path = k.path().join("release.key");
    let key = PrivateKey::from_seed(&SEED_A);
    let pub_path = key.write_new(&path).unwrap();
    assert_eq!(pub_path, PathBuf::from(format!("{}.pub", path.display())));
    let mode = fs::metadata(&path).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600);
    assert!(fs::read_to_string(&path)
        .unwrap()
        .starts_with("-----BEGIN PRIVATE KEY-----\n"));
    assert!(fs::read_to_string(&pub_path)
        .unwrap()
        .starts_with("-----BEGIN PUBLIC KEY-----\n"));
    let before = fs::read(&path).unwrap();
    let other = PrivateKey::from_seed(&SEED_B);
    assert!(matches!(
        other.write_new(&path),
        Err(KeyError::Exists { .. })
    ));
    assert_eq!(fs::read(&path).unwrap(), before);
    // An existing .pub alone also blocks, before the private key is written.
    let p2 = k.path().join("second.key");
    fs::write(k.path().join("second.key.pub"), b"x").unwrap();
    assert!(matches!(other.write_new(&p2), Err(KeyError::Exists { .. })));
    assert!(!p2.exists());
    assert_eq!(PrivateKey::load(&path).unwrap().id(), key.id());
}

#[test]
fn too_open_private_key_is_refused() {
    let k = tempfile::tempdir().unwrap();
    let path = k.path().join("k");
    PrivateKey::from_seed(&SEED_A).write_new(&path).unwrap();
    for mode in [0o644, 0o640, 0o604, 0o660, 0o602] {
        fs::set_permissions(&path, fs::Permissions::from_mode(mode)).unwrap();
        let err = PrivateKey::load(&path).unwrap_err();
        assert!(
            matches!(err, KeyError::TooOpen { mode: m, .. } if m == mode),
            "{mode:o}"
        );
        let msg = err.to_string();
        assert!(
            msg.contains(&format!("{mode:04o}")) && msg.contains(&path.display().to_string()),
            "{msg}"
        );
    }
    fs::set_permissions(&path, fs::Permissions::from_mode(0o400)).unwrap();
    PrivateKey::load(&path).unwrap();
}

#[test]
fn wrong_key_file_formats_are_refused() {
    let k = tempfile::tempdir().unwrap();
    let key_path = k.path().join("k");
    let pub_path = PrivateKey::from_seed(&SEED_A).write_new(&key_path).unwrap();
    // A public key where a private key belongs, and the reverse.
    let swapped = k.path().join("swapped");
    write_mode(&swapped, &fs::read(&pub_path).unwrap(), 0o600);
    assert!(matches!(
        PrivateKey::load(&swapped),
        Err(KeyError::Format { .. })
    ));
    let err = PublicKey::load(&key_path).unwrap_err();
    assert!(matches!(err, KeyError::Format { .. }), "{err}");
    assert!(err.to_string().contains(&key_path.display().to_string()));
    // Garbage, binary, empty, and an RSA key from OpenSSL.
    for (name, data) in [
        ("garbage", b"hello\n".to_vec()),
        ("binary", vec![0xff, 0xfe, 0x00]),
        ("empty", vec![]),
    ] {
        let p = k.path().join(name);
        write_mode(&p, &data, 0o600);
        assert!(
            matches!(PrivateKey::load(&p), Err(KeyError::Format { .. })),
            "{name}"
        );
        assert!(
            matches!(PublicKey::load(&p), Err(KeyError::Format { .. })),
            "{name}"
        );
    }
    let rsa = k.path().join("rsa");
    let out = sh(&format!(
        "umask 077 && openssl genpkey -algorithm rsa -pkeyopt rsa_keygen_bits:1024 -out {0} 2>/dev/null && openssl pkey -in {0} -pubout -out {0}.pub",
        rsa.display()
    ));
    assert!(out.status.success());
    assert!(matches!(
        PrivateKey::load(&rsa),
        Err(KeyError::Format { .. })
    ));
    assert!(matches!(
        PublicKey::load(&k.path().join("rsa.pub")),
        Err(KeyError::Format { .. })
    ));
    assert!(matches!(
        PublicKey::load(&k.path().join("absent")),
        Err(KeyError::Io { .. })
    ));
}

#[test]
fn key_inside_output_dir_is_refused() {
    let d = tempfile::tempdir().unwrap();
    let sub = d.path().join("keys");
    fs::create_dir(&sub).unwrap();
    let inside = sub.join("k");
    PrivateKey::from_seed(&SEED_A).write_new(&inside).unwrap();
    assert!(matches!(
        ensure_outside(&inside, d.path()),
        Err(KeyError::KeyInOutput { .. })
    ));
    let outside = tempfile::tempdir().unwrap();
    let k = outside.path().join("k");
    PrivateKey::from_seed(&SEED_A).write_new(&k).unwrap();
    ensure_outside(&k, d.path()).unwrap();
    // A symlink in the output dir pointing at an outside key is refused, and
    // so is an outside symlink pointing into the output dir.
    std::os::unix::fs::symlink(&k, d.path().join("link")).unwrap();
    assert!(ensure_outside(&d.path().join("link"), d.path()).is_err());
    std::os::unix::fs::symlink(&inside, outside.path().join("in")).unwrap();
    assert!(ensure_outside(&outside.path().join("in"), d.path()).is_err());
}

#[test]
fn trusted_key_directory() {
    let k = tempfile::tempdir().unwrap();
    assert!(load_trusted_dir(k.path()).is_err());
    let (a, b) = (
        PrivateKey::from_seed(&SEED_A),
        PrivateKey::from_seed(&SEED_B),
    );
    a.write_new(&k.path().join("2-a")).unwrap();
    b.write_new(&k.path().join("1-b")).unwrap();
    let keys = load_trusted_dir(k.path()).unwrap();
    assert_eq!(keys, vec![b.public(), a.public()]);
    fs::write(k.path().join("bad.pub"), b"nope").unwrap();
    let err = load_trusted_dir(k.path()).unwrap_err();
    assert!(err.to_string().contains("bad.pub"), "{err}");
}

/// Hand-built signature file in the documented format; a signer that names
/// another key's id inside the manifest is caught.
#[test]
fn manifest_key_id_must_match_signer() {
    let (a, b) = (
        PrivateKey::from_seed(&SEED_A),
        PrivateKey::from_seed(&SEED_B),
    );
    let d = tempfile::tempdir().unwrap();
    let mut m = release(d.path(), &a);
    m.key_id = b.id().to_string();
    let bytes = m.to_canonical_bytes();
    let mut msg = b"cairn-manifest-v1\0".to_vec();
    msg.extend_from_slice(&bytes);
    let sig = format!(
        "{{\"format\":1,\"algorithm\":\"ed25519\",\"key_id\":\"{}\",\"signature\":\"{}\"}}\n",
        a.id(),
        hex::encode(a.sign(&msg))
    );
    match verify_manifest(&bytes, sig.as_bytes(), &[a.public(), b.public()]) {
        Err(VerifyError::KeyIdMismatch { .. }) => {}
        other => panic!("expected KeyIdMismatch, got {other:?}"),
    }
    // The same hand-built format with the right key id is accepted.
    m.key_id = a.id().to_string();
    let bytes = m.to_canonical_bytes();
    let mut msg = b"cairn-manifest-v1\0".to_vec();
    msg.extend_from_slice(&bytes);
    let sig = format!(
        "{{\"format\":1,\"algorithm\":\"ed25519\",\"key_id\":\"{}\",\"signature\":\"{}\"}}\n",
        a.id(),
        hex::encode(a.sign(&msg))
    );
    verify_manifest(&bytes, sig.as_bytes(), &[a.public()]).unwrap();
    // Unsupported format/algorithm values are named.
    for (from, to) in [("\"format\":1", "\"format\":2"), ("ed25519", "ed448")] {
        let err = verify_manifest(&bytes, sig.replace(from, to).as_bytes(), &[a.public()])
            .unwrap_err()
            .to_string();
        assert!(err.contains("not supported"), "{err}");
    }
}
