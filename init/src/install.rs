//! Install mode (`cairn.mode=install`): the payload of design.md sits in the
//! initramfs at /payload. init only finds the target disk and prints the
//! steps; checking the payload (keys, signed manifest, artifacts, machine
//! config) and installing is the installer library's one path,
//! [`installer::install::install_payload`].

use std::path::{Path, PathBuf};
use thiserror::Error;

#[derive(Debug, Error, PartialEq, Eq)]
pub enum InstallError {
    #[error("target disk {0:?} is not an absolute /dev path")]
    Target(String),
    #[error("no target disk: {0}")]
    NoTarget(String),
    /// The installer's blank rule refused the target (docs/installer.md);
    /// install mode has no way to say `--wipe`, so this is where it stops.
    #[error(
        "target {disk} is not blank: {found}; install mode never wipes a disk, \
         so nothing was written: clear it first (its first and last MiB must be \
         zero) or install it with `cairn-installer install --wipe`"
    )]
    NotBlank { disk: PathBuf, found: String },
    #[error("{0}")]
    Installer(String),
}

/// Installs from `payload` onto `target` (`None`: the only fixed disk).
/// Progress goes to the console, one line per step.
pub fn install(payload: &Path, target: Option<&str>) -> Result<(), InstallError> {
    let progress = |l: &str| crate::say!("install: {l}");
    let disk = match target {
        Some(t) if t.starts_with("/dev/") => PathBuf::from(t),
        Some(t) => return Err(InstallError::Target(t.into())),
        None => choose_target(Path::new("/sys/block"), TARGET_WAIT)?,
    };
    progress(&format!("target {}", disk.display()));
    // No command-line key asks for a wipe: the media only ever installs on
    // a blank disk, and refuses (writing nothing) otherwise.
    let report = installer::install::install_payload(payload, &disk, false).map_err(refusal)?;
    for line in report.plan.to_string().lines() {
        progress(line);
    }
    progress(&format!(
        "installed {} on {}",
        report.plan.version,
        report.plan.disk.display()
    ));
    Ok(())
}

/// The installer's error as the console shows it; a disk that is not
/// blank gets its own words, since the installer's hint (`--wipe`) is not
/// something install mode can be given.
fn refusal(e: installer::Error) -> InstallError {
    match e {
        installer::Error::NotEmpty { path, found } => InstallError::NotBlank { disk: path, found },
        e => InstallError::Installer(format!("{e:#}")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_disk_that_is_not_blank_is_refused_in_the_console_words() {
        let e = refusal(installer::Error::NotEmpty {
            path: PathBuf::from("/dev/vda"),
            found: "an LVM2 label (LABELONE) at offset 512".into(),
        })
        .to_string();
        assert!(
            e.starts_with("target /dev/vda is not blank: an LVM2 label (LABELONE) at offset 512;"),
            "{e}"
        );
        assert!(
            e.contains("never wipes") && e.contains("nothing was written"),
            "{e}"
        );
    }

    #[test]
    fn the_payload_is_checked_by_the_installer_before_any_disk_is_opened() {
        let d = tempfile::tempdir().unwrap();
        let disk = d.path().join("no-such-disk");
        let disk = disk.to_str().unwrap().replacen('/', "/dev/../", 1);
        // No keys: the library's refusal names the directory.
        let e = install(d.path(), Some(&disk)).unwrap_err().to_string();
        assert!(
            e.contains(&d.path().join("keys").display().to_string()),
            "{e}"
        );
        // A key file that is not a key: named too, still before the disk.
        std::fs::create_dir(d.path().join("keys")).unwrap();
        std::fs::write(d.path().join("keys/a.pub"), b"k").unwrap();
        let e = install(d.path(), Some(&disk)).unwrap_err();
        assert!(matches!(e, InstallError::Installer(_)), "{e}");
        assert!(e.to_string().contains("a.pub"), "{e}");
        assert!(!e.to_string().contains("no-such-disk"), "{e}");
        assert_eq!(
            install(d.path(), Some("vda")),
            Err(InstallError::Target("vda".into()))
        );
    }
}

const TARGET_WAIT: std::time::Duration = std::time::Duration::from_secs(30);

/// Devices that are never install targets: virtual, optical, removable
/// (the USB stick we may have booted from) or empty.
fn candidate(sys_block: &Path, name: &str) -> bool {
    let skip = ["loop", "ram", "sr", "dm-", "zram", "md", "nbd"];
    if skip.iter().any(|p| name.starts_with(p)) {
        return false;
    }
    let read = |f: &str| std::fs::read_to_string(sys_block.join(name).join(f)).unwrap_or_default();
    read("removable").trim() != "1" && read("size").trim().parse::<u64>().unwrap_or(0) > 0
}

/// The one disk the installer may choose by itself; with several, the
/// command line must name one (`cairn.install.disk=`), never a guess.
pub fn choose_target(sys_block: &Path, wait: std::time::Duration) -> Result<PathBuf, InstallError> {
    let deadline = std::time::Instant::now() + wait;
    loop {
        let mut found: Vec<String> = std::fs::read_dir(sys_block)
            .map(|d| {
                d.filter_map(Result::ok)
                    .map(|e| e.file_name().to_string_lossy().into_owned())
                    .filter(|n| candidate(sys_block, n))
                    .collect()
            })
            .unwrap_or_default();
        found.sort();
        match found.len() {
            1 => return Ok(PathBuf::from(format!("/dev/{}", found[0]))),
            0 if std::time::Instant::now() < deadline => {
                std::thread::sleep(std::time::Duration::from_millis(250));
            }
            0 => {
                return Err(InstallError::NoTarget(format!(
                    "no fixed, non-empty disk appeared in {}s",
                    wait.as_secs()
                )))
            }
            _ => {
                return Err(InstallError::NoTarget(format!(
                    "several disks ({}): name one with cairn.install.disk=/dev/NAME",
                    found.join(", ")
                )))
            }
        }
    }
}

#[cfg(test)]
mod target_tests {
    use super::*;

    fn disk(root: &Path, name: &str, removable: &str, size: &str) {
        let d = root.join(name);
        std::fs::create_dir_all(&d).unwrap();
        std::fs::write(d.join("removable"), removable).unwrap();
        std::fs::write(d.join("size"), size).unwrap();
    }

    #[test]
    fn picks_the_only_fixed_disk_and_refuses_to_guess() {
        let t = tempfile::tempdir().unwrap();
        disk(t.path(), "sr0", "1", "100");
        disk(t.path(), "sda", "1", "100"); // the USB stick
        disk(t.path(), "loop0", "0", "100");
        disk(t.path(), "vda", "0", "4194304");
        let zero = std::time::Duration::ZERO;
        assert_eq!(
            choose_target(t.path(), zero).unwrap(),
            PathBuf::from("/dev/vda")
        );
        disk(t.path(), "nvme0n1", "0", "4194304");
        let e = choose_target(t.path(), zero).unwrap_err().to_string();
        assert!(
            e.contains("nvme0n1, vda") && e.contains("cairn.install.disk"),
            "{e}"
        );
        let empty = tempfile::tempdir().unwrap();
        assert!(matches!(
            choose_target(empty.path(), zero),
            Err(InstallError::NoTarget(_))
        ));
    }
}
