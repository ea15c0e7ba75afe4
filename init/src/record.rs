//! Small text formats init reads and writes: os-release values, the
//! stage-1 → stage-2 hand-over file, and the boot record in STATE.

/// Value of `key` in an os-release file (quotes removed, later lines win).
pub fn os_release_value(text: &str, key: &str) -> Option<String> {
    let mut found = None;
    for l in text.lines() {
        let l = l.trim();
        if l.starts_with('#') {
            continue;
        }
        if let Some((k, v)) = l.split_once('=') {
            if k.trim() == key {
                let v = v.trim();
                let v = v
                    .strip_prefix('"')
                    .and_then(|v| v.strip_suffix('"'))
                    .or_else(|| v.strip_prefix('\'').and_then(|v| v.strip_suffix('\'')))
                    .unwrap_or(v);
                found = Some(v.to_string());
            }
        }
    }
    found
}

/// What stage 1 hands to stage 2 in /run/cairn/boot.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Handover {
    /// Whole-disk device the rootfs came from, e.g. `/dev/vda`.
    pub disk: String,
    /// GPT label of the root partition, e.g. `BOOT-A`.
    pub slot_label: String,
    /// Partition device, e.g. `/dev/vda2`.
    pub partition: String,
}

impl Handover {
    pub fn to_text(&self) -> String {
        format!(
            "disk={}\nslot={}\npartition={}\n",
            self.disk, self.slot_label, self.partition
        )
    }
    pub fn parse(text: &str) -> Option<Handover> {
        let get = |k: &str| {
            text.lines()
                .find_map(|l| l.strip_prefix(k)?.strip_prefix('='))
                .map(str::to_string)
        };
        Some(Handover {
            disk: get("disk")?,
            slot_label: get("slot")?,
            partition: get("partition")?,
        })
    }
    /// `A` for `BOOT-A`; the label itself for anything unexpected.
    pub fn slot(&self) -> &str {
        self.slot_label
            .strip_prefix("BOOT-")
            .unwrap_or(&self.slot_label)
    }
}

/// One line of /system/state/boots.log.
pub fn boot_line(number: u64, slot: &str, version: &str, result: &str) -> String {
    let clean = |s: &str| s.replace(['\n', '\r'], " ");
    format!(
        "boot={number} slot={} version={} result={}\n",
        clean(slot),
        clean(version),
        clean(result)
    )
}

/// The number of the boot after those recorded in `log`.
pub fn next_boot_number(log: &str) -> u64 {
    log.lines()
        .filter_map(|l| {
            l.strip_prefix("boot=")?
                .split(' ')
                .next()?
                .parse::<u64>()
                .ok()
        })
        .max()
        .map_or(1, |n| n + 1)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn os_release() {
        let t = "ID=cairn\nVERSION_ID=\"1.2.3\"\n# VERSION_ID=9\nNAME='Cairn OS'\n";
        assert_eq!(os_release_value(t, "VERSION_ID").as_deref(), Some("1.2.3"));
        assert_eq!(os_release_value(t, "NAME").as_deref(), Some("Cairn OS"));
        assert_eq!(os_release_value(t, "ID").as_deref(), Some("cairn"));
        assert_eq!(os_release_value(t, "VERSION"), None);
    }

    #[test]
    fn handover_round_trip() {
        let h = Handover {
            disk: "/dev/vda".into(),
            slot_label: "BOOT-B".into(),
            partition: "/dev/vda3".into(),
        };
        assert_eq!(Handover::parse(&h.to_text()), Some(h.clone()));
        assert_eq!(h.slot(), "B");
        assert_eq!(Handover::parse("disk=/dev/vda\n"), None);
    }

    #[test]
    fn boot_log() {
        assert_eq!(next_boot_number(""), 1);
        let log = boot_line(1, "A", "1.0.0", "ok") + &boot_line(7, "B", "2.0.0", "failed: x\ny");
        assert_eq!(log, "boot=1 slot=A version=1.0.0 result=ok\nboot=7 slot=B version=2.0.0 result=failed: x y\n");
        assert_eq!(next_boot_number(&log), 8);
        assert_eq!(next_boot_number("garbage\nboot=x\n"), 1);
    }
}
