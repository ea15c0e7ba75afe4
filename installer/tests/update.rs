//! Issue 13: a node's update check against a real registry (Debian's
//! `docker-registry`, started per test on loopback) writing the node's own
//! disk live. The disk is a loop device with partitions whose running slot,
//! STATE and EPHEMERAL are held `O_EXCL` as dm-verity and mounts hold them
//! on a node. Needs root and `losetup`.
//!
//! Bad input first (unknown key, known-bad release, tampered blob, registry
//! down): each ends in a `Failed`/`SkippedBad` attempt that names the cause,
//! and nothing the loader reads changes (a tampered rootfs may have partly
//! written the inactive slot, which nothing points at). Then the good
//! release installs, boots next, and the partitions in use are untouched.
//! The work directory is a 3 MiB tmpfs and the rootfs 6 MiB: the rootfs
//! can only have streamed from the registry into the slot.

mod common;

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

use common::loopdev::{attach_partitioned, hold, partition};
use common::*;
use contract::update::{Outcome, Update};
use installer::install::install;
use installer::update::{check_once, Node};
use testkit::registry::Registry;

/// A size-limited tmpfs, unmounted on drop.
struct Tmpfs(PathBuf);

impl Tmpfs {
    fn mount(at: &Path, size: &str) -> Tmpfs {
        fs::create_dir_all(at).unwrap();
        let ok = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(at)
            .status()
            .unwrap()
            .success();
        assert!(ok, "mounting a tmpfs at {} (root needed)", at.display());
        Tmpfs(at.to_path_buf())
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(&self.0).status();
    }
}

fn push(reg: &Registry, b: &BundleInfo, at: &std::path::Path, tag: &str) {
    let layout = at.join(format!("oci-{}", b.version));
    contract::bundle::oci::write_release_layout(&b.dir, &layout, &b.version, &b.root_hash, 0)
        .unwrap();
    let reference = registry::Reference::parse(&format!("{}/cairn:{tag}", reg.host())).unwrap();
    let client = registry::Client::for_reference(
        &reference,
        &registry::ClientOptions {
            plain_http: true,
            ..Default::default()
        },
    )
    .unwrap();
    registry::push_layout(&client, &layout, "cairn", tag, registry::Upload::Monolithic).unwrap();
}

#[test]
fn node_installs_its_channel_live_and_refuses_bad_input_writing_nothing() {
    let fx = Fixture::new();
    let b1 = bundle(&fx.path("b1"), "1.0.0");
    let b2 = make_bundle(
        &fx.path("b2"),
        &BundleOpts {
            rootfs_len: 6 << 20,
            ..BundleOpts::new("2.0.0")
        },
    );
    let img = fx.image("node.img", DISK_SIZE);
    install(&install_opts(&img, &b1.dir)).unwrap();
    bless(&img, "1.0.0");

    let mut reg = Registry::start();
    push(&reg, &b2, &fx.path(""), "stable");
    let cfg: Update = toml::from_str(&format!(
        "source = \"{}/cairn\"\ntag = \"stable\"\nplain_http = true\n",
        reg.host()
    ))
    .unwrap();
    cfg.validate().unwrap();

    let dev = attach_partitioned(&img);
    let in_use = [
        contract::disk::BOOT_A,
        contract::disk::STATE,
        contract::disk::EPHEMERAL,
    ];
    let mut running: Vec<fs::File> = in_use
        .iter()
        .map(|n| hold(&dev, partition(&img, n).slot + 1))
        .collect();
    let work = Tmpfs::mount(&fx.path("work"), "3m");
    let node = Node {
        disk: dev.0.clone(),
        running: "1.0.0".into(),
        trusted: vec![key().public()],
        bad: Vec::new(),
        work: work.0.clone(),
        now: 1_800_000_000,
        progress: installer::update::quiet,
    };
    let untouched = sha256_file(&img);
    let unchanged =
        |what: &str| assert_eq!(sha256_file(&img), untouched, "{what} wrote to the disk");
    // Everything but the inactive slot: the GPT areas and every other
    // partition.
    let loader_view = || {
        let b = partition(&img, contract::disk::BOOT_B);
        let end = b.offset() + b.size_bytes();
        let len = fs::metadata(&img).unwrap().len();
        [
            range_sha256(&img, 0, b.offset()),
            range_sha256(&img, end, len - end),
        ]
    };
    let seen_by_loader = loader_view();

    // Signed by a key the running release does not trust.
    let a = check_once(
        &cfg,
        &Node {
            trusted: vec![other_key().public()],
            ..node.clone()
        },
    );
    assert_eq!(
        (a.outcome, a.offered.as_deref()),
        (Outcome::Failed, None),
        "{a:?}"
    );
    assert!(a.detail.contains("key"), "unknown key: {}", a.detail);
    unchanged("an untrusted release");

    // Failed to bless here before: skipped, though newer and signed.
    let a = check_once(
        &cfg,
        &Node {
            bad: vec!["2.0.0".into()],
            ..node.clone()
        },
    );
    assert_eq!(
        (a.outcome, a.offered.as_deref()),
        (Outcome::SkippedBad, Some("2.0.0")),
        "{a:?}"
    );
    unchanged("a known-bad release");

    // Not newer.
    let a = check_once(
        &cfg,
        &Node {
            running: "2.0.0".into(),
            ..node.clone()
        },
    );
    assert_eq!(a.outcome, Outcome::UpToDate, "{a:?}");
    unchanged("an up-to-date check");

    // The rootfs blob changed in the registry's storage after the push.
    let rootfs_hex = hex::encode(b2.rootfs_sha256);
    let data = reg.blob_data(&rootfs_hex);
    let good = fs::read(&data).unwrap();
    let mut bad = good.clone();
    bad[good.len() / 2] ^= 1;
    fs::write(&data, &bad).unwrap();
    let a = check_once(&cfg, &node);
    assert_eq!(a.outcome, Outcome::Failed, "{a:?}");
    assert!(
        a.detail.contains(&rootfs_hex) && a.detail.contains(&reg.host()),
        "a tampered blob must be named with its registry: {}",
        a.detail
    );
    assert_eq!(
        loader_view(),
        seen_by_loader,
        "a tampered release changed more than the inactive slot"
    );
    assert_eq!(booted_version(&img, &[&b1, &b2]), Ok("1.0.0".into()));
    assert!(
        !node.work.join("2.0.0").exists(),
        "a failed pull left its work directory"
    );
    fs::write(&data, &good).unwrap();

    // The channel installs: written live, boots next.
    let a = check_once(&cfg, &node);
    assert_eq!(
        (a.outcome, a.offered.as_deref()),
        (Outcome::Installed, Some("2.0.0")),
        "{a:?}"
    );
    assert!(a.detail.contains(contract::disk::BOOT_B), "{}", a.detail);

    // 2.0.0 boots and is blessed; 1.0.0 in BOOT-A is now its last-resort
    // fallback. A tampered 3.0.0 streams into BOOT-A before anything else
    // is written, so its refusal leaves the ESP and the GPT (and the
    // fallback's entry) as they were.
    bless(&img, "2.0.0");
    // Now 2.0.0 runs from BOOT-B: that slot is the one dm-verity holds.
    running.clear();
    running = [
        contract::disk::BOOT_B,
        contract::disk::STATE,
        contract::disk::EPHEMERAL,
    ]
    .iter()
    .map(|n| hold(&dev, partition(&img, n).slot + 1))
    .collect();
    // bless wrote the image file: drop what the loop device cached of it.
    assert!(Command::new("blockdev")
        .arg("--flushbufs")
        .arg(&dev.0)
        .status()
        .unwrap()
        .success());
    let b3 = bundle(&fx.path("b3"), "3.0.0");
    push(&reg, &b3, &fx.path(""), "stable");
    let data3 = reg.blob_data(&hex::encode(b3.rootfs_sha256));
    let mut bad3 = fs::read(&data3).unwrap();
    let mid = bad3.len() / 2;
    bad3[mid] ^= 1;
    fs::write(&data3, &bad3).unwrap();
    let a_slot = partition(&img, contract::disk::BOOT_A);
    let outside_a = || {
        let end = a_slot.offset() + a_slot.size_bytes();
        let len = fs::metadata(&img).unwrap().len();
        [
            range_sha256(&img, 0, a_slot.offset()),
            range_sha256(&img, end, len - end),
        ]
    };
    let before = outside_a();
    let on_v2 = Node {
        running: "2.0.0".into(),
        ..node.clone()
    };
    let a = check_once(&cfg, &on_v2);
    assert_eq!(a.outcome, Outcome::Failed, "{a:?}");
    assert!(
        a.detail.contains(&hex::encode(b3.rootfs_sha256)),
        "{}",
        a.detail
    );
    assert_eq!(
        outside_a(),
        before,
        "a refused stream over a last-resort fallback wrote outside its slot"
    );
    assert!(
        entry_files(&img).contains(&"cairn-1.0.0.efi".to_string()),
        "the fallback's entry went: {:?}",
        entry_files(&img)
    );

    // Registry down: named, nothing written (the disk now holds 2.0.0).
    let host = reg.host();
    reg.stop();
    // What the refused 3.0.0 stream wrote into BOOT-A may still sit dirty
    // in the partition's page cache, written back to the image at any time
    // (it was a refused stream: nothing syncs it). Settle it first, or
    // writeback under load reads as this check writing.
    assert!(Command::new("sync").status().unwrap().success());
    let after = sha256_file(&img);
    let a = check_once(&cfg, &node);
    assert_eq!(a.outcome, Outcome::Failed, "{a:?}");
    assert!(
        a.detail.contains(&host) && a.detail.contains("unreachable"),
        "{}",
        a.detail
    );
    assert_eq!(
        sha256_file(&img),
        after,
        "a check against a stopped registry wrote"
    );

    drop(running);
    drop(dev);
    assert_eq!(booted_version(&img, &[&b1, &b2, &b3]), Ok("2.0.0".into()));
}
