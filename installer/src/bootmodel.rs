//! A model of systemd-boot 252's choice among Unified Kernel Images in
//! `EFI/Linux/*.efi` when loader.conf has no `default` line (our ESP never
//! has one), and of its boot counting.
//!
//! Order (boot_entry_compare in systemd-boot 252): entries with no tries left
//! last; then by sort key (`IMAGE_ID`, else `ID` from `.osrel`; entries with
//! one before entries without); then by version (`IMAGE_VERSION`, else
//! `VERSION_ID`), higher first, compared as the UAPI version format says;
//! then by id (the file name), higher first; then more tries left first, then
//! fewer tries done first. The first entry boots.
//!
//! Counting lives in the file name: `NAME+LEFT-DONE.efi` or `NAME+LEFT.efi`.
//! Before launching an entry with LEFT > 0, systemd-boot renames it to
//! `NAME+(LEFT-1)-(DONE+1).efi`; at LEFT = 0 the entry sorts last, which is
//! what lets the previous release boot again. A name without a counter is
//! "blessed" (userspace drops the counter after a good boot).

use std::cmp::Ordering;
use std::io::{Read, Seek, Write};

use artifacts::fat::Fat32;
use artifacts::uki::Uki;

use crate::error::{fat, Result};

pub const ENTRY_DIR: &str = "EFI/Linux";

/// The removable-media path firmware boots, where systemd-boot lives.
pub const LOADER: &str = "EFI/BOOT/BOOTX64.EFI";

/// A boot counter parsed from a file name.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub struct Counter {
    pub left: u32,
    pub done: u32,
}

/// Splits `cairn-1.0.0+2-1.efi` into (`cairn-1.0.0`, counter).
/// Returns `None` for names that are not `*.efi` (case-insensitive).
pub fn parse_name(file: &str) -> Option<(String, Option<Counter>)> {
    if !file
        .get(file.len().saturating_sub(4)..)
        .is_some_and(|e| e.len() == 4 && e.eq_ignore_ascii_case(".efi"))
    {
        return None;
    }
    let stem = &file[..file.len() - 4];
    let Some(plus) = stem.rfind('+') else {
        return Some((stem.to_string(), None));
    };
    let tail = &stem[plus + 1..];
    let (l, d) = match tail.split_once('-') {
        Some((l, d)) => (l, Some(d)),
        None => (tail, None),
    };
    let digits = |s: &str| !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit());
    if !digits(l) || d.is_some_and(|d| !digits(d)) {
        // Not a counter: systemd-boot treats the whole name as the id.
        return Some((stem.to_string(), None));
    }
    let (Ok(left), Ok(done)) = (l.parse(), d.map_or(Ok(0), str::parse)) else {
        return Some((stem.to_string(), None));
    };
    Some((stem[..plus].to_string(), Some(Counter { left, done })))
}

/// The file name for `base` with `counter`.
pub fn entry_name(base: &str, counter: Option<Counter>) -> String {
    match counter {
        None => format!("{base}.efi"),
        Some(Counter { left, done: 0 }) => format!("{base}+{left}.efi"),
        Some(c) => format!("{base}+{}-{}.efi", c.left, c.done),
    }
}

/// One UKI on the ESP as systemd-boot sees it.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Entry {
    /// File name in `EFI/Linux`.
    pub file: String,
    /// File name without counter and `.efi`.
    pub base: String,
    pub counter: Option<Counter>,
    pub sort_key: Option<String>,
    pub version: Option<String>,
    /// `cairn.rootfs=` from `.cmdline`: the release's verity root hash.
    pub root_hash: Option<String>,
    pub cmdline: String,
}

impl Entry {
    pub fn blessed(&self) -> bool {
        self.counter.is_none()
    }

    pub fn exhausted(&self) -> bool {
        self.counter.is_some_and(|c| c.left == 0)
    }

    /// Builds an entry from a UKI's bytes; `None` when systemd-boot would
    /// not list it (no `.osrel`).
    pub fn from_uki(file: &str, bytes: &[u8]) -> Option<Entry> {
        let (base, counter) = parse_name(file)?;
        let path = std::path::Path::new(file);
        let osrel = Uki::section_from_bytes(path, bytes, ".osrel").ok()?;
        let cmdline = Uki::section_from_bytes(path, bytes, ".cmdline").unwrap_or_default();
        let osrel = String::from_utf8_lossy(&osrel).into_owned();
        let field = |k: &str| osrel_field(&osrel, k);
        let cmdline = String::from_utf8_lossy(&cmdline)
            .trim_end_matches(['\0', '\n', ' '])
            .to_string();
        Some(Entry {
            file: file.to_string(),
            base,
            counter,
            sort_key: field("IMAGE_ID").or_else(|| field("ID")),
            version: field("IMAGE_VERSION").or_else(|| field("VERSION_ID")),
            root_hash: cmdline_value(&cmdline, "cairn.rootfs").map(str::to_string),
            cmdline,
        })
    }
}

/// `KEY=value` from os-release text (quotes stripped).
pub fn osrel_field(osrel: &str, key: &str) -> Option<String> {
    osrel.lines().find_map(|l| {
        let (k, v) = l.trim().split_once('=')?;
        (k == key).then(|| v.trim_matches(['"', '\'']).to_string())
    })
}

/// The value of `key=` on a kernel command line.
pub fn cmdline_value<'a>(cmdline: &'a str, key: &str) -> Option<&'a str> {
    cmdline
        .split_ascii_whitespace()
        .find_map(|w| w.strip_prefix(key)?.strip_prefix('='))
}

fn vercmp(a: &str, b: &str) -> Ordering {
    uapi_version::strverscmp(a, b)
}

/// systemd-boot 252's entry order; `Less` boots first.
pub fn compare(a: &Entry, b: &Entry) -> Ordering {
    a.exhausted()
        .cmp(&b.exhausted())
        .then_with(|| a.sort_key.is_none().cmp(&b.sort_key.is_none()))
        .then_with(|| match (&a.sort_key, &b.sort_key) {
            (Some(x), Some(y)) => x.cmp(y).then_with(|| {
                vercmp(
                    b.version.as_deref().unwrap_or(""),
                    a.version.as_deref().unwrap_or(""),
                )
            }),
            _ => Ordering::Equal,
        })
        .then_with(|| vercmp(&b.file.to_ascii_lowercase(), &a.file.to_ascii_lowercase()))
        .then_with(|| match (a.counter, b.counter) {
            (Some(x), Some(y)) => y.left.cmp(&x.left).then(x.done.cmp(&y.done)),
            _ => Ordering::Equal,
        })
}

/// The ESP's entries in boot order.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct BootModel {
    pub entries: Vec<Entry>,
}

impl BootModel {
    pub fn new(mut entries: Vec<Entry>) -> BootModel {
        entries.sort_by(compare);
        BootModel { entries }
    }

    /// Reads every `EFI/Linux/*.efi` on the ESP.
    pub fn read<D: Read + Write + Seek>(esp: &mut Fat32<D>) -> Result<BootModel> {
        let listing = match esp.list(ENTRY_DIR) {
            Ok(l) => l,
            Err(artifacts::fat::FatError::NotFound { .. }) => Vec::new(),
            Err(e) => return Err(fat(format!("listing {ENTRY_DIR} on the ESP"))(e)),
        };
        let mut entries = Vec::new();
        for e in listing
            .iter()
            .filter(|e| !e.is_dir && !e.name.starts_with('.'))
        {
            if parse_name(&e.name).is_none() {
                continue;
            }
            let path = format!("{ENTRY_DIR}/{}", e.name);
            let bytes = esp
                .read_file(&path)
                .map_err(fat(format!("reading {path} on the ESP")))?;
            entries.extend(Entry::from_uki(&e.name, &bytes));
        }
        Ok(BootModel::new(entries))
    }

    /// The entry systemd-boot boots now.
    pub fn selected(&self) -> Option<&Entry> {
        self.entries.first()
    }

    /// The rename systemd-boot makes before launching the selected entry.
    pub fn boot_rename(&self) -> Option<(String, String)> {
        let e = self.selected()?;
        let c = e.counter.filter(|c| c.left > 0)?;
        let next = Counter {
            left: c.left - 1,
            done: c.done.saturating_add(1),
        };
        Some((e.file.clone(), entry_name(&e.base, Some(next))))
    }
}
