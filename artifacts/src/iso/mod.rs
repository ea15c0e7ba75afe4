//! Hybrid installer ISO: an ISO 9660 image that UEFI firmware boots both as
//! a CD (El Torito, platform EFI, no emulation) and as a disk written to a
//! USB stick (a GPT whose one partition is the same ESP image).
//!
//! Layout, in 2048-byte blocks: 0..16 system area (protective MBR and
//! primary GPT in its first 17 KiB), 16 Primary Volume Descriptor, 17 El
//! Torito boot record, 18 terminator, L and M path tables, directories in
//! path table order, the boot catalog, the ESP image (`/EFI.IMG`, aligned to
//! 1 MiB), the other files, and the backup GPT in the last 33 sectors of 512
//! bytes. The volume space covers the whole file, backup GPT included, so
//! the file size is the size ISO 9660 readers expect.
//!
//! Every byte derives from the inputs: dates from `epoch`, GUIDs from `seed`,
//! records sorted as ECMA-119 9.3 asks.

mod ecma119;
mod eltorito;
mod hybrid;
mod layout;
mod names;

use std::fs::File;
use std::io::{BufWriter, Read, Write};
use std::path::{Path, PathBuf};

use crate::date::Civil;
use crate::gpt::{GptError, Guid, BACKUP_SECTORS, SECTOR};
use ecma119::{dir_record, BLOCK, FLAG_DIRECTORY, LAST_YEAR};
use hybrid::Hybrid;
use layout::{Child, Layout};

/// Where the ESP image appears in the ISO tree.
pub const EFI_IMAGE_PATH: &str = "/EFI.IMG";
/// The ESP image starts on a 1 MiB boundary, so partitioning tools see an
/// aligned partition on a USB stick.
pub const EFI_ALIGN: u64 = 1 << 20;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IsoOptions {
    /// 1..=32 d-characters (`A-Z 0-9 _`); udev shows it as the label.
    pub volume_id: String,
    /// SOURCE_DATE_EPOCH, for every date in the image (1970..=2155).
    pub epoch: u64,
    /// Disk and partition GUIDs derive from it.
    pub seed: Vec<u8>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IsoSummary {
    /// Image size in bytes (a multiple of 2048).
    pub size: u64,
    /// Volume space size in 2048-byte blocks (= size / 2048).
    pub volume_blocks: u32,
    pub boot_catalog_block: u32,
    /// Extent of `/EFI.IMG` in 2048-byte blocks (the El Torito load RBA).
    pub efi_block: u32,
    pub efi_bytes: u64,
    /// El Torito sector count (512-byte units; 0 = "to the end", see
    /// `eltorito::sector_count`).
    pub boot_sector_count: u16,
    /// The ESP partition in 512-byte LBAs, last inclusive.
    pub esp_first_lba: u64,
    pub esp_last_lba: u64,
    pub disk_guid: Guid,
    pub esp_guid: Guid,
}

#[derive(Debug, thiserror::Error)]
pub enum IsoError {
    #[error("volume id {id:?} {reason}")]
    BadVolumeId { id: String, reason: String },
    #[error("ISO path {path:?} {reason}")]
    BadPath { path: String, reason: String },
    #[error("ISO path {path:?} is given twice, or names both a file and a directory")]
    DuplicatePath { path: String },
    #[error("epoch {epoch} is year {year}; ISO 9660 directory records end at {LAST_YEAR}")]
    EpochOutOfRange { epoch: u64, year: u64 },
    #[error("{path}: {source}")]
    Source {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{path}: not a regular file")]
    NotAFile { path: PathBuf },
    #[error("{path}: {size} bytes; an ISO 9660 extent holds at most {max}")]
    FileTooLarge { path: PathBuf, size: u64, max: u64 },
    #[error("ESP image {path}: {size} bytes is not a non-zero multiple of 512")]
    EfiImageSize { path: PathBuf, size: u64 },
    #[error("{path}: size changed while writing: {expected} bytes at layout, {actual} read")]
    SourceChanged {
        path: PathBuf,
        expected: u64,
        actual: u64,
    },
    #[error("image of {blocks} blocks exceeds ISO 9660's 32-bit block numbers")]
    VolumeTooLarge { blocks: u64 },
    #[error("{path}: internal layout error: structure at offset {offset} overlaps data written up to {position}")]
    LayoutOverlap {
        path: PathBuf,
        offset: u64,
        position: u64,
    },
    #[error("hybrid GPT: {0}")]
    Gpt(#[from] GptError),
    #[error("writing {path} at offset {offset}: {source}")]
    Write {
        path: PathBuf,
        offset: u64,
        #[source]
        source: std::io::Error,
    },
}

fn source_size(path: &Path) -> Result<u64, IsoError> {
    let m = std::fs::metadata(path).map_err(|source| IsoError::Source {
        path: path.to_path_buf(),
        source,
    })?;
    if !m.is_file() {
        return Err(IsoError::NotAFile {
            path: path.to_path_buf(),
        });
    }
    Ok(m.len())
}

fn check_options(opts: &IsoOptions) -> Result<Civil, IsoError> {
    names::check_d_chars(&opts.volume_id, names::MAX_VOLUME_ID).map_err(|reason| {
        IsoError::BadVolumeId {
            id: opts.volume_id.clone(),
            reason,
        }
    })?;
    let c = Civil::from_epoch(opts.epoch);
    if c.year > LAST_YEAR {
        return Err(IsoError::EpochOutOfRange {
            epoch: opts.epoch,
            year: c.year,
        });
    }
    Ok(c)
}

/// Writes the hybrid ISO to `out` (replaced if present). `efi_image` is a
/// FAT ESP image (e.g. from `fat::format_path`), recorded as `/EFI.IMG`;
/// `files` are extra `(iso_path, host_path)` pairs such as
/// `("/CAIRN/MANIFEST.JSN", ...)`. Everything is checked before `out` is
/// created; on a later failure the partial `out` is removed.
pub fn write(
    out: &Path,
    opts: &IsoOptions,
    efi_image: &Path,
    files: &[(String, PathBuf)],
) -> Result<IsoSummary, IsoError> {
    let date = check_options(opts)?;
    let efi_bytes = source_size(efi_image)?;
    if efi_bytes == 0 || !efi_bytes.is_multiple_of(SECTOR) {
        return Err(IsoError::EfiImageSize {
            path: efi_image.to_path_buf(),
            size: efi_bytes,
        });
    }
    let mut sources = vec![(
        EFI_IMAGE_PATH.to_string(),
        efi_image.to_path_buf(),
        efi_bytes,
    )];
    for (iso_path, host) in files {
        sources.push((iso_path.clone(), host.clone(), source_size(host)?));
    }
    let layout = Layout::new(sources, 0, EFI_ALIGN / BLOCK)?;

    let tail_blocks = (BACKUP_SECTORS * SECTOR).div_ceil(BLOCK);
    let volume_blocks = layout.data_end + tail_blocks;
    if volume_blocks > u32::MAX as u64 {
        return Err(IsoError::VolumeTooLarge {
            blocks: volume_blocks,
        });
    }
    let efi = &layout.files[layout.efi];
    let esp_first_lba = efi.extent as u64 * (BLOCK / SECTOR);
    let hybrid = Hybrid::new(
        volume_blocks * (BLOCK / SECTOR),
        &opts.seed,
        esp_first_lba,
        efi_bytes,
    )?;
    let summary = IsoSummary {
        size: volume_blocks * BLOCK,
        volume_blocks: volume_blocks as u32,
        boot_catalog_block: layout.catalog,
        efi_block: efi.extent,
        efi_bytes,
        boot_sector_count: eltorito::sector_count(efi_bytes),
        esp_first_lba: hybrid.esp.first_lba,
        esp_last_lba: hybrid.esp.last_lba,
        disk_guid: hybrid.disk_guid,
        esp_guid: hybrid.esp.guid,
    };

    let f = File::create(out).map_err(|source| IsoError::Write {
        path: out.to_path_buf(),
        offset: 0,
        source,
    })?;
    let mut w = Sink {
        w: BufWriter::with_capacity(1 << 20, f),
        pos: 0,
        path: out,
    };
    let result = emit(&mut w, opts, date, &layout, &hybrid, &summary).and_then(|()| {
        let f = w.w.into_inner().map_err(|e| IsoError::Write {
            path: out.to_path_buf(),
            offset: w.pos,
            source: e.into_error(),
        })?;
        f.sync_all().map_err(|source| IsoError::Write {
            path: out.to_path_buf(),
            offset: w.pos,
            source,
        })
    });
    if let Err(e) = result {
        // Best effort: a half-written image must not look like a result.
        let _ = std::fs::remove_file(out);
        return Err(e);
    }
    tracing::debug!(?summary, path = %out.display(), "wrote hybrid ISO");
    Ok(summary)
}

struct Sink<'a> {
    w: BufWriter<File>,
    pos: u64,
    path: &'a Path,
}

impl Sink<'_> {
    fn put(&mut self, b: &[u8]) -> Result<(), IsoError> {
        self.w.write_all(b).map_err(|source| IsoError::Write {
            path: self.path.to_path_buf(),
            offset: self.pos,
            source,
        })?;
        self.pos += b.len() as u64;
        Ok(())
    }

    /// Zeros up to byte `to`. A layout that moves backwards is a bug here,
    /// but it must not turn into a silently shifted image.
    fn zero_to(&mut self, to: u64) -> Result<(), IsoError> {
        if to < self.pos {
            return Err(IsoError::LayoutOverlap {
                path: self.path.to_path_buf(),
                offset: to,
                position: self.pos,
            });
        }
        const ZEROS: [u8; 8192] = [0; 8192];
        while self.pos < to {
            let n = (to - self.pos).min(ZEROS.len() as u64) as usize;
            self.put(&ZEROS[..n])?;
        }
        Ok(())
    }

    fn copy_file(&mut self, host: &Path, expected: u64) -> Result<(), IsoError> {
        let src = |source| IsoError::Source {
            path: host.to_path_buf(),
            source,
        };
        let mut f = File::open(host).map_err(src)?;
        let mut buf = vec![0u8; 1 << 20];
        let mut copied = 0u64;
        loop {
            let n = f.read(&mut buf).map_err(src)?;
            if n == 0 {
                break;
            }
            copied += n as u64;
            if copied > expected {
                break;
            }
            self.put(&buf[..n])?;
        }
        if copied != expected {
            return Err(IsoError::SourceChanged {
                path: host.to_path_buf(),
                expected,
                actual: copied,
            });
        }
        Ok(())
    }
}

fn emit(
    w: &mut Sink,
    opts: &IsoOptions,
    date: Civil,
    layout: &Layout,
    hybrid: &Hybrid,
    summary: &IsoSummary,
) -> Result<(), IsoError> {
    let rdate = ecma119::record_date(date);
    let block = |b: u32| b as u64 * BLOCK;

    w.put(&hybrid.front)?;
    w.zero_to(block(ecma119::SYSTEM_AREA_BLOCKS))?;

    let root = &layout.dirs[0];
    w.put(&ecma119::primary_descriptor(&ecma119::PvdFields {
        volume_id: &opts.volume_id,
        volume_blocks: summary.volume_blocks,
        path_table_bytes: layout.path_table_bytes,
        l_table: layout.l_table,
        m_table: layout.m_table,
        root_record: dir_record(&[0], root.extent, root.size, FLAG_DIRECTORY, rdate),
        date: ecma119::volume_date(date),
    }))?;
    w.put(&eltorito::boot_record(layout.catalog))?;
    w.put(&ecma119::terminator())?;

    for (start, big_endian) in [(layout.l_table, false), (layout.m_table, true)] {
        w.zero_to(block(start))?;
        for d in &layout.dirs {
            let id: &[u8] = if d.id.is_empty() {
                &[0]
            } else {
                d.id.as_bytes()
            };
            // Path table numbers are 1-based.
            w.put(&ecma119::path_record(
                id,
                d.extent,
                d.parent as u16 + 1,
                big_endian,
            ))?;
        }
    }

    for (i, d) in layout.dirs.iter().enumerate() {
        w.zero_to(block(d.extent))?;
        let parent = &layout.dirs[d.parent];
        let mut records = vec![
            dir_record(&[0], d.extent, d.size, FLAG_DIRECTORY, rdate),
            dir_record(&[1], parent.extent, parent.size, FLAG_DIRECTORY, rdate),
        ];
        for c in &d.children {
            records.push(match *c {
                Child::Dir(s) => {
                    let s = &layout.dirs[s];
                    debug_assert_eq!(s.parent, i);
                    dir_record(s.id.as_bytes(), s.extent, s.size, FLAG_DIRECTORY, rdate)
                }
                Child::File(f) => {
                    let f = &layout.files[f];
                    dir_record(f.id.as_bytes(), f.extent, f.size as u32, 0, rdate)
                }
            });
        }
        let mut used = 0u64;
        for r in records {
            if used % BLOCK + r.len() as u64 > BLOCK {
                used = used.div_ceil(BLOCK) * BLOCK;
            }
            w.zero_to(block(d.extent) + used)?;
            w.put(&r)?;
            used += r.len() as u64;
        }
    }

    w.zero_to(block(layout.catalog))?;
    w.put(&eltorito::catalog(
        summary.efi_block,
        summary.boot_sector_count,
    ))?;

    let mut order: Vec<&layout::FileItem> = layout.files.iter().collect();
    order.sort_by_key(|f| f.extent);
    for f in order {
        // Empty files share their extent number with the next file and have
        // no bytes to place; reading them still checks they stayed empty.
        if f.size > 0 {
            w.zero_to(block(f.extent))?;
        }
        w.copy_file(&f.host, f.size)?;
        tracing::trace!(iso_path = %f.iso_path, extent = f.extent, "file");
    }

    w.zero_to((hybrid.disk_sectors - BACKUP_SECTORS) * SECTOR)?;
    w.put(&hybrid.back)?;
    debug_assert_eq!(w.pos, summary.size);
    Ok(())
}
