//! The systemd-boot 252 model on its own: names, counters, order.

use installer::bootmodel::{compare, BootModel, Counter, Entry, EntryName};

fn parse_name(file: &str) -> Option<(String, Option<Counter>)> {
    EntryName::parse(file).map(|e| (e.base, e.counter))
}

fn entry_name(base: &str, counter: Option<Counter>) -> String {
    EntryName::new(base, counter).file_name()
}

fn entry(file: &str, version: &str) -> Entry {
    let (base, counter) = parse_name(file).unwrap();
    Entry {
        file: file.into(),
        base,
        counter,
        sort_key: Some("cairn".into()),
        version: Some(version.into()),
        root_hash: None,
        cmdline: String::new(),
    }
}

#[test]
fn counters_parse_like_systemd_boot() {
    let c = |l, d| Some(Counter { left: l, done: d });
    assert_eq!(
        parse_name("cairn-1.0.0+3.efi"),
        Some(("cairn-1.0.0".into(), c(3, 0)))
    );
    assert_eq!(
        parse_name("cairn-1.0.0+2-1.efi"),
        Some(("cairn-1.0.0".into(), c(2, 1)))
    );
    assert_eq!(
        parse_name("cairn-1.0.0+0-3.EFI"),
        Some(("cairn-1.0.0".into(), c(0, 3)))
    );
    assert_eq!(
        parse_name("cairn-1.0.0.efi"),
        Some(("cairn-1.0.0".into(), None))
    );
    // Not a counter: the '+' part is part of the id.
    assert_eq!(parse_name("a+b.efi"), Some(("a+b".into(), None)));
    assert_eq!(parse_name("a+1-x.efi"), Some(("a+1-x".into(), None)));
    assert_eq!(parse_name("a+.efi"), Some(("a+".into(), None)));
    // a counter with no name before it is part of the name (init agrees)
    assert_eq!(parse_name("+3.efi"), Some(("+3".into(), None)));
    // Not an entry at all.
    assert_eq!(parse_name("cairn-1.0.0+3.tmp"), None);
    assert_eq!(parse_name("efi"), None);
    assert_eq!(entry_name("x", c(3, 0)), "x+3.efi");
    assert_eq!(entry_name("x", c(2, 1)), "x+2-1.efi");
    assert_eq!(entry_name("x", None), "x.efi");
}

#[test]
fn newest_first_exhausted_last() {
    let m = BootModel::new(vec![
        entry("cairn-1.9.0.efi", "1.9.0"),
        entry("cairn-1.10.0+0-3.efi", "1.10.0"),
        entry("cairn-1.10.0-rc1+3.efi", "1.10.0-rc1"),
    ]);
    let order: Vec<_> = m.entries.iter().map(|e| e.file.as_str()).collect();
    assert_eq!(
        order,
        [
            "cairn-1.10.0-rc1+3.efi",
            "cairn-1.9.0.efi",
            "cairn-1.10.0+0-3.efi"
        ]
    );
    // Version compares numerically, not as text.
    assert!(compare(&entry("a.efi", "1.10.0"), &entry("b.efi", "1.9.0")).is_lt());
    // An entry with a sort key goes before one without.
    let mut bare = entry("zzz.efi", "9.9.9");
    bare.sort_key = None;
    assert!(compare(&entry("a.efi", "0.1"), &bare).is_lt());
}

#[test]
fn three_failed_boots_fall_back() {
    let mut m = BootModel::new(vec![
        entry("cairn-1.0.0.efi", "1.0.0"),
        entry("cairn-2.0.0+3.efi", "2.0.0"),
    ]);
    let mut seen = Vec::new();
    for _ in 0..4 {
        let chosen = m.selected().unwrap().clone();
        seen.push(chosen.file.clone());
        if let Some((from, to)) = m.boot_rename() {
            let mut es = m.entries.clone();
            let e = es.iter_mut().find(|e| e.file == from).unwrap();
            *e = Entry {
                file: to.clone(),
                counter: parse_name(&to).unwrap().1,
                ..e.clone()
            };
            m = BootModel::new(es);
        }
    }
    assert_eq!(
        seen,
        [
            "cairn-2.0.0+3.efi",
            "cairn-2.0.0+2-1.efi",
            "cairn-2.0.0+1-2.efi",
            "cairn-1.0.0.efi"
        ]
    );
    assert_eq!(m.entries[1].file, "cairn-2.0.0+0-3.efi");
    // A blessed entry is never renamed.
    assert_eq!(m.boot_rename(), None);
}
