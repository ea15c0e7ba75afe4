//! Install settings: what `cairn iso customize` writes onto installer media
//! after the build and install mode reads (docs/installer.md "Install
//! settings"). The installer UKI is signed, so nothing about a particular
//! install can live in it; the settings sit instead in a fixed-size file on
//! the ISO's ESP, the *area*, that systemd-stub hands to the initrd as a
//! global credential and that `customize` rewrites in place.
//!
//! The area is exactly [`AREA_SIZE`] bytes of UTF-8 TOML:
//!
//! ```text
//! # cairn-install-settings v1 area=65536      <- MAGIC, first line
//! dest_device = "/dev/vdb"                    <- the settings (any subset)
//! wipe = true
//! machine_config = """..."""
//! \n\n\n...                                   <- newline padding
//! # end of cairn-install-settings             <- TRAILER, last line
//! ```
//!
//! The magic and the trailer are TOML comments, so the whole area is one
//! TOML document; padding with newlines keeps it one. An empty area (what
//! the build writes) has no settings at all: install mode behaves as it did
//! before the media was customised.

use serde::{Deserialize, Serialize};
use thiserror::Error;

use crate::machine::MachineConfig;

/// The credential's name; systemd-stub copies `\loader\credentials\*.cred`
/// from the ESP it was loaded from into the initrd.
pub const CREDENTIAL: &str = "cairn-install.cred";
/// Where the area lives on the installer ISO's ESP.
pub const ESP_PATH: &str = "loader/credentials/cairn-install.cred";
/// Where install mode finds it: systemd-stub's global credentials directory
/// in the initrd (systemd 252, `.extra/global_credentials`).
pub const INITRD_PATH: &str = "/.extra/global_credentials/cairn-install.cred";
/// The area's fixed size: room for a machine config, and a whole number of
/// 512-byte sectors so `customize` rewrites whole sectors.
pub const AREA_SIZE: usize = 64 * 1024;
/// The area's first line; `customize` finds the area by it at the start of
/// a 512-byte block of the ISO.
pub const MAGIC: &str = "# cairn-install-settings v1 area=65536\n";
/// The area's last line: an area whose end is not this is not one (a
/// fragmented file, or the magic's bytes inside some other file).
pub const TRAILER: &str = "\n# end of cairn-install-settings\n";

#[derive(Debug, Error, PartialEq, Eq)]
pub enum SettingsError {
    #[error("{file}: not cairn install settings: {what}")]
    Format { file: String, what: String },
    #[error("{file}: {message}")]
    Syntax { file: String, message: String },
    #[error("{file}: {field}: {what}")]
    Field {
        file: String,
        field: &'static str,
        what: String,
    },
    #[error("{file}: machine_config: {source}")]
    MachineConfig {
        file: String,
        #[source]
        source: crate::machine::ConfigError,
    },
    #[error("install settings take {size} bytes; the area holds at most {max}")]
    TooLarge { size: usize, max: usize },
}

/// The settings themselves (all optional: an empty set changes nothing).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct InstallSettings {
    /// The disk to install on (an absolute `/dev` path); overrides the
    /// installer's own choice and `cairn.install.disk=`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dest_device: Option<String>,
    /// Install even when `dest_device` is not blank, destroying what is on
    /// it. Needs `dest_device`: install mode never wipes a disk it chose.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub wipe: bool,
    /// A whole `machine.toml`, replacing the one built into the payload.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub machine_config: Option<String>,
}

impl InstallSettings {
    pub fn is_empty(&self) -> bool {
        *self == InstallSettings::default()
    }

    /// Every rule, with `file` naming the source in errors; the machine
    /// config goes through the one machine-config parser.
    pub fn validate(&self, file: &str) -> Result<(), SettingsError> {
        if let Some(d) = &self.dest_device {
            if let Err(what) = check_device(d) {
                return Err(SettingsError::Field {
                    file: file.into(),
                    field: "dest_device",
                    what,
                });
            }
        }
        if self.wipe && self.dest_device.is_none() {
            return Err(SettingsError::Field {
                file: file.into(),
                field: "wipe",
                what: "needs dest_device: install mode never wipes a disk it chose by itself"
                    .into(),
            });
        }
        if let Some(c) = &self.machine_config {
            MachineConfig::parse(c, &format!("{file} machine_config")).map_err(|source| {
                SettingsError::MachineConfig {
                    file: file.into(),
                    source,
                }
            })?;
        }
        Ok(())
    }

    /// The area's bytes: exactly [`AREA_SIZE`], after validating.
    pub fn encode(&self) -> Result<Vec<u8>, SettingsError> {
        self.validate("install settings")?;
        let body = toml::to_string(self).map_err(|e| SettingsError::Syntax {
            file: "install settings".into(),
            message: e.to_string(),
        })?;
        let size = MAGIC.len() + body.len() + TRAILER.len();
        if size > AREA_SIZE {
            return Err(SettingsError::TooLarge {
                size,
                max: AREA_SIZE,
            });
        }
        let mut out = Vec::with_capacity(AREA_SIZE);
        out.extend_from_slice(MAGIC.as_bytes());
        out.extend_from_slice(body.as_bytes());
        out.resize(AREA_SIZE - TRAILER.len(), b'\n');
        out.extend_from_slice(TRAILER.as_bytes());
        Ok(out)
    }

    /// Reads an area (`file` names it in errors) and validates it.
    pub fn decode(area: &[u8], file: &str) -> Result<Self, SettingsError> {
        let format = |what: String| SettingsError::Format {
            file: file.into(),
            what,
        };
        if area.len() != AREA_SIZE {
            return Err(format(format!(
                "{} bytes, the area is {AREA_SIZE}",
                area.len()
            )));
        }
        if !area.starts_with(MAGIC.as_bytes()) {
            return Err(format(format!("does not start with {:?}", MAGIC.trim())));
        }
        if !area.ends_with(TRAILER.as_bytes()) {
            return Err(format(format!("does not end with {:?}", TRAILER.trim())));
        }
        let text = std::str::from_utf8(area).map_err(|e| format(e.to_string()))?;
        let s: InstallSettings = toml::from_str(text).map_err(|e| SettingsError::Syntax {
            file: file.into(),
            message: e.message().trim().to_string(),
        })?;
        s.validate(file)?;
        Ok(s)
    }
}

/// The area as the build writes it: magic, no settings, padding, trailer.
pub fn empty_area() -> Vec<u8> {
    InstallSettings::default()
        .encode()
        .expect("the empty settings always fit")
}

/// An absolute `/dev` path naming a device, in characters a kernel device
/// node or udev symlink uses.
fn check_device(d: &str) -> Result<(), String> {
    let rest = d
        .strip_prefix("/dev/")
        .ok_or_else(|| format!("{d:?} is not an absolute /dev path (e.g. /dev/vdb)"))?;
    if rest.is_empty() || rest.ends_with('/') {
        return Err(format!("{d:?} names no device"));
    }
    if rest
        .split('/')
        .any(|c| c.is_empty() || c == "." || c == "..")
    {
        return Err(format!("{d:?}: empty, `.` or `..` path component"));
    }
    if let Some(c) = d
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || "/-_.:+@=,".contains(*c)))
    {
        return Err(format!("{d:?}: character {c:?} is not allowed"));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_empty_area_is_fixed_and_decodes_to_nothing() {
        let a = empty_area();
        assert_eq!(a.len(), AREA_SIZE);
        assert!(a.starts_with(MAGIC.as_bytes()) && a.ends_with(TRAILER.as_bytes()));
        assert_eq!(a, empty_area());
        assert!(InstallSettings::decode(&a, "f").unwrap().is_empty());
        assert_eq!(
            MAGIC,
            format!("# cairn-install-settings v1 area={AREA_SIZE}\n")
        );
        assert_eq!(AREA_SIZE % 512, 0);
    }

    #[test]
    fn settings_round_trip() {
        let s = InstallSettings {
            dest_device: Some("/dev/disk/by-id/virtio-x".into()),
            wipe: true,
            machine_config: Some("hostname = \"n1\"\n# \"\"\" quotes\n".into()),
        };
        let a = s.encode().unwrap();
        assert_eq!(a.len(), AREA_SIZE);
        assert_eq!(InstallSettings::decode(&a, "f").unwrap(), s);
    }

    #[test]
    fn each_rule_names_its_field() {
        let bad = |s: InstallSettings| s.validate("F").unwrap_err().to_string();
        for d in ["vdb", "/dev/", "/dev/../etc/passwd", "/dev/v b", "/devvdb"] {
            let e = bad(InstallSettings {
                dest_device: Some(d.into()),
                ..Default::default()
            });
            assert!(e.starts_with("F: dest_device:"), "{d}: {e}");
        }
        let e = bad(InstallSettings {
            wipe: true,
            ..Default::default()
        });
        assert!(e.starts_with("F: wipe: needs dest_device"), "{e}");
        let e = bad(InstallSettings {
            machine_config: Some("hostname = \"a b\"\n".into()),
            ..Default::default()
        });
        assert!(e.starts_with("F: machine_config: F machine_config:"), "{e}");
        assert!(e.contains("hostname"), "{e}");
        let e = bad(InstallSettings {
            machine_config: Some("no_such_key = 1\n".into()),
            ..Default::default()
        });
        assert!(e.contains("no_such_key"), "{e}");
    }

    #[test]
    fn too_large_is_refused() {
        let s = InstallSettings {
            machine_config: Some(format!("# {}\n", "x".repeat(AREA_SIZE))),
            ..Default::default()
        };
        assert!(matches!(
            s.encode(),
            Err(SettingsError::TooLarge { max: AREA_SIZE, .. })
        ));
    }

    #[test]
    fn decode_refuses_what_is_not_an_area() {
        let a = empty_area();
        let e = InstallSettings::decode(&a[..512], "F").unwrap_err();
        assert!(
            e.to_string().starts_with("F: not cairn install settings"),
            "{e}"
        );
        let mut b = a.clone();
        b[0] = b'x';
        assert!(matches!(
            InstallSettings::decode(&b, "F"),
            Err(SettingsError::Format { .. })
        ));
        let mut b = a.clone();
        b[AREA_SIZE - 2] = b'x';
        assert!(matches!(
            InstallSettings::decode(&b, "F"),
            Err(SettingsError::Format { .. })
        ));
        // A hand-edited area with an unknown key or a bad value.
        let mut b = a.clone();
        b[MAGIC.len()..MAGIC.len() + 9].copy_from_slice(b"wype = 1\n");
        let e = InstallSettings::decode(&b, "F").unwrap_err().to_string();
        assert!(e.starts_with("F: ") && e.contains("wype"), "{e}");
        let mut b = a;
        let line = b"dest_device = \"sda\"\n";
        b[MAGIC.len()..MAGIC.len() + line.len()].copy_from_slice(line);
        let e = InstallSettings::decode(&b, "F").unwrap_err().to_string();
        assert!(e.starts_with("F: dest_device:"), "{e}");
    }
}
