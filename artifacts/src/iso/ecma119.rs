//! Byte layouts of ECMA-119 volume descriptors, directory records and path
//! tables, and the two date formats.

use crate::date::Civil;

pub(crate) const BLOCK: u64 = 2048;
/// Logical sectors 0..16 are the system area; descriptors start at 16.
pub(crate) const SYSTEM_AREA_BLOCKS: u32 = 16;
pub(crate) const STANDARD_ID: &[u8; 5] = b"CD001";
pub(crate) const FLAG_DIRECTORY: u8 = 0x02;
/// Directory records cannot record a year after 1900 + 255.
pub(crate) const LAST_YEAR: u64 = 2155;

/// ECMA-119 9.1.5: seven bytes, years since 1900, UTC (offset 0).
/// The caller has checked the year range.
pub(crate) fn record_date(c: Civil) -> [u8; 7] {
    [
        (c.year - 1900) as u8,
        c.month,
        c.day,
        c.hour,
        c.minute,
        c.second,
        0,
    ]
}

/// ECMA-119 8.4.26.1: `YYYYMMDDHHMMSScc` digits and a UTC offset byte.
pub(crate) fn volume_date(c: Civil) -> [u8; 17] {
    let mut d = [0u8; 17];
    let digits = format!(
        "{:04}{:02}{:02}{:02}{:02}{:02}00",
        c.year, c.month, c.day, c.hour, c.minute, c.second
    );
    d[..16].copy_from_slice(digits.as_bytes());
    d
}

/// "Not specified": sixteen '0' digits and offset 0.
pub(crate) fn unspecified_date() -> [u8; 17] {
    let mut d = [b'0'; 17];
    d[16] = 0;
    d
}

pub(crate) fn both_u16(v: u16) -> [u8; 4] {
    let (l, b) = (v.to_le_bytes(), v.to_be_bytes());
    [l[0], l[1], b[0], b[1]]
}

pub(crate) fn both_u32(v: u32) -> [u8; 8] {
    let mut o = [0u8; 8];
    o[..4].copy_from_slice(&v.to_le_bytes());
    o[4..].copy_from_slice(&v.to_be_bytes());
    o
}

fn padded<const N: usize>(s: &str) -> [u8; N] {
    let mut o = [b' '; N];
    o[..s.len()].copy_from_slice(s.as_bytes());
    o
}

pub(crate) fn record_len(id_len: usize) -> usize {
    // The record length is even: a pad byte follows an even-length id.
    33 + id_len + (1 - id_len % 2)
}

/// One directory record (ECMA-119 9.1). `id` is the raw identifier:
/// `[0]` for ".", `[1]` for "..".
pub(crate) fn dir_record(id: &[u8], extent: u32, size: u32, flags: u8, date: [u8; 7]) -> Vec<u8> {
    let len = record_len(id.len());
    let mut r = vec![0u8; len];
    r[0] = len as u8;
    r[2..10].copy_from_slice(&both_u32(extent));
    r[10..18].copy_from_slice(&both_u32(size));
    r[18..25].copy_from_slice(&date);
    r[25] = flags;
    r[28..32].copy_from_slice(&both_u16(1));
    r[32] = id.len() as u8;
    r[33..33 + id.len()].copy_from_slice(id);
    r
}

pub(crate) struct PvdFields<'a> {
    pub volume_id: &'a str,
    pub volume_blocks: u32,
    pub path_table_bytes: u32,
    pub l_table: u32,
    pub m_table: u32,
    pub root_record: Vec<u8>,
    pub date: [u8; 17],
}

/// Primary Volume Descriptor (ECMA-119 8.4).
pub(crate) fn primary_descriptor(f: &PvdFields) -> [u8; 2048] {
    let mut d = [0u8; 2048];
    d[0] = 1;
    d[1..6].copy_from_slice(STANDARD_ID);
    d[6] = 1;
    d[8..40].copy_from_slice(&padded::<32>(""));
    d[40..72].copy_from_slice(&padded::<32>(f.volume_id));
    d[80..88].copy_from_slice(&both_u32(f.volume_blocks));
    d[120..124].copy_from_slice(&both_u16(1)); // volume set size
    d[124..128].copy_from_slice(&both_u16(1)); // volume sequence number
    d[128..132].copy_from_slice(&both_u16(BLOCK as u16));
    d[132..140].copy_from_slice(&both_u32(f.path_table_bytes));
    d[140..144].copy_from_slice(&f.l_table.to_le_bytes());
    d[148..152].copy_from_slice(&f.m_table.to_be_bytes());
    d[156..190].copy_from_slice(&f.root_record);
    d[190..318].copy_from_slice(&padded::<128>("")); // volume set
    d[318..446].copy_from_slice(&padded::<128>("")); // publisher
    d[446..574].copy_from_slice(&padded::<128>("")); // data preparer
    d[574..702].copy_from_slice(&padded::<128>("CAIRN"));
    d[702..813].copy_from_slice(&[b' '; 111]); // copyright, abstract, biblio files
    d[813..830].copy_from_slice(&f.date); // creation
    d[830..847].copy_from_slice(&f.date); // modification
    d[847..864].copy_from_slice(&unspecified_date()); // expiration
    d[864..881].copy_from_slice(&f.date); // effective
    d[881] = 1; // file structure version
    d
}

/// Volume Descriptor Set Terminator (ECMA-119 8.3).
pub(crate) fn terminator() -> [u8; 2048] {
    let mut d = [0u8; 2048];
    d[0] = 255;
    d[1..6].copy_from_slice(STANDARD_ID);
    d[6] = 1;
    d
}

pub(crate) fn path_record_len(id_len: usize) -> usize {
    8 + id_len + id_len % 2
}

/// One path table record (ECMA-119 9.4); `big_endian` picks the M table.
pub(crate) fn path_record(id: &[u8], extent: u32, parent: u16, big_endian: bool) -> Vec<u8> {
    let mut r = vec![0u8; path_record_len(id.len())];
    r[0] = id.len() as u8;
    if big_endian {
        r[2..6].copy_from_slice(&extent.to_be_bytes());
        r[6..8].copy_from_slice(&parent.to_be_bytes());
    } else {
        r[2..6].copy_from_slice(&extent.to_le_bytes());
        r[6..8].copy_from_slice(&parent.to_le_bytes());
    }
    r[8..8 + id.len()].copy_from_slice(id);
    r
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn volume_date_digits() {
        assert_eq!(
            &volume_date(Civil::from_epoch(0))[..16],
            b"1970010100000000"
        );
        assert_eq!(
            &volume_date(Civil::from_epoch(1_709_208_000))[..16],
            b"2024022912000000"
        );
    }

    #[test]
    fn record_lengths_are_even() {
        for n in 1..40 {
            assert_eq!(record_len(n) % 2, 0);
            assert_eq!(path_record_len(n) % 2, 0);
        }
        assert_eq!(record_len(1), 34); // root record in the PVD
    }
}
