//! The disk (docs/design.md "Disk layout"): cairn's five partitions, their
//! names and types, and the slot PARTUUID rule. GPT itself is a format and
//! lives in `artifacts::gpt`; which partitions a cairn disk has is ours.

use artifacts::gpt::{GptError, Guid, PartitionSpec, Size};

pub use artifacts::gpt::{ESP_TYPE, LINUX_FS_TYPE, LINUX_ROOT_X86_64_TYPE as SLOT_TYPE};

pub const EFI: &str = "EFI";
pub const BOOT_A: &str = "BOOT-A";
pub const BOOT_B: &str = "BOOT-B";
pub const STATE: &str = "STATE";
pub const EPHEMERAL: &str = "EPHEMERAL";

/// The two boot slots, A first.
pub const SLOTS: [&str; 2] = [BOOT_A, BOOT_B];

/// The slot letter of a slot partition name (`BOOT-A` -> `A`).
pub fn slot_letter(name: &str) -> Option<char> {
    match name {
        BOOT_A => Some('A'),
        BOOT_B => Some('B'),
        _ => None,
    }
}

/// Where init mounts STATE and EPHEMERAL (their ext4 labels are their GPT names).
pub const STATE_MOUNT: &str = "/system/state";
pub const EPHEMERAL_MOUNT: &str = "/var";

/// A partition UUID of a slot that holds a release: the first 128 bits of the
/// release's dm-verity root hash, so init finds the slot by the root hash
/// alone (UAPI discoverable partitions). An empty slot gets a seed GUID.
///
/// Its text form is `Guid`'s `Display`: lower case, as the kernel takes
/// `root=PARTUUID=` and as libblkid (`blkid`, `partx`) prints it; init's
/// console lines and `cairn-installer status` use it.
pub fn slot_partuuid(root_hash: &[u8; 32]) -> Guid {
    Guid::from_root_hash(root_hash).expect("32 bytes are more than 16")
}

/// [`slot_partuuid`] of a root hash in hex (64 digits, either case), the
/// form `cairn.rootfs=` and manifest.json's `verity_root_hash` carry;
/// `None` when `root_hash_hex` is not that.
pub fn slot_partuuid_of_hex(root_hash_hex: &str) -> Option<Guid> {
    crate::cmdline::parse_hex::<32>(crate::cmdline::ROOTFS, root_hash_hex)
        .ok()
        .map(|h| slot_partuuid(&h))
}

/// cairn's five partitions in table order; EPHEMERAL takes the rest of the
/// disk. GUIDs are left to seed derivation; give a slot `slot_partuuid` by
/// setting `guid` on the returned spec.
pub fn partition_specs(esp_bytes: u64, slot_bytes: u64, state_bytes: u64) -> Vec<PartitionSpec> {
    let spec = |name: &str, type_guid, size| PartitionSpec {
        name: name.to_string(),
        type_guid,
        size,
        guid: None,
        attributes: 0,
    };
    vec![
        spec(EFI, ESP_TYPE, Size::Bytes(esp_bytes)),
        spec(BOOT_A, SLOT_TYPE, Size::Bytes(slot_bytes)),
        spec(BOOT_B, SLOT_TYPE, Size::Bytes(slot_bytes)),
        spec(STATE, LINUX_FS_TYPE, Size::Bytes(state_bytes)),
        spec(EPHEMERAL, LINUX_FS_TYPE, Size::Rest),
    ]
}

/// A PARTUUID as text, the form the kernel and LoaderDevicePartUUID use.
pub fn parse_partuuid(text: &str) -> Result<Guid, GptError> {
    Guid::parse(text)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slot_partuuid_is_the_root_hash_prefix() {
        let mut h = [0u8; 32];
        for (i, b) in h.iter_mut().enumerate() {
            *b = i as u8;
        }
        let text = "00010203-0405-0607-0809-0a0b0c0d0e0f";
        assert_eq!(slot_partuuid(&h).to_string(), text);
        let hex = crate::cmdline::hex(&h);
        assert_eq!(slot_partuuid_of_hex(&hex).unwrap().to_string(), text);
        assert_eq!(
            slot_partuuid_of_hex(&hex.to_uppercase())
                .unwrap()
                .to_string(),
            text
        );
        assert_eq!(slot_partuuid_of_hex(&hex[..62]), None);
        assert_eq!(slot_partuuid_of_hex(&hex.replace('0', "g")), None);
    }

    #[test]
    fn five_partitions_in_design_order() {
        let names: Vec<_> = partition_specs(1, 2, 3)
            .into_iter()
            .map(|s| s.name)
            .collect();
        assert_eq!(names, [EFI, BOOT_A, BOOT_B, STATE, EPHEMERAL]);
        assert_eq!(slot_letter(BOOT_B), Some('B'));
        assert_eq!(slot_letter(STATE), None);
    }
}
