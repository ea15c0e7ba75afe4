//! GUIDs: string form, GPT's mixed-endian on-disk form, and seed derivation.

use sha2::{Digest, Sha256};
use std::fmt;
use std::str::FromStr;

use super::GptError;

/// A GUID held in the byte order of its string form
/// (`aabbccdd-eeff-gghh-iijj-kkllmmnnoopp` -> `aa bb cc dd ee ff ...`).
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct Guid(pub [u8; 16]);

impl Guid {
    pub const ZERO: Guid = Guid([0; 16]);

    /// Parses `8-4-4-4-12` hex (either case).
    pub fn parse(s: &str) -> Result<Guid, GptError> {
        let bad = || GptError::BadGuid {
            text: s.to_string(),
        };
        let groups: Vec<&str> = s.split('-').collect();
        let lens: Vec<usize> = groups.iter().map(|g| g.len()).collect();
        if lens != [8, 4, 4, 4, 12] {
            return Err(bad());
        }
        let joined: String = groups.concat();
        let mut out = [0u8; 16];
        hex::decode_to_slice(joined, &mut out).map_err(|_| bad())?;
        Ok(Guid(out))
    }

    /// A seed-derived GUID: sha256(len(seed) || seed || label), first 16
    /// bytes, with the RFC 4122 version-4/variant bits so partitioning tools
    /// treat it as an ordinary random GUID.
    pub fn derive(seed: &[u8], label: &str) -> Guid {
        let mut h = Sha256::new();
        // The length prefix keeps (seed, label) pairs from colliding by
        // shifting bytes between the two.
        h.update((seed.len() as u64).to_le_bytes());
        h.update(seed);
        h.update(label.as_bytes());
        let d = h.finalize();
        let mut b = [0u8; 16];
        b.copy_from_slice(&d[..16]);
        b[6] = (b[6] & 0x0f) | 0x40;
        b[8] = (b[8] & 0x3f) | 0x80;
        Guid(b)
    }

    /// The UAPI discoverable-partitions convention: a slot holding a release
    /// is named by the first 128 bits of its dm-verity root hash, taken as
    /// the UUID's string form (no version bits are forced).
    pub fn from_root_hash(root_hash: &[u8]) -> Result<Guid, GptError> {
        if root_hash.len() < 16 {
            return Err(GptError::RootHashTooShort {
                len: root_hash.len(),
            });
        }
        let mut b = [0u8; 16];
        b.copy_from_slice(&root_hash[..16]);
        Ok(Guid(b))
    }

    /// GPT stores the first three fields little endian.
    pub fn to_disk(&self) -> [u8; 16] {
        let s = &self.0;
        let mut d = *s;
        d[0..4].copy_from_slice(&[s[3], s[2], s[1], s[0]]);
        d[4..6].copy_from_slice(&[s[5], s[4]]);
        d[6..8].copy_from_slice(&[s[7], s[6]]);
        d
    }

    pub fn from_disk(d: &[u8; 16]) -> Guid {
        // The swap is its own inverse.
        Guid(Guid(*d).to_disk())
    }

    pub fn is_zero(&self) -> bool {
        self.0 == [0; 16]
    }
}

/// The text form in lower case: RFC 4122 ("output as lower case"), and the
/// form Linux (`root=PARTUUID=`, /dev/disk/by-partuuid), libblkid and
/// systemd print. sgdisk and EDK2 print upper case; input is parsed in
/// either case, so compare parsed GUIDs (or lower-case the other text).
impl fmt::Display for Guid {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let h = hex::encode(self.0);
        write!(
            f,
            "{}-{}-{}-{}-{}",
            &h[0..8],
            &h[8..12],
            &h[12..16],
            &h[16..20],
            &h[20..32]
        )
    }
}

impl fmt::Debug for Guid {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Guid({self})")
    }
}

impl FromStr for Guid {
    type Err = GptError;
    fn from_str(s: &str) -> Result<Guid, GptError> {
        Guid::parse(s)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn esp_disk_bytes() {
        let g = Guid::parse("C12A7328-F81F-11D2-BA4B-00A0C93EC93B").unwrap();
        assert_eq!(
            g.to_disk(),
            [
                0x28, 0x73, 0x2a, 0xc1, 0x1f, 0xf8, 0xd2, 0x11, 0xba, 0x4b, 0x00, 0xa0, 0xc9, 0x3e,
                0xc9, 0x3b
            ]
        );
        assert_eq!(Guid::from_disk(&g.to_disk()), g);
        assert_eq!(g.to_string(), "c12a7328-f81f-11d2-ba4b-00a0c93ec93b");
    }

    #[test]
    fn derive_sets_version_bits_and_is_stable() {
        let a = Guid::derive(b"seed", "EFI");
        assert_eq!(a, Guid::derive(b"seed", "EFI"));
        assert_ne!(a, Guid::derive(b"seed", "BOOT-A"));
        assert_ne!(Guid::derive(b"se", "edEFI"), Guid::derive(b"seed", "EFI"));
        let s = a.to_string();
        assert_eq!(&s[14..15], "4");
        assert!("89AB".contains(&s[19..20]));
    }

    #[test]
    fn bad_strings() {
        for s in [
            "",
            "xyz",
            "C12A7328F81F11D2BA4B00A0C93EC93B",
            "G12A7328-F81F-11D2-BA4B-00A0C93EC93B",
        ] {
            assert!(Guid::parse(s).is_err(), "{s}");
        }
    }

    #[test]
    fn root_hash_prefix() {
        let h: Vec<u8> = (0u8..32).collect();
        assert_eq!(
            Guid::from_root_hash(&h).unwrap().to_string(),
            "00010203-0405-0607-0809-0a0b0c0d0e0f"
        );
        assert!(Guid::from_root_hash(&h[..8]).is_err());
    }
}
