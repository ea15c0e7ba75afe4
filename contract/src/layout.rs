//! `layout.json`: the partition sizes a release wants, and the GPT layout
//! they give on a disk of a given size. The builder writes it with
//! [`LayoutSpec::to_json`]; the installer reads it with [`LayoutSpec::parse`].

use artifacts::gpt::{DiskLayout, GptError, Guid, ALIGN, SECTOR, TABLE_SECTORS};

use crate::disk;

/// Sizes in bytes, each a positive multiple of 1 MiB. `boot` is the size of
/// each of BOOT-A and BOOT-B. EPHEMERAL takes the rest of the disk.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LayoutSpec {
    pub esp: u64,
    pub boot: u64,
    pub state: u64,
}

#[derive(Debug, thiserror::Error)]
pub enum LayoutError {
    #[error("layout.json is not {{\"esp\",\"boot\",\"state\"}}: {0}")]
    Shape(String),
    #[error("layout.json field {field} = {value}: must be a positive multiple of {ALIGN} bytes")]
    Unaligned { field: &'static str, value: u64 },
    #[error("layout.json field esp = {value}: FAT32 needs at least {min} bytes")]
    EspTooSmall { value: u64, min: u64 },
    #[error(
        "laying out {disk_size} bytes as EFI {esp} / BOOT-A,B {boot} / STATE {state}: {source}"
    )]
    Disk {
        disk_size: u64,
        esp: u64,
        boot: u64,
        state: u64,
        source: Box<GptError>,
    },
}

/// EPHEMERAL's smallest useful size: the 1 MiB the installer zeroes plus room
/// for an ext4 journal.
pub const MIN_EPHEMERAL: u64 = 64 << 20;

impl LayoutSpec {
    /// The exact bytes of `layout.json` (signed in the bundle manifest).
    pub fn to_json(&self) -> String {
        format!(
            "{{\"esp\": {}, \"boot\": {}, \"state\": {}}}\n",
            self.esp, self.boot, self.state
        )
    }

    pub fn parse(bytes: &[u8]) -> Result<LayoutSpec, LayoutError> {
        let spec: LayoutSpec =
            serde_json::from_slice(bytes).map_err(|e| LayoutError::Shape(e.to_string()))?;
        for (field, value) in [
            ("esp", spec.esp),
            ("boot", spec.boot),
            ("state", spec.state),
        ] {
            if value == 0 || value % ALIGN != 0 {
                return Err(LayoutError::Unaligned { field, value });
            }
        }
        let min = artifacts::fat::minimum_size();
        if spec.esp < min {
            return Err(LayoutError::EspTooSmall {
                value: spec.esp,
                min,
            });
        }
        Ok(spec)
    }

    /// The smallest disk this layout fits, EPHEMERAL at its minimum.
    pub fn min_disk_size(&self) -> u64 {
        // 1 MiB before the first partition; the backup table and header
        // after the last, rounded up to the alignment.
        let backup = (TABLE_SECTORS + 1) * SECTOR;
        ALIGN
            + self.esp
            + 2 * self.boot
            + self.state
            + MIN_EPHEMERAL
            + backup.div_ceil(ALIGN) * ALIGN
    }

    /// The cairn layout on a disk of `disk_size` bytes; BOOT-A carries the
    /// release's root-hash GUID, everything else is derived from `seed`.
    pub fn disk_layout(
        &self,
        disk_size: u64,
        seed: &[u8],
        slot_a_guid: Guid,
    ) -> Result<DiskLayout, LayoutError> {
        let mut specs = disk::partition_specs(self.esp, self.boot, self.state);
        specs[1].guid = Some(slot_a_guid);
        DiskLayout::new(disk_size, seed, &specs).map_err(|source| LayoutError::Disk {
            disk_size,
            esp: self.esp,
            boot: self.boot,
            state: self.state,
            source: Box::new(source),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_refusals() {
        let s = LayoutSpec {
            esp: 64 << 20,
            boot: 256 << 20,
            state: 64 << 20,
        };
        assert_eq!(LayoutSpec::parse(s.to_json().as_bytes()).unwrap(), s);
        let bad = |t: &str| LayoutSpec::parse(t.as_bytes()).unwrap_err().to_string();
        assert!(bad("{\"esp\": 1, \"boot\": 2}").contains("missing field `state`"));
        assert!(bad("[1]").contains("layout.json is not"));
        assert!(bad("{\"esp\": 67108864, \"boot\": 1048576, \"state\": 5}").contains("state = 5"));
        assert!(
            bad("{\"esp\": 67108864, \"boot\": 1048576, \"state\": 1048576, \"x\": 1}")
                .contains("unknown field")
        );
        assert!(bad("{\"esp\": 1048576, \"boot\": 1048576, \"state\": 1048576}").contains("FAT32"));
        assert!(bad("{\"esp\": -1, \"boot\": 1, \"state\": 1}").contains("layout.json is not"));
    }
}
