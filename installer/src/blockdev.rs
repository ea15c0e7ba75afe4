//! The target: a block device or a disk image file behind one
//! `Read + Write + Seek` handle whose `flush` is a durability barrier.
//!
//! Everything that writes takes a generic `D: Read + Write + Seek` so tests
//! can put a fault-injecting wrapper in between; code calls `flush` exactly
//! where ordering matters (it is `fdatasync` on a real disk).

use std::fs::{File, OpenOptions};
use std::io::{self, Read, Seek, SeekFrom, Write};
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};
use signing::Sha256Digest;

use crate::error::{disk_io, Error, Result};

/// An opened target disk.
#[derive(Debug)]
pub struct Disk {
    file: File,
    pub path: PathBuf,
    pub size: u64,
    pub identity: Identity,
}

/// What a path is on the host, to tell whether two paths are the same disk.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Identity {
    /// A regular file: (st_dev, st_ino).
    File { dev: u64, ino: u64 },
    /// A block device: its st_rdev (major:minor).
    Block { rdev: u64 },
}

impl Identity {
    pub fn of(path: &Path) -> Result<Identity> {
        let m = std::fs::metadata(path).map_err(|source| Error::File {
            what: "inspecting",
            path: path.to_path_buf(),
            source,
        })?;
        Ok(if m.file_type().is_block_device() {
            Identity::Block { rdev: m.rdev() }
        } else {
            Identity::File {
                dev: m.dev(),
                ino: m.ino(),
            }
        })
    }
}

impl Disk {
    /// Opens `path` read-write (or read-only for `status`/`--dry-run`).
    pub fn open(path: &Path, write: bool) -> Result<Disk> {
        // Exclusive open of a block device fails with EBUSY while it or a
        // partition of it is mounted or held (dm, md, swap).
        Disk::open_with(path, write, write)
    }

    /// Opens the disk the running system booted from, for a live upgrade.
    ///
    /// Not `O_EXCL`: the running slot (held by dm-verity), STATE and
    /// EPHEMERAL (mounted) are in use and stay so. Nothing is written outside
    /// the GPT areas and the partitions [`Disk::claim`] holds exclusively, so
    /// the running system's partitions are never opened for writing.
    pub fn open_live(path: &Path) -> Result<Disk> {
        Disk::open_with(path, true, false)
    }

    fn open_with(path: &Path, write: bool, exclusive: bool) -> Result<Disk> {
        let identity = Identity::of(path)?;
        let mut opts = OpenOptions::new();
        opts.read(true).write(write);
        if exclusive && matches!(identity, Identity::Block { .. }) {
            use std::os::unix::fs::OpenOptionsExt;
            opts.custom_flags(libc::O_EXCL);
        }
        let mut file = opts.open(path).map_err(|source| Error::File {
            what: if exclusive && source.raw_os_error() == Some(libc::EBUSY) {
                "disk is in use (mounted, or held by another device); refusing to open"
            } else {
                "opening disk"
            },
            path: path.to_path_buf(),
            source,
        })?;
        // A block device reports length 0 in metadata; its end is its size.
        let size = file
            .seek(SeekFrom::End(0))
            .map_err(disk_io("finding the disk size", 0, 0))?;
        Ok(Disk {
            file,
            path: path.to_path_buf(),
            size,
            identity,
        })
    }

    /// Holds partition `part` of this disk exclusively until the claim is
    /// dropped: the kernel refuses the claim while the partition is mounted
    /// or held (dm, md, swap), and refuses any mount of it while the claim
    /// lasts. A live upgrade claims exactly what it writes (the ESP and the
    /// inactive slot) before its first write. An image file has nothing to
    /// claim.
    pub fn claim(&self, part: &artifacts::gpt::Partition) -> Result<Option<Claim>> {
        let Identity::Block { rdev } = self.identity else {
            return Ok(None);
        };
        let number = part.slot + 1;
        let device = partition_device(rdev, number).ok_or_else(|| Error::NoPartitionDevice {
            disk: self.path.clone(),
            number,
            name: part.name.clone(),
        })?;
        use std::os::unix::fs::OpenOptionsExt;
        let file = OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_EXCL)
            .open(&device)
            .map_err(|source| Error::PartitionInUse {
                disk: self.path.clone(),
                device: device.clone(),
                number,
                name: part.name.clone(),
                source,
            })?;
        Ok(Some(Claim { file, device }))
    }

    /// True when `other` is this disk, or (for a block device) lives on it:
    /// a partition of it, a device stacked on it (dm, md: followed through
    /// sysfs `slaves`), a file on a filesystem on any of those, or the
    /// backing file of this loop device.
    pub fn contains(&self, other: &Path) -> Result<bool> {
        let theirs = Identity::of(other)?;
        if theirs == self.identity {
            return Ok(true);
        }
        let Identity::Block { rdev: disk } = self.identity else {
            return Ok(false);
        };
        Ok(match theirs {
            Identity::Block { rdev } => on_disk(rdev, disk, 0),
            Identity::File { dev, .. } => {
                on_disk(dev, disk, 0)
                    || loop_backing(disk).is_some_and(|b| Identity::of(&b).ok() == Some(theirs))
            }
        })
    }
}

fn sysfs_dir(dev: u64) -> Option<PathBuf> {
    let (maj, min) = (libc::major(dev), libc::minor(dev));
    std::fs::canonicalize(format!("/sys/dev/block/{maj}:{min}")).ok()
}

fn dev_of(dir: &Path) -> Option<u64> {
    let text = std::fs::read_to_string(dir.join("dev")).ok()?;
    let (a, b) = text.trim().split_once(':')?;
    Some(libc::makedev(a.parse().ok()?, b.parse().ok()?))
}

/// Whether block device `dev` is `disk`, one of its partitions, or stacked
/// on one of those.
fn on_disk(dev: u64, disk: u64, depth: u32) -> bool {
    if dev == disk || parent_disk(dev) == Some(disk) {
        return true;
    }
    if depth > 8 {
        return false;
    }
    let Some(dir) = sysfs_dir(dev) else {
        return false;
    };
    let Ok(slaves) = std::fs::read_dir(dir.join("slaves")) else {
        return false;
    };
    slaves
        .flatten()
        .filter_map(|s| dev_of(&std::fs::canonicalize(s.path()).ok()?))
        .any(|s| on_disk(s, disk, depth + 1))
}

/// An exclusive hold on one partition of a live disk (see [`Disk::claim`]).
#[derive(Debug)]
pub struct Claim {
    file: File,
    pub device: PathBuf,
}

impl Drop for Claim {
    /// The upgrade wrote through the whole-disk device, whose page cache is
    /// not the partition's: drop the partition's cached blocks so a later
    /// reader of the partition device (init blessing the ESP) sees the disk.
    fn drop(&mut self) {
        use std::os::fd::AsRawFd;
        // BLKFLSBUF = _IO(0x12, 97); failure only leaves a cache to expire.
        unsafe { libc::ioctl(self.file.as_raw_fd(), 0x1261 as _) };
    }
}

/// The device node of partition `number` of whole disk `disk`, from sysfs
/// (`/sys/dev/block/M:m/<child>/partition`), checked against `/dev/<child>`.
fn partition_device(disk: u64, number: u32) -> Option<PathBuf> {
    let dir = sysfs_dir(disk)?;
    for child in std::fs::read_dir(&dir).ok()?.flatten() {
        let p = child.path();
        let Ok(n) = std::fs::read_to_string(p.join("partition")) else {
            continue;
        };
        if n.trim().parse::<u32>().ok() != Some(number) {
            continue;
        }
        let dev = dev_of(&p)?;
        let node = Path::new("/dev").join(child.file_name());
        let m = std::fs::metadata(&node).ok()?;
        return (m.file_type().is_block_device() && m.rdev() == dev).then_some(node);
    }
    None
}

/// The file behind loop device `disk`, if it is one.
fn loop_backing(disk: u64) -> Option<PathBuf> {
    let text = std::fs::read_to_string(sysfs_dir(disk)?.join("loop/backing_file")).ok()?;
    Some(PathBuf::from(text.trim_end_matches('\n')))
}

/// The whole-disk device number of partition `dev`, from sysfs.
fn parent_disk(dev: u64) -> Option<u64> {
    let dir = sysfs_dir(dev)?;
    if !dir.join("partition").exists() {
        return None;
    }
    dev_of(dir.parent()?)
}

/// systemd-boot's `LoaderDevicePartUUID` EFI variable: the PARTUUID of the
/// partition the running system (the installer) was loaded from.
pub const LOADER_DEVICE_VAR: &str =
    "/sys/firmware/efi/efivars/LoaderDevicePartUUID-4a67b082-0a4c-41cf-b6c7-440b29bb8c4f";

/// Reads a `LoaderDevicePartUUID` variable file (4 attribute bytes, then a
/// NUL-terminated UTF-16LE GUID string). `None` when absent or unreadable:
/// not booted by systemd-boot, or no efivarfs.
pub fn loader_device_partuuid(var: &Path) -> Option<artifacts::gpt::Guid> {
    let b = std::fs::read(var).ok()?;
    let units: Vec<u16> = b
        .get(4..)?
        .chunks_exact(2)
        .map(|c| u16::from_le_bytes([c[0], c[1]]))
        .take_while(|&u| u != 0)
        .collect();
    artifacts::gpt::Guid::parse(String::from_utf16(&units).ok()?.trim()).ok()
}

impl Read for Disk {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        self.file.read(buf)
    }
}

impl Write for Disk {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.file.write(buf)
    }

    /// The ordering barrier: data written before it is on stable storage.
    fn flush(&mut self) -> io::Result<()> {
        self.file.sync_data()
    }
}

impl Seek for Disk {
    fn seek(&mut self, pos: SeekFrom) -> io::Result<u64> {
        self.file.seek(pos)
    }
}

pub(crate) fn read_at<D: Read + Seek>(
    d: &mut D,
    offset: u64,
    buf: &mut [u8],
    what: &str,
) -> Result<()> {
    d.seek(SeekFrom::Start(offset))
        .and_then(|_| d.read_exact(buf))
        .map_err(disk_io(format!("reading {what}"), offset, buf.len() as u64))
}

pub(crate) fn write_at<D: Write + Seek>(
    d: &mut D,
    offset: u64,
    buf: &[u8],
    what: &str,
) -> Result<()> {
    d.seek(SeekFrom::Start(offset))
        .and_then(|_| d.write_all(buf))
        .map_err(disk_io(format!("writing {what}"), offset, buf.len() as u64))
}

pub(crate) fn sync<D: Write>(d: &mut D, what: &str) -> Result<()> {
    d.flush()
        .map_err(disk_io(format!("syncing after {what}"), 0, 0))
}

const CHUNK: usize = 1 << 20;

/// Writes `len` zero bytes at `offset`.
pub(crate) fn zero_range<D: Write + Seek>(
    d: &mut D,
    offset: u64,
    len: u64,
    what: &str,
) -> Result<()> {
    let zeros = vec![0u8; CHUNK.min(len as usize)];
    let mut done = 0;
    while done < len {
        let n = (len - done).min(CHUNK as u64) as usize;
        write_at(d, offset + done, &zeros[..n], what)?;
        done += n as u64;
    }
    Ok(())
}

/// sha256 of `len` bytes at `offset`.
pub fn hash_range<D: Read + Seek>(
    d: &mut D,
    offset: u64,
    len: u64,
    what: &str,
) -> Result<Sha256Digest> {
    let mut h = Sha256::new();
    let mut buf = vec![0u8; CHUNK.min(len as usize)];
    let mut done = 0;
    while done < len {
        let n = (len - done).min(CHUNK as u64) as usize;
        read_at(d, offset + done, &mut buf[..n], what)?;
        h.update(&buf[..n]);
        done += n as u64;
    }
    Ok(Sha256Digest(h.finalize().into()))
}

/// sha256 of a byte string, for seed derivation.
pub(crate) fn sha256(parts: &[&[u8]]) -> [u8; 32] {
    let mut h = Sha256::new();
    for p in parts {
        h.update(p);
    }
    h.finalize().into()
}
