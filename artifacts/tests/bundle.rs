//! The upgrade bundle tar, checked with GNU tar (`tar -tvf`, `tar -xf`), and
//! the streaming reader fed archives GNU tar crafted to be hostile.

use std::fs;
use std::io::Read;
use std::os::unix::fs::symlink;
use std::path::{Path, PathBuf};
use std::process::Command;

use artifacts::bundle::{self, BundleError, BundleReader, ReadPolicy};

const EPOCH: u64 = 1_700_000_000;
/// `date -u -d @1700000000 '+%F %T'`
const EPOCH_STR: &str = "2023-11-14 22:13:20";

/// A bundle's names (test data: the real list is `contract::bundle::FILES`).
const NAMES: [&str; 6] = [
    "manifest.json",
    "manifest.json.sig",
    "uki.efi",
    "rootfs.img",
    "systemd-bootx64.efi",
    "layout.json",
];

/// Sizes around the 512-byte padding boundary, one spanning several copy
/// buffers.
const SIZES: [usize; 6] = [300, 64, 511, 2 * 1024 * 1024 + 513, 512, 0];

fn content(i: usize, len: usize) -> Vec<u8> {
    (0..len).map(|j| (j * 31 + i * 7 + j / 251) as u8).collect()
}

fn stage(dir: &Path) -> Vec<(String, PathBuf)> {
    fs::create_dir_all(dir).unwrap();
    NAMES
        .iter()
        .zip(SIZES)
        .enumerate()
        .map(|(i, (n, len))| {
            let p = dir.join(format!("src-{n}"));
            fs::write(&p, content(i, len)).unwrap();
            (n.to_string(), p)
        })
        .collect()
}

fn refs(v: &[(String, PathBuf)]) -> Vec<(&str, &Path)> {
    v.iter().map(|(n, p)| (n.as_str(), p.as_path())).collect()
}

fn policy() -> ReadPolicy {
    ReadPolicy {
        allowed: NAMES.iter().map(|s| s.to_string()).collect(),
        max_entry_size: 64 << 20,
        leading: vec!["manifest.json".to_string()],
    }
}

fn run(cmd: &mut Command) -> String {
    let out = cmd
        .output()
        .unwrap_or_else(|e| panic!("running {cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

fn sha256sum(p: &Path) -> String {
    run(Command::new("sha256sum").arg(p))
        .split_whitespace()
        .next()
        .unwrap()
        .to_string()
}

fn write_good(dir: &Path) -> (PathBuf, bundle::BundleSummary) {
    let files = stage(&dir.join("in"));
    let out = dir.join("bundle.tar");
    let s = bundle::write_tar(&out, &refs(&files), EPOCH).unwrap();
    (out, s)
}

#[test]
fn gnu_tar_lists_names_sizes_modes_mtimes_in_order() {
    let t = tempfile::tempdir().unwrap();
    let (out, summary) = write_good(t.path());
    let listing = run(Command::new("tar")
        .args(["--utc", "--full-time", "--numeric-owner", "-tvf"])
        .arg(&out)
        .env("TZ", "UTC"));
    let lines: Vec<&str> = listing.lines().collect();
    assert_eq!(lines.len(), NAMES.len(), "{listing}");
    for ((line, name), size) in lines.iter().zip(NAMES).zip(SIZES) {
        let f: Vec<&str> = line.split_whitespace().collect();
        assert_eq!(f.len(), 6, "{line}");
        assert_eq!(f[0], "-rw-r--r--", "{line}");
        assert_eq!(f[1], "0/0", "{line}");
        assert_eq!(f[2], size.to_string(), "{line}");
        assert_eq!(format!("{} {}", f[3], f[4]), EPOCH_STR, "{line}");
        assert_eq!(f[5], name, "{line}");
    }
    // Empty owner names: `tar -tv` without --numeric-owner falls back to ids.
    let named = run(Command::new("tar").arg("-tvf").arg(&out));
    assert!(named.lines().all(|l| l.contains(" 0/0 ")), "{named}");

    let bytes = fs::read(&out).unwrap();
    assert_eq!(bytes.len() as u64, summary.size);
    assert_eq!(bytes.len() % 512, 0);
    assert!(bytes[bytes.len() - 1024..].iter().all(|&b| b == 0));
    let expected_size: usize = SIZES
        .iter()
        .map(|s| 512 + s.div_ceil(512) * 512)
        .sum::<usize>()
        + 1024;
    assert_eq!(bytes.len(), expected_size, "no PAX or extra records");
    assert_eq!(summary.sha256, sha256sum(&out));
    for e in &summary.entries {
        let h = &bytes[e.offset as usize..e.offset as usize + 512];
        assert_eq!(h[156], b'0', "{}: regular file typeflag", e.name);
        assert_eq!(
            &h[257..265],
            b"ustar\x0000",
            "{}: POSIX ustar magic",
            e.name
        );
        assert!(
            h[265..329].iter().all(|&b| b == 0),
            "{}: empty uname/gname",
            e.name
        );
    }
    assert!(!t.path().join("bundle.tar.partial").exists());
}

#[test]
fn gnu_tar_extracts_identical_bytes() {
    let t = tempfile::tempdir().unwrap();
    let (out, summary) = write_good(t.path());
    let x = t.path().join("x");
    fs::create_dir(&x).unwrap();
    run(Command::new("tar").arg("-xf").arg(&out).arg("-C").arg(&x));
    for (i, (name, len)) in NAMES.iter().zip(SIZES).enumerate() {
        let p = x.join(name);
        assert_eq!(fs::read(&p).unwrap(), content(i, len), "{name}");
        let mtime = fs::metadata(&p).unwrap().modified().unwrap();
        assert_eq!(
            mtime
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap()
                .as_secs(),
            EPOCH,
            "{name}"
        );
        let e = &summary.entries[i];
        assert_eq!((e.name.as_str(), e.size), (*name, len as u64));
        assert_eq!(e.sha256, sha256sum(&p), "{name}");
    }
    assert_eq!(fs::read_dir(&x).unwrap().count(), NAMES.len());
}

#[test]
fn reproducible_across_directories() {
    let a = tempfile::tempdir().unwrap();
    let b = tempfile::tempdir().unwrap();
    let (oa, sa) = write_good(&a.path().join("one"));
    let (ob, sb) = write_good(&b.path().join("two/deeper"));
    assert_eq!(fs::read(&oa).unwrap(), fs::read(&ob).unwrap());
    assert_eq!(sa, sb);
    // A different epoch must change the bytes, or the mtime is not ours.
    let files = stage(&a.path().join("in3"));
    let oc = a.path().join("c.tar");
    bundle::write_tar(&oc, &refs(&files), EPOCH + 1).unwrap();
    assert_ne!(fs::read(&oa).unwrap(), fs::read(&oc).unwrap());
}

#[test]
fn reader_lists_and_hashes_what_was_written() {
    let t = tempfile::tempdir().unwrap();
    let (out, written) = write_good(t.path());
    let read = bundle::read_tar(&out, policy()).unwrap();
    assert_eq!(read, written);
}

#[test]
fn streaming_reader_skips_unread_data() {
    let t = tempfile::tempdir().unwrap();
    let (out, _) = write_good(t.path());
    let f = fs::File::open(&out).unwrap();
    let mut r = BundleReader::new(f, policy());
    let mut seen = Vec::new();
    let mut i = 0;
    while let Some(mut e) = r.next_entry().unwrap() {
        seen.push((e.name().to_string(), e.size()));
        // Read all of the manifest, a few bytes of some, nothing of others.
        let mut buf = Vec::new();
        match i % 3 {
            0 => {
                e.read_to_end(&mut buf).unwrap();
                assert_eq!(buf, content(i, SIZES[i]));
            }
            1 => {
                let mut b = [0u8; 7];
                let n = e.read(&mut b).unwrap();
                assert_eq!(&b[..n], &content(i, SIZES[i])[..n]);
            }
            _ => {}
        }
        i += 1;
    }
    let expected: Vec<(String, u64)> = NAMES
        .iter()
        .zip(SIZES)
        .map(|(n, s)| (n.to_string(), s as u64))
        .collect();
    assert_eq!(seen, expected);
    assert_eq!(r.offset(), fs::metadata(&out).unwrap().len());
    assert!(r.next_entry().unwrap().is_none());
}

/// Builds a tar with GNU tar itself, so the hostile archives do not depend on
/// our writer. `-P` keeps `..` and leading `/` in names.
fn gnu_tar(dir: &Path, out: &Path, args: &[&str]) {
    run(Command::new("tar")
        .args(["--format=ustar", "-P", "-cf"])
        .arg(out)
        .arg("-C")
        .arg(dir)
        .args(args));
}

fn read_err(p: &Path, policy: ReadPolicy) -> BundleError {
    match bundle::read_tar(p, policy) {
        Ok(s) => panic!("{p:?} accepted: {s:?}"),
        Err(e) => e,
    }
}

fn loose() -> ReadPolicy {
    ReadPolicy {
        leading: Vec::new(),
        ..policy()
    }
}

#[test]
fn refuses_links_devices_and_directories() {
    let t = tempfile::tempdir().unwrap();
    let d = t.path().join("d");
    fs::create_dir(&d).unwrap();
    fs::write(d.join("manifest.json"), b"{}").unwrap();
    symlink("/etc/passwd", d.join("uki.efi")).unwrap();
    fs::hard_link(d.join("manifest.json"), d.join("rootfs.img")).unwrap();
    fs::create_dir(d.join("layout.json")).unwrap();

    let sym = t.path().join("sym.tar");
    gnu_tar(&d, &sym, &["manifest.json", "uki.efi"]);
    let e = read_err(&sym, policy());
    assert!(
        matches!(&e, BundleError::NotRegular { name, offset: 1024, kind: "symbolic link" } if name == "uki.efi"),
        "{e}"
    );
    assert!(
        e.to_string().contains("uki.efi") && e.to_string().contains("1024"),
        "{e}"
    );

    let hard = t.path().join("hard.tar");
    gnu_tar(&d, &hard, &["manifest.json", "rootfs.img"]);
    let e = read_err(&hard, policy());
    assert!(
        matches!(&e, BundleError::NotRegular { name, kind: "hard link", .. } if name == "rootfs.img"),
        "{e}"
    );

    let dir = t.path().join("dir.tar");
    gnu_tar(&d, &dir, &["manifest.json", "layout.json"]);
    let e = read_err(&dir, policy());
    assert!(
        matches!(
            &e,
            BundleError::NotRegular {
                kind: "directory",
                ..
            }
        ),
        "{e}"
    );

    let dev = t.path().join("dev.tar");
    run(Command::new("tar")
        .args(["--format=ustar", "-cf"])
        .arg(&dev)
        .args(["-C", "/", "--transform=s,^dev/null$,uki.efi,", "dev/null"]));
    let e = read_err(&dev, loose());
    assert!(
        matches!(
            &e,
            BundleError::NotRegular {
                kind: "character device",
                offset: 0,
                ..
            }
        ),
        "{e}"
    );
}

#[test]
fn refuses_traversal_absolute_and_nested_names() {
    let t = tempfile::tempdir().unwrap();
    let d = t.path().join("d");
    fs::create_dir_all(d.join("sub")).unwrap();
    fs::write(d.join("manifest.json"), b"{}").unwrap();
    fs::write(d.join("sub/uki.efi"), b"x").unwrap();
    for (rename, why) in [
        ("../x", "traversal"),
        ("/abs", "absolute"),
        ("..", "traversal"),
        ("a/../manifest.json", "traversal"),
    ] {
        let p = t.path().join("bad.tar");
        gnu_tar(
            &d,
            &p,
            &[
                &format!("--transform=s,^manifest.json$,{rename},"),
                "manifest.json",
            ],
        );
        let e = read_err(&p, loose());
        assert!(
            matches!(&e, BundleError::BadName { name, offset: 0, why: w } if name == rename && w.contains(why)),
            "{rename}: {e}"
        );
    }
    let p = t.path().join("nested.tar");
    gnu_tar(&d, &p, &["sub/uki.efi"]);
    let e = read_err(&p, loose());
    assert!(
        matches!(&e, BundleError::BadName { name, .. } if name == "sub/uki.efi"),
        "{e}"
    );
}

#[test]
fn refuses_duplicates_unknown_names_big_entries_and_wrong_order() {
    let t = tempfile::tempdir().unwrap();
    for d in ["d1", "d2"] {
        let d = t.path().join(d);
        fs::create_dir(&d).unwrap();
        fs::write(d.join("manifest.json"), b"{}").unwrap();
        fs::write(d.join("uki.efi"), vec![7u8; 2000]).unwrap();
        fs::write(d.join("evil.sh"), b"#!/bin/sh").unwrap();
    }
    let dup = t.path().join("dup.tar");
    gnu_tar(
        &t.path().join("d1"),
        &dup,
        &["manifest.json", "uki.efi", "-C", "../d2", "uki.efi"],
    );
    let e = read_err(&dup, policy());
    // manifest: 512 + 512; uki.efi: 512 + 2048.
    assert!(
        matches!(&e, BundleError::Duplicate { name, offset: 3584, first: 1024 } if name == "uki.efi"),
        "{e}"
    );

    let unknown = t.path().join("unknown.tar");
    gnu_tar(
        &t.path().join("d1"),
        &unknown,
        &["manifest.json", "evil.sh"],
    );
    let e = read_err(&unknown, policy());
    assert!(
        matches!(&e, BundleError::NotAllowed { name, offset: 1024, .. } if name == "evil.sh"),
        "{e}"
    );

    let big = t.path().join("big.tar");
    gnu_tar(&t.path().join("d1"), &big, &["manifest.json", "uki.efi"]);
    let e = read_err(
        &big,
        ReadPolicy {
            max_entry_size: 1999,
            ..policy()
        },
    );
    assert!(
        matches!(&e, BundleError::TooLarge { name, size: 2000, limit: 1999, .. } if name == "uki.efi"),
        "{e}"
    );
    bundle::read_tar(
        &big,
        ReadPolicy {
            max_entry_size: 2000,
            ..policy()
        },
    )
    .unwrap();

    let order = t.path().join("order.tar");
    gnu_tar(&t.path().join("d1"), &order, &["uki.efi", "manifest.json"]);
    let e = read_err(&order, policy());
    assert!(
        matches!(&e, BundleError::OutOfOrder { name, offset: 0, position: 0, .. } if name == "uki.efi"),
        "{e}"
    );
    assert_eq!(bundle::read_tar(&order, loose()).unwrap().entries.len(), 2);
}

#[test]
fn refuses_truncated_and_corrupt_archives() {
    let t = tempfile::tempdir().unwrap();
    let (out, s) = write_good(t.path());
    let bytes = fs::read(&out).unwrap();
    let rootfs = &s.entries[3];
    let cuts = [
        (0, "empty file"),
        (100, "inside the first header"),
        (512 + 10, "inside manifest data"),
        (rootfs.offset as usize + 512 + 4096, "inside rootfs data"),
        (bytes.len() - 1024, "end blocks missing"),
        (bytes.len() - 512, "one end block missing"),
        (bytes.len() - 1, "end block cut short"),
    ];
    for (len, what) in cuts {
        let p = t.path().join("cut.tar");
        fs::write(&p, &bytes[..len]).unwrap();
        let e = read_err(&p, policy());
        assert!(matches!(e, BundleError::Truncated { .. }), "{what}: {e}");
        assert!(e.to_string().contains("offset"), "{what}: {e}");
    }

    // A truncated entry read through the streaming API fails its read.
    let p = t.path().join("cut.tar");
    fs::write(&p, &bytes[..rootfs.offset as usize + 512 + 4096]).unwrap();
    let mut r = BundleReader::new(fs::File::open(&p).unwrap(), policy());
    for _ in 0..3 {
        r.next_entry().unwrap().unwrap();
    }
    let mut e = r.next_entry().unwrap().unwrap();
    let err = std::io::copy(&mut e, &mut std::io::sink()).unwrap_err();
    assert_eq!(err.kind(), std::io::ErrorKind::UnexpectedEof);
    assert!(err.to_string().contains("rootfs.img"), "{err}");

    let mut bad = bytes.clone();
    bad[0] = b'M'; // name changes, checksum no longer matches
    let p = t.path().join("sum.tar");
    fs::write(&p, &bad).unwrap();
    let e = read_err(&p, policy());
    assert!(
        matches!(&e, BundleError::BadHeader { offset: 0, why } if why.contains("checksum")),
        "{e}"
    );

    let p = t.path().join("garbage.tar");
    fs::write(&p, vec![0x41u8; 4096]).unwrap();
    assert!(matches!(
        read_err(&p, policy()),
        BundleError::BadHeader { .. }
    ));
}

#[test]
fn writer_refuses_bad_input() {
    let t = tempfile::tempdir().unwrap();
    let f = t.path().join("f");
    fs::write(&f, b"x").unwrap();
    let out = t.path().join("out.tar");
    for name in ["", "../x", "/abs", "a/b", ".", "..", &"n".repeat(101)] {
        let e = bundle::write_tar(&out, &[(name, &f)], EPOCH).unwrap_err();
        assert!(
            matches!(&e, BundleError::BadInputName { name: n, .. } if n == name),
            "{name}: {e}"
        );
    }
    let e = bundle::write_tar(&out, &[("a", &f), ("a", &f)], EPOCH).unwrap_err();
    assert!(matches!(e, BundleError::DuplicateInput { .. }), "{e}");
    let missing = t.path().join("missing");
    let e = bundle::write_tar(&out, &[("a", &f), ("b", &missing)], EPOCH).unwrap_err();
    assert!(
        matches!(&e, BundleError::ReadInput { path, .. } if *path == missing),
        "{e}"
    );
    let e = bundle::write_tar(&out, &[("a", t.path())], EPOCH).unwrap_err();
    assert!(matches!(e, BundleError::NotAFile { .. }), "{e}");
    let e = bundle::write_tar(&out, &[("a", &f)], 1 << 40).unwrap_err();
    assert!(matches!(e, BundleError::EpochOutOfRange { .. }), "{e}");
    // Nothing half-written is left behind.
    assert!(!out.exists());
    assert!(!t.path().join("out.tar.partial").exists());
}

#[test]
fn reads_gnu_base256_sizes_and_refuses_them_over_the_limit() {
    let t = tempfile::tempdir().unwrap();
    let size: u64 = 8 << 30 | 1;
    fs::File::create(t.path().join("rootfs.img"))
        .unwrap()
        .set_len(size)
        .unwrap();
    // Only the start of the 8 GiB archive: tar stops when `head` exits.
    let p = t.path().join("big.tar");
    let out = Command::new("sh")
        .arg("-c")
        .arg("tar --format=gnu -cf - -C \"$1\" rootfs.img | head -c 4096 > \"$2\"")
        .arg("sh")
        .arg(t.path())
        .arg(&p)
        .output()
        .unwrap();
    assert_eq!(fs::metadata(&p).unwrap().len(), 4096, "{out:?}");
    let e = read_err(&p, loose());
    assert!(
        matches!(&e, BundleError::TooLarge { name, size: s, offset: 0, .. } if name == "rootfs.img" && *s == size),
        "{e}"
    );
    let e = read_err(
        &p,
        ReadPolicy {
            max_entry_size: u64::MAX,
            ..loose()
        },
    );
    assert!(matches!(e, BundleError::Truncated { .. }), "{e}");
}

/// Two leading names: each is checked at its position, an archive that ends
/// before them is refused, and a policy narrowed after them admits only
/// what it lists (and still counts the leading entries as seen).
#[test]
fn leading_entries_in_order_then_a_narrowed_policy() {
    let t = tempfile::tempdir().unwrap();
    let (good, _) = write_good(t.path());
    let d = t.path().join("in");
    for n in NAMES {
        fs::copy(d.join(format!("src-{n}")), d.join(n)).unwrap();
    }
    let two = || ReadPolicy {
        leading: vec!["manifest.json".into(), "manifest.json.sig".into()],
        ..policy()
    };
    bundle::read_tar(&good, two()).unwrap();

    let swapped = t.path().join("swapped.tar");
    gnu_tar(
        &d,
        &swapped,
        &["manifest.json", "uki.efi", "manifest.json.sig"],
    );
    let e = read_err(&swapped, two());
    assert!(
        matches!(&e, BundleError::OutOfOrder { position: 1, name, offset: 1024, expected }
            if name == "uki.efi" && expected == "manifest.json.sig"),
        "{e}"
    );
    assert!(
        e.to_string().starts_with("second member is \"uki.efi\""),
        "{e}"
    );

    let short = t.path().join("short.tar");
    gnu_tar(&d, &short, &["manifest.json"]);
    let e = read_err(&short, two());
    assert!(
        matches!(&e, BundleError::MissingLeading { offset: 1024, expected } if expected == "manifest.json.sig"),
        "{e}"
    );

    let mut r = BundleReader::new(fs::File::open(&good).unwrap(), two());
    for _ in 0..2 {
        r.next_entry().unwrap().unwrap();
    }
    r.set_policy(ReadPolicy {
        allowed: vec!["uki.efi".into(), "manifest.json".into()],
        max_entry_size: 64 << 20,
        leading: Vec::new(),
    });
    assert_eq!(r.next_entry().unwrap().unwrap().name(), "uki.efi");
    let e = r.next_entry().err().unwrap();
    assert!(
        matches!(&e, BundleError::NotAllowed { name, .. } if name == "rootfs.img"),
        "{e}"
    );
}
