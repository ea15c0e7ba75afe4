//! `cairn build` refuses a profile's mistakes before it builds anything:
//! run from outside the checkout with a profile that extends the shipped
//! default, as a new user would.

use std::path::Path;
use std::process::Command;

fn build(profile: &Path, cache: &Path, out: &Path, extra: &[&str]) -> std::process::Output {
    let repo = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    Command::new(env!("CARGO_BIN_EXE_cairn"))
        .arg("build")
        .arg("--profile")
        .arg(profile)
        .arg("--repo")
        .arg(&repo)
        .arg("--cache")
        .arg(cache)
        .arg("--out")
        .arg(out)
        .args(extra)
        .current_dir(profile.parent().unwrap())
        .env("NO_COLOR", "1")
        .output()
        .expect("running cairn")
}

#[test]
fn mistakes_are_refused_with_their_position_before_any_work() {
    let d = tempfile::tempdir().unwrap();
    let default = Path::new(env!("CARGO_MANIFEST_DIR")).join("../profiles/default.toml");
    let cache = d.path().join("cache");
    let out = d.path().join("out");
    let cases = [
        (
            "[rootfs]\npackages = [\"mytool\"]\n",
            "my.toml:4:13: rootfs.packages: unknown package `mytool`",
        ),
        ("[os]\nversion = \"01.0.0\"\n", "my.toml:4:11: os.version:"),
        (
            "[rootfs]\nfiles = [{ src = \"motd\", dst = \"/etc/motd\" }]\n",
            "my.toml:4:18: rootfs.files: src `motd` is not a file",
        ),
    ];
    for (text, says) in cases {
        let p = d.path().join("my.toml");
        std::fs::write(
            &p,
            format!("extends = {default:?}\nname = \"mine\"\n{text}"),
        )
        .unwrap();
        let o = build(&p, &cache, &out, &[]);
        let err = String::from_utf8_lossy(&o.stderr);
        assert_eq!(o.status.code(), Some(2), "{text}: invalid input exits 2");
        assert!(err.contains(says), "{text}: {err}");
        assert!(!err.contains('\u{1b}'), "no escapes off a terminal: {err}");
        assert!(!out.exists(), "{text}: an output directory was made");
        assert_eq!(files_under(&cache), 0, "{text}: something was built first");
    }
    // The command line's overrides are checked the same way.
    let p = d.path().join("my.toml");
    std::fs::write(&p, format!("extends = {default:?}\nname = \"mine\"\n")).unwrap();
    for (flags, says) in [
        (
            &["--version", "1.2.3+build.7"][..],
            "--version: `1.2.3+build.7` has build metadata",
        ),
        (&["--kernel-arg", "lockdown=none"][..], "lockdown"),
        (&["--output", "raw,floppy"][..], "unknown output `floppy`"),
    ] {
        let o = build(&p, &cache, &out, flags);
        let err = String::from_utf8_lossy(&o.stderr);
        assert!(err.contains(says), "{flags:?}: {err}");
        assert_eq!(o.status.code(), Some(2), "{flags:?}: invalid input exits 2");
        assert!(!out.exists() && files_under(&cache) == 0, "{flags:?}");
    }

    // Without --repo, from a directory outside the checkout: the
    // repository is the one above the profile the chain extends.
    std::fs::write(
        &p,
        format!("extends = {default:?}\nname = \"mine\"\n[rootfs]\npackages = [\"mytool\"]\n"),
    )
    .unwrap();
    let o = Command::new(env!("CARGO_BIN_EXE_cairn"))
        .args(["build", "--profile", "my.toml", "--cache"])
        .arg(&cache)
        .arg("--out")
        .arg(&out)
        .current_dir(d.path())
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        err.contains("unknown package `mytool` (pkgs/ has cairnd, e2fsprogs, init"),
        "the checkout's pkgs/ was found: {err}"
    );
    // A profile that extends nothing of a checkout, outside one: say so.
    std::fs::write(
        &p,
        "name = \"alone\"\noutputs = [\"raw\"]\n\
         [os]\nname = \"x\"\nversion = \"1.0.0\"\nsource_date_epoch = 0\n\
         [disk]\nsize = \"2GiB\"\nesp = \"128MiB\"\nboot = \"256MiB\"\nstate = \"64MiB\"\n",
    )
    .unwrap();
    let o = Command::new(env!("CARGO_BIN_EXE_cairn"))
        .args(["build", "--profile", "my.toml"])
        .current_dir(d.path())
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        err.contains("no cairn repository") && err.contains("--repo"),
        "{err}"
    );
    assert_eq!(o.status.code(), Some(2));
}

/// Regular files anywhere under `dir` (a cache with only its empty
/// directories made has none).
fn files_under(dir: &Path) -> usize {
    let Ok(rd) = std::fs::read_dir(dir) else {
        return 0;
    };
    rd.flatten()
        .map(|e| {
            let p = e.path();
            if p.is_dir() {
                files_under(&p)
            } else {
                1
            }
        })
        .sum()
}

/// `--dry-run` checks like a build and says what it would do, doing none
/// of it; `--json` for CI.
#[test]
fn dry_run_plans_without_building() {
    let d = tempfile::tempdir().unwrap();
    let default = Path::new(env!("CARGO_MANIFEST_DIR")).join("../profiles/default.toml");
    let p = d.path().join("my.toml");
    std::fs::write(&p, format!("extends = {default:?}\nname = \"mine\"\n")).unwrap();
    let (cache, out) = (d.path().join("cache"), d.path().join("out"));
    let o = build(
        &p,
        &cache,
        &out,
        &[
            "--dry-run",
            "--json",
            "--version",
            "4.5.6",
            "--output",
            "raw",
        ],
    );
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let plan: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(plan["profile"], "mine");
    assert_eq!(plan["version"], "4.5.6");
    assert_eq!(plan["outputs"], serde_json::json!(["raw"]));
    let names: Vec<&str> = plan["packages"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["name"].as_str().unwrap())
        .collect();
    for want in [
        "kernel",
        "systemd-boot",
        "rust-musl",
        "init",
        "e2fsprogs",
        "cairnd",
    ] {
        assert!(names.contains(&want), "{want} in {names:?}");
    }
    let at = |n: &str| names.iter().position(|x| *x == n).unwrap();
    assert!(
        at("rust-musl") < at("init"),
        "dependencies first: {names:?}"
    );
    assert!(plan["packages"]
        .as_array()
        .unwrap()
        .iter()
        .all(|p| p["cached"] == false && p["key"].as_str().unwrap().len() == 64));
    assert!(!out.exists(), "a dry run wrote its output directory");
    assert_eq!(files_under(&cache), 0, "a dry run built or fetched");

    // A profile that resolves only with a flag (Secure Boot keys from the
    // command line), without --repo: the repository is found from its
    // files alone, the flag completes it (as ci/test builds it).
    let sb = Path::new(env!("CARGO_MANIFEST_DIR")).join("../profiles/test/secureboot.toml");
    let o = Command::new(env!("CARGO_BIN_EXE_cairn"))
        .arg("build")
        .arg("--profile")
        .arg(&sb)
        .arg("--secure-boot-keys")
        .arg(d.path())
        .arg("--cache")
        .arg(&cache)
        .arg("--out")
        .arg(&out)
        .arg("--dry-run")
        .current_dir(d.path())
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
}
