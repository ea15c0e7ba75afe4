//! The workspace's one PE/COFF reader: the machine type, the header fields
//! and their file offsets, the data directories and the section table. UKI
//! assembly (artifacts::uki), Authenticode signing and verification
//! (signing::authenticode) and the installer's architecture check all read
//! PE images through it.
//!
//! Ours rather than the `object` crate: object hands out header *values*,
//! but every user here needs *file offsets* as well: the UKI writer and the
//! signer patch NumberOfSections, SizeOfImage, the checksum and the
//! certificate-table entry in place, and the Authenticode hash skips exactly
//! the checksum and that entry. object would also be a second PE parser in
//! init's link (init carries the installer).
//!
//! Only PE32+ and PE32 images are accepted; offsets follow the Microsoft
//! PE/COFF specification ("Optional Header Windows-Specific Fields").

use std::path::{Path, PathBuf};

pub(crate) const SECTION_HEADER_LEN: usize = 40;
const COFF_HEADER_LEN: usize = 20;
const MAGIC_PE32: u16 = 0x10b;
const MAGIC_PE32_PLUS: u16 = 0x20b;
/// Index of the attribute certificate table in the data directories.
pub const DIR_SECURITY: usize = 4;
/// IMAGE_FILE_MACHINE_AMD64.
pub const MACHINE_X86_64: u16 = 0x8664;

/// The bytes are not a PE image this reader accepts; `what` says why and
/// where.
#[derive(Debug, thiserror::Error)]
#[error("{path}: not a PE image: {what}")]
pub struct NotPe {
    pub path: PathBuf,
    pub what: String,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SectionHeader {
    /// Raw 8-byte name, NUL padded.
    pub name: [u8; 8],
    pub virtual_size: u32,
    pub virtual_address: u32,
    pub size_of_raw_data: u32,
    pub pointer_to_raw_data: u32,
    pub characteristics: u32,
}

impl SectionHeader {
    pub fn name_str(&self) -> String {
        let end = self.name.iter().position(|&b| b == 0).unwrap_or(8);
        String::from_utf8_lossy(&self.name[..end]).into_owned()
    }

    pub(crate) fn encode(&self) -> [u8; SECTION_HEADER_LEN] {
        let mut h = [0u8; SECTION_HEADER_LEN];
        h[0..8].copy_from_slice(&self.name);
        h[8..12].copy_from_slice(&self.virtual_size.to_le_bytes());
        h[12..16].copy_from_slice(&self.virtual_address.to_le_bytes());
        h[16..20].copy_from_slice(&self.size_of_raw_data.to_le_bytes());
        h[20..24].copy_from_slice(&self.pointer_to_raw_data.to_le_bytes());
        // Relocation/line-number pointers and counts stay zero: images carry none.
        h[36..40].copy_from_slice(&self.characteristics.to_le_bytes());
        h
    }

    /// Where this section's bytes end in memory (the larger of virtual and raw size).
    pub fn virtual_end(&self) -> u64 {
        self.virtual_address as u64 + self.virtual_size.max(self.size_of_raw_data) as u64
    }
}

/// Parsed header layout of a PE image held in memory.
#[derive(Debug, Clone)]
pub struct PeLayout {
    /// COFF Machine: the architecture the firmware checks.
    pub machine: u16,
    pub optional_header_offset: usize,
    pub section_table_offset: usize,
    pub sections: Vec<SectionHeader>,
    pub section_alignment: u32,
    pub file_alignment: u32,
    pub size_of_headers: u32,
    /// (offset of the data directory array, number of entries)
    data_dirs: (usize, usize),
}

fn u16_at(b: &[u8], off: usize) -> Option<u16> {
    b.get(off..off + 2)
        .map(|s| u16::from_le_bytes([s[0], s[1]]))
}

fn u32_at(b: &[u8], off: usize) -> Option<u32> {
    b.get(off..off + 4)
        .map(|s| u32::from_le_bytes([s[0], s[1], s[2], s[3]]))
}

impl PeLayout {
    /// Reads the headers of the image `b`; `path` only names it in errors.
    /// Every section's raw data must lie inside `b`.
    pub fn parse(path: &Path, b: &[u8]) -> Result<Self, NotPe> {
        let bad = |what: String| NotPe {
            path: path.to_path_buf(),
            what,
        };
        if b.get(0..2) != Some(b"MZ") {
            return Err(bad("no MZ signature at offset 0".into()));
        }
        let pe_off =
            u32_at(b, 0x3c).ok_or_else(|| bad("file shorter than a DOS header".into()))? as usize;
        if b.get(pe_off..pe_off + 4) != Some(b"PE\0\0") {
            return Err(bad(format!("no PE signature at e_lfanew {pe_off:#x}")));
        }
        let coff = pe_off + 4;
        let machine =
            u16_at(b, coff).ok_or_else(|| bad(format!("COFF header at {coff:#x} truncated")))?;
        let nsections = u16_at(b, coff + 2)
            .ok_or_else(|| bad(format!("COFF header at {coff:#x} truncated")))?
            as usize;
        let size_of_optional_header = u16_at(b, coff + 16).unwrap_or(0) as usize;
        let opt = coff + COFF_HEADER_LEN;
        let section_table_offset = opt + size_of_optional_header;
        if b.len() < section_table_offset + nsections * SECTION_HEADER_LEN {
            return Err(bad(format!(
                "{nsections} section headers at {section_table_offset:#x} run past the end of the file ({} bytes)",
                b.len()
            )));
        }
        let magic = u16_at(b, opt).unwrap_or(0);
        let dirs_rel = match magic {
            MAGIC_PE32_PLUS => 112,
            MAGIC_PE32 => 96,
            m => {
                return Err(bad(format!(
                    "optional header magic {m:#x} is neither PE32 nor PE32+"
                )))
            }
        };
        if size_of_optional_header < dirs_rel {
            return Err(bad(format!(
                "SizeOfOptionalHeader {size_of_optional_header} is smaller than the {dirs_rel} fixed bytes"
            )));
        }
        let ndirs = u32_at(b, opt + dirs_rel - 4).unwrap_or(0) as usize;
        let ndirs = ndirs.min((size_of_optional_header - dirs_rel) / 8);
        let section_alignment = u32_at(b, opt + 32).unwrap_or(0);
        let file_alignment = u32_at(b, opt + 36).unwrap_or(0);
        if !file_alignment.is_power_of_two() || !section_alignment.is_power_of_two() {
            return Err(bad(format!(
                "FileAlignment {file_alignment:#x} / SectionAlignment {section_alignment:#x} not a power of two"
            )));
        }
        let size_of_headers = u32_at(b, opt + 60).unwrap_or(0);
        let mut sections = Vec::with_capacity(nsections);
        for i in 0..nsections {
            let h = section_table_offset + i * SECTION_HEADER_LEN;
            let mut name = [0u8; 8];
            name.copy_from_slice(&b[h..h + 8]);
            let s = SectionHeader {
                name,
                virtual_size: u32_at(b, h + 8).unwrap_or(0),
                virtual_address: u32_at(b, h + 12).unwrap_or(0),
                size_of_raw_data: u32_at(b, h + 16).unwrap_or(0),
                pointer_to_raw_data: u32_at(b, h + 20).unwrap_or(0),
                characteristics: u32_at(b, h + 36).unwrap_or(0),
            };
            let end = s.pointer_to_raw_data as u64 + s.size_of_raw_data as u64;
            if end > b.len() as u64 {
                return Err(bad(format!(
                    "section {} raw data {:#x}+{:#x} runs past the end of the file ({} bytes)",
                    s.name_str(),
                    s.pointer_to_raw_data,
                    s.size_of_raw_data,
                    b.len()
                )));
            }
            sections.push(s);
        }
        Ok(PeLayout {
            machine,
            optional_header_offset: opt,
            section_table_offset,
            sections,
            section_alignment,
            file_alignment,
            size_of_headers,
            data_dirs: (opt + dirs_rel, ndirs),
        })
    }

    /// Number of data directories the optional header holds.
    pub fn data_dir_count(&self) -> usize {
        self.data_dirs.1
    }

    /// File offset of the 8-byte entry of data directory `index`, if present.
    pub fn data_dir_offset(&self, index: usize) -> Option<usize> {
        (index < self.data_dirs.1).then(|| self.data_dirs.0 + index * 8)
    }

    /// (rva/file offset, size) of data directory `index`, if present.
    pub fn data_dir(&self, b: &[u8], index: usize) -> Option<(u32, u32)> {
        let off = self.data_dir_offset(index)?;
        Some((u32_at(b, off)?, u32_at(b, off + 4)?))
    }

    /// (file offset, size) of the attribute certificate table, if the image
    /// has one (is signed).
    pub fn certificate_table(&self, b: &[u8]) -> Option<(u32, u32)> {
        self.data_dir(b, DIR_SECURITY)
            .filter(|&(_, size)| size != 0)
    }

    /// File offset of the optional header's CheckSum.
    pub fn checksum_offset(&self) -> usize {
        self.optional_header_offset + 64
    }
    pub fn size_of_image_offset(&self) -> usize {
        self.optional_header_offset + 56
    }
    pub fn size_of_initialized_data_offset(&self) -> usize {
        self.optional_header_offset + 8
    }
    /// The COFF header's Machine field.
    pub fn machine_offset(&self) -> usize {
        self.optional_header_offset - COFF_HEADER_LEN
    }
    /// PointerToSymbolTable and NumberOfSymbols (8 bytes) in the COFF header.
    pub fn symbol_table_offset(&self) -> usize {
        self.optional_header_offset - COFF_HEADER_LEN + 8
    }
    pub fn number_of_sections_offset(&self) -> usize {
        self.optional_header_offset - COFF_HEADER_LEN + 2
    }

    /// Bytes of a section as the loader would see them: VirtualSize bytes,
    /// of which those beyond SizeOfRawData are zero.
    pub fn section_bytes(&self, b: &[u8], s: &SectionHeader) -> Vec<u8> {
        let raw = s.pointer_to_raw_data as usize;
        let have = (s.size_of_raw_data as usize).min(s.virtual_size as usize);
        let mut out = b[raw..raw + have].to_vec();
        out.resize(s.virtual_size as usize, 0);
        out
    }
}

/// The PE optional-header checksum: 16-bit one's-complement-style sum of the
/// file (with the checksum field counted as zero) folded to 16 bits, plus the
/// file length.
pub fn pe_checksum(b: &[u8], checksum_offset: usize) -> u32 {
    let mut sum: u64 = 0;
    let mut i = 0;
    while i < b.len() {
        let word = if i + 1 < b.len() {
            u16::from_le_bytes([b[i], b[i + 1]]) as u64
        } else {
            b[i] as u64
        };
        if i != checksum_offset && i != checksum_offset + 2 {
            sum += word;
            sum = (sum & 0xffff) + (sum >> 16);
        }
        i += 2;
    }
    sum = (sum & 0xffff) + (sum >> 16);
    (sum as u32 & 0xffff).wrapping_add(b.len() as u32)
}

pub(crate) fn put_u32(b: &mut [u8], off: usize, v: u32) {
    b[off..off + 4].copy_from_slice(&v.to_le_bytes());
}

pub(crate) fn put_u16(b: &mut [u8], off: usize, v: u16) {
    b[off..off + 2].copy_from_slice(&v.to_le_bytes());
}

pub(crate) fn align_up(v: u64, a: u64) -> u64 {
    v.div_ceil(a) * a
}
