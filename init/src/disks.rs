//! Block devices as sysfs shows them: whole disks, their partitions by
//! number, and a one-line inventory for "device not found" messages.

use std::fs;
use std::path::Path;

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
