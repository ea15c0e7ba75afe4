//! The kernel command line: the only input stage 1 trusts, because it is
//! measured and signed as part of the UKI (unlike anything on disk).

use thiserror::Error;

#[derive(Debug, Error, PartialEq, Eq)]
pub enum CmdlineError {
    #[error(
        "cairn.rootfs={value}: expected 64 hex digits (sha256 root hash), got {len} characters"
    )]
    RootHashLength { value: String, len: usize },
    #[error("{param}={value}: not hexadecimal at character {pos}")]
    NotHex {
        param: &'static str,
        value: String,
        pos: usize,
    },
    #[error("cairn.verity={value}: expected <data_blocks>,<salt hex>")]
    VerityShape { value: String },
    #[error("cairn.verity={value}: data_blocks {blocks:?} is not a positive integer")]
    DataBlocks { value: String, blocks: String },
    #[error("cairn.verity={value}: salt must be 64 hex digits (32 bytes), got {len} characters")]
    SaltLength { value: String, len: usize },
    #[error("cairn.mode={value}: unknown mode (known: install)")]
    UnknownMode { value: String },
    #[error("cairn.install.disk={value}: expected an absolute /dev path")]
    InstallDisk { value: String },
    #[error(
        "lockdown=none: cairn kernels are always locked down (integrity; confidentiality \
         with Secure Boot), and the kernel forces integrity anyway: remove it"
    )]
    LockdownNone,
    #[error("lockdown={value}: unknown level (known: integrity, confidentiality)")]
    LockdownUnknown { value: String },
    #[error("{param} is given twice ({first:?} and {second:?})")]
    Duplicate {
        param: &'static str,
        first: String,
        second: String,
    },
}

#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum Mode {
    #[default]
    Boot,
    Install,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Verity {
    pub data_blocks: u64,
    pub salt: [u8; 32],
}

#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Cmdline {
    pub rootfs: Option<[u8; 32]>,
    pub verity: Option<Verity>,
    pub mode: Mode,
    pub install_disk: Option<String>,
}

/// Splits on whitespace, honouring double quotes the way the kernel does
/// (`a="b c"` is one word, quotes removed).
fn words(line: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut cur = String::new();
    let mut quoted = false;
    let mut any = false;
    for c in line.chars() {
        match c {
            '"' => {
                quoted = !quoted;
                any = true;
            }
            c if c.is_whitespace() && !quoted => {
                if any {
                    out.push(std::mem::take(&mut cur));
                    any = false;
                }
            }
            c => {
                cur.push(c);
                any = true;
            }
        }
    }
    if any {
        out.push(cur);
    }
    out
}

pub fn parse_hex<const N: usize>(
    param: &'static str,
    value: &str,
) -> Result<[u8; N], CmdlineError> {
    let mut out = [0u8; N];
    let bytes = value.as_bytes();
    if bytes.len() != 2 * N {
        return Err(CmdlineError::NotHex {
            param,
            value: value.to_string(),
            pos: bytes.len().min(2 * N),
        });
    }
    for (i, slot) in out.iter_mut().enumerate() {
        let nib = |pos: usize| -> Result<u8, CmdlineError> {
            (bytes[pos] as char)
                .to_digit(16)
                .map(|d| d as u8)
                .ok_or_else(|| CmdlineError::NotHex {
                    param,
                    value: value.to_string(),
                    pos,
                })
        };
        *slot = (nib(2 * i)? << 4) | nib(2 * i + 1)?;
    }
    Ok(out)
}

fn set_once<T>(
    slot: &mut Option<T>,
    seen: &mut Option<String>,
    param: &'static str,
    raw: &str,
    value: T,
) -> Result<(), CmdlineError> {
    if let Some(first) = seen {
        return Err(CmdlineError::Duplicate {
            param,
            first: first.clone(),
            second: raw.to_string(),
        });
    }
    *seen = Some(raw.to_string());
    *slot = Some(value);
    Ok(())
}

/// Parses `/proc/cmdline`. Unknown parameters belong to the kernel or the
/// profile and are ignored; a malformed `cairn.*` parameter is an error,
/// because booting with half a verity table would be worse than not booting.
pub fn parse(line: &str) -> Result<Cmdline, CmdlineError> {
    let mut c = Cmdline::default();
    let (mut seen_root, mut seen_verity, mut seen_mode, mut seen_disk) = (None, None, None, None);
    let mut mode = None;
    for w in words(line) {
        let (key, value) = match w.split_once('=') {
            Some(kv) => kv,
            None => continue,
        };
        match key {
            "cairn.rootfs" => {
                if value.len() != 64 {
                    return Err(CmdlineError::RootHashLength {
                        value: value.into(),
                        len: value.len(),
                    });
                }
                let h = parse_hex::<32>("cairn.rootfs", value)?;
                set_once(&mut c.rootfs, &mut seen_root, "cairn.rootfs", value, h)?;
            }
            "cairn.verity" => {
                let (blocks, salt) =
                    value
                        .split_once(',')
                        .ok_or_else(|| CmdlineError::VerityShape {
                            value: value.into(),
                        })?;
                let data_blocks =
                    blocks
                        .parse::<u64>()
                        .ok()
                        .filter(|b| *b > 0)
                        .ok_or_else(|| CmdlineError::DataBlocks {
                            value: value.into(),
                            blocks: blocks.into(),
                        })?;
                if salt.len() != 64 {
                    return Err(CmdlineError::SaltLength {
                        value: value.into(),
                        len: salt.len(),
                    });
                }
                let salt = parse_hex::<32>("cairn.verity", salt)?;
                let v = Verity { data_blocks, salt };
                set_once(&mut c.verity, &mut seen_verity, "cairn.verity", value, v)?;
            }
            "cairn.mode" => {
                let m = match value {
                    "install" => Mode::Install,
                    _ => {
                        return Err(CmdlineError::UnknownMode {
                            value: value.into(),
                        })
                    }
                };
                set_once(&mut mode, &mut seen_mode, "cairn.mode", value, m)?;
            }
            "cairn.install.disk" => {
                if !value.starts_with("/dev/") || value.len() <= 5 {
                    return Err(CmdlineError::InstallDisk {
                        value: value.into(),
                    });
                }
                let v = value.to_string();
                set_once(
                    &mut c.install_disk,
                    &mut seen_disk,
                    "cairn.install.disk",
                    value,
                    v,
                )?;
            }
            _ => {}
        }
    }
    c.mode = mode.unwrap_or_default();
    Ok(c)
}

/// The parameters that bind a UKI to one rootfs:
/// `cairn.rootfs=<root hash> cairn.verity=<data_blocks>,<salt>`.
pub fn boot_params(root_hash: &[u8; 32], verity: &Verity) -> String {
    format!(
        "{ROOTFS}={} {VERITY}={},{}",
        hex(root_hash),
        verity.data_blocks,
        hex(&verity.salt)
    )
}

/// Kernel parameters every installed UKI carries, whatever the profile says.
///
/// `gpt`: an upgrade rewrites the backup GPT, then the primary's entries,
/// then its header; a power cut between the last two leaves a primary whose
/// entry CRC fails beside a valid backup. Linux (block/partitions/efi.c)
/// reads the backup at the last LBA after an invalid primary only with
/// `gpt`; without it the disk shows no partitions and the boot fails,
/// although init would read the backup. (`gpt` also skips the kernel's
/// protective-MBR check; every GPT disk cairn writes has one.)
pub const INSTALLED_PARAMS: [&str; 1] = ["gpt"];

/// The command line of a UKI that boots an installed disk: the profile's
/// parameters, [`INSTALLED_PARAMS`] unless already given, then `binding`
/// (the rootfs binding, [`boot_params`]). The installer UKI boots no
/// installed disk and does not use this.
pub fn installed(profile: &str, binding: &str) -> String {
    let mut words: Vec<&str> = profile.split_whitespace().collect();
    for p in INSTALLED_PARAMS {
        if !words.contains(&p) {
            words.push(p);
        }
    }
    words.push(binding);
    words.join(" ")
}

/// The kernel's lockdown level parameter (security/lockdown).
pub const LOCKDOWN: &str = "lockdown";

/// The `lockdown=` a UKI's command line gets on top of `profile` (the
/// profile's parameters): `None` when the profile already names a level
/// (it may only name one, and not `none`), else `lockdown=confidentiality`
/// for a Secure Boot image (nothing reads kernel memory either: the keys
/// and the measured state are worth protecting once the boot chain is
/// verified) and `lockdown=integrity` otherwise (what the kernel's
/// LOCK_DOWN_KERNEL_FORCE_INTEGRITY already enforces, stated on the line).
pub fn lockdown(profile: &str, secure_boot: bool) -> Result<Option<String>, CmdlineError> {
    let mut given: Option<String> = None;
    for w in words(profile) {
        let Some(value) = w.strip_prefix("lockdown=") else {
            continue;
        };
        match value {
            "none" => return Err(CmdlineError::LockdownNone),
            "integrity" | "confidentiality" => {}
            _ => {
                return Err(CmdlineError::LockdownUnknown {
                    value: value.into(),
                })
            }
        }
        if let Some(first) = &given {
            return Err(CmdlineError::Duplicate {
                param: LOCKDOWN,
                first: first.clone(),
                second: value.into(),
            });
        }
        given = Some(value.into());
    }
    Ok(given.is_none().then(|| {
        let level = if secure_boot {
            "confidentiality"
        } else {
            "integrity"
        };
        format!("{LOCKDOWN}={level}")
    }))
}

/// The parameter that makes a UKI the installer's.
pub const INSTALL_MODE: &str = "cairn.mode=install";

pub const ROOTFS: &str = "cairn.rootfs";
pub const VERITY: &str = "cairn.verity";
pub const MODE: &str = "cairn.mode";
pub const INSTALL_DISK: &str = "cairn.install.disk";

pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    const H: &str = "4f68bce3e8cd4db196e7fbcaf984b7090123456789abcdef0123456789abcdef";
    const S: &str = "00112233445566778899aabbccddeeff00112233445566778899aabbccddeeff";

    #[test]
    fn full_boot_line() {
        let line = format!("console=ttyS0 panic=-1 cairn.rootfs={H} cairn.verity=1234,{S} quiet");
        let c = parse(&line).unwrap();
        assert_eq!(hex(&c.rootfs.unwrap()), H);
        let v = c.verity.unwrap();
        assert_eq!(v.data_blocks, 1234);
        assert_eq!(hex(&v.salt), S);
        assert_eq!(c.mode, Mode::Boot);
        assert_eq!(c.install_disk, None);
    }

    #[test]
    fn install_line_and_quotes() {
        let c = parse("cairn.mode=install  cairn.install.disk=\"/dev/vda\"\n").unwrap();
        assert_eq!(c.mode, Mode::Install);
        assert_eq!(c.install_disk.as_deref(), Some("/dev/vda"));
        assert_eq!(words("a=\"b c\" d"), vec!["a=b c", "d"]);
    }

    #[test]
    fn uppercase_hex_accepted() {
        let c = parse(&format!("cairn.rootfs={}", H.to_uppercase())).unwrap();
        assert_eq!(hex(&c.rootfs.unwrap()), H);
    }

    #[test]
    fn bad_inputs_name_the_problem() {
        assert_eq!(
            parse("cairn.rootfs=abc"),
            Err(CmdlineError::RootHashLength {
                value: "abc".into(),
                len: 3
            })
        );
        let bad = format!("{}g", &H[..63]);
        assert_eq!(
            parse(&format!("cairn.rootfs={bad}")),
            Err(CmdlineError::NotHex {
                param: "cairn.rootfs",
                value: bad,
                pos: 63
            })
        );
        assert!(matches!(
            parse("cairn.verity=12"),
            Err(CmdlineError::VerityShape { .. })
        ));
        assert!(matches!(
            parse(&format!("cairn.verity=0,{S}")),
            Err(CmdlineError::DataBlocks { .. })
        ));
        assert!(matches!(
            parse(&format!("cairn.verity=-3,{S}")),
            Err(CmdlineError::DataBlocks { .. })
        ));
        assert!(matches!(
            parse("cairn.verity=5,0011"),
            Err(CmdlineError::SaltLength { len: 4, .. })
        ));
        assert_eq!(
            parse("cairn.mode=rescue"),
            Err(CmdlineError::UnknownMode {
                value: "rescue".into()
            })
        );
        assert!(matches!(
            parse("cairn.install.disk=vda"),
            Err(CmdlineError::InstallDisk { .. })
        ));
        assert!(matches!(
            parse(&format!("cairn.rootfs={H} cairn.rootfs={H}")),
            Err(CmdlineError::Duplicate {
                param: "cairn.rootfs",
                ..
            })
        ));
        // a multi-byte character must not be split into half a hex digit
        let mb = format!("{}é", &H[..62]);
        assert!(parse(&format!("cairn.rootfs={mb}")).is_err());
    }

    #[test]
    fn boot_params_round_trip() {
        let v = Verity {
            data_blocks: 77,
            salt: parse_hex::<32>("s", S).unwrap(),
        };
        let root = parse_hex::<32>("r", H).unwrap();
        let c = parse(&format!(
            "console=ttyS0 {} {INSTALL_MODE}",
            boot_params(&root, &v)
        ))
        .unwrap();
        assert_eq!(c.rootfs, Some(root));
        assert_eq!(c.verity, Some(v));
        assert_eq!(c.mode, Mode::Install);
    }

    #[test]
    fn installed_cmdline_carries_gpt_once() {
        let b = "cairn.rootfs=ab cairn.verity=1,cd";
        assert_eq!(
            installed("console=ttyS0  panic=5", b),
            "console=ttyS0 panic=5 gpt cairn.rootfs=ab cairn.verity=1,cd"
        );
        assert_eq!(
            installed("gpt console=ttyS0", b),
            "gpt console=ttyS0 cairn.rootfs=ab cairn.verity=1,cd"
        );
        assert_eq!(installed("", b), "gpt cairn.rootfs=ab cairn.verity=1,cd");
    }

    #[test]
    fn lockdown_is_added_unless_given() {
        assert_eq!(
            lockdown("console=ttyS0 panic=5", false),
            Ok(Some("lockdown=integrity".into()))
        );
        assert_eq!(
            lockdown("console=ttyS0", true),
            Ok(Some("lockdown=confidentiality".into()))
        );
        assert_eq!(lockdown("lockdown=confidentiality", false), Ok(None));
        assert_eq!(lockdown("a lockdown=integrity b", true), Ok(None));
        let e = lockdown("console=ttyS0 lockdown=none", false).unwrap_err();
        assert_eq!(e, CmdlineError::LockdownNone);
        assert!(e.to_string().starts_with("lockdown=none: "), "{e}");
        assert!(matches!(
            lockdown("lockdown=max", false),
            Err(CmdlineError::LockdownUnknown { .. })
        ));
        assert!(matches!(
            lockdown("lockdown=integrity lockdown=confidentiality", false),
            Err(CmdlineError::Duplicate {
                param: "lockdown",
                ..
            })
        ));
        // a parameter that only ends in lockdown= is someone else's
        assert_eq!(
            lockdown("x.lockdown=none", false),
            Ok(Some("lockdown=integrity".into()))
        );
    }

    #[test]
    fn unrelated_parameters_ignored() {
        assert_eq!(
            parse("ro root=/dev/sda1 cairn.other=x init").unwrap(),
            Cmdline::default()
        );
    }
}
