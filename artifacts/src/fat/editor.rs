//! In-place edits of an existing FAT32 volume.
//!
//! Every read and write goes through the caller's `io` handle, so a
//! fault-injection harness can cut the volume after any single write. Each
//! operation's writes are few and ordered so that a cut between any two of
//! them leaves a volume in which no file is visible half-written:
//!
//! * `write_file`: (1) file data, one write per contiguous cluster run, the
//!   tail of the last cluster zeroed; (2) when the directory must grow, its
//!   new clusters zeroed and chained in the FAT, barrier, then the link
//!   from its last cluster; (3) the FAT: changed sectors, merged into runs,
//!   FAT 1 then FAT 2; barrier; (4) the directory entries, long-name entries
//!   before the short entry (one write per 512-byte sector the set spans,
//!   the sector holding the short entry last); (5) FSInfo. A cut before (4)
//!   leaves allocated but unreferenced clusters (a lost chain `fsck.fat`
//!   reclaims), never a visible partial file; the barrier keeps a disk that
//!   reorders writes from landing the entry before the chain it names.
//! * `create_dir`: the same, with the new directory's cluster (`.`, `..`)
//!   as the data.
//! * `remove_file`: (1) the entries marked deleted (the part holding the
//!   short entry first); barrier; (2) the FAT chain freed, FAT 1 then
//!   FAT 2, except clusters another entry still reaches (a cut rename's
//!   second name); (3) FSInfo. Without the barrier a reordering disk could
//!   free the chain while the entry still names it, and the next
//!   allocation would write into a visible file.
//! * `rename`: when the new entry set needs no more slots than the old one
//!   and the old one lies in one 512-byte sector, a single write inside
//!   that sector replaces it in place (unused leading slots marked
//!   deleted): the device writes the sector whole or not at all, so the
//!   file has exactly one of its two names at every point. An entry set
//!   that crosses a sector boundary is never rewritten in place: a device
//!   that lands one sector and not the other would show a name that is
//!   neither (the short name alone, or long-name parts of both names
//!   under one checksum), e.g. a UKI without its boot counter. Otherwise:
//!   (1) directory growth as above if needed, then a barrier; (2) the new
//!   entries, with a short name of their own, written into free slots
//!   (long-name sectors first, the short entry's sector last: until it
//!   lands the new parts are orphans readers skip); barrier; (3) the old
//!   entries marked deleted (the short entry's sector first); (4) FSInfo if
//!   the directory grew. A cut between (2) and (3) leaves the file visible
//!   under both names, sharing its clusters (`fsck.fat` reports them
//!   cross-linked); it never leaves it with no name or a third one.
//!   Removing either name then keeps the other's clusters, and renaming the
//!   old name to the new one again finishes the rename.
//! * `replace_file`: (1) the new content into free clusters, as
//!   `write_file`'s data; (2) its chain in the FAT, FAT 1 then FAT 2;
//!   barrier; (3) the file's one short entry rewritten (first cluster and
//!   size) in place: 32 bytes inside one sector, so the device writes all
//!   or none of it; barrier; (4) the old chain freed, FAT 1 then FAT 2;
//!   (5) FSInfo; barrier. Until (3) lands the entry names the old, untouched
//!   chain; from then on the new, complete one. A cut between the first
//!   FAT write and the final FSInfo write leaves a repairable leak that
//!   `fsck.fat -n` reports (exit 1): the new chain (before (3)) or the old
//!   one (after) as "Reclaimed N unused clusters", the two FATs differing
//!   if the cut fell between FAT 1 and FAT 2, and a stale FSInfo free
//!   count; `fsck.fat -a` reclaims it. The file never reads back mixed.
//!
//! After any error from `io` the in-memory FAT may be ahead of the disk:
//! drop the handle and open the volume again.
//!
//! FSInfo is a hint: after a cut its free count may be stale, which
//! `fsck.fat` corrects; the FAT itself is always authoritative.

use std::io::{Read, Seek, SeekFrom, Write};

use super::dirent::{self, DosTime, Parsed, ATTR_DIR, DELETED};
use super::geometry::{get32, parse_boot_sector, Geometry, FSINFO_FREE};
use super::{io_err, names, FatError};

const EOC: u32 = 0x0FFF_FFFF;
const MASK: u32 = 0x0FFF_FFFF;
/// What a device writes all or nothing of: one 512-byte sector. Whatever the
/// volume's logical sector size, no larger write is assumed to land whole.
const ATOMIC: usize = 512;

/// One entry of a directory listing.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EntryInfo {
    /// The long name, or the short name when there is none.
    pub name: String,
    /// The 8.3 name as `BASE.EXT`.
    pub short_name: String,
    pub is_dir: bool,
    pub size: u32,
    pub first_cluster: u32,
}

pub struct Fat32<R> {
    io: R,
    base: u64,
    geo: Geometry,
    /// Raw FAT entries 0..cluster_count+2 (upper 4 bits kept as found).
    fat: Vec<u32>,
    free: u32,
    fsinfo: bool,
    stamp: DosTime,
}

struct Dir {
    chain: Vec<u32>,
    bytes: Vec<u8>,
    entries: Vec<Parsed>,
    /// First cluster as `..` entries refer to it (0 for the root).
    dotdot: u32,
}

impl<R: Read + Write + Seek> Fat32<R> {
    /// Opens the FAT32 volume occupying `len` bytes of `io` from `offset`.
    /// Reads the boot sector and FAT 1; new timestamps default to
    /// 1980-01-01 until [`Fat32::set_epoch`].
    pub fn open(mut io: R, offset: u64, len: u64) -> Result<Self, FatError> {
        let mut boot = [0u8; 512];
        read_at(&mut io, offset, &mut boot, "boot sector")?;
        let geo = parse_boot_sector(&boot, len)?;
        let entries = geo.cluster_count() as usize + 2;
        let mut raw = vec![0u8; entries * 4];
        read_at(&mut io, offset + geo.fat_offset(0), &mut raw, "FAT 1")?;
        let fat: Vec<u32> = raw.chunks_exact(4).map(|c| get32(c, 0)).collect();
        let free = fat[2..].iter().filter(|v| *v & MASK == 0).count() as u32;
        let fsinfo = if geo.fsinfo_sector >= 1 && geo.fsinfo_sector < geo.reserved_sectors {
            let mut s = vec![0u8; geo.bytes_per_sector as usize];
            let at = offset + geo.fsinfo_sector as u64 * geo.bytes_per_sector as u64;
            read_at(&mut io, at, &mut s, "FSInfo sector")?;
            get32(&s, 0) == 0x4161_5252 && get32(&s, 484) == 0x6141_7272
        } else {
            false
        };
        Ok(Fat32 {
            io,
            base: offset,
            geo,
            fat,
            free,
            fsinfo,
            stamp: DosTime::from_epoch(0),
        })
    }

    /// Timestamp for entries created from now on (SOURCE_DATE_EPOCH,
    /// clamped as [`DosTime`] describes).
    pub fn set_epoch(&mut self, epoch: u64) {
        self.stamp = DosTime::from_epoch(epoch);
    }

    pub fn geometry(&self) -> Geometry {
        self.geo
    }

    pub fn free_bytes(&self) -> u64 {
        self.free as u64 * self.geo.cluster_size()
    }

    pub fn into_inner(self) -> R {
        self.io
    }

    /// Entries of the directory at `path` (`""` or `/` for the root), in
    /// on-disk order, without `.`, `..` and the volume label.
    pub fn list(&mut self, path: &str) -> Result<Vec<EntryInfo>, FatError> {
        let dir = self.open_dir(&split(path), path)?;
        Ok(dir
            .entries
            .iter()
            .map(|e| EntryInfo {
                name: e.name.clone(),
                short_name: names::short_display(&e.short, 0),
                is_dir: e.is_dir(),
                size: e.size,
                first_cluster: e.cluster,
            })
            .collect())
    }

    pub fn read_file(&mut self, path: &str) -> Result<Vec<u8>, FatError> {
        let (_, e) = self.lookup(path)?;
        if e.is_dir() {
            return Err(FatError::IsADirectory { path: path.into() });
        }
        let mut out = Vec::with_capacity(e.size as usize);
        if e.size == 0 {
            return Ok(out);
        }
        let chain = self.chain_of(e.cluster, path)?;
        let cs = self.geo.cluster_size();
        if (chain.len() as u64) * cs < e.size as u64 {
            return Err(FatError::Corrupt(format!(
                "{path}: size {} needs {} clusters, its chain has {}",
                e.size,
                (e.size as u64).div_ceil(cs),
                chain.len()
            )));
        }
        for (first, n) in runs(&chain) {
            let want = ((n as u64 * cs) as usize).min(e.size as usize - out.len());
            let start = out.len();
            out.resize(start + want, 0);
            let at = self.base + self.geo.cluster_offset(first);
            read_at(&mut self.io, at, &mut out[start..], path)?;
            if out.len() == e.size as usize {
                break;
            }
        }
        Ok(out)
    }

    /// Creates a new file (the parent directory must exist; the name must
    /// not). See the module docs for the write order.
    pub fn write_file(&mut self, path: &str, data: &[u8]) -> Result<(), FatError> {
        self.write_file_from(path, &mut &data[..], data.len() as u64)
    }

    /// [`Fat32::write_file`] reading exactly `len` bytes from `src`.
    pub fn write_file_from(
        &mut self,
        path: &str,
        src: &mut dyn Read,
        len: u64,
    ) -> Result<(), FatError> {
        self.create_file(path, src, len, None).map(|_| ())
    }

    /// [`Fat32::write_file`], placing the new entry set for a writer that
    /// only ever appends at the directory's end (UEFI firmware: EDK2's FAT
    /// driver renames a file by deleting its entry set and writing the new
    /// one after the last used or deleted slot). The set goes after the
    /// directory's last live entry, at the first slot from which `span`
    /// slots (the set and the sets later appended after it; at least the
    /// set) lie in one 512-byte sector; the slots skipped are written as
    /// deleted entries, which such a writer steps over, and every slot
    /// after the set is zeroed, so the directory ends right after it. A
    /// device writes a sector whole or not at all, so each append whose
    /// deletion and new set share that sector lands whole.
    ///
    /// When `span` exceeds a sector's 16 slots no placement can make it
    /// atomic: the set then simply goes after the last live entry. Returns
    /// the set's first slot (see [`Fat32::appended_slot`]).
    ///
    /// Write order as `write_file`'s; the zeroing lies past every live
    /// entry and goes before the barrier, the padding in the same sector
    /// writes as the set (a cut keeping the set without an earlier padding
    /// sector leaves an end marker before it: the file is simply not there).
    pub fn write_file_appended(
        &mut self,
        path: &str,
        data: &[u8],
        span: usize,
    ) -> Result<usize, FatError> {
        self.create_file(path, &mut &data[..], data.len() as u64, Some(span))
    }

    /// The slot [`Fat32::write_file_appended`] would give a set of
    /// `set_len` slots with this `span` in the directory at `path`.
    pub fn appended_slot(
        &mut self,
        path: &str,
        set_len: usize,
        span: usize,
    ) -> Result<usize, FatError> {
        let dir = self.open_dir(&split(path), path)?;
        Ok(append_at(&dir, set_len, span))
    }

    fn create_file(
        &mut self,
        path: &str,
        src: &mut dyn Read,
        len: u64,
        span: Option<usize>,
    ) -> Result<usize, FatError> {
        if len > u32::MAX as u64 {
            return Err(FatError::FileTooLarge {
                path: path.into(),
                size: len,
            });
        }
        let (mut dir, name) = self.prepare_new(path)?;
        let cs = self.geo.cluster_size();
        let n = len.div_ceil(cs) as u32;
        let (short, lfn) = pick_short(&dir, &name, None);
        let tail = dirent::short_entry(&short, 0, 0, len as u32, self.stamp);
        let set_len = dirent::entry_set(&name, &short, lfn, &tail).len();
        let (start, grow) = match span {
            None => plan_slots(&dir, set_len, cs),
            Some(span) => {
                let start = append_at(&dir, set_len, span);
                let need = ((start + set_len) * 32).saturating_sub(dir.bytes.len()) as u64;
                (start, need.div_ceil(cs) as u32)
            }
        };
        if n + grow > self.free {
            return Err(FatError::NoSpace {
                path: path.into(),
                needed: (n + grow) as u64 * cs,
                free: self.free_bytes(),
            });
        }
        let clusters = self.alloc(n);
        if let Err(e) = self.write_data(&clusters, src, len, path) {
            self.release(&clusters);
            return Err(e);
        }
        self.grow_dir(&mut dir, grow, path)?;
        self.write_fat(&clusters)?;
        let mut lead = 0;
        if span.is_some() {
            // Past every live entry: invisible whether or not it lands.
            let live_end = live_end(&dir);
            lead = start - live_end;
            let total = dir.bytes.len() / 32;
            let stale: Vec<usize> = (start + set_len..total)
                .filter(|&i| dir.bytes[i * 32..i * 32 + 32] != [0u8; 32])
                .collect();
            if let (Some(&a), Some(&b)) = (stale.first(), stale.last()) {
                self.write_slots(&mut dir, a, &vec![[0u8; 32]; b + 1 - a], false, path)?;
            }
        }
        // The entry must not reach the disk before the chain it names.
        self.barrier(path)?;
        let first = clusters.first().copied().unwrap_or(0);
        let tail = dirent::short_entry(&short, 0, first, len as u32, self.stamp);
        let mut set = vec![deleted_slot(); lead];
        set.extend(dirent::entry_set(&name, &short, lfn, &tail));
        self.write_slots(&mut dir, start - lead, &set, false, path)?;
        self.write_fsinfo()?;
        Ok(start)
    }

    /// Creates one directory (its parent must exist).
    pub fn create_dir(&mut self, path: &str) -> Result<(), FatError> {
        let (mut dir, name) = self.prepare_new(path)?;
        let cs = self.geo.cluster_size();
        let (short, lfn) = pick_short(&dir, &name, None);
        let tail = dirent::short_entry(&short, ATTR_DIR, 0, 0, self.stamp);
        let set_len = dirent::entry_set(&name, &short, lfn, &tail).len();
        let (start, grow) = plan_slots(&dir, set_len, cs);
        if 1 + grow > self.free {
            return Err(FatError::NoSpace {
                path: path.into(),
                needed: (1 + grow) as u64 * cs,
                free: self.free_bytes(),
            });
        }
        let clusters = self.alloc(1);
        let c = clusters[0];
        let mut body = vec![0u8; cs as usize];
        body[..32].copy_from_slice(&dirent::short_entry(
            b".          ",
            ATTR_DIR,
            c,
            0,
            self.stamp,
        ));
        body[32..64].copy_from_slice(&dirent::short_entry(
            b"..         ",
            ATTR_DIR,
            dir.dotdot,
            0,
            self.stamp,
        ));
        let at = self.base + self.geo.cluster_offset(c);
        if let Err(e) = write_at(&mut self.io, at, &body, path) {
            self.release(&clusters);
            return Err(e);
        }
        self.grow_dir(&mut dir, grow, path)?;
        self.write_fat(&clusters)?;
        self.barrier(path)?;
        let tail = dirent::short_entry(&short, ATTR_DIR, c, 0, self.stamp);
        let set = dirent::entry_set(&name, &short, lfn, &tail);
        self.write_slots(&mut dir, start, &set, false, path)?;
        self.write_fsinfo()
    }

    /// Creates `path` and any missing parents; existing directories are fine.
    pub fn create_dir_all(&mut self, path: &str) -> Result<(), FatError> {
        let parts = split(path);
        for i in 1..=parts.len() {
            let sub = parts[..i].join("/");
            let dir = self.open_dir(&parts[..i - 1], &sub)?;
            match dir
                .entries
                .iter()
                .find(|e| names::same_name(&e.name, parts[i - 1]))
            {
                Some(e) if e.is_dir() => {}
                Some(_) => return Err(FatError::NotADirectory { path: sub }),
                None => self.create_dir(&sub)?,
            }
        }
        Ok(())
    }

    /// Removes a file (not a directory). Clusters another entry still
    /// reaches stay allocated: after a cut rename, the old and the new name
    /// share one chain (see the module docs), and removing the leftover
    /// must not free the file that keeps the other name.
    pub fn remove_file(&mut self, path: &str) -> Result<(), FatError> {
        let (mut dir, e) = self.lookup(path)?;
        if e.is_dir() {
            return Err(FatError::IsADirectory { path: path.into() });
        }
        let chain = self.file_chain(&e, path)?;
        let chain = self.unshared(&chain, &dir, &e, path)?;
        self.delete_slots(&mut dir, e.first_slot, e.slot, path)?;
        // Freed clusters may be reused at once: the entry naming them must
        // be gone from the disk first.
        self.barrier(path)?;
        self.release(&chain);
        self.write_fat(&chain)?;
        self.write_fsinfo()
    }

    /// The clusters of `chain` (the data of entry `e` in `dir`) that no other
    /// entry of the volume reaches, i.e. the ones removing `e` may free.
    fn unshared(
        &mut self,
        chain: &[u32],
        dir: &Dir,
        e: &Parsed,
        path: &str,
    ) -> Result<Vec<u32>, FatError> {
        if chain.is_empty() {
            return Ok(Vec::new());
        }
        let skip = (dir.chain[0], e.slot);
        let used = self.reachable_except(skip, path)?;
        Ok(chain
            .iter()
            .copied()
            .filter(|c| !used.contains(c))
            .collect())
    }

    /// Every cluster reachable from the root directory (directories and
    /// files), leaving out the data of the entry at `skip` (first cluster of
    /// its directory, slot). Directories are walked once each, in on-disk
    /// order.
    fn reachable_except(
        &mut self,
        skip: (u32, usize),
        path: &str,
    ) -> Result<std::collections::BTreeSet<u32>, FatError> {
        let mut used = std::collections::BTreeSet::new();
        let mut todo = vec![(self.geo.root_cluster, 0u32)];
        let mut seen = std::collections::BTreeSet::new();
        while let Some((first, dotdot)) = todo.pop() {
            if !seen.insert(first) {
                continue;
            }
            let dir = self.load_dir(first, dotdot, path)?;
            used.extend(&dir.chain);
            for o in &dir.entries {
                if (first, o.slot) == skip || o.cluster < 2 {
                    continue;
                }
                if o.is_dir() {
                    todo.push((o.cluster, o.cluster));
                } else {
                    used.extend(self.chain_of(o.cluster, path)?);
                }
            }
        }
        Ok(used)
    }

    /// Replaces the content of the existing file at `path` so that a cut at
    /// any write leaves it whole, either old or new (see the module docs for
    /// the order and what `fsck.fat` says about a cut). Returns `false`, having
    /// written nothing, when the file already holds `data`.
    ///
    /// The barriers are `io.flush()`; the old and the new content are both
    /// allocated between them, so the volume needs room for the new content
    /// next to the old.
    pub fn replace_file(&mut self, path: &str, data: &[u8]) -> Result<bool, FatError> {
        if data.len() as u64 > u32::MAX as u64 {
            return Err(FatError::FileTooLarge {
                path: path.into(),
                size: data.len() as u64,
            });
        }
        if self.read_file(path)? == data {
            return Ok(false);
        }
        let (mut dir, e) = self.lookup(path)?;
        let old = self.file_chain(&e, path)?;
        let cs = self.geo.cluster_size();
        let n = (data.len() as u64).div_ceil(cs) as u32;
        if n > self.free {
            return Err(FatError::NoSpace {
                path: path.into(),
                needed: n as u64 * cs,
                free: self.free_bytes(),
            });
        }
        let new = self.alloc(n);
        if let Err(err) = self.write_data(&new, &mut &data[..], data.len() as u64, path) {
            self.release(&new);
            return Err(err);
        }
        self.write_fat(&new)?;
        self.barrier(path)?;
        // Only the cluster and size fields change: the name bytes stay as
        // they are, so even a torn entry write cannot rename the file.
        let mut entry = e.raw;
        dirent::set_cluster_and_size(
            &mut entry,
            new.first().copied().unwrap_or(0),
            data.len() as u32,
        );
        self.write_slots(&mut dir, e.slot, &[entry], false, path)?;
        self.barrier(path)?;
        // A duplicate name left by a cut rename keeps the old content.
        let old = self.unshared(&old, &dir, &e, path)?;
        self.release(&old);
        self.write_fat(&old)?;
        self.write_fsinfo()?;
        self.barrier(path)?;
        Ok(true)
    }

    fn barrier(&mut self, path: &str) -> Result<(), FatError> {
        self.io
            .flush()
            .map_err(io_err(format!("flushing while changing {path}")))
    }

    /// Renames the file or directory at `path` to `new_name` in the same
    /// directory. See the module docs for why this is safe to cut.
    ///
    /// When `new_name` already exists as the same file (an entry with the
    /// same first cluster: what a rename cut between its two steps leaves),
    /// the rename finishes that one: only the old entries are deleted.
    pub fn rename(&mut self, path: &str, new_name: &str) -> Result<(), FatError> {
        names::validate(new_name)?;
        let (mut dir, e) = self.lookup(path)?;
        let parts = split(path);
        let target = {
            let mut p = parts[..parts.len() - 1].to_vec();
            p.push(new_name);
            p.join("/")
        };
        let clash = dir.entries.iter().find(|o| {
            o.slot != e.slot
                && (names::same_name(&o.name, new_name)
                    || names::as_short(new_name) == Some(o.short))
        });
        if let Some(o) = clash {
            if o.cluster >= 2 && o.cluster == e.cluster && o.name == new_name {
                return self.delete_slots(&mut dir, e.first_slot, e.slot, path);
            }
            return Err(FatError::AlreadyExists { path: target });
        }
        let old_n = e.slot - e.first_slot + 1;
        let one_sector = e.first_slot * 32 / ATOMIC == e.slot * 32 / ATOMIC;
        let (short, lfn) = pick_short(&dir, new_name, Some(e.slot));
        let set = dirent::entry_set(new_name, &short, lfn, &e.raw);
        if set.len() <= old_n && one_sector {
            let mut buf = vec![[0u8; 32]; old_n - set.len()];
            for b in &mut buf {
                b[0] = DELETED;
            }
            buf.extend(set);
            return self.write_slots(&mut dir, e.first_slot, &buf, false, path);
        }
        // Both names exist side by side for a moment: give the new one a
        // short name of its own, so the directory never holds two equal ones.
        let (short, lfn) = pick_short(&dir, new_name, None);
        let set = dirent::entry_set(new_name, &short, lfn, &e.raw);
        let cs = self.geo.cluster_size() as usize;
        let (start, grow) = plan_slots(&dir, set.len(), cs as u64);
        if grow > self.free {
            return Err(FatError::NoSpace {
                path: target,
                needed: grow as u64 * cs as u64,
                free: self.free_bytes(),
            });
        }
        if grow > 0 {
            self.grow_dir(&mut dir, grow, path)?;
            self.barrier(path)?;
        }
        self.write_slots(&mut dir, start, &set, false, path)?;
        // The new name is on the disk before the old one goes.
        self.barrier(path)?;
        self.delete_slots(&mut dir, e.first_slot, e.slot, path)?;
        if grow > 0 {
            self.write_fsinfo()?;
        }
        Ok(())
    }

    /// Makes room for `n` directory entries after the last live entry of
    /// the directory at `path`, so that a writer that only ever appends at
    /// the end (UEFI firmware: EDK2's FAT driver renames a file by adding
    /// its new entry after every used and deleted slot) never has to grow
    /// the directory itself, whose FAT and data writes it does not order.
    /// Deleted slots after the last live entry are zeroed (the end marker
    /// moves back to just after it; only slots past every live entry are
    /// touched, so any subset of these writes leaves every entry visible);
    /// then, if fewer than `n` slots follow, zeroed clusters are chained on
    /// (data and FAT; barrier). Returns the number of clusters added.
    pub fn reserve_entries(&mut self, path: &str, n: usize) -> Result<u32, FatError> {
        let mut dir = self.open_dir(&split(path), path)?;
        let total = dir.bytes.len() / 32;
        // Readers stop at the first end-of-directory slot: whatever lies
        // past it (a cut's half-written set) is no entry, and goes too.
        let live_end = live_end(&dir);
        let stale: Vec<usize> = (live_end..total)
            .filter(|&i| dir.bytes[i * 32] != 0 || dir.bytes[i * 32..i * 32 + 32] != [0u8; 32])
            .collect();
        if let (Some(&first), Some(&last)) = (stale.first(), stale.last()) {
            let zeros = vec![[0u8; 32]; last + 1 - first];
            self.write_slots(&mut dir, first, &zeros, false, path)?;
        }
        let cs = self.geo.cluster_size();
        let missing = (n.saturating_sub(total - live_end) as u64 * 32).div_ceil(cs) as u32;
        if missing > 0 {
            if missing > self.free {
                return Err(FatError::NoSpace {
                    path: path.into(),
                    needed: missing as u64 * cs,
                    free: self.free_bytes(),
                });
            }
            self.grow_dir(&mut dir, missing, path)?;
            self.write_fsinfo()?;
        }
        self.barrier(path)?;
        Ok(missing)
    }

    /// Writes FSInfo's free count and next-free hint, then flushes `io`.
    pub fn flush(&mut self) -> Result<(), FatError> {
        self.write_fsinfo()?;
        self.io.flush().map_err(io_err("flushing FAT32 volume"))
    }

    fn write_fsinfo(&mut self) -> Result<(), FatError> {
        if !self.fsinfo {
            return Ok(());
        }
        let next = (2..self.fat.len())
            .find(|&c| self.fat[c] & MASK == 0)
            .map_or(0xFFFF_FFFF, |c| c as u32);
        let mut b = [0u8; 8];
        b[..4].copy_from_slice(&self.free.to_le_bytes());
        b[4..].copy_from_slice(&next.to_le_bytes());
        let at = self.base
            + self.geo.fsinfo_sector as u64 * self.geo.bytes_per_sector as u64
            + FSINFO_FREE as u64;
        write_at(&mut self.io, at, &b, "FSInfo sector")
    }

    fn prepare_new(&mut self, path: &str) -> Result<(Dir, String), FatError> {
        let parts = split(path);
        let Some((name, parents)) = parts.split_last() else {
            return Err(FatError::InvalidName {
                name: path.into(),
                reason: "empty path".into(),
            });
        };
        names::validate(name)?;
        let dir = self.open_dir(parents, path)?;
        if dir
            .entries
            .iter()
            .any(|e| names::same_name(&e.name, name) || names::as_short(name) == Some(e.short))
        {
            return Err(FatError::AlreadyExists { path: path.into() });
        }
        Ok((dir, name.to_string()))
    }

    fn lookup(&mut self, path: &str) -> Result<(Dir, Parsed), FatError> {
        let parts = split(path);
        let Some((name, parents)) = parts.split_last() else {
            return Err(FatError::IsADirectory { path: "/".into() });
        };
        let dir = self.open_dir(parents, path)?;
        let e = find(&dir, name).ok_or_else(|| FatError::NotFound { path: path.into() })?;
        Ok((dir, e))
    }

    fn open_dir(&mut self, parts: &[&str], path: &str) -> Result<Dir, FatError> {
        let mut dir = self.load_dir(self.geo.root_cluster, 0, "/")?;
        for (i, p) in parts.iter().enumerate() {
            let sub = parts[..=i].join("/");
            let e = find(&dir, p).ok_or_else(|| FatError::NotFound { path: sub.clone() })?;
            if !e.is_dir() {
                return Err(FatError::NotADirectory { path: sub });
            }
            let first = if e.cluster == 0 {
                self.geo.root_cluster
            } else {
                e.cluster
            };
            let dotdot = if first == self.geo.root_cluster {
                0
            } else {
                first
            };
            dir = self.load_dir(first, dotdot, path)?;
        }
        Ok(dir)
    }

    fn load_dir(&mut self, first: u32, dotdot: u32, path: &str) -> Result<Dir, FatError> {
        let chain = self.chain_of(first, path)?;
        let cs = self.geo.cluster_size() as usize;
        let mut bytes = vec![0u8; chain.len() * cs];
        for (i, c) in chain.iter().enumerate() {
            let at = self.base + self.geo.cluster_offset(*c);
            read_at(&mut self.io, at, &mut bytes[i * cs..(i + 1) * cs], path)?;
        }
        let entries = dirent::parse_dir(&bytes);
        Ok(Dir {
            chain,
            bytes,
            entries,
            dotdot,
        })
    }

    /// The clusters of the entry's data (none for an empty file).
    fn file_chain(&self, e: &Parsed, path: &str) -> Result<Vec<u32>, FatError> {
        if e.cluster >= 2 {
            self.chain_of(e.cluster, path)
        } else {
            Ok(Vec::new())
        }
    }

    fn chain_of(&self, first: u32, what: &str) -> Result<Vec<u32>, FatError> {
        let limit = self.fat.len() as u32;
        let mut out = Vec::new();
        let mut c = first;
        loop {
            if c < 2 || c >= limit {
                return Err(FatError::Corrupt(format!(
                    "{what}: cluster chain from {first} reaches cluster {c}, outside 2..{limit}"
                )));
            }
            if out.len() >= limit as usize {
                return Err(FatError::Corrupt(format!(
                    "{what}: cluster chain from {first} loops"
                )));
            }
            out.push(c);
            let next = self.fat[c as usize] & MASK;
            if next >= 0x0FFF_FFF8 {
                return Ok(out);
            }
            c = next;
        }
    }

    /// Marks `n` clusters used in memory, one contiguous run when there is
    /// one (first fit from cluster 2), else the first `n` free clusters.
    fn alloc(&mut self, n: u32) -> Vec<u32> {
        if n == 0 {
            return Vec::new();
        }
        let len = self.fat.len();
        let mut run = 0;
        let mut found = None;
        for c in 2..len {
            if self.fat[c] & MASK == 0 {
                run += 1;
                if run == n as usize {
                    found = Some(c + 1 - run);
                    break;
                }
            } else {
                run = 0;
            }
        }
        let clusters: Vec<u32> = match found {
            Some(s) => (s as u32..s as u32 + n).collect(),
            None => (2..len as u32)
                .filter(|&c| self.fat[c as usize] & MASK == 0)
                .take(n as usize)
                .collect(),
        };
        for (i, &c) in clusters.iter().enumerate() {
            let next = clusters.get(i + 1).copied().unwrap_or(EOC);
            self.set(c, next);
        }
        self.free -= clusters.len() as u32;
        clusters
    }

    fn release(&mut self, clusters: &[u32]) {
        for &c in clusters {
            self.set(c, 0);
        }
        self.free += clusters.len() as u32;
    }

    fn set(&mut self, c: u32, v: u32) {
        let e = &mut self.fat[c as usize];
        *e = (*e & !MASK) | v;
    }

    fn write_data(
        &mut self,
        clusters: &[u32],
        src: &mut dyn Read,
        len: u64,
        path: &str,
    ) -> Result<(), FatError> {
        let cs = self.geo.cluster_size();
        let mut left = len;
        for (first, n) in runs(clusters) {
            let mut buf = vec![0u8; (n as u64 * cs) as usize];
            let take = left.min(buf.len() as u64) as usize;
            src.read_exact(&mut buf[..take])
                .map_err(io_err(format!("reading source for {path}")))?;
            left -= take as u64;
            let at = self.base + self.geo.cluster_offset(first);
            write_at(&mut self.io, at, &buf, path)?;
        }
        Ok(())
    }

    /// Adds `n` zeroed clusters to `dir`: data, their FAT chain, barrier,
    /// then the link from the directory's last cluster.
    fn grow_dir(&mut self, dir: &mut Dir, n: u32, path: &str) -> Result<(), FatError> {
        if n == 0 {
            return Ok(());
        }
        let new = self.alloc(n);
        let cs = self.geo.cluster_size() as usize;
        for (first, run) in runs(&new) {
            let at = self.base + self.geo.cluster_offset(first);
            write_at(&mut self.io, at, &vec![0u8; cs * run as usize], path)?;
        }
        // The zeroed clusters and their own chain first; only then the
        // link from the directory's last cluster, so no cut (or reordering
        // disk) can leave the directory chained to a cluster the FAT still
        // calls free, which would make the whole directory unreadable.
        self.write_fat(&new)?;
        self.barrier(path)?;
        let last = *dir
            .chain
            .last()
            .expect("a directory has at least one cluster");
        self.set(last, new[0]);
        self.write_fat(&[last])?;
        dir.chain.extend(&new);
        dir.bytes.resize(dir.chain.len() * cs, 0);
        Ok(())
    }

    /// Writes the sectors of every FAT copy that hold `clusters`' entries,
    /// FAT 1 first, merging adjacent sectors into one write.
    fn write_fat(&mut self, clusters: &[u32]) -> Result<(), FatError> {
        let bps = self.geo.bytes_per_sector as usize;
        let per = bps / 4;
        let mut sectors: Vec<usize> = clusters.iter().map(|&c| c as usize / per).collect();
        sectors.sort_unstable();
        sectors.dedup();
        let mut ranges: Vec<(usize, usize)> = Vec::new();
        for s in sectors {
            match ranges.last_mut() {
                Some((_, end)) if *end == s => *end += 1,
                _ => ranges.push((s, s + 1)),
            }
        }
        for copy in 0..self.geo.fat_count {
            for &(s, e) in &ranges {
                let mut buf = vec![0u8; (e - s) * bps];
                for (i, chunk) in buf.chunks_exact_mut(4).enumerate() {
                    if let Some(v) = self.fat.get(s * per + i) {
                        chunk.copy_from_slice(&v.to_le_bytes());
                    }
                }
                // The last FAT sector may hold entries past the last
                // cluster: keep what is on disk there.
                let have = self.fat.len().saturating_sub(s * per).min(buf.len() / 4) * 4;
                let at = self.base + self.geo.fat_offset(copy) + (s * bps) as u64;
                write_at(&mut self.io, at, &buf[..have], &format!("FAT {}", copy + 1))?;
            }
        }
        Ok(())
    }

    /// Writes `set` at `start`, one write per 512-byte sector it spans, in
    /// slot order (so the short entry, last in a set, goes last) or
    /// reversed. A device writes a sector whole or not at all, and nothing
    /// larger: one write per sector makes the order the one that lands.
    fn write_slots(
        &mut self,
        dir: &mut Dir,
        start: usize,
        set: &[[u8; 32]],
        reverse: bool,
        path: &str,
    ) -> Result<(), FatError> {
        let cs = self.geo.cluster_size() as usize;
        for (i, e) in set.iter().enumerate() {
            let at = (start + i) * 32;
            dir.bytes[at..at + 32].copy_from_slice(e);
        }
        let mut parts: Vec<(usize, usize)> = Vec::new();
        for slot in start..start + set.len() {
            match parts.last_mut() {
                Some((s, end)) if *s * 32 / ATOMIC == slot * 32 / ATOMIC => *end = slot + 1,
                _ => parts.push((slot, slot + 1)),
            }
        }
        if reverse {
            parts.reverse();
        }
        for (s, e) in parts {
            let c = dir.chain[s * 32 / cs];
            let at = self.base + self.geo.cluster_offset(c) + (s * 32 % cs) as u64;
            let bytes = dir.bytes[s * 32..e * 32].to_vec();
            write_at(
                &mut self.io,
                at,
                &bytes,
                &format!("directory entry of {path}"),
            )?;
        }
        Ok(())
    }

    fn delete_slots(
        &mut self,
        dir: &mut Dir,
        first: usize,
        last: usize,
        path: &str,
    ) -> Result<(), FatError> {
        let set: Vec<[u8; 32]> = (first..=last)
            .map(|s| {
                let mut e = [0u8; 32];
                e.copy_from_slice(&dir.bytes[s * 32..s * 32 + 32]);
                e[0] = DELETED;
                e
            })
            .collect();
        self.write_slots(dir, first, &set, true, path)
    }
}

fn find(dir: &Dir, name: &str) -> Option<Parsed> {
    dir.entries
        .iter()
        .find(|e| names::same_name(&e.name, name) || names::as_short(name) == Some(e.short))
        .cloned()
}

/// The short name for `name` in `dir`, ignoring the entry at `exclude`, and
/// whether long-name entries are needed.
fn pick_short(dir: &Dir, name: &str, exclude: Option<usize>) -> ([u8; 11], bool) {
    let taken = |s: &[u8; 11]| {
        dir.entries
            .iter()
            .any(|e| Some(e.slot) != exclude && &e.short == s)
    };
    match names::as_short(name) {
        Some(s) if !taken(&s) => (s, false),
        _ => (names::generate_short(name, &taken), true),
    }
}

/// First run of `n` free slots, and how many clusters the directory must
/// grow by when the run extends past its end.
fn plan_slots(dir: &Dir, n: usize, cs: u64) -> (usize, u32) {
    let total = dir.bytes.len() / 32;
    let mut run = 0;
    for i in 0..total {
        let b = dir.bytes[i * 32];
        if b == 0 || b == DELETED {
            run += 1;
            if run == n {
                return (i + 1 - n, 0);
            }
        } else {
            run = 0;
        }
    }
    let missing = (n - run) as u64 * 32;
    (total - run, missing.div_ceil(cs) as u32)
}

/// Slots per 512-byte sector: what one atomic device write holds.
pub const SECTOR_SLOTS: usize = ATOMIC / 32;

/// The directory slots an entry set for `name` takes when its 8.3 form is
/// free: the short entry, plus 13 UTF-16 units per long-name entry unless
/// `name` is a valid upper-case 8.3 name.
pub fn entry_slots(name: &str) -> usize {
    match names::as_short(name) {
        Some(_) => 1,
        None => 1 + name.encode_utf16().count().div_ceil(13),
    }
}

/// One past the last live slot (before the first end-of-directory slot).
fn live_end(dir: &Dir) -> usize {
    let total = dir.bytes.len() / 32;
    let end = (0..total)
        .find(|&i| dir.bytes[i * 32] == 0)
        .unwrap_or(total);
    (0..end)
        .rev()
        .find(|&i| dir.bytes[i * 32] != DELETED)
        .map_or(0, |i| i + 1)
}

/// See [`Fat32::write_file_appended`].
fn append_at(dir: &Dir, set_len: usize, span: usize) -> usize {
    let start = live_end(dir);
    let span = span.max(set_len);
    if span > SECTOR_SLOTS || start / SECTOR_SLOTS == (start + span - 1) / SECTOR_SLOTS {
        start
    } else {
        start.next_multiple_of(SECTOR_SLOTS)
    }
}

fn deleted_slot() -> [u8; 32] {
    let mut e = [0u8; 32];
    e[0] = DELETED;
    e
}

/// (first cluster, length) of each contiguous run in a chain.
fn runs(chain: &[u32]) -> Vec<(u32, u32)> {
    let mut out: Vec<(u32, u32)> = Vec::new();
    for &c in chain {
        match out.last_mut() {
            Some((s, n)) if *s + *n == c => *n += 1,
            _ => out.push((c, 1)),
        }
    }
    out
}

fn split(path: &str) -> Vec<&str> {
    path.split('/').filter(|p| !p.is_empty()).collect()
}

fn read_at<R: Read + Seek>(
    io: &mut R,
    at: u64,
    buf: &mut [u8],
    what: &str,
) -> Result<(), FatError> {
    let ctx = || format!("reading {what} at byte {at}");
    io.seek(SeekFrom::Start(at)).map_err(io_err(ctx()))?;
    io.read_exact(buf).map_err(io_err(ctx()))
}

fn write_at<W: Write + Seek>(io: &mut W, at: u64, buf: &[u8], what: &str) -> Result<(), FatError> {
    let ctx = || format!("writing {what} at byte {at}");
    io.seek(SeekFrom::Start(at)).map_err(io_err(ctx()))?;
    io.write_all(buf).map_err(io_err(ctx()))
}
