//! Boot blessing: deciding whether (and which) UKI to rename so systemd-boot
//! stops counting it down. The decision is pure; `efivar` decoding and the
//! rename itself live at the edges.

use contract::esp::{entry_in_linux_dir, EntryName};

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
/// systemd-boot chose; `count_path` is the file it renamed before launching
/// (`\EFI\Linux\cairn-2.0.0+2-1.efi`).
///
/// systemd-boot 252 reports `selected` with the counter as it was before the
/// rename (`cairn-2.0.0+3.efi`): then only a count path exactly one attempt
/// further along that counter may be renamed, since anything else could bless
/// an entry that did not boot (after a failed Secure Boot load the variable
/// points at the failure). Newer systemd-boot drops the counter from
/// `selected` (`cairn-2.0.0.efi`): then the count path decides, if it names
/// the same entry; the caller checks that file exists and that no blessed
/// file of that name does (an uncounted `selected` may also mean the booted
/// entry was blessed all along and the count path is stale).
pub fn decide(selected: Option<&str>, count_path: Option<&str>) -> Decision {
    let Some(selected) = selected.filter(|s| !s.is_empty()) else {
        return Decision::Refuse(Refusal::NoSelectedEntry);
    };
    let Some(sel) = EntryName::parse(selected).filter(|_| !selected.contains(['/', '\\'])) else {
        return Decision::Refuse(Refusal::NotAUki {
            selected: selected.into(),
        });
    };
    let Some(path) = count_path.filter(|p| !p.is_empty()) else {
        return match sel.counter {
            // blessed, or a newer systemd-boot booting a blessed entry
            None => Decision::AlreadyBlessed,
            Some(_) => Decision::Refuse(Refusal::NoCountPath {
                selected: selected.into(),
            }),
        };
    };
    let Some((dir, file)) = entry_in_linux_dir(path) else {
        return match sel.counter {
            None => Decision::AlreadyBlessed,
            Some(_) => Decision::Refuse(Refusal::CountPathOutsideLinuxDir { path: path.into() }),
        };
    };
    let cur = EntryName::parse(&file);
    let Some((cur, now)) = cur.as_ref().and_then(|c| Some((c, c.counter?))) else {
        return match sel.counter {
            None => Decision::AlreadyBlessed,
            Some(_) => Decision::Refuse(Refusal::CountPathNotCounted { path: path.into() }),
        };
    };
    if cur.base != sel.base {
        return match sel.counter {
            // A blessed entry booted; the count path is left over from a
            // failed attempt at another entry in this power-on.
            None => Decision::AlreadyBlessed,
            Some(_) => Decision::Refuse(Refusal::OtherEntry {
                selected: selected.into(),
                path: path.into(),
            }),
        };
    }
    if let Some(before) = sel.counter {
        if now != before.after_attempt() {
            return Decision::Refuse(Refusal::CounterMismatch {
                selected: selected.into(),
                path: path.into(),
            });
        }
    }
    Decision::Rename {
        from: format!("{dir}/{file}"),
        to: format!("{dir}/{}", cur.with_counter(None).file_name()),
    }
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

    /// Newer systemd-boot reports LoaderEntrySelected without the counter
    /// suffix. Before this fix init took an uncounted selected entry for a
    /// blessed one, never blessed the new release, and systemd-boot fell back
    /// after three healthy boots.
    #[test]
    fn finding_5_bless_without_counter_in_loader_entry_selected() {
        use Decision::*;
        #[rustfmt::skip]
        let cases: Vec<(Option<&str>, Option<&str>, Decision)> = vec![
            (Some("cairn-2.0.0.efi"), Some("\\EFI\\Linux\\cairn-2.0.0+2-1.efi"),
             rename("EFI/Linux/cairn-2.0.0+2-1.efi", "EFI/Linux/cairn-2.0.0.efi")),
            (Some("cairn-2.0.0.efi"), Some("\\EFI\\Linux\\cairn-2.0.0+0-1.efi"),
             rename("EFI/Linux/cairn-2.0.0+0-1.efi", "EFI/Linux/cairn-2.0.0.efi")),
            (Some("cairn-2.0.0+git5.efi"), Some("\\EFI\\Linux\\cairn-2.0.0+git5+1-2.efi"),
             rename("EFI/Linux/cairn-2.0.0+git5+1-2.efi", "EFI/Linux/cairn-2.0.0+git5.efi")),
            // blessed entry booted; count path stale from another entry's failed load
            (Some("cairn-1.0.0.efi"), Some("\\EFI\\Linux\\cairn-2.0.0+2-1.efi"), AlreadyBlessed),
            (Some("cairn-1.0.0.efi"), Some("\\EFI\\BOOT\\x.efi"), AlreadyBlessed),
            (Some("cairn-1.0.0.efi"), Some("\\EFI\\Linux\\cairn-1.0.0.efi"), AlreadyBlessed),
        ];
        for (sel, path, want) in cases {
            assert_eq!(decide(sel, path), want, "selected={sel:?} path={path:?}");
        }
    }
}
