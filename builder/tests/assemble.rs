//! `cairn assemble` as a library call: a kernel, an initramfs and a rootfs
//! tree the user brings, to a UKI bound to the rootfs and an installed disk.

use std::fs;
use std::path::Path;

use builder::assemble::{assemble, AssembleOptions, Assembled};

const STUB: &str = "/usr/lib/systemd/boot/efi/linuxx64.efi.stub";
const SYSTEMD_BOOT: &str = "/usr/lib/systemd/boot/efi/systemd-bootx64.efi";

fn options(dir: &Path, out: &str) -> AssembleOptions {
    AssembleOptions {
        kernel: dir.join("bzImage"),
        initrd: dir.join("initrd"),
        rootfs: dir.join("rootfs"),
        cmdline: "console=ttyS0".into(),
        osrel: None,
        stub: STUB.into(),
        systemd_boot: SYSTEMD_BOOT.into(),
        disk_size: 512 << 20,
        source_date_epoch: 1_735_689_600,
        cache: Some(dir.join("cache")),
        key: Some(dir.join("release.key")),
        out: dir.join(out),
    }
}

fn inputs(dir: &Path) {
    let root = dir.join("rootfs");
    fs::create_dir_all(root.join("usr/lib")).unwrap();
    fs::create_dir_all(root.join("etc")).unwrap();
    fs::write(
        root.join("usr/lib/os-release"),
        "NAME=\"cairn\"\nID=cairn\nVERSION_ID=1.2.3\n",
    )
    .unwrap();
    fs::write(root.join("etc/motd"), "hello\n").unwrap();
    fs::write(dir.join("bzImage"), "not a kernel").unwrap();
    fs::write(dir.join("initrd"), "not an initramfs").unwrap();
    signing::PrivateKey::generate()
        .unwrap()
        .write_new(&dir.join("release.key"))
        .unwrap();
}

fn uncached(a: &Assembled) -> Vec<&str> {
    a.stages
        .iter()
        .filter(|r| !r.cached)
        .map(|r| r.name.as_str())
        .collect()
}

fn sha256(p: &Path) -> String {
    signing::hash_file(p).unwrap().1.to_hex()
}

#[test]
fn assembled_uki_names_the_rootfs_and_a_rerun_is_cached_and_identical() {
    let t = tempfile::tempdir().unwrap();
    inputs(t.path());
    let first = assemble(&options(t.path(), "out1")).unwrap();
    let out1 = t.path().join("out1");
    let facts = installer::verify::uki_facts(&out1.join("uki.efi")).unwrap();
    assert_eq!(facts.root_hash, first.root_hash);
    assert_eq!(facts.version, "1.2.3");
    assert_eq!(
        uncached(&first),
        ["rootfs-image", "uki", "bundle"],
        "{:?}",
        first.stages
    );
    assert!(fs::metadata(out1.join("disk.raw")).unwrap().len() == 512 << 20);

    let second = assemble(&options(t.path(), "out2")).unwrap();
    assert_eq!(second.root_hash, first.root_hash);
    assert!(uncached(&second).is_empty(), "{:?}", second.stages);
    for f in ["uki.efi", "rootfs.img", "disk.raw"] {
        assert_eq!(
            sha256(&out1.join(f)),
            sha256(&t.path().join("out2").join(f)),
            "{f}"
        );
    }

    fs::write(t.path().join("rootfs/etc/motd"), "changed\n").unwrap();
    let third = assemble(&options(t.path(), "out3")).unwrap();
    assert_ne!(third.root_hash, first.root_hash);
}
