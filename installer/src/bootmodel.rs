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
//! Counting lives in the file name (`contract::esp::EntryName`): before
//! launching a counted entry systemd-boot renames it one attempt along
//! (`Counter::after_attempt`); at LEFT = 0 the entry sorts last, which is
//! what lets the previous release boot again. A name without a counter is
//! "blessed" (userspace drops the counter after a good boot).

use std::cmp::Ordering;
use std::io::{Read, Seek, Write};

use artifacts::fat::Fat32;
use artifacts::uki::Uki;

use crate::error::{fat, Result};

pub use contract::esp::{Counter, EntryName, ENTRY_DIR, LOADER};

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
        self.counter.is_some_and(Counter::exhausted)
    }

    /// Builds an entry from a UKI's bytes; `None` when systemd-boot would
    /// not list it (no `.osrel`).
    pub fn from_uki(file: &str, bytes: &[u8]) -> Option<Entry> {
        let EntryName { base, counter } = EntryName::parse(file)?;
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
            root_hash: contract::cmdline::parse(&cmdline)
                .ok()
                .and_then(|c| c.rootfs)
                .map(|h| contract::cmdline::hex(&h)),
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
            if EntryName::parse(&e.name).is_none() {
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

    /// The rename systemd-boot makes before launching the selected entry:
    /// every counted entry, an exhausted last resort too (its done count
    /// goes up), as init's blessing expects (one model, `Counter::after_attempt`).
    pub fn boot_rename(&self) -> Option<(String, String)> {
        let e = self.selected()?;
        let next = e.counter?.after_attempt();
        Some((
            e.file.clone(),
            EntryName::new(&e.base, Some(next)).file_name(),
        ))
    }
}
