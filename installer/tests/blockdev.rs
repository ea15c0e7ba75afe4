//! The same install on a block device (a loop device) as on an image file.
//! Needs root and loop devices (`losetup`).

mod common;

use common::loopdev::{attach_partitioned, hold, partition, Loop};
use common::*;
use installer::install::install;
use installer::Error;

#[test]
fn install_on_a_loop_device_equals_install_on_the_image() {
    let fx = Fixture::new();
    let b = bundle(&fx.path("b"), "1.0.0");
    let backing = fx.image("backing.img", DISK_SIZE);
    let plain = fx.image("plain.img", DISK_SIZE);
    {
        let dev = Loop::attach(&backing);
        // The loop device's own backing file is the media: refused.
        let mut o = install_opts(&dev.0, &b.dir);
        o.media = vec![backing.clone()];
        match install(&o) {
            Err(Error::IsInstallMedia { .. }) => {}
            other => panic!("unexpected {other:?}"),
        }
        {
            // While something holds the device exclusively (as a mount or a
            // dm/md holder does), install refuses it.
            use std::os::unix::fs::OpenOptionsExt;
            let _held = std::fs::OpenOptions::new()
                .read(true)
                .custom_flags(libc::O_EXCL)
                .open(&dev.0)
                .unwrap();
            match install(&install_opts(&dev.0, &b.dir)) {
                Err(e) => assert!(e.to_string().contains("in use"), "{e}"),
                Ok(_) => panic!("installed onto a held device"),
            }
        }
        install(&install_opts(&dev.0, &b.dir)).expect("install on the loop device");
        let s = installer::status::status(&dev.0).unwrap();
        assert_eq!(s.disk_size, DISK_SIZE);
        assert_eq!(s.next_boot.unwrap().file, "cairn-1.0.0+3.efi");
    }
    install(&install_opts(&plain, &b.dir)).unwrap();
    assert_eq!(sha256_file(&backing), sha256_file(&plain));
    assert_eq!(booted_version(&backing, &[&b]), Ok("1.0.0".into()));
}

/// Issue 13, a live upgrade: the running node's disk has its running slot,
/// STATE and EPHEMERAL in use. A plain upgrade refuses the disk; `live`
/// claims only the ESP and the inactive slot, refuses (writing nothing)
/// while the inactive slot is held, and otherwise upgrades without touching
/// a byte of the partitions in use.
#[test]
fn live_upgrade_writes_only_what_nothing_holds() {
    let fx = Fixture::new();
    let b1 = bundle(&fx.path("b1"), "1.0.0");
    let b2 = bundle(&fx.path("b2"), "2.0.0");
    let img = fx.image("live.img", DISK_SIZE);
    install(&install_opts(&img, &b1.dir)).unwrap();
    bless(&img, "1.0.0");
    let in_use = [
        contract::disk::BOOT_A,
        contract::disk::STATE,
        contract::disk::EPHEMERAL,
    ];
    let region = |name: &str| {
        let p = partition(&img, name);
        range_sha256(&img, p.offset(), p.size_bytes())
    };
    let before: Vec<[u8; 32]> = in_use.iter().map(|n| region(n)).collect();

    let dev = attach_partitioned(&img);
    let _running: Vec<std::fs::File> = in_use
        .iter()
        .map(|n| hold(&dev, partition(&img, n).slot + 1))
        .collect();

    // Without `live` the disk is in use: refused.
    let mut o = upgrade_opts(&dev.0, &b2.dir);
    match installer::upgrade::upgrade(&o) {
        Err(e) => assert!(e.to_string().contains("in use"), "{e}"),
        Ok(p) => panic!("a plain upgrade opened a disk in use: {p}"),
    }

    // Live, with the inactive slot mounted (held): refused, nothing written.
    o.live = true;
    let whole = sha256_file(&img);
    {
        let b = partition(&img, contract::disk::BOOT_B);
        let _mounted = hold(&dev, b.slot + 1);
        match installer::upgrade::upgrade(&o) {
            Err(Error::PartitionInUse { name, number, .. }) => {
                assert_eq!(
                    (name.as_str(), number),
                    (contract::disk::BOOT_B, b.slot + 1)
                )
            }
            other => panic!("live upgrade over a held inactive slot: {other:?}"),
        }
    }
    assert_eq!(sha256_file(&img), whole, "a refused live upgrade wrote");

    let plan = installer::upgrade::upgrade(&o).expect("live upgrade");
    assert_eq!(
        (plan.running_slot.as_str(), plan.target_slot.as_str()),
        (contract::disk::BOOT_A, contract::disk::BOOT_B)
    );
    drop(_running);
    drop(dev);
    let after: Vec<[u8; 32]> = in_use.iter().map(|n| region(n)).collect();
    assert_eq!(before, after, "a live upgrade wrote a partition in use");
    assert_eq!(booted_version(&img, &[&b1, &b2]), Ok("2.0.0".into()));
}
