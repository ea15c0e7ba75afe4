//! Long (VFAT) and short (8.3) names.

use super::FatError;

const SHORT_SPECIAL: &[u8] = b"!#$%&'()-@^_`{}~";
const LONG_FORBIDDEN: &str = "\"*/:<>?\\|";

fn is_short_char(b: u8) -> bool {
    b.is_ascii_uppercase() || b.is_ascii_digit() || SHORT_SPECIAL.contains(&b)
}

/// The 11-byte directory form of `name` when it already is a valid
/// upper-case 8.3 name, so it needs no long-name entries.
pub(crate) fn as_short(name: &str) -> Option<[u8; 11]> {
    let (base, ext) = match name.rfind('.') {
        Some(i) => (&name[..i], &name[i + 1..]),
        None => (name, ""),
    };
    let dotted = name.contains('.');
    if base.is_empty() || base.len() > 8 || ext.len() > 3 || (dotted && ext.is_empty()) {
        return None;
    }
    if !base.bytes().chain(ext.bytes()).all(is_short_char) {
        return None;
    }
    Some(pad83(base.as_bytes(), ext.as_bytes()))
}

fn pad83(base: &[u8], ext: &[u8]) -> [u8; 11] {
    let mut out = [b' '; 11];
    out[..base.len()].copy_from_slice(base);
    out[8..8 + ext.len()].copy_from_slice(ext);
    out
}

/// Checks a name for one path component.
pub(crate) fn validate(name: &str) -> Result<(), FatError> {
    let invalid = |reason: String| FatError::InvalidName {
        name: name.to_string(),
        reason,
    };
    if name.is_empty() {
        return Err(invalid("empty name".into()));
    }
    if name == "." || name == ".." {
        return Err(invalid("reserved name".into()));
    }
    if let Some(c) = name
        .chars()
        .find(|&c| (c as u32) < 0x20 || LONG_FORBIDDEN.contains(c))
    {
        return Err(invalid(format!("character {c:?} is not allowed")));
    }
    if name.ends_with('.') || name.ends_with(' ') {
        return Err(invalid(
            "ends with a dot or space (Windows strips them)".into(),
        ));
    }
    let units = name.encode_utf16().count();
    if units > 255 {
        return Err(FatError::NameTooLong {
            name: name.to_string(),
            units,
        });
    }
    Ok(())
}

/// A short name for `long`, deterministic given the names already in the
/// directory: the upper-cased base truncated to make room for `~N`, with the
/// lowest N that is free, and the first three characters of the extension.
pub(crate) fn generate_short(long: &str, taken: &dyn Fn(&[u8; 11]) -> bool) -> [u8; 11] {
    let trimmed = long.trim_start_matches('.');
    let (base, ext) = match trimmed.rfind('.') {
        Some(i) => (&trimmed[..i], &trimmed[i + 1..]),
        None => (trimmed, ""),
    };
    let clean = |s: &str| -> Vec<u8> {
        s.chars()
            .filter(|&c| c != ' ' && c != '.')
            .map(|c| {
                let u = c.to_ascii_uppercase();
                if u.is_ascii() && is_short_char(u as u8) {
                    u as u8
                } else {
                    b'_'
                }
            })
            .collect()
    };
    let mut base = clean(base);
    let mut ext = clean(ext);
    if base.is_empty() {
        base.push(b'_');
    }
    ext.truncate(3);
    let mut n: u32 = 1;
    loop {
        let tail = format!("~{n}");
        let keep = base.len().min(8 - tail.len());
        let mut b = base[..keep].to_vec();
        b.extend_from_slice(tail.as_bytes());
        let cand = pad83(&b, &ext);
        if !taken(&cand) {
            return cand;
        }
        n += 1;
    }
}

pub(crate) fn checksum(short: &[u8; 11]) -> u8 {
    short
        .iter()
        .fold(0u8, |s, &b| (s >> 1).wrapping_add(s << 7).wrapping_add(b))
}

const LFN_OFFSETS: [usize; 13] = [1, 3, 5, 7, 9, 14, 16, 18, 20, 22, 24, 28, 30];

/// Long-name entries in on-disk order (last fragment first, flagged 0x40).
pub(crate) fn lfn_entries(long: &str, sum: u8) -> Vec<[u8; 32]> {
    let mut units: Vec<u16> = long.encode_utf16().collect();
    let n = units.len().div_ceil(13);
    if !units.len().is_multiple_of(13) {
        units.push(0);
    }
    units.resize(n * 13, 0xFFFF);
    (0..n)
        .rev()
        .map(|i| {
            let mut e = [0u8; 32];
            e[0] = (i as u8 + 1) | if i == n - 1 { 0x40 } else { 0 };
            e[11] = 0x0F;
            e[13] = sum;
            for (k, off) in LFN_OFFSETS.iter().enumerate() {
                e[*off..*off + 2].copy_from_slice(&units[i * 13 + k].to_le_bytes());
            }
            e
        })
        .collect()
}

/// The 13 UTF-16 units of one long-name entry.
pub(crate) fn lfn_units(e: &[u8]) -> [u16; 13] {
    let mut u = [0u16; 13];
    for (k, off) in LFN_OFFSETS.iter().enumerate() {
        u[k] = u16::from_le_bytes([e[*off], e[*off + 1]]);
    }
    u
}

/// Display form of a short name; `case` is the NT lower-case flag byte
/// (0x08 base, 0x10 extension) other systems use instead of long names.
pub(crate) fn short_display(s: &[u8; 11], case: u8) -> String {
    let mut base: Vec<u8> = s[..8].to_vec();
    if base[0] == 0x05 {
        base[0] = 0xE5;
    }
    let trim = |v: &[u8]| -> String {
        let t = String::from_utf8_lossy(v).trim_end().to_string();
        t
    };
    let mut b = trim(&base);
    let mut e = trim(&s[8..]);
    if case & 0x08 != 0 {
        b = b.to_ascii_lowercase();
    }
    if case & 0x10 != 0 {
        e = e.to_ascii_lowercase();
    }
    if e.is_empty() {
        b
    } else {
        format!("{b}.{e}")
    }
}

/// FAT names compare case-insensitively.
pub(crate) fn same_name(a: &str, b: &str) -> bool {
    a == b || a.to_uppercase() == b.to_uppercase()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn short_names() {
        assert_eq!(&as_short("BOOTX64.EFI").unwrap(), b"BOOTX64 EFI");
        assert_eq!(&as_short("EFI").unwrap(), b"EFI        ");
        assert!(as_short("efi").is_none());
        assert!(as_short("A+B.EFI").is_none());
        assert!(as_short("A.B.C").is_none());
        let none = |_: &[u8; 11]| false;
        assert_eq!(&generate_short("longname1.efi", &none), b"LONGNA~1EFI");
        let one = |s: &[u8; 11]| s == b"LONGNA~1EFI";
        assert_eq!(&generate_short("longname2.efi", &one), b"LONGNA~2EFI");
        assert_eq!(&generate_short("cairn-1.0.0+3.efi", &none), b"CAIRN-~1EFI");
    }

    #[test]
    fn lfn_round_trip() {
        let e = lfn_entries("cairn-1.0.0+3.efi", 7);
        assert_eq!(e.len(), 2);
        assert_eq!(e[0][0], 0x42);
        assert_eq!(e[1][0], 0x01);
        let mut u: Vec<u16> = lfn_units(&e[1]).to_vec();
        u.extend(lfn_units(&e[0]));
        let end = u.iter().position(|&x| x == 0).unwrap();
        assert_eq!(String::from_utf16(&u[..end]).unwrap(), "cairn-1.0.0+3.efi");
    }
}
