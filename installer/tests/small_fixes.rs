//! Issue 12, finding 6: the smaller ways an install or upgrade went wrong.
//! Each test is named after the finding it reproduces.

mod common;

use std::fs;
use std::path::Path;
use std::process::Command;

use artifacts::gpt::{self, ondisk, HeaderCopy, SECTOR};
use artifacts::pe::PeLayout;
use common::*;
use installer::upgrade::upgrade;

/// `layout.json` is swapped for another valid layout the moment the
/// verifier first opens it (to hash it). Whatever `open_verified` parses
/// must be the layout that was hashed and signed, or it must refuse.
#[test]
fn finding_6_layout_json_is_parsed_from_the_bytes_that_were_hashed() {
    let fx = Fixture::new();
    let b = bundle(&fx.path("b"), "1.0.0");
    let signed =
        contract::layout::LayoutSpec::parse(&fs::read(b.dir.join("layout.json")).unwrap()).unwrap();
    let evil = fx.path("evil.json");
    fs::write(
        &evil,
        format!(
            r#"{{"esp":{},"boot":{},"state":{}}}"#,
            36 * MIB,
            24 * MIB,
            8 * MIB
        ),
    )
    .unwrap();
    let swapper = swap_on_first_open(&b.dir.join("layout.json"), &evil);
    let got = installer::verify::open_verified(&b.dir, &[key().public()]);
    assert!(
        swapper.join().unwrap(),
        "layout.json was never opened, or the swap failed"
    );
    match got {
        Ok(bundle) => assert_eq!(
            bundle.layout, signed,
            "open_verified parsed a layout.json other than the one it hashed"
        ),
        Err(e) => assert!(
            e.to_string()
                .contains("layout.json changed after verification"),
            "{e}"
        ),
    }
}

/// Waits (in a thread) for the first open of `file`, then atomically
/// replaces it with `with`: whoever opened it keeps the old bytes, every
/// later open gets the new ones. Returns whether the swap happened.
fn swap_on_first_open(file: &Path, with: &Path) -> std::thread::JoinHandle<bool> {
    use std::ffi::CString;
    use std::os::unix::ffi::OsStrExt;
    // SAFETY: plain syscalls on a descriptor this function owns.
    let fd = unsafe { libc::inotify_init1(libc::IN_CLOEXEC) };
    assert!(fd >= 0, "inotify_init1");
    let c = CString::new(file.as_os_str().as_bytes()).unwrap();
    let wd = unsafe { libc::inotify_add_watch(fd, c.as_ptr(), libc::IN_OPEN) };
    assert!(wd >= 0, "inotify_add_watch {}", file.display());
    let (file, with) = (file.to_path_buf(), with.to_path_buf());
    std::thread::spawn(move || {
        let mut pfd = libc::pollfd {
            fd,
            events: libc::POLLIN,
            revents: 0,
        };
        let mut buf = [0u8; 4096];
        let ready = unsafe { libc::poll(&mut pfd, 1, 60_000) } == 1
            && unsafe { libc::read(fd, buf.as_mut_ptr().cast(), buf.len()) } > 0;
        unsafe { libc::close(fd) };
        ready && fs::rename(&with, &file).is_ok()
    })
}

/// A file in `EFI/Linux` whose name is UTF-8 with a multi-byte character
/// where `.efi` would be (`über`: four bytes from the end is inside `ü`)
/// made `status` panic. It must list the release and skip those files.
#[test]
fn finding_6_status_survives_utf8_file_names_in_efi_linux() {
    let fx = Fixture::new();
    let b1 = bundle(&fx.path("b1"), "1.0.0");
    let img = installed_disk(&fx, "d.img", &b1);
    let odd = ["über", "€€", "naïve.efi", "日本語.EFI", "é"];
    with_esp(&img, |vol| {
        for name in odd {
            vol.write_file(&format!("EFI/Linux/{name}"), b"not a UKI")
                .unwrap();
        }
    });
    // The command a user runs, and the library call under it.
    let out = Command::new(env!("CARGO_BIN_EXE_cairn-installer"))
        .args(["status", "--disk", img.to_str().unwrap()])
        .output()
        .unwrap();
    let (stdout, stderr) = (
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr),
    );
    assert!(
        out.status.success() && stdout.contains("cairn-1.0.0+3.efi"),
        "cairn-installer status ({}): {stdout}{stderr}",
        out.status
    );
    let st = installer::status::status(&img).unwrap();
    let files: Vec<&str> = st.entries.iter().map(|e| e.file.as_str()).collect();
    assert_eq!(files, ["cairn-1.0.0+3.efi"]);
    assert_eq!(st.active_slot.as_deref(), Some("BOOT-A"));
    // The files are there: status skipped them rather than not seeing them.
    let names: Vec<String> = with_esp(&img, |vol| {
        vol.list("EFI/Linux")
            .unwrap()
            .into_iter()
            .map(|e| e.name)
            .collect()
    });
    for name in odd {
        assert!(names.iter().any(|n| n == name), "{name} in {names:?}");
    }
}

/// Two Secure Boot db keys whose certificates have the same length, so one
/// can stand in for the other byte for byte (RSA generation is slow: once
/// per test binary).
fn sb_keys() -> &'static [signing::secureboot::SecureBootKey; 2] {
    use signing::secureboot::SecureBootKey;
    static K: std::sync::OnceLock<[SecureBootKey; 2]> = std::sync::OnceLock::new();
    K.get_or_init(|| {
        let k = |n| SecureBootKey::generate(n, 2048, 1_704_067_200).unwrap();
        let a = k("small fixes db A");
        loop {
            let b = k("small fixes db B");
            if b.cert_der().len() == a.cert_der().len() {
                return [a, b];
            }
        }
    })
}

/// (offset, length) of the attribute certificate table of a signed PE image.
fn cert_table(pe: &[u8]) -> (usize, usize) {
    let (off, len) = PeLayout::parse(Path::new("signed loader"), pe)
        .unwrap()
        .certificate_table(pe)
        .expect("signed");
    (off as usize, len as usize)
}

fn replace_all(hay: &mut [u8], from: &[u8], to: &[u8]) -> usize {
    assert_eq!(from.len(), to.len());
    let mut n = 0;
    let mut i = 0;
    while i + from.len() <= hay.len() {
        if &hay[i..i + from.len()] == from {
            hay[i..i + from.len()].copy_from_slice(to);
            n += 1;
            i += from.len();
        } else {
            i += 1;
        }
    }
    n
}

/// `sbverify --cert`: does `image` carry a valid signature by `cert`?
fn sbverify(fx: &Fixture, image: &[u8], cert: &signing::secureboot::SecureBootKey) -> bool {
    let img = fx.path("sbverify.efi");
    let crt = fx.path("sbverify.crt");
    fs::write(&img, image).unwrap();
    fs::write(&crt, cert.cert_pem()).unwrap();
    tool(
        "sbverify",
        &["--cert", crt.to_str().unwrap(), img.to_str().unwrap()],
    )
    .status
    .success()
}

/// A bundle of `version` whose systemd-boot is exactly `loader`, signed
/// with the test release key.
fn bundle_with_exact_loader(fx: &Fixture, version: &str, loader: &[u8]) -> BundleInfo {
    let b = bundle(&fx.path(version), version);
    fs::write(b.dir.join("systemd-bootx64.efi"), loader).unwrap();
    let meta = signing::ReleaseMeta {
        os_name: "cairn".into(),
        os_version: version.parse().unwrap(),
        profile: "test".into(),
        source_date_epoch: EPOCH,
        arch: "x86_64".into(),
        inputs: Default::default(),
        verity_root_hash: Some(b.root_hash.clone()),
    };
    let files = [
        "layout.json",
        "rootfs.img",
        "systemd-bootx64.efi",
        "uki.efi",
    ];
    signing::sign_dir(&b.dir, meta, &files, &key()).unwrap();
    b
}

/// The installed systemd-boot is signed by db key A. Bundles bring a
/// loader that carries A's certificate but whose signature does not hold:
/// its body changed after signing, its signature bytes are wrong, or it
/// was signed by key B with A's certificate and identity copied in. The
/// guard must keep the installed loader for each (sbverify --cert A agrees
/// none is A's), and still replace it with a loader A really signed.
#[test]
fn finding_6_loader_with_a_copied_certificate_or_a_changed_body_is_kept() {
    let fx = Fixture::new();
    let [a, b] = sb_keys();
    let sign = |tail: &[u8], k| {
        let mut img = fs::read(SYSTEMD_BOOT).unwrap();
        img.extend_from_slice(tail);
        signing::authenticode::sign_image(Path::new(SYSTEMD_BOOT), &img, k).unwrap()
    };
    let mut o = BundleOpts::new("1.0.0");
    o.loader_signer = Some(a);
    let b1 = make_bundle(&fx.path("1.0.0"), &o);
    let img = installed_disk(&fx, "d.img", &b1);
    let installed = esp_loader(&img);

    let genuine = sign(b"v2", a);
    assert!(sbverify(&fx, &genuine, a), "sbverify accepts A's own");
    // 1. Body changed after signing: a byte in the middle of the image.
    let mut body = genuine.clone();
    body[genuine.len() / 2] ^= 0x01;
    // 2. The signature value wrong: its last byte is the last of the PKCS#7.
    let mut value = genuine.clone();
    let (off, _) = cert_table(&value);
    let len = u32::from_le_bytes(value[off..off + 4].try_into().unwrap()) as usize;
    value[off + len - 1] ^= 0x01;
    // 3. Signed by B, then A's certificate, issuer and serial copied in.
    let mut copied = sign(b"v2", b);
    let (off, size) = cert_table(&copied);
    let table = &mut copied[off..off + size];
    assert_eq!(replace_all(table, b.cert_der(), a.cert_der()), 1);
    let (a_issuer, a_serial) = issuer_serial(a.cert_der());
    let (b_issuer, b_serial) = issuer_serial(b.cert_der());
    assert_eq!(replace_all(table, &b_issuer, &a_issuer), 1);
    assert_eq!(replace_all(table, &b_serial, &a_serial), 1);
    assert_eq!(
        signing::authenticode::signer_certificates(Path::new("copied"), &copied).unwrap(),
        vec![a.cert_der().to_vec()],
        "the forgery carries exactly A's certificate"
    );

    for (i, (what, loader)) in [("copied", copied), ("value", value), ("body", body)]
        .into_iter()
        .enumerate()
    {
        assert!(
            !sbverify(&fx, &loader, a),
            "{what}: sbverify must refuse it"
        );
        let v = format!("{}.0.0", i + 2);
        let bn = bundle_with_exact_loader(&fx, &v, &loader);
        let plan = upgrade(&upgrade_opts(&img, &bn.dir)).unwrap();
        assert!(!plan.update_loader, "{what}: {plan}");
        let why = plan.loader_kept.clone().unwrap_or_default();
        assert!(why.contains("does not verify"), "{what}: {why}");
        assert!(esp_loader(&img) == installed, "{what}: the loader changed");
    }

    let b5 = bundle_with_exact_loader(&fx, "5.0.0", &genuine);
    let plan = upgrade(&upgrade_opts(&img, &b5.dir)).unwrap();
    assert!(plan.update_loader, "A's own signature is accepted: {plan}");
    assert!(esp_loader(&img) == genuine);
}

/// (issuer Name, serialNumber INTEGER) of a DER certificate, the way a
/// PKCS#7 SignerInfo names its signer.
fn issuer_serial(cert: &[u8]) -> (Vec<u8>, Vec<u8>) {
    // Certificate SEQUENCE { tbs SEQUENCE { [0] version, serial, sigalg, issuer, ...
    fn tlv(b: &[u8]) -> (usize, usize) {
        let first = b[1] as usize;
        if first < 0x80 {
            (2, first)
        } else {
            let n = first & 0x7f;
            let len = b[2..2 + n].iter().fold(0, |a, &x| (a << 8) | x as usize);
            (2 + n, len)
        }
    }
    let (h, _) = tlv(cert);
    let tbs = &cert[h..];
    let (h, _) = tlv(tbs);
    let mut at = h;
    let mut parts = Vec::new();
    for _ in 0..4 {
        let (hh, len) = tlv(&tbs[at..]);
        parts.push(tbs[at..at + hh + len].to_vec());
        at += hh + len;
    }
    (parts[3].clone(), parts[1].clone())
}

/// A GPT whose header claims every sector up to the last as usable, and
/// whose BOOT-B sits at the very end of the disk, over the backup GPT.
/// The upgrade writes BOOT-B: it must refuse, naming the partition and the
/// area, before it writes anything.
#[test]
fn finding_6_slot_overlapping_the_backup_gpt_is_refused_before_any_write() {
    let fx = Fixture::new();
    let b1 = bundle(&fx.path("b1"), "1.0.0");
    let b2 = bundle(&fx.path("b2"), "2.0.0");
    let img = installed_disk(&fx, "d.img", &b1);

    let mut layout = gpt::read_disk(&mut fs::File::open(&img).unwrap())
        .unwrap()
        .layout;
    let sectors = layout.sectors();
    let n = {
        let bb = layout.partition(contract::disk::BOOT_B).unwrap();
        bb.last_lba + 1 - bb.first_lba
    };
    for p in &mut layout.partitions {
        if p.name == contract::disk::BOOT_B {
            (p.first_lba, p.last_lba) = (sectors - n, sectors - 1);
        } else if p.name == contract::disk::EPHEMERAL {
            p.last_lba = sectors - n - 1;
        }
    }
    let mut copy = ondisk::encode_copy(&layout, HeaderCopy::Primary).unwrap();
    // Last usable LBA: the disk's last sector (where the backup header is).
    copy.header[48..56].copy_from_slice(&(sectors - 1).to_le_bytes());
    copy.header[16..20].fill(0);
    let crc = crc32(&copy.header[..92]);
    copy.header[16..20].copy_from_slice(&crc.to_le_bytes());
    {
        use std::os::unix::fs::FileExt;
        let f = fs::OpenOptions::new().write(true).open(&img).unwrap();
        f.write_all_at(&copy.header, copy.header_lba * SECTOR)
            .unwrap();
        f.write_all_at(&copy.entries, copy.entries_lba * SECTOR)
            .unwrap();
    }
    // The crafted table reads as the primary, BOOT-B at the end.
    let read = gpt::read_disk(&mut fs::File::open(&img).unwrap()).unwrap();
    assert_eq!(read.used, HeaderCopy::Primary);
    assert_eq!(
        read.layout
            .partition(contract::disk::BOOT_B)
            .unwrap()
            .last_lba,
        sectors - 1
    );

    let before = sha256_file(&img);
    let err = upgrade(&upgrade_opts(&img, &b2.dir))
        .expect_err("an upgrade into a slot over the backup GPT");
    let msg = err.to_string();
    assert_eq!(sha256_file(&img), before, "the disk changed, then: {msg}");
    assert!(
        msg.contains("BOOT-B")
            && msg.contains("backup GPT")
            && msg.contains(&format!("LBAs {}..=", sectors - n)),
        "{msg}"
    );
}

/// CRC-32 (IEEE 802.3, reflected), as the GPT header carries it.
fn crc32(data: &[u8]) -> u32 {
    let mut crc = !0u32;
    for &b in data {
        crc ^= b as u32;
        for _ in 0..8 {
            crc = if crc & 1 != 0 {
                (crc >> 1) ^ 0xEDB8_8320
            } else {
                crc >> 1
            };
        }
    }
    !crc
}
