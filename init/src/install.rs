//! Install mode (`cairn.mode=install`): the payload of design.md sits in the
//! initramfs at /payload. init only finds the target disk and prints the
//! steps; checking the payload (keys, signed manifest, artifacts, machine
//! config) and installing is the installer library's one path,
//! [`installer::install::install_payload`].

use contract::install::InstallSettings;
use std::path::{Path, PathBuf};
use thiserror::Error;

#[derive(Debug, Error, PartialEq, Eq)]
pub enum InstallError {
    #[error("target disk {0:?} is not an absolute /dev path")]
    Target(String),
    #[error("no target disk: {0}")]
    NoTarget(String),
    /// The installer's blank rule refused the target (docs/installer.md)
    /// and the media's install settings do not ask for a wipe.
    #[error(
        "target {disk} is not blank: {found}; install mode wipes a disk only when \
         the media says so, so nothing was written: clear it first (its first and \
         last MiB must be zero) or customise the media with \
         `cairn iso customize --dest-device {disk} --wipe`"
    )]
    NotBlank { disk: PathBuf, found: String },
    /// The media's install settings (`cairn iso customize`) are unreadable
    /// or invalid: nothing is installed on a guess.
    #[error("install settings: {0}; nothing was written to any disk")]
    Settings(String),
    #[error("{0}")]
    Installer(String),
}

/// Where install mode puts a machine config from the install settings for
/// the installer to check and copy (a file, as the installer takes one).
const SETTINGS_MACHINE_CONFIG: &str = "/run/cairn-install-machine.toml";

/// Installs from `payload` onto `target` (`None`: the only fixed disk),
/// as the media's install settings (contract::install) adjust it.
/// Progress goes to the console, one line per step.
pub fn install(payload: &Path, target: Option<&str>) -> Result<(), InstallError> {
    install_from(
        payload,
        target,
        Path::new(contract::install::INITRD_PATH),
        Path::new(SETTINGS_MACHINE_CONFIG),
    )
}

/// The install settings at `path` (systemd-stub's copy of the ESP's
/// `loader/credentials/cairn-install.cred`); none when the file is absent
/// (media built before the area existed, or booted without systemd-stub).
pub fn read_settings(path: &Path) -> Result<InstallSettings, InstallError> {
    let area = match std::fs::read(path) {
        Ok(a) => a,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(InstallSettings::default()),
        Err(e) => return Err(InstallError::Settings(format!("{}: {e}", path.display()))),
    };
    let name = format!(
        "{} (the media's {})",
        path.display(),
        contract::install::ESP_PATH
    );
    InstallSettings::decode(&area, &name).map_err(|e| InstallError::Settings(e.to_string()))
}

fn install_from(
    payload: &Path,
    target: Option<&str>,
    settings_path: &Path,
    config_out: &Path,
) -> Result<(), InstallError> {
    let progress = |l: &str| crate::say!("install: {l}");
    let settings = read_settings(settings_path)?;
    if settings.is_empty() {
        progress("no install settings on the media");
    } else {
        progress(&format!(
            "install settings from the media: dest_device={} wipe={} machine_config={}",
            settings.dest_device.as_deref().unwrap_or("(not set)"),
            settings.wipe,
            if settings.machine_config.is_some() {
                "given"
            } else {
                "(not set)"
            }
        ));
    }
    let config = match &settings.machine_config {
        Some(text) => {
            std::fs::write(config_out, text).map_err(|e| {
                InstallError::Settings(format!("writing {}: {e}", config_out.display()))
            })?;
            Some(config_out)
        }
        None => None,
    };
    // The settings are the operator's word at media time; the command line
    // was fixed at build time.
    let target = settings.dest_device.as_deref().or(target);
    let disk = match target {
        Some(t) if t.starts_with("/dev/") => PathBuf::from(t),
        Some(t) => return Err(InstallError::Target(t.into())),
        None => choose_target(Path::new("/sys/block"), TARGET_WAIT)?,
    };
    progress(&format!("target {}", disk.display()));
    let report = installer::install::install_payload_with(payload, &disk, settings.wipe, config)
        .map_err(refusal)?;
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
/// blank gets its own words, since the installer's hint (`--wipe`) is given
/// to install mode through the media (`cairn iso customize`).
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
    fn settings_from_the_media_are_read_and_bad_ones_stop_before_any_disk() {
        let d = tempfile::tempdir().unwrap();
        let cred = d.path().join("cairn-install.cred");
        // No file: no settings.
        assert!(read_settings(&cred).unwrap().is_empty());
        let good = InstallSettings {
            dest_device: Some("/dev/vdb".into()),
            wipe: true,
            machine_config: Some("hostname = \"n1\"\n".into()),
        };
        std::fs::write(&cred, good.encode().unwrap()).unwrap();
        assert_eq!(read_settings(&cred).unwrap(), good);
        // A hand-edited area with a bad device: named, with the field.
        let mut a = contract::install::empty_area();
        let at = contract::install::MAGIC.len();
        let line = b"dest_device = \"vdb\"\n";
        a[at..at + line.len()].copy_from_slice(line);
        std::fs::write(&cred, &a).unwrap();
        let disk = d.path().join("disk");
        std::fs::write(&disk, vec![0u8; 4096]).unwrap();
        let out = d.path().join("machine.toml");
        let e = install_from(d.path(), Some("/dev/null"), &cred, &out).unwrap_err();
        let e = e.to_string();
        assert!(
            e.contains(&cred.display().to_string())
                && e.contains("dest_device")
                && e.contains("nothing was written"),
            "{e}"
        );
        assert!(!out.exists());
        // Truncated: not an area.
        std::fs::write(&cred, b"# cairn-install-settings v1").unwrap();
        let e = install_from(d.path(), None, &cred, &out).unwrap_err();
        assert!(matches!(e, InstallError::Settings(_)), "{e}");
    }

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
            e.contains("cairn iso customize --dest-device /dev/vda --wipe")
                && e.contains("nothing was written"),
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
