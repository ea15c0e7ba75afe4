//! Hybrid ISO writer, checked with independent tools: xorriso/osirrox,
//! isoinfo (genisoimage), sgdisk, fsck.fat, and OVMF under QEMU.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

use artifacts::fat::{format_path, minimum_size, FatFile, FatSource, FormatOptions};
use artifacts::iso::{self, IsoOptions};

const EPOCH: u64 = 1_700_000_001; // 2023-11-14 22:13:21 UTC
const SYSTEMD_BOOT: &str = "/usr/lib/systemd/boot/efi/systemd-bootx64.efi";

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

fn run(cmd: &str, args: &[&str]) -> (bool, String) {
    let out = Command::new(cmd)
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("running {cmd} (is it installed?): {e}"));
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), text)
}

fn run_ok(cmd: &str, args: &[&str]) -> String {
    let (ok, text) = run(cmd, args);
    assert!(ok, "{cmd} {args:?} failed:\n{text}");
    text
}

fn opts() -> IsoOptions {
    IsoOptions {
        volume_id: "CAIRN_INSTALL".into(),
        epoch: EPOCH,
        seed: b"iso-test-seed".to_vec(),
    }
}

/// An ESP made by our FAT writer: systemd-boot as the removable-media
/// loader and a loader.conf with a menu timeout.
fn make_esp(dir: &Path) -> PathBuf {
    let path = dir.join("esp.img");
    let size = minimum_size().div_ceil(1 << 20) * (1 << 20);
    format_path(
        &path,
        &FormatOptions {
            size,
            label: "EFI".into(),
            seed: b"esp".to_vec(),
            epoch: EPOCH,
        },
        &[
            FatFile {
                path: "EFI/BOOT/BOOTX64.EFI".into(),
                source: FatSource::Host(SYSTEMD_BOOT.into()),
            },
            FatFile {
                path: "loader/loader.conf".into(),
                source: FatSource::Bytes(b"timeout 3\n".to_vec()),
            },
        ],
    )
    .expect("ESP image");
    path
}

/// Extra files: nested directories, an empty file, a multi-block file.
fn extra_files(dir: &Path) -> Vec<(String, PathBuf)> {
    let mut v = Vec::new();
    for (iso_path, data) in [
        ("/README.TXT", b"cairn installer\n".to_vec()),
        ("/CAIRN/MANIFEST.JSN", b"{\"version\":1}\n".to_vec()),
        ("/CAIRN/IMAGES/ROOTFS.SQF", pattern(70_000, 3)),
        ("/EMPTY", Vec::new()),
    ] {
        let host = dir.join(iso_path.trim_start_matches('/').replace('/', "_"));
        fs::write(&host, data).unwrap();
        v.push((iso_path.to_string(), host));
    }
    v
}

#[test]
fn dump() {
    let dir = tempfile::tempdir().unwrap();
    let esp = make_esp(dir.path());
    let files = extra_files(dir.path());
    let img = Path::new("/tmp/isoscratch/a.iso");
    let s = iso::write(img, &opts(), &esp, &files).unwrap();
    println!("{s:#?}");
    let i = img.to_str().unwrap();
    for args in [
        vec![
            "-indev",
            i,
            "-report_el_torito",
            "plain",
            "-report_system_area",
            "plain",
        ],
        vec!["-indev", i, "-find", "/"],
        vec!["-indev", i, "-pvd_info"],
    ] {
        println!("{}", run("xorriso", &args).1);
    }
    println!("{}", run("isoinfo", &["-d", "-i", i]).1);
    println!("{}", run("isoinfo", &["-l", "-i", i]).1);
    println!("{}", run("sgdisk", &["-v", i]).1);
    println!("{}", run("sgdisk", &["-p", i]).1);
}
