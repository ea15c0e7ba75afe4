//! Install mode (`cairn.mode=install`): the payload of design.md sits in the
//! initramfs at /payload. This module owns the narrow entry point; the
//! installer library does the work once it is linked in.

use std::path::{Path, PathBuf};
use thiserror::Error;

#[derive(Debug, Error, PartialEq, Eq)]
pub enum InstallError {
    #[error("payload {path} is missing ({what})")]
    Missing { path: PathBuf, what: &'static str },
    #[error("payload {dir} holds no trusted keys (*.pub)")]
    NoKeys { dir: PathBuf },
    #[error("target disk {0:?} is not an absolute /dev path")]
    Target(String),
    #[error("installer library not yet linked: payload verified present, target {target}, nothing written")]
    NotLinked { target: String },
}

const REQUIRED: [(&str, &str); 4] = [
    ("manifest.json", "signed release manifest"),
    ("manifest.json.sig", "manifest signature"),
    ("uki.efi", "unified kernel image"),
    ("rootfs.img", "squashfs + verity slot image"),
];

/// Installs from `payload` onto `target` (`None`: the installer chooses).
/// Progress goes to the console, one line per step.
pub fn install(payload: &Path, target: Option<&str>) -> Result<(), InstallError> {
    let progress = |l: &str| crate::say!("install: {l}");
    if let Some(t) = target {
        if !t.starts_with("/dev/") {
            return Err(InstallError::Target(t.into()));
        }
    }
    for (name, what) in REQUIRED {
        let p = payload.join(name);
        if !p.is_file() {
            return Err(InstallError::Missing { path: p, what });
        }
        progress(&format!("payload: {name} present"));
    }
    let keys = payload.join("keys");
    let n = std::fs::read_dir(&keys)
        .map(|d| {
            d.filter_map(Result::ok)
                .filter(|e| e.path().extension().is_some_and(|x| x == "pub"))
                .count()
        })
        .unwrap_or(0);
    if n == 0 {
        return Err(InstallError::NoKeys { dir: keys });
    }
    progress(&format!("payload: {n} trusted key(s)"));
    if payload.join("machine.toml").is_file() {
        progress("payload: machine.toml present");
    }
    Err(InstallError::NotLinked {
        target: target.unwrap_or("(installer default)").into(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn checks_payload_then_reports_missing_installer() {
        let d = tempfile::tempdir().unwrap();
        assert_eq!(
            install(d.path(), None),
            Err(InstallError::Missing {
                path: d.path().join("manifest.json"),
                what: "signed release manifest"
            })
        );
        for (n, _) in REQUIRED {
            std::fs::write(d.path().join(n), b"x").unwrap();
        }
        assert_eq!(
            install(d.path(), None),
            Err(InstallError::NoKeys {
                dir: d.path().join("keys")
            })
        );
        std::fs::create_dir(d.path().join("keys")).unwrap();
        std::fs::write(d.path().join("keys/a.pub"), b"k").unwrap();
        let e = install(d.path(), Some("/dev/vda")).unwrap_err();
        assert_eq!(
            e,
            InstallError::NotLinked {
                target: "/dev/vda".into()
            }
        );
        assert!(e
            .to_string()
            .starts_with("installer library not yet linked"));
        assert_eq!(
            install(d.path(), Some("vda")),
            Err(InstallError::Target("vda".into()))
        );
    }
}
