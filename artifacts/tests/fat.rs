//! FAT32 writer and editor, checked with the independent tools: `fsck.fat -n`
//! (dosfstools) and mtools (`mdir`, `mcopy`). The tools must be installed;
//! a missing tool fails the test.

use std::fs;
use std::io::{Cursor, Read, Seek, SeekFrom, Write};
use std::path::Path;
use std::process::Command;

use artifacts::fat::{
    entry_slots, format, format_path, minimum_size, Fat32, FatError, FatFile, FatSource,
    FormatOptions, SECTOR_SLOTS,
};

const MIB: u64 = 1 << 20;
const EPOCH: u64 = 1_700_000_001; // 2023-11-14 22:13:21 UTC

fn opts(size: u64) -> FormatOptions {
    FormatOptions {
        size,
        label: "EFI".into(),
        seed: b"test-seed".to_vec(),
        epoch: EPOCH,
    }
}

/// Deterministic pseudo-random bytes, so content errors are visible.
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

fn bytes(path: &str, data: Vec<u8>) -> FatFile {
    FatFile {
        path: path.into(),
        source: FatSource::Bytes(data),
    }
}

fn run(cmd: &str, args: &[&str]) -> std::process::Output {
    Command::new(cmd)
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("running {cmd} (is it installed?): {e}"))
}

/// `fsck.fat -n` must exit 0 and print nothing but its banner and summary.
fn fsck_report(img: &Path) -> Result<(), String> {
    let out = run("fsck.fat", &["-n", img.to_str().unwrap()]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    let lines: Vec<&str> = stdout.lines().collect();
    let clean = out.status.success()
        && lines.len() == 2
        && lines[0].starts_with("fsck.fat ")
        && lines[1].contains(" files, ")
        && stderr.trim().is_empty();
    if clean {
        Ok(())
    } else {
        Err(format!("fsck.fat ({}):\n{stdout}\n{stderr}", out.status))
    }
}

fn fsck_clean(img: &Path) {
    if let Err(e) = fsck_report(img) {
        panic!("{e}");
    }
}

/// Names in a directory as mtools sees them (long names where present).
fn mdir_names(img: &Path, dir: &str) -> Vec<String> {
    let out = run(
        "mdir",
        &["-b", "-i", img.to_str().unwrap(), &format!("::{dir}")],
    );
    assert!(
        out.status.success(),
        "mdir {dir}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let prefix = format!("::{}/", dir.trim_end_matches('/'));
    let mut names: Vec<String> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| {
            l.strip_prefix(&prefix)
                .unwrap_or(l)
                .trim_end_matches('/')
                .to_string()
        })
        .collect();
    names.sort();
    names
}

fn mdir_long(img: &Path, dir: &str) -> String {
    let out = run("mdir", &["-i", img.to_str().unwrap(), &format!("::{dir}")]);
    assert!(
        out.status.success(),
        "mdir {dir}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn mcopy(img: &Path, path: &str) -> Vec<u8> {
    let out = run(
        "mcopy",
        &["-n", "-i", img.to_str().unwrap(), &format!("::{path}"), "-"],
    );
    assert!(
        out.status.success(),
        "mcopy {path}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    out.stdout
}

fn sorted(v: &[&str]) -> Vec<String> {
    let mut v: Vec<String> = v.iter().map(|s| s.to_string()).collect();
    v.sort();
    v
}

fn esp_files(host: &Path) -> Vec<FatFile> {
    let host_file = host.join("systemd-bootx64.efi");
    fs::write(&host_file, pattern(100_000, 1)).unwrap();
    let mut files = vec![
        FatFile {
            path: "EFI/BOOT/BOOTX64.EFI".into(),
            source: FatSource::Host(host_file),
        },
        bytes(
            "EFI/Linux/cairn-1.0.0+3.efi",
            pattern(3 * MIB as usize + 17, 2),
        ),
        bytes("EFI/Linux/cairn-0.9.0.efi", pattern(5000, 3)),
        bytes("EFI/Linux/longname1.efi", b"one".to_vec()),
        bytes("EFI/Linux/longname2.efi", b"two".to_vec()),
        bytes(
            "EFI/Linux/A Very Long Lower-case Name, with spaces.efi",
            pattern(513, 4),
        ),
        bytes("cairn/empty", Vec::new()),
        bytes(
            "cairn/machine.toml",
            b"[machine]\nhostname = \"n1\"\n".to_vec(),
        ),
        bytes("loader/loader.conf", b"timeout 0\n".to_vec()),
    ];
    for i in 0..120 {
        files.push(bytes(
            &format!("many/file-{i:03}.txt"),
            format!("file {i}\n").into_bytes(),
        ));
    }
    files.sort_by(|a, b| a.path.cmp(&b.path));
    files
}

fn content_of(f: &FatFile) -> Vec<u8> {
    match &f.source {
        FatSource::Bytes(b) => b.clone(),
        FatSource::Host(p) => fs::read(p).unwrap(),
    }
}

#[test]
fn format_populated_esp_checks_clean_with_fsck_and_mtools() {
    let d = tempfile::tempdir().unwrap();
    let img = d.path().join("esp.img");
    let files = esp_files(d.path());
    let s = format_path(&img, &opts(64 * MIB), &files).unwrap();
    assert_eq!(s.geometry.cluster_size(), 512);
    assert_eq!(fs::metadata(&img).unwrap().len(), 64 * MIB);
    fsck_clean(&img);

    assert_eq!(
        mdir_names(&img, "/EFI/Linux"),
        sorted(&[
            "A Very Long Lower-case Name, with spaces.efi",
            "cairn-0.9.0.efi",
            "cairn-1.0.0+3.efi",
            "longname1.efi",
            "longname2.efi",
        ])
    );
    assert_eq!(
        mdir_names(&img, "/"),
        sorted(&["EFI", "cairn", "loader", "many"])
    );
    assert_eq!(mdir_names(&img, "/many").len(), 120);
    let listing = mdir_long(&img, "/EFI/Linux");
    assert!(listing.contains("LONGNA~1 EFI"), "{listing}");
    assert!(listing.contains("LONGNA~2 EFI"), "{listing}");
    assert!(listing.contains("2023-11-14  22:13"), "{listing}");
    assert!(mdir_long(&img, "/").contains("Volume in drive : is EFI"));
    for f in &files {
        assert_eq!(mcopy(&img, &f.path), content_of(f), "{}", f.path);
    }

    // Our own reader agrees with mtools.
    let mut fat = Fat32::open(
        fs::File::options()
            .read(true)
            .write(true)
            .open(&img)
            .unwrap(),
        0,
        64 * MIB,
    )
    .unwrap();
    let l = fat.list("EFI/Linux").unwrap();
    let short: Vec<_> = l
        .iter()
        .map(|e| (e.name.as_str(), e.short_name.as_str()))
        .collect();
    assert!(
        short.contains(&("longname1.efi", "LONGNA~1.EFI")),
        "{short:?}"
    );
    assert!(
        short.contains(&("longname2.efi", "LONGNA~2.EFI")),
        "{short:?}"
    );
    for f in &files {
        assert_eq!(fat.read_file(&f.path).unwrap(), content_of(f), "{}", f.path);
    }
}

#[test]
fn files_are_contiguous_and_dotdot_is_zero_under_root() {
    let d = tempfile::tempdir().unwrap();
    let img = d.path().join("esp.img");
    let files = vec![
        bytes("a/b/big.bin", pattern(200_000, 9)),
        bytes("a/small", b"x".to_vec()),
    ];
    let s = format_path(&img, &opts(64 * MIB), &files).unwrap();
    let raw = fs::read(&img).unwrap();
    let g = s.geometry;
    let fat_at = g.fat_offset(0) as usize;
    let entry =
        |c: u32| u32::from_le_bytes(raw[fat_at + 4 * c as usize..][..4].try_into().unwrap());
    let mut fat = Fat32::open(Cursor::new(raw.clone()), 0, 64 * MIB).unwrap();
    let a = fat.list("").unwrap()[0].clone();
    let b = fat
        .list("a")
        .unwrap()
        .into_iter()
        .find(|e| e.name == "b")
        .unwrap();
    let big = fat.list("a/b").unwrap()[0].clone();
    let n = 200_000u32.div_ceil(512);
    for c in big.first_cluster..big.first_cluster + n - 1 {
        assert_eq!(entry(c), c + 1, "cluster {c} of big.bin");
    }
    assert_eq!(entry(big.first_cluster + n - 1) & 0x0FFF_FFFF, 0x0FFF_FFFF);
    // `..` of a (under root) is 0; `..` of a/b is a's cluster.
    let dir_at = |c: u32| g.cluster_offset(c) as usize;
    let dotdot = |c: u32| {
        let e = &raw[dir_at(c) + 32..dir_at(c) + 64];
        assert_eq!(&e[..11], b"..         ");
        (u16::from_le_bytes([e[20], e[21]]) as u32) << 16
            | u16::from_le_bytes([e[26], e[27]]) as u32
    };
    assert_eq!(dotdot(a.first_cluster), 0);
    assert_eq!(dotdot(b.first_cluster), a.first_cluster);
    // Backup boot sector at 6, FATs identical, FSInfo free count right.
    assert_eq!(raw[..512], raw[6 * 512..7 * 512]);
    let fat_len = g.fat_sectors as usize * 512;
    assert_eq!(
        raw[fat_at..fat_at + fat_len],
        raw[fat_at + fat_len..fat_at + 2 * fat_len]
    );
    let free = u32::from_le_bytes(raw[512 + 488..512 + 492].try_into().unwrap());
    assert_eq!(free, s.free_clusters);
    assert_eq!(raw[21], 0xF8);
    fsck_clean(&img);
}

#[test]
fn one_gib_volume_uses_4k_clusters() {
    let d = tempfile::tempdir().unwrap();
    let img = d.path().join("esp.img");
    let s = format_path(
        &img,
        &opts(1 << 30),
        &[bytes("EFI/BOOT/BOOTX64.EFI", pattern(10_000, 5))],
    )
    .unwrap();
    assert_eq!(s.geometry.cluster_size(), 4096);
    fsck_clean(&img);
    assert_eq!(mcopy(&img, "/EFI/BOOT/BOOTX64.EFI"), pattern(10_000, 5));
}

#[test]
fn minimum_size_volume_is_valid() {
    let d = tempfile::tempdir().unwrap();
    let img = d.path().join("esp.img");
    format_path(&img, &opts(minimum_size()), &[bytes("x", b"y".to_vec())]).unwrap();
    fsck_clean(&img);
}

#[test]
fn reproducible_across_directories_and_offsets() {
    let d1 = tempfile::tempdir().unwrap();
    let d2 = tempfile::tempdir().unwrap();
    let a = d1.path().join("esp.img");
    let b = d2.path().join("other-name.img");
    format_path(&a, &opts(64 * MIB), &esp_files(d1.path())).unwrap();
    format_path(&b, &opts(64 * MIB), &esp_files(d2.path())).unwrap();
    let ra = fs::read(&a).unwrap();
    assert!(ra == fs::read(&b).unwrap(), "two runs differ");

    // Into a larger image at an offset (as the GPT writer does): same bytes.
    let mut disk = Cursor::new(vec![0u8; (66 * MIB) as usize]);
    format(&mut disk, MIB, &opts(64 * MIB), &esp_files(d1.path())).unwrap();
    let disk = disk.into_inner();
    assert!(disk[MIB as usize..(65 * MIB) as usize] == ra[..]);
    assert!(disk[..MIB as usize].iter().all(|&b| b == 0));

    // Input order does not matter; the seed does.
    let mut rev = esp_files(d1.path());
    rev.reverse();
    let c = d1.path().join("rev.img");
    format_path(&c, &opts(64 * MIB), &rev).unwrap();
    assert!(ra == fs::read(&c).unwrap());
    let mut o = opts(64 * MIB);
    o.seed = b"other".to_vec();
    format_path(&c, &o, &esp_files(d1.path())).unwrap();
    assert!(ra != fs::read(&c).unwrap());
}

#[test]
fn format_rejects_bad_input() {
    let d = tempfile::tempdir().unwrap();
    let img = d.path().join("esp.img");
    let err = |files: &[FatFile], size: u64| format_path(&img, &opts(size), files).unwrap_err();

    let e = err(
        &[
            bytes("a", pattern(1000, 1)),
            bytes("big.efi", vec![0; 70 << 20]),
        ],
        64 * MIB,
    );
    let msg = e.to_string();
    assert!(matches!(e, FatError::NoSpace { .. }), "{msg}");
    assert!(
        msg.contains("big.efi") && msg.contains(&(70u64 << 20).to_string()),
        "{msg}"
    );

    let long = "x".repeat(256);
    let e = err(&[bytes(&long, vec![])], 64 * MIB);
    assert!(matches!(e, FatError::NameTooLong { units: 256, .. }), "{e}");
    // 255 is fine.
    format_path(
        &img,
        &opts(64 * MIB),
        &[bytes(&"y".repeat(255), b"ok".to_vec())],
    )
    .unwrap();
    fsck_clean(&img);
    assert_eq!(mdir_names(&img, "/"), vec!["y".repeat(255)]);

    for bad in ["a:b", "q?", "tab\t", "dot.", "EFI/x*y"] {
        let e = err(&[bytes(bad, vec![])], 64 * MIB);
        assert!(matches!(e, FatError::InvalidName { .. }), "{bad}: {e}");
    }

    let e = err(
        &[bytes("EFI", b"f".to_vec()), bytes("EFI/BOOT/x", vec![])],
        64 * MIB,
    );
    assert!(
        matches!(&e, FatError::NotADirectory { path } if path == "EFI"),
        "{e}"
    );
    let e = err(&[bytes("a/b", vec![]), bytes("A/B", vec![])], 64 * MIB);
    assert!(matches!(e, FatError::AlreadyExists { .. }), "{e}");

    let e = err(&[], MIB);
    assert!(e.to_string().contains(&minimum_size().to_string()), "{e}");
    assert!(matches!(e, FatError::TooSmall { size, .. } if size == MIB));
    let e = err(&[], 3 << 40);
    assert!(matches!(e, FatError::TooLarge { .. }), "{e}");
    let e = err(&[], 64 * MIB + 100);
    assert!(matches!(e, FatError::NotSectorMultiple { .. }), "{e}");

    let mut o = opts(64 * MIB);
    o.label = "lower".into();
    assert!(matches!(
        format_path(&img, &o, &[]),
        Err(FatError::InvalidLabel { .. })
    ));

    let e = err(
        &[FatFile {
            path: "x".into(),
            source: FatSource::Host(d.path().join("missing")),
        }],
        64 * MIB,
    );
    assert!(e.to_string().contains("missing"), "{e}");
}

fn open_rw(img: &Path) -> Fat32<fs::File> {
    let f = fs::File::options()
        .read(true)
        .write(true)
        .open(img)
        .unwrap();
    let len = f.metadata().unwrap().len();
    let mut fat = Fat32::open(f, 0, len).unwrap();
    fat.set_epoch(EPOCH);
    fat
}

/// The installer's and boot counting's sequence of edits, each checked.
fn edit_sequence(img: &Path) {
    let uki = pattern(2 * MIB as usize + 5, 7);
    let mut fat = open_rw(img);
    fat.create_dir_all("EFI/Linux").unwrap();
    fat.write_file("EFI/Linux/cairn-1.1.0+3.efi", &uki).unwrap();
    drop(fat);
    fsck_clean(img);
    assert!(mdir_names(img, "/EFI/Linux").contains(&"cairn-1.1.0+3.efi".to_string()));
    assert_eq!(mcopy(img, "/EFI/Linux/cairn-1.1.0+3.efi"), uki);

    let steps = [
        ("cairn-1.1.0+3.efi", "cairn-1.1.0+2-1.efi"),
        ("cairn-1.1.0+2-1.efi", "cairn-1.1.0.efi"),
        // More long-name slots than before, then fewer again.
        (
            "cairn-1.1.0.efi",
            "cairn-1.1.0-with-a-much-longer-name-for-test.efi",
        ),
        (
            "cairn-1.1.0-with-a-much-longer-name-for-test.efi",
            "CAIRN.EFI",
        ),
        ("CAIRN.EFI", "cairn-1.1.0.efi"),
    ];
    for (from, to) in steps {
        let mut fat = open_rw(img);
        fat.rename(&format!("EFI/Linux/{from}"), to).unwrap();
        drop(fat);
        fsck_clean(img);
        let names = mdir_names(img, "/EFI/Linux");
        assert!(names.contains(&to.to_string()), "{to} missing: {names:?}");
        assert!(
            !names.contains(&from.to_string()),
            "{from} still there: {names:?}"
        );
        assert_eq!(mcopy(img, &format!("/EFI/Linux/{to}")), uki, "{to}");
    }

    let mut fat = open_rw(img);
    fat.create_dir_all("cairn").unwrap();
    // Replace what the volume may already hold (our own ESP image does).
    for e in fat.list("cairn").unwrap() {
        fat.remove_file(&format!("cairn/{}", e.name)).unwrap();
    }
    fat.write_file("cairn/machine.toml", b"hostname = \"x\"\n")
        .unwrap();
    fat.write_file("cairn/empty", b"").unwrap();
    drop(fat);
    fsck_clean(img);
    assert_eq!(mcopy(img, "/cairn/machine.toml"), b"hostname = \"x\"\n");
    assert_eq!(mcopy(img, "/cairn/empty"), b"");

    // Enough entries that the directory grows past its first cluster.
    let mut fat = open_rw(img);
    for i in 0..40 {
        fat.write_file(
            &format!("cairn/entry-number-{i:02}.conf"),
            format!("{i}").as_bytes(),
        )
        .unwrap();
    }
    drop(fat);
    fsck_clean(img);
    assert_eq!(mdir_names(img, "/cairn").len(), 42);
    assert_eq!(mcopy(img, "/cairn/entry-number-39.conf"), b"39");

    let mut fat = open_rw(img);
    let free_before = fat.free_bytes();
    fat.remove_file("EFI/Linux/cairn-1.1.0.efi").unwrap();
    fat.remove_file("cairn/machine.toml").unwrap();
    fat.remove_file("cairn/empty").unwrap();
    assert!(fat.free_bytes() > free_before + 2 * MIB);
    drop(fat);
    fsck_clean(img);
    assert!(!mdir_names(img, "/EFI/Linux").contains(&"cairn-1.1.0.efi".to_string()));
    assert!(!mdir_names(img, "/cairn").contains(&"machine.toml".to_string()));
}

#[test]
fn editor_on_our_own_volume() {
    let d = tempfile::tempdir().unwrap();
    let img = d.path().join("esp.img");
    let files = esp_files(d.path());
    format_path(&img, &opts(64 * MIB), &files).unwrap();
    edit_sequence(&img);
    // Untouched files survive the edits (the sequence replaces cairn/).
    for f in files.iter().filter(|f| !f.path.starts_with("cairn/")) {
        assert_eq!(mcopy(&img, &f.path), content_of(f), "{}", f.path);
    }
}

#[test]
fn editor_on_mkfs_fat_volume() {
    let d = tempfile::tempdir().unwrap();
    let img = d.path().join("mkfs.img");
    let out = run(
        "mkfs.fat",
        &[
            "-F",
            "32",
            "-n",
            "ESP",
            "-i",
            "12345678",
            "-C",
            img.to_str().unwrap(),
            "65536",
        ],
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let host = d.path().join("pre.txt");
    fs::write(&host, b"made by mtools").unwrap();
    for args in [
        vec!["mmd", "-i", img.to_str().unwrap(), "::/EFI"],
        vec![
            "mcopy",
            "-i",
            img.to_str().unwrap(),
            host.to_str().unwrap(),
            "::/EFI/pre.txt",
        ],
    ] {
        let out = run(args[0], &args[1..]);
        assert!(
            out.status.success(),
            "{args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    fsck_clean(&img);
    let mut fat = open_rw(&img);
    assert_eq!(fat.read_file("EFI/pre.txt").unwrap(), b"made by mtools");
    assert_eq!(fat.read_file("/efi/PRE.TXT").unwrap(), b"made by mtools");
    drop(fat);
    edit_sequence(&img);
    assert_eq!(mcopy(&img, "/EFI/pre.txt"), b"made by mtools");
}

#[test]
fn editor_errors_leave_volume_unchanged() {
    let d = tempfile::tempdir().unwrap();
    let img = d.path().join("esp.img");
    format_path(&img, &opts(64 * MIB), &esp_files(d.path())).unwrap();
    let before = fs::read(&img).unwrap();
    let mut fat = open_rw(&img);
    let e = fat
        .write_file("EFI/Linux/cairn-0.9.0.efi", b"x")
        .unwrap_err();
    assert!(matches!(e, FatError::AlreadyExists { .. }), "{e}");
    let e = fat
        .write_file("EFI/linux/CAIRN-0.9.0.EFI", b"x")
        .unwrap_err();
    assert!(matches!(e, FatError::AlreadyExists { .. }), "{e}");
    let e = fat
        .write_file("EFI/Linux/huge.efi", &vec![0; 70 << 20])
        .unwrap_err();
    let msg = e.to_string();
    assert!(
        matches!(e, FatError::NoSpace { .. }) && msg.contains("huge.efi"),
        "{msg}"
    );
    let e = fat.write_file("loader/loader.conf/x", b"x").unwrap_err();
    assert!(
        matches!(&e, FatError::NotADirectory { path } if path == "loader/loader.conf"),
        "{e}"
    );
    let e = fat.write_file("nodir/x", b"x").unwrap_err();
    assert!(matches!(e, FatError::NotFound { .. }), "{e}");
    let e = fat.write_file("EFI/a|b", b"x").unwrap_err();
    assert!(matches!(e, FatError::InvalidName { .. }), "{e}");
    let e = fat
        .write_file(&format!("EFI/{}", "é".repeat(256)), b"x")
        .unwrap_err();
    assert!(matches!(e, FatError::NameTooLong { .. }), "{e}");
    let e = fat
        .rename("EFI/Linux/cairn-0.9.0.efi", "longname1.efi")
        .unwrap_err();
    assert!(matches!(e, FatError::AlreadyExists { .. }), "{e}");
    let e = fat.remove_file("EFI/Linux/nope.efi").unwrap_err();
    assert!(matches!(e, FatError::NotFound { .. }), "{e}");
    let e = fat.remove_file("EFI/Linux").unwrap_err();
    assert!(matches!(e, FatError::IsADirectory { .. }), "{e}");
    let e = fat.read_file("EFI").unwrap_err();
    assert!(matches!(e, FatError::IsADirectory { .. }), "{e}");
    drop(fat);
    assert!(
        fs::read(&img).unwrap() == before,
        "a failed edit wrote to the volume"
    );
}

#[test]
fn open_rejects_corrupt_boot_sector() {
    let d = tempfile::tempdir().unwrap();
    let img = d.path().join("esp.img");
    format_path(&img, &opts(64 * MIB), &[]).unwrap();
    let good = fs::read(&img).unwrap();
    let open = |raw: Vec<u8>, len: u64| {
        Fat32::open(Cursor::new(raw), 0, len)
            .err()
            .expect("open must fail")
            .to_string()
    };
    let cases: [(usize, &[u8], &str); 5] = [
        (510, &[0, 0], "signature at offset 510"),
        (11, &[100, 0], "bytes_per_sector at offset 11"),
        (13, &[3], "sectors_per_cluster at offset 13"),
        (17, &[0, 2], "root_entries at offset 17"),
        (36, &[0, 0, 0, 0], "fat_size_32 at offset 36"),
    ];
    for (at, patch, want) in cases {
        let mut raw = good.clone();
        raw[at..at + patch.len()].copy_from_slice(patch);
        let msg = open(raw, 64 * MIB);
        assert!(msg.contains(want), "{want}: {msg}");
    }
    let msg = open(good.clone(), 32 * MIB);
    assert!(
        msg.contains("total_sectors_32 at offset 32")
            && msg.contains(&(64 * MIB / 512).to_string()),
        "{msg}"
    );
    let msg = open(good[..100].to_vec(), 64 * MIB);
    assert!(msg.contains("boot sector"), "{msg}");
    // Garbage in the FAT is reported, not followed forever.
    let mut raw = good.clone();
    let fat_at = 32 * 512 + 4 * 2;
    raw[fat_at..fat_at + 4].copy_from_slice(&2u32.to_le_bytes());
    let mut fat = Fat32::open(Cursor::new(raw), 0, 64 * MIB).unwrap();
    assert!(matches!(fat.list(""), Err(FatError::Corrupt(_))));
}

/// A handle that fails every write after the first `budget`, as a power
/// cut would.
struct Cut {
    inner: Cursor<Vec<u8>>,
    budget: usize,
    writes: usize,
}

impl Read for Cut {
    fn read(&mut self, b: &mut [u8]) -> std::io::Result<usize> {
        self.inner.read(b)
    }
}
impl Seek for Cut {
    fn seek(&mut self, p: SeekFrom) -> std::io::Result<u64> {
        self.inner.seek(p)
    }
}
impl Write for Cut {
    fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
        if self.writes >= self.budget {
            return Err(std::io::Error::other("power cut"));
        }
        self.writes += 1;
        self.inner.write_all(b)?;
        Ok(b.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// After a cut at any write, the file is either absent or complete, and a
/// renamed file is visible under at least one of its names with its bytes.
#[test]
fn cut_after_any_write_never_shows_partial_file() {
    let d = tempfile::tempdir().unwrap();
    let base_img = d.path().join("esp.img");
    format_path(&base_img, &opts(64 * MIB), &esp_files(d.path())).unwrap();
    let base = fs::read(&base_img).unwrap();
    let data = pattern(300_000, 11);
    let old = pattern(3 * MIB as usize + 17, 2);
    type Op = fn(&mut Fat32<Cut>, &[u8]) -> Result<(), FatError>;
    let ops: [(&str, Op); 3] = [
        ("write", |f, d| {
            f.write_file("EFI/Linux/cairn-2.0.0+3.efi", d)
        }),
        ("rename", |f, _| {
            f.rename("EFI/Linux/cairn-1.0.0+3.efi", "cairn-1.0.0+2-1.efi")
        }),
        ("rename-longer", |f, _| {
            f.rename(
                "EFI/Linux/cairn-1.0.0+3.efi",
                "cairn-1.0.0-a-name-long-enough-for-more-slots.efi",
            )
        }),
    ];
    for (label, op) in ops {
        let mut budget = 0;
        loop {
            let io = Cut {
                inner: Cursor::new(base.clone()),
                budget,
                writes: 0,
            };
            let mut fat = Fat32::open(io, 0, 64 * MIB).unwrap();
            let done = op(&mut fat, &data).is_ok();
            let raw = fat.into_inner().inner.into_inner();
            let mut check = Fat32::open(Cursor::new(raw), 0, 64 * MIB).unwrap();
            let names: Vec<String> = check
                .list("EFI/Linux")
                .unwrap()
                .into_iter()
                .map(|e| e.name)
                .collect();
            match label {
                "write" => {
                    if names.contains(&"cairn-2.0.0+3.efi".to_string()) {
                        assert_eq!(
                            check.read_file("EFI/Linux/cairn-2.0.0+3.efi").unwrap(),
                            data,
                            "cut at {budget}"
                        );
                    } else {
                        assert!(!done, "finished but no file");
                    }
                }
                _ => {
                    let present: Vec<&String> = names
                        .iter()
                        .filter(|n| n.starts_with("cairn-1.0.0"))
                        .collect();
                    assert!(
                        !present.is_empty(),
                        "{label} cut at {budget}: file lost: {names:?}"
                    );
                    for n in present {
                        assert_eq!(
                            check.read_file(&format!("EFI/Linux/{n}")).unwrap(),
                            old,
                            "{label} {n}"
                        );
                    }
                }
            }
            if done {
                break;
            }
            budget += 1;
        }
        assert!(budget >= 1, "{label}: no writes?");
    }
}

/// The fsck check itself must notice damage, or every test above is hollow.
#[test]
fn fsck_check_detects_damage() {
    let d = tempfile::tempdir().unwrap();
    let img = d.path().join("esp.img");
    let s = format_path(&img, &opts(64 * MIB), &esp_files(d.path())).unwrap();
    let good = fs::read(&img).unwrap();
    let fat2 = s.geometry.fat_offset(1) as usize;
    let patches: [(usize, &[u8]); 3] = [
        (512 + 488, &[1, 0, 0, 0]),     // FSInfo free count
        (fat2 + 4 * 40, &[0, 0, 0, 0]), // FAT 2 differs from FAT 1
        (6 * 512 + 71, b"X"),           // backup boot sector differs
    ];
    for (at, patch) in patches {
        let mut raw = good.clone();
        raw[at..at + patch.len()].copy_from_slice(patch);
        fs::write(&img, &raw).unwrap();
        assert!(
            fsck_report(&img).is_err(),
            "damage at byte {at} not reported"
        );
    }
}

/// The editor works on a volume inside a larger disk image and touches
/// nothing outside it.
#[test]
fn editor_at_offset_stays_inside_its_region() {
    let start = 3 * MIB;
    let mut disk = Cursor::new(vec![0xA5u8; (70 * MIB) as usize]);
    // The writer leaves free clusters alone: zero the region first, as a
    // fresh image would be.
    disk.get_mut()[start as usize..(start + 64 * MIB) as usize].fill(0);
    format(
        &mut disk,
        start,
        &opts(64 * MIB),
        &[bytes("EFI/BOOT/BOOTX64.EFI", pattern(7000, 1))],
    )
    .unwrap();
    let mut fat = Fat32::open(disk, start, 64 * MIB).unwrap();
    fat.set_epoch(EPOCH);
    fat.create_dir_all("EFI/Linux").unwrap();
    fat.write_file("EFI/Linux/cairn-1.0.0+3.efi", &pattern(100_000, 2))
        .unwrap();
    fat.rename("EFI/Linux/cairn-1.0.0+3.efi", "cairn-1.0.0+2-1.efi")
        .unwrap();
    fat.flush().unwrap();
    assert_eq!(
        fat.read_file("EFI/Linux/cairn-1.0.0+2-1.efi").unwrap(),
        pattern(100_000, 2)
    );
    let raw = fat.into_inner().into_inner();
    let end = (start + 64 * MIB) as usize;
    assert!(raw[..start as usize].iter().all(|&b| b == 0xA5));
    assert!(raw[end..].iter().all(|&b| b == 0xA5));
    let d = tempfile::tempdir().unwrap();
    let img = d.path().join("esp.img");
    fs::write(&img, &raw[start as usize..end]).unwrap();
    fsck_clean(&img);
    assert_eq!(
        mcopy(&img, "/EFI/Linux/cairn-1.0.0+2-1.efi"),
        pattern(100_000, 2)
    );
    assert_eq!(mcopy(&img, "/EFI/BOOT/BOOTX64.EFI"), pattern(7000, 1));
}

/// The same edits on two copies of a volume give identical bytes.
#[test]
fn editor_is_deterministic() {
    let d = tempfile::tempdir().unwrap();
    let base = d.path().join("base.img");
    format_path(&base, &opts(64 * MIB), &esp_files(d.path())).unwrap();
    let edit = |name: &str| {
        let img = d.path().join(name);
        fs::copy(&base, &img).unwrap();
        let mut fat = open_rw(&img);
        fat.write_file("EFI/Linux/cairn-2.0.0+3.efi", &pattern(9000, 3))
            .unwrap();
        fat.rename("EFI/Linux/cairn-2.0.0+3.efi", "cairn-2.0.0+2-1.efi")
            .unwrap();
        fat.remove_file("EFI/Linux/cairn-0.9.0.efi").unwrap();
        fat.create_dir_all("cairn/sub").unwrap();
        fat.flush().unwrap();
        drop(fat);
        fs::read(&img).unwrap()
    };
    assert!(edit("a.img") == edit("b.img"));
}

/// FAT dates start in 1980: an epoch of 0 is clamped, not wrapped.
#[test]
fn epoch_before_1980_is_clamped() {
    let d = tempfile::tempdir().unwrap();
    let img = d.path().join("esp.img");
    let mut o = opts(64 * MIB);
    o.epoch = 0;
    format_path(
        &img,
        &o,
        &[bytes("loader/loader.conf", b"timeout 0\n".to_vec())],
    )
    .unwrap();
    fsck_clean(&img);
    let listing = mdir_long(&img, "/loader");
    assert!(listing.contains("1980-01-01   0:00"), "{listing}");
}

#[test]
fn replace_file_swaps_content_and_checks_clean() {
    let d = tempfile::tempdir().unwrap();
    let img = d.path().join("esp.img");
    let files = esp_files(d.path());
    format_path(&img, &opts(64 * MIB), &files).unwrap();
    const LOADER: &str = "EFI/BOOT/BOOTX64.EFI";
    let free = open_rw(&img).free_bytes();
    // Larger, then the same size, then smaller, empty and back again.
    for (i, len) in [250_000usize, 250_000, 1000, 0, 4096]
        .into_iter()
        .enumerate()
    {
        let data = pattern(len, 20 + i as u8);
        let mut fat = open_rw(&img);
        assert!(fat.replace_file(LOADER, &data).unwrap(), "{len} bytes");
        let cs = fat.geometry().cluster_size();
        // The old chain is freed, not leaked.
        assert_eq!(
            fat.free_bytes(),
            free + 100_000u64.div_ceil(cs) * cs - (len as u64).div_ceil(cs) * cs
        );
        drop(fat);
        fsck_clean(&img);
        assert_eq!(mcopy(&img, LOADER), data, "{len} bytes");
    }
    for f in files.iter().filter(|f| f.path != LOADER) {
        assert_eq!(mcopy(&img, &f.path), content_of(f), "{}", f.path);
    }
    // The same content again writes nothing at all.
    let before = fs::read(&img).unwrap();
    let mut fat = open_rw(&img);
    assert!(!fat.replace_file(LOADER, &pattern(4096, 24)).unwrap());
    assert!(matches!(
        fat.replace_file("EFI/BOOT/MISSING.EFI", b"x"),
        Err(FatError::NotFound { .. })
    ));
    assert!(matches!(
        fat.replace_file("EFI/BOOT", b"x"),
        Err(FatError::IsADirectory { .. })
    ));
    drop(fat);
    assert!(fs::read(&img).unwrap() == before);
}

/// A cut at any write of `replace_file` leaves the file whole: the old bytes
/// until the directory entry is written, the new ones from then on. Between
/// the first FAT write and the last, `fsck.fat -n` finds clusters allocated
/// but unused (or FSInfo's count stale) and exits 1: repairable leaks, never
/// a damaged file.
#[test]
fn cut_during_replace_leaves_old_or_new_file() {
    let d = tempfile::tempdir().unwrap();
    let base_img = d.path().join("esp.img");
    format_path(&base_img, &opts(64 * MIB), &esp_files(d.path())).unwrap();
    let base = fs::read(&base_img).unwrap();
    let old = pattern(100_000, 1);
    // 512-byte clusters: the old file holds 196, the new one 352.
    let new = pattern(180_000, 30);
    let cut_img = d.path().join("cut.img");
    let mut first_new = None;
    let mut budget = 0;
    loop {
        let io = Cut {
            inner: Cursor::new(base.clone()),
            budget,
            writes: 0,
        };
        let mut fat = Fat32::open(io, 0, 64 * MIB).unwrap();
        let done = fat.replace_file("EFI/BOOT/BOOTX64.EFI", &new).is_ok();
        let raw = fat.into_inner().inner.into_inner();
        fs::write(&cut_img, &raw).unwrap();
        let got = Fat32::open(Cursor::new(raw), 0, 64 * MIB)
            .unwrap()
            .read_file("EFI/BOOT/BOOTX64.EFI")
            .unwrap();
        if got == new {
            first_new.get_or_insert(budget);
        } else {
            assert!(got == old, "cut at {budget}: neither old nor new");
            assert!(first_new.is_none(), "cut at {budget}: old after new");
        }
        // What fsck.fat 4.2 says: the lost chain (the new one before the
        // entry write, the old one after it) and, after a half-written FAT
        // pair, the FAT copies differing; then a stale FSInfo count.
        let report = fsck_report(&cut_img).err().unwrap_or_default();
        let expect: &[&str] = match budget {
            0 | 1 | 7 => &[],
            2 => &["FATs differ", "Reclaimed 352 unused clusters"],
            3 => &["Reclaimed 352 unused clusters"],
            4 => &["Reclaimed 196 unused clusters"],
            5 => &["FATs differ", "Free cluster summary wrong"],
            _ => &["Free cluster summary wrong"],
        };
        assert_eq!(
            report.is_empty(),
            expect.is_empty(),
            "cut at {budget}: {report}"
        );
        for e in expect {
            assert!(report.contains(e), "cut at {budget}: {report}");
        }
        if done {
            break;
        }
        budget += 1;
    }
    // data, FAT 1, FAT 2, entry, FAT 1, FAT 2, FSInfo
    assert_eq!(budget, 7);
    assert_eq!(first_new, Some(4));
}

/// `reserve_entries`: trailing deleted slots become end-of-directory, the
/// directory grows to hold `n` free slots after its last live entry, live
/// entries stay where they are, and the volume checks clean.
#[test]
fn reserve_entries_leaves_room_after_the_last_live_entry() {
    let d = tempfile::tempdir().unwrap();
    let img = d.path().join("esp.img");
    format_path(&img, &opts(64 * MIB), &[]).unwrap();
    let mut fat = open_rw(&img);
    fat.create_dir_all("EFI/Linux").unwrap();
    for i in 0..6 {
        fat.write_file(&format!("EFI/Linux/cairn-{i}.0.0+3.efi"), &pattern(700, i))
            .unwrap();
    }
    for i in 3..6 {
        fat.remove_file(&format!("EFI/Linux/cairn-{i}.0.0+3.efi"))
            .unwrap();
    }
    let cs = fat.geometry().cluster_size() as usize;
    let grew = fat.reserve_entries("EFI/Linux", 64).unwrap();
    assert!(grew > 0);
    assert_eq!(
        fat.reserve_entries("EFI/Linux", 64).unwrap(),
        0,
        "idempotent"
    );
    let names: Vec<String> = fat
        .list("EFI/Linux")
        .unwrap()
        .into_iter()
        .map(|e| e.name)
        .collect();
    assert_eq!(
        names,
        [
            "cairn-0.0.0+3.efi",
            "cairn-1.0.0+3.efi",
            "cairn-2.0.0+3.efi"
        ]
    );
    drop(fat);
    // The deleted sets' slots are zero now: the end marker follows the
    // last live entry.
    let dir = mcopy_dir_raw(&img, "EFI/Linux");
    // `.`, `..` and three live sets of 3 slots, then at least 64 free
    // slots, in as few clusters as hold them.
    assert_eq!(dir.len(), ((2 + 9 + 64) * 32usize).div_ceil(cs) * cs);
    assert!(
        dir[11 * 32..].iter().all(|b| *b == 0),
        "slots after the live ones are zeroed"
    );
    fsck_clean(&img);
}

/// The raw bytes of a directory's clusters (its chain from the FAT).
fn mcopy_dir_raw(img: &Path, path: &str) -> Vec<u8> {
    let mut fat = open_rw(img);
    let (parent, name) = path.rsplit_once('/').unwrap_or(("", path));
    let first = fat
        .list(parent)
        .unwrap()
        .into_iter()
        .find(|e| e.name == name)
        .unwrap()
        .first_cluster;
    let geo = fat.geometry();
    drop(fat);
    let bytes = fs::read(img).unwrap();
    let fat_at = geo.fat_offset(0) as usize;
    let mut out = Vec::new();
    let mut c = first;
    while (2..0x0FFF_FFF8).contains(&c) {
        let at = geo.cluster_offset(c) as usize;
        out.extend_from_slice(&bytes[at..at + geo.cluster_size() as usize]);
        c = u32::from_le_bytes(bytes[fat_at + 4 * c as usize..][..4].try_into().unwrap())
            & 0x0FFF_FFFF;
    }
    out
}

/// `write_file_appended`: the set goes after the last live entry, moved to
/// the next sector when the span would cross one, the skipped slots
/// deleted (0xE5) and everything after the set zeroed; mtools lists
/// exactly the live files and fsck.fat finds nothing.
#[test]
fn write_file_appended_keeps_the_span_in_one_sector() {
    let d = tempfile::tempdir().unwrap();
    let img = d.path().join("esp.img");
    format_path(&img, &opts(64 * MIB), &[]).unwrap();
    let mut fat = open_rw(&img);
    fat.create_dir_all("EFI/Linux").unwrap();
    let name = "cairn-2.0.0+3.tmp";
    assert_eq!(entry_slots(name), 3);
    assert_eq!(entry_slots("BOOTX64.EFI"), 1);
    assert_eq!(SECTOR_SLOTS, 16);
    // Slots 2-4 live, 5-7 deleted: the set would start at 5, and 5..17
    // crosses into the second sector.
    fat.write_file("EFI/Linux/cairn-1.0.0.efi", &pattern(700, 1))
        .unwrap();
    fat.write_file("EFI/Linux/gone.efi.x", &pattern(10, 2))
        .unwrap();
    fat.remove_file("EFI/Linux/gone.efi.x").unwrap();
    assert_eq!(fat.appended_slot("EFI/Linux", 3, 12).unwrap(), 16);
    assert_eq!(fat.appended_slot("EFI/Linux", 3, 11).unwrap(), 5);
    let at = fat
        .write_file_appended(&format!("EFI/Linux/{name}"), &pattern(900, 3), 12)
        .unwrap();
    assert_eq!(at, 16);
    // Two slots (one long-name entry), fit after it in sector 1: no padding.
    let at = fat
        .write_file_appended("EFI/Linux/x.y.tmp", &pattern(5, 4), 3)
        .unwrap();
    assert_eq!(at, 19);
    // A span larger than a sector cannot be helped: right after the last.
    assert_eq!(fat.appended_slot("EFI/Linux", 3, 17).unwrap(), 21);
    assert_eq!(
        fat.read_file(&format!("EFI/Linux/{name}")).unwrap(),
        pattern(900, 3)
    );
    drop(fat);
    let dir = mcopy_dir_raw(&img, "EFI/Linux");
    for slot in 5..16 {
        assert_eq!(dir[slot * 32], 0xE5, "padding slot {slot}");
    }
    assert_ne!(dir[16 * 32], 0xE5);
    assert!(
        dir[21 * 32..].iter().all(|b| *b == 0),
        "the directory ends after the set"
    );
    assert_eq!(
        sorted(
            &mdir_names(&img, "/EFI/Linux")
                .iter()
                .map(|s| s.as_str())
                .collect::<Vec<_>>()
        ),
        sorted(&["cairn-1.0.0.efi", name, "x.y.tmp"])
    );
    assert_eq!(mcopy(&img, &format!("EFI/Linux/{name}")), pattern(900, 3));
    fsck_clean(&img);
}
