//! The squashfs writer checked by squashfs-tools (`unsquashfs`) and, for the
//! directory index, by the kernel itself (loop mount).

use std::collections::HashMap;
use std::ffi::OsStr;
use std::fs;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{symlink, FileTypeExt, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::Command;

use artifacts::squashfs::{
    write_squashfs, write_squashfs_file, DirCache, MemoryCache, SquashfsError, SquashfsOptions,
};
use artifacts::tree::Kind;
use artifacts::{ModeRule, Normalize, Tree};

const EPOCH: u64 = 1_704_067_200; // 2024-01-01 00:00 UTC
const BS: usize = 128 * 1024;

/// Deterministic incompressible bytes.
fn noise(seed: u64, len: usize) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            (x >> 24) as u8
        })
        .collect()
}

/// Compressible text.
fn text(seed: u64, len: usize) -> Vec<u8> {
    let mut out = Vec::with_capacity(len);
    let mut i = seed;
    while out.len() < len {
        out.extend_from_slice(format!("line {i} of some compressible text\n").as_bytes());
        i += 1;
    }
    out.truncate(len);
    out
}

fn mknod(path: &Path, kind: u32, major: u32, minor: u32) {
    let c = std::ffi::CString::new(path.as_os_str().as_bytes()).unwrap();
    let rc = unsafe { libc::mknod(c.as_ptr(), kind | 0o640, libc::makedev(major, minor)) };
    assert_eq!(
        rc,
        0,
        "mknod {}: {}",
        path.display(),
        std::io::Error::last_os_error()
    );
}

const BIG_DIR: &str = "many";
const BIG_DIR_ENTRIES: usize = 400;

fn big_dir_name(i: usize) -> String {
    format!("entry-with-a-reasonably-long-name-{i:04}")
}

/// Every kind of entry the writer has to handle.
fn fixture(root: &Path) {
    let w = |p: &str, data: &[u8]| {
        let p = root.join(p);
        fs::create_dir_all(p.parent().unwrap()).unwrap();
        fs::write(p, data).unwrap();
    };
    fs::create_dir_all(root.join("a/b/c/d")).unwrap();
    fs::create_dir_all(root.join("emptydir")).unwrap();
    w("a/b/c/d/deep", b"deep file\n");
    w("empty", b"");
    w("one-block", &noise(1, BS));
    w("multi-noise", &noise(2, 3 * BS + 5000));
    w("multi-text", &text(3, 5 * BS + 77));
    w("multi-text-copy", &text(3, 5 * BS + 77));
    w("a/dup-of-noise", &noise(2, 3 * BS + 5000));
    for i in 0..20u64 {
        w(
            &format!("small/s{i:02}"),
            &text(i * 100, 100 + 300 * i as usize),
        );
    }
    w("small/dup-of-s05", &text(500, 1600));
    let mut sparse = vec![0u8; 3 * BS];
    sparse.extend_from_slice(&noise(9, 1000));
    sparse.extend_from_slice(&vec![0u8; 2 * BS]);
    w("sparse", &sparse);
    w("zeros", &vec![0u8; 2 * BS]);
    for i in 0..BIG_DIR_ENTRIES {
        w(
            &format!("{BIG_DIR}/{}", big_dir_name(i)),
            format!("{i}\n").as_bytes(),
        );
    }
    w("links/target", &text(7, 2 * BS + 10));
    fs::hard_link(root.join("links/target"), root.join("links/second")).unwrap();
    fs::hard_link(root.join("links/target"), root.join("a/third")).unwrap();
    w("small-link", b"tiny");
    fs::hard_link(root.join("small-link"), root.join("a/b/small-link2")).unwrap();
    symlink("one-block", root.join("sym-short")).unwrap();
    let long: String = (0..25).map(|i| format!("dir{i:05}/")).collect::<String>() + "end";
    assert!(long.len() > 200);
    symlink(&long, root.join("sym-long")).unwrap();
    symlink("/nonexistent/absolute", root.join("a/sym-dangling")).unwrap();
    fs::create_dir(root.join("dev")).unwrap();
    mknod(&root.join("dev/null"), libc::S_IFCHR, 1, 3);
    mknod(&root.join("dev/sda1"), libc::S_IFBLK, 8, 1);
    mknod(&root.join("dev/bigminor"), libc::S_IFCHR, 240, 70_000);
    mknod(&root.join("dev/fifo"), libc::S_IFIFO, 0, 0);
    w("bin/suid", b"#!/bin/sh\n");
    fs::set_permissions(root.join("bin/suid"), fs::Permissions::from_mode(0o4755)).unwrap();
    fs::create_dir(root.join("sgid-dir")).unwrap();
    fs::set_permissions(root.join("sgid-dir"), fs::Permissions::from_mode(0o2775)).unwrap();
    fs::create_dir(root.join("tmp")).unwrap();
    fs::set_permissions(root.join("tmp"), fs::Permissions::from_mode(0o1777)).unwrap();
    w("héllo-wörld", "ünïcödé\n".as_bytes());
    w("日本語/ファイル.txt", "こんにちは\n".as_bytes());
    w("owned", b"owned by 1234:5678\n");
    std::os::unix::fs::chown(root.join("owned"), Some(1234), Some(5678)).unwrap();
    fs::set_permissions(root.join("owned"), fs::Permissions::from_mode(0o600)).unwrap();
}

fn rule() -> Normalize {
    Normalize {
        uid: None,
        gid: None,
        mode: ModeRule::Keep,
        mtime: EPOCH,
    }
}

struct Built {
    _dir: tempfile::TempDir,
    src: PathBuf,
    img: PathBuf,
    tree: Tree,
    stats: artifacts::squashfs::SquashfsStats,
}

fn build_with(opts: &SquashfsOptions) -> Built {
    let dir = tempfile::tempdir().unwrap();
    let src = dir.path().join("src");
    fs::create_dir(&src).unwrap();
    fixture(&src);
    let tree = Tree::read(&src, rule()).unwrap();
    let img = dir.path().join("out.img");
    let stats = write_squashfs_file(&tree, &img, opts).unwrap();
    Built {
        _dir: dir,
        src,
        img,
        tree,
        stats,
    }
}

fn build() -> Built {
    build_with(&SquashfsOptions::new(EPOCH))
}

fn run(cmd: &mut Command) -> String {
    let out = cmd
        .env("TZ", "UTC")
        .env("LC_ALL", "C")
        .output()
        .unwrap_or_else(|e| panic!("running {cmd:?}: {e} (is squashfs-tools installed?)"));
    assert!(
        out.status.success(),
        "{cmd:?} failed: {}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).expect("tool output is UTF-8")
}

fn ls_mode(st_mode: u32) -> String {
    let t = match st_mode & libc::S_IFMT {
        libc::S_IFDIR => 'd',
        libc::S_IFLNK => 'l',
        libc::S_IFCHR => 'c',
        libc::S_IFBLK => 'b',
        libc::S_IFIFO => 'p',
        _ => '-',
    };
    let mut s = String::from(t);
    let bits = [
        (0o400, 'r'),
        (0o200, 'w'),
        (0o100, 'x'),
        (0o040, 'r'),
        (0o020, 'w'),
        (0o010, 'x'),
        (0o004, 'r'),
        (0o002, 'w'),
        (0o001, 'x'),
    ];
    for (k, (bit, c)) in bits.iter().enumerate() {
        let set = st_mode & bit != 0;
        let special = match k {
            2 => st_mode & 0o4000 != 0,
            5 => st_mode & 0o2000 != 0,
            8 => st_mode & 0o1000 != 0,
            _ => false,
        };
        s.push(match (special, set, k) {
            (true, true, 8) => 't',
            (true, false, 8) => 'T',
            (true, true, _) => 's',
            (true, false, _) => 'S',
            (false, true, _) => *c,
            (false, false, _) => '-',
        });
    }
    s
}

#[test]
fn listing_matches_tree() {
    let b = build();
    let out = run(Command::new("unsquashfs").arg("-lln").arg(&b.img));
    let mut got: HashMap<String, String> = HashMap::new();
    for line in out.lines() {
        let f: Vec<&str> = line.split_whitespace().collect();
        let name_at = f
            .iter()
            .position(|x| x.starts_with("squashfs-root"))
            .unwrap();
        let path = f[name_at]
            .trim_start_matches("squashfs-root")
            .trim_start_matches('/');
        let desc = [
            &f[..name_at - 2],
            &f[name_at - 2..name_at],
            &f[name_at + 1..],
        ]
        .iter()
        .map(|p| p.join(" "))
        .collect::<Vec<_>>()
        .join(" | ")
        // Device numbers are padded ("8,  1"); compare them unpadded.
        .replace(", ", ",");
        got.insert(path.to_string(), desc);
    }
    assert_eq!(got.len(), b.tree.entries.len(), "{out}");
    for e in &b.tree.entries {
        let path = e.path.to_str().unwrap();
        let size = match &e.kind {
            Kind::Dir => None,
            Kind::File { size } => Some(size.to_string()),
            Kind::Symlink { target } => Some(target.len().to_string()),
            Kind::CharDev { major, minor } | Kind::BlockDev { major, minor } => {
                // unsquashfs -lln prints the stored (kernel "new") dev_t split
                // the old 8-bit way; mksquashfs images show the same.
                let enc = (minor & 0xff) | (major << 8) | ((minor & !0xff) << 12);
                Some(format!("{},{}", enc >> 8, enc & 0xff))
            }
            Kind::Fifo => Some("0".into()),
        };
        let owner = format!("{}/{}", e.uid, e.gid);
        let tail = match &e.kind {
            Kind::Symlink { target } => format!("-> {}", target.to_str().unwrap()),
            _ => String::new(),
        };
        let line = &got[path];
        let mut want = vec![ls_mode(e.st_mode()), owner];
        if let Some(s) = size {
            want.push(s);
        }
        let head = want.join(" ");
        assert!(
            line.starts_with(&format!("{head} ")),
            "{path}: got {line:?}, want it to start with {head:?}"
        );
        assert!(
            line.ends_with(&format!("| 2024-01-01 00:00 | {tail}")),
            "{path}: {line:?} (time, link target)"
        );
    }
}

#[test]
fn extracts_identical_content() {
    let b = build();
    let x = b.img.with_file_name("x");
    run(Command::new("unsquashfs")
        .arg("-q")
        .arg("-n")
        .arg("-d")
        .arg(&x)
        .arg(&b.img));
    let mut inode_of_group: HashMap<usize, u64> = HashMap::new();
    for (i, e) in b.tree.entries.iter().enumerate() {
        let src = b.src.join(&e.path);
        let dst = x.join(&e.path);
        let m = fs::symlink_metadata(&dst).unwrap_or_else(|err| panic!("{}: {err}", dst.display()));
        assert_eq!(m.mode(), e.st_mode(), "{}: mode", e.path.display());
        assert_eq!(
            (m.uid(), m.gid()),
            (e.uid, e.gid),
            "{}: owner",
            e.path.display()
        );
        if !matches!(e.kind, Kind::Symlink { .. }) {
            assert_eq!(m.mtime() as u64, EPOCH, "{}: mtime", e.path.display());
        }
        match &e.kind {
            Kind::File { .. } => {
                assert!(
                    fs::read(&src).unwrap() == fs::read(&dst).unwrap(),
                    "{}: content differs",
                    e.path.display()
                );
                if let Some(g) = e.link_group {
                    let ino = *inode_of_group.entry(g).or_insert(m.ino());
                    assert_eq!(m.ino(), ino, "{}: not hard-linked", e.path.display());
                    let members = b.tree.entries.iter().filter(|x| x.link_group == Some(g));
                    assert_eq!(m.nlink() as usize, members.count(), "{}", e.path.display());
                } else {
                    assert_eq!(m.nlink(), 1, "{}", e.path.display());
                }
            }
            Kind::Symlink { target } => {
                assert_eq!(&fs::read_link(&dst).unwrap().into_os_string(), target)
            }
            Kind::CharDev { .. } | Kind::BlockDev { .. } => {
                assert_eq!(m.rdev(), fs::symlink_metadata(&src).unwrap().rdev());
                assert_eq!(
                    m.file_type().is_char_device(),
                    matches!(e.kind, Kind::CharDev { .. })
                );
            }
            Kind::Fifo => assert!(m.file_type().is_fifo()),
            Kind::Dir => {
                let mut names: Vec<_> = fs::read_dir(&dst)
                    .unwrap()
                    .map(|d| d.unwrap().file_name())
                    .collect();
                names.sort();
                let mut want: Vec<_> = b
                    .tree
                    .children(i)
                    .iter()
                    .map(|&c| OsStr::from_bytes(b.tree.entries[c].name()).to_os_string())
                    .collect();
                want.sort();
                assert_eq!(names, want, "{}: children", e.path.display());
            }
        }
    }
    assert_eq!(b.stats.duplicate_files, 3, "{:?}", b.stats);
    // "sparse": 3 leading zero blocks, then a mixed one, then one full zero
    // block (the rest is its tail); "zeros": 2.
    assert_eq!(b.stats.sparse_blocks, 6, "{:?}", b.stats);
}

#[test]
fn superblock_as_unsquashfs_reads_it() {
    let b = build();
    let out = run(Command::new("unsquashfs").arg("-s").arg(&b.img));
    let unique = b
        .tree
        .entries
        .iter()
        .enumerate()
        .filter(|(i, e)| e.link_group.is_none_or(|g| g == *i))
        .count();
    for want in [
        "Compression zstd".to_string(),
        "Block size 131072".to_string(),
        "Creation or last append time Mon Jan  1 00:00:00 2024".to_string(),
        format!("Number of inodes {unique}"),
        format!("Number of fragments {}", b.stats.fragment_blocks),
        "Number of ids 3".to_string(),
        "Duplicates are removed".to_string(),
        "Always-use-fragments option is specified".to_string(),
        format!("Filesystem size {} bytes", b.stats.bytes_used),
    ] {
        assert!(out.contains(&want), "missing {want:?} in:\n{out}");
    }
    assert_eq!(b.stats.inodes as usize, unique);
    let len = fs::metadata(&b.img).unwrap().len();
    assert_eq!(len % 4096, 0);
    assert_eq!(len, b.stats.image_len);
    assert!(len - b.stats.bytes_used < 4096);
}

#[test]
fn level_is_recorded_as_compressor_option() {
    let mut o = SquashfsOptions::new(EPOCH);
    o.level = 19;
    let b = build_with(&o);
    let out = run(Command::new("unsquashfs").arg("-s").arg(&b.img));
    assert!(out.contains("compression-level 19"), "{out}");
    let x = b.img.with_file_name("x");
    run(Command::new("unsquashfs")
        .arg("-q")
        .arg("-n")
        .arg("-d")
        .arg(&x)
        .arg(&b.img));
    assert_eq!(
        fs::read(x.join("multi-noise")).unwrap(),
        fs::read(b.src.join("multi-noise")).unwrap()
    );
}

#[test]
fn reproducible_across_dirs_and_thread_counts() {
    let mut one = SquashfsOptions::new(EPOCH);
    one.threads = 1;
    let mut many = SquashfsOptions::new(EPOCH);
    many.threads = 5;
    let a = build_with(&one);
    let b = build_with(&many);
    assert_ne!(a.src, b.src);
    let (ia, ib) = (fs::read(&a.img).unwrap(), fs::read(&b.img).unwrap());
    assert!(
        ia == ib,
        "images differ ({} vs {} bytes)",
        ia.len(),
        ib.len()
    );
    // An in-memory writer gives the same bytes as the file writer.
    let mut cur = std::io::Cursor::new(Vec::new());
    write_squashfs(&a.tree, &mut cur, &one).unwrap();
    assert!(cur.into_inner() == ia);
}

/// The kernel resolves names through the directory index; unsquashfs reads
/// listings sequentially and never looks at it. Every name of the big
/// directory is looked up before anything lists it.
#[test]
fn kernel_lookups_through_directory_index() {
    let b = build();
    let mnt = b.img.with_file_name("mnt");
    fs::create_dir(&mnt).unwrap();
    run(Command::new("mount")
        .args(["-t", "squashfs", "-o", "loop,ro"])
        .arg(&b.img)
        .arg(&mnt));
    struct Unmount(PathBuf);
    impl Drop for Unmount {
        fn drop(&mut self) {
            let _ = Command::new("umount").arg(&self.0).status();
        }
    }
    let _guard = Unmount(mnt.clone());
    for i in (0..BIG_DIR_ENTRIES).rev() {
        let p = mnt.join(BIG_DIR).join(big_dir_name(i));
        let got = fs::read(&p).unwrap_or_else(|e| panic!("{}: {e}", p.display()));
        assert_eq!(got, format!("{i}\n").as_bytes());
    }
    assert!(fs::symlink_metadata(mnt.join(BIG_DIR).join("entry-missing")).is_err());
    assert!(fs::symlink_metadata(mnt.join(BIG_DIR).join("zzz")).is_err());
    assert!(fs::symlink_metadata(mnt.join(BIG_DIR).join("a")).is_err());
    let listed = fs::read_dir(mnt.join(BIG_DIR)).unwrap().count();
    assert_eq!(listed, BIG_DIR_ENTRIES);
    let m = fs::metadata(mnt.join("links/second")).unwrap();
    assert_eq!(m.nlink(), 3);
    assert_eq!(m.ino(), fs::metadata(mnt.join("a/third")).unwrap().ino());
    assert_eq!(
        fs::read(mnt.join("sparse")).unwrap(),
        fs::read(b.src.join("sparse")).unwrap()
    );
    let dev = fs::symlink_metadata(mnt.join("dev/bigminor"))
        .unwrap()
        .rdev();
    assert_eq!((libc::major(dev), libc::minor(dev)), (240, 70_000));
}

#[test]
fn cache_recompresses_only_changed_blocks() {
    let dir = tempfile::tempdir().unwrap();
    let src = dir.path().join("src");
    fs::create_dir(&src).unwrap();
    fixture(&src);
    let cache = MemoryCache::default();
    let mut o = SquashfsOptions::new(EPOCH);
    o.cache = Some(&cache);
    let tree = Tree::read(&src, rule()).unwrap();
    let first = write_squashfs_file(&tree, &dir.path().join("1.img"), &o).unwrap();
    assert_eq!(first.cache_hits, 0);
    let stored = cache.len();
    // Change one block of a multi-block file.
    let mut data = fs::read(src.join("multi-noise")).unwrap();
    data[BS + 10] ^= 0xff;
    fs::write(src.join("multi-noise"), &data).unwrap();
    let tree = Tree::read(&src, rule()).unwrap();
    let second = write_squashfs_file(&tree, &dir.path().join("2.img"), &o).unwrap();
    let blocks = second.data_blocks + second.fragment_blocks as u64;
    // Misses: the changed block, and the fragment block, since the changed
    // file is no longer a duplicate of a/dup-of-noise and adds its own tail.
    assert_eq!(second.cache_hits, blocks - 2, "{second:?}");
    assert_eq!(cache.len(), stored + 2);
    let uncached = dir.path().join("3.img");
    write_squashfs_file(&tree, &uncached, &SquashfsOptions::new(EPOCH)).unwrap();
    assert!(fs::read(dir.path().join("2.img")).unwrap() == fs::read(uncached).unwrap());
}

#[test]
fn vanished_source_file_is_named() {
    let dir = tempfile::tempdir().unwrap();
    let src = dir.path().join("src");
    fs::create_dir(&src).unwrap();
    fixture(&src);
    let tree = Tree::read(&src, rule()).unwrap();
    fs::remove_file(src.join("multi-text")).unwrap();
    let err = write_squashfs_file(
        &tree,
        &dir.path().join("o.img"),
        &SquashfsOptions::new(EPOCH),
    )
    .unwrap_err();
    assert!(matches!(err, SquashfsError::Read { .. }), "{err:?}");
    let msg = err.to_string();
    assert!(
        msg.contains(&src.join("multi-text").display().to_string()),
        "{msg}"
    );
}

#[test]
fn grown_source_file_reports_sizes() {
    let dir = tempfile::tempdir().unwrap();
    let src = dir.path().join("src");
    fs::create_dir(&src).unwrap();
    fixture(&src);
    let tree = Tree::read(&src, rule()).unwrap();
    fs::write(src.join("small/s03"), vec![b'x'; 5000]).unwrap();
    let err = write_squashfs_file(
        &tree,
        &dir.path().join("o.img"),
        &SquashfsOptions::new(EPOCH),
    )
    .unwrap_err()
    .to_string();
    assert!(
        err.contains("small/s03") && err.contains("1000") && err.contains("5000"),
        "{err}"
    );
}

#[test]
fn bad_options_and_times_are_rejected() {
    let dir = tempfile::tempdir().unwrap();
    fs::write(dir.path().join("f"), b"x").unwrap();
    let tree = Tree::read(dir.path(), rule()).unwrap();
    let mut cur = std::io::Cursor::new(Vec::new());
    let mut o = SquashfsOptions::new(EPOCH);
    o.block_size = 100_000;
    let e = write_squashfs(&tree, &mut cur, &o).unwrap_err().to_string();
    assert!(e.contains("100000"), "{e}");
    let mut o = SquashfsOptions::new(EPOCH);
    o.level = 23;
    let e = write_squashfs(&tree, &mut cur, &o).unwrap_err().to_string();
    assert!(e.contains("23"), "{e}");
    let e = write_squashfs(&tree, &mut cur, &SquashfsOptions::new(1 << 33))
        .unwrap_err()
        .to_string();
    assert!(e.contains(&(1u64 << 33).to_string()), "{e}");
    let late = Tree::read(dir.path(), Normalize::root_owned(1 << 32)).unwrap();
    let e = write_squashfs(&late, &mut cur, &SquashfsOptions::new(EPOCH))
        .unwrap_err()
        .to_string();
    assert!(e.contains(&(1u64 << 32).to_string()), "{e}");
    let empty = Tree {
        root: dir.path().to_path_buf(),
        entries: Vec::new(),
    };
    assert!(matches!(
        write_squashfs(&empty, &mut cur, &SquashfsOptions::new(EPOCH)),
        Err(SquashfsError::NoRoot)
    ));
}

/// Files past the whole-read size are hashed, then streamed block by block.
#[test]
fn large_files_stream_and_deduplicate() {
    let dir = tempfile::tempdir().unwrap();
    let src = dir.path().join("src");
    fs::create_dir(&src).unwrap();
    let mut big = text(11, 9 << 20);
    big.extend_from_slice(&vec![0u8; 2 * BS]);
    big.extend_from_slice(&noise(12, 123));
    fs::write(src.join("big1"), &big).unwrap();
    fs::write(src.join("big2"), &big).unwrap();
    big[5] ^= 1;
    fs::write(src.join("big3"), &big).unwrap();
    let tree = Tree::read(&src, rule()).unwrap();
    let img = dir.path().join("o.img");
    let stats = write_squashfs_file(&tree, &img, &SquashfsOptions::new(EPOCH)).unwrap();
    assert_eq!(stats.duplicate_files, 1, "{stats:?}");
    assert_eq!(stats.sparse_blocks, 4, "{stats:?}");
    let x = dir.path().join("x");
    run(Command::new("unsquashfs")
        .arg("-q")
        .arg("-n")
        .arg("-d")
        .arg(&x)
        .arg(&img));
    for n in ["big1", "big2", "big3"] {
        assert!(
            fs::read(x.join(n)).unwrap() == fs::read(src.join(n)).unwrap(),
            "{n}"
        );
    }
}

#[test]
fn dir_cache_serves_a_second_process_worth_of_blocks() {
    let dir = tempfile::tempdir().unwrap();
    let src = dir.path().join("src");
    fs::create_dir(&src).unwrap();
    fixture(&src);
    let tree = Tree::read(&src, rule()).unwrap();
    let plain = write_squashfs_file(
        &tree,
        &dir.path().join("0.img"),
        &SquashfsOptions::new(EPOCH),
    )
    .unwrap();
    for (n, hits) in [
        (1, 0),
        (2, plain.data_blocks + plain.fragment_blocks as u64),
    ] {
        // A fresh DirCache each time, as a new process would open it.
        let cache = DirCache::new(dir.path().join("cache"));
        let mut o = SquashfsOptions::new(EPOCH);
        o.cache = Some(&cache);
        let img = dir.path().join(format!("{n}.img"));
        let s = write_squashfs_file(&tree, &img, &o).unwrap();
        assert_eq!(s.cache_hits, hits, "run {n}: {s:?}");
        assert!(fs::read(&img).unwrap() == fs::read(dir.path().join("0.img")).unwrap());
    }
}
