//! `cairn pkg build systemd-boot` end to end, against the real pinned .deb
//! (needs apt-get and the Debian mirror, as ci/test has).

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .to_path_buf()
}

fn cairn_build(cache: &Path) -> PathBuf {
    let out = Command::new(env!("CARGO_BIN_EXE_cairn"))
        .args(["pkg", "build", "systemd-boot", "--repo"])
        .arg(repo_root())
        .arg("--cache")
        .arg(cache)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    PathBuf::from(String::from_utf8(out.stdout).unwrap().trim())
}

#[test]
fn systemd_boot_from_the_pinned_deb() {
    let (c1, c2) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let o1 = cairn_build(c1.path());
    assert!(o1.starts_with(c1.path().join("pkgs")), "{}", o1.display());
    let mut names: Vec<_> = fs::read_dir(&o1)
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    names.sort();
    assert_eq!(names, ["linuxx64.efi.stub", "systemd-bootx64.efi"]);

    // The independent reading of the same .deb: dpkg-deb -x.
    let dl = c1.path().join("downloads");
    let debs: Vec<PathBuf> = fs::read_dir(&dl)
        .unwrap()
        .flat_map(|d| fs::read_dir(d.unwrap().path()).unwrap())
        .map(|e| e.unwrap().path())
        .collect();
    assert_eq!(debs.len(), 1, "{debs:?}");
    let x = c1.path().join("dpkg-x");
    assert!(Command::new("dpkg-deb")
        .arg("-x")
        .arg(&debs[0])
        .arg(&x)
        .status()
        .unwrap()
        .success());
    for n in &names {
        let theirs = fs::read(x.join("usr/lib/systemd/boot/efi").join(n)).unwrap();
        assert_eq!(fs::read(o1.join(n)).unwrap(), theirs, "{n}");
        let file = Command::new("file")
            .arg("-b")
            .arg(o1.join(n))
            .output()
            .unwrap();
        let desc = String::from_utf8_lossy(&file.stdout);
        assert!(
            desc.contains("PE32+") && desc.contains("EFI application"),
            "{n}: {desc}"
        );
    }

    // Nothing changed: the same entry answers (a rebuild would rename a new
    // directory into place). How fast that is is for a benchmark to say.
    let inode = |p: &Path| std::os::unix::fs::MetadataExt::ino(&fs::metadata(p).unwrap());
    let before = inode(&o1);
    assert_eq!(cairn_build(c1.path()), o1);
    assert_eq!(inode(&o1), before, "the cached entry was rebuilt");

    // Another cache: same key, same bytes.
    let o2 = cairn_build(c2.path());
    assert_eq!(o1.file_name(), o2.file_name());
    for n in &names {
        assert_eq!(fs::read(o1.join(n)).unwrap(), fs::read(o2.join(n)).unwrap());
    }
}

/// A Debian source package through the private sources list, unpacked by
/// dpkg-source (hello is small; its .dsc pins the other three files).
#[test]
fn deb_src_fetch_and_dpkg_source_extract() {
    let d = tempfile::tempdir().unwrap();
    let pkg = d.path().join("repo/pkgs/hello");
    fs::create_dir_all(&pkg).unwrap();
    fs::write(
        pkg.join("recipe.toml"),
        r#"name = "hello"
version = "2.10-3"
host_packages = ["dpkg-dev"]
outputs = ["configure", "debian-control"]
[[source]]
name = "hello"
kind = "deb-src"
spec = "hello=2.10-3"
sha256 = "75296f5ef618ae2f1849e22b142a2b5ab52c452ebefa4e7b0564c44617db3790"
"#,
    )
    .unwrap();
    fs::write(
        pkg.join("build.sh"),
        "cp $CAIRN_SRC/hello/configure $CAIRN_OUT/\ncp $CAIRN_SRC/hello/debian/control $CAIRN_OUT/debian-control\n",
    )
    .unwrap();
    let cache = d.path().join("cache");
    let out = builder::pkgs::Pkgs::load(&d.path().join("repo"))
        .unwrap()
        .with_cache(cache.clone())
        .build("hello")
        .unwrap();
    let control = fs::read_to_string(out.join("debian-control")).unwrap();
    assert!(control.contains("Source: hello"), "{control}");
    let mut files: Vec<String> = fs::read_dir(cache.join("downloads"))
        .unwrap()
        .flat_map(|e| fs::read_dir(e.unwrap().path()).unwrap())
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    files.sort();
    assert_eq!(
        files,
        [
            "hello_2.10-3.debian.tar.xz",
            "hello_2.10-3.dsc",
            "hello_2.10.orig.tar.gz",
            "hello_2.10.orig.tar.gz.asc"
        ]
    );
    // The machine's own apt state was not used: the private lists exist.
    assert!(cache.join("apt/bookworm/lists").is_dir());
}
