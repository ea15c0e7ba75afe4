//! ISO 9660 identifiers: which names we accept and how records are ordered.
//!
//! We write interchange level 2 without Joliet or Rock Ridge: names are
//! d-characters (`A-Z 0-9 _`), so every reader shows them the same way. We
//! refuse other names instead of mapping them, because a silently renamed
//! file is one the installer will not find.

use std::cmp::Ordering;

/// Level 2: file name + `.` + extension is at most 30 characters.
pub(crate) const MAX_FILE_CHARS: usize = 30;
/// Directory identifiers are at most 31 characters.
pub(crate) const MAX_DIR_CHARS: usize = 31;
/// ECMA-119 6.8.2.1: at most eight levels, the root being level 1.
pub(crate) const MAX_DEPTH: usize = 8;
/// ECMA-119 6.8.2.1: a path (identifiers and separators) is at most 255 bytes.
pub(crate) const MAX_PATH_BYTES: usize = 255;
pub(crate) const MAX_VOLUME_ID: usize = 32;

pub(crate) fn is_d_char(b: u8) -> bool {
    b.is_ascii_uppercase() || b.is_ascii_digit() || b == b'_'
}

/// Why `name` is not a d-character string of 1..=`max` characters.
pub(crate) fn check_d_chars(name: &str, max: usize) -> Result<(), String> {
    if name.is_empty() {
        return Err("is empty".into());
    }
    if name.len() > max {
        return Err(format!(
            "is {} characters; at most {max} allowed",
            name.len()
        ));
    }
    if let Some((i, c)) = name
        .char_indices()
        .find(|&(_, c)| !c.is_ascii() || !is_d_char(c as u8))
    {
        return Err(format!(
            "has {c:?} at position {i}; only A-Z, 0-9 and _ are allowed"
        ));
    }
    Ok(())
}

/// A file's last path component: `NAME.EXT` or `NAME` (no extension).
pub(crate) fn check_file_name(name: &str) -> Result<(), String> {
    let (stem, ext) = name.split_once('.').unwrap_or((name, ""));
    if stem.is_empty() && ext.is_empty() {
        return Err("is empty".into());
    }
    if name.len() > MAX_FILE_CHARS {
        return Err(format!(
            "is {} characters; interchange level 2 allows at most {MAX_FILE_CHARS}",
            name.len()
        ));
    }
    if ext.contains('.') {
        return Err("has more than one '.'".into());
    }
    for part in [stem, ext] {
        if let Some((i, c)) = part
            .char_indices()
            .find(|&(_, c)| !c.is_ascii() || !is_d_char(c as u8))
        {
            return Err(format!(
                "has {c:?} at position {i} of {part:?}; only A-Z, 0-9, _ and one '.' are allowed"
            ));
        }
    }
    Ok(())
}

/// The recorded file identifier: `NAME.EXT;1`; the separator is always
/// present (ECMA-119 7.5.1), even with an empty extension.
pub(crate) fn file_identifier(name: &str) -> String {
    let (stem, ext) = name.split_once('.').unwrap_or((name, ""));
    format!("{stem}.{ext};1")
}

/// ECMA-119 9.3: records are ordered by name, then extension, each compared
/// as if the shorter were padded with spaces. Directories have no extension.
pub(crate) fn record_order(a: &str, b: &str) -> Ordering {
    let split = |s: &str| {
        let s = s.split(';').next().unwrap_or(s);
        let (stem, ext) = s.split_once('.').unwrap_or((s, ""));
        (stem.to_string(), ext.to_string())
    };
    let (sa, ea) = split(a);
    let (sb, eb) = split(b);
    padded_cmp(&sa, &sb).then_with(|| padded_cmp(&ea, &eb))
}

fn padded_cmp(a: &str, b: &str) -> Ordering {
    let n = a.len().max(b.len());
    let pad = |s: &str| {
        s.bytes()
            .chain(std::iter::repeat(b' '))
            .take(n)
            .collect::<Vec<u8>>()
    };
    pad(a).cmp(&pad(b))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn identifiers() {
        assert_eq!(file_identifier("EFI.IMG"), "EFI.IMG;1");
        assert_eq!(file_identifier("README"), "README.;1");
        assert!(check_file_name("A.B.C").is_err());
        assert!(check_file_name("efi.img").is_err());
        assert!(check_file_name(".").is_err());
        assert!(check_file_name(&"A".repeat(31)).is_err());
        assert!(check_file_name(&"A".repeat(30)).is_ok());
        assert!(check_d_chars("CAIRN_1", 32).is_ok());
        assert!(check_d_chars("cairn", 32).is_err());
        assert!(check_d_chars("", 32).is_err());
    }

    #[test]
    fn ordering_pads_with_spaces() {
        // With space padding "A" < "A_": a plain byte compare agrees here,
        // but "AB" vs "A.B" differ: the stem "A" sorts before "AB".
        assert_eq!(record_order("A.B;1", "AB.;1"), Ordering::Less);
        assert_eq!(record_order("A.;1", "A.B;1"), Ordering::Less);
        assert_eq!(record_order("B", "A.Z;1"), Ordering::Greater);
    }
}
