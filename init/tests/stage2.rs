//! Stage-2 steps that touch files, run against image files and temporary
//! directories: the format rule with the real e2fsprogs, the first-boot
//! config import, and the blessing rename.

use cairn_init::error::BootError;
use cairn_init::stage2::{bless_boot, load_config, prepare_fs, Prepared};
use contract::esp::LOADER_VENDOR_GUID as LOADER_GUID;
use std::path::Path;
use std::process::Command;

fn tool(cmd: &str, args: &[&str]) -> (i32, String) {
    let o = Command::new(cmd)
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("{cmd} (e2fsprogs) must be installed: {e}"));
    (
        o.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&o.stdout).into_owned() + &String::from_utf8_lossy(&o.stderr),
    )
}

#[test]
fn format_rule_with_e2fsprogs() {
    let d = tempfile::tempdir().unwrap();
    let img = d.path().join("state.img");
    std::fs::File::create(&img)
        .unwrap()
        .set_len(32 << 20)
        .unwrap();
    // zeroed: formatted as ext4 with the label
    assert_eq!(prepare_fs(&img, "STATE").unwrap(), Prepared::Formatted);
    let (code, out) = tool("dumpe2fs", &["-h", img.to_str().unwrap()]);
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("Filesystem volume name:   STATE"), "{out}");
    assert!(out.contains("extent"), "{out}");
    // ext4 now: checked, not reformatted (the UUID survives)
    let uuid = |o: &str| {
        o.lines()
            .find(|l| l.starts_with("Filesystem UUID:"))
            .unwrap()
            .to_string()
    };
    assert_eq!(prepare_fs(&img, "STATE").unwrap(), Prepared::Checked(0));
    let (_, after) = tool("dumpe2fs", &["-h", img.to_str().unwrap()]);
    assert_eq!(uuid(&out), uuid(&after));
    // "not clean" state: e2fsck -p runs a full check and still succeeds
    let (code, o) = tool(
        "debugfs",
        &["-w", "-R", "ssv state 0", img.to_str().unwrap()],
    );
    assert_eq!(code, 0, "{o}");
    assert!(matches!(
        prepare_fs(&img, "STATE").unwrap(),
        Prepared::Checked(0..=1)
    ));

    // anything else: stop, name the partition, leave every byte alone
    let junk = d.path().join("junk.img");
    let mut bytes = vec![0u8; 4 << 20];
    bytes[300_000] = 0x42;
    std::fs::write(&junk, &bytes).unwrap();
    let e = prepare_fs(&junk, "EPHEMERAL").unwrap_err();
    assert!(matches!(e, BootError::Stop(_)));
    let msg = e.to_string();
    assert!(
        msg.starts_with(&format!(
            "EPHEMERAL ({}): found unrecognised non-zero data at offset 300000",
            junk.display()
        )),
        "{msg}"
    );
    assert_eq!(std::fs::read(&junk).unwrap(), bytes);

    // a filesystem e2fsck cannot handle is refused, not formatted
    let bad = d.path().join("bad.img");
    std::fs::write(&bad, std::fs::read(&img).unwrap()).unwrap();
    let mut b = std::fs::read(&bad).unwrap();
    b[1024 + 0x18..1024 + 0x1c].copy_from_slice(&40u32.to_le_bytes()); // absurd s_log_block_size
    std::fs::write(&bad, &b).unwrap();
    let e = prepare_fs(&bad, "STATE").unwrap_err().to_string();
    assert!(
        e.contains("e2fsck -p exited with") && e.contains("not formatting"),
        "{e}"
    );
    assert_eq!(std::fs::read(&bad).unwrap(), b);

    let e = prepare_fs(&d.path().join("missing"), "STATE")
        .unwrap_err()
        .to_string();
    assert!(e.starts_with("reading the first MiB of STATE ("), "{e}");
}

const CFG: &str = "hostname = \"n1\"\n[[service]]\nname = \"a\"\nexec = \"/bin/true\"\n";

#[test]
fn first_boot_imports_config_then_removes_transient_copy() {
    let run = |root: &Path| {
        let state = root.join("state/config/machine.toml");
        let esp = root.join("esp/cairn/machine.toml");
        std::fs::create_dir_all(esp.parent().unwrap()).unwrap();
        std::fs::write(&esp, CFG).unwrap();
        let c = load_config(&state, &esp).unwrap();
        assert_eq!(c.hostname.as_deref(), Some("n1"));
        assert!(!esp.exists(), "transient copy must be removed");
        assert!(!state.with_file_name("machine.toml.new").exists());
        // second boot: read from STATE alone
        assert_eq!(load_config(&state, &esp).unwrap(), c);
        std::fs::read(&state).unwrap()
    };
    let (a, b) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let (x, y) = (run(a.path()), run(b.path()));
    assert_eq!(x, y);
    assert_eq!(x, CFG.as_bytes());
}

/// A config stored in STATE (imported earlier, or applied through the node
/// API) is never replaced by a file found on the ESP later.
#[test]
fn stored_config_wins_over_a_later_esp_copy() {
    let d = tempfile::tempdir().unwrap();
    let state = d.path().join("state/config/machine.toml");
    let esp = d.path().join("esp/cairn/machine.toml");
    std::fs::create_dir_all(state.parent().unwrap()).unwrap();
    std::fs::create_dir_all(esp.parent().unwrap()).unwrap();
    std::fs::write(&state, "hostname = \"applied\"\n").unwrap();
    std::fs::write(&esp, CFG).unwrap();
    let c = load_config(&state, &esp).unwrap();
    assert_eq!(c.hostname.as_deref(), Some("applied"));
    assert_eq!(
        std::fs::read_to_string(&state).unwrap(),
        "hostname = \"applied\"\n"
    );
}

#[test]
fn broken_transient_config_is_not_imported() {
    let d = tempfile::tempdir().unwrap();
    let state = d.path().join("state/config/machine.toml");
    let esp = d.path().join("esp/cairn/machine.toml");
    std::fs::create_dir_all(esp.parent().unwrap()).unwrap();
    std::fs::write(&esp, "hostname = \"n1\"\n[[service]\n").unwrap();
    let e = load_config(&state, &esp).unwrap_err().to_string();
    assert!(e.contains("machine.toml:2:"), "{e}");
    assert!(esp.exists() && !state.exists());
    // no config anywhere: defaults
    std::fs::remove_file(&esp).unwrap();
    assert_eq!(load_config(&state, &esp).unwrap(), Default::default());
}

fn efivar(dir: &Path, name: &str, value: &str) {
    let mut raw = vec![6, 0, 0, 0];
    for u in value.encode_utf16().chain([0]) {
        raw.extend_from_slice(&u.to_le_bytes());
    }
    std::fs::write(dir.join(format!("{name}-{LOADER_GUID}")), raw).unwrap();
}

fn esp_with(files: &[&str]) -> tempfile::TempDir {
    let d = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(d.path().join("esp/EFI/Linux")).unwrap();
    std::fs::create_dir_all(d.path().join("vars")).unwrap();
    for f in files {
        std::fs::write(d.path().join("esp/EFI/Linux").join(f), f.as_bytes()).unwrap();
    }
    d
}

fn listing(d: &Path) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(d.join("esp/EFI/Linux"))
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    v.sort();
    v
}

#[test]
fn blessing_renames_only_the_booted_entry() {
    let bless_once = || {
        let d = esp_with(&["cairn-1.0.0.efi", "cairn-2.0.0+2-1.efi"]);
        efivar(
            &d.path().join("vars"),
            "LoaderEntrySelected",
            "cairn-2.0.0+3.efi",
        );
        efivar(
            &d.path().join("vars"),
            "LoaderBootCountPath",
            "\\EFI\\Linux\\cairn-2.0.0+2-1.efi",
        );
        assert!(bless_boot(&d.path().join("esp"), &d.path().join("vars")).unwrap());
        assert_eq!(listing(d.path()), ["cairn-1.0.0.efi", "cairn-2.0.0.efi"]);
        // content is the file that was booted
        let moved = std::fs::read(d.path().join("esp/EFI/Linux/cairn-2.0.0.efi")).unwrap();
        assert_eq!(moved, b"cairn-2.0.0+2-1.efi");
        // blessing again is a no-op once the variables say so
        efivar(
            &d.path().join("vars"),
            "LoaderEntrySelected",
            "cairn-2.0.0.efi",
        );
        assert!(bless_boot(&d.path().join("esp"), &d.path().join("vars")).unwrap());
        assert_eq!(listing(d.path()), ["cairn-1.0.0.efi", "cairn-2.0.0.efi"]);
        d
    };
    let (a, b) = (bless_once(), bless_once());
    assert_eq!(listing(a.path()), listing(b.path()));
}

/// Blesses with systemd-boot's two variables set to `selected`/`count`.
fn bless_with(files: &[&str], selected: &str, count: &str) -> (tempfile::TempDir, bool) {
    let d = esp_with(files);
    let vars = d.path().join("vars");
    efivar(&vars, "LoaderEntrySelected", selected);
    efivar(&vars, "LoaderBootCountPath", count);
    let blessed = bless_boot(&d.path().join("esp"), &vars).unwrap();
    (d, blessed)
}

/// Newer systemd-boot drops the counter from LoaderEntrySelected; the
/// booted entry is still blessed, found through LoaderBootCountPath.
#[test]
fn finding_5_blessing_with_selected_entry_stripped_of_its_counter() {
    let count = "\\EFI\\Linux\\cairn-2.0.0+2-1.efi";
    let booted = ["cairn-1.0.0.efi", "cairn-2.0.0+2-1.efi"];
    let (d, blessed) = bless_with(&booted, "cairn-2.0.0.efi", count);
    assert!(blessed);
    assert_eq!(listing(d.path()), ["cairn-1.0.0.efi", "cairn-2.0.0.efi"]);
    // a count path naming no file renames nothing
    let (d, blessed) = bless_with(&["cairn-1.0.0.efi"], "cairn-2.0.0.efi", count);
    assert!(!blessed);
    assert_eq!(listing(d.path()), ["cairn-1.0.0.efi"]);
}

#[test]
fn stale_or_missing_variables_rename_nothing() {
    // fell back to the blessed 1.0.0 after 2.0.0 failed to load: stale count path
    let d = esp_with(&["cairn-1.0.0.efi", "cairn-2.0.0+2-1.efi"]);
    efivar(
        &d.path().join("vars"),
        "LoaderEntrySelected",
        "cairn-1.0.0.efi",
    );
    efivar(
        &d.path().join("vars"),
        "LoaderBootCountPath",
        "\\EFI\\Linux\\cairn-2.0.0+2-1.efi",
    );
    assert!(bless_boot(&d.path().join("esp"), &d.path().join("vars")).unwrap());
    assert_eq!(
        listing(d.path()),
        ["cairn-1.0.0.efi", "cairn-2.0.0+2-1.efi"]
    );

    // no variables at all (no efivarfs, or not booted by systemd-boot)
    let d = esp_with(&["cairn-2.0.0+2-1.efi"]);
    assert!(!bless_boot(&d.path().join("esp"), &d.path().join("vars")).unwrap());
    assert_eq!(listing(d.path()), ["cairn-2.0.0+2-1.efi"]);

    // the blessed name is taken: never overwrite a UKI
    let d = esp_with(&["cairn-2.0.0.efi", "cairn-2.0.0+2-1.efi"]);
    efivar(
        &d.path().join("vars"),
        "LoaderEntrySelected",
        "cairn-2.0.0+3.efi",
    );
    efivar(
        &d.path().join("vars"),
        "LoaderBootCountPath",
        "\\EFI\\Linux\\cairn-2.0.0+2-1.efi",
    );
    assert!(!bless_boot(&d.path().join("esp"), &d.path().join("vars")).unwrap());
    assert_eq!(
        listing(d.path()),
        ["cairn-2.0.0+2-1.efi", "cairn-2.0.0.efi"]
    );
}
