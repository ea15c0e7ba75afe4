//! What the independent tools say about a disk image: `sgdisk -v` for the
//! GPT and `fsck.fat -n` for a FAT file system. Both exit 0 on some real
//! damage (sgdisk whatever it finds; fsck.fat on a boot sector that differs
//! from its backup), so their output is read line by line, not only their
//! exit status. Used by the installer's power-cut oracle and by e2e.

use std::fs;
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::process::{Command, ExitStatus};

use anyhow::{Context, Result};

/// What `sgdisk -v` says about an image. Some of its findings go to
/// stderr only, so both streams are read.
#[derive(Debug, Clone)]
pub struct Sgdisk {
    /// Its whole report (stdout, then stderr).
    pub text: String,
    /// Its per-structure verdicts (`Main header: ERROR` ...), or a main
    /// header it calls invalid; all present only when some CRC is bad.
    pub main_ok: bool,
    pub backup_header_ok: bool,
    pub backup_table_ok: bool,
    /// "Main and backup partition tables differ".
    pub differ: bool,
    /// Nothing but "No problems found" and the free-space summary.
    pub clean: bool,
}

impl Sgdisk {
    /// It said "No problems found." (a hybrid ISO's report may add
    /// cautions about its MBR, which [`Sgdisk::clean`] does not allow).
    pub fn no_problems(&self) -> bool {
        self.text.contains("No problems found.")
    }
}

/// Runs `sgdisk -v IMG`.
pub fn sgdisk_verify(img: &Path) -> Result<Sgdisk> {
    let out = crate::output(Command::new("sgdisk").arg("-v").arg(img))?;
    let text = String::from_utf8_lossy(&out.stdout).into_owned()
        + "\n"
        + &String::from_utf8_lossy(&out.stderr);
    Ok(read_sgdisk(out.status.success(), text))
}

fn read_sgdisk(exit_ok: bool, text: String) -> Sgdisk {
    let verdict = |what: &str| !text.contains(&format!("{what}: ERROR"));
    let complaints = ["Problem", "Warning", "Caution", "problems!"];
    Sgdisk {
        main_ok: verdict("Main header")
            && verdict("Main partition table")
            && !text.contains("invalid main GPT header"),
        backup_header_ok: verdict("Backup header"),
        backup_table_ok: verdict("Backup partition table"),
        differ: text.contains("Main and backup partition tables differ"),
        clean: exit_ok
            && text.contains("No problems found.")
            && !complaints.iter().any(|c| text.contains(c)),
        text,
    }
}

/// What `fsck.fat -n` said about a FAT file system.
#[derive(Debug)]
pub struct FsckFat {
    /// Its whole output (stdout, then stderr).
    pub text: String,
    pub status: ExitStatus,
    /// Its lines that are not [`benign_fsck_line`]s, and its exit status
    /// when that is neither 0 (clean) nor 1 (errors found, the benign ones
    /// included).
    pub problems: Vec<String>,
}

impl FsckFat {
    /// Exit 0 and not one line beyond the benign ones.
    pub fn clean(&self) -> bool {
        self.status.success() && self.problems.is_empty()
    }
}

/// fsck.fat's lines that a power cut may leave by design: clusters
/// allocated in the FAT that no file owns (a leak `fsck.fat -a` reclaims),
/// the two FATs differing over such clusters, a stale FSInfo free count;
/// and its banner and summary.
pub fn benign_fsck_line(l: &str) -> bool {
    l.starts_with("fsck.fat ")
        || l.starts_with("Reclaimed ") && l.contains(" unused cluster")
        || l.starts_with("Free cluster summary wrong (")
        || l == "FATs differ but appear to be intact."
        || l == "Using first FAT."
        || l == "Auto-correcting."
        || l == "Leaving filesystem unchanged."
        || l.contains(": ") && l.contains(" files, ") && l.ends_with(" clusters")
}

/// Runs `fsck.fat -n` on a file holding a FAT file system.
pub fn fsck_fat(fs_image: &Path) -> Result<FsckFat> {
    let out = crate::output(Command::new("fsck.fat").arg("-n").arg(fs_image))?;
    let text =
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    let mut problems: Vec<String> = text
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !benign_fsck_line(l))
        .map(str::to_string)
        .collect();
    if out.status.code().is_none_or(|c| c > 1) {
        problems.push(format!("fsck.fat -n exit status {}", out.status));
    }
    Ok(FsckFat {
        text,
        status: out.status,
        problems,
    })
}

/// `fsck.fat -n` on the `len` bytes at `offset` of `img` (a partition:
/// fsck.fat takes no offset, so they are copied out, keeping holes).
pub fn fsck_fat_at(img: &Path, offset: u64, len: u64) -> Result<FsckFat> {
    let copy = tempfile::NamedTempFile::new()?;
    extract(img, offset, len, copy.path())?;
    fsck_fat(copy.path())
}

/// Copies the `len` bytes at `offset` of `img` to a new file `to`,
/// writing only the non-zero MiB (the rest stays a hole).
pub fn extract(img: &Path, offset: u64, len: u64, to: &Path) -> Result<()> {
    let ctx = || format!("copying {len} bytes at {offset} of {}", img.display());
    let src = fs::File::open(img).with_context(ctx)?;
    let dst = fs::File::create(to).with_context(|| format!("creating {}", to.display()))?;
    dst.set_len(len).with_context(ctx)?;
    let mut buf = vec![0u8; 1 << 20];
    let mut done = 0u64;
    while done < len {
        let n = (len - done).min(buf.len() as u64) as usize;
        src.read_exact_at(&mut buf[..n], offset + done)
            .with_context(ctx)?;
        if buf[..n].iter().any(|b| *b != 0) {
            dst.write_all_at(&buf[..n], done).with_context(ctx)?;
        }
        done += n as u64;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sgdisk_reports_are_read() {
        let ok = read_sgdisk(true, "\nNo problems found. 2014 free sectors\n".into());
        assert!(ok.clean && ok.main_ok && ok.no_problems());
        let torn = read_sgdisk(
            true,
            "Caution: invalid main GPT header, but valid backup; regenerating main header\n\
             from backup!\n\nMain header: OK\nBackup header: OK\n\
             Main partition table: ERROR\nBackup partition table: OK\n"
                .into(),
        );
        assert!(!torn.clean && !torn.main_ok && torn.backup_header_ok && torn.backup_table_ok);
        // Each of the three signs of a bad primary counts by itself.
        for bad in [
            "Main header: ERROR\n",
            "Main header: OK\nMain partition table: ERROR\n",
            "Caution: invalid main GPT header, but valid backup\n",
        ] {
            assert!(!read_sgdisk(true, bad.into()).main_ok, "{bad}");
        }
        let stale = read_sgdisk(true, "Backup partition table: ERROR\n".into());
        assert!(stale.main_ok && !stale.backup_table_ok && !stale.clean);
    }

    #[test]
    fn only_a_cuts_leftovers_are_benign() {
        for l in [
            "fsck.fat 4.2 (2021-01-31)",
            "Reclaimed 3 unused clusters (12288 bytes) in 1 chain.",
            "Free cluster summary wrong (100 vs. really 97)",
            "FATs differ but appear to be intact.",
            "/tmp/esp: 7 files, 12/9000 clusters",
        ] {
            assert!(benign_fsck_line(l), "{l}");
        }
        for l in [
            "There are differences between boot sector and its backup.",
            "/EFI/Linux/x.efi",
            "  File size is 100 bytes, cluster chain length is 0 bytes.",
        ] {
            assert!(!benign_fsck_line(l), "{l}");
        }
    }
}
