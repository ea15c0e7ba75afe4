//! Powering a test image on under QEMU + OVMF with the real systemd-boot.
//! The test UKIs carry dummy kernels, so nothing boots past the loader; its
//! boot-counting rename (made before the launch) and its console output
//! show which entry it picked.

use std::fs;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use super::{entry_files, Fixture};

pub const OVMF_CODE: &str = "/usr/share/OVMF/OVMF_CODE_4M.fd";
pub const OVMF_VARS: &str = "/usr/share/OVMF/OVMF_VARS_4M.fd";

struct Qemu(Child);

impl Drop for Qemu {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Powers the image on once and waits until `done(entries, console)` or
/// the deadline. Returns the entry list and the console output by then.
pub fn power_on_until(
    fx: &Fixture,
    img: &Path,
    timeout: Duration,
    done: impl Fn(&[String], &str) -> bool,
) -> (Vec<String>, String) {
    let vars = fx.path("vars.fd");
    fs::copy(OVMF_VARS, &vars).expect("ovmf installed");
    let console = fx.path("console.log");
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
        .stdout(fs::File::create(&console).unwrap())
        .stderr(Stdio::null())
        .spawn()
        .expect("qemu-system-x86_64 is required");
    let _q = Qemu(child);
    let start = Instant::now();
    loop {
        std::thread::sleep(Duration::from_secs(2));
        let now = entry_files(img);
        let text = String::from_utf8_lossy(&fs::read(&console).unwrap_or_default()).into_owned();
        if done(&now, &text) || start.elapsed() > timeout {
            return (now, text);
        }
    }
}

/// Powers the image on once and waits until the entry list changes (the
/// loader's rename). Returns the new entry list.
pub fn power_on(fx: &Fixture, img: &Path) -> Vec<String> {
    let before = entry_files(img);
    let (now, _) = power_on_until(fx, img, Duration::from_secs(300), |now, _| now != before);
    assert!(
        now != before,
        "systemd-boot renamed nothing within 300 s; entries {before:?}"
    );
    now
}
