//! Boot blessing: deciding whether (and which) UKI to rename so systemd-boot
//! stops counting it down. The decision is pure; `efivar` decoding and the
//! rename itself live at the edges.

/// systemd-boot's loader vendor GUID (`LoaderEntrySelected`, `LoaderBootCountPath`).
pub const LOADER_GUID: &str = "4a67b082-0a4c-41cf-b6c7-440b29bb8c4f";

/// A UKI file name split into the part that identifies the entry and the
/// boot-counting suffix systemd-boot rewrites on every attempt.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EntryName<'a> {
    pub base: &'a str,
    /// `(tries_left, tries_done)`; `None` for a blessed (uncounted) entry.
    pub counter: Option<(u32, u32)>,
}

fn digits(s: &str) -> Option<u32> {
    if s.is_empty() || !s.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    s.parse().ok()
}

/// Parses `NAME[+LEFT[-DONE]].efi`. A `+` not followed by a valid counter is
/// part of the name (versions may carry `+build` metadata).
pub fn parse_entry(file: &str) -> Option<EntryName<'_>> {
    let stem = file.strip_suffix(".efi")?;
    if stem.is_empty() {
        return None;
    }
    if let Some((base, ctr)) = stem.rsplit_once('+') {
        let parsed = match ctr.split_once('-') {
            Some((l, d)) => digits(l).zip(digits(d)),
            None => digits(ctr).map(|l| (l, 0)),
        };
        if let (Some(c), false) = (parsed, base.is_empty()) {
            return Some(EntryName {
                base,
                counter: Some(c),
            });
        }
    }
    Some(EntryName {
        base: stem,
        counter: None,
    })
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Refusal {
    NoSelectedEntry,
    NotAUki { selected: String },
    NoCountPath { selected: String },
    CountPathOutsideLinuxDir { path: String },
    CountPathNotCounted { path: String },
    OtherEntry { selected: String, path: String },
    CounterMismatch { selected: String, path: String },
}

impl std::fmt::Display for Refusal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Refusal::NoSelectedEntry => write!(f, "LoaderEntrySelected is not set (not booted by systemd-boot, or efivarfs missing)"),
            Refusal::NotAUki { selected } => write!(f, "selected entry {selected:?} is not a UKI in \\EFI\\Linux"),
            Refusal::NoCountPath { selected } => write!(f, "selected entry {selected:?} is counted but LoaderBootCountPath is not set"),
            Refusal::CountPathOutsideLinuxDir { path } => write!(f, "LoaderBootCountPath {path:?} is not under \\EFI\\Linux"),
            Refusal::CountPathNotCounted { path } => write!(f, "LoaderBootCountPath {path:?} carries no boot counter"),
            Refusal::OtherEntry { selected, path } => write!(f, "LoaderBootCountPath {path:?} names another entry than the booted {selected:?} (stale variable)"),
            Refusal::CounterMismatch { selected, path } => write!(f, "LoaderBootCountPath {path:?} is not the one-step rename of {selected:?} (stale variable)"),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    /// Rename `from` to `to`, both relative to the ESP root, `/`-separated.
    Rename {
        from: String,
        to: String,
    },
    AlreadyBlessed,
    Refuse(Refusal),
}

/// Decides from the two loader variables alone. `selected` is the entry id
/// systemd-boot chose, taken before it renamed the file (`cairn-2.0.0+3.efi`);
/// `count_path` is the renamed file (`\EFI\Linux\cairn-2.0.0+2-1.efi`). Only a
/// count path that is exactly one attempt further along the selected entry's
/// counter may be renamed: anything else could bless an entry that did not
/// boot (after a failed Secure Boot load the variable points at the failure).
pub fn decide(selected: Option<&str>, count_path: Option<&str>) -> Decision {
    let Some(selected) = selected.filter(|s| !s.is_empty()) else {
        return Decision::Refuse(Refusal::NoSelectedEntry);
    };
    let Some(sel) = parse_entry(selected).filter(|_| !selected.contains(['/', '\\'])) else {
        return Decision::Refuse(Refusal::NotAUki {
            selected: selected.into(),
        });
    };
    let Some((sel_left, sel_done)) = sel.counter else {
        // The booted entry is blessed; whatever the count path says belongs to
        // some other (failed) attempt and must not be touched.
        return Decision::AlreadyBlessed;
    };
    let Some(path) = count_path.filter(|p| !p.is_empty()) else {
        return Decision::Refuse(Refusal::NoCountPath {
            selected: selected.into(),
        });
    };
    let norm = path.replace('\\', "/");
    let rel = norm.trim_start_matches('/');
    let file = match rel.split_once('/') {
        Some((a, rest)) if a.eq_ignore_ascii_case("EFI") => match rest.split_once('/') {
            Some((b, f)) if b.eq_ignore_ascii_case("Linux") && !f.contains('/') => f,
            _ => "",
        },
        _ => "",
    };
    if file.is_empty() {
        return Decision::Refuse(Refusal::CountPathOutsideLinuxDir { path: path.into() });
    }
    let Some(cur) = parse_entry(file) else {
        return Decision::Refuse(Refusal::CountPathOutsideLinuxDir { path: path.into() });
    };
    let Some((left, done)) = cur.counter else {
        return Decision::Refuse(Refusal::CountPathNotCounted { path: path.into() });
    };
    if cur.base != sel.base {
        return Decision::Refuse(Refusal::OtherEntry {
            selected: selected.into(),
            path: path.into(),
        });
    }
    // systemd-boot counts one try down per attempt; an exhausted entry
    // (the last resort when nothing else is left) stays at 0 tries and
    // only its done count goes up.
    let expected_left = sel_left.saturating_sub(1);
    if left != expected_left || done != sel_done + 1 {
        return Decision::Refuse(Refusal::CounterMismatch {
            selected: selected.into(),
            path: path.into(),
        });
    }
    let dir = &rel[..rel.len() - file.len()];
    Decision::Rename {
        from: format!("{dir}{file}"),
        to: format!("{dir}{}.efi", cur.base),
    }
}

/// Decodes an efivarfs file: 4 bytes of attributes, then UTF-16LE text,
/// optionally NUL-terminated. `None` for anything malformed.
pub fn decode_efivar_string(raw: &[u8]) -> Option<String> {
    let body = raw.get(4..)?;
    if body.len() & 1 != 0 {
        return None;
    }
    let units: Vec<u16> = body
        .chunks_exact(2)
        .map(|c| u16::from_le_bytes([c[0], c[1]]))
        .take_while(|u| *u != 0)
        .collect();
    String::from_utf16(&units).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rename(from: &str, to: &str) -> Decision {
        Decision::Rename {
            from: from.into(),
            to: to.into(),
        }
    }

    #[test]
    fn decision_table() {
        use Decision::*;
        #[rustfmt::skip]
        let cases: Vec<(Option<&str>, Option<&str>, Decision)> = vec![
            // first attempt of a new release: bless it
            (Some("cairn-2.0.0+3.efi"), Some("\\EFI\\Linux\\cairn-2.0.0+2-1.efi"),
             rename("EFI/Linux/cairn-2.0.0+2-1.efi", "EFI/Linux/cairn-2.0.0.efi")),
            // second attempt
            (Some("cairn-2.0.0+2-1.efi"), Some("\\EFI\\Linux\\cairn-2.0.0+1-2.efi"),
             rename("EFI/Linux/cairn-2.0.0+1-2.efi", "EFI/Linux/cairn-2.0.0.efi")),
            // case of the directory components is the firmware's business
            (Some("cairn-2.0.0+3.efi"), Some("\\efi\\linux\\cairn-2.0.0+2-1.efi"),
             rename("efi/linux/cairn-2.0.0+2-1.efi", "efi/linux/cairn-2.0.0.efi")),
            // '+' in the version is not a counter
            (Some("cairn-2.0.0+git5+3.efi"), Some("\\EFI\\Linux\\cairn-2.0.0+git5+2-1.efi"),
             rename("EFI/Linux/cairn-2.0.0+git5+2-1.efi", "EFI/Linux/cairn-2.0.0+git5.efi")),
            // the exhausted last resort booted and came up healthy: bless it
            (Some("cairn-2.0.0+0.efi"), Some("\\EFI\\Linux\\cairn-2.0.0+0-1.efi"),
             rename("EFI/Linux/cairn-2.0.0+0-1.efi", "EFI/Linux/cairn-2.0.0.efi")),
            (Some("cairn-2.0.0+0-1.efi"), Some("\\EFI\\Linux\\cairn-2.0.0+0-3.efi"),
             Refuse(Refusal::CounterMismatch { selected: "cairn-2.0.0+0-1.efi".into(), path: "\\EFI\\Linux\\cairn-2.0.0+0-3.efi".into() })),
            // booted a blessed entry: nothing to do, even with a stale count path
            (Some("cairn-1.0.0.efi"), None, AlreadyBlessed),
            (Some("cairn-1.0.0.efi"), Some("\\EFI\\Linux\\cairn-2.0.0+2-1.efi"), AlreadyBlessed),
            // missing variables
            (None, None, Refuse(Refusal::NoSelectedEntry)),
            (None, Some("\\EFI\\Linux\\cairn-2.0.0+2-1.efi"), Refuse(Refusal::NoSelectedEntry)),
            (Some(""), None, Refuse(Refusal::NoSelectedEntry)),
            (Some("cairn-2.0.0+3.efi"), None,
             Refuse(Refusal::NoCountPath { selected: "cairn-2.0.0+3.efi".into() })),
            // stale path from a failed load of another entry (Secure Boot case)
            (Some("cairn-1.0.0+2-1.efi"), Some("\\EFI\\Linux\\cairn-2.0.0+2-1.efi"),
             Refuse(Refusal::OtherEntry { selected: "cairn-1.0.0+2-1.efi".into(), path: "\\EFI\\Linux\\cairn-2.0.0+2-1.efi".into() })),
            // same entry, but not the rename of this attempt
            (Some("cairn-2.0.0+3.efi"), Some("\\EFI\\Linux\\cairn-2.0.0+1-2.efi"),
             Refuse(Refusal::CounterMismatch { selected: "cairn-2.0.0+3.efi".into(), path: "\\EFI\\Linux\\cairn-2.0.0+1-2.efi".into() })),
            // exhausted entry booted as last resort: systemd-boot does not rename it
            (Some("cairn-2.0.0+0-3.efi"), Some("\\EFI\\Linux\\cairn-2.0.0+0-3.efi"),
             Refuse(Refusal::CounterMismatch { selected: "cairn-2.0.0+0-3.efi".into(), path: "\\EFI\\Linux\\cairn-2.0.0+0-3.efi".into() })),
            // not a UKI / odd paths
            (Some("auto-reboot-to-firmware-setup"), None,
             Refuse(Refusal::NotAUki { selected: "auto-reboot-to-firmware-setup".into() })),
            (Some("cairn+3.conf"), None, Refuse(Refusal::NotAUki { selected: "cairn+3.conf".into() })),
            (Some("cairn-2.0.0+3.efi"), Some("\\EFI\\BOOT\\cairn-2.0.0+2-1.efi"),
             Refuse(Refusal::CountPathOutsideLinuxDir { path: "\\EFI\\BOOT\\cairn-2.0.0+2-1.efi".into() })),
            (Some("cairn-2.0.0+3.efi"), Some("\\EFI\\Linux\\sub\\cairn-2.0.0+2-1.efi"),
             Refuse(Refusal::CountPathOutsideLinuxDir { path: "\\EFI\\Linux\\sub\\cairn-2.0.0+2-1.efi".into() })),
            (Some("cairn-2.0.0+3.efi"), Some("\\EFI\\Linux\\cairn-2.0.0.efi"),
             Refuse(Refusal::CountPathNotCounted { path: "\\EFI\\Linux\\cairn-2.0.0.efi".into() })),
            (Some("cairn-2.0.0+3.efi"), Some("\\EFI\\Linux\\"),
             Refuse(Refusal::CountPathOutsideLinuxDir { path: "\\EFI\\Linux\\".into() })),
        ];
        for (sel, path, want) in cases {
            assert_eq!(decide(sel, path), want, "selected={sel:?} path={path:?}");
        }
    }

    #[test]
    fn entry_names() {
        assert_eq!(
            parse_entry("a+3.efi"),
            Some(EntryName {
                base: "a",
                counter: Some((3, 0))
            })
        );
        assert_eq!(
            parse_entry("a+0-3.efi"),
            Some(EntryName {
                base: "a",
                counter: Some((0, 3))
            })
        );
        assert_eq!(
            parse_entry("a+x.efi"),
            Some(EntryName {
                base: "a+x",
                counter: None
            })
        );
        assert_eq!(
            parse_entry("a+1-.efi"),
            Some(EntryName {
                base: "a+1-",
                counter: None
            })
        );
        assert_eq!(
            parse_entry("+3.efi"),
            Some(EntryName {
                base: "+3",
                counter: None
            })
        );
        assert_eq!(parse_entry(".efi"), None);
        assert_eq!(parse_entry("a+99999999999.efi").unwrap().counter, None);
    }

    #[test]
    fn efivar_decoding() {
        let mut raw = vec![0x06, 0, 0, 0];
        for u in "cairn-2.0.0+3.efi".encode_utf16().chain([0]) {
            raw.extend_from_slice(&u.to_le_bytes());
        }
        assert_eq!(
            decode_efivar_string(&raw).as_deref(),
            Some("cairn-2.0.0+3.efi")
        );
        raw.truncate(raw.len() - 2); // without terminator
        assert_eq!(
            decode_efivar_string(&raw).as_deref(),
            Some("cairn-2.0.0+3.efi")
        );
        assert_eq!(decode_efivar_string(&[6, 0, 0]), None);
        assert_eq!(decode_efivar_string(&[6, 0, 0, 0, 0x61]), None);
        assert_eq!(decode_efivar_string(&[6, 0, 0, 0, 0x00, 0xd8]), None); // lone surrogate
    }
}
