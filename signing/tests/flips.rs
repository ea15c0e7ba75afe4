//! Property: flipping any bits of any byte in the manifest, the signature
//! file or an artifact makes verification fail.

use proptest::prelude::*;
use signing::{sign_dir, verify_dir, PrivateKey, ReleaseMeta, MANIFEST_FILE, SIGNATURE_FILE};
use std::fs;
use std::path::Path;

fn build(dir: &Path, key: &PrivateKey) {
    fs::write(dir.join("rootfs.img"), vec![0x5a; 70_000]).unwrap();
    fs::write(dir.join("uki.efi"), b"uki bytes").unwrap();
    let meta = ReleaseMeta {
        os_name: "cairn".into(),
        os_version: "0.3.1".parse().unwrap(),
        profile: "qemu".into(),
        source_date_epoch: 0,
        arch: "x86_64".into(),
        inputs: [("k".to_string(), "v".to_string())].into(),
        verity_root_hash: Some("0f".repeat(32)),
    };
    sign_dir(dir, meta, &["rootfs.img", "uki.efi"], key).unwrap();
}

fn flip(path: &Path, pos: prop::sample::Index, mask: u8) {
    let mut data = fs::read(path).unwrap();
    let i = pos.index(data.len());
    data[i] ^= mask;
    fs::write(path, data).unwrap();
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 200, ..ProptestConfig::default() })]

    #[test]
    fn every_flip_is_rejected(
        target in 0usize..4,
        pos in any::<prop::sample::Index>(),
        mask in 1u8..=255,
    ) {
        let key = PrivateKey::from_seed(&[3; 32]);
        let d = tempfile::tempdir().unwrap();
        build(d.path(), &key);
        prop_assert!(verify_dir(d.path(), &[key.public()]).is_ok());
        let file = [MANIFEST_FILE, SIGNATURE_FILE, "rootfs.img", "uki.efi"][target];
        flip(&d.path().join(file), pos, mask);
        let r = verify_dir(d.path(), &[key.public()]);
        prop_assert!(r.is_err(), "flip in {} accepted", file);
    }
}
