//! upgrade, rollback and status on image files, checked by following the
//! boot chain, with sgdisk and fsck.fat.

mod common;

use std::collections::BTreeMap;
use std::fs;
use std::path::Path;
use std::process::Command;

use common::*;
use installer::upgrade::upgrade;
use installer::Error;

/// `fsck.fat -n` on the ESP and `sgdisk -v` on the disk find nothing.
fn esp_clean(img: &Path) {
    let disk = artifacts::gpt::read_disk(&mut fs::File::open(img).unwrap()).unwrap();
    let p = disk.layout.partition("EFI").unwrap();
    let fsck = testkit::check::fsck_fat_at(img, p.offset(), p.size_bytes()).unwrap();
    assert!(fsck.clean(), "fsck.fat -n: {}", fsck.text);
    let v = testkit::check::sgdisk_verify(img).unwrap();
    assert!(v.clean, "sgdisk -v: {}", v.text);
}

#[test]
fn upgrade_boots_the_new_release_and_falls_back_after_three_failures() {
    let fx = Fixture::new();
    let b1 = bundle(&fx.path("b1"), "1.0.0");
    let b2 = bundle(&fx.path("b2"), "2.0.0");
    let img = installed_disk(&fx, "d.img", &b1);
    let plan = upgrade(&upgrade_opts(&img, &b2.dir)).unwrap();
    assert_eq!(
        (plan.running_slot.as_str(), plan.target_slot.as_str()),
        ("BOOT-A", "BOOT-B")
    );
    assert_eq!(plan.new_uki, "cairn-2.0.0+3.efi");
    esp_clean(&img);
    assert_eq!(booted_version(&img, &[&b1, &b2]), Ok("2.0.0".into()));
    // systemd-boot counts down 2.0.0, then boots 1.0.0 from slot A.
    for left in [
        "cairn-2.0.0+3.efi",
        "cairn-2.0.0+2-1.efi",
        "cairn-2.0.0+1-2.efi",
    ] {
        assert_eq!(boot_attempt(&img), left);
    }
    assert_eq!(booted_version(&img, &[&b1, &b2]), Ok("1.0.0".into()));
    assert_eq!(boot_attempt(&img), "cairn-1.0.0+3.efi");
}

#[test]
fn second_upgrade_replaces_the_old_fallback_not_the_blessed_release() {
    let fx = Fixture::new();
    let b1 = bundle(&fx.path("b1"), "1.0.0");
    let b2 = bundle(&fx.path("b2"), "2.0.0");
    let b3 = bundle(&fx.path("b3"), "3.0.0");
    let img = installed_disk(&fx, "d.img", &b1);
    upgrade(&upgrade_opts(&img, &b2.dir)).unwrap();
    boot_attempt(&img);
    bless(&img, "2.0.0");
    let plan = upgrade(&upgrade_opts(&img, &b3.dir)).unwrap();
    assert_eq!(plan.running_slot, "BOOT-B");
    assert_eq!(plan.target_slot, "BOOT-A");
    assert_eq!(plan.removes, ["cairn-1.0.0+3.efi"]);
    assert_eq!(entry_files(&img), ["cairn-3.0.0+3.efi", "cairn-2.0.0.efi"]);
    esp_clean(&img);
    assert_eq!(booted_version(&img, &[&b2, &b3]), Ok("3.0.0".into()));
    // An unblessed new release is not "running": upgrading again replaces
    // it, keeping blessed 2.0.0.
    let b4 = bundle(&fx.path("b4"), "4.0.0");
    let plan = upgrade(&upgrade_opts(&img, &b4.dir)).unwrap();
    assert_eq!(plan.running_slot, "BOOT-B");
    assert_eq!(plan.removes, ["cairn-3.0.0+3.efi"]);
    assert_eq!(booted_version(&img, &[&b2, &b4]), Ok("4.0.0".into()));
}

#[test]
fn upgrade_refuses_downgrades_unless_allowed() {
    let fx = Fixture::new();
    let b1 = bundle(&fx.path("b1"), "1.0.0");
    let b2 = bundle(&fx.path("b2"), "2.0.0");
    let img = installed_disk(&fx, "d.img", &b2);
    let before = sha256_file(&img);
    match upgrade(&upgrade_opts(&img, &b1.dir)) {
        Err(Error::Downgrade { new, running }) => {
            assert_eq!((new.as_str(), running.as_str()), ("1.0.0", "2.0.0"))
        }
        other => panic!("unexpected {other:?}"),
    }
    // The same version is refused too.
    let again = bundle(&fx.path("b2again"), "2.0.0");
    assert!(upgrade(&upgrade_opts(&img, &again.dir)).is_err());
    assert_eq!(sha256_file(&img), before);
    let mut o = upgrade_opts(&img, &b1.dir);
    o.allow_downgrade = true;
    upgrade(&o).unwrap();
    assert_eq!(booted_version(&img, &[&b1, &b2]), Ok("1.0.0".into()));
    // 2.0.0 stays as the (exhausted, last-resort) fallback.
    assert_eq!(
        entry_files(&img),
        ["cairn-1.0.0+3.efi", "cairn-2.0.0+0.efi"]
    );
}

#[test]
fn upgrade_dry_run_and_other_refusals_write_nothing() {
    let fx = Fixture::new();
    let b1 = bundle(&fx.path("b1"), "1.0.0");
    let b2 = bundle(&fx.path("b2"), "2.0.0");
    let img = installed_disk(&fx, "d.img", &b1);
    let before = sha256_file(&img);
    let mut o = upgrade_opts(&img, &b2.dir);
    o.dry_run = true;
    let plan = upgrade(&o).unwrap();
    assert_eq!(plan.target_slot, "BOOT-B");
    assert_eq!(sha256_file(&img), before);
    // Another architecture.
    let mut bo = BundleOpts::new("3.0.0");
    bo.uki_machine = Some(0xAA64);
    let arm = make_bundle(&fx.path("arm"), &bo);
    assert!(matches!(
        upgrade(&upgrade_opts(&img, &arm.dir)),
        Err(Error::Arch { .. })
    ));
    // A rootfs larger than the slot.
    let mut bo = BundleOpts::new("3.0.0");
    bo.rootfs_len = 9 << 20;
    bo.layout = format!(
        r#"{{"esp":{},"boot":{},"state":{}}}"#,
        36 * MIB,
        16 * MIB,
        8 * MIB
    );
    let big = make_bundle(&fx.path("big"), &bo);
    assert!(matches!(
        upgrade(&upgrade_opts(&img, &big.dir)),
        Err(Error::DoesNotFit { .. })
    ));
    // Not a cairn disk.
    let blank = fx.image("blank.img", DISK_SIZE);
    assert!(upgrade(&upgrade_opts(&blank, &b2.dir)).is_err());
    assert_eq!(sha256_file(&img), before);
}

/// Every file on the ESP outside `skip`: path -> (first cluster, bytes).
fn esp_files_except(img: &Path, skip: &str) -> BTreeMap<String, (u32, Vec<u8>)> {
    fn walk(
        vol: &mut artifacts::fat::Fat32<&mut fs::File>,
        dir: &str,
        skip: &str,
        out: &mut BTreeMap<String, (u32, Vec<u8>)>,
    ) {
        for e in vol.list(dir).unwrap() {
            let p = format!("{dir}/{}", e.name)
                .trim_start_matches('/')
                .to_string();
            if p == skip {
                continue;
            }
            if e.is_dir {
                walk(vol, &p, skip, out);
            } else {
                let bytes = vol.read_file(&p).unwrap();
                out.insert(p, (e.first_cluster, bytes));
            }
        }
    }
    with_esp(img, |vol| {
        let mut out = BTreeMap::new();
        walk(vol, "", skip, &mut out);
        out
    })
}

#[test]
fn upgrade_replaces_a_changed_loader_and_leaves_an_equal_one_alone() {
    let fx = Fixture::new();
    let b1 = bundle(&fx.path("b1"), "1.0.0");
    let b2 = bundle(&fx.path("b2"), "2.0.0");
    let b3 = bundle_with_loader(&fx.path("b3"), "3.0.0", b"a rebuilt systemd-boot");
    let img = installed_disk(&fx, "d.img", &b1);
    assert!(esp_loader(&img) == bundle_loader(&b1));

    // The same loader: the dry run says so, and only EFI/Linux changes
    // (not even the loader's directory entry).
    let before = esp_files_except(&img, "EFI/Linux");
    let mut o = upgrade_opts(&img, &b2.dir);
    o.dry_run = true;
    let plan = upgrade(&o).unwrap();
    assert!(!plan.update_loader);
    assert!(
        plan.to_string()
            .contains("6. keep EFI/BOOT/BOOTX64.EFI: it already is the bundle's systemd-boot"),
        "{plan}"
    );
    let plan = upgrade(&upgrade_opts(&img, &b2.dir)).unwrap();
    assert!(!plan.update_loader);
    assert!(esp_files_except(&img, "EFI/Linux") == before);

    // A different loader: announced by the dry run, which writes nothing,
    // then in place after the upgrade; the rest of the ESP is untouched.
    let sha = sha256_file(&img);
    let mut o = upgrade_opts(&img, &b3.dir);
    o.dry_run = true;
    let plan = upgrade(&o).unwrap();
    assert!(plan.update_loader);
    assert!(
        plan.to_string()
            .contains("6. replace EFI/BOOT/BOOTX64.EFI with the bundle's systemd-boot"),
        "{plan}"
    );
    assert_eq!(sha256_file(&img), sha);
    let others = esp_files_except(&img, "EFI/Linux");
    let plan = upgrade(&upgrade_opts(&img, &b3.dir)).unwrap();
    assert!(plan.update_loader);
    assert!(esp_loader(&img) == bundle_loader(&b3));
    assert!(bundle_loader(&b3) != bundle_loader(&b1));
    esp_clean(&img);
    assert_eq!(booted_version(&img, &[&b2, &b3]), Ok("3.0.0".into()));
    let mut after = esp_files_except(&img, "EFI/Linux");
    let mut others = others;
    let old = others.remove(installer::bootmodel::LOADER).unwrap();
    let new = after.remove(installer::bootmodel::LOADER).unwrap();
    assert_ne!(old.0, new.0, "the new loader is in new clusters");
    assert!(after == others);
}

/// Two Secure Boot db keys (RSA generation is slow: once per test binary).
fn sb_keys() -> &'static [signing::secureboot::SecureBootKey; 2] {
    static K: std::sync::OnceLock<[signing::secureboot::SecureBootKey; 2]> =
        std::sync::OnceLock::new();
    K.get_or_init(|| {
        let k = |n| signing::secureboot::SecureBootKey::generate(n, 2048, 1_704_067_200).unwrap();
        [k("cairn test db"), k("rotated db")]
    })
}

#[test]
fn a_loader_signed_by_a_certificate_the_old_one_was_not_is_kept_unless_forced() {
    let fx = Fixture::new();
    let [db, rotated] = sb_keys();
    let signed = |dir: &str, v: &str, tail: &[u8], k| {
        let mut o = BundleOpts::new(v);
        o.loader_tail = tail.to_vec();
        o.loader_signer = k;
        make_bundle(&fx.path(dir), &o)
    };
    let b1 = signed("b1", "1.0.0", b"", Some(db));
    // Same signer, new build: replaced.
    let b2 = signed("b2", "2.0.0", b"fix", Some(db));
    // Signed by a certificate the firmware may not hold yet: kept.
    let b3 = signed("b3", "3.0.0", b"fix", Some(rotated));
    // Unsigned: kept (it would not start under Secure Boot).
    let b4 = signed("b4", "4.0.0", b"fix", None);
    let img = installed_disk(&fx, "d.img", &b1);

    let plan = upgrade(&upgrade_opts(&img, &b2.dir)).unwrap();
    assert!(plan.update_loader && plan.loader_kept.is_none(), "{plan}");
    assert!(esp_loader(&img) == bundle_loader(&b2));

    let plan = upgrade(&upgrade_opts(&img, &b3.dir)).unwrap();
    assert!(!plan.update_loader, "{plan}");
    let why = plan.loader_kept.clone().unwrap();
    assert!(
        why.contains("another certificate") && why.contains("--replace-loader"),
        "{why}"
    );
    assert!(
        plan.to_string().contains(
            "6. keep EFI/BOOT/BOOTX64.EFI: the bundle's is signed by another certificate"
        ),
        "{plan}"
    );
    assert!(
        esp_loader(&img) == bundle_loader(&b2),
        "the trusted loader stays"
    );
    esp_clean(&img);

    let plan = upgrade(&upgrade_opts(&img, &b4.dir)).unwrap();
    assert!(!plan.update_loader, "{plan}");
    assert!(plan.loader_kept.unwrap().contains("unsigned"));
    assert!(esp_loader(&img) == bundle_loader(&b2));

    // After enrolling the new certificate the user forces it.
    let b5 = signed("b5", "5.0.0", b"fix", Some(rotated));
    let mut o = upgrade_opts(&img, &b5.dir);
    o.replace_loader = true;
    let plan = upgrade(&o).unwrap();
    assert!(plan.update_loader, "{plan}");
    assert!(esp_loader(&img) == bundle_loader(&b5));
    esp_clean(&img);
    assert_eq!(booted_version(&img, &[&b4, &b5]), Ok("5.0.0".into()));
}

#[test]
fn rollback_flips_between_the_slots() {
    let fx = Fixture::new();
    let b1 = bundle(&fx.path("b1"), "1.0.0");
    let b2 = bundle(&fx.path("b2"), "2.0.0");
    let img = installed_disk(&fx, "d.img", &b1);
    // Nothing to roll back to yet.
    assert!(installer::rollback::rollback(&img).is_err());
    upgrade(&upgrade_opts(&img, &b2.dir)).unwrap();
    boot_attempt(&img);
    bless(&img, "2.0.0");
    let r = installer::rollback::rollback(&img).unwrap();
    assert_eq!(r.to_version.as_deref(), Some("1.0.0"));
    assert_eq!(
        r.renames,
        [(
            "cairn-2.0.0.efi".to_string(),
            "cairn-2.0.0+0.efi".to_string()
        )]
    );
    assert_eq!(booted_version(&img, &[&b1, &b2]), Ok("1.0.0".into()));
    // Roll forward again: 2.0.0 gets fresh tries.
    let r = installer::rollback::rollback(&img).unwrap();
    assert_eq!(r.to_version.as_deref(), Some("2.0.0"));
    assert_eq!(booted_version(&img, &[&b1, &b2]), Ok("2.0.0".into()));
    // 1.0.0 already sorts after the revived 2.0.0: it stays a counted fallback.
    assert_eq!(
        entry_files(&img),
        ["cairn-2.0.0+3.efi", "cairn-1.0.0+3.efi"]
    );
    esp_clean(&img);
}

#[test]
fn status_json_reports_slots_entries_and_the_next_boot() {
    let fx = Fixture::new();
    let b1 = bundle(&fx.path("b1"), "1.0.0");
    let b2 = bundle(&fx.path("b2"), "2.0.0");
    let img = installed_disk(&fx, "d.img", &b1);
    upgrade(&upgrade_opts(&img, &b2.dir)).unwrap();
    boot_attempt(&img);
    let before = sha256_file(&img);
    let out = Command::new(env!("CARGO_BIN_EXE_cairn-installer"))
        .args(["status", "--json", "--disk", img.to_str().unwrap()])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(sha256_file(&img), before, "status writes nothing");
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["disk_size"], DISK_SIZE);
    assert_eq!(v["table_copy"], "primary");
    assert_eq!(v["active_slot"], "BOOT-B");
    let slots = v["slots"].as_array().unwrap();
    assert_eq!(slots[0]["name"], "BOOT-A");
    assert_eq!(slots[0]["versions"], serde_json::json!(["1.0.0"]));
    assert_eq!(slots[1]["versions"], serde_json::json!(["2.0.0"]));
    assert_eq!(slots[1]["active"], true);
    assert_eq!(
        slots[1]["partuuid"].as_str().unwrap(),
        contract::disk::slot_partuuid_of_hex(&b2.root_hash)
            .unwrap()
            .to_string()
    );
    let e = &v["entries"][0];
    assert_eq!(e["file"], "cairn-2.0.0+2-1.efi");
    assert_eq!(e["tries_left"], 2);
    assert_eq!(e["tries_done"], 1);
    assert_eq!(e["blessed"], false);
    assert_eq!(e["slot"], "BOOT-B");
    assert_eq!(e["root_hash"], b2.root_hash);
    assert_eq!(v["entries"][1]["file"], "cairn-1.0.0+3.efi");
    assert_eq!(v["next_boot"]["file"], "cairn-2.0.0+2-1.efi");
    assert_eq!(v["next_boot"]["renamed_to"], "cairn-2.0.0+1-2.efi");
    assert_eq!(v["next_boot"]["slot"], "BOOT-B");
    assert!(v["next_boot"]["reason"]
        .as_str()
        .unwrap()
        .contains("highest version"));
    // The text form names the same next boot.
    let out = Command::new(env!("CARGO_BIN_EXE_cairn-installer"))
        .args(["status", "--disk", img.to_str().unwrap()])
        .output()
        .unwrap();
    assert!(String::from_utf8_lossy(&out.stdout).contains("next boot: cairn-2.0.0+2-1.efi"));
    // A disk that is not cairn's is an error, not a panic.
    let blank = fx.image("blank.img", DISK_SIZE);
    assert!(installer::status::status(&blank).is_err());
}

#[test]
fn status_verify_rehashes_each_slot_against_its_release() {
    let fx = Fixture::new();
    let b1 = bundle(&fx.path("b1"), "1.0.0");
    let img = installed_disk(&fx, "d.img", &b1);
    let run = |args: &[&str]| {
        Command::new(env!("CARGO_BIN_EXE_cairn-installer"))
            .args(["status", "--disk", img.to_str().unwrap()])
            .args(args)
            .output()
            .unwrap()
    };
    let plain: serde_json::Value = serde_json::from_slice(&run(&["--json"]).stdout).unwrap();
    assert!(plain["slots"][0].get("verity").is_none(), "{plain}");

    let out = run(&["--json", "--verify"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["slots"][0]["verity"]["state"], "ok");
    assert_eq!(v["slots"][0]["verity"]["detail"], b1.root_hash);
    assert_eq!(v["slots"][1]["verity"]["state"], "empty");

    // One data byte of BOOT-A changed: reported, named, and a failing exit.
    let slot_a = installer::status::status(&img).unwrap().slots[0].offset;
    {
        use std::io::{Read, Seek, SeekFrom, Write};
        let mut f = fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open(&img)
            .unwrap();
        let mut b = [0u8];
        f.seek(SeekFrom::Start(slot_a + 5000)).unwrap();
        f.read_exact(&mut b).unwrap();
        f.seek(SeekFrom::Start(slot_a + 5000)).unwrap();
        f.write_all(&[b[0] ^ 1]).unwrap();
    }
    let before = sha256_file(&img);
    let out = run(&["--json", "--verify"]);
    // A corrupt slot is a failed verification (exit 3), not an I/O error.
    assert_eq!(out.status.code(), Some(3));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("slot BOOT-A does not match"), "{err}");
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["slots"][0]["verity"]["state"], "corrupt");
    assert!(
        v["slots"][0]["verity"]["detail"]
            .as_str()
            .unwrap()
            .contains("BOOT-A"),
        "{v}"
    );
    let text = String::from_utf8_lossy(&run(&["--verify"]).stdout).into_owned();
    assert!(text.contains("verity BOOT-A  corrupt"), "{text}");
    // A disk that cannot be read is an I/O error (exit 4), told apart.
    let gone = Command::new(env!("CARGO_BIN_EXE_cairn-installer"))
        .args(["status", "--verify", "--disk", "/nonexistent/disk.img"])
        .output()
        .unwrap();
    assert_eq!(
        gone.status.code(),
        Some(4),
        "{}",
        String::from_utf8_lossy(&gone.stderr)
    );
    assert_eq!(sha256_file(&img), before, "status --verify writes nothing");
}

#[test]
fn upgrade_is_reproducible() {
    let (f1, f2) = (Fixture::new(), Fixture::new());
    let mut imgs = Vec::new();
    for (fx, sub) in [(&f1, "x"), (&f2, "y/z")] {
        let b1 = bundle(&fx.path(&format!("{sub}/b1")), "1.0.0");
        let b2 = bundle(&fx.path(&format!("{sub}/b2")), "2.0.0");
        let img = installed_disk(fx, "d.img", &b1);
        upgrade(&upgrade_opts(&img, &b2.dir)).unwrap();
        imgs.push(img);
    }
    assert_eq!(sha256_file(&imgs[0]), sha256_file(&imgs[1]));
}

#[test]
fn tar_bundles_with_paths_outside_the_top_level_are_refused() {
    let fx = Fixture::new();
    let b = bundle(&fx.path("b"), "2.0.0");
    // A tar whose entry climbs out of the unpack directory.
    let evil = fx.path("evil.tar");
    let mut ar = tar::Builder::new(fs::File::create(&evil).unwrap());
    for name in ["manifest.json", "manifest.json.sig"] {
        ar.append_path_with_name(b.dir.join(name), name).unwrap();
    }
    let data = b"x";
    let mut h = tar::Header::new_gnu();
    h.set_size(1);
    h.set_mode(0o644);
    // tar::Builder refuses ".." in names: write the raw name bytes.
    h.as_gnu_mut().unwrap().name[..12].copy_from_slice(b"../escape.tx");
    h.set_cksum();
    ar.append(&h, &data[..]).unwrap();
    ar.finish().unwrap();
    drop(ar);
    let img = fx.image("d.img", DISK_SIZE);
    match installer::install::install(&install_opts(&img, &evil)) {
        Err(Error::Bundle { what, .. }) => {
            assert!(what.contains("escape.tx"), "{what}")
        }
        other => panic!("unexpected {other:?}"),
    }
    assert!(!fx.path("escape.tx").exists());
    // Not a tar at all.
    let junk = fx.path("junk.tar");
    fs::write(&junk, vec![0x5a; 3000]).unwrap();
    assert!(installer::install::install(&install_opts(&img, &junk)).is_err());
}

#[test]
fn upgrade_works_from_the_backup_gpt_and_repairs_the_primary() {
    let fx = Fixture::new();
    let b1 = bundle(&fx.path("b1"), "1.0.0");
    let b2 = bundle(&fx.path("b2"), "2.0.0");
    let img = installed_disk(&fx, "d.img", &b1);
    {
        use std::io::{Seek, SeekFrom, Write};
        let mut f = fs::OpenOptions::new().write(true).open(&img).unwrap();
        f.seek(SeekFrom::Start(512 + 16)).unwrap(); // header CRC
        f.write_all(b"garbage").unwrap();
    }
    let s = installer::status::status(&img).unwrap();
    assert_eq!(s.table_copy, "backup");
    upgrade(&upgrade_opts(&img, &b2.dir)).unwrap();
    assert_eq!(
        installer::status::status(&img).unwrap().table_copy,
        "primary"
    );
    esp_clean(&img);
    assert_eq!(booted_version(&img, &[&b1, &b2]), Ok("2.0.0".into()));
}

#[test]
fn cli_upgrade_and_rollback() {
    let fx = Fixture::new();
    let b1 = bundle(&fx.path("b1"), "1.0.0");
    let b2 = bundle(&fx.path("b2"), "2.0.0");
    let img = installed_disk(&fx, "d.img", &b1);
    let bin = env!("CARGO_BIN_EXE_cairn-installer");
    let (disk, pubkey) = (img.to_str().unwrap(), fx.pubkey());
    let run = |args: &[&str]| {
        let o = Command::new(bin).args(args).output().unwrap();
        (
            o.status.success(),
            String::from_utf8_lossy(&o.stdout).into_owned(),
            String::from_utf8_lossy(&o.stderr).into_owned(),
        )
    };
    let b2dir = b2.dir.to_str().unwrap();
    let key = pubkey.to_str().unwrap();
    let (ok, out, _) = run(&[
        "upgrade", "--disk", disk, "--bundle", b2dir, "--pubkey", key,
    ]);
    assert!(ok);
    assert!(
        out.contains("upgrade 1.0.0 (BOOT-A) -> 2.0.0 into BOOT-B"),
        "{out}"
    );
    let (ok, _, err) = run(&[
        "upgrade", "--disk", disk, "--bundle", b2dir, "--pubkey", key,
    ]);
    assert!(!ok);
    assert!(
        err.contains("upgrading") && err.contains("already on the disk"),
        "{err}"
    );
    let (ok, out, _) = run(&["rollback", "--disk", disk]);
    assert!(ok);
    assert!(
        out.contains("next boot: 1.0.0 in BOOT-A (was 2.0.0)"),
        "{out}"
    );
    assert_eq!(booted_version(&img, &[&b1, &b2]), Ok("1.0.0".into()));
    // An untrusted key: the error says what was being checked.
    let other = fx.path("other.pub");
    fs::write(&other, other_key().public().to_pem()).unwrap();
    let b3 = bundle(&fx.path("b3"), "3.0.0");
    let (ok, _, err) = run(&[
        "upgrade",
        "--disk",
        disk,
        "--bundle",
        b3.dir.to_str().unwrap(),
        "--pubkey",
        other.to_str().unwrap(),
    ]);
    assert!(!ok);
    assert!(err.contains("signature or artifact check failed"), "{err}");
}

#[test]
fn rootfs_changed_after_verification_is_refused_before_activation() {
    use installer::upgrade::upgrade_disk;
    let fx = Fixture::new();
    let b1 = bundle(&fx.path("b1"), "1.0.0");
    let b2 = bundle(&fx.path("b2"), "2.0.0");
    let base = installed_disk(&fx, "base.img", &b1);
    let rootfs = b2.dir.join("rootfs.img");
    let signed = fs::read(&rootfs).unwrap();
    let mut flipped = signed.clone();
    flipped[1000] ^= 1;
    let mut grown = signed.clone();
    grown.push(0);
    for (what, bytes) in [
        ("one byte flipped", flipped),
        ("truncated", signed[..signed.len() / 2].to_vec()),
        ("one byte appended", grown),
    ] {
        let img = fx.path("d.img");
        sparse_copy(&base, &img);
        let bundle = installer::verify::open_verified(&b2.dir, &[key().public()]).unwrap();
        fs::write(&rootfs, &bytes).unwrap();
        let mut f = fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open(&img)
            .unwrap();
        match upgrade_disk(&mut f, &img, &bundle, false) {
            Err(Error::Bundle { what: why, .. }) => assert!(
                why.contains("rootfs.img changed after verification"),
                "{what}: {why}"
            ),
            other => panic!("{what}: {other:?}"),
        }
        assert_eq!(
            booted_version(&img, &[&b1, &b2]),
            Ok("1.0.0".into()),
            "{what}"
        );
        fs::write(&rootfs, &signed).unwrap();
    }
}
