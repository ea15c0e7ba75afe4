//! Unpack safety with archives crafted byte by byte, and agreement with
//! `dpkg-deb` (the standard tool) on well-formed packages.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

use builder::pkgs::unpack::{ar_members, unpack_deb, unpack_tar};

/// One raw tar entry: the header is filled by hand so the tar crate's own
/// path checks (which refuse `..`) cannot sanitise what we test against.
fn entry(name: &str, ty: tar::EntryType, link: Option<&str>, data: &[u8]) -> Vec<u8> {
    let mut h = tar::Header::new_ustar();
    {
        let old = h.as_old_mut();
        old.name[..name.len()].copy_from_slice(name.as_bytes());
        if let Some(l) = link {
            old.linkname[..l.len()].copy_from_slice(l.as_bytes());
        }
    }
    h.set_entry_type(ty);
    h.set_mode(if ty == tar::EntryType::Directory {
        0o755
    } else {
        0o644
    });
    h.set_size(data.len() as u64);
    h.set_mtime(0);
    h.set_cksum();
    let mut out = h.as_bytes().to_vec();
    out.extend_from_slice(data);
    out.resize(out.len().div_ceil(512) * 512, 0);
    out
}

fn tar_of(entries: &[Vec<u8>]) -> Vec<u8> {
    let mut t: Vec<u8> = entries.concat();
    t.extend_from_slice(&[0u8; 1024]);
    t
}

fn file(name: &str, data: &str) -> Vec<u8> {
    entry(name, tar::EntryType::Regular, None, data.as_bytes())
}
fn dir(name: &str) -> Vec<u8> {
    entry(name, tar::EntryType::Directory, None, b"")
}
fn symlink(name: &str, to: &str) -> Vec<u8> {
    entry(name, tar::EntryType::Symlink, Some(to), b"")
}
fn hardlink(name: &str, to: &str) -> Vec<u8> {
    entry(name, tar::EntryType::Link, Some(to), b"")
}

/// Unpacks the tar into `<tmp>/target` (beside a `secret` file it must not
/// touch) and returns the error text, if any.
fn try_unpack(entries: &[Vec<u8>]) -> (tempfile::TempDir, Result<(), String>) {
    let d = tempfile::tempdir().unwrap();
    fs::write(d.path().join("secret"), "keep").unwrap();
    let t = d.path().join("evil.tar");
    fs::write(&t, tar_of(entries)).unwrap();
    let r = unpack_tar(&t, &d.path().join("target")).map_err(|e| e.to_string());
    (d, r)
}

fn assert_refused(entries: &[Vec<u8>], want: &str) {
    let (d, r) = try_unpack(entries);
    let err = r.expect_err("unsafe archive was unpacked");
    assert!(err.contains(want), "expected `{want}` in: {err}");
    assert!(
        err.contains("evil.tar"),
        "error does not name the archive: {err}"
    );
    assert_eq!(fs::read_to_string(d.path().join("secret")).unwrap(), "keep");
    assert!(!d.path().join("pwned").exists());
}

#[test]
fn a_plain_tarball_unpacks() {
    let (d, r) = try_unpack(&[
        dir("./"),
        dir("./a/"),
        file("./a/f", "hi"),
        file("b/c/deep", "implicit parents"),
        symlink("./a/l", "f"),
        symlink("./up", "a/../b/c"),
        hardlink("./a/h", "./a/f"),
    ]);
    r.unwrap();
    let t = d.path().join("target");
    assert_eq!(fs::read_to_string(t.join("a/f")).unwrap(), "hi");
    assert_eq!(fs::read_to_string(t.join("a/l")).unwrap(), "hi");
    assert_eq!(fs::read_to_string(t.join("a/h")).unwrap(), "hi");
    assert_eq!(
        fs::read_to_string(t.join("up/deep")).unwrap(),
        "implicit parents"
    );
}

#[test]
fn absolute_paths_are_refused() {
    assert_refused(&[file("/tmp/cairn-pwned", "x")], "absolute path refused");
}

#[test]
fn dotdot_components_are_refused() {
    assert_refused(&[file("../pwned", "x")], "`..` component refused");
    assert_refused(
        &[dir("a/"), file("a/../../pwned", "x")],
        "`..` component refused",
    );
}

#[test]
fn escaping_symlinks_are_refused() {
    assert_refused(&[symlink("l", "/etc")], "escapes the target");
    assert_refused(&[symlink("l", "../secret")], "escapes the target");
    assert_refused(
        &[dir("a/"), symlink("a/l", "../../secret")],
        "escapes the target",
    );
    // Each link alone stays inside; together `x` resolves to the parent.
    assert_refused(
        &[symlink("y", "."), symlink("x", "y/..")],
        "escapes the target",
    );
    // Order reversed: `x` is checked against the final tree, not at creation.
    assert_refused(
        &[symlink("x", "y/.."), symlink("y", ".")],
        "escapes the target",
    );
}

#[test]
fn writing_through_a_symlink_is_refused() {
    // A link that points inside is fine by itself, but is never followed.
    assert_refused(
        &[dir("sub/"), symlink("d", "sub"), file("d/f", "x")],
        "is a symlink",
    );
    assert_refused(&[symlink("d", "."), hardlink("h", "d/f")], "is a symlink");
}

#[test]
fn escaping_hardlinks_are_refused() {
    assert_refused(&[hardlink("h", "../secret")], "`..` component refused");
    assert_refused(&[hardlink("h", "/etc/passwd")], "absolute path refused");
    assert_refused(
        &[hardlink("h", "missing")],
        "not a regular file already extracted",
    );
}

/// A GNU `ar` archive, the container of a .deb.
fn ar_of(members: &[(&str, &[u8])]) -> Vec<u8> {
    let mut out = b"!<arch>\n".to_vec();
    for (name, data) in members {
        let h = format!(
            "{:<16}{:<12}{:<6}{:<6}{:<8}{:<10}`\n",
            format!("{name}/"),
            0,
            0,
            0,
            "100644",
            data.len()
        );
        assert_eq!(h.len(), 60);
        out.extend_from_slice(h.as_bytes());
        out.extend_from_slice(data);
        if data.len() % 2 == 1 {
            out.push(b'\n');
        }
    }
    out
}

fn deb_with(data_tar: &[u8]) -> Vec<u8> {
    ar_of(&[
        ("debian-binary", b"2.0\n"),
        ("control.tar", &tar_of(&[file("./control", "Package: x\n")])),
        ("data.tar", data_tar),
    ])
}

#[test]
fn a_deb_with_an_unsafe_data_tar_is_refused() {
    let d = tempfile::tempdir().unwrap();
    for (entries, want) in [
        (vec![file("./../pwned", "x")], "`..` component refused"),
        (vec![file("/pwned", "x")], "absolute path refused"),
        (vec![symlink("./l", "/")], "escapes the target"),
        (vec![hardlink("./h", "../secret")], "`..` component refused"),
    ] {
        let deb = d.path().join("evil.deb");
        fs::write(&deb, deb_with(&tar_of(&entries))).unwrap();
        let err = unpack_deb(&deb, &d.path().join("t"))
            .unwrap_err()
            .to_string();
        assert!(err.contains(want) && err.contains("evil.deb"), "{err}");
        let _ = fs::remove_dir_all(d.path().join("t"));
    }
    assert!(!d.path().join("pwned").exists());
}

#[test]
fn malformed_ar_archives_are_refused_with_offsets() {
    let d = tempfile::tempdir().unwrap();
    let p = d.path().join("bad.deb");
    let good = deb_with(&tar_of(&[file("./f", "x")]));
    fs::write(&p, &good[..good.len() - 100]).unwrap();
    let err = ar_members(&p).unwrap_err().to_string();
    assert!(
        err.contains("runs past the end") && err.contains("bad.deb"),
        "{err}"
    );
    fs::write(&p, &good[..30]).unwrap();
    let err = ar_members(&p).unwrap_err().to_string();
    assert!(err.contains("truncated ar header at offset 8"), "{err}");
    fs::write(&p, b"PK\x03\x04 not an ar").unwrap();
    let err = ar_members(&p).unwrap_err().to_string();
    assert!(err.contains("not an ar archive"), "{err}");
    fs::write(&p, ar_of(&[("something", b"x")])).unwrap();
    let err = unpack_deb(&p, &d.path().join("t")).unwrap_err().to_string();
    assert!(err.contains("debian-binary"), "{err}");
    fs::write(&p, ar_of(&[("debian-binary", b"2.0\n")])).unwrap();
    let err = unpack_deb(&p, &d.path().join("t")).unwrap_err().to_string();
    assert!(err.contains("no data.tar"), "{err}");
}

/// Sorted (path, kind, content) listing of a tree, for comparisons.
fn listing(root: &Path) -> Vec<(PathBuf, String)> {
    let mut out = Vec::new();
    fn walk(root: &Path, p: &Path, out: &mut Vec<(PathBuf, String)>) {
        let mut names: Vec<_> = fs::read_dir(p)
            .unwrap()
            .map(|e| e.unwrap().path())
            .collect();
        names.sort();
        for n in names {
            let m = fs::symlink_metadata(&n).unwrap();
            let rel = n.strip_prefix(root).unwrap().to_path_buf();
            if m.file_type().is_symlink() {
                out.push((rel, format!("-> {}", fs::read_link(&n).unwrap().display())));
            } else if m.is_dir() {
                out.push((rel, "dir".into()));
                walk(root, &n, out);
            } else {
                use std::os::unix::fs::PermissionsExt;
                let mode = m.permissions().mode() & 0o777;
                out.push((rel, format!("{mode:o} {:?}", fs::read(&n).unwrap())));
            }
        }
    }
    walk(root, root, &mut out);
    out
}

#[test]
fn agrees_with_dpkg_deb_on_a_real_package() {
    let d = tempfile::tempdir().unwrap();
    let pkg = d.path().join("pkg");
    fs::create_dir_all(pkg.join("DEBIAN")).unwrap();
    fs::write(
        pkg.join("DEBIAN/control"),
        "Package: cairn-test\nVersion: 1.0\nArchitecture: all\nMaintainer: t <t@t>\nDescription: t\n",
    )
    .unwrap();
    fs::create_dir_all(pkg.join("usr/share/cairn")).unwrap();
    fs::write(pkg.join("usr/share/cairn/data"), "payload\n").unwrap();
    std::os::unix::fs::symlink("data", pkg.join("usr/share/cairn/link")).unwrap();
    fs::write(pkg.join("usr/share/cairn/tool"), "#!/bin/sh\n").unwrap();
    use std::os::unix::fs::PermissionsExt;
    fs::set_permissions(
        pkg.join("usr/share/cairn/tool"),
        fs::Permissions::from_mode(0o755),
    )
    .unwrap();
    for comp in ["xz", "zstd", "gzip", "none"] {
        let deb = d.path().join(format!("t-{comp}.deb"));
        let st = Command::new("dpkg-deb")
            .args(["--root-owner-group", &format!("-Z{comp}"), "--build"])
            .arg(&pkg)
            .arg(&deb)
            .output()
            .expect("dpkg-deb must be installed");
        assert!(
            st.status.success(),
            "{}",
            String::from_utf8_lossy(&st.stderr)
        );
        let ours = d.path().join(format!("ours-{comp}"));
        let theirs = d.path().join(format!("theirs-{comp}"));
        unpack_deb(&deb, &ours).unwrap();
        let st = Command::new("dpkg-deb")
            .arg("-x")
            .arg(&deb)
            .arg(&theirs)
            .status()
            .unwrap();
        assert!(st.success());
        assert_eq!(listing(&ours), listing(&theirs), "{comp}");
        assert!(ours.join("usr/share/cairn/data").is_file());
    }
}
