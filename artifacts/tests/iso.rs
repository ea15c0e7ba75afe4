//! Hybrid ISO writer, checked with independent tools: xorriso/osirrox,
//! isoinfo (genisoimage), sgdisk, fsck.fat, and OVMF under QEMU.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

use artifacts::fat::{format_path, minimum_size, FatFile, FatSource, FormatOptions};
use artifacts::gpt;
use artifacts::iso::{self, IsoError, IsoOptions, IsoSummary};
use testkit::fixtures::{self as support, SYSTEMD_BOOT};
use testkit::qemu::{Disk, Machine};

const EPOCH: u64 = 1_700_000_001; // 2023-11-14 22:13:21 UTC

fn pattern(len: usize, salt: u8) -> Vec<u8> {
    let mut x: u32 = 0x9E37_79B9 ^ salt as u32;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 17;
            x ^= x << 5;
            x as u8
        })
        .collect()
}

fn run(cmd: &str, args: &[&str]) -> (bool, String) {
    let out = Command::new(cmd)
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("running {cmd} (is it installed?): {e}"));
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), text)
}

fn run_ok(cmd: &str, args: &[&str]) -> String {
    let (ok, text) = run(cmd, args);
    assert!(ok, "{cmd} {args:?} failed:\n{text}");
    text
}

fn opts() -> IsoOptions {
    IsoOptions {
        volume_id: "CAIRN_INSTALL".into(),
        epoch: EPOCH,
        seed: b"iso-test-seed".to_vec(),
    }
}

/// An ESP made by our FAT writer: systemd-boot as the removable-media
/// loader and a loader.conf with a menu timeout.
fn make_esp(dir: &Path) -> PathBuf {
    let path = dir.join("esp.img");
    let size = minimum_size().div_ceil(1 << 20) * (1 << 20);
    format_path(
        &path,
        &FormatOptions {
            size,
            label: "EFI".into(),
            seed: b"esp".to_vec(),
            epoch: EPOCH,
        },
        &[
            FatFile {
                path: "EFI/BOOT/BOOTX64.EFI".into(),
                source: FatSource::Host(SYSTEMD_BOOT.into()),
            },
            FatFile {
                path: "loader/loader.conf".into(),
                source: FatSource::Bytes(b"timeout 3\n".to_vec()),
            },
        ],
    )
    .expect("ESP image");
    path
}

/// Extra files: nested directories, an empty file, a multi-block file.
fn extra_files(dir: &Path) -> Vec<(String, PathBuf)> {
    let mut v = Vec::new();
    for (iso_path, data) in [
        ("/README.TXT", b"cairn installer\n".to_vec()),
        ("/CAIRN/MANIFEST.JSN", b"{\"version\":1}\n".to_vec()),
        ("/CAIRN/IMAGES/ROOTFS.SQF", pattern(70_000, 3)),
        ("/EMPTY", Vec::new()),
    ] {
        let host = dir.join(iso_path.trim_start_matches('/').replace('/', "_"));
        fs::write(&host, data).unwrap();
        v.push((iso_path.to_string(), host));
    }
    v
}

/// An image with the standard fixture: our ESP and the extra files.
struct Fixture {
    _dir: tempfile::TempDir,
    img: PathBuf,
    esp: PathBuf,
    files: Vec<(String, PathBuf)>,
    summary: IsoSummary,
}

fn fixture() -> Fixture {
    let dir = tempfile::tempdir().unwrap();
    let esp = make_esp(dir.path());
    let files = extra_files(dir.path());
    let img = dir.path().join("cairn.iso");
    let summary = iso::write(&img, &opts(), &esp, &files).expect("write ISO");
    Fixture {
        _dir: dir,
        img,
        esp,
        files,
        summary,
    }
}

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

/// The whitespace-separated fields of the first line starting with `key`.
fn fields<'a>(report: &'a str, key: &str) -> Vec<&'a str> {
    let line = report
        .lines()
        .find(|l| l.starts_with(key))
        .unwrap_or_else(|| panic!("no {key:?} line in:\n{report}"));
    line[key.len()..].split_whitespace().collect()
}

fn hex_disk(g: gpt::Guid) -> String {
    hex::encode(g.to_disk())
}

#[test]
fn layout_numbers_are_consistent() {
    let f = fixture();
    let s = &f.summary;
    let len = fs::metadata(&f.img).unwrap().len();
    assert_eq!(len, s.size);
    assert_eq!(s.size, s.volume_blocks as u64 * 2048);
    assert_eq!(s.efi_bytes, fs::metadata(&f.esp).unwrap().len());
    assert_eq!(s.efi_block as u64 * 2048 % iso::EFI_ALIGN, 0);
    assert_eq!(s.esp_first_lba, s.efi_block as u64 * 4);
    assert_eq!((s.esp_last_lba + 1 - s.esp_first_lba) * 512, s.efi_bytes);
    // Our FAT32 minimum is over 32 MiB: the UEFI "to the end" count.
    assert!(s.efi_bytes > 65535 * 512);
    assert_eq!(s.boot_sector_count, 0);
}

#[test]
fn xorriso_reports_uefi_el_torito_entry() {
    let f = fixture();
    let r = run_ok(
        "xorriso",
        &["-indev", s(&f.img), "-report_el_torito", "plain"],
    );
    // Idx Platform Bootable Emulation Load-seg Sys-type Sectors LBA
    let img = fields(&r, "El Torito boot img :");
    assert_eq!(
        img,
        [
            "1",
            "UEFI",
            "y",
            "none",
            "0x0000",
            "0x00",
            "0",
            &f.summary.efi_block.to_string()
        ],
        "{r}"
    );
    assert_eq!(fields(&r, "El Torito img path :"), ["1", "/EFI.IMG"], "{r}");
    assert_eq!(
        fields(&r, "El Torito catalog  :"),
        [f.summary.boot_catalog_block.to_string(), "1".into()],
        "{r}"
    );
    assert!(
        !r.contains("FAILURE") && !r.contains("SORRY") && !r.contains("WARNING"),
        "{r}"
    );

    // genisoimage's reader agrees: arch 0xEF, no emulation, the same RBA.
    let d = run_ok("isoinfo", &["-d", "-i", s(&f.img)]);
    assert!(d.contains("Arch 239"), "{d}");
    assert!(d.contains("Bootid 88 (bootable)"), "{d}");
    assert!(d.contains("Boot media 0 (No Emulation Boot)"), "{d}");
    assert!(
        d.contains(&format!(
            "Bootoff {:x} {}",
            f.summary.efi_block, f.summary.efi_block
        )),
        "{d}"
    );
    assert!(
        d.contains(&format!(
            "boot catalog is in sector {}",
            f.summary.boot_catalog_block
        )),
        "{d}"
    );
}

#[test]
fn xorriso_reports_protective_mbr_and_gpt_esp() {
    let f = fixture();
    let s_ = &f.summary;
    let r = run_ok(
        "xorriso",
        &["-indev", s(&f.img), "-report_system_area", "plain"],
    );
    let sectors = s_.size / 512;
    assert_eq!(
        fields(&r, "System area summary:"),
        ["MBR", "protective-msdos-label", "cyl-align-off", "GPT"],
        "{r}"
    );
    assert_eq!(
        fields(&r, "MBR partition      :"),
        ["1", "0x00", "0xee", "1", &(sectors - 1).to_string()],
        "{r}"
    );
    assert_eq!(
        fields(&r, "GPT disk GUID      :"),
        [hex_disk(s_.disk_guid)],
        "{r}"
    );
    assert_eq!(
        fields(&r, "GPT lba range      :"),
        [
            "34",
            &(sectors - 34).to_string(),
            &(sectors - 1).to_string()
        ],
        "{r}"
    );
    assert_eq!(
        fields(&r, "GPT type GUID      :"),
        ["1", &hex_disk(gpt::ESP_TYPE)],
        "{r}"
    );
    assert_eq!(
        fields(&r, "GPT partition GUID :"),
        ["1", &hex_disk(s_.esp_guid)],
        "{r}"
    );
    assert_eq!(
        fields(&r, "GPT start and size :"),
        [
            "1",
            &s_.esp_first_lba.to_string(),
            &(s_.efi_bytes / 512).to_string()
        ],
        "{r}"
    );
    // xorriso maps the partition back onto the file holding its bytes.
    assert_eq!(fields(&r, "GPT partition path :"), ["1", "/EFI.IMG"], "{r}");
    assert!(!r.contains("GPT backup problems"), "{r}");
}

#[test]
fn sgdisk_verifies_and_shows_the_esp() {
    let f = fixture();
    let v = run_ok("sgdisk", &["-v", s(&f.img)]);
    assert!(v.contains("No problems found"), "{v}");
    let p = run_ok("sgdisk", &["-p", s(&f.img)]);
    let row = p
        .lines()
        .find(|l| l.trim_start().starts_with("1 "))
        .unwrap_or_else(|| panic!("no partition 1 in:\n{p}"));
    let cols: Vec<&str> = row.split_whitespace().collect();
    assert_eq!(cols[1], f.summary.esp_first_lba.to_string(), "{p}");
    assert_eq!(cols[2], f.summary.esp_last_lba.to_string(), "{p}");
    assert_eq!(&cols[5..], ["EF00", "EFI"], "{p}");
    assert!(
        p.contains(&format!(
            "Disk identifier (GUID): {}",
            upper(f.summary.disk_guid)
        )),
        "{p}"
    );
    let i = run_ok("sgdisk", &["-i", "1", s(&f.img)]);
    assert!(
        i.contains(&format!(
            "Partition unique GUID: {}",
            upper(f.summary.esp_guid)
        )),
        "{i}"
    );
    // Our own reader agrees and finds both header copies valid.
    let mut file = fs::File::open(&f.img).unwrap();
    let disk = gpt::read_disk(&mut file).expect("our GPT reader");
    let part = &disk.layout.partitions[0];
    assert_eq!(
        (part.first_lba, part.last_lba),
        (f.summary.esp_first_lba, f.summary.esp_last_lba)
    );
}

#[test]
fn esp_through_gpt_offsets_is_the_image_and_fsck_clean() {
    let f = fixture();
    let img = fs::read(&f.img).unwrap();
    let esp = &img
        [(f.summary.esp_first_lba * 512) as usize..((f.summary.esp_last_lba + 1) * 512) as usize];
    assert!(
        esp == fs::read(&f.esp).unwrap(),
        "ESP bytes differ from the image"
    );
    let out = f.img.with_file_name("esp-from-gpt.img");
    fs::write(&out, esp).unwrap();
    let r = run_ok("fsck.fat", &["-n", s(&out)]);
    assert!(r.contains(" files, "), "{r}");
    let listing = run_ok("mdir", &["-i", s(&out), "-/", "::/EFI/BOOT"]);
    assert!(listing.contains("BOOTX64  EFI"), "{listing}");
}

#[test]
fn xorriso_lists_and_osirrox_extracts_exact_bytes() {
    let f = fixture();
    let r = run_ok("xorriso", &["-indev", s(&f.img), "-find", "/"]);
    let listed: Vec<&str> = r
        .lines()
        .filter(|l| l.starts_with('\''))
        .map(|l| l.trim_matches('\''))
        .collect();
    assert_eq!(
        listed,
        [
            "/",
            "/CAIRN",
            "/CAIRN/IMAGES",
            "/CAIRN/IMAGES/ROOTFS.SQF",
            "/CAIRN/MANIFEST.JSN",
            "/EFI.IMG",
            "/EMPTY",
            "/README.TXT"
        ],
        "{r}"
    );
    let out = f.img.with_file_name("extracted");
    fs::create_dir(&out).unwrap();
    let mut want = vec![(iso::EFI_IMAGE_PATH.to_string(), f.esp.clone())];
    want.extend(f.files.iter().cloned());
    for (n, (iso_path, host)) in want.iter().enumerate() {
        let dest = out.join(format!("f{n}"));
        run_ok(
            "osirrox",
            &["-indev", s(&f.img), "-extract", iso_path, s(&dest)],
        );
        assert!(
            fs::read(&dest).unwrap() == fs::read(host).unwrap(),
            "{iso_path} extracted bytes differ"
        );
    }
    // genisoimage's structural checker: records, path tables.
    let v = run_ok("isovfy", &["-i", s(&f.img)]);
    assert!(v.contains("No errors found"), "{v}");
}

#[test]
fn volume_id_and_dates_come_from_options() {
    let f = fixture();
    let d = run_ok("isoinfo", &["-d", "-i", s(&f.img)]);
    assert!(d.contains("Volume id: CAIRN_INSTALL\n"), "{d}");
    assert!(
        d.contains(&format!("Volume size is: {}", f.summary.volume_blocks)),
        "{d}"
    );
    let p = run_ok("xorriso", &["-indev", s(&f.img), "-pvd_info"]);
    for key in ["Creation Time:", "Modif. Time  :", "Eff. Time    :"] {
        assert_eq!(fields(&p, key), ["2023111422132100"], "{p}");
    }
    assert_eq!(fields(&p, "Expir. Time  :"), ["0000000000000000"], "{p}");
    // Directory records carry the same instant.
    let l = run_ok("isoinfo", &["-l", "-i", s(&f.img)]);
    let records: Vec<&str> = l.lines().filter(|l| l.contains(" [ ")).collect();
    assert!(records.len() >= 8, "{l}");
    for rec in records {
        assert!(rec.contains("Nov 14 2023"), "{rec}");
    }
}

#[test]
fn small_esp_gets_an_exact_sector_count() {
    let dir = tempfile::tempdir().unwrap();
    let esp = dir.path().join("small.img");
    run_ok("mkfs.fat", &["-C", s(&esp), "4096"]);
    let img = dir.path().join("small.iso");
    let sum = iso::write(&img, &opts(), &esp, &[]).unwrap();
    assert_eq!(sum.boot_sector_count, 8192);
    let r = run_ok(
        "xorriso",
        &["-indev", s(&img), "-report_el_torito", "plain"],
    );
    let fields = fields(&r, "El Torito boot img :");
    assert_eq!(fields[6], "8192", "{r}");
    assert_eq!(fields[7], sum.efi_block.to_string(), "{r}");
    let v = run_ok("sgdisk", &["-v", s(&img)]);
    assert!(v.contains("No problems found"), "{v}");
}

#[test]
fn large_directory_spills_over_blocks() {
    let dir = tempfile::tempdir().unwrap();
    let esp = dir.path().join("small.img");
    run_ok("mkfs.fat", &["-C", s(&esp), "1024"]);
    let mut files = Vec::new();
    // 80 records of 64 bytes: three blocks for the root directory.
    for i in 0..80 {
        let host = dir.path().join(format!("f{i}"));
        fs::write(&host, format!("file {i}\n")).unwrap();
        files.push((format!("/FILE_WITH_A_LONG_NAME_{i:03}.TXT"), host));
    }
    let img = dir.path().join("many.iso");
    iso::write(&img, &opts(), &esp, &files).unwrap();
    let r = run_ok("xorriso", &["-indev", s(&img), "-find", "/", "-type", "f"]);
    assert_eq!(
        r.lines().filter(|l| l.starts_with("'/FILE_")).count(),
        80,
        "{r}"
    );
    let v = run_ok("isovfy", &["-i", s(&img)]);
    assert!(v.contains("No errors found"), "{v}");
    for i in [0usize, 31, 79] {
        let dest = dir.path().join("x");
        let _ = fs::remove_file(&dest);
        run_ok(
            "osirrox",
            &[
                "-indev",
                s(&img),
                "-extract",
                &format!("/FILE_WITH_A_LONG_NAME_{i:03}.TXT"),
                s(&dest),
            ],
        );
        assert_eq!(fs::read_to_string(&dest).unwrap(), format!("file {i}\n"));
    }
}

/// The MBR, both GPT headers and entry arrays of the standard fixture,
/// recorded before the ISO writer moved onto the shared GPT encoder. They
/// depend only on sizes and the seed, not on the systemd-boot binary.
#[test]
fn gpt_areas_keep_their_recorded_bytes() {
    use sha2::Digest;
    let f = fixture();
    let img = fs::read(&f.img).unwrap();
    let front = &img[..(2 + gpt::TABLE_SECTORS as usize) * 512];
    let back = &img[img.len() - (gpt::TABLE_SECTORS as usize + 1) * 512..];
    eprintln!(
        "whole ISO sha256 {} ({} bytes)",
        hex::encode(sha2::Sha256::digest(&img)),
        img.len()
    );
    assert_eq!(hex::encode(sha2::Sha256::digest(front)), FRONT_SHA256);
    assert_eq!(hex::encode(sha2::Sha256::digest(back)), BACK_SHA256);
}

const FRONT_SHA256: &str = "5e7008e586049fd306d088912538558875dd422907e53f45b5e7f5d646c87ff3";
const BACK_SHA256: &str = "e7e2f33246b25352cf6c339627042425483c316ef17d3d60afa69a10bd69b718";

#[test]
fn reproducible_across_directories() {
    let a = fixture();
    let b = fixture();
    assert_ne!(a.img.parent(), b.img.parent());
    assert_eq!(a.summary, b.summary);
    assert!(
        fs::read(&a.img).unwrap() == fs::read(&b.img).unwrap(),
        "two runs differ"
    );
    // The order the caller lists extra files in does not matter.
    let dir = tempfile::tempdir().unwrap();
    let reversed: Vec<_> = a.files.iter().rev().cloned().collect();
    let rev_img = dir.path().join("reversed.iso");
    iso::write(&rev_img, &opts(), &a.esp, &reversed).unwrap();
    assert!(
        fs::read(&a.img).unwrap() == fs::read(&rev_img).unwrap(),
        "file order changed the image"
    );
    // The seed only moves the GUIDs (and the CRCs over them).
    let dir = tempfile::tempdir().unwrap();
    let other = dir.path().join("other.iso");
    let mut o = opts();
    o.seed = b"another seed".to_vec();
    let s2 = iso::write(&other, &o, &a.esp, &a.files).unwrap();
    assert_ne!(s2.disk_guid, a.summary.disk_guid);
    assert_ne!(s2.esp_guid, a.summary.esp_guid);
    assert_eq!(s2.size, a.summary.size);
}

fn write_err(o: &IsoOptions, esp: &Path, files: &[(String, PathBuf)]) -> (IsoError, bool) {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("bad.iso");
    let e = iso::write(&out, o, esp, files).expect_err("bad input accepted");
    (e, out.exists())
}

#[test]
fn bad_inputs_are_refused_before_writing() {
    let dir = tempfile::tempdir().unwrap();
    let esp = dir.path().join("esp.img");
    run_ok("mkfs.fat", &["-C", s(&esp), "1024"]);
    let file = dir.path().join("data");
    fs::write(&file, b"x").unwrap();

    let missing = dir.path().join("nope.img");
    let (e, created) = write_err(&opts(), &missing, &[]);
    assert!(
        matches!(&e, IsoError::Source { path, .. } if *path == missing),
        "{e}"
    );
    assert!(e.to_string().contains("nope.img"), "{e}");
    assert!(!created);

    let (e, _) = write_err(&opts(), dir.path(), &[]);
    assert!(matches!(e, IsoError::NotAFile { .. }), "{e}");

    let odd = dir.path().join("odd.img");
    fs::write(&odd, vec![0u8; 1000]).unwrap();
    let (e, _) = write_err(&opts(), &odd, &[]);
    assert!(
        matches!(e, IsoError::EfiImageSize { size: 1000, .. }),
        "{e}"
    );

    for (id, needle) in [
        ("A".repeat(33), "33 characters"),
        ("cairn".to_string(), "'c'"),
        ("CAIRN-1".to_string(), "'-'"),
        (String::new(), "empty"),
    ] {
        let mut o = opts();
        o.volume_id = id.clone();
        let (e, created) = write_err(&o, &esp, &[]);
        assert!(matches!(e, IsoError::BadVolumeId { .. }), "{id:?}: {e}");
        assert!(e.to_string().contains(needle), "{id:?}: {e}");
        assert!(!created);
    }

    let mut o = opts();
    o.epoch = 6_000_000_000; // year 2160
    let (e, _) = write_err(&o, &esp, &[]);
    assert!(
        matches!(e, IsoError::EpochOutOfRange { year: 2160, .. }),
        "{e}"
    );

    let f = |p: &str| (p.to_string(), file.clone());
    for path in [
        "/readme.txt",
        "/A.B.C",
        "/A/",
        "//A",
        "/A-B",
        "/THIRTY_ONE_CHARACTERS_LONG_.TXT",
        "/1/2/3/4/5/6/7/8/FILE",
    ] {
        let (e, created) = write_err(&opts(), &esp, &[f(path)]);
        assert!(
            matches!(&e, IsoError::BadPath { path: p, .. } if p == path),
            "{path}: {e}"
        );
        assert!(!created);
    }
    for files in [
        vec![f("/EFI.IMG")],
        vec![f("/A"), f("/A")],
        vec![f("/A"), f("/A/B")],
        vec![f("/A/B"), f("/A")],
    ] {
        let (e, _) = write_err(&opts(), &esp, &files);
        assert!(
            matches!(e, IsoError::DuplicatePath { .. }),
            "{files:?}: {e}"
        );
    }
    let (e, created) = write_err(&opts(), &esp, &[("/X".into(), missing.clone())]);
    assert!(
        matches!(&e, IsoError::Source { path, .. } if *path == missing),
        "{e}"
    );
    assert!(!created);

    // Over 4 GiB needs multi-extent files, which we do not write. Sparse:
    // the size is all that is looked at before refusing.
    let huge = dir.path().join("huge");
    fs::File::create(&huge)
        .unwrap()
        .set_len(u32::MAX as u64 + 1)
        .unwrap();
    let (e, created) = write_err(&opts(), &esp, &[("/HUGE".into(), huge.clone())]);
    assert!(
        matches!(&e, IsoError::FileTooLarge { path, size, .. } if *path == huge && *size == 1 << 32),
        "{e}"
    );
    assert!(!created);

    // procfs reports size 0 for files that have content: the size changed
    // between layout and copy, and the half-written image is removed.
    let status = PathBuf::from("/proc/self/status");
    let (e, created) = write_err(&opts(), &esp, &[("/STATUS".into(), status.clone())]);
    assert!(
        matches!(&e, IsoError::SourceChanged { path, expected: 0, .. } if *path == status),
        "{e}"
    );
    assert!(!created, "partial image left behind");

    let e = iso::write(&dir.path().join("no/such/dir/x.iso"), &opts(), &esp, &[])
        .expect_err("unwritable output");
    assert!(matches!(e, IsoError::Write { offset: 0, .. }), "{e}");
}

// --- Booting under OVMF -------------------------------------------------

/// One QEMU at a time: TCG is CPU-bound and the machine is shared.
static QEMU: std::sync::Mutex<()> = std::sync::Mutex::new(());

#[derive(Clone, Copy, Debug)]
enum Medium {
    Cdrom,
    UsbStick,
}

impl Medium {
    /// How OVMF names the device in its boot messages.
    fn device(self) -> &'static str {
        match self {
            Medium::Cdrom => "DVD-ROM",
            Medium::UsbStick => "USB HARDDRIVE",
        }
    }
}

fn failed_to_load(console: &str, medium: Medium) -> bool {
    console
        .lines()
        .any(|l| l.contains("BdsDxe: failed to load") && l.contains(medium.device()))
}

/// systemd-boot's countdown has reached its last second.
const COUNTDOWN_END: &str = "Boot in 1 s.";

/// Boots `img` under OVMF (TCG) until the console shows `until` or the
/// firmware fails to load from `medium` (then kills QEMU), QEMU exits, or
/// 90 s pass. Returns the serial console, where OVMF mirrors the text
/// console.
fn boot(img: &Path, medium: Medium, until: &str) -> String {
    let _one = QEMU.lock().unwrap_or_else(|e| e.into_inner());
    let dir = img.parent().unwrap();
    let mut m = Machine::new(&format!("{medium:?}"), dir, None).expect("OVMF vars (package ovmf)");
    m.memory_mb = 512;
    m.disks.push(match medium {
        Medium::Cdrom => Disk::cdrom(img),
        Medium::UsbStick => Disk::usb(img),
    });
    let b = m
        .boot()
        .expect("qemu-system-x86_64 (package qemu-system-x86)");
    // A failed load of our medium is final (what follows is network boot and the shell).
    b.run_until(
        std::time::Duration::from_secs(90),
        std::time::Duration::from_millis(250),
        |console| console.contains(until) || failed_to_load(console, medium),
    )
    .unwrap()
    .console
}

fn tail(console: &str) -> String {
    let clean = console.replace('\x1b', "^[");
    let lines: Vec<&str> = clean.lines().collect();
    lines[lines.len().saturating_sub(50)..].join("\n")
}

/// systemd-boot started from `device` and read our loader.conf: the menu
/// with its one automatic entry and the 3 s countdown from `timeout 3`.
fn assert_systemd_boot(console: &str, device: &str) {
    let started = console
        .find("BdsDxe: starting Boot")
        .map(|i| &console[i..])
        .filter(|rest| rest.lines().next().unwrap_or("").contains(device))
        .unwrap_or_else(|| {
            panic!(
                "firmware did not start {device:?}; last console lines:\n{}",
                tail(console)
            )
        });
    for text in ["Reboot Into Firmware Interface", "Boot in 3 s."] {
        assert!(
            started.contains(text),
            "no {text:?} after starting {device:?}; last console lines:\n{}",
            tail(console)
        );
    }
}

#[test]
fn ovmf_boots_systemd_boot_from_cdrom() {
    let f = fixture();
    let console = boot(&f.img, Medium::Cdrom, COUNTDOWN_END);
    assert_systemd_boot(&console, Medium::Cdrom.device());
}

#[test]
fn ovmf_boots_systemd_boot_from_usb_stick() {
    let f = fixture();
    let console = boot(&f.img, Medium::UsbStick, COUNTDOWN_END);
    assert_systemd_boot(&console, Medium::UsbStick.device());
}

/// The control for the boot tests: a CD without the El Torito boot record
/// must not reach systemd-boot, so the detection above can fail.
#[test]
fn ovmf_cdrom_without_el_torito_does_not_boot() {
    let f = fixture();
    let patched = without_boot_record(&f.img);
    let console = boot(&patched, Medium::Cdrom, COUNTDOWN_END);
    assert!(
        failed_to_load(&console, Medium::Cdrom) && !console.contains("Boot in 3 s."),
        "expected a failed CD load and no systemd-boot; last console lines:\n{}",
        tail(&console)
    );
}

fn without_boot_record(iso: &Path) -> PathBuf {
    let mut img = fs::read(iso).unwrap();
    assert_eq!(&img[17 * 2048 + 1..17 * 2048 + 6], b"CD001");
    img[17 * 2048..18 * 2048].fill(0);
    let patched = iso.with_file_name("no-eltorito.iso");
    fs::write(&patched, img).unwrap();
    let r = run_ok(
        "xorriso",
        &["-indev", s(&patched), "-report_el_torito", "plain"],
    );
    assert!(!r.contains("El Torito boot img"), "{r}");
    patched
}

/// OVMF also finds El Torito on a disk, so the plain USB boot does not prove
/// the GPT works: with the boot record descriptor zeroed, only the GPT can
/// lead the firmware to the ESP.
#[test]
fn ovmf_boots_usb_stick_through_gpt_alone() {
    let f = fixture();
    let patched = without_boot_record(&f.img);
    let console = boot(&patched, Medium::UsbStick, COUNTDOWN_END);
    assert_systemd_boot(&console, Medium::UsbStick.device());
}

/// isoinfo reads the L path table; its rows must match the directory
/// records' extents. The M table must be the same records big-endian.
#[test]
fn path_tables_match_directories() {
    let f = fixture();
    let listing = run_ok("isoinfo", &["-l", "-i", s(&f.img)]);
    // "d---------   0    0    0   2048 Nov 14 2023 [     22 02]  CAIRN "
    let extent_of = |name: &str| -> u32 {
        listing
            .lines()
            .find(|l| l.starts_with('d') && l.trim_end().ends_with(&format!("]  {name}")))
            .and_then(|l| l.split('[').nth(1))
            .and_then(|r| r.split_whitespace().next())
            .unwrap_or_else(|| panic!("no directory {name} in:\n{listing}"))
            .parse()
            .unwrap()
    };
    let root = extent_of(".");
    let p = run_ok("isoinfo", &["-p", "-i", s(&f.img)]);
    let rows: Vec<Vec<String>> = p
        .lines()
        .skip_while(|l| !l.starts_with("Path table starts"))
        .skip(1)
        .map(|l| l.split_whitespace().map(String::from).collect())
        .collect();
    let want = [
        ("1:", 1, root, None),
        ("2:", 1, extent_of("CAIRN"), Some("CAIRN")),
        ("3:", 2, extent_of("IMAGES"), Some("IMAGES")),
    ];
    assert_eq!(rows.len(), want.len(), "{p}");
    for (row, (n, parent, extent, name)) in rows.iter().zip(want) {
        assert_eq!(row[0], n, "{p}");
        assert_eq!(row[1], parent.to_string(), "{p}");
        assert_eq!(u32::from_str_radix(&row[2], 16).unwrap(), extent, "{p}");
        assert_eq!(row.get(3).map(String::as_str), name, "{p}");
    }

    let img = fs::read(&f.img).unwrap();
    let pvd = &img[16 * 2048..17 * 2048];
    let size = u32::from_le_bytes(pvd[132..136].try_into().unwrap()) as usize;
    let l_at = u32::from_le_bytes(pvd[140..144].try_into().unwrap()) as usize * 2048;
    let m_at = u32::from_be_bytes(pvd[148..152].try_into().unwrap()) as usize * 2048;
    let (l, m) = (&img[l_at..l_at + size], &img[m_at..m_at + size]);
    let mut at = 0;
    while at < size {
        let id_len = l[at] as usize;
        let len = 8 + id_len + id_len % 2;
        let (a, b) = (&l[at..at + len], &m[at..at + len]);
        assert_eq!(a[..2], b[..2]);
        let swapped: Vec<u8> = a[2..6].iter().rev().copied().collect();
        assert_eq!(b[2..6], swapped[..], "M table extent at {at}");
        assert_eq!(b[6..8], [a[7], a[6]], "M table parent at {at}");
        assert_eq!(a[8..], b[8..]);
        at += len;
    }
}

/// The whole chain from the ISO: firmware -> systemd-boot -> a UKI (pinned
/// Debian kernel, marker initramfs) read from the ESP inside the ISO -> the
/// marker on the console, once as a CD and once as a USB stick.
#[test]
fn ovmf_boots_uki_from_iso_to_userspace() {
    let dir = tempfile::tempdir().unwrap();
    let work = dir.path();
    let kernel = support::debian_kernel(work).unwrap();
    let initrd = support::marker_initramfs(work).unwrap();
    let uki = work.join("cairn.efi");
    artifacts::uki::Uki::build(
        &artifacts::uki::UkiInputs {
            stub: Path::new(support::STUB),
            linux: &kernel,
            initrd: &initrd,
            cmdline: "console=ttyS0 panic=-1 quiet",
            osrel: "ID=cairn\nVERSION_ID=1\n",
            uname: None,
            sbat: None,
        },
        &uki,
    )
    .expect("UKI");
    let esp = work.join("esp.img");
    let size = minimum_size().div_ceil(1 << 20) * (1 << 20);
    format_path(
        &esp,
        &FormatOptions {
            size,
            label: "EFI".into(),
            seed: b"esp".to_vec(),
            epoch: EPOCH,
        },
        &[
            FatFile {
                path: "EFI/BOOT/BOOTX64.EFI".into(),
                source: FatSource::Host(SYSTEMD_BOOT.into()),
            },
            FatFile {
                path: "EFI/Linux/cairn-1.efi".into(),
                source: FatSource::Host(uki.clone()),
            },
            FatFile {
                path: "loader/loader.conf".into(),
                source: FatSource::Bytes(b"timeout 0\n".to_vec()),
            },
        ],
    )
    .expect("ESP image");
    let img = work.join("installer.iso");
    iso::write(&img, &opts(), &esp, &[]).expect("write ISO");
    for medium in [Medium::Cdrom, Medium::UsbStick] {
        let started = std::time::Instant::now();
        let console = boot(&img, medium, support::MARKER);
        eprintln!(
            "{medium:?}: marker after {:.1} s",
            started.elapsed().as_secs_f64()
        );
        assert!(
            console.contains(support::MARKER),
            "{medium:?}: marker {} not on the console; last console lines:\n{}",
            support::MARKER,
            tail(&console)
        );
    }
}

/// A GUID as sgdisk prints it: upper case (ours is lower case, as Linux
/// and libblkid print it).
fn upper(g: artifacts::gpt::Guid) -> String {
    g.to_string().to_uppercase()
}
