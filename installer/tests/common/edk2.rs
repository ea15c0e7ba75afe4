//! systemd-boot's boot-counting rename as EDK2's FAT driver performs it.
//!
//! systemd-boot renames `NAME+L-D.efi` to `NAME+(L-1)-(D+1).efi` through
//! `EFI_FILE_PROTOCOL.SetInfo`. EDK2's FatSetFileInfo (FatPkg
//! EnhancedFatDxe/Info.c) then:
//! * refuses with EFI_ACCESS_DENIED when the new name already exists
//!   (systemd-boot logs "Failed to rename ... ignoring" and boots the entry
//!   uncounted);
//! * otherwise marks the old entry deleted (FatRemoveDirEnt) and creates the
//!   new one (FatCreateDirEnt), which FatNewEntryPos places at the end of
//!   the directory, after every used and deleted slot (deleted slots are
//!   reused only once the directory reaches its maximum size), growing the
//!   directory by a zeroed cluster when it is full.
//!
//! Both entry writes go to the driver's write-back data cache and reach the
//! disk when the volume is flushed (a whole cache page per write, pages in
//! cache-slot order), followed by one FlushBlocks: so, as for the
//! installer's own epochs, any subset of the sectors they touch may persist,
//! each sector whole. When the old entry and the directory's end share a
//! sector the rename is atomic; otherwise a cut that keeps the new entry's
//! sector and not the old one's leaves the file under both names (sharing
//! one cluster chain), and one that keeps only the deletion leaves it under
//! none.
//!
//! The new entry set is the one artifacts' editor makes for the same rename
//! (long-name entries and a short name unique once the old entry is gone,
//! as EDK2 picks it after removing the old entry from its hash table).

use std::fs;
use std::os::unix::fs::FileExt;
use std::path::Path;

use artifacts::fat::Fat32;

use super::oracle;

/// Disk writes: (byte offset, bytes).
pub type Writes = Vec<(u64, Vec<u8>)>;

const SLOT: usize = 32;
const ATTR_LFN: u8 = 0x0F;
const DELETED: u8 = 0xE5;
const MASK: u32 = 0x0FFF_FFFF;

fn short11(display: &str) -> [u8; 11] {
    let mut out = [b' '; 11];
    let (base, ext) = display.split_once('.').unwrap_or((display, ""));
    for (i, b) in base.bytes().take(8).enumerate() {
        out[i] = b;
    }
    for (i, b) in ext.bytes().take(3).enumerate() {
        out[8 + i] = b;
    }
    out
}

fn cluster_of(e: &[u8]) -> u32 {
    (u16::from_le_bytes([e[20], e[21]]) as u32) << 16 | u16::from_le_bytes([e[26], e[27]]) as u32
}

/// A directory read raw: its cluster chain and bytes.
struct RawDir {
    chain: Vec<u32>,
    bytes: Vec<u8>,
}

struct Volume {
    file: fs::File,
    base: u64,
    geo: artifacts::fat::Geometry,
    fat: Vec<u32>,
}

impl Volume {
    fn open(img: &Path, base: u64, len: u64) -> Result<Volume, String> {
        let mut file = fs::File::open(img).map_err(|e| e.to_string())?;
        let geo = Fat32::open(&mut file, base, len)
            .map_err(|e| format!("ESP: {e}"))?
            .geometry();
        let n = geo.cluster_count() as usize + 2;
        let mut raw = vec![0u8; n * 4];
        file.read_exact_at(&mut raw, base + geo.fat_offset(0))
            .map_err(|e| e.to_string())?;
        let fat = raw
            .chunks_exact(4)
            .map(|c| u32::from_le_bytes(c.try_into().unwrap()))
            .collect();
        Ok(Volume {
            file,
            base,
            geo,
            fat,
        })
    }

    fn at(&self, cluster: u32) -> u64 {
        self.base + self.geo.cluster_offset(cluster)
    }

    fn dir(&self, first: u32) -> RawDir {
        let mut chain = vec![first];
        while let Some(&c) = chain.last() {
            let next = self.fat[c as usize] & MASK;
            if !(2..0x0FFF_FFF8).contains(&next) || chain.len() > self.fat.len() {
                break;
            }
            chain.push(next);
        }
        let cs = self.geo.cluster_size() as usize;
        let mut bytes = vec![0u8; chain.len() * cs];
        for (i, c) in chain.iter().enumerate() {
            self.file
                .read_exact_at(&mut bytes[i * cs..(i + 1) * cs], self.at(*c))
                .unwrap();
        }
        RawDir { chain, bytes }
    }

    /// Disk writes putting `data` at slot `slot` of `dir`, one per cluster.
    fn slot_writes(&self, dir: &RawDir, slot: usize, data: &[u8]) -> Vec<(u64, Vec<u8>)> {
        let cs = self.geo.cluster_size() as usize;
        let mut out: Vec<(u64, Vec<u8>)> = Vec::new();
        for (k, chunk) in data.chunks(SLOT).enumerate() {
            let pos = (slot + k) * SLOT;
            let at = self.at(dir.chain[pos / cs]) + (pos % cs) as u64;
            match out.last_mut() {
                Some((o, d)) if *o + d.len() as u64 == at && !pos.is_multiple_of(cs) => {
                    d.extend_from_slice(chunk)
                }
                _ => out.push((at, chunk.to_vec())),
            }
        }
        out
    }
}

/// The (first slot, last slot) of the live entry set in `dir` whose short
/// entry has this 8.3 name and first cluster.
fn entry_set(dir: &[u8], short: &[u8; 11], cluster: u32) -> Option<(usize, usize)> {
    let slots = dir.len() / SLOT;
    let last = (0..slots).find(|&i| {
        let e = &dir[i * SLOT..(i + 1) * SLOT];
        e[0] != 0
            && e[0] != DELETED
            && e[11] != ATTR_LFN
            && &e[..11] == short
            && cluster_of(e) == cluster
    })?;
    let mut first = last;
    while first > 0 {
        let e = &dir[(first - 1) * SLOT..first * SLOT];
        if e[11] != ATTR_LFN || e[0] == DELETED || e[0] == 0 {
            break;
        }
        first -= 1;
    }
    Some((first, last))
}

fn linux_dir_cluster(vol: &mut Fat32<&mut fs::File>) -> Result<u32, String> {
    vol.list("EFI")
        .map_err(|e| e.to_string())?
        .into_iter()
        .find(|e| e.is_dir && e.name.eq_ignore_ascii_case("Linux"))
        .map(|e| e.first_cluster)
        .ok_or_else(|| "no EFI/Linux".into())
}

/// The sectors EDK2 writes to rename `EFI/Linux/{from}` to `{to}`, each
/// with its new content; Ok(None) when `to` exists (EDK2 refuses).
/// `scratch` is a file the new entry set is built in.
pub fn rename_writes(
    img: &Path,
    from: &str,
    to: &str,
    scratch: &Path,
) -> Result<Option<Writes>, String> {
    Ok(entry_writes(img, from, to, scratch)?.map(|(_, w)| sectors(img, &w)))
}

/// Renames `EFI/Linux/{from}` to `{to}` uncut as Linux's vfat driver does
/// (init's blessing): the new entry set in the first run of free (deleted
/// or end) slots, found before the old set is deleted.
pub fn linux_rename(img: &Path, from: &str, to: &str, scratch: &Path) -> Result<(), String> {
    let (_, w) = placed_writes(img, from, to, scratch, true)?
        .ok_or_else(|| format!("EFI/Linux/{to} exists"))?;
    apply(img, &w, |_| true);
    Ok(())
}

/// [`rename_writes`] before merging into sectors: the old entry's deletion
/// (the first `.0` writes), then the new entry (and any directory growth).
pub type EntryWrites = (usize, Writes);

pub fn entry_writes(
    img: &Path,
    from: &str,
    to: &str,
    scratch: &Path,
) -> Result<Option<EntryWrites>, String> {
    placed_writes(img, from, to, scratch, false)
}

fn placed_writes(
    img: &Path,
    from: &str,
    to: &str,
    scratch: &Path,
    first_fit: bool,
) -> Result<Option<EntryWrites>, String> {
    let esp = oracle::firmware_esp(img)?;
    let mut f = fs::File::open(img).map_err(|e| e.to_string())?;
    let mut fat = Fat32::open(&mut f, esp.offset(), esp.len()).map_err(|e| e.to_string())?;
    let dir_cluster = linux_dir_cluster(&mut fat)?;
    let listing = fat.list("EFI/Linux").map_err(|e| e.to_string())?;
    drop(fat);
    if listing.iter().any(|e| e.name.eq_ignore_ascii_case(to)) {
        return Ok(None);
    }
    let old = listing
        .iter()
        .find(|e| e.name == from)
        .ok_or_else(|| format!("no EFI/Linux/{from}"))?;
    let vol = Volume::open(img, esp.offset(), esp.len())?;
    let dir = vol.dir(dir_cluster);
    let (first, last) = entry_set(&dir.bytes, &short11(&old.short_name), old.first_cluster)
        .ok_or_else(|| format!("no directory entry for {from}"))?;

    // The new entry set, as the editor makes it on a copy of the ESP.
    oracle::extract(img, &esp, scratch);
    let mut sf = fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(scratch)
        .unwrap();
    let mut sv = Fat32::open(&mut sf, 0, esp.len()).map_err(|e| e.to_string())?;
    sv.rename(&format!("EFI/Linux/{from}"), to)
        .map_err(|e| format!("building the entry for {to}: {e}"))?;
    let renamed = sv
        .list("EFI/Linux")
        .map_err(|e| e.to_string())?
        .into_iter()
        .find(|e| e.name == to)
        .ok_or("the renamed entry is missing")?;
    drop(sv);
    let svol = Volume::open(scratch, 0, esp.len())?;
    let sdir = svol.dir(dir_cluster);
    let (nf, nl) = entry_set(
        &sdir.bytes,
        &short11(&renamed.short_name),
        renamed.first_cluster,
    )
    .ok_or("the renamed entry set is missing")?;
    let set = sdir.bytes[nf * SLOT..(nl + 1) * SLOT].to_vec();

    let mut deletion = dir.bytes[first * SLOT..(last + 1) * SLOT].to_vec();
    for e in deletion.chunks_exact_mut(SLOT) {
        e[0] = DELETED;
    }
    let slots = dir.bytes.len() / SLOT;
    let n = set.len() / SLOT;
    let free = |i: usize| matches!(dir.bytes[i * SLOT], 0 | DELETED);
    let end = if first_fit {
        (0..slots)
            .find(|&i| (i..i + n).all(|j| j >= slots || free(j)))
            .unwrap_or(slots)
    } else {
        (0..slots)
            .find(|&i| dir.bytes[i * SLOT] == 0)
            .unwrap_or(slots)
    };
    let mut writes = vol.slot_writes(&dir, first, &deletion);
    let deletions = writes.len();
    if end + n <= slots {
        writes.extend(vol.slot_writes(&dir, end, &set));
    } else {
        // FatExpandODir: a zeroed cluster chained to the directory, then
        // the entry set written across the old end and the new cluster.
        let free = (2..vol.fat.len() as u32)
            .find(|&c| vol.fat[c as usize] & MASK == 0)
            .ok_or("the ESP is full")?;
        let tail = *dir.chain.last().unwrap();
        let cs = vol.geo.cluster_size() as usize;
        let mut grown = RawDir {
            chain: dir.chain.clone(),
            bytes: dir.bytes.clone(),
        };
        grown.chain.push(free);
        grown.bytes.resize(grown.bytes.len() + cs, 0);
        writes.push((vol.at(free), vec![0u8; cs]));
        for copy in 0..vol.geo.fat_count {
            let fat_at = vol.base + vol.geo.fat_offset(copy);
            let keep = |c: u32, v: u32| (vol.fat[c as usize] & !MASK) | v;
            writes.push((
                fat_at + 4 * tail as u64,
                keep(tail, free).to_le_bytes().to_vec(),
            ));
            writes.push((
                fat_at + 4 * free as u64,
                keep(free, MASK).to_le_bytes().to_vec(),
            ));
        }
        writes.extend(vol.slot_writes(&grown, end, &set));
    }
    Ok(Some((deletions, writes)))
}

/// The writes as whole sectors (the unit a disk writes or loses), each
/// holding every write that touches it.
fn sectors(img: &Path, writes: &[(u64, Vec<u8>)]) -> Vec<(u64, Vec<u8>)> {
    const SECTOR: u64 = 512;
    let f = fs::File::open(img).unwrap();
    let mut out: Vec<(u64, Vec<u8>)> = Vec::new();
    for (at, data) in writes {
        for s in at / SECTOR..(at + data.len() as u64).div_ceil(SECTOR) {
            let start = s * SECTOR;
            let i = match out.iter().position(|(o, _)| *o == start) {
                Some(i) => i,
                None => {
                    let mut b = vec![0u8; SECTOR as usize];
                    f.read_exact_at(&mut b, start).unwrap();
                    out.push((start, b));
                    out.len() - 1
                }
            };
            let lo = start.max(*at);
            let hi = (start + SECTOR).min(at + data.len() as u64);
            out[i].1[(lo - start) as usize..(hi - start) as usize]
                .copy_from_slice(&data[(lo - at) as usize..(hi - at) as usize]);
        }
    }
    out
}

/// Writes `writes[i]` for every i in `kept` to `img`.
pub fn apply(img: &Path, writes: &[(u64, Vec<u8>)], kept: impl Fn(usize) -> bool) {
    let f = fs::OpenOptions::new().write(true).open(img).unwrap();
    for (i, (at, data)) in writes.iter().enumerate() {
        if kept(i) {
            f.write_all_at(data, *at).unwrap();
        }
    }
}

/// `EFI/Linux` as slots: (slots in its clusters, first end-of-directory
/// slot).
pub fn linux_dir_slots(img: &Path) -> Result<(usize, usize), String> {
    let (_, bytes) = linux_dir_raw(img)?;
    let dir = RawDir {
        chain: Vec::new(),
        bytes,
    };
    let slots = dir.bytes.len() / SLOT;
    let end = (0..slots)
        .find(|&i| dir.bytes[i * SLOT] == 0)
        .unwrap_or(slots);
    Ok((slots, end))
}

/// `EFI/Linux`'s raw bytes, with the disk offset of each 512-byte sector.
pub fn linux_dir_raw(img: &Path) -> Result<(Vec<u64>, Vec<u8>), String> {
    let esp = oracle::firmware_esp(img)?;
    let mut f = fs::File::open(img).map_err(|e| e.to_string())?;
    let mut fat = Fat32::open(&mut f, esp.offset(), esp.len()).map_err(|e| e.to_string())?;
    let first = linux_dir_cluster(&mut fat)?;
    drop(fat);
    let vol = Volume::open(img, esp.offset(), esp.len())?;
    let dir = vol.dir(first);
    let cs = vol.geo.cluster_size();
    let offsets = dir
        .chain
        .iter()
        .flat_map(|&c| (0..cs / 512).map(move |k| (c, k * 512)))
        .map(|(c, o)| vol.at(c) + o)
        .collect();
    Ok((offsets, dir.bytes))
}
