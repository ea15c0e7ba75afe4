//! The first-hour commands through the binary: completions and man pages
//! generated from clap, `cairn inspect` and `cairn verify --json` on a
//! release signed here, `cairn run`'s refusals before QEMU starts. (Booting
//! with `cairn run` and inspecting real images is e2e/tests/cli.rs.)

use std::fs;
use std::path::Path;
use std::process::{Command, Output};

fn cairn(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_cairn"))
        .args(args)
        .env("RUST_BACKTRACE", "0")
        .output()
        .expect("running cairn")
}

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

fn text(o: &Output) -> (String, String) {
    (
        String::from_utf8_lossy(&o.stdout).into_owned(),
        String::from_utf8_lossy(&o.stderr).into_owned(),
    )
}

#[test]
fn completions_for_every_shell_name_the_subcommands() {
    for shell in ["bash", "zsh", "fish", "elvish", "powershell"] {
        let o = cairn(&["completions", shell]);
        let (out, err) = text(&o);
        assert!(o.status.success(), "{shell}: {err}");
        for sub in ["build", "inspect", "run", "verify"] {
            assert!(out.contains(sub), "{shell} completion lacks {sub}");
        }
    }
    // bash itself parses the bash script.
    let d = tempfile::tempdir().unwrap();
    let f = d.path().join("cairn.bash");
    fs::write(&f, cairn(&["completions", "bash"]).stdout).unwrap();
    let o = Command::new("bash").arg("-n").arg(&f).output().unwrap();
    assert!(o.status.success(), "{}", text(&o).1);
    let o = cairn(&["completions", "tcsh"]);
    assert_eq!(o.status.code(), Some(2), "clap refuses an unknown shell");
}

#[test]
fn man_pages_for_each_command_render_with_man() {
    let d = tempfile::tempdir().unwrap();
    let o = cairn(&["man", "--out", s(d.path())]);
    assert!(o.status.success(), "{}", text(&o).1);
    for page in [
        "cairn.1",
        "cairn-build.1",
        "cairn-run.1",
        "cairn-inspect.1",
        "cairn-pkg-list.1",
        "cairn-profile-show.1",
    ] {
        let p = d.path().join(page);
        let body = fs::read_to_string(&p).unwrap_or_else(|e| panic!("{page}: {e}"));
        assert!(
            body.starts_with(".ie") || body.contains(".TH"),
            "{page}: {body:.200}"
        );
    }
    // clap's implicit `help` subcommands are not pages.
    assert!(!d.path().join("cairn-help.1").exists());
    // man(1) renders it (when man-db is installed, as ci/deps does).
    if let Ok(o) = Command::new("man")
        .arg("-l")
        .arg(d.path().join("cairn-build.1"))
        .env("MANPAGER", "cat")
        .env("MANWIDTH", "100")
        .output()
    {
        let out = String::from_utf8_lossy(&o.stdout);
        assert!(o.status.success() && out.contains("--dry-run"), "{out}");
    }
}

const DRAFT: &str = r#"{
  "os_name": "cairn",
  "os_version": "4.5.6",
  "profile": "edge",
  "source_date_epoch": 1700000000,
  "arch": "x86_64",
  "inputs": {},
  "verity_root_hash": "00112233445566778899aabbccddeeff00112233445566778899aabbccddeeff",
  "artifacts": ["uki.efi"]
}"#;

#[test]
fn inspect_and_verify_json_report_a_signed_release_and_refuse_a_stranger_key() {
    let keys = tempfile::tempdir().unwrap();
    for k in ["k", "other"] {
        let o = cairn(&["keygen", "--out", s(&keys.path().join(k))]);
        assert!(o.status.success(), "{}", text(&o).1);
    }
    let rel = tempfile::tempdir().unwrap();
    fs::write(rel.path().join("uki.efi"), b"MZ not really").unwrap();
    fs::write(rel.path().join("manifest.json"), DRAFT).unwrap();
    let o = cairn(&["sign", "--key", s(&keys.path().join("k")), s(rel.path())]);
    assert!(o.status.success(), "{}", text(&o).1);
    let key_pub = keys.path().join("k.pub");

    let o = cairn(&["inspect", "--json", s(rel.path())]);
    let (out, err) = text(&o);
    assert!(o.status.success(), "{err}");
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v["kind"], "release");
    assert_eq!(v["release"]["version"], "4.5.6");
    assert_eq!(v["release"]["signature"], "not checked");
    assert_eq!(
        v["release"]["root_hash"],
        "00112233445566778899aabbccddeeff00112233445566778899aabbccddeeff"
    );

    let o = cairn(&["inspect", "--pubkey", s(&key_pub), s(rel.path())]);
    let (out, err) = text(&o);
    assert!(o.status.success(), "{err}");
    assert!(
        out.contains("cairn 4.5.6 (edge, x86_64)") && out.contains("signature verified"),
        "{out}"
    );

    // A key that did not sign it: verification failed (exit 3).
    let o = cairn(&[
        "inspect",
        "--pubkey",
        s(&keys.path().join("other.pub")),
        s(rel.path()),
    ]);
    assert_eq!(o.status.code(), Some(3), "{:?}", text(&o));

    let o = cairn(&["verify", "--json", "--pubkey", s(&key_pub), s(rel.path())]);
    let (out, err) = text(&o);
    assert!(o.status.success(), "{err}");
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v["verified"], true);
    assert_eq!(v["version"], "4.5.6");
    assert_eq!(v["artifacts"][0]["name"], "uki.efi");

    // Something that is no output at all: invalid input, named.
    let junk = rel.path().join("junk.bin");
    fs::write(&junk, vec![7u8; 4096]).unwrap();
    let o = cairn(&["inspect", s(&junk)]);
    assert_eq!(o.status.code(), Some(2), "{:?}", text(&o));
    assert!(text(&o).1.contains("junk.bin"), "{:?}", text(&o));
}

#[test]
fn run_refuses_what_it_cannot_boot_before_starting_qemu() {
    let d = tempfile::tempdir().unwrap();
    let o = cairn(&["run", s(&d.path().join("none.raw"))]);
    assert_eq!(o.status.code(), Some(2), "{:?}", text(&o));
    assert!(text(&o).1.contains("none.raw") && text(&o).1.contains("cairn build"));
    let junk = d.path().join("junk.img");
    fs::write(&junk, vec![0u8; 1 << 16]).unwrap();
    let o = cairn(&["run", s(&junk)]);
    assert_eq!(o.status.code(), Some(2), "{:?}", text(&o));
    assert!(
        text(&o).1.contains("junk.img: not an image"),
        "{:?}",
        text(&o)
    );
    let o = cairn(&["run", "--forward", "80", s(&junk)]);
    assert_eq!(o.status.code(), Some(2));
    assert!(text(&o).1.contains("HOST:GUEST"), "{:?}", text(&o));
}
