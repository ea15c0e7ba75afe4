//! GPT reading and slot lookup against disk images partitioned by `sgdisk`
//! and slots formatted by `veritysetup` (the standard tools).

use cairn_init::cmdline::{parse_hex, Verity};
use cairn_init::gpt::{self, GptError, Guid};
use cairn_init::slot::{self, Found};
use std::fs::{File, OpenOptions};
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::Path;
use std::process::Command;

const ROOT_TYPE: &str = "4f68bce3-e8cd-4db1-96e7-fbcaf984b709";
const DATA_BLOCKS: u64 = 64;
const SALT: &str = "5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a";

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
fn slot_image(dir: &Path) -> (std::path::PathBuf, [u8; 32]) {
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

/// 64 MiB disk with the five partitions of design.md.
fn disk(dir: &Path, slot_a_uuid: &str) -> std::path::PathBuf {
    let p = dir.join("disk.img");
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
            "-n",
            "5:0:0",
            "-c",
            "5:EPHEMERAL",
            p.to_str().unwrap(),
        ],
    );
    p
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
    let t = gpt::read(&mut File::open(&d).unwrap(), "disk.img", 512).unwrap();
    assert_eq!(
        t.disk_guid.to_string(),
        "11111111-2222-3333-4444-555555555555"
    );
    let names: Vec<_> = t
        .partitions
        .iter()
        .map(|p| (p.index, p.name.as_str()))
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
        let info = run("sgdisk", &["-i", &p.index.to_string(), d.to_str().unwrap()]);
        let field = |k: &str| {
            info.lines()
                .find_map(|l| l.strip_prefix(k))
                .map(|v| v.split_whitespace().next().unwrap().to_lowercase())
                .unwrap()
        };
        assert_eq!(field("Partition unique GUID: "), p.part_guid.to_string());
        assert_eq!(field("Partition GUID code: "), p.type_guid.to_string());
        assert_eq!(field("First sector: "), p.first_lba.to_string());
        assert_eq!(field("Last sector: "), p.last_lba.to_string());
    }
    assert_eq!(
        t.by_name("BOOT-A").unwrap().type_guid,
        Guid::parse(ROOT_TYPE).unwrap()
    );
    assert_eq!(t.by_name("STATE").unwrap().index, 4);
    assert!(t.by_name("boot-a").is_none());
}

#[test]
fn slot_found_by_partuuid_from_root_hash() {
    let dir = tempfile::tempdir().unwrap();
    let (slot_img, root) = slot_image(dir.path());
    let uuid = Guid::from_root_hash(&root).to_string();
    let d = disk(dir.path(), &uuid);
    let t = gpt::read(&mut File::open(&d).unwrap(), "disk.img", 512).unwrap();
    let v = Verity {
        data_blocks: DATA_BLOCKS,
        salt: parse_hex::<32>("s", SALT).unwrap(),
    };
    let mut f = File::open(&d).unwrap();
    let (p, how) = slot::find(&mut f, &t, &root, &v).unwrap();
    assert_eq!(
        (p.index, p.name.as_str(), how),
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
    let t = gpt::read(&mut File::open(&d).unwrap(), "disk.img", 512).unwrap();
    let b = t.by_name("BOOT-B").unwrap().first_lba * 512;
    put(&d, b, &std::fs::read(&slot_img).unwrap());
    let salt = parse_hex::<32>("s", SALT).unwrap();
    let v = Verity {
        data_blocks: DATA_BLOCKS,
        salt,
    };
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
fn corrupt_tables_are_rejected_with_details() {
    let dir = tempfile::tempdir().unwrap();
    let d = disk(dir.path(), "01234567-89ab-cdef-0123-456789abcdef");
    let pristine = std::fs::read(&d).unwrap();
    let read = |bytes: &[u8]| gpt::read(&mut std::io::Cursor::new(bytes), "x.img", 512);

    let mut b = pristine.clone();
    b[512 + 40] ^= 0xff; // first usable LBA: covered by the header CRC
    assert!(
        matches!(read(&b), Err(GptError::HeaderCrc { .. })),
        "{:?}",
        read(&b)
    );

    let mut b = pristine.clone();
    b[1024 + 128 + 56] ^= 0xff; // name of partition 2
    let e = read(&b).unwrap_err();
    assert!(matches!(e, GptError::EntriesCrc { .. }));
    assert!(
        e.to_string()
            .starts_with("x.img: GPT partition entry array CRC mismatch"),
        "{e}"
    );

    let e = read(&vec![0u8; 4096]).unwrap_err();
    assert_eq!(
        e.to_string(),
        "x.img: no GPT signature at LBA 1 (offset 512)"
    );

    let e = read(&pristine[..1500]).unwrap_err();
    assert!(
        matches!(
            e,
            GptError::Io {
                offset: 1024,
                len: 16384,
                ..
            }
        ),
        "{e}"
    );

    // an absurd entry count is refused before allocating
    let mut b = pristine.clone();
    b[512 + 80..512 + 84].copy_from_slice(&u32::MAX.to_le_bytes());
    b[512 + 16..512 + 20].fill(0);
    let crc = gpt::crc32(&b[512..512 + 92]);
    b[512 + 16..512 + 20].copy_from_slice(&crc.to_le_bytes());
    assert!(matches!(
        read(&b),
        Err(GptError::Field {
            field: "num_partition_entries",
            ..
        })
    ));

    assert!(matches!(
        gpt::read(&mut std::io::Cursor::new(&pristine), "x", 1000),
        Err(GptError::Field {
            field: "sector_size",
            ..
        })
    ));
    let mut sink = Vec::new();
    File::open(&d).unwrap().read_to_end(&mut sink).unwrap();
    assert_eq!(sink, pristine, "reading must not modify the image");
}

/// A fake /sys/block and /dev holding `disk0` (the sgdisk image) and
/// `disk1` (no partition table).
fn fake_machine(dir: &Path, disk_img: &Path) -> (std::path::PathBuf, std::path::PathBuf) {
    let sys = dir.join("sys_block");
    let dev = dir.join("dev");
    for (p, v) in [
        ("disk0/queue/logical_block_size", "512\n"),
        ("disk1/queue/logical_block_size", "512\n"),
        ("loop0/queue/logical_block_size", "512\n"),
    ] {
        std::fs::create_dir_all(sys.join(p).parent().unwrap()).unwrap();
        std::fs::write(sys.join(p), v).unwrap();
    }
    for i in 1..=5 {
        let p = sys.join(format!("disk0/disk0p{i}"));
        std::fs::create_dir_all(&p).unwrap();
        std::fs::write(p.join("partition"), format!("{i}\n")).unwrap();
    }
    std::fs::create_dir_all(&dev).unwrap();
    std::os::unix::fs::symlink(disk_img, dev.join("disk0")).unwrap();
    std::fs::write(dev.join("disk1"), vec![0u8; 8192]).unwrap();
    (sys, dev)
}

#[test]
fn waits_for_and_finds_the_slot_among_disks() {
    use cairn_init::stage1::wait_for_slot;
    use std::time::{Duration, Instant};
    let dir = tempfile::tempdir().unwrap();
    let (_slot, root) = slot_image(dir.path());
    let d = disk(dir.path(), &Guid::from_root_hash(&root).to_string());
    let (sys, dev) = fake_machine(dir.path(), &d);
    let v = Verity {
        data_blocks: DATA_BLOCKS,
        salt: parse_hex::<32>("s", SALT).unwrap(),
    };
    let l = wait_for_slot(&sys, &dev, &root, &v, Duration::from_secs(5)).unwrap();
    assert_eq!(
        (l.disk.name.as_str(), l.partition.index, l.how),
        ("disk0", 2, Found::ByPartUuid)
    );
    assert_eq!(l.disk.partition_name(2), Some("disk0p2"));

    // another release: bounded wait, then a message listing what was seen
    let mut other = root;
    other[0] ^= 0xff;
    let t = Instant::now();
    let e = wait_for_slot(&sys, &dev, &other, &v, Duration::from_millis(600))
        .unwrap_err()
        .to_string();
    assert!(t.elapsed() >= Duration::from_millis(600) && t.elapsed() < Duration::from_secs(3));
    let want = Guid::from_root_hash(&other).to_string();
    assert!(e.starts_with(&format!("no rootfs partition after 0.6 s: wanted PARTUUID={want}; block devices seen: disk0: GPT [1 \"EFI\" ")), "{e}");
    assert!(
        e.contains(&format!("2 \"BOOT-A\" {}", Guid::from_root_hash(&root))),
        "{e}"
    );
    assert!(e.contains("5 \"EPHEMERAL\""), "{e}");
    assert!(
        e.ends_with("; disk1: disk1: no GPT signature at LBA 1 (offset 512)"),
        "{e}"
    );
    assert!(!e.contains("loop0"), "{e}");
}

/// Finding 4: an upgrade writes the backup, then the primary entries, then
/// the primary header; a cut between the last two leaves a primary whose
/// entry CRC fails (or, torn inside the header sector, whose header CRC
/// fails). Disk discovery must still find the slot and STATE, via the backup.
#[test]
fn finding_4_torn_primary_gpt_falls_back_to_backup() {
    use cairn_init::stage1::wait_for_slot;
    use std::time::Duration;
    let dir = tempfile::tempdir().unwrap();
    let (slot_img, root) = slot_image(dir.path());
    let d = disk(dir.path(), &Guid::from_root_hash(&root).to_string());
    let pristine = std::fs::read(&d).unwrap();
    let v = Verity {
        data_blocks: DATA_BLOCKS,
        salt: parse_hex::<32>("s", SALT).unwrap(),
    };
    // (what is torn, byte offset flipped): a primary entry name (LBA 2) and
    // the primary header's first usable LBA (LBA 1, under the header CRC).
    for (torn, at, sgdisk_says) in [
        ("entries", 2 * 512 + 128 + 56, "Main partition table: ERROR"),
        ("header", 512 + 40, "Main header: ERROR"),
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
        let (sys, dev) = fake_machine(&sub, &d);
        let l = wait_for_slot(&sys, &dev, &root, &v, Duration::from_secs(2))
            .unwrap_or_else(|e| panic!("{torn}-torn primary: {e}"));
        assert_eq!(
            (l.disk.name.as_str(), l.partition.index, l.how),
            ("disk0", 2, Found::ByPartUuid),
            "{torn}-torn primary"
        );
        let t = gpt::read(&mut File::open(&d).unwrap(), "disk0", 512)
            .unwrap_or_else(|e| panic!("{torn}-torn primary, reading STATE's table: {e}"));
        assert_eq!(t.by_name("STATE").map(|p| p.index), Some(4), "{torn}");
    }
    drop(slot_img);
}
