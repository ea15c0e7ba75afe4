//! `cairn keygen` / `sign` / `verify` end to end, through the binary.

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::{Command, Output};

fn cairn(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_cairn"))
        .args(args)
        .env("RUST_BACKTRACE", "0")
        .output()
        .expect("running cairn")
}

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

const DRAFT: &str = r#"{
  "os_name": "cairn",
  "os_version": "1.2.3",
  "profile": "qemu",
  "source_date_epoch": 1700000000,
  "arch": "x86_64",
  "inputs": {"linux": "sha256:4d415b3d", "pkg/busybox": "cache:99"},
  "verity_root_hash": "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef",
  "artifacts": ["uki.efi", "rootfs.img"]
}"#;

/// A key dir and a release dir holding artifacts and a draft manifest.
fn setup() -> (tempfile::TempDir, tempfile::TempDir) {
    let keys = tempfile::tempdir().unwrap();
    let o = cairn(&["keygen", "--out", s(&keys.path().join("k"))]);
    assert!(o.status.success(), "{}", stderr(&o));
    let rel = tempfile::tempdir().unwrap();
    fs::write(rel.path().join("uki.efi"), b"MZ fake uki").unwrap();
    fs::write(rel.path().join("rootfs.img"), vec![0xa5u8; 300_000]).unwrap();
    fs::write(rel.path().join("manifest.json"), DRAFT).unwrap();
    (keys, rel)
}

fn sign(keys: &Path, rel: &Path) -> Output {
    cairn(&["sign", "--key", s(&keys.join("k")), s(rel)])
}

fn verify(pubs: &[&Path], rel: &Path) -> Output {
    let mut args = vec!["verify".to_string()];
    for p in pubs {
        args.push("--pubkey".into());
        args.push(s(p).into());
    }
    args.push(s(rel).into());
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    cairn(&args)
}

#[test]
fn keygen_sign_verify() {
    let (keys, rel) = setup();
    let mode = fs::metadata(keys.path().join("k"))
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o600);
    let o = sign(keys.path(), rel.path());
    assert!(o.status.success(), "{}", stderr(&o));
    let o = verify(&[&keys.path().join("k.pub")], rel.path());
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(String::from_utf8_lossy(&o.stdout).contains("ok: cairn 1.2.3"));
    // A directory of *.pub files works as a trust list too.
    let o = verify(&[keys.path()], rel.path());
    assert!(o.status.success(), "{}", stderr(&o));
    // Re-signing a signed dir keeps the artifact set and stays valid.
    let before = fs::read(rel.path().join("manifest.json")).unwrap();
    let o = sign(keys.path(), rel.path());
    assert!(o.status.success(), "{}", stderr(&o));
    assert_eq!(fs::read(rel.path().join("manifest.json")).unwrap(), before);
}

#[test]
fn keygen_refuses_overwrite() {
    let (keys, _rel) = setup();
    let before = fs::read(keys.path().join("k")).unwrap();
    let o = cairn(&["keygen", "--out", s(&keys.path().join("k"))]);
    assert!(!o.status.success());
    assert!(stderr(&o).contains("already exists"), "{}", stderr(&o));
    assert_eq!(fs::read(keys.path().join("k")).unwrap(), before);
}

#[test]
fn secureboot_keygen_refuses_a_directory_with_a_key_set() {
    // A db key that may be enrolled already: the library's typed refusal,
    // printed by the CLI, before any key is generated.
    let d = tempfile::tempdir().unwrap();
    fs::write(d.path().join("db.key"), b"enrolled").unwrap();
    let o = cairn(&["secureboot-keygen", "--out", s(d.path())]);
    assert!(!o.status.success());
    let want = format!(
        "{} exists: refusing to overwrite a Secure Boot key set",
        d.path().join("db.key").display()
    );
    assert!(stderr(&o).contains(&want), "{}", stderr(&o));
    assert_eq!(fs::read(d.path().join("db.key")).unwrap(), b"enrolled");
    assert_eq!(fs::read_dir(d.path()).unwrap().count(), 1);
}

#[test]
fn same_inputs_same_bytes_in_two_dirs() {
    let (keys, a) = setup();
    let b = tempfile::tempdir().unwrap();
    for f in ["uki.efi", "rootfs.img", "manifest.json"] {
        fs::copy(a.path().join(f), b.path().join(f)).unwrap();
    }
    assert!(sign(keys.path(), a.path()).status.success());
    assert!(sign(keys.path(), b.path()).status.success());
    for f in ["manifest.json", "manifest.json.sig"] {
        assert_eq!(
            fs::read(a.path().join(f)).unwrap(),
            fs::read(b.path().join(f)).unwrap(),
            "{f}"
        );
    }
}

#[test]
fn verify_failures_exit_nonzero_and_say_why() {
    let (keys, rel) = setup();
    assert!(sign(keys.path(), rel.path()).status.success());
    let pubk = keys.path().join("k.pub");

    // Extra unlisted file: allowed, reported.
    fs::write(rel.path().join("notes.txt"), b"x").unwrap();
    let o = verify(&[&pubk], rel.path());
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(stderr(&o).contains("notes.txt"), "{}", stderr(&o));

    // Unknown key (only another key trusted), then both trusted.
    let other = keys.path().join("other");
    assert!(cairn(&["keygen", "--out", s(&other)]).status.success());
    let other_pub = keys.path().join("other.pub");
    let o = verify(&[&other_pub], rel.path());
    assert!(!o.status.success());
    assert!(stderr(&o).contains("not trusted"), "{}", stderr(&o));
    assert!(verify(&[&other_pub, &pubk], rel.path()).status.success());

    // One flipped byte in an artifact.
    let p = rel.path().join("rootfs.img");
    let mut data = fs::read(&p).unwrap();
    data[123_456] ^= 0x80;
    fs::write(&p, &data).unwrap();
    let o = verify(&[&pubk], rel.path());
    assert!(!o.status.success());
    assert!(stderr(&o).contains("rootfs.img: sha256"), "{}", stderr(&o));
    data[123_456] ^= 0x80;
    fs::write(&p, &data).unwrap();

    // Missing artifact.
    fs::remove_file(rel.path().join("uki.efi")).unwrap();
    let o = verify(&[&pubk], rel.path());
    assert!(!o.status.success());
    assert!(stderr(&o).contains("uki.efi: missing"), "{}", stderr(&o));
    fs::write(rel.path().join("uki.efi"), b"MZ fake uki").unwrap();
    assert!(verify(&[&pubk], rel.path()).status.success());

    // Manifest edited after signing.
    let m = rel.path().join("manifest.json");
    let text = fs::read_to_string(&m).unwrap();
    fs::write(&m, text.replace("1.2.3", "9.2.3")).unwrap();
    let o = verify(&[&pubk], rel.path());
    assert!(!o.status.success());
    assert!(stderr(&o).contains("does not match"), "{}", stderr(&o));
    fs::write(&m, text).unwrap();

    // Truncated signature.
    let sig = rel.path().join("manifest.json.sig");
    let bytes = fs::read(&sig).unwrap();
    fs::write(&sig, &bytes[..bytes.len() / 2]).unwrap();
    let o = verify(&[&pubk], rel.path());
    assert!(!o.status.success());
    assert!(stderr(&o).contains("truncated"), "{}", stderr(&o));

    // Missing signature.
    fs::remove_file(&sig).unwrap();
    let o = verify(&[&pubk], rel.path());
    assert!(!o.status.success());
    assert!(stderr(&o).contains("manifest.json.sig"), "{}", stderr(&o));
}

#[test]
fn key_problems_are_refused() {
    let (keys, rel) = setup();
    let k = keys.path().join("k");

    fs::set_permissions(&k, fs::Permissions::from_mode(0o640)).unwrap();
    let o = sign(keys.path(), rel.path());
    assert!(!o.status.success());
    assert!(stderr(&o).contains("0640"), "{}", stderr(&o));
    fs::set_permissions(&k, fs::Permissions::from_mode(0o600)).unwrap();

    // A public key given where the private key belongs.
    let o = cairn(&[
        "sign",
        "--key",
        s(&keys.path().join("k.pub")),
        s(rel.path()),
    ]);
    assert!(!o.status.success());
    let o2 = verify(&[&k], rel.path());
    assert!(!o2.status.success());
    assert!(stderr(&o2).contains("public key"), "{}", stderr(&o2));
    assert!(!rel.path().join("manifest.json.sig").exists());
}

/// The private key never ends up in the release directory.
#[test]
fn no_key_material_in_output() {
    let (keys, rel) = setup();
    // A key inside DIR is refused outright, leaving DIR unsigned.
    let inside = rel.path().join("signing.key");
    fs::copy(keys.path().join("k"), &inside).unwrap();
    fs::set_permissions(&inside, fs::Permissions::from_mode(0o600)).unwrap();
    let o = cairn(&["sign", "--key", s(&inside), s(rel.path())]);
    assert!(!o.status.success());
    assert!(
        stderr(&o).contains("inside the output directory"),
        "{}",
        stderr(&o)
    );
    assert!(!rel.path().join("manifest.json.sig").exists());
    fs::remove_file(&inside).unwrap();

    assert!(sign(keys.path(), rel.path()).status.success());
    let pem = fs::read_to_string(keys.path().join("k")).unwrap();
    let b64: String = pem.lines().filter(|l| !l.starts_with("-----")).collect();
    // Raw 32-byte seed: the last 32 bytes of the PKCS#8 v1 DER.
    let der_hex = Command::new("openssl")
        .args(["pkey", "-outform", "DER", "-in", s(&keys.path().join("k"))])
        .output()
        .expect("openssl");
    assert!(der_hex.status.success());
    let seed = &der_hex.stdout[der_hex.stdout.len() - 32..];
    let seed_hex: String = seed.iter().map(|b| format!("{b:02x}")).collect();
    for e in fs::read_dir(rel.path()).unwrap() {
        let data = fs::read(e.unwrap().path()).unwrap();
        let text = String::from_utf8_lossy(&data);
        assert!(!text.contains("PRIVATE KEY"));
        assert!(!text.contains(&b64[..40]));
        assert!(!text.contains(&seed_hex));
        assert!(!data.windows(32).any(|w| w == seed));
    }
}
