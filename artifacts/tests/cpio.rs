//! newc initramfs checked with `zstd -dc | cpio -itv` and `cpio -idm`.

use std::ffi::CString;
use std::fs;
use std::io::Write;
use std::os::unix::fs::{symlink, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use artifacts::cpio::{self, Content, CpioError, Extra, ExtraKind};
use artifacts::{Normalize, Tree};

const EPOCH: u64 = 1_700_000_000;

fn chmod(p: &Path, mode: u32) {
    fs::set_permissions(p, fs::Permissions::from_mode(mode)).unwrap();
}

fn mknod(p: &Path, mode: u32, dev: libc::dev_t) {
    let c = CString::new(p.as_os_str().as_encoded_bytes()).unwrap();
    let rc = unsafe { libc::mknod(c.as_ptr(), mode, dev) };
    assert_eq!(rc, 0, "mknod {p:?}: {}", std::io::Error::last_os_error());
    // mknod applies the umask.
    chmod(p, mode & 0o7777);
}

/// A tree with every kind the writer handles and sizes around the 4-byte
/// padding boundary.
fn stage(root: &Path) {
    chmod(root, 0o755);
    fs::create_dir_all(root.join("bin")).unwrap();
    fs::create_dir_all(root.join("etc/empty")).unwrap();
    fs::create_dir(root.join("dev")).unwrap();
    for (name, len) in [
        ("etc/a0", 0),
        ("etc/a1", 1),
        ("etc/a3", 3),
        ("etc/a4", 4),
        ("etc/a5", 5),
    ] {
        let data: Vec<u8> = (0..len).map(|i| b'a' + i as u8).collect();
        fs::write(root.join(name), data).unwrap();
        chmod(&root.join(name), 0o644);
    }
    let big: Vec<u8> = (0..300_001u32).map(|i| (i * 7 % 251) as u8).collect();
    fs::write(root.join("bin/tool"), &big).unwrap();
    chmod(&root.join("bin/tool"), 0o4755);
    fs::hard_link(root.join("bin/tool"), root.join("bin/tool2")).unwrap();
    fs::hard_link(root.join("bin/tool"), root.join("etc/tool3")).unwrap();
    symlink("tool", root.join("bin/sh")).unwrap();
    symlink("/nonexistent/target", root.join("etc/dangling")).unwrap();
    mknod(
        &root.join("dev/console"),
        libc::S_IFCHR | 0o600,
        libc::makedev(5, 1),
    );
    mknod(
        &root.join("dev/vda"),
        libc::S_IFBLK | 0o660,
        libc::makedev(254, 0),
    );
    mknod(&root.join("dev/fifo"), libc::S_IFIFO | 0o640, 0);
    for d in ["bin", "etc", "etc/empty", "dev"] {
        chmod(&root.join(d), 0o755);
    }
    chmod(&root.join("etc/empty"), 0o700);
}

fn extras(dir: &Path) -> Vec<Extra> {
    let init = dir.join("init-bin");
    fs::write(&init, b"#!/bin/sh\necho init\n").unwrap();
    vec![
        Extra::file(
            "/payload/manifest.json",
            0o644,
            Content::Bytes(b"{}\n".to_vec()),
        ),
        Extra::file("/init", 0o755, Content::Path(init)),
        Extra::file(
            "/payload/keys/a.pub",
            0o644,
            Content::Bytes(b"key".to_vec()),
        ),
        Extra {
            path: "/dev/null".into(),
            mode: 0o666,
            kind: ExtraKind::CharDev { major: 1, minor: 3 },
        },
        Extra {
            path: "/dev/loop-extra".into(),
            mode: 0o600,
            kind: ExtraKind::BlockDev { major: 7, minor: 9 },
        },
        Extra {
            path: "/payload/uki-link".into(),
            mode: 0o777,
            kind: ExtraKind::Symlink("uki.efi".into()),
        },
    ]
}

fn build(work: &Path) -> (PathBuf, Vec<u8>) {
    let root = work.join("root");
    fs::create_dir(&root).unwrap();
    stage(&root);
    let tree = Tree::read(&root, Normalize::root_owned(EPOCH)).unwrap();
    let mut out = Vec::new();
    cpio::write_initramfs(&tree, &extras(work), EPOCH, &mut out).unwrap();
    (root, out)
}

fn pipe(cmd: &mut Command, input: &[u8]) -> Vec<u8> {
    let mut child = cmd
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("{cmd:?} must be installed: {e}"));
    child.stdin.take().unwrap().write_all(input).unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "{cmd:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    out.stdout
}

fn unzstd(z: &[u8]) -> Vec<u8> {
    pipe(Command::new("zstd").arg("-dc"), z)
}

#[test]
fn listing_matches() {
    let d = tempfile::tempdir().unwrap();
    let (_, z) = build(d.path());
    let raw = unzstd(&z);
    let list =
        String::from_utf8(pipe(Command::new("cpio").args(["-itvn", "--quiet"]), &raw)).unwrap();
    // (mode, uid/gid, size or device, name, symlink target)
    let got: Vec<String> = list
        .lines()
        .map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            let (size, rest) = if f[4].ends_with(',') {
                (format!("{}{}", f[4], f[5]), &f[9..])
            } else {
                (f[4].to_string(), &f[8..])
            };
            format!("{} {}:{} {} {}", f[0], f[2], f[3], size, rest.join(" "))
        })
        .collect();
    let want = [
        "drwxr-xr-x 0:0 0 .",
        "drwxr-xr-x 0:0 0 bin",
        "lrwxrwxrwx 0:0 4 bin/sh -> tool",
        // Hard links: data travels with the last member only.
        "-rwsr-xr-x 0:0 0 bin/tool",
        "-rwsr-xr-x 0:0 0 bin/tool2",
        "drwxr-xr-x 0:0 0 dev",
        "crw------- 0:0 5,1 dev/console",
        "prw-r----- 0:0 0 dev/fifo",
        "brw-rw---- 0:0 254,0 dev/vda",
        "drwxr-xr-x 0:0 0 etc",
        "-rw-r--r-- 0:0 0 etc/a0",
        "-rw-r--r-- 0:0 1 etc/a1",
        "-rw-r--r-- 0:0 3 etc/a3",
        "-rw-r--r-- 0:0 4 etc/a4",
        "-rw-r--r-- 0:0 5 etc/a5",
        "lrwxrwxrwx 0:0 19 etc/dangling -> /nonexistent/target",
        "drwx------ 0:0 0 etc/empty",
        "-rwsr-xr-x 0:0 300001 etc/tool3",
        // Extras, sorted, after the tree.
        "brw------- 0:0 7,9 dev/loop-extra",
        "crw-rw-rw- 0:0 1,3 dev/null",
        "-rwxr-xr-x 0:0 20 init",
        "drwxr-xr-x 0:0 0 payload",
        "drwxr-xr-x 0:0 0 payload/keys",
        "-rw-r--r-- 0:0 3 payload/keys/a.pub",
        "-rw-r--r-- 0:0 3 payload/manifest.json",
        "lrwxrwxrwx 0:0 7 payload/uki-link -> uki.efi",
    ];
    assert_eq!(got, want, "listing:\n{list}");
    assert!(raw.ends_with(b"TRAILER!!!\0\0\0\0"), "no trailer");
    assert_eq!(raw.len() % 4, 0);
}

#[test]
fn extraction_is_byte_identical() {
    let d = tempfile::tempdir().unwrap();
    let (root, z) = build(d.path());
    let raw = unzstd(&z);
    let x = d.path().join("x");
    fs::create_dir(&x).unwrap();
    pipe(
        Command::new("cpio")
            .args(["-idm", "--quiet", "--no-absolute-filenames"])
            .current_dir(&x),
        &raw,
    );
    let a = Tree::read(&root, Normalize::root_owned(0)).unwrap();
    let b = Tree::read(&x, Normalize::root_owned(0)).unwrap();
    let extra = [
        "dev/null",
        "dev/loop-extra",
        "init",
        "payload",
        "payload/keys",
        "payload/keys/a.pub",
        "payload/manifest.json",
        "payload/uki-link",
    ];
    let b_entries: Vec<_> = b
        .entries
        .iter()
        .filter(|e| !extra.contains(&e.path.to_str().unwrap()))
        .collect();
    assert_eq!(a.entries.len(), b_entries.len());
    for (ea, eb) in a.entries.iter().zip(b_entries) {
        assert_eq!(ea.path, eb.path);
        assert_eq!(ea.kind, eb.kind, "{:?}", ea.path);
        assert_eq!(ea.mode, eb.mode, "{:?}", ea.path);
        assert_eq!(
            ea.link_group.is_some(),
            eb.link_group.is_some(),
            "{:?}",
            ea.path
        );
        if matches!(ea.kind, artifacts::tree::Kind::File { .. }) {
            assert!(
                fs::read(&ea.source).unwrap() == fs::read(&eb.source).unwrap(),
                "{:?}",
                ea.path
            );
        }
        if !matches!(
            ea.kind,
            artifacts::tree::Kind::Symlink { .. } | artifacts::tree::Kind::Dir
        ) {
            assert_eq!(
                fs::symlink_metadata(&eb.source).unwrap().mtime() as u64,
                EPOCH,
                "{:?}",
                ea.path
            );
        }
    }
    let ino = |p: &str| fs::metadata(x.join(p)).unwrap().ino();
    assert_eq!(ino("bin/tool"), ino("etc/tool3"));
    assert_eq!(ino("bin/tool"), ino("bin/tool2"));
    assert_eq!(fs::metadata(x.join("bin/tool")).unwrap().nlink(), 3);
    assert_eq!(fs::read(x.join("init")).unwrap(), b"#!/bin/sh\necho init\n");
    let null = fs::symlink_metadata(x.join("dev/null")).unwrap();
    assert_eq!(null.mode(), libc::S_IFCHR | 0o666);
    assert_eq!(null.rdev(), libc::makedev(1, 3));
    assert_eq!(fs::read(x.join("payload/manifest.json")).unwrap(), b"{}\n");
}

#[test]
fn reproducible() {
    let a = tempfile::tempdir().unwrap();
    let b = tempfile::tempdir().unwrap();
    let (_, za) = build(a.path());
    let (_, zb) = build(b.path());
    assert!(za == zb, "two builds differ");
    // zstd frame magic, and the level really compresses.
    assert_eq!(&za[..4], &[0x28, 0xB5, 0x2F, 0xFD]);
    assert!(za.len() < unzstd(&za).len() / 2);
}

#[test]
fn bad_inputs() {
    let d = tempfile::tempdir().unwrap();
    let root = d.path().join("root");
    fs::create_dir(&root).unwrap();
    stage(&root);
    let tree = Tree::read(&root, Normalize::root_owned(EPOCH)).unwrap();
    let sink = std::io::sink;
    let one = |path: &str| vec![Extra::file(path, 0o644, Content::Bytes(vec![1]))];

    for p in ["", "/", "a/../b", "a//b", "./a", "/etc/a1/under-a-file"] {
        let e = cpio::write_newc(&tree, &one(p), EPOCH, sink()).unwrap_err();
        assert!(matches!(e, CpioError::BadExtraPath { .. }), "{p}: {e}");
    }
    let e = cpio::write_newc(&tree, &one("/bin/sh"), EPOCH, sink()).unwrap_err();
    assert!(e.to_string().contains("/bin/sh"), "{e}");
    let e = cpio::write_newc(&tree, &[], 1 << 33, sink()).unwrap_err();
    assert!(matches!(e, CpioError::EpochTooLarge { .. }), "{e}");

    let missing = d.path().join("no-such-file");
    let e = cpio::write_newc(
        &tree,
        &[Extra::file("/x", 0o644, Content::Path(missing.clone()))],
        EPOCH,
        sink(),
    )
    .unwrap_err();
    assert!(e.to_string().contains("no-such-file"), "{e}");

    // A file that changes between the walk and the write.
    fs::write(root.join("etc/a5"), b"ab").unwrap();
    let e = cpio::write_newc(&tree, &[], EPOCH, sink())
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("etc/a5") && e.contains("expected 5 bytes"),
        "{e}"
    );
    fs::write(root.join("etc/a5"), b"abcdefg").unwrap();
    let e = cpio::write_newc(&tree, &[], EPOCH, sink())
        .unwrap_err()
        .to_string();
    assert!(e.contains("etc/a5"), "{e}");
}
