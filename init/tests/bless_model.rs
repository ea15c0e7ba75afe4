//! Finding 5 of the safety review: init's blessing and the installer's model
//! of systemd-boot parsed boot counters with two parsers that disagreed
//! (`.EFI` in upper case, a counter with an empty name) and modelled an
//! exhausted entry differently (init renamed `+0` to `+0-1`, the model said
//! systemd-boot leaves it). Both now use `contract::esp`; these tests hold
//! the two sides against each other.

use cairn_init::bless::{decide, Decision};
use installer::bootmodel::{BootModel, Counter, Entry, EntryName};

fn entry(file: &str, version: &str) -> Entry {
    let name = EntryName::parse(file).expect("a UKI name");
    Entry {
        file: file.into(),
        base: name.base,
        counter: name.counter,
        sort_key: Some("cairn".into()),
        version: Some(version.into()),
        root_hash: None,
        cmdline: String::new(),
    }
}

/// What init decides after systemd-boot (as the installer models it) booted
/// the model's first entry, with systemd-boot 252's variables.
fn bless_after_boot(model: &BootModel) -> Decision {
    let booted = model.selected().expect("an entry boots");
    let count_path = model
        .boot_rename()
        .map(|(_, to)| format!("\\EFI\\Linux\\{to}"));
    decide(Some(&booted.file), count_path.as_deref())
}

#[test]
fn finding_5_one_counter_parser() {
    for (file, version) in [
        ("cairn-2.0.0+3.efi", "2.0.0"),
        ("cairn-2.0.0+3.EFI", "2.0.0"),
        ("cairn-2.0.0+1-2.Efi", "2.0.0"),
        ("cairn-2.0.0+git5+2-1.efi", "2.0.0+git5"),
    ] {
        let model = BootModel::new(vec![
            entry(file, version),
            entry("cairn-1.0.0.efi", "1.0.0"),
        ]);
        let (from, to) = model.boot_rename().expect("a counted entry is renamed");
        assert_eq!(from, file);
        match bless_after_boot(&model) {
            Decision::Rename { from: f, to: t } => {
                assert_eq!(f, format!("EFI/Linux/{to}"), "{file}");
                let blessed = EntryName::parse(&t.replace("EFI/Linux/", "")).unwrap();
                assert!(blessed.blessed(), "{file} -> {t}");
                assert_eq!(blessed.base, model.selected().unwrap().base, "{file}");
            }
            other => panic!("{file}: init would not bless what the model boots: {other:?}"),
        }
    }
    // a counter with no name is a name to both sides, never a counted entry
    assert_eq!(EntryName::parse("+3.efi").unwrap().counter, None);
    assert_eq!(
        decide(Some("+3.efi"), Some("\\EFI\\Linux\\+2-1.efi")),
        Decision::AlreadyBlessed
    );
}

#[test]
fn finding_5_exhausted_entry_same_model() {
    // Only an exhausted entry left: systemd-boot boots it as the last resort
    // and counts the attempt (+0 -> +0-1); init blesses it when healthy.
    let model = BootModel::new(vec![entry("cairn-2.0.0+0.efi", "2.0.0")]);
    assert_eq!(
        model.boot_rename(),
        Some(("cairn-2.0.0+0.efi".into(), "cairn-2.0.0+0-1.efi".into()))
    );
    assert_eq!(
        bless_after_boot(&model),
        Decision::Rename {
            from: "EFI/Linux/cairn-2.0.0+0-1.efi".into(),
            to: "EFI/Linux/cairn-2.0.0.efi".into()
        }
    );
    assert!(Counter { left: 0, done: 1 }.exhausted());
}
