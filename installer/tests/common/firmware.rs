//! Powering a test image on under QEMU + OVMF with the real systemd-boot
//! (testkit's harness). The test UKIs carry dummy kernels, so nothing boots
//! past the loader; its boot-counting rename (made before the launch) and
//! its console output show which entry it picked.

use std::path::Path;
use std::time::Duration;

use testkit::qemu::{Disk, Machine};

use super::{entry_files, Fixture};

/// Powers the image on once and waits until `done(entries, console)` or
/// the deadline. Returns the entry list and the console output by then.
pub fn power_on_until(
    fx: &Fixture,
    img: &Path,
    timeout: Duration,
    done: impl Fn(&[String], &str) -> bool,
) -> (Vec<String>, String) {
    let mut m = Machine::new("loader", fx.dir.path(), None).expect("ovmf installed");
    m.memory_mb = 256;
    m.disks.push(Disk::virtio(img));
    let boot = m.boot().expect("qemu-system-x86_64 is required");
    // The entry list is read from the image while the loader runs.
    let mut now = entry_files(img);
    let run = boot
        .run_until(timeout, Duration::from_secs(2), |console| {
            now = entry_files(img);
            done(&now, console)
        })
        .unwrap();
    (now, run.console)
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
