//! init's view of disks: GPT read through artifacts' validating reader
//! (backup fallback included), slot lookup and disk choice, against disk
//! images partitioned by `sgdisk` and slots formatted by `veritysetup` (the
//! standard tools).

use artifacts::gpt::{Guid, HeaderCopy};
use cairn_init::disks::{self, Disk, TableError};
use cairn_init::slot::{self, Found};
use cairn_init::stage1::{wait_for_slot, DiskRule};
use contract::cmdline::{parse_hex, Verity};
use std::fs::{File, OpenOptions};
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

const ROOT_TYPE: &str = "4f68bce3-e8cd-4db1-96e7-fbcaf984b709";
const DATA_BLOCKS: u64 = 64;
const SALT: &str = "5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a";
const ESP_UUID: &str = "eeeeeeee-0000-0000-0000-000000000001";

fn run(cmd: &str, args: &[&str]) -> String {
    let out = Command::new(cmd)
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("{cmd} must be installed (gdisk / cryptsetup-bin): {e}"));
    assert!(
        out.status.success(),
        "{cmd} {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// A slot image (deterministic data + verity) and its root hash.
fn slot_image(dir: &Path) -> (PathBuf, [u8; 32]) {
    let p = dir.join("slot.img");
    let data: Vec<u8> = (0..DATA_BLOCKS * 4096)
        .map(|i| (i * 7 % 251) as u8)
        .collect();
    std::fs::write(&p, &data).unwrap();
    let ps = p.to_str().unwrap();
    let out = run(
        "veritysetup",
        &[
            "format",
            ps,
            ps,
            &format!("--hash-offset={}", DATA_BLOCKS * 4096),
            &format!("--data-blocks={DATA_BLOCKS}"),
            &format!("--salt={SALT}"),
        ],
    );
    let hash = out
        .lines()
        .find_map(|l| l.strip_prefix("Root hash:"))
        .expect("root hash in veritysetup output")
        .trim();
    (p, parse_hex::<32>("root", hash).unwrap())
}

fn verity() -> Verity {
    Verity {
        data_blocks: DATA_BLOCKS,
        salt: parse_hex::<32>("s", SALT).unwrap(),
    }
}

/// 64 MiB disk `dir/disk.img` with the five partitions of design.md.
fn disk(dir: &Path, slot_a_uuid: &str) -> PathBuf {
    disk_named(dir, "disk.img", slot_a_uuid, ESP_UUID)
}

/// The same at `dir/name`, its ESP's PARTUUID `esp_uuid`. Every GUID is
/// given, none random.
fn disk_named(dir: &Path, name: &str, slot_a_uuid: &str, esp_uuid: &str) -> PathBuf {
    let p = dir.join(name);
    File::create(&p).unwrap().set_len(64 << 20).unwrap();
    run(
        "sgdisk",
        &[
            "-o",
            "-U",
            "11111111-2222-3333-4444-555555555555",
            "-n",
            "1:2048:+8M",
            "-t",
            "1:ef00",
            "-c",
            "1:EFI",
            "-u",
            &format!("1:{esp_uuid}"),
            "-n",
            "2:0:+16M",
            "-t",
            &format!("2:{ROOT_TYPE}"),
            "-c",
            "2:BOOT-A",
            "-u",
            &format!("2:{slot_a_uuid}"),
            "-n",
            "3:0:+16M",
            "-t",
            &format!("3:{ROOT_TYPE}"),
            "-c",
            "3:BOOT-B",
            "-u",
            "3:aaaaaaaa-0000-0000-0000-000000000003",
            "-n",
            "4:0:+8M",
            "-c",
            "4:STATE",
            "-u",
            "4:aaaaaaaa-0000-0000-0000-000000000004",
            "-n",
            "5:0:0",
            "-c",
            "5:EPHEMERAL",
            "-u",
            "5:aaaaaaaa-0000-0000-0000-000000000005",
            p.to_str().unwrap(),
        ],
    );
    p
}

/// An image file at `dir/name` as a 512-byte-sector disk `read_table` opens.
fn image_disk(name: &str) -> Disk {
    Disk {
        name: name.into(),
        sector_size: 512,
        partitions: vec![],
    }
}

fn put(disk: &Path, offset: u64, data: &[u8]) {
    let mut f = OpenOptions::new().write(true).open(disk).unwrap();
    f.seek(SeekFrom::Start(offset)).unwrap();
    f.write_all(data).unwrap();
}

#[test]
fn reads_what_sgdisk_wrote() {
    let dir = tempfile::tempdir().unwrap();
    let d = disk(dir.path(), "01234567-89ab-cdef-0123-456789abcdef");
    let read = disks::read_table(dir.path(), &image_disk("disk.img")).unwrap();
    assert_eq!(read.used, HeaderCopy::Primary);
    let t = read.layout;
    assert_eq!(
        t.disk_guid,
        Guid::parse("11111111-2222-3333-4444-555555555555").unwrap()
    );
    let names: Vec<_> = t
        .partitions
        .iter()
        .map(|p| (p.slot + 1, p.name.as_str()))
        .collect();
    assert_eq!(
        names,
        [
            (1, "EFI"),
            (2, "BOOT-A"),
            (3, "BOOT-B"),
            (4, "STATE"),
            (5, "EPHEMERAL")
        ]
    );
    for p in &t.partitions {
        // cross-check every field with sgdisk's own view
        let info = run(
            "sgdisk",
            &["-i", &(p.slot + 1).to_string(), d.to_str().unwrap()],
        );
        let field = |k: &str| {
            info.lines()
                .find_map(|l| l.strip_prefix(k))
                .map(|v| v.split_whitespace().next().unwrap().to_lowercase())
                .unwrap()
        };
        assert_eq!(
            field("Partition unique GUID: "),
            p.guid.to_string().to_lowercase()
        );
        assert_eq!(
            field("Partition GUID code: "),
            p.type_guid.to_string().to_lowercase()
        );
        assert_eq!(field("First sector: "), p.first_lba.to_string());
        assert_eq!(field("Last sector: "), p.last_lba.to_string());
    }
    assert_eq!(
        t.partition("BOOT-A").unwrap().type_guid,
        Guid::parse(ROOT_TYPE).unwrap()
    );
    assert_eq!(t.partition("STATE").unwrap().slot, 3);
    assert!(t.partition("boot-a").is_none());
}

#[test]
fn slot_found_by_partuuid_from_root_hash() {
    let dir = tempfile::tempdir().unwrap();
    let (slot_img, root) = slot_image(dir.path());
    let uuid = slot::partuuid(&root).to_string().to_lowercase();
    let d = disk(dir.path(), &uuid);
    let t = disks::read_table(dir.path(), &image_disk("disk.img"))
        .unwrap()
        .layout;
    let mut f = File::open(&d).unwrap();
    let (p, how) = slot::find(&mut f, &t, &root, &verity()).unwrap();
    assert_eq!(
        (p.slot + 1, p.name.as_str(), how),
        (2, "BOOT-A", Found::ByPartUuid)
    );
    // sgdisk agrees this is the partition with that PARTUUID
    let info = run("sgdisk", &["-i", "2", d.to_str().unwrap()]);
    assert!(info.to_lowercase().contains(&uuid), "{info}");
    drop(slot_img);
}

#[test]
fn slot_falls_back_to_label_and_superblock() {
    let dir = tempfile::tempdir().unwrap();
    let (slot_img, root) = slot_image(dir.path());
    let d = disk(dir.path(), "bbbbbbbb-0000-0000-0000-000000000002");
    let t = disks::read_table(dir.path(), &image_disk("disk.img"))
        .unwrap()
        .layout;
    let b = t.partition("BOOT-B").unwrap().offset();
    put(&d, b, &std::fs::read(&slot_img).unwrap());
    let salt = parse_hex::<32>("s", SALT).unwrap();
    let v = verity();
    let mut f = File::open(&d).unwrap();
    let (p, how) = slot::find(&mut f, &t, &root, &v).unwrap();
    assert_eq!(
        (p.name.as_str(), how),
        ("BOOT-B", Found::ByLabelAndSuperblock)
    );
    // a different salt or size is another release: no match
    let mut other = salt;
    other[0] ^= 1;
    assert!(slot::find(
        &mut f,
        &t,
        &root,
        &Verity {
            data_blocks: DATA_BLOCKS,
            salt: other
        }
    )
    .is_none());
    assert!(slot::find(
        &mut f,
        &t,
        &root,
        &Verity {
            data_blocks: DATA_BLOCKS + 1,
            salt
        }
    )
    .is_none());
    // data_blocks pointing past the partition end is not read
    assert!(slot::find(
        &mut f,
        &t,
        &root,
        &Verity {
            data_blocks: 1 << 40,
            salt
        }
    )
    .is_none());
}

#[test]
fn unreadable_tables_are_refused_naming_disk_and_copies() {
    let dir = tempfile::tempdir().unwrap();
    let d = disk(dir.path(), "01234567-89ab-cdef-0123-456789abcdef");
    let pristine = std::fs::read(&d).unwrap();
    let read = |bytes: &[u8]| {
        std::fs::write(&d, bytes).unwrap();
        disks::read_table(dir.path(), &image_disk("disk.img"))
    };

    // Both copies torn: no table, and the message says why for each.
    let mut b = pristine.clone();
    b[512 + 40] ^= 0xff; // primary header, under its CRC
    let last = b.len() - 512;
    b[last + 40] ^= 0xff; // backup header, likewise
    let e = read(&b).unwrap_err().to_string();
    assert!(
        e.starts_with(
            "disk.img: no valid GPT: primary: primary GPT header at offset 512: header CRC32"
        ),
        "{e}"
    );
    assert!(
        e.contains(&format!(
            "backup: backup GPT header at offset {last}: header CRC32"
        )),
        "{e}"
    );

    // An absurd entry count is refused before allocating, in either copy.
    let mut b = pristine.clone();
    for at in [512, last] {
        b[at + 80..at + 84].copy_from_slice(&u32::MAX.to_le_bytes());
        b[at + 16..at + 20].fill(0);
        let crc = crc32fast::hash(&b[at..at + 92]);
        b[at + 16..at + 20].copy_from_slice(&crc.to_le_bytes());
    }
    let e = read(&b).unwrap_err().to_string();
    assert!(e.contains("entry count: 4294967295"), "{e}");

    // No table at all.
    let e = read(&vec![0u8; 1 << 20]).unwrap_err().to_string();
    assert!(e.starts_with("disk.img: protective MBR at offset 0"), "{e}");

    // cairn's tables are in 512-byte sectors: a 4Kn disk is not read as one.
    std::fs::write(&d, &pristine).unwrap();
    let e = disks::read_table(
        dir.path(),
        &Disk {
            sector_size: 4096,
            ..image_disk("disk.img")
        },
    )
    .unwrap_err();
    assert!(
        matches!(e, TableError::SectorSize { size: 4096, .. }),
        "{e}"
    );
    let e = disks::read_table(dir.path(), &image_disk("absent")).unwrap_err();
    assert!(matches!(e, TableError::Open { .. }), "{e}");

    let mut sink = Vec::new();
    File::open(&d).unwrap().read_to_end(&mut sink).unwrap();
    assert_eq!(sink, pristine, "reading must not modify the image");
}

/// A fake /sys/block and /dev holding `disk0`.. (the given images, five
/// partitions each in sysfs), then one more disk with no partition table,
/// and a loop device that must be ignored.
fn fake_machine(dir: &Path, images: &[&Path]) -> (PathBuf, PathBuf) {
    let sys = dir.join("sys_block");
    let dev = dir.join("dev");
    std::fs::create_dir_all(&dev).unwrap();
    let empty = format!("disk{}", images.len());
    for name in [empty.as_str(), "loop0"] {
        let q = sys.join(name).join("queue");
        std::fs::create_dir_all(&q).unwrap();
        std::fs::write(q.join("logical_block_size"), "512\n").unwrap();
    }
    std::fs::write(dev.join(&empty), vec![0u8; 8192]).unwrap();
    for (n, img) in images.iter().enumerate() {
        let name = format!("disk{n}");
        let q = sys.join(&name).join("queue");
        std::fs::create_dir_all(&q).unwrap();
        std::fs::write(q.join("logical_block_size"), "512\n").unwrap();
        for i in 1..=5 {
            let p = sys.join(format!("{name}/{name}p{i}"));
            std::fs::create_dir_all(&p).unwrap();
            std::fs::write(p.join("partition"), format!("{i}\n")).unwrap();
        }
        std::os::unix::fs::symlink(img, dev.join(&name)).unwrap();
    }
    (sys, dev)
}

#[test]
fn waits_for_and_finds_the_slot_among_disks() {
    let dir = tempfile::tempdir().unwrap();
    let (_slot, root) = slot_image(dir.path());
    let d = disk(dir.path(), &slot::partuuid(&root).to_string());
    let (sys, dev) = fake_machine(dir.path(), &[&d]);
    let v = verity();
    let l = wait_for_slot(&sys, &dev, None, &root, &v, Duration::from_secs(5)).unwrap();
    assert_eq!(
        (l.disk.name.as_str(), l.partition.slot + 1, l.how, l.rule),
        ("disk0", 2, Found::ByPartUuid, DiskRule::FirstHolder)
    );
    assert_eq!(l.disk.device(&l.partition), Some("disk0p2"));
    assert_eq!(l.table_note, None);

    // another release: bounded wait, then a message listing what was seen
    let mut other = root;
    other[0] ^= 0xff;
    let e = wait_for_slot(&sys, &dev, None, &other, &v, Duration::from_millis(600))
        .unwrap_err()
        .to_string();
    let want = slot::partuuid(&other).to_string();
    assert!(e.starts_with(&format!("no rootfs partition after 0.6 s: wanted PARTUUID={want}; block devices seen: disk0: GPT [1 \"EFI\" ")), "{e}");
    assert!(
        e.contains(&format!("2 \"BOOT-A\" {}", slot::partuuid(&root))),
        "{e}"
    );
    assert!(e.contains("5 \"EPHEMERAL\""), "{e}");
    assert!(
        e.ends_with("; disk1: protective MBR at offset 0: boot signature at offset 510 is 0000, expected 55aa"),
        "{e}"
    );
    assert!(!e.contains("loop0"), "{e}");
}

/// Finding 4: an upgrade writes the backup, then the primary entries, then
/// the primary header; a cut between the last two leaves a primary whose
/// entry CRC fails (or, torn inside the header sector, whose header CRC
/// fails). Disk discovery must still find the slot and STATE, via the backup,
/// and say that it used the backup.
#[test]
fn finding_4_torn_primary_gpt_falls_back_to_backup() {
    let dir = tempfile::tempdir().unwrap();
    let (slot_img, root) = slot_image(dir.path());
    let d = disk(dir.path(), &slot::partuuid(&root).to_string());
    let pristine = std::fs::read(&d).unwrap();
    // (what is torn, byte offset flipped, what sgdisk reports): a primary
    // entry name (LBA 2) and the primary header's first usable LBA (LBA 1,
    // under the header CRC).
    for (torn, at, sgdisk_says, init_says) in [
        (
            "entries",
            2 * 512 + 128 + 56,
            "Main partition table: ERROR",
            "entry table CRC32",
        ),
        ("header", 512 + 40, "Main header: ERROR", "header CRC32"),
    ] {
        let mut b = pristine.clone();
        b[at] ^= 0xff;
        std::fs::write(&d, &b).unwrap();
        // sgdisk, the independent reader, agrees the primary is damaged and
        // the backup is not (it exits 0 either way: read its report).
        let out = Command::new("sgdisk").arg("-v").arg(&d).output().unwrap();
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(
            text.contains(sgdisk_says)
                && text.contains("Backup header: OK")
                && text.contains("Backup partition table: OK"),
            "sgdisk -v on the {torn}-torn image: {text}"
        );
        let sub = dir.path().join(torn);
        std::fs::create_dir_all(&sub).unwrap();
        let (sys, dev) = fake_machine(&sub, &[&d]);
        let l = wait_for_slot(&sys, &dev, None, &root, &verity(), Duration::from_secs(2))
            .unwrap_or_else(|e| panic!("{torn}-torn primary: {e}"));
        assert_eq!(
            (l.disk.name.as_str(), l.partition.slot + 1, l.how),
            ("disk0", 2, Found::ByPartUuid),
            "{torn}-torn primary"
        );
        let note = l.table_note.unwrap_or_default();
        assert!(
            note.starts_with("disk0: primary GPT invalid (primary GPT header at offset 512: ")
                && note.contains(init_says)
                && note.ends_with("; using the backup GPT"),
            "{torn}: {note}"
        );
        // Stage 2 finds STATE (and the ESP) in the same table.
        let read = disks::read_table(&dev, &l.disk).unwrap();
        assert_eq!(read.used, HeaderCopy::Backup, "{torn}");
        let state = read.layout.partition("STATE").unwrap();
        assert_eq!(l.disk.device(state), Some("disk0p4"), "{torn}");
        assert_eq!(
            read.layout
                .partition("EFI")
                .map(|p| p.guid.to_string().to_lowercase()),
            Some(ESP_UUID.to_string()),
            "{torn}"
        );
        // And the backup's table is the one sgdisk wrote.
        std::fs::write(&d, &pristine).unwrap();
        let clean = disks::read_table(&dev, &l.disk).unwrap();
        assert_eq!(clean.used, HeaderCopy::Primary);
        assert_eq!(clean.layout, read.layout, "{torn}");
    }
    drop(slot_img);
}

/// Finding 6: two disks hold the same release (a clone, a disk moved from
/// another machine). Stage 1 boots from the one whose ESP the loader was
/// started from (`LoaderDevicePartUUID`), and takes the first holder only
/// when that variable is absent; a loader partition on no holder is waited
/// for, not replaced by another disk.
#[test]
fn finding_6_stage1_prefers_the_disk_the_loader_booted_from() {
    let dir = tempfile::tempdir().unwrap();
    let (_slot, root) = slot_image(dir.path());
    let uuid = slot::partuuid(&root).to_string();
    let esp1 = "eeeeeeee-0000-0000-0000-0000000000e1";
    let d0 = disk_named(dir.path(), "d0.img", &uuid, ESP_UUID);
    let d1 = disk_named(dir.path(), "d1.img", &uuid, esp1);
    let (sys, dev) = fake_machine(dir.path(), &[&d0, &d1]);
    let v = verity();
    let t = Duration::from_secs(2);

    let loader = Guid::parse(esp1).unwrap();
    let l = wait_for_slot(&sys, &dev, Some(&loader), &root, &v, t).unwrap();
    assert_eq!(
        (l.disk.name.as_str(), l.partition.slot + 1, l.rule),
        ("disk1", 2, DiskRule::LoaderDevice(loader))
    );
    assert_eq!(
        l.rule.to_string(),
        "it holds the loader's partition PARTUUID=eeeeeeee-0000-0000-0000-0000000000e1 (LoaderDevicePartUUID)"
    );

    let loader0 = Guid::parse(ESP_UUID).unwrap();
    let l = wait_for_slot(&sys, &dev, Some(&loader0), &root, &v, t).unwrap();
    assert_eq!(
        (l.disk.name.as_str(), l.rule),
        ("disk0", DiskRule::LoaderDevice(loader0))
    );

    let l = wait_for_slot(&sys, &dev, None, &root, &v, t).unwrap();
    assert_eq!(
        (l.disk.name.as_str(), l.rule),
        ("disk0", DiskRule::FirstHolder)
    );
    assert!(l.rule.to_string().contains("no LoaderDevicePartUUID"));

    let elsewhere = Guid::parse("eeeeeeee-0000-0000-0000-0000000000ff").unwrap();
    let e = wait_for_slot(
        &sys,
        &dev,
        Some(&elsewhere),
        &root,
        &v,
        Duration::from_millis(300),
    )
    .unwrap_err()
    .to_string();
    assert!(
        e.starts_with(&format!("no rootfs partition after 0.3 s: wanted PARTUUID={} on the disk holding PARTUUID=eeeeeeee-0000-0000-0000-0000000000ff (LoaderDevicePartUUID); block devices seen: disk0: GPT [", slot::partuuid(&root))),
        "{e}"
    );
}
