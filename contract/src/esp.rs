//! The EFI system partition (docs/design.md "ESP content"): where systemd-boot
//! and the UKIs live, and the boot-counting file names systemd-boot renames
//! on every attempt. The one parser of those names: init blesses with it, the
//! installer models systemd-boot's choice with it.

/// The removable-media path firmware boots, where systemd-boot lives.
pub const LOADER: &str = "EFI/BOOT/BOOTX64.EFI";

/// systemd-boot's configuration file and its whole content: no `default`
/// line, because a default pattern matches exhausted entries and disables
/// fallback (shared notes).
pub const LOADER_CONF: &str = "loader/loader.conf";
pub const LOADER_CONF_TEXT: &str = "timeout 0\n";

/// Where UKIs live (Boot Loader Specification type #2 entries).
pub const ENTRY_DIR: &str = "EFI/Linux";

/// The machine config the installer leaves for init to import on first boot.
pub const MACHINE_CONFIG: &str = "cairn/machine.toml";

/// Every UKI of a release is `cairn-<version>[+counter].efi`.
pub const ENTRY_PREFIX: &str = "cairn-";

/// Tries a new release gets before systemd-boot falls back.
pub const NEW_ENTRY_TRIES: u32 = 3;

/// systemd-boot's vendor GUID for `LoaderEntrySelected`,
/// `LoaderBootCountPath` and `LoaderDevicePartUUID`.
pub const LOADER_VENDOR_GUID: &str = "4a67b082-0a4c-41cf-b6c7-440b29bb8c4f";

/// The installer media's UKI (blessed: install media never counts boots).
pub fn installer_entry(version: &str) -> String {
    format!("{ENTRY_DIR}/{ENTRY_PREFIX}installer-{version}.efi")
}

/// The entry file name's base for a release version (`cairn-1.2.3`).
pub fn entry_base(version: &str) -> String {
    format!("{ENTRY_PREFIX}{version}")
}

/// The version in an entry base, if it is one of ours.
pub fn version_of(base: &str) -> Option<&str> {
    base.strip_prefix(ENTRY_PREFIX).filter(|v| !v.is_empty())
}

/// A boot counter: `+LEFT-DONE` (or `+LEFT`, done = 0) before `.efi`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, serde::Serialize)]
pub struct Counter {
    pub left: u32,
    pub done: u32,
}

impl Counter {
    /// A new, unblessed release.
    pub const NEW: Counter = Counter {
        left: NEW_ENTRY_TRIES,
        done: 0,
    };

    /// No tries left: systemd-boot sorts the entry last, which is what lets
    /// the previous release boot again. Booted only as the last resort.
    pub fn exhausted(self) -> bool {
        self.left == 0
    }

    /// The counter systemd-boot (252) writes before launching the entry: one
    /// try fewer (never below 0: an exhausted last resort keeps 0 left and
    /// only counts the attempt) and one more done.
    pub fn after_attempt(self) -> Counter {
        Counter {
            left: self.left.saturating_sub(1),
            done: self.done.saturating_add(1),
        }
    }
}

/// A UKI file name in `EFI/Linux`, split into the entry's identity and the
/// counter systemd-boot rewrites. `None` counter: blessed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EntryName {
    pub base: String,
    pub counter: Option<Counter>,
}

fn digits(s: &str) -> Option<u32> {
    if s.is_empty() || !s.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    s.parse().ok()
}

impl EntryName {
    /// Parses `NAME[+LEFT[-DONE]].efi`; `.efi` in any case, as FAT and
    /// systemd-boot treat it. A `+` not followed by a valid counter is part of
    /// the name (versions may carry `+build` metadata), and so is a counter
    /// with an empty name before it. `None`: not a UKI file name.
    pub fn parse(file: &str) -> Option<EntryName> {
        // Byte-level suffix check: `file` may hold any UTF-8 (a stray file
        // on the ESP), so never slice at a byte offset that is not ASCII.
        let split = file.len().checked_sub(4)?;
        if !file.is_char_boundary(split) || !file[split..].eq_ignore_ascii_case(".efi") {
            return None;
        }
        let stem = &file[..split];
        if stem.is_empty() {
            return None;
        }
        if let Some((base, ctr)) = stem.rsplit_once('+') {
            let parsed = match ctr.split_once('-') {
                Some((l, d)) => digits(l).zip(digits(d)),
                None => digits(ctr).map(|l| (l, 0)),
            };
            if let (Some((left, done)), false) = (parsed, base.is_empty()) {
                return Some(EntryName {
                    base: base.to_string(),
                    counter: Some(Counter { left, done }),
                });
            }
        }
        Some(EntryName {
            base: stem.to_string(),
            counter: None,
        })
    }

    pub fn new(base: &str, counter: Option<Counter>) -> EntryName {
        EntryName {
            base: base.to_string(),
            counter,
        }
    }

    pub fn blessed(&self) -> bool {
        self.counter.is_none()
    }

    pub fn exhausted(&self) -> bool {
        self.counter.is_some_and(Counter::exhausted)
    }

    /// The file name, `.efi` lower case.
    pub fn file_name(&self) -> String {
        match self.counter {
            None => format!("{}.efi", self.base),
            Some(Counter { left, done: 0 }) => format!("{}+{left}.efi", self.base),
            Some(c) => format!("{}+{}-{}.efi", self.base, c.left, c.done),
        }
    }

    /// The same entry with another counter (`None`: blessed).
    pub fn with_counter(&self, counter: Option<Counter>) -> EntryName {
        EntryName {
            base: self.base.clone(),
            counter,
        }
    }
}

impl std::fmt::Display for EntryName {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.file_name())
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

/// The file name in `EFI/Linux` that a loader path (`\EFI\Linux\x.efi`, any
/// case, either slash) names, with the directory part as written. `None` when
/// the path is anywhere else.
pub fn entry_in_linux_dir(path: &str) -> Option<(String, String)> {
    let norm = path.replace('\\', "/");
    let rel = norm.trim_start_matches('/');
    let (a, rest) = rel.split_once('/')?;
    let (b, file) = rest.split_once('/')?;
    if !a.eq_ignore_ascii_case("EFI") || !b.eq_ignore_ascii_case("Linux") || file.contains('/') {
        return None;
    }
    if file.is_empty() {
        return None;
    }
    Some((format!("{a}/{b}"), file.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(s: &str) -> Option<(String, Option<(u32, u32)>)> {
        EntryName::parse(s).map(|e| (e.base, e.counter.map(|c| (c.left, c.done))))
    }

    #[test]
    fn names_round_trip() {
        for name in ["a.efi", "a+3.efi", "a+0-3.efi", "cairn-2.0.0+git5+2-1.efi"] {
            assert_eq!(EntryName::parse(name).unwrap().file_name(), name);
        }
        assert_eq!(p("a+3.efi"), Some(("a".into(), Some((3, 0)))));
        assert_eq!(p("a+0-3.efi"), Some(("a".into(), Some((0, 3)))));
        assert_eq!(p("a+x.efi"), Some(("a+x".into(), None)));
        assert_eq!(p("a+1-.efi"), Some(("a+1-".into(), None)));
        assert_eq!(p("+3.efi"), Some(("+3".into(), None)));
        assert_eq!(p(".efi"), None);
        assert_eq!(p("a.conf"), None);
        assert_eq!(p("a+99999999999.efi").unwrap().1, None);
    }

    #[test]
    fn efi_suffix_in_any_case() {
        assert_eq!(p("A+2-1.EFI"), Some(("A".into(), Some((2, 1)))));
        assert_eq!(p("a.Efi"), Some(("a".into(), None)));
    }

    #[test]
    fn utf8_names_never_panic() {
        // the 4th byte from the end inside a multi-byte character
        for name in ["é", "aé", "ééé", "xé.ef", "cairn-é.efi", "日本.efi", "€fi"] {
            let _ = EntryName::parse(name);
        }
        assert_eq!(p("cairn-é.efi"), Some(("cairn-é".into(), None)));
    }

    #[test]
    fn counters_step_as_systemd_boot_does() {
        assert_eq!(Counter::NEW.after_attempt(), Counter { left: 2, done: 1 });
        let last = Counter { left: 0, done: 3 };
        assert!(last.exhausted());
        assert_eq!(last.after_attempt(), Counter { left: 0, done: 4 });
    }

    #[test]
    fn linux_dir_paths() {
        let e = |s| entry_in_linux_dir(s);
        assert_eq!(
            e("\\EFI\\Linux\\x+2-1.efi"),
            Some(("EFI/Linux".into(), "x+2-1.efi".into()))
        );
        assert_eq!(
            e("\\efi\\linux\\x.efi"),
            Some(("efi/linux".into(), "x.efi".into()))
        );
        assert_eq!(e("\\EFI\\BOOT\\x.efi"), None);
        assert_eq!(e("\\EFI\\Linux\\sub\\x.efi"), None);
        assert_eq!(e("\\EFI\\Linux\\"), None);
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
        raw.truncate(raw.len() - 2);
        assert_eq!(
            decode_efivar_string(&raw).as_deref(),
            Some("cairn-2.0.0+3.efi")
        );
        assert_eq!(decode_efivar_string(&[6, 0, 0]), None);
        assert_eq!(decode_efivar_string(&[6, 0, 0, 0, 0x61]), None);
        assert_eq!(decode_efivar_string(&[6, 0, 0, 0, 0x00, 0xd8]), None);
    }
}
