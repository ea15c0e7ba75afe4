//! Trust on the installed system (issue 13, contract::trust): the rootfs
//! carries the keys its release trusts to sign the next one, read back from
//! the built squashfs with `unsquashfs`, not through our own reader.

use std::fs;
use std::path::Path;
use std::process::Command;

use builder::pipeline::build;

mod common;
use common::{fake_repo, options};

/// `unsquashfs -l`'s entries under the keys directory, and each file's text.
fn shipped_keys(squashfs: &Path, scratch: &Path) -> Vec<(String, String)> {
    let dest = scratch.join("x");
    let _ = fs::remove_dir_all(&dest);
    let out = Command::new("unsquashfs")
        .arg("-d")
        .arg(&dest)
        .arg(squashfs)
        .arg(contract::trust::KEYS_DIR)
        .output()
        .expect("unsquashfs (squashfs-tools) runs");
    assert!(
        out.status.success(),
        "unsquashfs {}: {}",
        squashfs.display(),
        String::from_utf8_lossy(&out.stderr)
    );
    let dir = dest.join(contract::trust::KEYS_DIR);
    let mut v: Vec<(String, String)> = fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{} in the rootfs: {e}", dir.display()))
        .map(|e| {
            let e = e.unwrap();
            let name = e.file_name().into_string().unwrap();
            (name, fs::read_to_string(e.path()).unwrap())
        })
        .collect();
    v.sort();
    v
}

fn key(dir: &Path, name: &str) -> (std::path::PathBuf, signing::PublicKey) {
    let path = dir.join(name);
    let k = signing::PrivateKey::generate().unwrap();
    k.write_new(&path).unwrap();
    (path, k.public())
}

#[test]
fn rootfs_carries_the_release_key_then_a_rotated_set() {
    let t = tempfile::tempdir().unwrap();
    let (repo, cache, out) = (
        t.path().join("repo"),
        t.path().join("cache"),
        t.path().join("out"),
    );
    fake_repo(&repo);
    let (k1_path, k1) = key(t.path(), "k1.key");

    // Unset signing.trust: the release trusts the key that signs it.
    build(&options(&repo, &cache, &out, Some(&k1_path))).unwrap();
    let keys = shipped_keys(&out.join("rootfs.squashfs"), t.path());
    assert_eq!(
        keys,
        vec![(contract::trust::key_file(&k1.id()), k1.to_pem())],
        "the rootfs must trust exactly the release key"
    );

    // signing.trust names the next key (and keeps the current one): the
    // release is still signed by k1, and ships {k1, k2}, sorted by id.
    let (_, k2) = key(t.path(), "k2.key");
    let (_, k3) = key(t.path(), "k3.key");
    fs::write(repo.join("profiles/k2.pub"), k2.to_pem()).unwrap();
    fs::write(repo.join("profiles/k3.pub"), k3.to_pem()).unwrap();
    let profile = repo.join("profiles/p.toml");
    let text = fs::read_to_string(&profile).unwrap();
    fs::write(
        &profile,
        format!("{text}[signing]\ntrust = [\"k2.pub\", \"k3.pub\"]\n"),
    )
    .unwrap();
    let s = build(&options(&repo, &cache, &out, Some(&k1_path))).unwrap();
    let keys = shipped_keys(&out.join("rootfs.squashfs"), t.path());
    let mut want: Vec<(String, String)> = [&k2, &k3]
        .iter()
        .map(|k| (contract::trust::key_file(&k.id()), k.to_pem()))
        .collect();
    want.sort();
    assert_eq!(keys, want, "a rotated set replaces the release key's");
    assert!(
        s.stages
            .iter()
            .any(|r| r.name == "rootfs-tree" && !r.cached),
        "a new trust set must restage the rootfs"
    );
    // Still signed by k1: the release is accepted by nodes that trust k1.
    let manifest = fs::read(out.join("manifest.json")).unwrap();
    let sig = fs::read(out.join("manifest.json.sig")).unwrap();
    signing::verify_manifest(&manifest, &sig, std::slice::from_ref(&k1))
        .expect("the rotating release is signed by the current key");

    // A trust entry that is not a public key names the profile and the entry.
    fs::write(repo.join("profiles/k2.pub"), "not a key\n").unwrap();
    let err = build(&options(&repo, &cache, &out, Some(&k1_path))).unwrap_err();
    let msg = format!("{err:#}");
    assert!(
        msg.contains("signing.trust") && msg.contains("k2.pub"),
        "error must name the field and file: {msg}"
    );
}
