//! `cairn iso customize` on installer ISOs made by the build's own code
//! (`release::installer_iso`) and, when one is around, on a real
//! `cairn build` output: the settings land in the ESP file install mode
//! reads, the ESP stays a clean FAT32 (fsck.fat), the ISO stays readable
//! (xorriso), and the signed installer UKI keeps every byte.

use std::fs::File;
use std::path::{Path, PathBuf};
use std::process::Command;

use artifacts::fat::Fat32;
use builder::iso_customize::{customize, read_settings};
use contract::install::{InstallSettings, ESP_PATH};
use sha2::{Digest, Sha256};

fn sha256(b: &[u8]) -> String {
    hex::encode(Sha256::digest(b))
}

/// The ESP partition of a hybrid ISO as xorriso reports it: (offset, len).
fn esp_extent(iso: &Path) -> (u64, u64) {
    let out = Command::new("xorriso")
        .arg("-indev")
        .arg(iso)
        .args(["-report_system_area", "plain"])
        .output()
        .expect("xorriso runs");
    let text =
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{text}");
    assert!(
        !text.contains("FAILURE")
            && !text.contains("SORRY")
            && !text.contains("GPT backup problems"),
        "{text}"
    );
    let line = text
        .lines()
        .find(|l| l.starts_with("GPT start and size :"))
        .unwrap_or_else(|| panic!("no GPT partition in:\n{text}"));
    let f: Vec<u64> = line
        .split(':')
        .nth(1)
        .unwrap()
        .split_whitespace()
        .map(|n| n.parse().unwrap())
        .collect();
    (f[1] * 512, f[2] * 512)
}

/// xorriso reads the whole ISO 9660 tree and the El Torito entry.
fn xorriso_reads(iso: &Path) {
    let out = Command::new("xorriso")
        .arg("-indev")
        .arg(iso)
        .args(["-report_el_torito", "plain", "-find", "/", "-exec", "lsdl"])
        .output()
        .expect("xorriso runs");
    let text =
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{text}");
    assert!(text.contains("EFI.IMG") && text.contains("UEFI"), "{text}");
    assert!(
        !text.contains("FAILURE") && !text.contains("SORRY") && !text.contains("WARNING"),
        "{text}"
    );
}

/// Every file of the ESP (path -> sha256), read through the FAT.
fn esp_files(iso: &Path) -> Vec<(String, String)> {
    let (off, len) = esp_extent(iso);
    let mut fat = Fat32::open(File::open(iso).unwrap(), off, len).unwrap();
    let mut out = Vec::new();
    let mut dirs = vec![String::new()];
    while let Some(d) = dirs.pop() {
        for e in fat.list(&d).unwrap() {
            let p = format!("{d}/{}", e.name);
            if e.is_dir {
                dirs.push(p);
            } else {
                let bytes = fat.read_file(&p).unwrap();
                out.push((p, sha256(&bytes)));
            }
        }
    }
    out.sort();
    out
}

fn fsck_clean(iso: &Path) {
    let (off, len) = esp_extent(iso);
    let r = testkit::check::fsck_fat_at(iso, off, len).unwrap();
    assert!(r.clean(), "{}", r.text);
}

/// The settings file as an independent FAT reader (mtools) sees it.
fn mtype_settings(iso: &Path, dir: &Path) -> Vec<u8> {
    let (off, len) = esp_extent(iso);
    let esp = dir.join("esp.img");
    testkit::check::extract(iso, off, len, &esp).unwrap();
    let out = Command::new("mtype")
        .env("MTOOLS_SKIP_CHECK", "1")
        .arg("-i")
        .arg(&esp)
        .arg(format!("::/{ESP_PATH}"))
        .output()
        .expect("mtype runs");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    out.stdout
}

fn check_customize(iso: &Path, uki_path: &str, dir: &Path) {
    fsck_clean(iso);
    xorriso_reads(iso);
    let before = esp_files(iso);
    let uki = before
        .iter()
        .find(|(p, _)| p.eq_ignore_ascii_case(uki_path))
        .unwrap_or_else(|| panic!("no {uki_path} in {before:?}"))
        .1
        .clone();
    assert!(read_settings(iso).unwrap().is_empty());

    let out = dir.join("custom.iso");
    let s = InstallSettings {
        dest_device: Some("/dev/disk/by-id/nvme-X".into()),
        wipe: true,
        machine_config: Some("hostname = \"node-7\"\n".into()),
    };
    customize(iso, Some(&out), &s).unwrap();
    fsck_clean(&out);
    xorriso_reads(&out);
    assert_eq!(read_settings(&out).unwrap(), s);
    // Install mode reads the file, not the ISO: the FAT view decodes the same.
    let via_fat = mtype_settings(&out, dir);
    assert_eq!(InstallSettings::decode(&via_fat, "mtype").unwrap(), s);
    let after = esp_files(&out);
    let changed: Vec<&str> = before
        .iter()
        .zip(&after)
        .filter(|(a, b)| a != b)
        .map(|(a, _)| a.0.as_str())
        .collect();
    assert_eq!(
        changed,
        [format!("/{ESP_PATH}")],
        "only the settings change"
    );
    assert!(after
        .iter()
        .any(|(p, h)| p.eq_ignore_ascii_case(uki_path) && *h == uki));
    assert_eq!(
        std::fs::metadata(iso).unwrap().len(),
        std::fs::metadata(&out).unwrap().len()
    );

    // Reset in place: byte-identical to the build's output again.
    customize(&out, None, &InstallSettings::default()).unwrap();
    assert_eq!(std::fs::read(&out).unwrap(), std::fs::read(iso).unwrap());
}

#[test]
fn customizes_an_iso_the_build_code_writes() {
    let d = tempfile::tempdir().unwrap();
    let sd = d.path().join("systemd-boot.efi");
    let uki = d.path().join("uki.efi");
    std::fs::write(&sd, vec![0x4d; 64 << 10]).unwrap();
    let body: Vec<u8> = (0..3u32 << 20)
        .map(|i| (i.wrapping_mul(2654435761) >> 13) as u8)
        .collect();
    std::fs::write(&uki, &body).unwrap();
    let iso = d.path().join("installer.iso");
    builder::release::installer_iso(&sd, &uki, "1.2.3", 1735689600, b"seed", &iso).unwrap();
    // Twice the same bytes: the empty area keeps the build reproducible.
    let again = d.path().join("again.iso");
    builder::release::installer_iso(&sd, &uki, "1.2.3", 1735689600, b"seed", &again).unwrap();
    assert_eq!(std::fs::read(&iso).unwrap(), std::fs::read(&again).unwrap());
    check_customize(
        &iso,
        &format!("/{}", contract::esp::installer_entry("1.2.3")),
        d.path(),
    );
}

/// A `cairn build` output: `$CAIRN_ISO`, else out/installer.iso of this
/// checkout; skipped (with a note) when there is none or it predates the
/// settings area.
#[test]
fn customizes_a_built_installer_iso() {
    let iso = std::env::var_os("CAIRN_ISO")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("../out/installer.iso"));
    if !iso.is_file() || read_settings(&iso).is_err() {
        eprintln!(
            "skipped: {} is not an installer.iso with a settings area",
            iso.display()
        );
        return;
    }
    let d = tempfile::tempdir().unwrap();
    // Never change the build output: work on a copy.
    let copy = d.path().join("installer.iso");
    std::fs::copy(&iso, &copy).unwrap();
    let entry = esp_files(&copy)
        .into_iter()
        .map(|(p, _)| p)
        .find(|p| {
            p.to_ascii_lowercase()
                .contains("/efi/linux/cairn-installer-")
        })
        .expect("an installer UKI");
    check_customize(&copy, &entry, d.path());
}
