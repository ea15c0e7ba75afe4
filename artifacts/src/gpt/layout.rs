//! Placing partitions on a disk of a given size.

use super::{
    GptError, Guid, ALIGN, BACKUP_SECTORS, ENTRY_COUNT, NAME_UNITS, PRIMARY_SECTORS, SECTOR,
    TABLE_SECTORS,
};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Size {
    Bytes(u64),
    /// Up to the last usable 1 MiB boundary; only for the last partition.
    Rest,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PartitionSpec {
    pub name: String,
    pub type_guid: Guid,
    pub size: Size,
    /// `None`: derived from the layout seed and the name.
    pub guid: Option<Guid>,
    pub attributes: u64,
}

/// One used table entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Partition {
    /// Entry index in the table (0-based; tools show it as `slot + 1`).
    pub slot: u32,
    pub name: String,
    pub type_guid: Guid,
    pub guid: Guid,
    pub first_lba: u64,
    /// Inclusive, as GPT stores it.
    pub last_lba: u64,
    pub attributes: u64,
}

impl Partition {
    pub fn offset(&self) -> u64 {
        self.first_lba * SECTOR
    }
    pub fn size_bytes(&self) -> u64 {
        (self.last_lba + 1 - self.first_lba) * SECTOR
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DiskLayout {
    pub disk_size: u64,
    pub disk_guid: Guid,
    pub partitions: Vec<Partition>,
}

impl DiskLayout {
    /// Places `specs` in order, each start aligned to 1 MiB. Unset GUIDs
    /// come from `seed` (disk: label "disk", partitions: "partition:NAME").
    pub fn new(
        disk_size: u64,
        seed: &[u8],
        specs: &[PartitionSpec],
    ) -> Result<DiskLayout, GptError> {
        if !disk_size.is_multiple_of(SECTOR) {
            return Err(GptError::DiskSizeUnaligned { size: disk_size });
        }
        let sectors = disk_size / SECTOR;
        // MBR + header + table at the front, table + header at the back,
        // and room for at least one aligned MiB in between.
        if sectors < 2 * (TABLE_SECTORS + 1) + 1 + 2 * (ALIGN / SECTOR) {
            return Err(GptError::DiskTooSmall { size: disk_size });
        }
        if specs.len() > ENTRY_COUNT as usize {
            return Err(GptError::TooManyPartitions { count: specs.len() });
        }
        let last_usable = last_usable_lba(sectors);
        let align = ALIGN / SECTOR;
        let mut next = align; // 1 MiB: first aligned LBA after the table
        let mut partitions = Vec::with_capacity(specs.len());
        for (index, spec) in specs.iter().enumerate() {
            if spec.name.encode_utf16().count() > NAME_UNITS {
                return Err(GptError::NameTooLong {
                    index,
                    name: spec.name.clone(),
                });
            }
            let first = next.div_ceil(align) * align;
            let available = (last_usable + 1).saturating_sub(first) * SECTOR;
            let last = match spec.size {
                Size::Bytes(n) => {
                    if n == 0 || !n.is_multiple_of(SECTOR) {
                        return Err(GptError::PartitionSizeUnaligned {
                            index,
                            name: spec.name.clone(),
                            size: n,
                        });
                    }
                    if n > available {
                        return Err(GptError::DoesNotFit {
                            index,
                            name: spec.name.clone(),
                            need: n,
                            offset: first * SECTOR,
                            available,
                            disk_size,
                        });
                    }
                    first + n / SECTOR - 1
                }
                Size::Rest => {
                    if index + 1 != specs.len() {
                        return Err(GptError::RestNotLast {
                            index,
                            name: spec.name.clone(),
                        });
                    }
                    let end = (last_usable + 1) / align * align;
                    if end <= first {
                        return Err(GptError::DoesNotFit {
                            index,
                            name: spec.name.clone(),
                            need: ALIGN,
                            offset: first * SECTOR,
                            available,
                            disk_size,
                        });
                    }
                    end - 1
                }
            };
            partitions.push(Partition {
                slot: index as u32,
                name: spec.name.clone(),
                type_guid: spec.type_guid,
                guid: spec
                    .guid
                    .unwrap_or_else(|| Guid::derive(seed, &format!("partition:{}", spec.name))),
                first_lba: first,
                last_lba: last,
                attributes: spec.attributes,
            });
            next = last + 1;
        }
        Ok(DiskLayout {
            disk_size,
            disk_guid: Guid::derive(seed, "disk"),
            partitions,
        })
    }

    /// A layout whose partitions sit at the caller's LBAs (no alignment
    /// imposed), e.g. on an ISO extent. Checks what a valid table needs: a
    /// whole number of sectors with room for both copies, slots in range and
    /// unique, names that fit, each partition non-empty, inside the usable
    /// LBAs and disjoint from the others.
    pub fn with_explicit(
        disk_size: u64,
        disk_guid: Guid,
        partitions: Vec<Partition>,
    ) -> Result<DiskLayout, GptError> {
        if !disk_size.is_multiple_of(SECTOR) {
            return Err(GptError::DiskSizeUnaligned { size: disk_size });
        }
        let sectors = disk_size / SECTOR;
        if sectors < PRIMARY_SECTORS + BACKUP_SECTORS + 1 {
            return Err(GptError::DiskTooSmall { size: disk_size });
        }
        if partitions.len() > ENTRY_COUNT as usize {
            return Err(GptError::TooManyPartitions {
                count: partitions.len(),
            });
        }
        let (first_usable, last_usable) = (PRIMARY_SECTORS, last_usable_lba(sectors));
        for (index, p) in partitions.iter().enumerate() {
            if p.name.encode_utf16().count() > NAME_UNITS {
                return Err(GptError::NameTooLong {
                    index,
                    name: p.name.clone(),
                });
            }
            if p.slot >= ENTRY_COUNT || partitions[..index].iter().any(|q| q.slot == p.slot) {
                return Err(GptError::BadSlot {
                    index,
                    name: p.name.clone(),
                    slot: p.slot,
                });
            }
            if p.first_lba < first_usable || p.last_lba > last_usable || p.last_lba < p.first_lba {
                return Err(GptError::OutsideUsable {
                    index,
                    name: p.name.clone(),
                    first_lba: p.first_lba,
                    last_lba: p.last_lba,
                    first_usable,
                    last_usable,
                    disk_size,
                });
            }
            if let Some((other, q)) = partitions[..index]
                .iter()
                .enumerate()
                .find(|(_, q)| p.first_lba <= q.last_lba && q.first_lba <= p.last_lba)
            {
                return Err(GptError::Overlap {
                    index,
                    name: p.name.clone(),
                    first_lba: p.first_lba,
                    last_lba: p.last_lba,
                    other,
                    other_name: q.name.clone(),
                    other_first: q.first_lba,
                    other_last: q.last_lba,
                });
            }
        }
        Ok(DiskLayout {
            disk_size,
            disk_guid,
            partitions,
        })
    }

    /// The partition with this table name.
    pub fn partition(&self, name: &str) -> Option<&Partition> {
        self.partitions.iter().find(|p| p.name == name)
    }

    pub fn sectors(&self) -> u64 {
        self.disk_size / SECTOR
    }
}

pub(crate) fn last_usable_lba(sectors: u64) -> u64 {
    sectors - 1 - TABLE_SECTORS - 1
}

#[cfg(test)]
mod tests {
    use super::super::*;

    fn spec(name: &str, bytes: u64) -> PartitionSpec {
        PartitionSpec {
            name: name.to_string(),
            type_guid: LINUX_FS_TYPE,
            size: if bytes == 0 {
                Size::Rest
            } else {
                Size::Bytes(bytes)
            },
            guid: None,
            attributes: 0,
        }
    }

    #[test]
    fn cairn_layout_aligned() {
        let l = DiskLayout::new(
            2 << 30,
            b"s",
            &[
                spec("EFI", 100 << 20),
                spec("BOOT-A", 512 << 20),
                spec("BOOT-B", 512 << 20),
                spec("STATE", 100 << 20),
                spec("EPHEMERAL", 0),
            ],
        )
        .unwrap();
        let p = &l.partitions;
        assert_eq!(p[0].offset(), 1 << 20);
        assert_eq!(p[1].offset(), 101 << 20);
        assert!(p.iter().all(|p| p.offset() % ALIGN == 0));
        assert_eq!(p[4].offset() + p[4].size_bytes(), (2 << 30) - ALIGN);
    }

    #[test]
    fn does_not_fit_names_partition_and_numbers() {
        let err = DiskLayout::new(
            64 << 20,
            b"s",
            &[
                spec("EFI", 32 << 20),
                spec("BOOT-A", 32 << 20),
                spec("BOOT-B", 32 << 20),
                spec("STATE", 1 << 20),
                spec("EPHEMERAL", 0),
            ],
        )
        .unwrap_err()
        .to_string();
        assert!(err.contains("BOOT-A"), "{err}");
        assert!(err.contains(&(32u64 << 20).to_string()), "{err}");
        assert!(err.contains(&(64u64 << 20).to_string()), "{err}");
    }
}
