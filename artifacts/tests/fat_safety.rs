//! Power cuts in the FAT32 editor at the granularity a disk has: whole
//! 512-byte sectors. Each test runs an edit once per possible cut (after 0,
//! 1, 2, ... sector writes) and reads what is left.

use std::collections::BTreeMap;
use std::fs;
use std::io::{Read, Seek, SeekFrom, Write};
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::process::Command;
use std::rc::Rc;

use artifacts::fat::{format_path, Fat32, FormatOptions};

const MIB: u64 = 1 << 20;
const SECTOR: u64 = 512;
const EPOCH: u64 = 1_700_000_001;

/// A disk that writes whole sectors atomically and nothing larger: every
/// write is split at sector boundaries and each piece counts as one write.
/// After `budget` of them the power is gone and every later write fails.
/// The written sectors live in an overlay over a read-only base image, so
/// one formatted volume serves every cut.
struct SectorDisk {
    base: Rc<fs::File>,
    len: u64,
    overlay: BTreeMap<u64, [u8; 512]>,
    pos: u64,
    budget: usize,
    writes: usize,
}

impl SectorDisk {
    fn new(base: Rc<fs::File>, overlay: BTreeMap<u64, [u8; 512]>, budget: usize) -> SectorDisk {
        let len = base.metadata().unwrap().len();
        SectorDisk {
            base,
            len,
            overlay,
            pos: 0,
            budget,
            writes: 0,
        }
    }

    fn sector(&self, n: u64) -> [u8; 512] {
        if let Some(s) = self.overlay.get(&n) {
            return *s;
        }
        let mut s = [0u8; 512];
        self.base.read_exact_at(&mut s, n * SECTOR).unwrap();
        s
    }
}

impl Read for SectorDisk {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = (buf.len() as u64).min(self.len.saturating_sub(self.pos)) as usize;
        let mut done = 0;
        while done < n {
            let at = self.pos + done as u64;
            let (sec, off) = (at / SECTOR, (at % SECTOR) as usize);
            let take = (512 - off).min(n - done);
            buf[done..done + take].copy_from_slice(&self.sector(sec)[off..off + take]);
            done += take;
        }
        self.pos += n as u64;
        Ok(n)
    }
}

impl Write for SectorDisk {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let mut done = 0;
        while done < buf.len() {
            if self.writes >= self.budget {
                return Err(std::io::Error::other("power cut"));
            }
            let at = self.pos + done as u64;
            let (sec, off) = (at / SECTOR, (at % SECTOR) as usize);
            let take = (512 - off).min(buf.len() - done);
            let mut s = self.sector(sec);
            s[off..off + take].copy_from_slice(&buf[done..done + take]);
            self.overlay.insert(sec, s);
            self.writes += 1;
            done += take;
        }
        self.pos += buf.len() as u64;
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl Seek for SectorDisk {
    fn seek(&mut self, p: SeekFrom) -> std::io::Result<u64> {
        self.pos = match p {
            SeekFrom::Start(n) => n,
            SeekFrom::End(d) => (self.len as i64 + d) as u64,
            SeekFrom::Current(d) => (self.pos as i64 + d) as u64,
        };
        Ok(self.pos)
    }
}

/// A formatted, empty volume of `size` bytes in `dir`.
fn volume(dir: &Path, size: u64) -> Rc<fs::File> {
    let img = dir.join("esp.img");
    let opts = FormatOptions {
        size,
        label: "EFI".into(),
        seed: b"fat-safety".to_vec(),
        epoch: EPOCH,
    };
    format_path(&img, &opts, &[]).unwrap();
    Rc::new(fs::File::open(&img).unwrap())
}

fn open(disk: SectorDisk) -> Fat32<SectorDisk> {
    let len = disk.len;
    let mut fat = Fat32::open(disk, 0, len).unwrap();
    fat.set_epoch(EPOCH);
    fat
}

/// Deterministic bytes standing in for a UKI.
fn content(len: usize, salt: u8) -> Vec<u8> {
    (0..len)
        .map(|i| {
            (i as u32)
                .wrapping_mul(2_654_435_761)
                .rotate_left(salt as u32) as u8
        })
        .collect()
}

/// The renames the ESP sees: the upgrade making its UKI visible, systemd-boot
/// counting a try, userspace blessing, the upgrade demoting the old release.
const RENAMES: [(&str, &str); 4] = [
    ("cairn-2.0.0+3.tmp", "cairn-2.0.0+3.efi"),
    ("cairn-1.0.0+3.efi", "cairn-1.0.0+2-1.efi"),
    ("cairn-1.0.0+2-1.efi", "cairn-1.0.0.efi"),
    ("cairn-1.0.0+3.efi", "cairn-1.0.0+0-1.efi"),
];

/// One cut of a rename: how many sector writes landed, whether the rename
/// returned Ok, the volume as the cut left it, and the names the renamed
/// file has there (entries pointing at its first cluster).
struct CutRename {
    budget: usize,
    done: bool,
    fat: Fat32<SectorDisk>,
    names: Vec<String>,
}

/// Sets up `EFI/Linux` with `before` (name, bytes) if given, then
/// `fillers` one-slot files (pushing the next entries along the directory),
/// then `from` holding `data`; then renames `from` to `to` once per possible
/// cut, from none of its sector writes landing to all of them.
fn each_cut_rename(
    base: &Rc<fs::File>,
    before: Option<(&str, &[u8])>,
    fillers: usize,
    (from, to): (&str, &str),
    data: &[u8],
    mut check: impl FnMut(CutRename),
) {
    let mut setup = open(SectorDisk::new(base.clone(), BTreeMap::new(), usize::MAX));
    setup.create_dir_all("EFI/Linux").unwrap();
    if let Some((name, bytes)) = before {
        setup
            .write_file(&format!("EFI/Linux/{name}"), bytes)
            .unwrap();
    }
    for i in 0..fillers {
        setup
            .write_file(&format!("EFI/Linux/F{i:02}.TXT"), b"x")
            .unwrap();
    }
    setup
        .write_file(&format!("EFI/Linux/{from}"), data)
        .unwrap();
    let cluster = setup
        .list("EFI/Linux")
        .unwrap()
        .into_iter()
        .find(|e| e.name == from)
        .unwrap()
        .first_cluster;
    let start = setup.into_inner().overlay;
    for budget in 0.. {
        let mut fat = open(SectorDisk::new(base.clone(), start.clone(), budget));
        let done = fat.rename(&format!("EFI/Linux/{from}"), to).is_ok();
        let left = fat.into_inner().overlay;
        let mut fat = open(SectorDisk::new(base.clone(), left, usize::MAX));
        let mut names: Vec<String> = fat
            .list("EFI/Linux")
            .unwrap()
            .into_iter()
            .filter(|e| e.first_cluster == cluster)
            .map(|e| e.name)
            .collect();
        names.sort();
        check(CutRename {
            budget,
            done,
            fat,
            names,
        });
        if done {
            break;
        }
    }
}

/// With 4 KiB clusters a UKI's directory entries (two long-name entries and
/// the short one) can straddle a sector boundary inside one cluster. Each
/// rename runs with the UKI's entries at every position in the first
/// sectors of `EFI/Linux`, cut after every sector write: the file must be
/// visible under the old name, the new one, or both, and never under any
/// other (its bare short name `CAIRN-~1.EFI`, or a mix of both names,
/// would be an entry without its boot counter or with a wrong one).
#[test]
fn finding_6_in_place_rename_never_exposes_an_uncounted_name() {
    let d = tempfile::tempdir().unwrap();
    let base = volume(d.path(), 300 * MIB);
    assert_eq!(
        open(SectorDisk::new(base.clone(), BTreeMap::new(), 0))
            .geometry()
            .cluster_size(),
        4096
    );
    let uki = content(9000, 3);
    let mut img = Image::new(&base, d.path());
    let mut bad = Vec::new();
    for (from, to) in RENAMES {
        // "." and ".." take slots 0 and 1; `fillers` short-named files
        // push the UKI's three entries to slot 2 + fillers.
        for fillers in 0..18 {
            each_cut_rename(&base, None, fillers, (from, to), &uki, |mut c| {
                let names = std::mem::take(&mut c.names);
                let names = &names;
                let ok = !names.is_empty()
                    && names.iter().all(|n| n == from || n == to)
                    && (!c.done || names == &[to]);
                if !ok {
                    bad.push(format!(
                        "{from} -> {to}, entries at slot {}, cut after {} sector writes: {names:?}",
                        2 + fillers,
                        c.budget
                    ));
                }
                for n in names {
                    assert_eq!(c.fat.read_file(&format!("EFI/Linux/{n}")).unwrap(), uki);
                }
                // mtools reads the cuts around a sector boundary too.
                if (12..14).contains(&fillers) {
                    let mut seen = mdir(img.show(&c.fat.into_inner().overlay), "/EFI/Linux");
                    seen.retain(|n| !n.ends_with(".TXT"));
                    seen.sort();
                    if seen != *names {
                        bad.push(format!(
                            "{from} -> {to}, entries at slot {}, cut after {} sector writes: mdir shows {seen:?}, we read {names:?}",
                            2 + fillers,
                            c.budget
                        ));
                    }
                }
            });
        }
    }
    assert!(
        bad.is_empty(),
        "{} cuts show a wrong name:\n{}",
        bad.len(),
        bad.join("\n")
    );
}

/// A real image file of base + overlay, for the independent tools. Made
/// once per test; each `show` first puts back the sectors the previous
/// overlay changed.
struct Image {
    path: std::path::PathBuf,
    base: Rc<fs::File>,
    shown: Vec<u64>,
}

impl Image {
    fn new(base: &Rc<fs::File>, dir: &Path) -> Image {
        let path = dir.join("cut.img");
        let len = base.metadata().unwrap().len();
        let out = fs::File::create(&path).unwrap();
        out.set_len(len).unwrap();
        // The formatted base is mostly holes: copy the chunks that are not.
        let mut buf = vec![0u8; 4 * MIB as usize];
        let mut at = 0;
        while at < len {
            let n = buf.len().min((len - at) as usize);
            base.read_exact_at(&mut buf[..n], at).unwrap();
            if buf[..n].iter().any(|&b| b != 0) {
                out.write_all_at(&buf[..n], at).unwrap();
            }
            at += n as u64;
        }
        Image {
            path,
            base: base.clone(),
            shown: Vec::new(),
        }
    }

    fn show(&mut self, overlay: &BTreeMap<u64, [u8; 512]>) -> &Path {
        let out = fs::OpenOptions::new().write(true).open(&self.path).unwrap();
        let mut s = [0u8; 512];
        for sec in self.shown.drain(..) {
            self.base.read_exact_at(&mut s, sec * SECTOR).unwrap();
            out.write_all_at(&s, sec * SECTOR).unwrap();
        }
        for (sec, s) in overlay {
            out.write_all_at(s, sec * SECTOR).unwrap();
            self.shown.push(*sec);
        }
        &self.path
    }
}

/// `fsck.fat -n` on an image: whether it found nothing to say, and all it
/// said.
fn fsck(img: &Path) -> (bool, String) {
    let r = Command::new("fsck.fat")
        .args(["-n", img.to_str().unwrap()])
        .output()
        .expect("fsck.fat (dosfstools) is required");
    let (out, err) = (
        String::from_utf8_lossy(&r.stdout),
        String::from_utf8_lossy(&r.stderr),
    );
    // It exits 0 on some damage: clean is its banner and summary alone.
    let lines: Vec<&str> = out.lines().collect();
    let clean = r.status.success()
        && lines.len() == 2
        && lines[1].contains(" files, ")
        && err.trim().is_empty();
    (clean, format!("{out}{err}"))
}

/// The names in `dir` as mtools reads the image (long names where their
/// checksum matches, as every other reader does).
fn mdir(img: &Path, dir: &str) -> Vec<String> {
    let r = Command::new("mdir")
        .args(["-b", "-i", img.to_str().unwrap(), &format!("::{dir}")])
        .output()
        .expect("mdir (mtools) is required");
    assert!(r.status.success(), "{}", String::from_utf8_lossy(&r.stderr));
    let prefix = format!("::{dir}/");
    String::from_utf8_lossy(&r.stdout)
        .lines()
        .map(|l| l.strip_prefix(&prefix).unwrap_or(l).to_string())
        .collect()
}

/// A rename cut between writing the new name and deleting the old leaves a
/// UKI under two names sharing one cluster chain: `cairn-2.0.0+3.tmp` and
/// `cairn-2.0.0+3.efi`. The next upgrade removes the stale `.tmp` and
/// writes a new UKI. Removing the `.tmp` must not free the clusters the live
/// `.efi` still uses: afterwards the `.efi` reads back whole, the new file
/// did not land on top of it, and `fsck.fat -n` finds the volume clean.
/// Running the rename again instead finishes it the same clean way.
#[test]
fn finding_6_stale_tmp_never_frees_the_live_uki() {
    let d = tempfile::tempdir().unwrap();
    let base = volume(d.path(), 64 * MIB);
    let uki = content(300_000, 5);
    let next = content(300_000, 9);
    let old = content(200_000, 1);
    let (tmp, live) = ("cairn-2.0.0+3.tmp", "cairn-2.0.0+3.efi");
    let mut img = Image::new(&base, d.path());
    let mut both = 0;
    // A rename writes the new entries before deleting the old ones when it
    // cannot rewrite them in place, e.g. when they cross a sector or
    // cluster boundary: put the .tmp's entries at every position.
    for fillers in 0..18 {
        let before = Some(("cairn-1.0.0.efi", old.as_slice()));
        each_cut_rename(&base, before, fillers, (tmp, live), &uki, |c| {
            if c.names != [live, tmp] {
                return;
            }
            both += 1;
            let at = format!("{fillers} fillers, cut after {} sector writes", c.budget);
            let cut = c.fat.into_inner().overlay;
            // What the next upgrade does first (step 1), then (step 4).
            let mut fat = open(SectorDisk::new(base.clone(), cut.clone(), usize::MAX));
            fat.remove_file(&format!("EFI/Linux/{tmp}")).unwrap();
            fat.write_file("EFI/Linux/cairn-3.0.0+3.tmp", &next)
                .unwrap();
            fat.flush().unwrap();
            assert!(
                fat.read_file(&format!("EFI/Linux/{live}")).ok() == Some(uki.clone()),
                "{at}: removing the stale .tmp freed the live UKI's clusters"
            );
            let (clean, report) = fsck(img.show(&fat.into_inner().overlay));
            assert!(
                clean,
                "{at}: fsck.fat -n after removing the stale .tmp:\n{report}"
            );
            // Or the same rename runs again (a re-run after the cut): it
            // finishes the first one.
            let mut fat = open(SectorDisk::new(base.clone(), cut, usize::MAX));
            fat.rename(&format!("EFI/Linux/{tmp}"), live).unwrap();
            let names: Vec<String> = fat
                .list("EFI/Linux")
                .unwrap()
                .into_iter()
                .map(|e| e.name)
                .filter(|n| n.starts_with("cairn-2"))
                .collect();
            assert_eq!(names, [live], "{at}");
            assert!(fat.read_file(&format!("EFI/Linux/{live}")).unwrap() == uki);
            let (clean, report) = fsck(img.show(&fat.into_inner().overlay));
            assert!(clean, "{at}: fsck.fat -n after the rename again:\n{report}");
        });
    }
    assert!(both > 0, "no cut left the UKI under both names");
}
