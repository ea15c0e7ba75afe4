//! Unified kernel images: the systemd stub with the kernel, initramfs,
//! command line and os-release appended as PE sections (UAPI "Unified Kernel
//! Image" specification), assembled without objcopy.
//!
//! The stub's own bytes are kept as they are; only the header fields that
//! must describe the new sections change (NumberOfSections, SizeOfImage,
//! SizeOfInitializedData, the section table and the checksum). The COFF
//! timestamp is left alone, so the output is a pure function of the inputs.

use std::fs;
use std::path::{Path, PathBuf};

pub use crate::pe::SectionHeader;
use crate::pe::{align_up, pe_checksum, put_u16, put_u32, NotPe, PeLayout, SECTION_HEADER_LEN};

/// Every appended section starts on a 4 KiB boundary in memory: systemd-stub
/// and the kernel's EFI stub map them page-wise.
const SECTION_VMA_ALIGN: u64 = 4096;
/// IMAGE_SCN_CNT_INITIALIZED_DATA | IMAGE_SCN_MEM_READ
const DATA_READONLY: u32 = 0x4000_0040;

#[derive(Debug, thiserror::Error)]
pub enum UkiError {
    #[error("reading {path}: {source}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("writing {path}: {source}")]
    Write {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{path}: not a PE image: {what}")]
    NotPe { path: PathBuf, what: String },
    #[error(
        "{path}: no room for {needed} section headers: the table would end at {table_end:#x} \
         but headers end at {limit:#x} (SizeOfHeaders or the first section's raw data)"
    )]
    NoHeaderRoom {
        path: PathBuf,
        needed: usize,
        table_end: u64,
        limit: u64,
    },
    #[error("{path}: stub is already signed (certificate table at {offset:#x}, {size} bytes); use an unsigned stub and sign the UKI")]
    SignedStub {
        path: PathBuf,
        offset: u32,
        size: u32,
    },
    #[error("{path}: stub already has a {name} section")]
    DuplicateSection { path: PathBuf, name: String },
    #[error("{path}: image would exceed 4 GiB ({size} bytes needed for section {name})")]
    TooLarge {
        path: PathBuf,
        name: String,
        size: u64,
    },
    #[error("{path}: no section named {name}")]
    NoSection { path: PathBuf, name: String },
    #[error("section name {name:?} is longer than 8 bytes")]
    BadName { name: String },
}

impl From<NotPe> for UkiError {
    fn from(NotPe { path, what }: NotPe) -> Self {
        UkiError::NotPe { path, what }
    }
}

/// What goes into a UKI. Text sections are stored byte for byte as given.
#[derive(Debug, Clone, Copy)]
pub struct UkiInputs<'a> {
    /// systemd-stub (`linuxx64.efi.stub`), unsigned.
    pub stub: &'a Path,
    pub linux: &'a Path,
    pub initrd: &'a Path,
    pub cmdline: &'a str,
    pub osrel: &'a str,
    pub uname: Option<&'a str>,
    /// Our SBAT CSV lines, appended after the stub's own entries in a single
    /// `.sbat` section (a `sbat,1,...` generation line here is dropped if the
    /// stub already has one).
    pub sbat: Option<&'a str>,
}

/// One appended section, as placed in the output.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PlacedSection {
    pub name: String,
    pub virtual_address: u32,
    pub size: u32,
    pub file_offset: u32,
}

/// Summary of a written UKI.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UkiReport {
    pub size: u64,
    pub sections: Vec<PlacedSection>,
}

pub struct Uki;

fn read(path: &Path) -> Result<Vec<u8>, UkiError> {
    fs::read(path).map_err(|source| UkiError::Read {
        path: path.to_path_buf(),
        source,
    })
}

fn section_name(name: &str) -> Result<[u8; 8], UkiError> {
    let b = name.as_bytes();
    if b.len() > 8 || b.is_empty() {
        return Err(UkiError::BadName { name: name.into() });
    }
    let mut n = [0u8; 8];
    n[..b.len()].copy_from_slice(b);
    Ok(n)
}

/// The stub's SBAT followed by the caller's entries. The `sbat,` generation
/// line must appear exactly once: the caller's is dropped when the stub
/// already has one, and kept when the stub carries no SBAT of its own.
fn merge_sbat(stub: &[u8], ours: &str) -> Vec<u8> {
    let stub_text = &stub[..stub.iter().position(|&b| b == 0).unwrap_or(stub.len())];
    let stub_has_header = stub_text
        .split(|&b| b == b'\n')
        .any(|l| l.starts_with(b"sbat,"));
    let mut out = stub_text.to_vec();
    if !out.is_empty() && !out.ends_with(b"\n") {
        out.push(b'\n');
    }
    for line in ours.lines() {
        if line.trim().is_empty() || (stub_has_header && line.starts_with("sbat,")) {
            continue;
        }
        out.extend_from_slice(line.as_bytes());
        out.push(b'\n');
    }
    out
}

impl Uki {
    /// Assemble a UKI into `out`, returning where each appended section went.
    pub fn build(inputs: &UkiInputs<'_>, out: &Path) -> Result<UkiReport, UkiError> {
        let stub = read(inputs.stub)?;
        let linux = read(inputs.linux)?;
        let initrd = read(inputs.initrd)?;
        let (bytes, sections) = Self::assemble(inputs.stub, &stub, inputs, linux, initrd)?;
        let report = UkiReport {
            size: bytes.len() as u64,
            sections,
        };
        fs::write(out, &bytes).map_err(|source| UkiError::Write {
            path: out.to_path_buf(),
            source,
        })?;
        Ok(report)
    }

    fn assemble(
        stub_path: &Path,
        stub: &[u8],
        inputs: &UkiInputs<'_>,
        linux: Vec<u8>,
        initrd: Vec<u8>,
    ) -> Result<(Vec<u8>, Vec<PlacedSection>), UkiError> {
        let layout = PeLayout::parse(stub_path, stub)?;
        if let Some((offset, size)) = layout.certificate_table(stub) {
            return Err(UkiError::SignedStub {
                path: stub_path.to_path_buf(),
                offset,
                size,
            });
        }
        let mut kept: Vec<SectionHeader> = layout.sections.clone();
        let stub_sbat = kept.iter().position(|s| s.name_str() == ".sbat");

        // Order as ukify writes them: small metadata first, kernel and initrd last.
        let mut new: Vec<(&str, Vec<u8>)> = vec![
            (".osrel", inputs.osrel.as_bytes().to_vec()),
            (".cmdline", inputs.cmdline.as_bytes().to_vec()),
        ];
        if let Some(u) = inputs.uname {
            new.push((".uname", u.as_bytes().to_vec()));
        }
        if let Some(ours) = inputs.sbat {
            // The stub's .sbat cannot grow in place (the next section follows
            // it), so its header is dropped and a merged copy is appended; the
            // old bytes stay in the file, unreferenced.
            let merged = match stub_sbat {
                Some(i) => {
                    let s = kept.remove(i);
                    merge_sbat(&layout.section_bytes(stub, &s), ours)
                }
                None => merge_sbat(b"", ours),
            };
            new.push((".sbat", merged));
        }
        new.push((".linux", linux));
        new.push((".initrd", initrd));

        for (name, _) in &new {
            if kept.iter().any(|s| s.name_str() == *name) {
                return Err(UkiError::DuplicateSection {
                    path: stub_path.to_path_buf(),
                    name: (*name).into(),
                });
            }
        }

        let total = kept.len() + new.len();
        let table_end = (layout.section_table_offset + total * SECTION_HEADER_LEN) as u64;
        let first_raw = layout
            .sections
            .iter()
            .filter(|s| s.size_of_raw_data > 0)
            .map(|s| s.pointer_to_raw_data as u64)
            .min()
            .unwrap_or(u64::MAX);
        let limit = first_raw.min(layout.size_of_headers as u64);
        if table_end > limit {
            return Err(UkiError::NoHeaderRoom {
                path: stub_path.to_path_buf(),
                needed: total,
                table_end,
                limit,
            });
        }

        // Anything after the last section's raw data (a COFF symbol table,
        // debug blobs) is dropped: the image ends with our sections.
        let stub_end = layout
            .sections
            .iter()
            .map(|s| s.pointer_to_raw_data as u64 + s.size_of_raw_data as u64)
            .max()
            .unwrap_or(layout.size_of_headers as u64)
            .max(layout.size_of_headers as u64);
        let falign = layout.file_alignment as u64;
        let mut file_off = align_up(stub_end, falign);
        let mut vma = align_up(
            layout
                .sections
                .iter()
                .map(SectionHeader::virtual_end)
                .max()
                .unwrap_or(0),
            SECTION_VMA_ALIGN,
        );
        let mut init_data_added: u64 = 0;
        let mut headers = kept;
        let mut placed = Vec::with_capacity(new.len());
        let mut report = Vec::with_capacity(new.len());
        for (name, data) in &new {
            let raw_size = align_up(data.len() as u64, falign);
            let end = (file_off + raw_size).max(vma + raw_size);
            if end > u32::MAX as u64 {
                return Err(UkiError::TooLarge {
                    path: stub_path.to_path_buf(),
                    name: (*name).into(),
                    size: end,
                });
            }
            headers.push(SectionHeader {
                name: section_name(name)?,
                virtual_size: data.len() as u32,
                virtual_address: vma as u32,
                size_of_raw_data: raw_size as u32,
                pointer_to_raw_data: file_off as u32,
                characteristics: DATA_READONLY,
            });
            placed.push((file_off as usize, data));
            report.push(PlacedSection {
                name: (*name).into(),
                virtual_address: vma as u32,
                size: data.len() as u32,
                file_offset: file_off as u32,
            });
            init_data_added += raw_size;
            file_off += raw_size;
            vma = align_up(vma + data.len().max(1) as u64, SECTION_VMA_ALIGN);
        }

        let mut out = stub[..stub_end as usize].to_vec();
        out.resize(file_off as usize, 0);
        for (off, data) in placed {
            out[off..off + data.len()].copy_from_slice(data);
        }
        // Clear the old table fully before writing the new one: when the stub's
        // .sbat header was dropped, a stale 40-byte entry must not linger.
        let old_end = layout.section_table_offset + layout.sections.len() * SECTION_HEADER_LEN;
        out[layout.section_table_offset..old_end.max(table_end as usize)].fill(0);
        for (i, h) in headers.iter().enumerate() {
            let at = layout.section_table_offset + i * SECTION_HEADER_LEN;
            out[at..at + SECTION_HEADER_LEN].copy_from_slice(&h.encode());
        }
        put_u16(
            &mut out,
            layout.number_of_sections_offset(),
            headers.len() as u16,
        );
        // The COFF symbol/string table lived after the stub's sections and was
        // cut off above; a stale pointer would now aim into .osrel, and BFD
        // (objcopy) then reads our text as a string-table length. Images need
        // no COFF symbols (the spec deprecates them), so the pointer goes.
        let sym = layout.symbol_table_offset();
        out[sym..sym + 8].fill(0);
        let image_end = headers
            .iter()
            .map(SectionHeader::virtual_end)
            .max()
            .unwrap_or(0);
        let size_of_image = align_up(image_end, layout.section_alignment as u64);
        if size_of_image > u32::MAX as u64 {
            return Err(UkiError::TooLarge {
                path: stub_path.to_path_buf(),
                name: "SizeOfImage".into(),
                size: size_of_image,
            });
        }
        put_u32(
            &mut out,
            layout.size_of_image_offset(),
            size_of_image as u32,
        );
        let sid_off = layout.size_of_initialized_data_offset();
        let sid = u32::from_le_bytes(out[sid_off..sid_off + 4].try_into().expect("4 bytes"));
        put_u32(
            &mut out,
            sid_off,
            sid.saturating_add(init_data_added.min(u32::MAX as u64) as u32),
        );
        let ck = layout.checksum_offset();
        put_u32(&mut out, ck, 0);
        let sum = pe_checksum(&out, ck);
        put_u32(&mut out, ck, sum);
        Ok((out, report))
    }

    /// The bytes of section `name` (VirtualSize bytes) in the PE file at `path`.
    pub fn read_section(path: &Path, name: &str) -> Result<Vec<u8>, UkiError> {
        let b = read(path)?;
        Self::section_from_bytes(path, &b, name)
    }

    /// Like [`Uki::read_section`], for an image already in memory; `path` only
    /// names it in errors.
    pub fn section_from_bytes(path: &Path, b: &[u8], name: &str) -> Result<Vec<u8>, UkiError> {
        let layout = PeLayout::parse(path, b)?;
        let s = layout
            .sections
            .iter()
            .find(|s| s.name_str() == name)
            .ok_or_else(|| UkiError::NoSection {
                path: path.to_path_buf(),
                name: name.into(),
            })?;
        Ok(layout.section_bytes(b, s))
    }

    /// All section headers of the PE file at `path`, in table order.
    pub fn sections(path: &Path) -> Result<Vec<SectionHeader>, UkiError> {
        let b = read(path)?;
        Ok(PeLayout::parse(path, &b)?.sections)
    }

    /// The optional-header checksum recomputed over `path` (for checks).
    pub fn compute_checksum(path: &Path) -> Result<(u32, u32), UkiError> {
        let b = read(path)?;
        let layout = PeLayout::parse(path, &b)?;
        let ck = layout.checksum_offset();
        let stored = u32::from_le_bytes(b[ck..ck + 4].try_into().expect("4 bytes"));
        Ok((stored, pe_checksum(&b, ck)))
    }
}
