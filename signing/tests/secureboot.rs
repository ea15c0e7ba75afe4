//! Secure Boot keys and Authenticode signatures, checked with sbsigntool's
//! `sbverify` and openssl as the independent implementations.

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::OnceLock;
use std::time::Duration;

use artifacts::pe::{PeLayout, DIR_SECURITY};
use artifacts::uki::{Uki, UkiInputs};
use signing::authenticode::{
    image_digest, sign_file, sign_image, signer_certificates, verify_signatures, AuthenticodeError,
};
use signing::secureboot::{SecureBootError, SecureBootKey, SecureBootKeys};

use testkit::fixtures::{self as boot, STUB, SYSTEMD_BOOT};
use testkit::qemu::{enrolled_vars, Disk, Machine, Run};
const EPOCH: u64 = 1_704_067_200; // 2024-01-01T00:00:00Z

struct Keys {
    dir: tempfile::TempDir,
    set: SecureBootKeys,
}

/// RSA key generation is slow in debug builds: one key set per test binary.
fn keys() -> &'static Keys {
    static K: OnceLock<Keys> = OnceLock::new();
    K.get_or_init(|| {
        let dir = tempfile::tempdir().unwrap();
        // What `cairn secureboot-keygen` runs.
        let set = SecureBootKeys::create(dir.path(), "cairn test", 2048, EPOCH).unwrap();
        let other = SecureBootKey::generate("someone else", 2048, EPOCH).unwrap();
        other.write(dir.path(), "other").unwrap();
        Keys { dir, set }
    })
}

fn kpath(name: &str) -> PathBuf {
    keys().dir.path().join(name)
}

fn tool(cmd: &mut Command) -> Output {
    cmd.output()
        .unwrap_or_else(|e| panic!("cannot run {cmd:?}: {e}"))
}

/// Signs `image` into `out` with sbsign (OpenSSL) and the key pair `stem`.
fn sbsign(stem: &str, image: &Path, out: &Path) {
    let r = tool(
        Command::new("sbsign")
            .arg("--key")
            .arg(kpath(&format!("{stem}.key")))
            .arg("--cert")
            .arg(kpath(&format!("{stem}.crt")))
            .arg("--output")
            .arg(out)
            .arg(image),
    );
    assert!(r.status.success(), "{}", String::from_utf8_lossy(&r.stderr));
}

/// The certificate of key pair `stem` as openssl encodes it in DER.
fn openssl_der(stem: &str) -> Vec<u8> {
    tool(
        Command::new("openssl")
            .args(["x509", "-outform", "DER", "-in"])
            .arg(kpath(&format!("{stem}.crt"))),
    )
    .stdout
}

fn sbverify(cert: &Path, image: &Path) -> Output {
    tool(Command::new("sbverify").arg("--cert").arg(cert).arg(image))
}

fn small_uki(dir: &Path) -> PathBuf {
    let linux = dir.join("linux");
    let initrd = dir.join("initrd");
    fs::write(
        &linux,
        (0..200_003u32)
            .map(|i| (i * 7 % 251) as u8)
            .collect::<Vec<_>>(),
    )
    .unwrap();
    fs::write(&initrd, b"not really a cpio, but bytes to sign").unwrap();
    let out = dir.join("uki.efi");
    Uki::build(
        &UkiInputs {
            stub: Path::new(STUB),
            linux: &linux,
            initrd: &initrd,
            cmdline: "console=ttyS0",
            osrel: "ID=cairn\nVERSION_ID=1\n",
            uname: None,
            sbat: None,
        },
        &out,
    )
    .unwrap();
    out
}

#[test]
fn key_files_are_written_with_private_keys_0600() {
    let k = keys();
    for stem in ["PK", "KEK", "db", "other"] {
        let mode = fs::metadata(kpath(&format!("{stem}.key")))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600, "{stem}.key");
        // openssl parses the certificate and agrees on subject and key size.
        let out = tool(
            Command::new("openssl")
                .args(["x509", "-noout", "-subject", "-text", "-in"])
                .arg(kpath(&format!("{stem}.crt"))),
        );
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(text.contains("Public-Key: (2048 bit)"), "{text}");
        assert!(text.contains("CA:TRUE"), "{text}");
        assert!(
            text.contains("Not Before: Jan  1 00:00:00 2024 GMT"),
            "{text}"
        );
        // The certificate's self-signature verifies under openssl.
        let v = tool(
            Command::new("openssl")
                .arg("verify")
                .arg("-CAfile")
                .arg(kpath(&format!("{stem}.crt")))
                .arg(kpath(&format!("{stem}.crt"))),
        );
        assert!(
            v.status.success(),
            "{stem}: {}",
            String::from_utf8_lossy(&v.stdout)
        );
        // The private key matches the certificate (openssl's view).
        let kmod = tool(
            Command::new("openssl")
                .args(["rsa", "-noout", "-modulus", "-in"])
                .arg(kpath(&format!("{stem}.key"))),
        );
        let cmod = tool(
            Command::new("openssl")
                .args(["x509", "-noout", "-modulus", "-in"])
                .arg(kpath(&format!("{stem}.crt"))),
        );
        assert!(kmod.status.success());
        assert_eq!(kmod.stdout, cmod.stdout, "{stem}");
    }
    assert_eq!(
        fs::read(kpath("db.der")).unwrap(),
        k.set.db.cert_der(),
        "db.der is the DER certificate"
    );
    let subj = tool(
        Command::new("openssl")
            .args(["x509", "-noout", "-subject", "-in"])
            .arg(kpath("KEK.crt")),
    );
    assert!(String::from_utf8_lossy(&subj.stdout).contains("cairn test KEK"));
}

#[test]
fn signed_uki_verifies_with_sbverify_and_only_with_its_cert() {
    let tmp = tempfile::tempdir().unwrap();
    let uki = small_uki(tmp.path());
    let signed = tmp.path().join("signed.efi");
    sign_file(&uki, &signed, &keys().set.db).unwrap();
    let ok = sbverify(&kpath("db.crt"), &signed);
    assert!(
        ok.status.success(),
        "sbverify: {}{}",
        String::from_utf8_lossy(&ok.stdout),
        String::from_utf8_lossy(&ok.stderr)
    );
    let wrong = sbverify(&kpath("other.crt"), &signed);
    assert!(!wrong.status.success(), "a different cert must not verify");
    let wrong = sbverify(&kpath("KEK.crt"), &signed);
    assert!(!wrong.status.success(), "the KEK did not sign it");
    // The unsigned UKI does not verify at all.
    assert!(!sbverify(&kpath("db.crt"), &uki).status.success());

    // Sections still extract after signing: the signature only appends.
    assert_eq!(
        Uki::read_section(&signed, ".cmdline").unwrap(),
        b"console=ttyS0"
    );

    // One flipped byte inside .linux breaks the signature.
    let mut bytes = fs::read(&signed).unwrap();
    let linux = Uki::sections(&signed)
        .unwrap()
        .into_iter()
        .find(|s| s.name_str() == ".linux")
        .unwrap();
    bytes[linux.pointer_to_raw_data as usize + 1000] ^= 1;
    let tampered = tmp.path().join("tampered.efi");
    fs::write(&tampered, &bytes).unwrap();
    assert!(!sbverify(&kpath("db.crt"), &tampered).status.success());
}

#[test]
fn signed_systemd_boot_verifies() {
    let tmp = tempfile::tempdir().unwrap();
    let signed = tmp.path().join("BOOTX64.EFI");
    sign_file(Path::new(SYSTEMD_BOOT), &signed, &keys().set.db).unwrap();
    let ok = sbverify(&kpath("db.crt"), &signed);
    assert!(
        ok.status.success(),
        "sbverify: {}{}",
        String::from_utf8_lossy(&ok.stdout),
        String::from_utf8_lossy(&ok.stderr)
    );
    assert!(!sbverify(&kpath("other.crt"), &signed).status.success());
}

#[test]
fn signer_certificates_are_read_back_from_ours_and_sbsigns_signatures() {
    let tmp = tempfile::tempdir().unwrap();
    let uki = small_uki(tmp.path());
    let plain = fs::read(&uki).unwrap();
    assert!(signer_certificates(&uki, &plain).unwrap().is_empty());
    let ours = tmp.path().join("ours.efi");
    sign_file(&uki, &ours, &keys().set.db).unwrap();
    assert_eq!(
        signer_certificates(&ours, &fs::read(&ours).unwrap()).unwrap(),
        vec![keys().set.db.cert_der().to_vec()]
    );
    // sbsign (OpenSSL) with another key: its certificate, as openssl encodes it.
    let theirs = tmp.path().join("sbsign.efi");
    sbsign("other", &uki, &theirs);
    let der = openssl_der("other");
    assert_eq!(
        signer_certificates(&theirs, &fs::read(&theirs).unwrap()).unwrap(),
        vec![der]
    );
    // A certificate table with a broken length is an error, not "unsigned".
    let mut broken = fs::read(&ours).unwrap();
    let start = plain.len().next_multiple_of(8);
    broken[start..start + 4].copy_from_slice(&3u32.to_le_bytes());
    let err = signer_certificates(&ours, &broken).unwrap_err().to_string();
    assert!(err.contains("WIN_CERTIFICATE length"), "{err}");
}

/// `verify_signatures` accepts what sbverify accepts (our signatures and
/// sbsign's) and refuses what it refuses: a changed body, a wrong signature
/// value, a certificate swapped for another.
#[test]
fn finding_6_signature_verification_agrees_with_sbverify() {
    let tmp = tempfile::tempdir().unwrap();
    let uki = small_uki(tmp.path());
    let plain = fs::read(&uki).unwrap();
    assert!(verify_signatures(&uki, &plain).unwrap().is_empty());
    let ours = tmp.path().join("ours.efi");
    sign_file(&uki, &ours, &keys().set.db).unwrap();
    let theirs = tmp.path().join("sbsign.efi");
    sbsign("db", &uki, &theirs);
    let db_der = openssl_der("db");
    for signed in [&ours, &theirs] {
        assert!(sbverify(&kpath("db.crt"), signed).status.success());
        let bytes = fs::read(signed).unwrap();
        assert_eq!(
            verify_signatures(signed, &bytes).unwrap(),
            vec![db_der.clone()],
            "{}",
            signed.display()
        );
    }
    let good = fs::read(&ours).unwrap();
    let table = plain.len().next_multiple_of(8);
    let pkcs7_len = u32::from_le_bytes(good[table..table + 4].try_into().unwrap()) as usize;
    let other_der = fs::read(kpath("other.der")).unwrap();
    let mut swapped = good.clone();
    let db_at = swapped
        .windows(db_der.len())
        .position(|w| w == db_der.as_slice())
        .unwrap();
    let cases: Vec<(&str, Vec<u8>)> = vec![
        ("body", {
            let mut v = good.clone();
            v[plain.len() / 2] ^= 1;
            v
        }),
        ("signature value", {
            let mut v = good.clone();
            v[table + pkcs7_len - 1] ^= 1;
            v
        }),
        ("certificate", {
            // Another key's certificate where the signer's was, when they
            // are the same length (else a byte of the signer's public key).
            if other_der.len() == db_der.len() {
                swapped[db_at..db_at + db_der.len()].copy_from_slice(&other_der);
            } else {
                swapped[db_at + db_der.len() / 2] ^= 1;
            }
            swapped
        }),
    ];
    for (what, bad) in cases {
        let path = tmp.path().join("bad.efi");
        fs::write(&path, &bad).unwrap();
        assert!(
            !sbverify(&kpath("db.crt"), &path).status.success(),
            "{what}: sbverify accepts it"
        );
        let err = verify_signatures(&path, &bad).expect_err(what);
        assert!(
            matches!(err, AuthenticodeError::BadSignature { .. }),
            "{what}: {err}"
        );
    }
}

#[test]
fn image_digest_matches_sbsign() {
    // sbsign (OpenSSL) signs the same image; both signatures must carry the
    // same image hash, and the digest is unchanged by the appended table.
    let tmp = tempfile::tempdir().unwrap();
    let uki = small_uki(tmp.path());
    let theirs = tmp.path().join("sbsign.efi");
    sbsign("db", &uki, &theirs);
    let ours = tmp.path().join("ours.efi");
    sign_file(&uki, &ours, &keys().set.db).unwrap();
    let d_theirs = image_digest(&theirs, &fs::read(&theirs).unwrap()).unwrap();
    let d_ours = image_digest(&ours, &fs::read(&ours).unwrap()).unwrap();
    assert_eq!(d_theirs, d_ours);
    // Both files are identical up to the start of the certificate table.
    let a = fs::read(&theirs).unwrap();
    let b = fs::read(&ours).unwrap();
    let start = fs::read(&uki).unwrap().len().next_multiple_of(8);
    let strip = |mut v: Vec<u8>, ck: usize| {
        v[ck..ck + 4].fill(0);
        v.truncate(start);
        v
    };
    let pe = PeLayout::parse(&theirs, &a).unwrap();
    let ck = pe.checksum_offset();
    let cert_dir = pe.data_dir_offset(DIR_SECURITY).unwrap();
    let mut a = strip(a, ck);
    let mut b = strip(b, ck);
    a[cert_dir + 4..cert_dir + 8].fill(0);
    b[cert_dir + 4..cert_dir + 8].fill(0);
    assert!(
        a == b,
        "image bytes before the certificate table differ from sbsign's"
    );
}

#[test]
fn signing_is_stable() {
    let a = tempfile::tempdir().unwrap();
    let b = tempfile::tempdir().unwrap();
    let ua = small_uki(a.path());
    let ub = small_uki(b.path());
    let sa = a.path().join("s.efi");
    let sb = b.path().join("t.efi");
    sign_file(&ua, &sa, &keys().set.db).unwrap();
    sign_file(&ub, &sb, &keys().set.db).unwrap();
    assert!(fs::read(&sa).unwrap() == fs::read(&sb).unwrap());
    // A key loaded back from disk signs identically.
    let loaded = SecureBootKey::load(&kpath("db.key"), &kpath("db.crt")).unwrap();
    let again = sign_image(&ua, &fs::read(&ua).unwrap(), &loaded).unwrap();
    assert!(again == fs::read(&sa).unwrap());
    let all = SecureBootKeys::load(keys().dir.path()).unwrap();
    assert_eq!(all.kek.cert_der(), keys().set.kek.cert_der());
}

#[test]
fn bad_inputs_are_rejected() {
    let tmp = tempfile::tempdir().unwrap();
    let junk = tmp.path().join("junk.efi");
    fs::write(&junk, b"MZ but nothing else").unwrap();
    assert!(matches!(
        sign_file(&junk, &tmp.path().join("o"), &keys().set.db),
        Err(AuthenticodeError::NotPe { .. })
    ));
    let missing = tmp.path().join("missing.efi");
    assert!(matches!(
        sign_file(&missing, &tmp.path().join("o"), &keys().set.db),
        Err(AuthenticodeError::Read { .. })
    ));
    // Signing twice is refused rather than stacking signatures silently.
    let uki = small_uki(tmp.path());
    let signed = tmp.path().join("signed.efi");
    sign_file(&uki, &signed, &keys().set.db).unwrap();
    match sign_file(&signed, &tmp.path().join("o"), &keys().set.db) {
        Err(AuthenticodeError::AlreadySigned { size, .. }) => assert!(size > 1000),
        other => panic!("expected AlreadySigned, got {other:?}"),
    }
    // A certificate table that does not end the file is rejected by the hasher.
    let mut bytes = fs::read(&signed).unwrap();
    bytes.extend_from_slice(&[0u8; 8]);
    assert!(matches!(
        image_digest(&signed, &bytes),
        Err(AuthenticodeError::BadCertTable { .. })
    ));

    // Keys: too small, mismatched key and certificate, garbage files.
    assert!(matches!(
        SecureBootKey::generate("tiny", 1024, EPOCH),
        Err(SecureBootError::KeyTooSmall { bits: 1024 })
    ));
    assert!(matches!(
        SecureBootKey::load(&kpath("db.key"), &kpath("other.crt")),
        Err(SecureBootError::KeyCertMismatch { .. })
    ));
    assert!(matches!(
        SecureBootKey::load(&junk, &kpath("db.crt")),
        Err(SecureBootError::BadKey { .. })
    ));
    assert!(matches!(
        SecureBootKey::load(&kpath("db.key"), &junk),
        Err(SecureBootError::BadCert { .. })
    ));
}

// ------------------------------------------------------ Secure Boot in QEMU

/// Boots `disk` under Secure Boot with our PK/KEK/db enrolled (by
/// virt-fw-vars) until `stop` holds for the console, QEMU exits or 240 s pass.
fn secure_boot(work: &Path, disk: &Path, stop: impl Fn(&str) -> bool) -> Run {
    let vars = enrolled_vars(keys().dir.path(), &work.join("sbvars.fd")).unwrap();
    let mut m = Machine::new("sb", work, Some(&vars)).unwrap();
    m.secure_boot = true;
    m.memory_mb = 512;
    m.disks.push(Disk::virtio(disk));
    m.boot()
        .unwrap()
        .run_until(Duration::from_secs(240), Duration::from_millis(500), stop)
        .unwrap()
}

fn real_uki(work: &Path) -> PathBuf {
    let kernel = boot::debian_kernel(work).unwrap();
    let initrd = boot::marker_initramfs(work).unwrap();
    let uki = work.join("uki.efi");
    Uki::build(
        &UkiInputs {
            stub: Path::new(STUB),
            linux: &kernel,
            initrd: &initrd,
            cmdline: "console=ttyS0 panic=-1 quiet",
            osrel: "ID=cairn\nVERSION_ID=1.0\nIMAGE_VERSION=1.0\n",
            uname: None,
            sbat: None,
        },
        &uki,
    )
    .unwrap();
    uki
}

/// systemd-boot reports a refused image; OVMF's wording varies with the path.
fn refused(console: &str) -> bool {
    let c = console.to_ascii_lowercase();
    c.contains("access denied") || c.contains("security violation")
}

#[test]
fn secure_boot_runs_signed_uki_and_refuses_altered_one() {
    let tmp = tempfile::tempdir().unwrap();
    let work = tmp.path();
    let uki = real_uki(work);
    let signed_uki = work.join("signed-uki.efi");
    sign_file(&uki, &signed_uki, &keys().set.db).unwrap();
    let signed_boot = work.join("BOOTX64.EFI");
    sign_file(Path::new(SYSTEMD_BOOT), &signed_boot, &keys().set.db).unwrap();

    // Signed systemd-boot + signed UKI: boots to the marker.
    let disk = boot::esp_disk(
        work,
        &[
            (&signed_boot, "EFI/BOOT/BOOTX64.EFI"),
            (&signed_uki, "EFI/Linux/cairn-1.0.efi"),
        ],
    )
    .unwrap();
    let r = secure_boot(work, &disk, |t| t.contains(boot::MARKER));
    eprintln!("secure boot (signed) took {:.1} s", r.seconds);
    assert!(
        r.console.contains(boot::MARKER),
        "signed UKI did not boot under Secure Boot; last 50 lines:\n{}",
        testkit::tail(&r.console, 50)
    );

    // The same UKI with one byte of .cmdline changed after signing.
    let mut bytes = fs::read(&signed_uki).unwrap();
    let cmdline = Uki::sections(&signed_uki)
        .unwrap()
        .into_iter()
        .find(|s| s.name_str() == ".cmdline")
        .unwrap();
    bytes[cmdline.pointer_to_raw_data as usize] ^= 0x20;
    let altered = work.join("altered.efi");
    fs::write(&altered, &bytes).unwrap();
    let disk = boot::esp_disk(
        work,
        &[
            (&signed_boot, "EFI/BOOT/BOOTX64.EFI"),
            (&altered, "EFI/Linux/cairn-1.0.efi"),
        ],
    )
    .unwrap();
    let r = secure_boot(work, &disk, |t| t.contains(boot::MARKER) || refused(t));
    eprintln!(
        "secure boot (altered) took {:.1} s:\n{}",
        r.seconds,
        testkit::tail(&r.console, 5)
    );
    assert!(
        !r.console.contains(boot::MARKER) && refused(&r.console),
        "altered UKI was not refused; last 50 lines:\n{}",
        testkit::tail(&r.console, 50)
    );
}
