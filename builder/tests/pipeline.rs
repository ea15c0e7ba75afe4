//! The pipeline's caching, on a repository of tiny fake recipes (the real
//! kernel takes minutes): a no-op rebuild rebuilds nothing and leaves the
//! signed manifest byte for byte; a changed profile file rebuilds the rootfs
//! and what follows, not packages. (How fast a no-op rebuild is belongs to
//! a benchmark: a wall-clock limit here would fail on a loaded machine.)

use std::fs;
use std::path::Path;

use builder::pipeline::{build, Summary};

mod common;
use common::{fake_repo, options, recipe};

fn run(repo: &Path, cache: &Path, out: &Path, key: &Path) -> Summary {
    build(&options(repo, cache, out, Some(key))).unwrap()
}

fn rebuilt(s: &Summary) -> Vec<String> {
    s.stages
        .iter()
        .filter(|r| !r.cached)
        .map(|r| r.name.clone())
        .collect()
}

#[test]
fn noop_rebuild_keeps_the_manifest_and_profile_change_skips_packages() {
    let t = tempfile::tempdir().unwrap();
    let (repo, cache, out) = (
        t.path().join("repo"),
        t.path().join("cache"),
        t.path().join("out"),
    );
    fake_repo(&repo);
    let key = t.path().join("release.key");
    signing::PrivateKey::generate()
        .unwrap()
        .write_new(&key)
        .unwrap();

    let first = run(&repo, &cache, &out, &key);
    for a in [
        "disk.raw",
        "update.tar",
        "disk.qcow2",
        "uki.efi",
        "manifest.json",
    ] {
        assert!(out.join(a).exists(), "{a} missing");
    }
    assert!(rebuilt(&first).contains(&"pkg:kernel".to_string()));
    assert_eq!(first.binaries.len(), 3, "{:?}", first.binaries);

    let manifest = fs::read(out.join("manifest.json")).unwrap();
    let signature = fs::read(out.join("manifest.json.sig")).unwrap();

    let second = run(&repo, &cache, &out, &key);
    assert!(
        rebuilt(&second).is_empty(),
        "no-op build rebuilt {:?}",
        rebuilt(&second)
    );
    assert!(
        fs::read(out.join("manifest.json")).unwrap() == manifest,
        "the no-op rebuild changed manifest.json:\n--- before\n{}\n--- after\n{}",
        String::from_utf8_lossy(&manifest),
        String::from_utf8_lossy(&fs::read(out.join("manifest.json")).unwrap())
    );
    assert_eq!(
        fs::read(out.join("manifest.json.sig")).unwrap(),
        signature,
        "the no-op rebuild re-signed the manifest"
    );

    fs::write(repo.join("profiles/files/motd"), "changed\n").unwrap();
    let third = run(&repo, &cache, &out, &key);
    let r = rebuilt(&third);
    assert!(
        r.iter().all(|n| !n.starts_with("pkg:")),
        "a profile file change rebuilt packages: {r:?}"
    );
    for stage in [
        "rootfs-tree",
        "rootfs-image",
        "uki",
        "bundle",
        "disk.raw",
        "update.tar",
    ] {
        assert!(r.contains(&stage.to_string()), "{stage} not rebuilt: {r:?}");
    }
    assert_ne!(first.root_hash, third.root_hash);
}

/// Finding 3: a profile's machine config is checked by `cairn build` with
/// the parser init uses at boot, before any package is built: a typo is a
/// build error naming the file, line and key, not a node that reboot-loops.
#[test]
fn finding_3_profile_machine_config_checked_before_any_work() {
    let t = tempfile::tempdir().unwrap();
    let (repo, cache, out) = (t.path().join("r"), t.path().join("c"), t.path().join("o"));
    fake_repo(&repo);
    let marker = t.path().join("kernel-was-built");
    recipe(
        &repo,
        "kernel",
        &["bzImage", "config"],
        &format!(
            "touch {}; : > \"$CAIRN_OUT/bzImage\"; : > \"$CAIRN_OUT/config\"",
            marker.display()
        ),
    );
    fs::write(
        repo.join("profiles/files/machine.toml"),
        "hostname = \"n1\"\n[[service]]\nname = \"web\"\nexec = \"/usr/bin/web\"\nrestrat = \"never\"\n",
    )
    .unwrap();
    let p = repo.join("profiles/p.toml");
    let text = fs::read_to_string(&p).unwrap().replace(
        "files = [{ src = \"files/motd\", dst = \"/etc/motd\", mode = \"0644\" }]",
        "files = [{ src = \"files/machine.toml\", dst = \"/usr/share/cairn/machine.toml\", mode = \"0644\" }]",
    );
    fs::write(&p, text).unwrap();
    let err = build(&options(&repo, &cache, &out, None)).unwrap_err();
    let msg = format!("{err:#}");
    assert!(msg.contains("machine.toml:5:1"), "{msg}");
    assert!(msg.contains("restrat"), "{msg}");
    assert!(!marker.exists(), "a package was built before the check");
    assert!(!out.join("disk.raw").exists());
}

/// Issue 16: nothing to log in with. A profile file (or a package) that
/// puts a shell or a login program into the rootfs fails the build, and the
/// error names the path; no disk is written.
#[test]
fn a_shell_in_the_rootfs_fails_the_build() {
    let t = tempfile::tempdir().unwrap();
    let (repo, cache, out) = (t.path().join("r"), t.path().join("c"), t.path().join("o"));
    fake_repo(&repo);
    let p = repo.join("profiles/p.toml");
    let text = fs::read_to_string(&p).unwrap().replace(
        "files = [{ src = \"files/motd\", dst = \"/etc/motd\", mode = \"0644\" }]",
        "files = [{ src = \"files/motd\", dst = \"/usr/bin/sh\", mode = \"0755\" }]",
    );
    fs::write(&p, text).unwrap();
    let err = build(&options(&repo, &cache, &out, None)).unwrap_err();
    let msg = format!("{err:#}");
    assert!(
        msg.contains("/usr/bin/sh is a shell or login program"),
        "{msg}"
    );
    assert!(!out.join("disk.raw").exists());
}
