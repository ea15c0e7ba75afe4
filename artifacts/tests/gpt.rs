//! GPT writer/reader/updater checked against sgdisk and sfdisk.

use std::fs::{self, OpenOptions};
use std::io::{Seek, SeekFrom, Write};
use std::os::unix::fs::MetadataExt;
use std::path::Path;
use std::process::Command;

use artifacts::gpt::*;

/// Five partitions shaped like a cairn disk (test data; the real list is
/// `contract::disk::partition_specs`).
fn five_specs(esp: u64, slot: u64, state: u64) -> Vec<PartitionSpec> {
    [
        ("EFI", ESP_TYPE, Size::Bytes(esp)),
        ("BOOT-A", LINUX_ROOT_X86_64_TYPE, Size::Bytes(slot)),
        ("BOOT-B", LINUX_ROOT_X86_64_TYPE, Size::Bytes(slot)),
        ("STATE", LINUX_FS_TYPE, Size::Bytes(state)),
        ("EPHEMERAL", LINUX_FS_TYPE, Size::Rest),
    ]
    .into_iter()
    .map(|(name, type_guid, size)| PartitionSpec {
        name: name.into(),
        type_guid,
        size,
        guid: None,
        attributes: 0,
    })
    .collect()
}

const DISK: u64 = 3 << 30;

fn run(cmd: &str, args: &[&str]) -> String {
    let out = Command::new(cmd)
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("{cmd} must be installed (ci/deps): {e}"));
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "{cmd} {args:?} failed:\n{text}");
    text
}

/// A GUID as sgdisk and sfdisk print it: upper case (ours is lower case,
/// as Linux and libblkid print it).
fn upper(g: Guid) -> String {
    g.to_string().to_uppercase()
}

fn layout() -> DiskLayout {
    DiskLayout::new(
        DISK,
        b"test-seed",
        &five_specs(100 << 20, 1 << 30, 200 << 20),
    )
    .unwrap()
}

fn write_disk(path: &Path) -> DiskLayout {
    let l = layout();
    let mut w = DiskWriter::create(path, l.clone()).unwrap();
    // A recognisable pattern at the start of STATE, plus a long zero run
    // that must not be written.
    let mut data = vec![0u8; 8 << 20];
    data[..4].copy_from_slice(b"DATA");
    assert_eq!(w.write_partition(3, &data[..]).unwrap(), 8 << 20);
    w.finish().unwrap();
    l
}

fn corrupt(path: &Path, offset: u64) {
    let mut f = OpenOptions::new().write(true).open(path).unwrap();
    f.seek(SeekFrom::Start(offset)).unwrap();
    f.write_all(&[0xA5; 4]).unwrap();
}

#[test]
fn sgdisk_and_sfdisk_agree() {
    let d = tempfile::tempdir().unwrap();
    let img = d.path().join("disk.img");
    let l = write_disk(&img);
    let v = run("sgdisk", &["-v", img.to_str().unwrap()]);
    assert!(v.contains("No problems found"), "{v}");

    let dump = run("sfdisk", &["-d", img.to_str().unwrap()]);
    assert!(dump.contains("label: gpt"), "{dump}");
    assert!(
        dump.contains(&format!("label-id: {}", upper(l.disk_guid))),
        "{dump}"
    );
    for p in &l.partitions {
        let line = dump
            .lines()
            .find(|x| x.contains(&format!("name=\"{}\"", p.name)))
            .unwrap_or_else(|| panic!("{} missing:\n{dump}", p.name));
        assert!(
            line.contains(&format!("start={:>12}", p.first_lba)),
            "{line}"
        );
        assert!(
            line.contains(&format!("size={:>12}", p.size_bytes() / 512)),
            "{line}"
        );
        assert!(
            line.contains(&format!("type={}", upper(p.type_guid))),
            "{line}"
        );
        assert!(line.contains(&format!("uuid={}", upper(p.guid))), "{line}");
    }
    for (i, p) in l.partitions.iter().enumerate() {
        let info = run(
            "sgdisk",
            &["-i", &(i + 1).to_string(), img.to_str().unwrap()],
        );
        assert!(
            info.contains(&format!("Partition unique GUID: {}", upper(p.guid))),
            "{info}"
        );
        assert!(
            info.contains(&format!("Partition GUID code: {}", upper(p.type_guid))),
            "{info}"
        );
        assert!(
            info.contains(&format!("Partition name: '{}'", p.name)),
            "{info}"
        );
        assert!(
            info.contains(&format!("First sector: {} ", p.first_lba)),
            "{info}"
        );
        assert!(
            info.contains(&format!("Last sector: {} ", p.last_lba)),
            "{info}"
        );
    }
    assert_eq!(
        l.partition("EFI").unwrap().guid,
        Guid::derive(b"test-seed", "partition:EFI")
    );
}

#[test]
fn image_is_sparse() {
    let d = tempfile::tempdir().unwrap();
    let img = d.path().join("disk.img");
    write_disk(&img);
    let m = fs::metadata(&img).unwrap();
    assert_eq!(m.len(), DISK);
    let allocated = m.blocks() * 512;
    assert!(allocated < 1 << 20, "{allocated} bytes allocated");
}

#[test]
fn reader_round_trips_and_sees_data() {
    let d = tempfile::tempdir().unwrap();
    let img = d.path().join("disk.img");
    let l = write_disk(&img);
    let r = read_disk(&mut fs::File::open(&img).unwrap()).unwrap();
    assert_eq!(r.layout, l);
    assert_eq!(r.used, HeaderCopy::Primary);
    assert!(r.primary_error.is_none() && r.backup_error.is_none());
    let mut f = fs::File::open(&img).unwrap();
    f.seek(SeekFrom::Start(l.partition("STATE").unwrap().offset()))
        .unwrap();
    let mut head = [0u8; 4];
    std::io::Read::read_exact(&mut f, &mut head).unwrap();
    assert_eq!(&head, b"DATA");
}

#[test]
fn corrupt_primary_falls_back_to_backup() {
    let d = tempfile::tempdir().unwrap();
    let img = d.path().join("disk.img");
    let l = write_disk(&img);
    corrupt(&img, 512 + 24); // my_lba field of the primary header
    let r = read_disk(&mut fs::File::open(&img).unwrap()).unwrap();
    assert_eq!(r.used, HeaderCopy::Backup);
    assert_eq!(r.layout, l);
    let e = r.primary_error.unwrap().to_string();
    assert!(
        e.contains("primary") && e.contains("CRC32") && e.contains("offset 512"),
        "{e}"
    );

    // A corrupt primary table (header intact) is caught by the table CRC.
    let img2 = d.path().join("disk2.img");
    write_disk(&img2);
    corrupt(&img2, 2 * 512 + 130);
    let r = read_disk(&mut fs::File::open(&img2).unwrap()).unwrap();
    assert_eq!(r.used, HeaderCopy::Backup);
    let e = r.primary_error.unwrap().to_string();
    assert!(
        e.contains("entry table CRC32") && e.contains("offset 1024"),
        "{e}"
    );
}

#[test]
fn corrupt_both_is_a_clear_error() {
    let d = tempfile::tempdir().unwrap();
    let img = d.path().join("disk.img");
    write_disk(&img);
    corrupt(&img, 512);
    corrupt(&img, DISK - 512 + 12);
    let e = read_disk(&mut fs::File::open(&img).unwrap())
        .unwrap_err()
        .to_string();
    assert!(e.contains("primary") && e.contains("signature"), "{e}");
    assert!(
        e.contains("backup") && e.contains(&format!("offset {}", DISK - 512)),
        "{e}"
    );

    let mbr = d.path().join("mbr.img");
    write_disk(&mbr);
    corrupt(&mbr, 508);
    let e = read_disk(&mut fs::File::open(&mbr).unwrap())
        .unwrap_err()
        .to_string();
    assert!(e.contains("MBR") && e.contains("510"), "{e}");
}

#[test]
fn update_rewrites_both_copies() {
    let d = tempfile::tempdir().unwrap();
    let img = d.path().join("disk.img");
    write_disk(&img);
    let root: Vec<u8> = (100u8..132).collect();
    let g = Guid::from_root_hash(&root).unwrap();
    let mut f = OpenOptions::new()
        .read(true)
        .write(true)
        .open(&img)
        .unwrap();
    let p = update_partition(
        &mut f,
        1,
        &PartitionUpdate {
            guid: Some(g),
            attributes: Some(1 << 48),
            name: None,
        },
    )
    .unwrap();
    assert_eq!(p.name, "BOOT-A");
    drop(f);
    let v = run("sgdisk", &["-v", img.to_str().unwrap()]);
    assert!(v.contains("No problems found"), "{v}");
    let info = run("sgdisk", &["-i", "2", img.to_str().unwrap()]);
    assert!(
        info.contains(&format!("Partition unique GUID: {}", upper(g))),
        "{info}"
    );
    assert!(info.contains("Attribute flags: 0001000000000000"), "{info}");
    // The backup alone carries the update too.
    corrupt(&img, 512);
    let r = read_disk(&mut fs::File::open(&img).unwrap()).unwrap();
    assert_eq!(r.used, HeaderCopy::Backup);
    assert_eq!(r.layout.partitions[1].guid, g);

    // Updating repairs the corrupt primary from the backup.
    let mut f = OpenOptions::new()
        .read(true)
        .write(true)
        .open(&img)
        .unwrap();
    update_partition(
        &mut f,
        2,
        &PartitionUpdate {
            name: Some("BOOT-B".into()),
            ..Default::default()
        },
    )
    .unwrap();
    let r = read_disk(&mut f).unwrap();
    assert_eq!(r.used, HeaderCopy::Primary);
    assert!(r.backup_error.is_none());
    let e = update_partition(&mut f, 9, &PartitionUpdate::default()).unwrap_err();
    assert!(e.to_string().contains("partition 9"), "{e}");
}

#[test]
fn clear_makes_disk_unreadable() {
    let d = tempfile::tempdir().unwrap();
    let img = d.path().join("disk.img");
    write_disk(&img);
    let mut f = OpenOptions::new()
        .read(true)
        .write(true)
        .open(&img)
        .unwrap();
    clear(&mut f).unwrap();
    assert!(read_disk(&mut f).is_err());
    let out = Command::new("sfdisk")
        .args(["-d", img.to_str().unwrap()])
        .output()
        .unwrap();
    assert!(!out.status.success(), "sfdisk still sees a table");
}

#[test]
fn partitions_that_do_not_fit() {
    let e = DiskLayout::new(1 << 30, b"s", &five_specs(100 << 20, 1 << 30, 1 << 20))
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("BOOT-A") && e.contains(&(1u64 << 30).to_string()),
        "{e}"
    );
    let e = DiskLayout::new(1 << 30, b"s", &five_specs(100 << 20, 1000, 1 << 20))
        .unwrap_err()
        .to_string();
    assert!(e.contains("BOOT-A") && e.contains("1000"), "{e}");
    assert!(DiskLayout::new((1 << 30) + 1, b"s", &[]).is_err());
    let mut specs = five_specs(1 << 20, 1 << 20, 1 << 20);
    specs.swap(3, 4);
    assert!(matches!(
        DiskLayout::new(1 << 30, b"s", &specs),
        Err(GptError::RestNotLast { .. })
    ));
    // Data larger than its partition.
    let d = tempfile::tempdir().unwrap();
    let small = DiskLayout::new(64 << 20, b"s", &five_specs(1 << 20, 1 << 20, 1 << 20)).unwrap();
    let mut w = DiskWriter::create(&d.path().join("x.img"), small).unwrap();
    let e = w
        .write_partition(0, &vec![1u8; (1 << 20) + 1][..])
        .unwrap_err();
    assert!(e.to_string().contains("EFI"), "{e}");
}

#[test]
fn reproducible() {
    let a = tempfile::tempdir().unwrap();
    let b = tempfile::tempdir().unwrap();
    let small =
        || DiskLayout::new(64 << 20, b"repro", &five_specs(8 << 20, 16 << 20, 8 << 20)).unwrap();
    for dir in [&a, &b] {
        let mut w = DiskWriter::create(&dir.path().join("disk.img"), small()).unwrap();
        w.write_partition(1, &b"slot"[..]).unwrap();
        w.finish().unwrap();
    }
    let one = fs::read(a.path().join("disk.img")).unwrap();
    assert!(one == fs::read(b.path().join("disk.img")).unwrap());
    assert_eq!(one.len(), 64 << 20);
    // Recorded before the encoders were shared with the ISO writer: a
    // refactor of the GPT code must not move a single byte.
    use sha2::Digest;
    assert_eq!(
        hex::encode(sha2::Sha256::digest(&one)),
        REPRO_DISK_SHA256,
        "GPT disk bytes changed"
    );
}

const REPRO_DISK_SHA256: &str = "5596e9f23fd0506f8e80a0da850129ff289fc8a5a1bc7aca1969829932cfb25f";

/// The reader on a disk made by sgdisk, not by our writer.
#[test]
fn reads_sgdisk_made_disk() {
    let d = tempfile::tempdir().unwrap();
    let img = d.path().join("foreign.img");
    fs::File::create(&img).unwrap().set_len(64 << 20).unwrap();
    run(
        "sgdisk",
        &[
            "-o",
            "-n",
            "1:2048:+8M",
            "-t",
            "1:C12A7328-F81F-11D2-BA4B-00A0C93EC93B",
            "-c",
            "1:EFI",
            "-u",
            "1:01234567-89AB-4CDE-8F01-23456789ABCD",
            "-n",
            "3:0:+4M",
            "-c",
            "3:third",
            "-A",
            "3:set:2",
            img.to_str().unwrap(),
        ],
    );
    let r = read_disk(&mut fs::File::open(&img).unwrap()).unwrap();
    assert_eq!(r.used, HeaderCopy::Primary);
    let p = &r.layout.partitions;
    assert_eq!(p.len(), 2);
    assert_eq!((p[0].slot, p[0].name.as_str()), (0, "EFI"));
    assert_eq!(p[0].type_guid, ESP_TYPE);
    assert_eq!(
        p[0].guid.to_string(),
        "01234567-89ab-4cde-8f01-23456789abcd"
    );
    assert_eq!((p[0].first_lba, p[0].size_bytes()), (2048, 8 << 20));
    assert_eq!((p[1].slot, p[1].name.as_str()), (2, "third"));
    assert_eq!(p[1].attributes, 1 << 2);
    assert_eq!(p[1].type_guid, LINUX_FS_TYPE);

    // Our updater keeps sgdisk's other entries intact.
    let mut f = OpenOptions::new()
        .read(true)
        .write(true)
        .open(&img)
        .unwrap();
    update_partition(
        &mut f,
        2,
        &PartitionUpdate {
            name: Some("renamed".into()),
            ..Default::default()
        },
    )
    .unwrap();
    drop(f);
    let v = run("sgdisk", &["-v", img.to_str().unwrap()]);
    assert!(v.contains("No problems found"), "{v}");
    let info = run("sgdisk", &["-i", "1", img.to_str().unwrap()]);
    assert!(
        info.contains("01234567-89AB-4CDE-8F01-23456789ABCD"),
        "{info}"
    );
    let info = run("sgdisk", &["-i", "3", img.to_str().unwrap()]);
    assert!(info.contains("Partition name: 'renamed'"), "{info}");
}

/// A slot filled with verity content and named by its root hash, the way
/// the image builder and installer combine the two writers.
#[test]
fn slot_named_by_root_hash() {
    let d = tempfile::tempdir().unwrap();
    let slot = d.path().join("slot.img");
    fs::write(&slot, vec![7u8; 3 * 4096 + 5]).unwrap();
    let info = artifacts::verity::append(&slot, b"seed").unwrap();
    let mut specs = five_specs(8 << 20, 16 << 20, 8 << 20);
    specs[1].guid = Some(Guid::from_root_hash(&info.root_hash).unwrap());
    let l = DiskLayout::new(64 << 20, b"seed", &specs).unwrap();
    let img = d.path().join("disk.img");
    let mut w = DiskWriter::create(&img, l.clone()).unwrap();
    w.write_partition(1, fs::File::open(&slot).unwrap())
        .unwrap();
    w.finish().unwrap();
    let dump = run("sfdisk", &["-d", img.to_str().unwrap()]);
    let want = hex::encode_upper(&info.root_hash[..16]);
    let uuid = format!(
        "{}-{}-{}-{}-{}",
        &want[0..8],
        &want[8..12],
        &want[12..16],
        &want[16..20],
        &want[20..32]
    );
    assert!(
        dump.contains(&format!("uuid={uuid}, name=\"BOOT-A\"")),
        "{dump}"
    );
    let bytes = fs::read(&img).unwrap();
    let off = l.partitions[1].offset() as usize;
    assert!(bytes[off..off + info.end() as usize] == fs::read(&slot).unwrap()[..]);
}

#[test]
fn garbage_inputs_are_errors_not_panics() {
    use std::io::Cursor;
    let e = read_disk(&mut Cursor::new(vec![0u8; 1000])).unwrap_err();
    assert!(e.to_string().contains("1000"), "{e}");
    assert!(matches!(
        read_disk(&mut Cursor::new(vec![0u8; 1024])),
        Err(GptError::DiskTooSmall { size: 1024 })
    ));
    let e = read_disk(&mut Cursor::new(vec![0u8; 1 << 20])).unwrap_err();
    assert!(e.to_string().contains("offset 510"), "{e}");
    // Valid MBR, headers full of pseudo-random bytes.
    let mut disk = vec![0u8; 1 << 20];
    let mut x = 12345u32;
    for b in disk.iter_mut() {
        x = x.wrapping_mul(1_103_515_245).wrapping_add(12345);
        *b = (x >> 16) as u8;
    }
    disk[446 + 4] = 0xEE;
    disk[510] = 0x55;
    disk[511] = 0xAA;
    disk[512..520].copy_from_slice(b"EFI PART");
    let e = read_disk(&mut Cursor::new(disk)).unwrap_err().to_string();
    assert!(e.contains("primary") && e.contains("revision"), "{e}");
    assert!(e.contains("backup") && e.contains("signature"), "{e}");
}

fn explicit_parts() -> Vec<Partition> {
    let part = |slot, name: &str, first_lba, last_lba| Partition {
        slot,
        name: name.to_string(),
        type_guid: if slot == 0 { ESP_TYPE } else { LINUX_FS_TYPE },
        guid: Guid::derive(b"explicit", name),
        first_lba,
        last_lba,
        attributes: if slot == 0 { 0 } else { 1 << 60 },
    };
    // Unaligned and out of slot order: nothing `DiskLayout::new` would make.
    vec![part(3, "DATA", 3001, 9000), part(0, "EFI", 100, 2147)]
}

/// `ondisk`'s contiguous areas, laid at the two ends of a plain file, give
/// a disk that sgdisk accepts and that matches `DiskWriter` byte for byte.
#[test]
fn explicit_layout_encodes_like_the_disk_writer() {
    let size = 8u64 << 20;
    let l = DiskLayout::with_explicit(size, Guid::derive(b"explicit", "disk"), explicit_parts())
        .unwrap();
    let front = ondisk::primary_area(&l).unwrap();
    let back = ondisk::backup_area(&l).unwrap();
    assert_eq!(front.len() as u64, PRIMARY_SECTORS * SECTOR);
    assert_eq!(back.len() as u64, BACKUP_SECTORS * SECTOR);

    let d = tempfile::tempdir().unwrap();
    let img = d.path().join("areas.img");
    let mut f = fs::File::create(&img).unwrap();
    f.set_len(size).unwrap();
    f.write_all(&front).unwrap();
    f.seek(SeekFrom::Start(size - back.len() as u64)).unwrap();
    f.write_all(&back).unwrap();
    drop(f);

    let via_writer = d.path().join("writer.img");
    DiskWriter::create(&via_writer, l.clone())
        .unwrap()
        .finish()
        .unwrap();
    assert!(fs::read(&img).unwrap() == fs::read(&via_writer).unwrap());

    let v = run("sgdisk", &["-v", img.to_str().unwrap()]);
    assert!(v.contains("No problems found"), "{v}");
    for (n, p) in [(4, &l.partitions[0]), (1, &l.partitions[1])] {
        let info = run("sgdisk", &["-i", &n.to_string(), img.to_str().unwrap()]);
        for want in [
            format!("Partition name: '{}'", p.name),
            format!("First sector: {} ", p.first_lba),
            format!("Last sector: {} ", p.last_lba),
            format!("Partition unique GUID: {}", upper(p.guid)),
        ] {
            assert!(info.contains(&want), "{want:?} not in:\n{info}");
        }
    }
    let read = read_disk(&mut fs::File::open(&img).unwrap()).unwrap();
    let mut want = l.partitions.clone();
    want.sort_by_key(|p| p.slot);
    assert_eq!(read.layout.partitions, want);
    assert_eq!(read.layout.disk_guid, l.disk_guid);
}

#[test]
fn explicit_layout_refuses_bad_placements() {
    let g = Guid::derive(b"explicit", "disk");
    let size = 8u64 << 20;
    let last_usable = size / SECTOR - BACKUP_SECTORS - 1;
    let with = |f: &dyn Fn(&mut Vec<Partition>)| {
        let mut p = explicit_parts();
        f(&mut p);
        DiskLayout::with_explicit(size, g, p)
            .unwrap_err()
            .to_string()
    };
    let e = with(&|p| p[1].first_lba = PRIMARY_SECTORS - 1);
    assert!(
        e.contains("EFI") && e.contains("33..=2147") && e.contains("34..="),
        "{e}"
    );
    let e = with(&|p| p[0].last_lba = last_usable + 1);
    assert!(
        e.contains("DATA") && e.contains(&last_usable.to_string()),
        "{e}"
    );
    let e = with(&|p| p[1].last_lba = 99);
    assert!(e.contains("100..=99"), "{e}");
    let e = with(&|p| p[1].last_lba = 3001);
    assert!(e.contains("overlaps") && e.contains("3001..=9000"), "{e}");
    let e = with(&|p| p[1].slot = 3);
    assert!(e.contains("slot 3"), "{e}");
    let e = with(&|p| p[1].slot = ENTRY_COUNT);
    assert!(e.contains("slot 128"), "{e}");
    let e = with(&|p| p[1].name = "N".repeat(NAME_UNITS + 1));
    assert!(e.contains("longer"), "{e}");
    let e = DiskLayout::with_explicit(size + 1, g, vec![]).unwrap_err();
    assert!(e.to_string().contains(&(size + 1).to_string()), "{e}");
    let tiny = (PRIMARY_SECTORS + BACKUP_SECTORS) * SECTOR;
    let e = DiskLayout::with_explicit(tiny, g, vec![]).unwrap_err();
    assert!(
        matches!(e, GptError::DiskTooSmall { size } if size == tiny),
        "{e}"
    );
    // One usable sector is enough for a table.
    DiskLayout::with_explicit(tiny + SECTOR, g, vec![]).unwrap();
}

/// `DiskLayout`'s fields are public, so the encoders see layouts no
/// constructor checked; they must refuse them rather than panic.
#[test]
fn encoders_refuse_unchecked_layouts() {
    let mut l = DiskLayout {
        disk_size: 8 << 20,
        disk_guid: Guid::derive(b"x", "disk"),
        partitions: explicit_parts(),
    };
    l.partitions[0].slot = 500;
    let e = ondisk::primary_area(&l).unwrap_err();
    assert!(e.to_string().contains("500"), "{e}");
    assert!(ondisk::encode_entries(&l.partitions).is_err());
    for size in [0, 512, 1000] {
        l.disk_size = size;
        l.partitions.clear();
        assert!(ondisk::backup_area(&l).is_err(), "size {size}");
        assert!(ondisk::encode_copy(&l, HeaderCopy::Primary).is_err());
    }
    assert_eq!(ondisk::protective_mbr(0)[458..462], [0, 0, 0, 0]);
}
