//! Partition-table writes through the generic disk handle.
//!
//! `artifacts::gpt` writes tables into a `File`; the installer must also
//! write through fault-injecting wrappers and block devices, and must control
//! the order of the two copies. So the table is produced in a sparse scratch
//! file of the disk's size, and the installer copies the sectors over in its
//! own order: backup entries, backup header, barrier, primary entries,
//! primary header (+ protective MBR), barrier. A cut anywhere leaves one
//! copy whose CRCs vouch for it (the reader falls back to the backup).

use std::io::{Read, Seek, SeekFrom, Write};
use std::path::Path;

use artifacts::gpt::{self, DiskLayout, Guid, Partition, PartitionUpdate, SECTOR, TABLE_SECTORS};

use crate::blockdev::{read_at, sync, write_at};
use crate::error::{disk_io, gpt as gpt_err, Error, Result};

fn scratch(size: u64) -> Result<std::fs::File> {
    let f = tempfile::tempfile().map_err(|source| Error::File {
        what: "creating a scratch file for the partition table in",
        path: std::env::temp_dir(),
        source,
    })?;
    f.set_len(size).map_err(|source| Error::File {
        what: "sizing the partition-table scratch file in",
        path: std::env::temp_dir(),
        source,
    })?;
    Ok(f)
}

/// (offset, len) of: the primary region (MBR, header, entries) and the
/// backup region (entries, header).
fn regions(size: u64) -> [(u64, u64); 2] {
    let sectors = size / SECTOR;
    [
        (0, (2 + TABLE_SECTORS) * SECTOR),
        (
            (sectors - 1 - TABLE_SECTORS) * SECTOR,
            (TABLE_SECTORS + 1) * SECTOR,
        ),
    ]
}

/// Checks that every partition of `layout` lies where writing to it harms
/// nothing else: after the primary GPT area and before the backup one (the
/// areas [`set_partition_guid`] rewrites), on the disk, and clear of every
/// other partition. `gpt::read_disk` holds entries only to the usable range
/// their own header states, and a crafted or foreign header can state one
/// that reaches into a GPT copy; a slot written there destroys it.
pub fn check_ranges(layout: &DiskLayout, path: &Path) -> Result<()> {
    let sectors = layout.disk_size / SECTOR;
    let [primary, backup] = regions(layout.disk_size);
    let span =
        |a: u64, b: u64| format!("LBAs {a}..={b}, bytes {}..{}", a * SECTOR, (b + 1) * SECTOR);
    let primary_last = (primary.0 + primary.1) / SECTOR - 1;
    let backup_first = backup.0 / SECTOR;
    for p in &layout.partitions {
        let (a, b) = (p.first_lba, p.last_lba);
        let conflict = if b < a {
            Some("ends before it starts".to_string())
        } else if a <= primary_last {
            Some(format!(
                "overlaps the primary GPT ({})",
                span(0, primary_last)
            ))
        } else if b >= sectors {
            Some(format!(
                "runs past the end of the {}-byte disk",
                layout.disk_size
            ))
        } else if b >= backup_first {
            Some(format!(
                "overlaps the backup GPT ({})",
                span(backup_first, sectors - 1)
            ))
        } else {
            layout
                .partitions
                .iter()
                .find(|q| q.slot != p.slot && a <= q.last_lba && q.first_lba <= b)
                .map(|q| {
                    format!(
                        "overlaps partition {} ({})",
                        q.name,
                        span(q.first_lba, q.last_lba)
                    )
                })
        };
        if let Some(what) = conflict {
            return Err(Error::NotCairn {
                path: path.to_path_buf(),
                what: format!(
                    "partition {} (table entry {}, {}) {what}; refusing to write to this disk",
                    p.name,
                    p.slot + 1,
                    span(a, b)
                ),
            });
        }
    }
    Ok(())
}

fn read_region<R: Read + Seek>(r: &mut R, (off, len): (u64, u64), what: &str) -> Result<Vec<u8>> {
    let mut buf = vec![0u8; len as usize];
    read_at(r, off, &mut buf, what)?;
    Ok(buf)
}

/// Copies the table sectors from `src` (scratch) to `d`, backup first.
fn copy_tables<D: Write + Seek>(src: &mut std::fs::File, d: &mut D, size: u64) -> Result<()> {
    let [primary, backup] = regions(size);
    let b = read_region(src, backup, "scratch backup table")?;
    let table_len = (TABLE_SECTORS * SECTOR) as usize;
    write_at(d, backup.0, &b[..table_len], "backup GPT entries")?;
    write_at(
        d,
        backup.0 + table_len as u64,
        &b[table_len..],
        "backup GPT header",
    )?;
    sync(d, "the backup GPT")?;
    let p = read_region(src, primary, "scratch primary table")?;
    write_at(
        d,
        2 * SECTOR,
        &p[2 * SECTOR as usize..],
        "primary GPT entries",
    )?;
    write_at(
        d,
        0,
        &p[..2 * SECTOR as usize],
        "protective MBR and primary GPT header",
    )?;
    sync(d, "the primary GPT")
}

fn disk_size<D: Seek>(d: &mut D) -> Result<u64> {
    d.seek(SeekFrom::End(0))
        .map_err(disk_io("finding the disk size", 0, 0))
}

/// Writes a fresh protective MBR and both GPT copies for `layout`.
pub fn write_new<D: Write + Seek>(d: &mut D, layout: &DiskLayout) -> Result<()> {
    let size = disk_size(d)?;
    // DiskWriter wants a path; a named temp file gives one and cleans up.
    let named = tempfile::NamedTempFile::new().map_err(|source| Error::File {
        what: "creating a scratch file for the partition table in",
        path: std::env::temp_dir(),
        source,
    })?;
    let w = gpt::DiskWriter::create(named.path(), layout.clone())
        .map_err(gpt_err("building the new partition table"))?;
    let mut f = w
        .finish()
        .map_err(gpt_err("building the new partition table"))?;
    copy_tables(&mut f, d, size)
}

/// Changes one partition's unique GUID (table slot `slot`), backup copy
/// first. Returns the updated partition.
pub fn set_partition_guid<D: Read + Write + Seek>(
    d: &mut D,
    slot: u32,
    guid: Guid,
) -> Result<Partition> {
    let size = disk_size(d)?;
    let mut f = scratch(size)?;
    for r in regions(size) {
        let buf = read_region(d, r, "the partition table")?;
        write_at(&mut f, r.0, &buf, "scratch partition table")?;
    }
    let update = PartitionUpdate {
        guid: Some(guid),
        ..Default::default()
    };
    let p = gpt::update_partition(&mut f, slot, &update).map_err(gpt_err(format!(
        "setting the GUID of partition slot {slot} to {guid}"
    )))?;
    copy_tables(&mut f, d, size)?;
    Ok(p)
}

/// Zeroes the protective MBR and both GPT headers (and the entries).
pub fn clear<D: Write + Seek>(d: &mut D) -> Result<()> {
    let size = disk_size(d)?;
    for (off, len) in regions(size) {
        crate::blockdev::zero_range(d, off, len, "the partition table")?;
    }
    sync(d, "clearing the partition table")
}
