//! install: the result checked with sgdisk, fsck.fat, mtools and
//! veritysetup; reproducibility; every refusal; --dry-run; abort cleanup.

mod common;

use std::fs;
use std::path::Path;
use std::process::Command;

use artifacts::gpt;
use common::*;
use installer::install::{install, install_to, InstallOptions};
use installer::Error;

fn layout(img: &Path) -> gpt::DiskLayout {
    gpt::read_disk(&mut fs::File::open(img).unwrap())
        .expect("a GPT")
        .layout
}

fn extract(img: &Path, p: &gpt::Partition, to: &Path) {
    testkit::check::extract(img, p.offset(), p.size_bytes(), to).unwrap()
}

#[test]
fn install_writes_a_disk_the_standard_tools_accept() {
    let fx = Fixture::new();
    let b = bundle(&fx.path("b1"), "1.0.0");
    let img = fx.image("disk.img", DISK_SIZE);
    let cfg = fx.path("machine.toml");
    fs::write(&cfg, "hostname = \"n1\"\n").unwrap();
    let mut opts = install_opts(&img, &b.dir);
    opts.machine_config = Some(cfg);
    let report = install(&opts).expect("install");
    assert!(report.written);

    // GPT: sgdisk verifies both copies and names the partitions.
    let v = testkit::check::sgdisk_verify(&img).unwrap();
    assert!(v.clean, "sgdisk -v: {}", v.text);
    let l = layout(&img);
    let names: Vec<_> = l.partitions.iter().map(|p| p.name.as_str()).collect();
    assert_eq!(names, ["EFI", "BOOT-A", "BOOT-B", "STATE", "EPHEMERAL"]);
    let a = l.partition("BOOT-A").unwrap();
    // Slot A's PARTUUID is the contract's rule, and its text form is what
    // libblkid prints (partx), the form the kernel matches root=PARTUUID=.
    let want = contract::disk::slot_partuuid_of_hex(&b.root_hash)
        .unwrap()
        .to_string();
    let blkid = tool(
        "partx",
        &["-g", "-o", "UUID", "-n", "2", img.to_str().unwrap()],
    );
    assert_eq!(String::from_utf8_lossy(&blkid.stdout).trim(), want);
    assert_eq!(a.guid.to_string(), want);
    let bslot = l.partition("BOOT-B").unwrap();
    assert_ne!(bslot.guid, a.guid);

    // Slot A verifies with veritysetup against the root hash.
    let slot = fx.path("slotA");
    extract(&img, a, &slot);
    let data_blocks = b.rootfs_len / 4096 - 2; // 10 data blocks, superblock, 1 hash block
    let vs = tool(
        "veritysetup",
        &[
            "verify",
            slot.to_str().unwrap(),
            slot.to_str().unwrap(),
            &b.root_hash,
            &format!("--hash-offset={}", data_blocks * 4096),
        ],
    );
    assert!(
        vs.status.success(),
        "veritysetup: {}",
        String::from_utf8_lossy(&vs.stderr)
    );

    // STATE and EPHEMERAL start with a zeroed MiB.
    for n in ["STATE", "EPHEMERAL"] {
        let p = l.partition(n).unwrap();
        assert_eq!(
            range_sha256(&img, p.offset(), MIB),
            range_sha256(&fx.image("z", MIB), 0, MIB)
        );
    }

    // ESP: fsck.fat clean; mtools sees the files.
    let esp = fx.path("esp");
    extract(&img, l.partition("EFI").unwrap(), &esp);
    let fsck = testkit::check::fsck_fat(&esp).unwrap();
    assert!(fsck.clean(), "fsck.fat -n: {}", fsck.text);
    let e = esp.to_str().unwrap();
    let conf = tool("mtype", &["-i", e, "::/loader/loader.conf"]);
    assert_eq!(String::from_utf8_lossy(&conf.stdout), "timeout 0\n");
    let dir = tool("mdir", &["-b", "-i", e, "::/EFI/Linux"]);
    assert!(
        String::from_utf8_lossy(&dir.stdout).contains("cairn-1.0.0+3.efi"),
        "{}",
        String::from_utf8_lossy(&dir.stdout)
    );
    let copy = fx.path("boot.efi");
    let c = tool(
        "mcopy",
        &[
            "-n",
            "-i",
            e,
            "::/EFI/BOOT/BOOTX64.EFI",
            copy.to_str().unwrap(),
        ],
    );
    assert!(c.status.success());
    assert_eq!(sha256_file(&copy), sha256_file(Path::new(SYSTEMD_BOOT)));
    let m = tool("mtype", &["-i", e, "::/cairn/machine.toml"]);
    assert_eq!(String::from_utf8_lossy(&m.stdout), "hostname = \"n1\"\n");

    // And the boot chain leads to slot A's data.
    assert_eq!(booted_version(&img, &[&b]), Ok("1.0.0".to_string()));
}

#[test]
fn install_is_reproducible() {
    let (f1, f2) = (Fixture::new(), Fixture::new());
    let b1 = bundle(&f1.path("bundle"), "1.0.0");
    let b2 = bundle(&f2.path("elsewhere/bundle"), "1.0.0");
    let i1 = f1.image("a.img", DISK_SIZE);
    let i2 = f2.image("b.img", DISK_SIZE);
    install(&install_opts(&i1, &b1.dir)).unwrap();
    install(&install_opts(&i2, &b2.dir)).unwrap();
    assert_eq!(sha256_file(&i1), sha256_file(&i2));
}

#[test]
fn tar_bundles_install_like_directories() {
    let fx = Fixture::new();
    let b = bundle(&fx.path("b"), "1.0.0");
    let tarball = fx.path("b.tar");
    bundle_tar(&b, &tarball);
    // GNU tar reads what the writer made (the standard tool as referee).
    let list = tool("tar", &["-tf", tarball.to_str().unwrap()]);
    assert_eq!(
        String::from_utf8_lossy(&list.stdout)
            .lines()
            .collect::<Vec<_>>(),
        contract::bundle::FILES
    );
    let i1 = fx.image("a.img", DISK_SIZE);
    let i2 = fx.image("b.img", DISK_SIZE);
    install(&install_opts(&i1, &b.dir)).unwrap();
    install(&install_opts(&i2, &tarball)).unwrap();
    assert_eq!(sha256_file(&i1), sha256_file(&i2));
}

fn err_of(opts: &InstallOptions) -> Error {
    install(opts).expect_err("install should refuse")
}

#[test]
fn refuses_a_disk_that_is_too_small_and_says_how_much_is_needed() {
    let fx = Fixture::new();
    let b = bundle(&fx.path("b"), "1.0.0");
    let img = fx.image("small.img", 100 * MIB);
    let before = sha256_file(&img);
    match err_of(&install_opts(&img, &b.dir)) {
        Error::DiskTooSmall { size, needed, .. } => {
            assert_eq!(size, 100 * MIB);
            assert_eq!(needed, (1 + 36 + 16 + 8 + 64 + 1) * MIB);
        }
        e => panic!("unexpected {e}"),
    }
    assert_eq!(sha256_file(&img), before);
}

#[test]
fn refuses_the_install_media() {
    let fx = Fixture::new();
    let b = bundle(&fx.path("b"), "1.0.0");
    let img = fx.image("media.img", DISK_SIZE);
    let mut o = install_opts(&img, &b.dir);
    o.media = vec![img.clone()];
    assert!(matches!(err_of(&o), Error::IsInstallMedia { .. }));
    // The same file under another name (a hard link) is still the media.
    let link = fx.path("other-name.img");
    fs::hard_link(&img, &link).unwrap();
    o.disk = link;
    assert!(matches!(err_of(&o), Error::IsInstallMedia { .. }));
    // A tar bundle given as the disk itself.
    let tarball = fx.path("b.tar");
    bundle_tar(&b, &tarball);
    let o = install_opts(&tarball, &tarball);
    assert!(matches!(err_of(&o), Error::IsInstallMedia { .. }));
}

#[test]
fn refuses_the_disk_the_installer_booted_from_even_with_wipe() {
    let fx = Fixture::new();
    let b = bundle(&fx.path("b"), "1.0.0");
    let img = fx.image("usb.img", DISK_SIZE);
    let guid = "6A2B1C3D-0000-4000-8000-00000000BEEF";
    let o = tool(
        "sgdisk",
        &[
            "-n",
            "1:0:+40M",
            "-u",
            &format!("1:{guid}"),
            img.to_str().unwrap(),
        ],
    );
    assert!(o.status.success());
    // efivarfs layout: 4 attribute bytes, then UTF-16LE text with a NUL.
    let var = fx.path("LoaderDevicePartUUID");
    let mut bytes = vec![6, 0, 0, 0];
    for u in guid.to_ascii_lowercase().encode_utf16().chain([0]) {
        bytes.extend_from_slice(&u.to_le_bytes());
    }
    fs::write(&var, bytes).unwrap();
    let mut o = install_opts(&img, &b.dir);
    o.wipe = true;
    o.loader_device_var = Some(var.clone());
    let before = sha256_file(&img);
    match err_of(&o) {
        Error::IsInstallMedia { media, .. } => assert!(
            media.display().to_string().contains("PARTUUID"),
            "{}",
            media.display()
        ),
        e => panic!("unexpected {e}"),
    }
    assert_eq!(sha256_file(&img), before);
    // Another disk is fine with the same variable present.
    let other = fx.image("other.img", DISK_SIZE);
    let mut o = install_opts(&other, &b.dir);
    o.loader_device_var = Some(var);
    install(&o).unwrap();
}

/// (Disks holding what the real tools make, GPT, MBR, ext4, FAT, ISO 9660,
/// squashfs, LUKS, LVM, md and more, are refused the same way in
/// blank_disk.rs, checked against blkid.)
fn assert_refuses_then_wipes(fx: &Fixture, img: &Path, what: &str) {
    let b = bundle(&fx.path("b"), "1.0.0");
    let before = sha256_file(img);
    match err_of(&install_opts(img, &b.dir)) {
        Error::NotEmpty { found, .. } => assert!(found.contains(what), "{found}"),
        e => panic!("unexpected {e}"),
    }
    assert_eq!(sha256_file(img), before, "a refusal writes nothing");
    let mut o = install_opts(img, &b.dir);
    o.wipe = true;
    install(&o).expect("--wipe installs");
    assert_eq!(booted_version(img, &[&b]), Ok("1.0.0".into()));
}

#[test]
fn refuses_a_disk_with_only_a_backup_gpt() {
    let fx = Fixture::new();
    let img = fx.image("gpt.img", DISK_SIZE);
    assert!(tool("sgdisk", &["-n", "1:0:+10M", img.to_str().unwrap()])
        .status
        .success());
    installer::blockdev::hash_range(&mut fs::File::open(&img).unwrap(), 0, 1, "x").unwrap();
    let mut f = fs::OpenOptions::new().write(true).open(&img).unwrap();
    use std::io::{Seek, SeekFrom, Write};
    f.seek(SeekFrom::Start(0)).unwrap();
    f.write_all(&vec![0u8; 34 * 512]).unwrap();
    drop(f);
    assert_refuses_then_wipes(&fx, &img, "backup GPT");
}

#[test]
fn refuses_a_bundle_for_another_architecture() {
    let fx = Fixture::new();
    let mut o = BundleOpts::new("1.0.0");
    o.uki_machine = Some(0xAA64);
    let b = make_bundle(&fx.path("arm"), &o);
    let img = fx.image("d.img", DISK_SIZE);
    let before = sha256_file(&img);
    match err_of(&install_opts(&img, &b.dir)) {
        Error::Arch { bundle, .. } => assert!(bundle.contains("0xaa64"), "{bundle}"),
        e => panic!("unexpected {e}"),
    }
    assert_eq!(sha256_file(&img), before);
}

#[test]
fn refuses_bad_signatures_and_tampered_artifacts_before_writing() {
    let fx = Fixture::new();
    let img = fx.image("d.img", DISK_SIZE);
    let before = sha256_file(&img);
    // Signed by a key that is not trusted.
    let mut o = BundleOpts::new("1.0.0");
    o.key = other_key();
    let b = make_bundle(&fx.path("untrusted"), &o);
    assert!(matches!(
        err_of(&install_opts(&img, &b.dir)),
        Error::Verify { .. }
    ));
    // A rootfs byte changed after signing.
    let b = bundle(&fx.path("tampered"), "1.0.0");
    let p = b.dir.join("rootfs.img");
    let mut data = fs::read(&p).unwrap();
    data[100] ^= 1;
    fs::write(&p, data).unwrap();
    assert!(matches!(
        err_of(&install_opts(&img, &b.dir)),
        Error::Verify { .. }
    ));
    // A manifest without a signature.
    let b = bundle(&fx.path("unsigned"), "1.0.0");
    fs::remove_file(b.dir.join("manifest.json.sig")).unwrap();
    assert!(matches!(
        err_of(&install_opts(&img, &b.dir)),
        Error::Verify { .. }
    ));
    // A machine config that is not TOML.
    let b = bundle(&fx.path("okbundle"), "1.0.0");
    let cfg = fx.path("bad.toml");
    fs::write(&cfg, "hostname = [unclosed\n").unwrap();
    let mut o = install_opts(&img, &b.dir);
    o.machine_config = Some(cfg);
    assert!(matches!(err_of(&o), Error::MachineConfig { .. }));
    // A layout.json that is not one.
    let mut o = BundleOpts::new("1.0.0");
    o.layout = r#"{"esp":1000,"boot":1,"state":1}"#.into();
    let b = make_bundle(&fx.path("badlayout"), &o);
    assert!(matches!(
        err_of(&install_opts(&img, &b.dir)),
        Error::Bundle { .. }
    ));
    assert_eq!(sha256_file(&img), before);
}

/// Finding 3: the installer accepted any TOML while init's strict parser
/// refuses typos at boot, so a fresh install reboot-looped with no release
/// to fall back to. Every config init refuses is refused here first, with
/// init's message (file, line, column, field), and nothing is written.
#[test]
fn finding_3_machine_config_refused_at_install_as_init_would() {
    let fx = Fixture::new();
    let img = fx.image("d.img", DISK_SIZE);
    let before = sha256_file(&img);
    let b = bundle(&fx.path("b"), "1.0.0");
    for (name, text, says) in [
        // valid TOML, a typo init's parser refuses (unknown key)
        (
            "typo.toml",
            "[[service]]\nname = \"web\"\nexec = \"/usr/bin/web\"\nrestrat = \"never\"\n",
            "restrat",
        ),
        // valid TOML, a semantic error (no PATH search at boot)
        (
            "relative.toml",
            "[[service]]\nname = \"web\"\nexec = \"web\"\n",
            "absolute path",
        ),
        (
            "hostname.toml",
            "hostname = \"not a hostname\"\n",
            "hostname",
        ),
        // issue 16: a sysctl outside the set machine config may change
        (
            "sysctl.toml",
            "[sysctl]\n\"kernel.kptr_restrict\" = 0\n",
            "sysctl.\"kernel.kptr_restrict\": not in the set machine config may change",
        ),
        // issue 16: a capability beyond the documented set
        (
            "caps.toml",
            "[[service]]\nname = \"web\"\nexec = \"/usr/bin/web\"\ncapabilities = [\"CAP_SYS_ADMIN\"]\n",
            "CAP_SYS_ADMIN is not in the set a service may hold",
        ),
    ] {
        let cfg = fx.path(name);
        fs::write(&cfg, text).unwrap();
        // init's own verdict on the same bytes: refused
        let init_says = contract::machine::MachineConfig::parse(text, name).unwrap_err();
        let mut o = install_opts(&img, &b.dir);
        o.machine_config = Some(cfg);
        match err_of(&o) {
            Error::MachineConfig { what, .. } => {
                assert!(what.contains(says), "{name}: {what}");
                assert!(what.contains(&init_says.to_string()), "{name}: {what}");
            }
            other => panic!("{name}: expected a machine config refusal, got {other}"),
        }
        assert_eq!(sha256_file(&img), before, "{name}: the disk was written");
    }
    // a config init accepts installs
    let cfg = fx.path("good.toml");
    fs::write(&cfg, "hostname = \"node-1\"\n").unwrap();
    let mut o = install_opts(&img, &b.dir);
    o.machine_config = Some(cfg);
    installer::install::install(&o).unwrap();
}

#[test]
fn dry_run_prints_the_plan_and_writes_nothing() {
    let fx = Fixture::new();
    let b = bundle(&fx.path("b"), "1.0.0");
    let img = fx.image("d.img", DISK_SIZE);
    assert!(tool("mkfs.ext4", &["-q", "-F", img.to_str().unwrap()])
        .status
        .success());
    let before = sha256_file(&img);
    let out = Command::new(env!("CARGO_BIN_EXE_cairn-installer"))
        .args([
            "install",
            "--disk",
            img.to_str().unwrap(),
            "--bundle",
            b.dir.to_str().unwrap(),
        ])
        .args([
            "--pubkey",
            fx.pubkey().to_str().unwrap(),
            "--wipe",
            "--dry-run",
        ])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(text.contains("destroys: an ext2/3/4 superblock"), "{text}");
    assert!(text.contains("BOOT-A"), "{text}");
    assert!(text.contains("cairn-1.0.0+3.efi"), "{text}");
    assert!(text.contains("dry run: nothing written"), "{text}");
    assert_eq!(sha256_file(&img), before);
}

#[test]
fn cli_refusal_names_the_step_and_the_numbers() {
    let fx = Fixture::new();
    let b = bundle(&fx.path("b"), "1.0.0");
    let img = fx.image("small.img", 64 * MIB);
    let out = Command::new(env!("CARGO_BIN_EXE_cairn-installer"))
        .args([
            "install",
            "--disk",
            img.to_str().unwrap(),
            "--bundle",
            b.dir.to_str().unwrap(),
        ])
        .args(["--pubkey", fx.pubkey().to_str().unwrap()])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("installing"), "{err}");
    assert!(
        err.contains("needs at least 132120576 bytes (126 MiB)"),
        "{err}"
    );
}

#[test]
fn an_install_cut_at_any_write_leaves_no_partition_table() {
    let fx = Fixture::new();
    let b = bundle(&fx.path("b"), "1.0.0");
    let bundle = installer::verify::open_verified(&b.dir, &[key().public()]).unwrap();
    let img = fx.image("d.img", DISK_SIZE);
    // Count the writes of a whole install, then cut at every one of them;
    // after each cut the disk must have no readable table (or a complete
    // install), and the error must say install was aborted.
    let plan_img = fx.image("plan.img", DISK_SIZE);
    let mut opts = install_opts(&plan_img, &b.dir);
    opts.dry_run = true;
    let plan = install(&opts).unwrap().plan;
    let mut d = FaultDisk::new(&plan_img, None, Cut::Drop);
    install_to(&mut d, &bundle, &plan).unwrap();
    let total = d.writes;
    eprintln!("install: {total} writes, {} cut points", 2 * total);
    assert!(total > 10, "{total} writes");
    for (cut, mode) in (1..=total).flat_map(|c| [(c, Cut::Torn), (c, Cut::LoseUnflushed)]) {
        fs::remove_file(&img).unwrap();
        fx.image("d.img", DISK_SIZE);
        let mut d = FaultDisk::new(&img, Some(cut), mode);
        let _ = &mut d;
        let e = install_to(&mut d, &bundle, &plan).expect_err("cut");
        assert!(matches!(e, Error::InstallAborted { .. }), "{e}");
        // Either no table at all, or (cut inside the primary copy, after
        // the complete backup) a table describing the finished install.
        if gpt::read_disk(&mut fs::File::open(&img).unwrap()).is_ok() {
            assert_eq!(
                booted_version(&img, &[&b]),
                Ok("1.0.0".into()),
                "{mode:?} cut {cut}/{total}: a table survived but does not boot the release"
            );
        }
    }
}

#[test]
fn an_install_error_midway_clears_the_partition_table_and_says_so() {
    let fx = Fixture::new();
    let b = bundle(&fx.path("b"), "1.0.0");
    let bundle = installer::verify::open_verified(&b.dir, &[key().public()]).unwrap();
    let img = fx.image("d.img", DISK_SIZE);
    let mut opts = install_opts(&img, &b.dir);
    opts.dry_run = true;
    let plan = install(&opts).unwrap().plan;
    let mut d = FaultDisk::new(&img, None, Cut::Drop);
    install_to(&mut d, &bundle, &plan).unwrap();
    let total = d.writes;
    for cut in 1..=total {
        // Start from a completed install, so a stale table would be visible.
        let mut d = FaultDisk::new(&img, Some(cut), Cut::FailOne);
        let e = install_to(&mut d, &bundle, &plan).expect_err("failed write");
        let text = e.to_string();
        assert!(text.contains("install failed while"), "{text}");
        assert!(text.contains("the partition table was cleared"), "{text}");
        let raw = fs::read(&img).unwrap();
        assert_ne!(&raw[512..520], b"EFI PART", "write {cut}: primary GPT left");
        assert_ne!(
            &raw[raw.len() - 512..raw.len() - 504],
            b"EFI PART",
            "write {cut}: backup GPT left"
        );
        assert_ne!(&raw[510..512], &[0x55, 0xAA], "write {cut}: MBR left");
        install_to(
            &mut fs::OpenOptions::new()
                .read(true)
                .write(true)
                .open(&img)
                .unwrap(),
            &bundle,
            &plan,
        )
        .unwrap();
    }
}

#[test]
fn install_payload_uses_the_payload_keys_and_machine_config() {
    let fx = Fixture::new();
    let b = bundle(&fx.path("payload"), "1.0.0");
    let img = fx.image("d.img", DISK_SIZE);
    // No keys directory: refused before writing.
    assert!(matches!(
        installer::install::install_payload(&b.dir, &img, false),
        Err(Error::Key { .. })
    ));
    add_payload_keys(&b);
    fs::write(b.dir.join("machine.toml"), "hostname = \"p\"\n").unwrap();
    installer::install::install_payload(&b.dir, &img, false).unwrap();
    assert_eq!(booted_version(&img, &[&b]), Ok("1.0.0".into()));
    let cfg = with_esp(&img, |v| v.read_file("cairn/machine.toml").unwrap());
    assert_eq!(cfg, b"hostname = \"p\"\n");
}
