//! Release trust on an installed node (docs/design.md "Trust on the node").
//!
//! Every rootfs carries the public keys its release trusts to sign the
//! *next* release, under [`KEYS_DIR`]. A running node accepts an update only
//! when it verifies against that set, so trust moves with the releases: a
//! release signed by a trusted key may ship a different set (key rotation),
//! and from its first boot on, only that set is trusted. Because the rootfs
//! is bound to the signed manifest by its verity root hash, the set a
//! release ships is itself covered by the signature that let it in.

use signing::{KeyId, PublicKey};

/// The trusted keys' directory, relative to the rootfs root.
pub const KEYS_DIR: &str = "etc/cairn/keys";

/// The same directory on a running node (the rootfs mounted at `/`).
pub const NODE_KEYS_DIR: &str = "/etc/cairn/keys";

/// A trusted key's file name: its key id, so a set is listed in one order
/// and a key is never shipped twice under two names.
pub fn key_file(id: &KeyId) -> String {
    format!("{id}.pub")
}

/// The set a release trusts, sorted by key id and without repeats: the
/// order the files are written in and the order [`signing::load_trusted_dir`]
/// reads them back in.
pub fn key_set(keys: impl IntoIterator<Item = PublicKey>) -> Vec<PublicKey> {
    let mut v: Vec<PublicKey> = keys.into_iter().collect();
    v.sort_by_key(|k| k.id());
    v.dedup_by_key(|k| k.id());
    v
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn file_names_are_key_ids_and_the_set_is_sorted_and_unique() {
        let a = signing::PrivateKey::from_seed(&[1; 32]).public();
        let b = signing::PrivateKey::from_seed(&[2; 32]).public();
        let set = key_set([b.clone(), a.clone(), b.clone()]);
        assert_eq!(set.len(), 2);
        assert!(set[0].id() < set[1].id());
        let name = key_file(&a.id());
        assert_eq!(name.len(), 32 + 4);
        assert_eq!(KeyId::from_hex(name.trim_end_matches(".pub")), Some(a.id()));
        assert_eq!(NODE_KEYS_DIR, format!("/{KEYS_DIR}"));
    }
}
