//! The power-cut oracle: what a cut disk boots, read the way the machine
//! reads it rather than through the installer's own (more forgiving)
//! readers, and what the standard tools say about it.
//!
//! * Firmware (UEFI 2.10 5.3.2) takes the primary GPT, or the backup at the
//!   last LBA when the primary's header or entry CRC fails; it finds the
//!   ESP there. (OVMF's PartitionDxe even rewrites the bad copy; not every
//!   firmware does, so that repair is not counted on.)
//! * systemd-boot picks an entry ([`installer::bootmodel`], itself checked
//!   against the real loader in installer/tests/qemu.rs).
//! * Linux (block/partitions/efi.c, `find_valid_gpt`) needs a valid
//!   protective MBR and a valid primary GPT; only with `gpt` on the command
//!   line does it skip the MBR check and fall back to the backup at the last
//!   LBA. Without a table it makes no partitions, and init finds no slot.
//!   This parser is written here from the UEFI layout, not taken from
//!   artifacts::gpt, whose reader falls back to the backup always.
//! * `sgdisk -v` and `fsck.fat -n` read the image too, and their output is
//!   read line by line: fsck.fat exits 0 on some real damage (a boot sector
//!   that differs from its backup), so the exit status alone proves little.

use std::fs;
use std::os::unix::fs::FileExt;
use std::path::Path;

use super::BundleInfo;

const SECTOR: u64 = 512;
/// The ESP type, in the lower-case form [`guid_string`] gives.
const ESP_TYPE: &str = "c12a7328-f81f-11d2-ba4b-00a0c93ec93b";

/// One partition of a GPT as a reader of the raw table sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Part {
    /// 1-based, as Linux numbers partitions (table entry + 1).
    pub number: u32,
    pub type_guid: String,
    pub uuid: String,
    pub first_lba: u64,
    pub last_lba: u64,
}

impl Part {
    pub fn offset(&self) -> u64 {
        self.first_lba * SECTOR
    }

    pub fn len(&self) -> u64 {
        (self.last_lba + 1 - self.first_lba) * SECTOR
    }
}

fn le32(b: &[u8], at: usize) -> u32 {
    u32::from_le_bytes(b[at..at + 4].try_into().unwrap())
}

fn le64(b: &[u8], at: usize) -> u64 {
    u64::from_le_bytes(b[at..at + 8].try_into().unwrap())
}

/// GPT's mixed-endian GUID bytes as the lower-case string form Linux
/// prints (`%pU`, /dev/disk/by-partuuid).
fn guid_string(b: &[u8]) -> String {
    format!(
        "{:08x}-{:04x}-{:04x}-{}-{}",
        le32(b, 0),
        u16::from_le_bytes([b[4], b[5]]),
        u16::from_le_bytes([b[6], b[7]]),
        hex::encode(&b[8..10]),
        hex::encode(&b[10..16])
    )
}

fn read(f: &fs::File, at: u64, len: usize) -> Result<Vec<u8>, String> {
    let mut b = vec![0u8; len];
    f.read_exact_at(&mut b, at)
        .map_err(|e| format!("reading {len} bytes at {at}: {e}"))?;
    Ok(b)
}

/// `is_gpt_valid` of Linux's efi.c for the header at `lba`: the table's
/// partitions, or why the copy is not valid.
fn gpt_copy(f: &fs::File, lba: u64, last_lba: u64) -> Result<Vec<Part>, String> {
    let h = read(f, lba * SECTOR, SECTOR as usize)?;
    if &h[0..8] != b"EFI PART" {
        return Err(format!("no GPT signature at LBA {lba}"));
    }
    let size = le32(&h, 12) as usize;
    if !(92..=SECTOR as usize).contains(&size) {
        return Err(format!("header size {size} at LBA {lba}"));
    }
    let mut z = h[..size].to_vec();
    z[16..20].fill(0);
    if crc32fast::hash(&z) != le32(&h, 16) {
        return Err(format!("header CRC mismatch at LBA {lba}"));
    }
    if le64(&h, 24) != lba {
        return Err(format!(
            "header at LBA {lba} says it is at {}",
            le64(&h, 24)
        ));
    }
    let (first_usable, last_usable) = (le64(&h, 40), le64(&h, 48));
    if first_usable > last_lba || last_usable > last_lba || last_usable < first_usable {
        return Err(format!(
            "usable range {first_usable}..{last_usable} outside the disk (last LBA {last_lba})"
        ));
    }
    let (entries_lba, count, entry_size) = (le64(&h, 72), le32(&h, 80), le32(&h, 84));
    if entry_size != 128 || count > 4096 {
        return Err(format!("{count} entries of {entry_size} bytes"));
    }
    let table = read(f, entries_lba * SECTOR, (count * entry_size) as usize)?;
    if crc32fast::hash(&table) != le32(&h, 88) {
        return Err(format!(
            "entry array CRC mismatch (header at LBA {lba}, entries at LBA {entries_lba})"
        ));
    }
    Ok(table
        .chunks_exact(128)
        .enumerate()
        .filter_map(|(i, e)| {
            let (first, last) = (le64(e, 32), le64(e, 40));
            // is_pte_valid: a type GUID, and both ends on the disk.
            (e[..16] != [0u8; 16] && first <= last_lba && last <= last_lba).then(|| Part {
                number: i as u32 + 1,
                type_guid: guid_string(&e[..16]),
                uuid: guid_string(&e[16..32]),
                first_lba: first,
                last_lba: last,
            })
        })
        .collect())
}

fn disk_last_lba(f: &fs::File) -> Result<u64, String> {
    let len = f.metadata().map_err(|e| e.to_string())?.len();
    Ok(len / SECTOR - 1)
}

/// `is_pmbr_valid`: boot signature and a 0xEE record starting at LBA 1.
fn protective_mbr(f: &fs::File) -> Result<(), String> {
    let m = read(f, 0, SECTOR as usize)?;
    if m[510..512] != [0x55, 0xAA] {
        return Err("no MBR boot signature".into());
    }
    let ok = (0..4).any(|i| {
        let r = &m[446 + 16 * i..446 + 16 * (i + 1)];
        r[4] == 0xEE && le32(r, 8) == 1
    });
    if ok {
        Ok(())
    } else {
        Err("no protective MBR record (type 0xEE from LBA 1)".into())
    }
}

/// The partitions Linux makes for the image: the primary GPT, or with
/// `gpt` on the command line (`force_gpt`) the backup when the primary
/// fails. Err says why there are none.
pub fn kernel_table(img: &Path, force_gpt: bool) -> Result<Vec<Part>, String> {
    let f = fs::File::open(img).map_err(|e| e.to_string())?;
    let last = disk_last_lba(&f)?;
    if !force_gpt {
        protective_mbr(&f)?;
    }
    match gpt_copy(&f, 1, last) {
        Ok(p) => Ok(p),
        Err(pe) if force_gpt => {
            gpt_copy(&f, last, last).map_err(|be| format!("primary GPT: {pe}; backup GPT: {be}"))
        }
        Err(pe) => Err(format!(
            "primary GPT: {pe} (Linux reads the backup only with `gpt` on its command line)"
        )),
    }
}

/// The partitions the firmware finds: primary, else backup.
pub fn firmware_table(img: &Path) -> Result<Vec<Part>, String> {
    let f = fs::File::open(img).map_err(|e| e.to_string())?;
    let last = disk_last_lba(&f)?;
    gpt_copy(&f, 1, last).or_else(|pe| {
        gpt_copy(&f, last, last).map_err(|be| format!("primary GPT: {pe}; backup GPT: {be}"))
    })
}

/// The ESP as the firmware finds it.
pub fn firmware_esp(img: &Path) -> Result<Part, String> {
    firmware_table(img)?
        .into_iter()
        .find(|p| p.type_guid == ESP_TYPE)
        .ok_or_else(|| "no ESP in the GPT the firmware reads".into())
}

/// What a power-on boots.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Booted {
    pub version: String,
    /// The UKI systemd-boot picks.
    pub entry: String,
    pub counted: bool,
    /// `gpt` is on its command line.
    pub force_gpt: bool,
}

/// The whole chain on `img`: firmware GPT -> ESP -> systemd-boot's choice
/// -> its command line -> Linux's partitions -> the slot with the root
/// hash's PARTUUID -> the slot's bytes against the release.
pub fn boot(img: &Path, releases: &[&BundleInfo]) -> Result<Booted, String> {
    use installer::bootmodel::BootModel;
    let esp = firmware_esp(img)?;
    let mut f = fs::File::open(img).map_err(|e| e.to_string())?;
    let mut vol = artifacts::fat::Fat32::open(&mut f, esp.offset(), esp.len())
        .map_err(|e| format!("ESP: {e}"))?;
    vol.read_file(installer::bootmodel::LOADER)
        .map_err(|e| format!("the firmware finds no loader: {e}"))?;
    let model = BootModel::read(&mut vol).map_err(|e| format!("boot model: {e}"))?;
    let e = model.selected().ok_or("no boot entry")?.clone();
    let root = e.root_hash.clone().ok_or("entry without cairn.rootfs")?;
    let force_gpt = e.cmdline.split_ascii_whitespace().any(|w| w == "gpt");
    let parts = kernel_table(img, force_gpt)
        .map_err(|why| format!("{} is chosen, and Linux sees no partitions: {why}", e.file))?;
    // The slot PARTUUID rule is the contract's; its text is lower case.
    let want = contract::disk::slot_partuuid_of_hex(&root)
        .ok_or_else(|| format!("{}: cairn.rootfs={root} is no root hash", e.file))?
        .to_string();
    let slot = parts.iter().find(|p| p.uuid == want).ok_or_else(|| {
        format!(
            "{} boots root {root}: Linux sees no partition with PARTUUID {want}",
            e.file
        )
    })?;
    let rel = super::release_in_slot(
        &mut f,
        slot.offset(),
        &format!("partition {}", slot.number),
        &e,
        &root,
        releases,
    )?;
    Ok(Booted {
        version: rel.version.clone(),
        entry: e.file.clone(),
        counted: e.counter.is_some(),
        force_gpt,
    })
}

/// What a cut may leave that the tools report and that is harmless by
/// design (see table.rs and artifacts' FAT editor docs).
#[derive(Debug, Clone, Copy, Default)]
pub struct Benign {
    /// The primary GPT valid and the backup torn or older: a cut inside
    /// the backup's update or between it and the primary's.
    pub backup_stale: bool,
    /// A primary GPT that fails its CRCs while the backup is good, on a
    /// disk whose chosen UKI has `gpt` on its command line.
    pub primary_invalid: bool,
}

/// `sgdisk -v` against the raw reading of the same image and what a cut
/// may leave; Err quotes sgdisk.
pub fn sgdisk_agrees(img: &Path, benign: Benign) -> Result<(), String> {
    let r = testkit::check::sgdisk_verify(img).map_err(|e| format!("{e:#}"))?;
    let (primary, _, _) = gpt_copies(img);
    if r.main_ok != primary {
        return Err(format!(
            "sgdisk and the raw reading disagree on the primary GPT (raw: valid={primary}):\n{}",
            r.text
        ));
    }
    if r.clean {
        return Ok(());
    }
    // sgdisk checks the backup header's entry CRC against the entries it
    // loaded (the primary's), so an older backup reads as a bad backup
    // table there.
    if benign.backup_stale && primary && (r.differ || !r.backup_table_ok || !r.backup_header_ok) {
        return Ok(());
    }
    // With a torn primary sgdisk may load either copy's entries and then
    // fault the other copy's entry CRC; the raw reading decides.
    if benign.primary_invalid && !primary && r.backup_header_ok {
        return Ok(());
    }
    Err(r.text)
}

/// `fsck.fat -n` on the image's ESP (copied to `scratch`): the lines
/// that are not a cut's benign leftovers (testkit::check).
pub fn fsck_problems(img: &Path, scratch: &Path) -> Vec<String> {
    let esp = match firmware_esp(img) {
        Ok(p) => p,
        Err(e) => return vec![e],
    };
    let r = testkit::check::extract(img, esp.offset(), esp.len(), scratch)
        .and_then(|()| testkit::check::fsck_fat(scratch));
    match r {
        Ok(r) => r.problems,
        Err(e) => vec![format!("{e:#}")],
    }
}

/// Both tools on `img`; Err lists what they found that `benign` does not
/// cover.
pub fn tools_agree(img: &Path, scratch: &Path, benign: Benign) -> Result<(), String> {
    let mut bad = Vec::new();
    if let Err(t) = sgdisk_agrees(img, benign) {
        bad.push(format!("sgdisk -v:\n{t}"));
    }
    bad.extend(
        fsck_problems(img, scratch)
            .into_iter()
            .map(|l| format!("fsck.fat -n: {l}")),
    );
    if bad.is_empty() {
        Ok(())
    } else {
        Err(bad.join("\n  "))
    }
}

/// What `img`'s GPT copies are: (primary valid, backup valid, equal
/// partitions), read raw.
pub fn gpt_copies(img: &Path) -> (bool, bool, bool) {
    let f = fs::File::open(img).unwrap();
    let last = disk_last_lba(&f).unwrap();
    let p = gpt_copy(&f, 1, last);
    let b = gpt_copy(&f, last, last);
    let same = matches!((&p, &b), (Ok(x), Ok(y)) if x == y);
    (p.is_ok(), b.is_ok(), same)
}
