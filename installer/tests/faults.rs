//! Power loss at every write of an upgrade (and a rollback): after each cut
//! the disk must still boot the old or the new release, following the real
//! chain (GPT -> ESP -> systemd-boot's choice -> cmdline root hash -> slot
//! with that PARTUUID -> slot data equal to the release's rootfs), STATE
//! must be untouched, `EFI/BOOT/BOOTX64.EFI` must be exactly the old or the
//! new systemd-boot (the test bundles' loaders differ), and re-running the
//! upgrade must finish it.

mod common;

use std::fs;
use std::io::{Read, Seek, SeekFrom};
use std::path::Path;

use common::*;
use installer::bundle::Bundle;
use installer::install::install;
use installer::upgrade::{upgrade, upgrade_disk};
use installer::Error;

fn state_bytes(img: &Path) -> Vec<u8> {
    let mut f = fs::File::open(img).unwrap();
    let disk = artifacts::gpt::read_disk(&mut f).unwrap();
    let p = disk.layout.partition("STATE").unwrap();
    let mut buf = vec![0u8; p.size_bytes() as usize];
    f.seek(SeekFrom::Start(p.offset())).unwrap();
    f.read_exact(&mut buf).unwrap();
    buf
}

/// Puts recognisable bytes in STATE, as a running system would have.
fn fill_state(img: &Path) {
    use std::io::Write;
    let mut f = fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(img)
        .unwrap();
    let disk = artifacts::gpt::read_disk(&mut f).unwrap();
    let p = disk.layout.partition("STATE").unwrap();
    let data: Vec<u8> = (0..p.size_bytes()).map(|i| (i % 251) as u8).collect();
    f.seek(SeekFrom::Start(p.offset())).unwrap();
    f.write_all(&data).unwrap();
}

fn selected_is_counted(img: &Path) -> bool {
    with_esp(img, |vol| {
        installer::bootmodel::BootModel::read(vol)
            .unwrap()
            .selected()
            .is_some_and(|e| e.counter.is_some())
    })
}

/// Cuts `upgrade` at every write in both modes; returns the cut count.
fn every_cut(
    fx: &Fixture,
    base: &Path,
    bundle: &Bundle,
    old: &BundleInfo,
    new: &BundleInfo,
) -> usize {
    let all = [old, new];
    let work = fx.path("work.img");
    sparse_copy(base, &work);
    let mut d = FaultDisk::new(&work, None, Cut::Drop);
    upgrade_disk(&mut d, &work, bundle, false).expect("uncut upgrade");
    let total = d.writes;
    assert_eq!(booted_version(&work, &all), Ok(new.version.clone()));
    let (old_loader, new_loader) = (bundle_loader(old), bundle_loader(new));
    assert!(old_loader != new_loader, "the test needs differing loaders");
    assert!(esp_loader(base) == old_loader);
    assert!(esp_loader(&work) == new_loader);
    let state = state_bytes(base);
    let (mut saw_old, mut saw_new) = (0, 0);
    let (mut saw_old_loader, mut saw_new_loader) = (0, 0);
    for mode in [Cut::Drop, Cut::Torn, Cut::LoseUnflushed] {
        for cut in 1..=total {
            sparse_copy(base, &work);
            let mut d = FaultDisk::new(&work, Some(cut), mode);
            let r = upgrade_disk(&mut d, &work, bundle, false);
            assert!(
                r.is_err(),
                "{mode:?} cut {cut}/{total} did not fail the upgrade"
            );
            let why = format!("{mode:?} cut at write {cut}/{total}");
            match booted_version(&work, &all) {
                Ok(v) if v == old.version => saw_old += 1,
                Ok(v) if v == new.version => {
                    saw_new += 1;
                    assert!(
                        selected_is_counted(&work),
                        "{why}: new release boots without a counter"
                    );
                }
                other => panic!("{why}: disk does not boot old or new: {other:?}"),
            }
            assert!(state_bytes(&work) == state, "{why}: STATE changed");
            let loader = esp_loader(&work);
            if loader == new_loader {
                saw_new_loader += 1;
                assert_eq!(
                    booted_version(&work, &all),
                    Ok(new.version.clone()),
                    "{why}: the new loader is in place before the new release"
                );
            } else {
                assert!(
                    loader == old_loader,
                    "{why}: BOOTX64.EFI is neither the old nor the new loader ({} bytes)",
                    loader.len()
                );
                saw_old_loader += 1;
            }
            // Running the upgrade again completes it.
            let mut f = fs::OpenOptions::new()
                .read(true)
                .write(true)
                .open(&work)
                .unwrap();
            match upgrade_disk(&mut f, &work, bundle, false) {
                Ok(_) | Err(Error::SameVersion { .. }) => {}
                Err(e) => panic!("{why}: re-running the upgrade failed: {e}"),
            }
            assert_eq!(
                booted_version(&work, &all),
                Ok(new.version.clone()),
                "{why}: after re-run"
            );
            assert!(
                esp_loader(&work) == new_loader,
                "{why}: the re-run left the old loader"
            );
        }
    }
    assert!(
        saw_old > 0 && saw_new > 0 && saw_old_loader > 0 && saw_new_loader > 0,
        "cuts gave old {saw_old} / new {saw_new} times, old loader \
         {saw_old_loader} / new loader {saw_new_loader} times"
    );
    eprintln!(
        "{total} writes, {} cut points: old boots {saw_old}, new boots {saw_new}; \
         old loader {saw_old_loader}, new loader {saw_new_loader}",
        3 * total
    );
    total
}

#[test]
fn first_upgrade_survives_a_cut_at_every_write() {
    let fx = Fixture::new();
    let b1 = bundle(&fx.path("b1"), "1.0.0");
    let b2 = bundle_with_loader(&fx.path("b2"), "2.0.0", &[0x5a; 3000]);
    let base = fx.image("base.img", DISK_SIZE);
    install(&install_opts(&base, &b1.dir)).unwrap();
    fill_state(&base);
    let bundle = installer::verify::open_verified(&b2.dir, &[key().public()]).unwrap();
    let n = every_cut(&fx, &base, &bundle, &b1, &b2);
    assert!(n >= 10, "only {n} writes");
}

#[test]
fn second_upgrade_survives_a_cut_at_every_write() {
    // Here step 1 has something to remove (1.0.0's UKI) and the target slot
    // already holds a release whose PARTUUID the GPT update replaces.
    let fx = Fixture::new();
    let b1 = bundle(&fx.path("b1"), "1.0.0");
    let b2 = bundle_with_loader(&fx.path("b2"), "2.0.0", &[0x5a; 3000]);
    // Shorter than 2.0.0's: the replacement also shrinks the file.
    let b3 = bundle_with_loader(&fx.path("b3"), "3.0.0", b"v3");
    let base = fx.image("base.img", DISK_SIZE);
    install(&install_opts(&base, &b1.dir)).unwrap();
    upgrade(&upgrade_opts(&base, &b2.dir)).unwrap();
    boot_attempt(&base);
    bless(&base, "2.0.0");
    fill_state(&base);
    let bundle = installer::verify::open_verified(&b3.dir, &[key().public()]).unwrap();
    every_cut(&fx, &base, &bundle, &b2, &b3);
}

fn rollback_every_cut(
    fx: &Fixture,
    base: &Path,
    all: &[&BundleInfo],
    from: &str,
    to: &str,
) -> usize {
    assert_eq!(booted_version(base, all), Ok(from.into()));
    let work = fx.path("work.img");
    sparse_copy(base, &work);
    let mut d = FaultDisk::new(&work, None, Cut::Drop);
    installer::rollback::rollback_disk(&mut d, &work).unwrap();
    let total = d.writes;
    eprintln!("rollback: {total} writes, {} cut points", 3 * total);
    assert_eq!(booted_version(&work, all), Ok(to.into()));
    for mode in [Cut::Drop, Cut::Torn, Cut::LoseUnflushed] {
        for cut in 1..=total {
            sparse_copy(base, &work);
            let mut d = FaultDisk::new(&work, Some(cut), mode);
            assert!(installer::rollback::rollback_disk(&mut d, &work).is_err());
            let v = booted_version(&work, all);
            assert!(
                v == Ok(from.into()) || v == Ok(to.into()),
                "{mode:?} cut {cut}/{total}: {v:?}"
            );
        }
    }
    total
}

#[test]
fn rollback_survives_a_cut_at_every_write() {
    let fx = Fixture::new();
    let b1 = bundle(&fx.path("b1"), "1.0.0");
    let b2 = bundle(&fx.path("b2"), "2.0.0");
    let base = fx.image("base.img", DISK_SIZE);
    install(&install_opts(&base, &b1.dir)).unwrap();
    upgrade(&upgrade_opts(&base, &b2.dir)).unwrap();
    for _ in 0..3 {
        boot_attempt(&base); // 2.0.0 used up its tries: 1.0.0 boots
    }
    rollback_every_cut(&fx, &base, &[&b1, &b2], "1.0.0", "2.0.0");
}

#[test]
fn rollback_with_revive_and_demote_survives_a_cut_at_every_write() {
    // 1.0.0 exhausted in A, 2.0.0 blessed in B: rollback revives 1.0.0
    // (+0-3 -> +3) and then demotes 2.0.0 (-> +0): two renames.
    let fx = Fixture::new();
    let b1 = bundle(&fx.path("b1"), "1.0.0");
    let b2 = bundle(&fx.path("b2"), "2.0.0");
    let base = fx.image("base.img", DISK_SIZE);
    install(&install_opts(&base, &b1.dir)).unwrap();
    upgrade(&upgrade_opts(&base, &b2.dir)).unwrap();
    boot_attempt(&base);
    bless(&base, "2.0.0");
    with_esp(&base, |v| {
        v.rename("EFI/Linux/cairn-1.0.0+3.efi", "cairn-1.0.0+0-3.efi")
            .unwrap()
    });
    let n = rollback_every_cut(&fx, &base, &[&b1, &b2], "2.0.0", "1.0.0");
    assert!(n >= 2, "{n} writes");
}
