//! UKI assembly checked with binutils (`objdump`, `objcopy`) and by booting
//! the result under OVMF + systemd-boot in QEMU.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use artifacts::uki::{Uki, UkiError, UkiInputs};
use sha2::{Digest, Sha256};

use testkit::fixtures::{self as boot, STUB};
use testkit::qemu::{Disk, Machine};

const OSREL: &str = "ID=cairn\nVERSION_ID=1.2.3\nIMAGE_VERSION=1.2.3\n";
const CMDLINE: &str = "console=ttyS0 panic=-1 cairn.rootfs=00ff";

fn run(cmd: &mut Command) -> Vec<u8> {
    testkit::run_bytes(cmd).unwrap()
}

/// Deterministic filler with no long runs, so misplaced bytes show up.
fn pattern(seed: &str, len: usize) -> Vec<u8> {
    let mut out = Vec::with_capacity(len + 32);
    let mut block = Sha256::digest(seed.as_bytes());
    while out.len() < len {
        out.extend_from_slice(&block);
        block = Sha256::digest(block);
    }
    out.truncate(len);
    out
}

struct Payload {
    linux: PathBuf,
    initrd: PathBuf,
}

/// Fake kernel/initrd with sizes that are not multiples of FileAlignment.
fn fake_payload(dir: &Path) -> Payload {
    let linux = dir.join("vmlinuz");
    let initrd = dir.join("initrd");
    fs::write(&linux, pattern("linux", 300_001)).unwrap();
    fs::write(&initrd, pattern("initrd", 70_003)).unwrap();
    Payload { linux, initrd }
}

fn inputs<'a>(p: &'a Payload, sbat: Option<&'a str>) -> UkiInputs<'a> {
    UkiInputs {
        stub: Path::new(STUB),
        linux: &p.linux,
        initrd: &p.initrd,
        cmdline: CMDLINE,
        osrel: OSREL,
        uname: Some("6.1.0-56-amd64"),
        sbat,
    }
}

/// (name, size, vma, file offset) rows of `objdump -h`.
fn objdump_sections(path: &Path) -> Vec<(String, u64, u64, u64)> {
    let out = run(Command::new("objdump").arg("-h").arg(path));
    let text = String::from_utf8(out).unwrap();
    text.lines()
        .filter_map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            if f.len() >= 7 && f[0].parse::<u32>().is_ok() {
                let hex = |s: &str| u64::from_str_radix(s, 16).unwrap();
                Some((f[1].to_string(), hex(f[2]), hex(f[3]), hex(f[5])))
            } else {
                None
            }
        })
        .collect()
}

#[test]
fn objdump_lists_appended_sections_back_to_back() {
    let tmp = tempfile::tempdir().unwrap();
    let p = fake_payload(tmp.path());
    let out = tmp.path().join("uki.efi");
    let report = Uki::build(&inputs(&p, None), &out).unwrap();

    let stub_rows = objdump_sections(Path::new(STUB));
    let rows = objdump_sections(&out);
    // The stub's sections are untouched and come first.
    assert_eq!(&rows[..stub_rows.len()], &stub_rows[..]);
    let added = &rows[stub_rows.len()..];
    let expect = [
        (".osrel", OSREL.len() as u64),
        (".cmdline", CMDLINE.len() as u64),
        (".uname", "6.1.0-56-amd64".len() as u64),
        (".linux", 300_001),
        (".initrd", 70_003),
    ];
    assert_eq!(added.len(), expect.len(), "{rows:#?}");
    let stub_end = stub_rows.iter().map(|r| r.2 + r.1).max().unwrap();
    let mut next_vma = stub_end.div_ceil(4096) * 4096;
    for ((name, size, vma, _), (ename, esize)) in added.iter().zip(expect) {
        assert_eq!((name.as_str(), *size), (ename, esize));
        assert_eq!(*vma, next_vma, "{name} not back to back");
        assert_eq!(vma % 4096, 0);
        next_vma = (vma + size).div_ceil(4096) * 4096;
    }
    assert_eq!(report.sections.len(), 5);
    assert_eq!(report.size, fs::metadata(&out).unwrap().len());

    let p = String::from_utf8(run(Command::new("objdump").arg("-p").arg(&out))).unwrap();
    let field = |name: &str| {
        let l = p.lines().find(|l| l.starts_with(name)).unwrap();
        u64::from_str_radix(l.split_whitespace().last().unwrap(), 16).unwrap()
    };
    let last = added.last().unwrap();
    assert_eq!(field("SizeOfImage"), (last.2 + last.1).div_ceil(512) * 512);
    let stub_p = String::from_utf8(run(Command::new("objdump").arg("-p").arg(STUB))).unwrap();
    let date = |t: &str| {
        t.lines()
            .find(|l| l.starts_with("Time/Date"))
            .unwrap()
            .to_string()
    };
    assert_eq!(
        date(&p),
        date(&stub_p),
        "COFF timestamp must stay the stub's"
    );
    let added_raw: u64 = added.iter().map(|r| r.1.div_ceil(512) * 512).sum();
    let stub_field = |name: &str| {
        let l = stub_p.lines().find(|l| l.starts_with(name)).unwrap();
        u64::from_str_radix(l.split_whitespace().last().unwrap(), 16).unwrap()
    };
    assert_eq!(
        field("SizeOfInitializedData"),
        stub_field("SizeOfInitializedData") + added_raw
    );
    let (stored, computed) = Uki::compute_checksum(&out).unwrap();
    assert_eq!(stored, computed);
    assert_eq!(field("CheckSum"), stored as u64);
}

#[test]
fn checksum_matches_the_stubs_own() {
    // The stub's linker wrote a checksum; our algorithm must reproduce it.
    let (stored, computed) = Uki::compute_checksum(Path::new(STUB)).unwrap();
    assert_ne!(stored, 0);
    assert_eq!(stored, computed);
}

#[test]
fn sections_extract_to_exact_input_bytes() {
    let tmp = tempfile::tempdir().unwrap();
    let p = fake_payload(tmp.path());
    let out = tmp.path().join("uki.efi");
    Uki::build(&inputs(&p, None), &out).unwrap();
    let cases: [(&str, Vec<u8>); 5] = [
        (".osrel", OSREL.as_bytes().to_vec()),
        (".cmdline", CMDLINE.as_bytes().to_vec()),
        (".uname", b"6.1.0-56-amd64".to_vec()),
        (".linux", fs::read(&p.linux).unwrap()),
        (".initrd", fs::read(&p.initrd).unwrap()),
    ];
    for (name, want) in cases {
        assert_eq!(
            Uki::read_section(&out, name).unwrap(),
            want,
            "reader: {name}"
        );
        let dump = tmp.path().join(format!("dump{name}"));
        run(Command::new("objcopy")
            .args(["-O", "binary", &format!("--only-section={name}")])
            .arg(&out)
            .arg(&dump));
        let got = fs::read(&dump).unwrap();
        assert_eq!(got.len(), want.len(), "objcopy size of {name}");
        assert!(got == want, "objcopy bytes of {name} differ");
    }
    // The stub's own .sbat is still there, untouched, when we add none.
    let stub_sbat = Uki::read_section(Path::new(STUB), ".sbat").unwrap();
    assert_eq!(Uki::read_section(&out, ".sbat").unwrap(), stub_sbat);
}

#[test]
fn sbat_is_merged_after_the_stubs_entries() {
    let tmp = tempfile::tempdir().unwrap();
    let p = fake_payload(tmp.path());
    let out = tmp.path().join("uki.efi");
    let ours = "sbat,1,SBAT Version,sbat,1,https://github.com/rhboot/shim/blob/main/SBAT.md\n\
                cairn,1,cairn,cairn,1.2.3,https://example.invalid/cairn\n";
    Uki::build(&inputs(&p, Some(ours)), &out).unwrap();
    let stub_sbat = Uki::read_section(Path::new(STUB), ".sbat").unwrap();
    let stub_text = String::from_utf8(stub_sbat).unwrap();
    let stub_text = stub_text.trim_end_matches('\0');
    let merged = String::from_utf8(Uki::read_section(&out, ".sbat").unwrap()).unwrap();
    assert!(merged.starts_with(stub_text), "{merged}");
    assert!(merged.ends_with("cairn,1,cairn,cairn,1.2.3,https://example.invalid/cairn\n"));
    assert_eq!(
        merged.lines().filter(|l| l.starts_with("sbat,")).count(),
        1,
        "{merged}"
    );
    let names: Vec<String> = objdump_sections(&out).into_iter().map(|r| r.0).collect();
    assert_eq!(
        names.iter().filter(|n| *n == ".sbat").count(),
        1,
        "{names:?}"
    );
    let dump = tmp.path().join("sbat.bin");
    run(Command::new("objcopy")
        .args(["-O", "binary", "--only-section=.sbat"])
        .arg(&out)
        .arg(&dump));
    assert_eq!(fs::read(&dump).unwrap(), merged.as_bytes());
    let (stored, computed) = Uki::compute_checksum(&out).unwrap();
    assert_eq!(stored, computed);
}

#[test]
fn sbat_from_caller_alone_when_stub_has_none() {
    let tmp = tempfile::tempdir().unwrap();
    let p = fake_payload(tmp.path());
    // A stub copy whose .sbat header is renamed, so it carries no SBAT.
    let mut stub = fs::read(STUB).unwrap();
    let at = stub
        .windows(8)
        .position(|w| w == b".sbat\0\0\0")
        .expect(".sbat header in the stub");
    stub[at..at + 8].copy_from_slice(b".xbat\0\0\0");
    let nosbat = tmp.path().join("nosbat.stub");
    fs::write(&nosbat, &stub).unwrap();
    let ours = "sbat,1,SBAT Version,sbat,1,https://github.com/rhboot/shim/blob/main/SBAT.md\n\
                cairn,1,cairn,cairn,1,https://example.invalid\n";
    let mut i = inputs(&p, Some(ours));
    i.stub = &nosbat;
    let out = tmp.path().join("uki.efi");
    Uki::build(&i, &out).unwrap();
    assert_eq!(Uki::read_section(&out, ".sbat").unwrap(), ours.as_bytes());
}

#[test]
fn two_builds_in_different_dirs_are_identical() {
    let a = tempfile::tempdir().unwrap();
    let b = tempfile::tempdir().unwrap();
    let pa = fake_payload(a.path());
    let pb = fake_payload(b.path());
    let oa = a.path().join("x.efi");
    let ob = b.path().join("y.efi");
    Uki::build(&inputs(&pa, Some("cairn,1,cairn,cairn,1,u\n")), &oa).unwrap();
    Uki::build(&inputs(&pb, Some("cairn,1,cairn,cairn,1,u\n")), &ob).unwrap();
    assert!(fs::read(&oa).unwrap() == fs::read(&ob).unwrap());
}

#[test]
fn not_a_pe_is_rejected() {
    let tmp = tempfile::tempdir().unwrap();
    let p = fake_payload(tmp.path());
    let junk = tmp.path().join("junk.efi");
    fs::write(&junk, b"#!/bin/sh\necho not a PE\n").unwrap();
    let out = tmp.path().join("uki.efi");
    let mut i = inputs(&p, None);
    i.stub = &junk;
    match Uki::build(&i, &out) {
        Err(UkiError::NotPe { path, .. }) => assert_eq!(path, junk),
        other => panic!("expected NotPe, got {other:?}"),
    }
    assert!(!out.exists());

    // A truncated stub: headers promise sections that are not there.
    let stub = fs::read(STUB).unwrap();
    fs::write(&junk, &stub[..0x800]).unwrap();
    let err = Uki::build(&i, &out).unwrap_err();
    assert!(matches!(err, UkiError::NotPe { .. }), "{err}");
    assert!(err.to_string().contains("runs past the end"), "{err}");
    assert!(matches!(
        Uki::read_section(&junk, ".text"),
        Err(UkiError::NotPe { .. })
    ));
}

#[test]
fn missing_inputs_name_the_file() {
    let tmp = tempfile::tempdir().unwrap();
    let p = fake_payload(tmp.path());
    let gone = tmp.path().join("no-such-kernel");
    let mut i = inputs(&p, None);
    i.linux = &gone;
    match Uki::build(&i, &tmp.path().join("uki.efi")) {
        Err(e @ UkiError::Read { .. }) => assert!(e.to_string().contains("no-such-kernel")),
        other => panic!("expected Read error, got {other:?}"),
    }
    let out = tmp.path().join("uki.efi");
    Uki::build(&inputs(&p, None), &out).unwrap();
    match Uki::read_section(&out, ".nothere") {
        Err(UkiError::NoSection { name, .. }) => assert_eq!(name, ".nothere"),
        other => panic!("expected NoSection, got {other:?}"),
    }
}

#[test]
fn stub_without_header_room_is_rejected() {
    let tmp = tempfile::tempdir().unwrap();
    let p = fake_payload(tmp.path());
    let mut stub = fs::read(STUB).unwrap();
    // Shrink SizeOfHeaders (PE32+ optional header + 60) so that the stub's
    // own 8 headers still fit but 5 more do not.
    let pe = u32::from_le_bytes(stub[0x3c..0x40].try_into().unwrap()) as usize;
    let opt = pe + 24;
    let table = opt + u16::from_le_bytes(stub[pe + 20..pe + 22].try_into().unwrap()) as usize;
    let tight = (table + 9 * 40) as u32;
    stub[opt + 60..opt + 64].copy_from_slice(&tight.to_le_bytes());
    let tight_stub = tmp.path().join("tight.stub");
    fs::write(&tight_stub, &stub).unwrap();
    let mut i = inputs(&p, None);
    i.stub = &tight_stub;
    match Uki::build(&i, &tmp.path().join("uki.efi")) {
        Err(UkiError::NoHeaderRoom {
            needed,
            limit,
            table_end,
            ..
        }) => {
            assert_eq!(needed, 13);
            assert_eq!(limit, tight as u64);
            assert_eq!(table_end, (table + 13 * 40) as u64);
        }
        other => panic!("expected NoHeaderRoom, got {other:?}"),
    }
}

#[test]
fn signed_stub_is_rejected() {
    let tmp = tempfile::tempdir().unwrap();
    let p = fake_payload(tmp.path());
    let mut stub = fs::read(STUB).unwrap();
    let pe = u32::from_le_bytes(stub[0x3c..0x40].try_into().unwrap()) as usize;
    let sec_dir = pe + 24 + 112 + 4 * 8;
    stub[sec_dir..sec_dir + 4].copy_from_slice(&0x1_0000u32.to_le_bytes());
    stub[sec_dir + 4..sec_dir + 8].copy_from_slice(&8u32.to_le_bytes());
    let signed = tmp.path().join("signed.stub");
    fs::write(&signed, &stub).unwrap();
    let mut i = inputs(&p, None);
    i.stub = &signed;
    assert!(matches!(
        Uki::build(&i, &tmp.path().join("uki.efi")),
        Err(UkiError::SignedStub { size: 8, .. })
    ));
}

// ---------------------------------------------------------------- boot test

#[test]
fn uki_boots_under_ovmf_and_systemd_boot() {
    let tmp = tempfile::tempdir().unwrap();
    let work = tmp.path();
    let kernel = boot::debian_kernel(work).unwrap();
    let initrd = boot::marker_initramfs(work).unwrap();
    let uki = work.join("uki.efi");
    Uki::build(
        &UkiInputs {
            stub: Path::new(STUB),
            linux: &kernel,
            initrd: &initrd,
            cmdline: "console=ttyS0 panic=-1 quiet",
            osrel: OSREL,
            uname: None,
            sbat: Some("cairn,1,cairn,cairn,1.2.3,https://example.invalid\n"),
        },
        &uki,
    )
    .unwrap();
    let disk = boot::esp_disk(
        work,
        &[
            (Path::new(boot::SYSTEMD_BOOT), "EFI/BOOT/BOOTX64.EFI"),
            (&uki, "EFI/Linux/cairn-1.2.3.efi"),
        ],
    )
    .unwrap();
    let mut m = Machine::new("uki", work, None).unwrap();
    m.memory_mb = 512;
    m.disks.push(Disk::virtio(&disk));
    let timeout = Duration::from_secs(240);
    let r = m
        .boot()
        .unwrap()
        .run_until(timeout, Duration::from_millis(500), |t| {
            t.contains(boot::MARKER)
        })
        .unwrap();
    eprintln!(
        "boot took {:.1} s (qemu exited by itself: {})",
        r.seconds, r.exited
    );
    assert!(
        r.console.contains(boot::MARKER),
        "marker {} not on the serial console within {timeout:?}; last 50 lines:\n{}",
        boot::MARKER,
        testkit::tail(&r.console, 50)
    );
}
