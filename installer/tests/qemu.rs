//! The boot model against the real thing: systemd-boot 252 under OVMF picks
//! an entry on an image this installer wrote, and its boot-counting rename
//! shows which one. The test UKIs carry dummy kernels, so nothing boots past
//! the loader; the rename happens before the launch, which is all we need.

mod common;

use std::fs;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::*;
use installer::install::install;
use installer::upgrade::upgrade;

const OVMF_CODE: &str = "/usr/share/OVMF/OVMF_CODE_4M.fd";
const OVMF_VARS: &str = "/usr/share/OVMF/OVMF_VARS_4M.fd";

struct Qemu(Child);

impl Drop for Qemu {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Powers the image on once and waits until the entry list changes (the
/// loader's rename) or the deadline passes. Returns the new entry list.
fn power_on(fx: &Fixture, img: &Path) -> Vec<String> {
    let before = entry_files(img);
    let vars = fx.path("vars.fd");
    fs::copy(OVMF_VARS, &vars).expect("ovmf installed");
    let child = Command::new("qemu-system-x86_64")
        .args([
            "-machine",
            "q35",
            "-m",
            "256",
            "-nographic",
            "-no-reboot",
            "-net",
            "none",
        ])
        .args([
            "-drive",
            &format!("if=pflash,format=raw,readonly=on,file={OVMF_CODE}"),
        ])
        .args([
            "-drive",
            &format!("if=pflash,format=raw,file={}", vars.display()),
        ])
        .args([
            "-drive",
            &format!("if=virtio,format=raw,file={}", img.display()),
        ])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("qemu-system-x86_64 is required");
    let _q = Qemu(child);
    let start = Instant::now();
    while start.elapsed() < Duration::from_secs(300) {
        std::thread::sleep(Duration::from_secs(2));
        let now = entry_files(img);
        if now != before {
            return now;
        }
    }
    panic!("systemd-boot renamed nothing within 300 s; entries {before:?}");
}

#[test]
fn systemd_boot_picks_what_the_model_predicts() {
    let fx = Fixture::new();
    let b1 = bundle(&fx.path("b1"), "1.0.0");
    let b2 = bundle(&fx.path("b2"), "2.0.0");
    let img = fx.image("d.img", DISK_SIZE);
    install(&install_opts(&img, &b1.dir)).unwrap();
    upgrade(&upgrade_opts(&img, &b2.dir)).unwrap();
    let predicted = installer::status::status(&img).unwrap().next_boot.unwrap();
    assert_eq!(predicted.file, "cairn-2.0.0+3.efi");
    let after = power_on(&fx, &img);
    assert_eq!(after, ["cairn-2.0.0+2-1.efi", "cairn-1.0.0+3.efi"]);
    assert_eq!(Some(after[0].clone()), predicted.renamed_to);

    // With 2.0.0's tries used up, the loader falls back to 1.0.0.
    with_esp(&img, |v| {
        v.rename("EFI/Linux/cairn-2.0.0+2-1.efi", "cairn-2.0.0+0-3.efi")
            .unwrap()
    });
    let predicted = installer::status::status(&img).unwrap().next_boot.unwrap();
    assert_eq!(predicted.file, "cairn-1.0.0+3.efi");
    let after = power_on(&fx, &img);
    assert_eq!(after, ["cairn-1.0.0+2-1.efi", "cairn-2.0.0+0-3.efi"]);
}
