//! `cairn iso customize`: install settings (contract::install) written into
//! a built `installer.iso` without rebuilding it.
//!
//! The build reserves the settings area as a fixed-size file on the ISO's
//! ESP ([`contract::install::ESP_PATH`]), laid out contiguously by the FAT
//! writer, so its bytes are one run of the ISO file. Customising overwrites
//! exactly that run and nothing else: the signed installer UKI, the FAT and
//! directory entries, the ISO 9660 tree and the GPT keep every byte, which
//! is what keeps `fsck.fat`, `xorriso` and Secure Boot happy.
//!
//! The area is found by content, not by parsing ISO 9660 and FAT: the one
//! 512-byte-aligned block that starts with [`MAGIC`] and whose
//! [`AREA_SIZE`]-byte run ends with [`TRAILER`]. A file system sector is
//! 512-aligned within the ESP, and the ESP is 1 MiB-aligned in the ISO, so
//! the area's start is always such a block.

use std::fs::{File, OpenOptions};
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

use contract::install::{InstallSettings, SettingsError, AREA_SIZE, MAGIC, TRAILER};

const BLOCK: u64 = 512;

#[derive(Debug, thiserror::Error)]
pub enum CustomizeError {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error(
        "{path}: no install settings area (a 512-byte block starting with {magic:?}); \
         is it an installer.iso built by this cairn?{partial}"
    )]
    NoArea {
        path: PathBuf,
        magic: String,
        partial: String,
    },
    #[error("{path}: {n} install settings areas, at byte offsets {offsets}; refusing to guess which one install mode reads")]
    SeveralAreas {
        path: PathBuf,
        n: usize,
        offsets: String,
    },
    #[error("{path} and {output} are the same file; use --in-place to change the input")]
    SameFile { path: PathBuf, output: PathBuf },
    #[error(transparent)]
    Settings(#[from] SettingsError),
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> CustomizeError + '_ {
    move |source| CustomizeError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// The byte offset of the one settings area in `path`.
pub fn find_area(path: &Path) -> Result<u64, CustomizeError> {
    let mut f = File::open(path).map_err(io(path))?;
    let len = f.metadata().map_err(io(path))?.len();
    let magic = MAGIC.as_bytes();
    let mut found = Vec::new();
    let mut partial = Vec::new();
    const CHUNK: usize = 1 << 20;
    let mut buf = vec![0u8; CHUNK];
    let mut pos = 0u64;
    while pos + BLOCK <= len {
        let n = (CHUNK as u64).min(len - pos) as usize;
        f.seek(SeekFrom::Start(pos)).map_err(io(path))?;
        f.read_exact(&mut buf[..n]).map_err(io(path))?;
        let mut next = pos + n as u64;
        let mut off = 0usize;
        while off + BLOCK as usize <= n {
            if buf[off..].starts_with(magic) {
                let at = pos + off as u64;
                if is_area(&mut f, at, len).map_err(io(path))? {
                    found.push(at);
                    // The area's own contents (say, a machine config that
                    // quotes the magic) are never a second area.
                    next = next.max(at + AREA_SIZE as u64);
                    off += AREA_SIZE;
                    continue;
                }
                partial.push(at);
            }
            off += BLOCK as usize;
        }
        pos = next;
    }
    match found.as_slice() {
        [one] => Ok(*one),
        [] => Err(CustomizeError::NoArea {
            path: path.into(),
            magic: MAGIC.trim().into(),
            partial: if partial.is_empty() {
                String::new()
            } else {
                format!(
                    " (the magic at {} without the trailer {:?} {AREA_SIZE} bytes on)",
                    list(&partial),
                    TRAILER.trim()
                )
            },
        }),
        many => Err(CustomizeError::SeveralAreas {
            path: path.into(),
            n: many.len(),
            offsets: list(many),
        }),
    }
}

fn list(offsets: &[u64]) -> String {
    offsets
        .iter()
        .map(u64::to_string)
        .collect::<Vec<_>>()
        .join(", ")
}

fn is_area(f: &mut File, at: u64, len: u64) -> std::io::Result<bool> {
    if at + AREA_SIZE as u64 > len {
        return Ok(false);
    }
    let mut end = vec![0u8; TRAILER.len()];
    f.seek(SeekFrom::Start(at + (AREA_SIZE - TRAILER.len()) as u64))?;
    f.read_exact(&mut end)?;
    Ok(end == TRAILER.as_bytes())
}

/// The settings currently in `path`'s area.
pub fn read_settings(path: &Path) -> Result<InstallSettings, CustomizeError> {
    let at = find_area(path)?;
    let mut f = File::open(path).map_err(io(path))?;
    let mut area = vec![0u8; AREA_SIZE];
    f.seek(SeekFrom::Start(at)).map_err(io(path))?;
    f.read_exact(&mut area).map_err(io(path))?;
    let name = format!("{} (settings area at byte {at})", path.display());
    Ok(InstallSettings::decode(&area, &name)?)
}

/// Writes `settings` into the area of `input`: into a copy at `output`, or
/// into `input` itself when `output` is `None`. Everything is checked
/// before a byte is written (the settings, the one area); a copy is written
/// beside `output` and renamed into place, so a failure leaves no partial
/// output. Returns the area's offset.
pub fn customize(
    input: &Path,
    output: Option<&Path>,
    settings: &InstallSettings,
) -> Result<u64, CustomizeError> {
    let area = settings.encode()?;
    let at = find_area(input)?;
    match output {
        None => {
            write_area(input, at, &area)?;
        }
        Some(out) => {
            if same_file(input, out) {
                return Err(CustomizeError::SameFile {
                    path: input.into(),
                    output: out.into(),
                });
            }
            let mut tmp = out.as_os_str().to_owned();
            tmp.push(".partial");
            let tmp = PathBuf::from(tmp);
            let result = std::fs::copy(input, &tmp)
                .map_err(io(&tmp))
                .and_then(|_| write_area(&tmp, at, &area))
                .and_then(|_| std::fs::rename(&tmp, out).map_err(io(out)));
            if result.is_err() {
                let _ = std::fs::remove_file(&tmp);
            }
            result?;
        }
    }
    Ok(at)
}

fn same_file(a: &Path, b: &Path) -> bool {
    use std::os::unix::fs::MetadataExt;
    match (std::fs::metadata(a), std::fs::metadata(b)) {
        (Ok(x), Ok(y)) => x.dev() == y.dev() && x.ino() == y.ino(),
        _ => false,
    }
}

fn write_area(path: &Path, at: u64, area: &[u8]) -> Result<(), CustomizeError> {
    let mut f = OpenOptions::new()
        .write(true)
        .open(path)
        .map_err(io(path))?;
    f.seek(SeekFrom::Start(at)).map_err(io(path))?;
    f.write_all(area).map_err(io(path))?;
    f.sync_all().map_err(io(path))
}

#[cfg(test)]
mod tests {
    use super::*;
    use contract::install::empty_area;

    /// A file of `len` bytes of junk with areas at the given offsets.
    fn image(dir: &Path, len: usize, areas: &[usize]) -> PathBuf {
        let mut b: Vec<u8> = (0..len).map(|i| (i * 7 % 251) as u8).collect();
        for &a in areas {
            b[a..a + AREA_SIZE].copy_from_slice(&empty_area());
        }
        let p = dir.join("installer.iso");
        std::fs::write(&p, b).unwrap();
        p
    }

    fn settings() -> InstallSettings {
        InstallSettings {
            dest_device: Some("/dev/vdb".into()),
            wipe: true,
            machine_config: Some("hostname = \"node-1\"\n".into()),
        }
    }

    #[test]
    fn finds_one_area_and_writes_only_it() {
        let d = tempfile::tempdir().unwrap();
        let iso = image(d.path(), 3 << 20, &[(1 << 20) + 4096]);
        let before = std::fs::read(&iso).unwrap();
        let out = d.path().join("custom.iso");
        assert_eq!(
            customize(&iso, Some(&out), &settings()).unwrap(),
            (1 << 20) + 4096
        );
        assert_eq!(std::fs::read(&iso).unwrap(), before, "input untouched");
        let after = std::fs::read(&out).unwrap();
        assert_eq!(after.len(), before.len());
        let at = (1 << 20) + 4096;
        assert_eq!(after[..at], before[..at]);
        assert_eq!(after[at + AREA_SIZE..], before[at + AREA_SIZE..]);
        assert_eq!(read_settings(&out).unwrap(), settings());
        // Again, in place: replaced, not merged; then reset.
        let only_dev = InstallSettings {
            dest_device: Some("/dev/sda".into()),
            ..Default::default()
        };
        customize(&out, None, &only_dev).unwrap();
        assert_eq!(read_settings(&out).unwrap(), only_dev);
        customize(&out, None, &InstallSettings::default()).unwrap();
        assert_eq!(std::fs::read(&out).unwrap(), before);
    }

    #[test]
    fn an_area_that_quotes_the_magic_is_still_one_area() {
        let d = tempfile::tempdir().unwrap();
        let iso = image(d.path(), 1 << 20, &[8192]);
        // Pad so the magic inside the machine config lands 512-aligned.
        let mut s = InstallSettings::default();
        for pad in 0..600 {
            s.machine_config = Some(format!("#{}\n{}", "x".repeat(pad), MAGIC));
            let a = s.encode().unwrap();
            if (1..AREA_SIZE / 512).any(|b| a[b * 512..].starts_with(MAGIC.as_bytes())) {
                break;
            }
        }
        customize(&iso, None, &s).unwrap();
        assert_eq!(find_area(&iso).unwrap(), 8192);
    }

    #[test]
    fn refuses_none_or_several_areas_naming_the_offsets() {
        let d = tempfile::tempdir().unwrap();
        let iso = image(d.path(), 1 << 20, &[]);
        let e = customize(&iso, None, &settings()).unwrap_err().to_string();
        assert!(e.contains("no install settings area"), "{e}");
        assert!(e.contains(&iso.display().to_string()), "{e}");

        let iso = image(d.path(), 1 << 20, &[512, 512 * 300]);
        let before = std::fs::read(&iso).unwrap();
        let e = customize(&iso, None, &settings()).unwrap_err().to_string();
        assert!(
            e.contains("2 install settings areas, at byte offsets 512, 153600"),
            "{e}"
        );
        assert_eq!(std::fs::read(&iso).unwrap(), before);

        // The magic without its trailer (unaligned or cut short) is no area.
        let mut b = vec![0u8; 1 << 20];
        b[1024..1024 + MAGIC.len()].copy_from_slice(MAGIC.as_bytes());
        b[3000..3000 + AREA_SIZE].copy_from_slice(&empty_area());
        std::fs::write(&iso, &b).unwrap();
        let e = find_area(&iso).unwrap_err().to_string();
        assert!(e.contains("the magic at 1024 without the trailer"), "{e}");
    }

    #[test]
    fn bad_settings_write_nothing() {
        let d = tempfile::tempdir().unwrap();
        let iso = image(d.path(), 1 << 20, &[4096]);
        let before = std::fs::read(&iso).unwrap();
        let out = d.path().join("custom.iso");
        let cases = [
            InstallSettings {
                dest_device: Some("vdb".into()),
                ..Default::default()
            },
            InstallSettings {
                wipe: true,
                ..Default::default()
            },
            InstallSettings {
                machine_config: Some("hostname = 7\n".into()),
                ..Default::default()
            },
            InstallSettings {
                machine_config: Some(format!("#{}\n", "y".repeat(AREA_SIZE))),
                ..Default::default()
            },
        ];
        for s in cases {
            assert!(customize(&iso, None, &s).is_err(), "{s:?}");
            assert!(customize(&iso, Some(&out), &s).is_err(), "{s:?}");
            assert!(!out.exists());
            assert_eq!(std::fs::read(&iso).unwrap(), before, "{s:?}");
        }
        let e = customize(&iso, Some(&iso), &settings()).unwrap_err();
        assert!(matches!(e, CustomizeError::SameFile { .. }), "{e}");
    }
}
