//! Block devices as sysfs shows them: whole disks, their partitions by
//! number, their GPT (read through artifacts' validating reader, which falls
//! back to the backup copy), and a one-line inventory for "device not found"
//! messages.

use artifacts::gpt::{self, GptError, HeaderCopy, Partition, ReadDisk, SECTOR};
use std::fs::{self, File};
use std::path::{Path, PathBuf};
use thiserror::Error;

#[derive(Debug, Error)]
pub enum TableError {
    #[error("{disk}: opening {path}: {source}")]
    Open {
        disk: String,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{disk}: logical block size {size}: cairn's GPT is laid out in {SECTOR}-byte sectors")]
    SectorSize { disk: String, size: u64 },
    #[error("{disk}: {source}")]
    Gpt {
        disk: String,
        #[source]
        source: GptError,
    },
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Disk {
    pub name: String,
    pub sector_size: u64,
    /// (partition number, kernel name), sorted by number.
    pub partitions: Vec<(u32, String)>,
}

impl Disk {
    pub fn partition_name(&self, index: u32) -> Option<&str> {
        self.partitions
            .iter()
            .find(|(i, _)| *i == index)
            .map(|(_, n)| n.as_str())
    }

    /// The kernel's device for GPT entry `p` (the kernel numbers partitions
    /// by table entry, from 1).
    pub fn device(&self, p: &Partition) -> Option<&str> {
        self.partition_name(p.slot + 1)
    }
}

/// Reads `disk`'s GPT from its node under `dev_dir` (normally /dev). A
/// primary copy whose header or entry CRC fails is passed over for the
/// backup at the last LBA, as Linux does with `gpt` on its command line
/// (which the builder puts on every installed UKI's).
pub fn read_table(dev_dir: &Path, disk: &Disk) -> Result<ReadDisk, TableError> {
    if disk.sector_size != SECTOR {
        return Err(TableError::SectorSize {
            disk: disk.name.clone(),
            size: disk.sector_size,
        });
    }
    let path = dev_dir.join(&disk.name);
    let mut f = File::open(&path).map_err(|source| TableError::Open {
        disk: disk.name.clone(),
        path: path.clone(),
        source,
    })?;
    gpt::read_disk(&mut f).map_err(|source| TableError::Gpt {
        disk: disk.name.clone(),
        source,
    })
}

/// `vda: primary GPT invalid (…); using the backup GPT`, when it is so.
pub fn backup_note(disk: &str, read: &ReadDisk) -> Option<String> {
    (read.used == HeaderCopy::Backup).then(|| {
        let why = read
            .primary_error
            .as_ref()
            .map_or_else(String::new, |e| format!(" ({e})"));
        format!("{disk}: primary GPT invalid{why}; using the backup GPT")
    })
}

fn read_trim(p: &Path) -> Option<String> {
    fs::read_to_string(p).ok().map(|s| s.trim().to_string())
}

/// Disks under `sys_block` (normally /sys/block), sorted by name. RAM disks,
/// loop devices and device-mapper targets cannot hold the boot disk.
pub fn list(sys_block: &Path) -> Vec<Disk> {
    let mut names: Vec<String> = fs::read_dir(sys_block)
        .map(|d| {
            d.filter_map(Result::ok)
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default();
    names.retain(|n| {
        !["ram", "loop", "dm-", "zram"]
            .iter()
            .any(|p| n.starts_with(p))
    });
    names.sort();
    names
        .into_iter()
        .map(|name| {
            let dir = sys_block.join(&name);
            let sector_size = read_trim(&dir.join("queue/logical_block_size"))
                .and_then(|s| s.parse().ok())
                .unwrap_or(512);
            let mut partitions: Vec<(u32, String)> = fs::read_dir(&dir)
                .map(|d| {
                    d.filter_map(Result::ok)
                        .filter_map(|e| {
                            let n = read_trim(&e.path().join("partition"))?.parse().ok()?;
                            Some((n, e.file_name().to_string_lossy().into_owned()))
                        })
                        .collect()
                })
                .unwrap_or_default();
            partitions.sort();
            Disk {
                name,
                sector_size,
                partitions,
            }
        })
        .collect()
}

/// `vda (vda1 vda2), sr0` or `none`.
pub fn inventory(disks: &[Disk]) -> String {
    if disks.is_empty() {
        return "none".into();
    }
    disks
        .iter()
        .map(|d| {
            if d.partitions.is_empty() {
                d.name.clone()
            } else {
                let ps: Vec<&str> = d.partitions.iter().map(|(_, n)| n.as_str()).collect();
                format!("{} ({})", d.name, ps.join(" "))
            }
        })
        .collect::<Vec<_>>()
        .join(", ")
}

/// `major:minor` of a partition, from sysfs.
pub fn dev_numbers(sys_block: &Path, disk: &str, part: &str) -> Option<(u32, u32)> {
    let s = read_trim(&sys_block.join(disk).join(part).join("dev"))?;
    let (a, b) = s.split_once(':')?;
    Some((a.parse().ok()?, b.parse().ok()?))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lists_fake_sysfs() {
        let d = tempfile::tempdir().unwrap();
        let s = d.path();
        for (p, v) in [
            ("vda/queue/logical_block_size", "512\n"),
            ("vda/vda2/partition", "2\n"),
            ("vda/vda2/dev", "254:2\n"),
            ("vda/vda10/partition", "10\n"),
            ("nvme0n1/queue/logical_block_size", "4096\n"),
            ("loop0/queue/logical_block_size", "512\n"),
            ("sr0/queue/logical_block_size", "2048\n"),
        ] {
            std::fs::create_dir_all(s.join(p).parent().unwrap()).unwrap();
            std::fs::write(s.join(p), v).unwrap();
        }
        let l = list(s);
        assert_eq!(inventory(&l), "nvme0n1, sr0, vda (vda2 vda10)");
        assert_eq!(l[0].sector_size, 4096);
        assert_eq!(l[2].partition_name(10), Some("vda10"));
        assert_eq!(dev_numbers(s, "vda", "vda2"), Some((254, 2)));
        assert_eq!(inventory(&[]), "none");
    }
}
