//! dm-verity trees checked against veritysetup (cryptsetup-bin).

use std::fs::{self, File, OpenOptions};
use std::io::{Seek, SeekFrom, Write};
use std::path::Path;
use std::process::{Command, Output};

use artifacts::verity::{self, VerityInfo};

fn tool(args: &[&str]) -> Output {
    Command::new("veritysetup")
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("veritysetup must be installed (cryptsetup-bin): {e}"))
}

fn ok(args: &[&str]) -> String {
    let out = tool(args);
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "veritysetup {args:?}:\n{text}");
    text
}

/// Deterministic, non-repeating content so a misplaced block shows.
fn pattern(len: usize, salt: u8) -> Vec<u8> {
    let mut x = 0x9E37_79B9u32 ^ salt as u32;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 17;
            x ^= x << 5;
            x as u8
        })
        .collect()
}

fn slot(dir: &Path, len: usize, seed: &[u8]) -> (std::path::PathBuf, VerityInfo) {
    let p = dir.join("slot.img");
    fs::write(&p, pattern(len, 1)).unwrap();
    let info = verity::append(&p, seed).unwrap();
    (p, info)
}

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

#[test]
fn combined_layout_verifies() {
    let d = tempfile::tempdir().unwrap();
    // 1283 blocks, not a multiple of 4096: two tree levels.
    let len = 1282 * 4096 + 123;
    let (img, info) = slot(d.path(), len, b"seed");
    assert_eq!(info.data_blocks, 1283);
    assert_eq!(info.data_size, len as u64);
    assert_eq!(info.hash_offset, 1283 * 4096);
    assert_eq!(info.hash_blocks, 11 + 1);
    assert_eq!(fs::metadata(&img).unwrap().len(), info.end());
    let off = format!("--hash-offset={}", info.hash_offset);
    ok(&["verify", s(&img), s(&img), &info.root_hash_hex(), &off]);

    let dump = ok(&["dump", s(&img), &off]);
    assert!(
        dump.contains(&format!("Salt:            \t{}", info.salt_hex())),
        "{dump}"
    );
    assert!(dump.contains("Data blocks:     \t1283"), "{dump}");
    assert!(dump.contains("Hash type:       \t1"), "{dump}");
    assert!(dump.contains("Hash algorithm:  \tsha256"), "{dump}");
    assert!(
        dump.contains(&format!(
            "UUID:            \t{}",
            info.uuid.to_string().to_lowercase()
        )),
        "{dump}"
    );
    assert_eq!(info.salt, <[u8; 32]>::from(sha2::Sha256::digest(b"seed")));

    // The padding is part of block 1282: it must read as zero.
    let bytes = fs::read(&img).unwrap();
    assert!(bytes[len..1283 * 4096].iter().all(|&b| b == 0));
}

use sha2::Digest;

#[test]
fn flipped_byte_fails_verification() {
    let d = tempfile::tempdir().unwrap();
    let (img, info) = slot(d.path(), 300 * 4096, b"seed");
    let mut f = OpenOptions::new().write(true).open(&img).unwrap();
    f.seek(SeekFrom::Start(200 * 4096 + 17)).unwrap();
    f.write_all(&[pattern(200 * 4096 + 18, 1)[200 * 4096 + 17] ^ 1])
        .unwrap();
    drop(f);
    let off = format!("--hash-offset={}", info.hash_offset);
    let out = tool(&["verify", s(&img), s(&img), &info.root_hash_hex(), &off]);
    assert!(!out.status.success(), "corrupt data verified");
}

#[test]
fn wrong_root_hash_fails() {
    let d = tempfile::tempdir().unwrap();
    let (img, info) = slot(d.path(), 5000, b"seed");
    let mut root = info.root_hash;
    root[31] ^= 1;
    let off = format!("--hash-offset={}", info.hash_offset);
    let out = tool(&["verify", s(&img), s(&img), &hex::encode(root), &off]);
    assert!(!out.status.success());
}

/// Our hash file must equal veritysetup's byte for byte, root hash included,
/// across tree shapes (no tree, one level, two levels).
#[test]
fn matches_veritysetup_format() {
    for blocks in [1usize, 2, 128, 129, 1283] {
        let d = tempfile::tempdir().unwrap();
        let data = d.path().join("data");
        fs::write(&data, pattern(blocks * 4096, blocks as u8)).unwrap();
        let ours = d.path().join("ours.hash");
        let mut out = File::create(&ours).unwrap();
        let info = verity::build(
            File::open(&data).unwrap(),
            (blocks * 4096) as u64,
            &mut out,
            0,
            b"cmp",
        )
        .unwrap();
        drop(out);
        let theirs = d.path().join("theirs.hash");
        let text = ok(&[
            "format",
            s(&data),
            s(&theirs),
            &format!("--salt={}", info.salt_hex()),
            &format!("--uuid={}", info.uuid),
        ]);
        assert!(
            text.contains(&format!("Root hash:      \t{}", info.root_hash_hex())),
            "{blocks} blocks:\n{text}"
        );
        assert!(
            fs::read(&ours).unwrap() == fs::read(&theirs).unwrap(),
            "{blocks} blocks: hash files differ"
        );
        ok(&["verify", s(&data), s(&ours), &info.root_hash_hex()]);
    }
}

#[test]
fn split_layout_with_offset_verifies() {
    let d = tempfile::tempdir().unwrap();
    let data = d.path().join("data");
    fs::write(&data, pattern(40 * 4096, 3)).unwrap();
    let hash = d.path().join("hash");
    let mut out = File::create(&hash).unwrap();
    let info = verity::build(File::open(&data).unwrap(), 40 * 4096, &mut out, 8192, b"x").unwrap();
    drop(out);
    ok(&[
        "verify",
        s(&data),
        s(&hash),
        &info.root_hash_hex(),
        "--hash-offset=8192",
    ]);
    assert!(info
        .dm_table_split("D", "H")
        .contains(" D H 4096 4096 40 3 sha256 "));
}

#[test]
fn table_and_cmdline() {
    let d = tempfile::tempdir().unwrap();
    let (_, info) = slot(d.path(), 10 * 4096, b"seed");
    assert_eq!(
        info.dm_table("/dev/vda2"),
        format!(
            "0 80 verity 1 /dev/vda2 /dev/vda2 4096 4096 10 11 sha256 {} {}",
            info.root_hash_hex(),
            info.salt_hex()
        )
    );
}

#[test]
fn empty_and_missing_inputs() {
    let d = tempfile::tempdir().unwrap();
    let p = d.path().join("empty");
    fs::write(&p, b"").unwrap();
    assert!(matches!(
        verity::append(&p, b"s"),
        Err(verity::VerityError::Empty)
    ));
    let missing = d.path().join("missing");
    let e = verity::append(&missing, b"s").unwrap_err().to_string();
    assert!(e.contains("missing"), "{e}");
}

#[test]
fn reproducible() {
    let a = tempfile::tempdir().unwrap();
    let b = tempfile::tempdir().unwrap();
    let (pa, ia) = slot(a.path(), 777 * 1000, b"r");
    let (pb, ib) = slot(b.path(), 777 * 1000, b"r");
    assert_eq!(ia, ib);
    assert!(fs::read(pa).unwrap() == fs::read(pb).unwrap());
    let (_, ic) = slot(tempfile::tempdir().unwrap().path(), 777 * 1000, b"other");
    assert_ne!(ia.root_hash, ic.root_hash);
}

/// 128*128+1 blocks need three tree levels: still byte-identical to
/// veritysetup, and verifiable in the combined layout.
#[test]
fn three_levels_match_veritysetup() {
    let d = tempfile::tempdir().unwrap();
    let blocks = 128 * 128 + 1u64;
    let data = d.path().join("data");
    {
        let mut w = std::io::BufWriter::new(File::create(&data).unwrap());
        let mut block = vec![0u8; 4096];
        for i in 0..blocks {
            block[..8].copy_from_slice(&i.to_le_bytes());
            block[4000] = (i % 251) as u8;
            w.write_all(&block).unwrap();
        }
    }
    let ours = d.path().join("ours.hash");
    let mut out = File::create(&ours).unwrap();
    let info = verity::build(File::open(&data).unwrap(), blocks * 4096, &mut out, 0, b"3").unwrap();
    drop(out);
    assert_eq!(info.hash_blocks, 129 + 2 + 1);
    let theirs = d.path().join("theirs.hash");
    ok(&[
        "format",
        s(&data),
        s(&theirs),
        &format!("--salt={}", info.salt_hex()),
        &format!("--uuid={}", info.uuid),
    ]);
    assert!(fs::read(&ours).unwrap() == fs::read(&theirs).unwrap());
    let info2 = verity::append(&data, b"3").unwrap();
    assert_eq!(info2.root_hash, info.root_hash);
    let off = format!("--hash-offset={}", info2.hash_offset);
    ok(&["verify", s(&data), s(&data), &info.root_hash_hex(), &off]);
}

fn flip(path: &Path, offset: u64) {
    let mut f = OpenOptions::new()
        .read(true)
        .write(true)
        .open(path)
        .unwrap();
    let mut b = [0u8];
    f.seek(SeekFrom::Start(offset)).unwrap();
    std::io::Read::read_exact(&mut f, &mut b).unwrap();
    f.seek(SeekFrom::Start(offset)).unwrap();
    f.write_all(&[b[0] ^ 0x10]).unwrap();
}

#[test]
fn userspace_verify() {
    let d = tempfile::tempdir().unwrap();
    let (img, info) = slot(d.path(), 300 * 4096 + 9, b"v");
    let got = verity::verify_file(&img, info.hash_offset, &info.root_hash).unwrap();
    assert_eq!(
        (got.data_blocks, got.hash_blocks, got.salt),
        (301, 3 + 1, info.salt)
    );
    let sb = verity::read_superblock(&mut File::open(&img).unwrap(), info.hash_offset).unwrap();
    assert_eq!((sb.uuid, sb.data_blocks), (info.uuid, 301));

    let mut wrong = info.root_hash;
    wrong[0] ^= 1;
    assert!(matches!(
        verity::verify_file(&img, info.hash_offset, &wrong),
        Err(verity::VerityError::RootMismatch { .. })
    ));

    // A flipped tree byte is reported at its own offset.
    let tree_byte = info.hash_offset + 4096 + 4096 + 77;
    flip(&img, tree_byte);
    match verity::verify_file(&img, info.hash_offset, &info.root_hash) {
        Err(verity::VerityError::HashMismatch { offset }) => assert_eq!(offset, tree_byte),
        other => panic!("{other:?}"),
    }
    flip(&img, tree_byte);
    flip(&img, 5);
    assert!(matches!(
        verity::verify_file(&img, info.hash_offset, &info.root_hash),
        Err(verity::VerityError::HashMismatch { .. })
    ));
    flip(&img, 5);
    flip(&img, info.hash_offset + 3);
    let e = verity::verify_file(&img, info.hash_offset, &info.root_hash)
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("signature") && e.contains(&info.hash_offset.to_string()),
        "{e}"
    );
}

/// The same check on a slot inside a larger disk image, as `status --verify` runs it.
#[test]
fn userspace_verify_of_a_slot_at_an_offset() {
    let d = tempfile::tempdir().unwrap();
    let (img, info) = slot(d.path(), 40 * 4096 + 3, b"o");
    let slot_bytes = fs::read(&img).unwrap();
    let base = 3 * 1024 * 1024;
    let disk = d.path().join("disk");
    let mut bytes = vec![0xeeu8; base as usize];
    bytes.extend_from_slice(&slot_bytes);
    bytes.extend_from_slice(&[0xee; 4096]);
    fs::write(&disk, &bytes).unwrap();
    let got = verity::verify_slot(&disk, base, info.hash_offset, &info.root_hash).unwrap();
    assert_eq!(got.data_blocks, 41);
    // Offsets in errors are the slot's own.
    let tree_byte = info.hash_offset + 4096 + 9;
    flip(&disk, base + tree_byte);
    match verity::verify_slot(&disk, base, info.hash_offset, &info.root_hash) {
        Err(verity::VerityError::HashMismatch { offset }) => assert_eq!(offset, tree_byte),
        other => panic!("{other:?}"),
    }
    flip(&disk, base + tree_byte);
    flip(&disk, base + info.hash_offset);
    let e = verity::verify_slot(&disk, base, info.hash_offset, &info.root_hash).unwrap_err();
    assert!(
        matches!(&e, verity::VerityError::BadSuperblock { offset, .. } if *offset == info.hash_offset),
        "{e:?}"
    );
    // The wrong base is not a slot at all.
    assert!(verity::verify_slot(&disk, base - 4096, info.hash_offset, &info.root_hash).is_err());
}

/// A slot laid out by veritysetup itself passes our userspace check.
#[test]
fn userspace_verify_accepts_veritysetup_slot() {
    let d = tempfile::tempdir().unwrap();
    let img = d.path().join("img");
    fs::write(&img, pattern(200 * 4096, 9)).unwrap();
    let off = format!("--hash-offset={}", 200 * 4096);
    let salt = hex::encode([0x5a; 32]);
    let text = ok(&[
        "format",
        s(&img),
        s(&img),
        &off,
        "--data-blocks=200",
        &format!("--salt={salt}"),
    ]);
    let root_hex = text
        .lines()
        .find_map(|l| l.strip_prefix("Root hash:"))
        .unwrap()
        .trim();
    let mut root = [0u8; 32];
    hex::decode_to_slice(root_hex, &mut root).unwrap();
    let info = verity::verify_file(&img, 200 * 4096, &root).unwrap();
    assert_eq!(info.salt, [0x5a; 32]);
    assert_eq!(info.data_blocks, 200);
}
