//! Power loss at every write of an upgrade (and a rollback): after each cut
//! the disk must still boot the old or the new release, following the real
//! chain (GPT -> ESP -> systemd-boot's choice -> cmdline root hash -> slot
//! with that PARTUUID -> slot data equal to the release's rootfs), STATE
//! must be untouched, `EFI/BOOT/BOOTX64.EFI` must be exactly the old or the
//! new systemd-boot (the test bundles' loaders differ), and re-running the
//! upgrade must finish it.
//!
//! Finding 7 (further down) replaces "a prefix of the writes persists" by
//! any subset of each barrier epoch's writes (common::cuts), adds
//! systemd-boot's counting rename as EDK2's FAT driver makes it
//! (common::edk2) and a second upgrade after every cut, and judges every cut
//! image the way firmware and Linux read it, with sgdisk and fsck.fat
//! (common::oracle).

mod common;

use std::fs;
use std::io::{Read, Seek, SeekFrom};
use std::path::Path;

use common::*;
use installer::bundle::Bundle;
use installer::install::install;
use installer::upgrade::{upgrade, upgrade_disk};
use installer::Error;

fn state_bytes(img: &Path) -> Vec<u8> {
    let mut f = fs::File::open(img).unwrap();
    let disk = artifacts::gpt::read_disk(&mut f).unwrap();
    let p = disk.layout.partition("STATE").unwrap();
    let mut buf = vec![0u8; p.size_bytes() as usize];
    f.seek(SeekFrom::Start(p.offset())).unwrap();
    f.read_exact(&mut buf).unwrap();
    buf
}

/// Puts recognisable bytes in STATE, as a running system would have.
fn fill_state(img: &Path) {
    use std::io::Write;
    let mut f = fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(img)
        .unwrap();
    let disk = artifacts::gpt::read_disk(&mut f).unwrap();
    let p = disk.layout.partition("STATE").unwrap();
    let data: Vec<u8> = (0..p.size_bytes()).map(|i| (i % 251) as u8).collect();
    f.seek(SeekFrom::Start(p.offset())).unwrap();
    f.write_all(&data).unwrap();
}

/// The version that boots as firmware and Linux read the disk
/// ([`oracle::boot`]), not through the installer's forgiving GPT reader.
fn kernel_boots(img: &Path, releases: &[&BundleInfo]) -> Result<String, String> {
    oracle::boot(img, releases).map(|b| b.version)
}

fn selected_is_counted(img: &Path) -> bool {
    with_esp(img, |vol| {
        installer::bootmodel::BootModel::read(vol)
            .unwrap()
            .selected()
            .is_some_and(|e| e.counter.is_some())
    })
}

/// Cuts `upgrade` at every write in both modes; returns the cut count.
fn every_cut(
    fx: &Fixture,
    base: &Path,
    bundle: &Bundle,
    old: &BundleInfo,
    new: &BundleInfo,
) -> usize {
    let all = [old, new];
    let work = fx.path("work.img");
    sparse_copy(base, &work);
    let mut d = FaultDisk::new(&work, None, Cut::Drop);
    upgrade_disk(&mut d, &work, bundle, false).expect("uncut upgrade");
    let total = d.writes;
    assert_eq!(kernel_boots(&work, &all), Ok(new.version.clone()));
    let (old_loader, new_loader) = (bundle_loader(old), bundle_loader(new));
    assert!(old_loader != new_loader, "the test needs differing loaders");
    assert!(esp_loader(base) == old_loader);
    assert!(esp_loader(&work) == new_loader);
    let state = state_bytes(base);
    let (mut saw_old, mut saw_new) = (0, 0);
    let (mut saw_old_loader, mut saw_new_loader) = (0, 0);
    for mode in [Cut::Drop, Cut::Torn, Cut::LoseUnflushed] {
        for cut in 1..=total {
            sparse_copy(base, &work);
            let mut d = FaultDisk::new(&work, Some(cut), mode);
            let r = upgrade_disk(&mut d, &work, bundle, false);
            assert!(
                r.is_err(),
                "{mode:?} cut {cut}/{total} did not fail the upgrade"
            );
            let why = format!("{mode:?} cut at write {cut}/{total}");
            match kernel_boots(&work, &all) {
                Ok(v) if v == old.version => saw_old += 1,
                Ok(v) if v == new.version => {
                    saw_new += 1;
                    assert!(
                        selected_is_counted(&work),
                        "{why}: new release boots without a counter"
                    );
                }
                other => panic!("{why}: disk does not boot old or new: {other:?}"),
            }
            assert!(state_bytes(&work) == state, "{why}: STATE changed");
            let loader = esp_loader(&work);
            if loader == new_loader {
                saw_new_loader += 1;
                assert_eq!(
                    kernel_boots(&work, &all),
                    Ok(new.version.clone()),
                    "{why}: the new loader is in place before the new release"
                );
            } else {
                assert!(
                    loader == old_loader,
                    "{why}: BOOTX64.EFI is neither the old nor the new loader ({} bytes)",
                    loader.len()
                );
                saw_old_loader += 1;
            }
            // Running the upgrade again completes it.
            let mut f = fs::OpenOptions::new()
                .read(true)
                .write(true)
                .open(&work)
                .unwrap();
            match upgrade_disk(&mut f, &work, bundle, false) {
                Ok(_) | Err(Error::SameVersion { .. }) => {}
                Err(e) => panic!("{why}: re-running the upgrade failed: {e}"),
            }
            assert_eq!(
                kernel_boots(&work, &all),
                Ok(new.version.clone()),
                "{why}: after re-run"
            );
            assert!(
                esp_loader(&work) == new_loader,
                "{why}: the re-run left the old loader"
            );
        }
    }
    assert!(
        saw_old > 0 && saw_new > 0 && saw_old_loader > 0 && saw_new_loader > 0,
        "cuts gave old {saw_old} / new {saw_new} times, old loader \
         {saw_old_loader} / new loader {saw_new_loader} times"
    );
    eprintln!(
        "{total} writes, {} cut points: old boots {saw_old}, new boots {saw_new}; \
         old loader {saw_old_loader}, new loader {saw_new_loader}",
        3 * total
    );
    total
}

#[test]
fn first_upgrade_survives_a_cut_at_every_write() {
    let fx = Fixture::new();
    let b1 = bundle(&fx.path("b1"), "1.0.0");
    let b2 = bundle_with_loader(&fx.path("b2"), "2.0.0", &[0x5a; 3000]);
    let base = fx.image("base.img", DISK_SIZE);
    install(&install_opts(&base, &b1.dir)).unwrap();
    fill_state(&base);
    let bundle = installer::verify::open_verified(&b2.dir, &[key().public()]).unwrap();
    let n = every_cut(&fx, &base, &bundle, &b1, &b2);
    assert!(n >= 10, "only {n} writes");
}

#[test]
fn second_upgrade_survives_a_cut_at_every_write() {
    // Here step 1 has something to remove (1.0.0's UKI) and the target slot
    // already holds a release whose PARTUUID the GPT update replaces.
    let fx = Fixture::new();
    let b1 = bundle(&fx.path("b1"), "1.0.0");
    let b2 = bundle_with_loader(&fx.path("b2"), "2.0.0", &[0x5a; 3000]);
    // Shorter than 2.0.0's: the replacement also shrinks the file.
    let b3 = bundle_with_loader(&fx.path("b3"), "3.0.0", b"v3");
    let base = fx.image("base.img", DISK_SIZE);
    install(&install_opts(&base, &b1.dir)).unwrap();
    upgrade(&upgrade_opts(&base, &b2.dir)).unwrap();
    boot_attempt(&base);
    bless(&base, "2.0.0");
    fill_state(&base);
    let bundle = installer::verify::open_verified(&b3.dir, &[key().public()]).unwrap();
    every_cut(&fx, &base, &bundle, &b2, &b3);
}

fn rollback_every_cut(
    fx: &Fixture,
    base: &Path,
    all: &[&BundleInfo],
    from: &str,
    to: &str,
) -> usize {
    assert_eq!(kernel_boots(base, all), Ok(from.into()));
    let work = fx.path("work.img");
    sparse_copy(base, &work);
    let mut d = FaultDisk::new(&work, None, Cut::Drop);
    installer::rollback::rollback_disk(&mut d, &work).unwrap();
    let total = d.writes;
    eprintln!("rollback: {total} writes, {} cut points", 3 * total);
    assert_eq!(kernel_boots(&work, all), Ok(to.into()));
    for mode in [Cut::Drop, Cut::Torn, Cut::LoseUnflushed] {
        for cut in 1..=total {
            sparse_copy(base, &work);
            let mut d = FaultDisk::new(&work, Some(cut), mode);
            assert!(installer::rollback::rollback_disk(&mut d, &work).is_err());
            let v = kernel_boots(&work, all);
            assert!(
                v == Ok(from.into()) || v == Ok(to.into()),
                "{mode:?} cut {cut}/{total}: {v:?}"
            );
        }
    }
    total
}

#[test]
fn rollback_survives_a_cut_at_every_write() {
    let fx = Fixture::new();
    let b1 = bundle(&fx.path("b1"), "1.0.0");
    let b2 = bundle(&fx.path("b2"), "2.0.0");
    let base = fx.image("base.img", DISK_SIZE);
    install(&install_opts(&base, &b1.dir)).unwrap();
    upgrade(&upgrade_opts(&base, &b2.dir)).unwrap();
    for _ in 0..3 {
        boot_attempt(&base); // 2.0.0 used up its tries: 1.0.0 boots
    }
    rollback_every_cut(&fx, &base, &[&b1, &b2], "1.0.0", "2.0.0");
}

#[test]
fn rollback_with_revive_and_demote_survives_a_cut_at_every_write() {
    // 1.0.0 exhausted in A, 2.0.0 blessed in B: rollback revives 1.0.0
    // (+0-3 -> +3) and then demotes 2.0.0 (-> +0): two renames.
    let fx = Fixture::new();
    let b1 = bundle(&fx.path("b1"), "1.0.0");
    let b2 = bundle(&fx.path("b2"), "2.0.0");
    let base = fx.image("base.img", DISK_SIZE);
    install(&install_opts(&base, &b1.dir)).unwrap();
    upgrade(&upgrade_opts(&base, &b2.dir)).unwrap();
    boot_attempt(&base);
    bless(&base, "2.0.0");
    with_esp(&base, |v| {
        v.rename("EFI/Linux/cairn-1.0.0+3.efi", "cairn-1.0.0+0-3.efi")
            .unwrap()
    });
    let n = rollback_every_cut(&fx, &base, &[&b1, &b2], "2.0.0", "1.0.0");
    assert!(n >= 2, "{n} writes");
}

// ---------------------------------------------------------------------------
// Finding 7: unflushed writes persisting in any subset and order, systemd-boot's
// rename as EDK2's FAT driver makes it, and a second upgrade after every cut;
// each cut image also read by the kernel's rules and by sgdisk/fsck.fat.

use common::cuts::{self, Logged, RecordingDisk};
use common::oracle;

/// An installed disk about to be upgraded from `old` to `new`, and a third
/// release `next` to upgrade to after a cut.
struct Scenario {
    fx: Fixture,
    base: std::path::PathBuf,
    old: BundleInfo,
    new: BundleInfo,
    next: BundleInfo,
    /// Releases installed before `old` (none, or 1.0.0).
    earlier: Vec<BundleInfo>,
    /// `old` booted and was blessed before the upgrade.
    old_blessed: bool,
}

impl Scenario {
    /// 1.0.0 installed; upgrade to 2.0.0 (new loader); then 3.0.0.
    fn first() -> Scenario {
        let fx = Fixture::new();
        let old = bundle(&fx.path("b1"), "1.0.0");
        let new = bundle_with_loader(&fx.path("b2"), "2.0.0", &[0x5a; 3000]);
        let next = bundle_with_loader(&fx.path("b3"), "3.0.0", b"v3");
        let base = fx.image("base.img", DISK_SIZE);
        install(&install_opts(&base, &old.dir)).unwrap();
        fill_state(&base);
        Scenario {
            fx,
            base,
            old,
            new,
            next,
            earlier: Vec::new(),
            old_blessed: false,
        }
    }

    /// 2.0.0 blessed over 1.0.0; upgrade to 3.0.0 (removes 1.0.0's UKI,
    /// replaces a PARTUUID, shrinks the loader); then 4.0.0.
    fn second() -> Scenario {
        let fx = Fixture::new();
        let b1 = bundle(&fx.path("b1"), "1.0.0");
        let old = bundle_with_loader(&fx.path("b2"), "2.0.0", &[0x5a; 3000]);
        let new = bundle_with_loader(&fx.path("b3"), "3.0.0", b"v3");
        let next = bundle_with_loader(&fx.path("b4"), "4.0.0", &[0x44; 5000]);
        let base = fx.image("base.img", DISK_SIZE);
        install(&install_opts(&base, &b1.dir)).unwrap();
        upgrade(&upgrade_opts(&base, &old.dir)).unwrap();
        boot_attempt(&base);
        bless(&base, "2.0.0");
        fill_state(&base);
        Scenario {
            fx,
            base,
            old,
            new,
            next,
            earlier: vec![b1],
            old_blessed: true,
        }
    }

    fn releases(&self) -> Vec<&BundleInfo> {
        let mut v: Vec<&BundleInfo> = self.earlier.iter().collect();
        v.extend([&self.old, &self.new, &self.next]);
        v
    }

    fn verified(&self, b: &BundleInfo) -> Bundle {
        installer::verify::open_verified(&b.dir, &[key().public()]).unwrap()
    }

    /// The write log of the uncut upgrade old -> new.
    fn record(&self) -> Vec<Logged> {
        let work = self.fx.path("record.img");
        sparse_copy(&self.base, &work);
        let mut d = RecordingDisk::new(&work);
        upgrade_disk(&mut d, &work, &self.verified(&self.new), false).expect("uncut upgrade");
        assert_eq!(
            oracle::boot(&work, &self.releases()).map(|b| b.version),
            Ok(self.new.version.clone())
        );
        d.log
    }
}

/// Runs `check` on the image of every cut point of `log` over `base`.
/// Returns the number of cuts.
fn each_cut(
    fx: &Fixture,
    base: &Path,
    log: &[Logged],
    mut check: impl FnMut(&Path, &str),
) -> usize {
    let prefix = fx.path("prefix.img");
    let work = fx.path("cut.img");
    sparse_copy(base, &prefix);
    let points = cuts::cut_points(log);
    let mut at_epoch = 0;
    for p in &points {
        if p.epoch != at_epoch {
            cuts::apply_epochs(log, &prefix, at_epoch, p.epoch);
            at_epoch = p.epoch;
        }
        sparse_copy(&prefix, &work);
        p.apply(log, &work);
        check(&work, &p.label(log));
    }
    points.len()
}

/// With CAIRN_KEEP_CUT=PATH set, a failing cut image is copied there.
fn keep(img: &Path) {
    if let Some(to) = std::env::var_os("CAIRN_KEEP_CUT") {
        sparse_copy(img, Path::new(&to));
    }
}

/// What the sgdisk/fsck.fat lines may say on a cut image: the backup GPT
/// is torn or older than a valid primary (a cut inside step 3), or the
/// primary fails its CRCs on a disk whose chosen UKI asks Linux to read the
/// backup.
fn benign(img: &Path, booted: &oracle::Booted) -> oracle::Benign {
    let (primary, backup, same) = oracle::gpt_copies(img);
    oracle::Benign {
        backup_stale: primary && !same,
        primary_invalid: !primary && backup && booted.force_gpt,
    }
}

/// The checks every cut image must pass: it boots the old or the new
/// release (the new one only with its counter), STATE is untouched, the
/// loader is exactly the old or the new one (the new one only once the new
/// release boots), and sgdisk/fsck.fat find nothing but benign leftovers.
struct CutOracle<'a> {
    s: &'a Scenario,
    state: Vec<u8>,
    old_loader: Vec<u8>,
    new_loader: Vec<u8>,
    scratch: std::path::PathBuf,
    saw_old: usize,
    saw_new: usize,
}

impl<'a> CutOracle<'a> {
    fn new(s: &'a Scenario) -> CutOracle<'a> {
        let (old_loader, new_loader) = (bundle_loader(&s.old), bundle_loader(&s.new));
        assert!(old_loader != new_loader, "the test needs differing loaders");
        CutOracle {
            s,
            state: state_bytes(&s.base),
            old_loader,
            new_loader,
            scratch: s.fx.path("esp.img"),
            saw_old: 0,
            saw_new: 0,
        }
    }

    /// Err says what is wrong with the cut image.
    fn check(&mut self, img: &Path) -> Result<oracle::Booted, String> {
        let s = self.s;
        let booted =
            oracle::boot(img, &s.releases()).map_err(|e| format!("the disk does not boot: {e}"))?;
        if booted.version == s.old.version {
            self.saw_old += 1;
        } else if booted.version == s.new.version {
            self.saw_new += 1;
            if !booted.counted {
                return Err(format!("{} boots without a counter", booted.entry));
            }
        } else {
            return Err(format!("boots {booted:?}, neither old nor new"));
        }
        if state_bytes(img) != self.state {
            return Err("STATE changed".into());
        }
        let loader = esp_loader(img);
        if loader != self.old_loader && loader != self.new_loader {
            return Err(format!(
                "BOOTX64.EFI is neither the old nor the new loader ({} bytes)",
                loader.len()
            ));
        }
        if loader == self.new_loader && booted.version != s.new.version {
            return Err("the new loader is in place before the new release".into());
        }
        oracle::tools_agree(img, &self.scratch, benign(img, &booted))
            .map_err(|e| format!("the standard tools object:\n  {e}"))?;
        Ok(booted)
    }
}

/// Collects failures over many cuts and reports each kind once (with its
/// count and first cut), so one run shows every kind of failure.
#[derive(Default)]
struct Failures {
    cuts: usize,
    /// (what failed, first cut, count), in order of first appearance.
    kinds: Vec<(String, String, usize)>,
}

impl Failures {
    fn add(&mut self, img: &Path, why: &str, r: Result<(), String>) {
        self.cuts += 1;
        let Err(e) = r else { return };
        let wanted = std::env::var("CAIRN_KEEP_MATCH").is_ok_and(|m| why.contains(&m));
        if self.kinds.is_empty() || wanted {
            keep(img);
        }
        match self.kinds.iter_mut().find(|k| k.0 == e) {
            Some(k) => k.2 += 1,
            None => self.kinds.push((e, why.to_string(), 1)),
        }
    }

    fn assert_none(&self, what: &str) {
        if self.kinds.is_empty() {
            return;
        }
        let failed: usize = self.kinds.iter().map(|k| k.2).sum();
        let list: Vec<String> = self
            .kinds
            .iter()
            .map(|(e, first, n)| format!("{n} cut(s), first {first}:\n  {e}"))
            .collect();
        panic!(
            "{what}: {failed} of {} cuts fail:\n{}",
            self.cuts,
            list.join("\n---\n")
        );
    }
}

/// Runs `check` on the first and the second upgrade; fails with every kind
/// of failure either showed.
fn both_scenarios(what: &str, check: fn(&Scenario, &mut Failures)) {
    let t = std::time::Instant::now();
    let mut fails = Failures::default();
    check(&Scenario::first(), &mut fails);
    check(&Scenario::second(), &mut fails);
    eprintln!("{what}: {} cuts in {:?}", fails.cuts, t.elapsed());
    fails.assert_none(what);
}

fn unflushed_any_order(s: &Scenario, fails: &mut Failures) {
    let log = s.record();
    eprintln!(
        "{} -> {}: {}",
        s.old.version,
        s.new.version,
        cuts::summary(&log)
    );
    let mut o = CutOracle::new(s);
    let n = each_cut(&s.fx, &s.base, &log, |img, why| {
        let r = o.check(img).map(|_| ());
        fails.add(
            img,
            &format!("{} -> {} {why}", s.old.version, s.new.version),
            r,
        );
    });
    eprintln!(
        "{n} cut images: old boots {}, new boots {}",
        o.saw_old, o.saw_new
    );
    assert!(o.saw_old > 0 && o.saw_new > 0);
}

#[test]
fn finding_7_unflushed_writes_any_order() {
    both_scenarios("unflushed writes in any order", unflushed_any_order);
}

/// After a cut, upgrading to a third release must succeed and leave a disk
/// that boots it (counted), with STATE untouched, its loader in place and
/// nothing for sgdisk/fsck.fat to object to but leaked clusters.
fn second_upgrade_after_cuts(s: &Scenario, fails: &mut Failures) {
    let log = s.record();
    let next = s.verified(&s.next);
    let next_loader = bundle_loader(&s.next);
    let state = state_bytes(&s.base);
    let scratch = s.fx.path("esp.img");
    let n = each_cut(&s.fx, &s.base, &log, |img, why| {
        let r = (|| {
            let mut f = fs::OpenOptions::new()
                .read(true)
                .write(true)
                .open(img)
                .unwrap();
            upgrade_disk(&mut f, img, &next, false)
                .map_err(|e| format!("upgrading to {} fails: {e}", s.next.version))?;
            drop(f);
            let b = oracle::boot(img, &s.releases())
                .map_err(|e| format!("after the upgrade to {}: {e}", s.next.version))?;
            if b.version != s.next.version || !b.counted {
                return Err(format!(
                    "after the upgrade to {}: boots {b:?}",
                    s.next.version
                ));
            }
            if state_bytes(img) != state {
                return Err("STATE changed".into());
            }
            if esp_loader(img) != next_loader {
                return Err(format!("{}'s loader is not in place", s.next.version));
            }
            oracle::tools_agree(img, &scratch, oracle::Benign::default())
                .map_err(|e| format!("after the upgrade, the standard tools object:\n  {e}"))
        })();
        fails.add(
            img,
            &format!(
                "{} -> {} {why}, then -> {}",
                s.old.version, s.new.version, s.next.version
            ),
            r,
        );
    });
    eprintln!(
        "{} -> {} cut {n} ways, each upgraded to {}",
        s.old.version, s.new.version, s.next.version
    );
}

#[test]
fn finding_7_second_upgrade_after_every_cut() {
    both_scenarios("a second upgrade after a cut", second_upgrade_after_cuts);
}

/// One power-on as systemd-boot 252 on EDK2 makes it, uncut: picks the
/// entry and counts the try with EDK2's rename, which fails (and the entry
/// boots uncounted) when the new name exists. Returns (entry, counted).
fn edk2_power_on(img: &Path, scratch: &Path) -> Result<(String, bool), String> {
    let model = {
        let mut f = fs::File::open(img).unwrap();
        let esp = oracle::firmware_esp(img)?;
        let mut vol = artifacts::fat::Fat32::open(&mut f, esp.offset(), esp.len())
            .map_err(|e| e.to_string())?;
        installer::bootmodel::BootModel::read(&mut vol).map_err(|e| e.to_string())?
    };
    let chosen = model.selected().ok_or("no entry")?.file.clone();
    let Some((from, to)) = model.boot_rename() else {
        return Ok((chosen, false));
    };
    match common::edk2::rename_writes(img, &from, &to, scratch)? {
        Some(w) => {
            common::edk2::apply(img, &w, |_| true);
            Ok((chosen, true))
        }
        None => Ok((chosen, false)),
    }
}

/// If the new release never comes up (no blessing), systemd-boot must give
/// up on it within its tries and boot the old one.
fn falls_back(s: &Scenario, img: &Path, scratch: &Path) -> Result<(), String> {
    let mut tried = Vec::new();
    for _ in 0..=installer::install::TRIES + 1 {
        let b = oracle::boot(img, &s.releases())?;
        if b.version == s.old.version {
            return Ok(());
        }
        let (entry, counted) = edk2_power_on(img, scratch)?;
        tried.push(format!(
            "{entry}{}",
            if counted { "" } else { " (uncounted)" }
        ));
    }
    Err(format!(
        "{} never falls back to {}: boots {}",
        s.new.version,
        s.old.version,
        tried.join(", ")
    ))
}

/// Every barrier state of the upgrade (and the finished one), then the
/// next power-on's counting rename cut at every subset of EDK2's writes.
fn edk2_rename_after_cuts(s: &Scenario, fails: &mut Failures) {
    let log = s.record();
    let start = s.fx.path("edk2-start.img");
    let work = s.fx.path("edk2-cut.img");
    let scratch = s.fx.path("edk2-esp.img");
    let fsck_scratch = s.fx.path("esp.img");
    let next = s.verified(&s.next);
    sparse_copy(&s.base, &start);
    let (mut renames, mut leftovers, mut lost_fallback) = (0, 0, 0);
    let mut new_renames = 0;
    let epochs = cuts::epochs(&log);
    // Every barrier state of the upgrade; then, from the finished one, the
    // power-ons of a new release that never comes up, each counting rename
    // appending to EFI/Linux as EDK2 does, so the directory grows across
    // sectors and a rename's two entries stop sharing one.
    for e in 0..=epochs + 2 * installer::install::TRIES as usize {
        if (1..=epochs).contains(&e) {
            cuts::apply_epochs(&log, &start, e - 1, e);
        } else if e > epochs {
            edk2_power_on(&start, &scratch).unwrap();
        }
        let model = {
            let mut f = fs::File::open(&start).unwrap();
            let esp = oracle::firmware_esp(&start).unwrap();
            let mut vol = artifacts::fat::Fat32::open(&mut f, esp.offset(), esp.len()).unwrap();
            installer::bootmodel::BootModel::read(&mut vol).unwrap()
        };
        let Some((from, to)) = model.boot_rename() else {
            continue;
        };
        let writes = common::edk2::rename_writes(&start, &from, &to, &scratch)
            .unwrap()
            .expect("a clean ESP has no entry named like the counted one");
        // From a blessed release the upgrade places the new release's
        // entry so that each of its three counting renames deletes and
        // appends within one sector (installer::upgrade, "Placement"):
        // EDK2 writes one sector, which lands whole or not at all. What
        // remains: from a never-blessed release nothing is placed (its own
        // renames cannot share the new release's sector, 18 slots > 16, and
        // a later sector would split them while the new UKI is a `.tmp`),
        // and an exhausted new release is renamed again (+0-3 -> +0-4)
        // only once the old one is exhausted too.
        let selected = model.selected().unwrap();
        let new_entry = s.old_blessed
            && selected.version.as_deref() == Some(&s.new.version)
            && !selected.exhausted();
        if new_entry {
            new_renames += 1;
            let n = writes.len();
            fails.add(
                &start,
                &format!("{from} -> {to} after {e} states"),
                if n == 1 {
                    Ok(())
                } else {
                    Err(format!(
                        "the new release's counting rename spans {n} sectors"
                    ))
                },
            );
        }
        for mask in 0u32..1 << writes.len() {
            renames += 1;
            sparse_copy(&start, &work);
            common::edk2::apply(&work, &writes, |i| mask >> i & 1 == 1);
            let why = format!(
                "{} -> {} after {} of {epochs} epochs and {} power-ons, then {from} -> {to} keeping EDK2's sectors {mask:#b} of {}",
                s.old.version,
                s.new.version,
                e.min(epochs),
                e.saturating_sub(epochs),
                writes.len()
            );
            let booted = match oracle::boot(&work, &s.releases()) {
                Ok(b) if b.version == s.old.version || b.version == s.new.version => b,
                r => {
                    fails.add(&work, &why, Err(format!("does not boot old or new: {r:?}")));
                    continue;
                }
            };
            // What EDK2 itself leaves (a file under two names sharing its
            // clusters, an orphaned long-name part) is counted, not failed,
            // where the placement cannot help (above): the installer cannot
            // order the firmware's writes.
            let tools = oracle::tools_agree(&work, &fsck_scratch, benign(&work, &booted));
            match tools {
                Err(_) if !new_entry => leftovers += 1,
                r => fails.add(&work, &why, r),
            }
            // A bad new release must still be given up on. systemd-boot
            // never renames a blessed entry, so a blessed old release
            // cannot lose its name to a cut; a never-booted one can (EDK2
            // keeps the deletion, not the new entry: its rename cannot
            // share a sector with the new release's, see above), and then
            // only the exhausted new release is left: counted, not failed.
            let probe = s.fx.path("edk2-probe.img");
            sparse_copy(&work, &probe);
            match falls_back(s, &probe, &scratch) {
                Err(_) if !s.old_blessed && !new_entry => lost_fallback += 1,
                r => fails.add(&work, &why, r),
            }
            // And the machine can still be upgraded.
            let r = (|| {
                let mut f = fs::OpenOptions::new()
                    .read(true)
                    .write(true)
                    .open(&work)
                    .unwrap();
                upgrade_disk(&mut f, &work, &next, false)
                    .map_err(|e| format!("upgrading to {} fails: {e}", s.next.version))?;
                drop(f);
                let b = oracle::boot(&work, &s.releases())?;
                if b.version != s.next.version {
                    return Err(format!("after the upgrade: boots {b:?}"));
                }
                Ok(())
            })();
            fails.add(&work, &why, r);
        }
    }
    eprintln!(
        "{} -> {}: {renames} EDK2 rename cuts ({new_renames} placed renames of the new release, \
         each one sector); {leftovers} leave what fsck.fat reports (EDK2's own leftovers); \
         {lost_fallback} lose the never-booted old release's name",
        s.old.version, s.new.version
    );
    if s.old_blessed {
        assert!(new_renames >= installer::install::TRIES as usize);
    }
}

#[test]
fn finding_7_edk2_rename() {
    both_scenarios(
        "systemd-boot's rename cut as EDK2 makes it",
        edk2_rename_after_cuts,
    );
}

/// The placement's bound (installer::upgrade, "Bound"): across many
/// upgrades `EFI/Linux` stays small. Offline upgrades from a fresh install
/// that never boots (no blessed release: each runs from the last,
/// never-booted one) are not placed (first free slots, and the plan says
/// why). Releases that boot (EDK2's counting rename, each checked to write
/// one sector) and are blessed (Linux's vfat rename: first free slots), or
/// fail three times and fall back, or are replaced by an offline upgrade
/// before they boot, are placed atomically every time, in the first two
/// sectors.
#[test]
fn placement_stays_bounded_over_many_upgrades() {
    use installer::upgrade::{ENTRY_RESERVE, PLACEMENT_LIMIT};
    let fx = Fixture::new();
    let img = fx.image("disk.img", DISK_SIZE);
    let scratch = fx.path("edk2-esp.img");
    let first = bundle(&fx.path("b1"), "1.0.0");
    install(&install_opts(&img, &first.dir)).unwrap();
    let mut log = Vec::new();
    for i in 2..=17u32 {
        let v = format!("{i}.0.0");
        let b = bundle(&fx.path(&format!("b{i}")), &v);
        let plan = upgrade(&upgrade_opts(&img, &b.dir)).unwrap();
        let place = plan.placement.expect("a real upgrade places its entry");
        let (slots, end) = common::edk2::linux_dir_slots(&img).unwrap();
        let atomic = if place.atomic { "" } else { "!" };
        log.push(format!("{v}@{}{atomic}/{end}/{slots}", place.slot));
        assert!(slots <= ENTRY_RESERVE + 2 * 16, "{}", log.join(", "));
        assert!(
            end <= 2 * 16 && place.slot + place.span <= PLACEMENT_LIMIT,
            "{}",
            log.join(", ")
        );
        if i <= 5 {
            // Offline, never booted: the next upgrade runs from it.
            assert!(plan.fallback_unblessed && !place.atomic, "{plan}");
            if i == 5 {
                boot_counted(&img, &scratch);
                common::edk2::linux_rename(
                    &img,
                    "cairn-5.0.0+2-1.efi",
                    "cairn-5.0.0.efi",
                    &scratch,
                )
                .unwrap();
            }
            continue;
        }
        assert!(!plan.fallback_unblessed, "{plan}");
        assert!(place.atomic, "{v}: {}", log.join(", "));
        if i % 5 == 0 {
            // Replaced before it boots: the next upgrade runs from the
            // blessed release again.
        } else if i % 4 == 0 {
            // A bad release: three counted tries, then the old one boots.
            for _ in 0..installer::install::TRIES {
                assert!(boot_counted(&img, &scratch).starts_with(&format!("cairn-{v}+")));
            }
            assert!(!boot_counted(&img, &scratch).contains(&v));
        } else {
            assert_eq!(boot_counted(&img, &scratch), format!("cairn-{v}+3.efi"));
            let (from, to) = (format!("cairn-{v}+2-1.efi"), format!("cairn-{v}.efi"));
            common::edk2::linux_rename(&img, &from, &to, &scratch).unwrap();
        }
    }
    eprintln!(
        "placements (version@slot, ! = first free slots / directory end / slots): {}",
        log.join(", ")
    );
}

/// [`edk2_power_on`], checking that a counted entry's rename writes one
/// sector and is made.
fn boot_counted(img: &Path, scratch: &Path) -> String {
    let model = with_esp(img, |vol| {
        installer::bootmodel::BootModel::read(vol).unwrap()
    });
    let counted = model.boot_rename().is_some();
    if let Some((from, to)) = model.boot_rename() {
        let w = common::edk2::rename_writes(img, &from, &to, scratch)
            .unwrap()
            .unwrap();
        assert_eq!(w.len(), 1, "{from} -> {to} writes {} sectors", w.len());
    }
    let (entry, made) = edk2_power_on(img, scratch).unwrap();
    assert_eq!(made, counted, "{entry}");
    entry
}

/// The oracle's own checks can fail: each is shown a disk it must refuse.
#[test]
fn power_cut_oracle_independent_tools() {
    let fx = Fixture::new();
    let mut o = BundleOpts::new("1.0.0");
    o.cmdline_extra = "console=ttyS0 panic=-1".into(); // no `gpt`
    let plain = make_bundle(&fx.path("plain"), &o);
    let with_gpt = bundle(&fx.path("gpt"), "1.0.0");
    let scratch = fx.path("esp.img");
    for (i, b) in [&plain, &with_gpt].into_iter().enumerate() {
        let img = fx.image(&format!("d{i}.img"), DISK_SIZE);
        install(&install_opts(&img, &b.dir)).unwrap();
        let booted = oracle::boot(&img, &[b]).unwrap();
        assert_eq!(booted.force_gpt, b.dir == with_gpt.dir);
        oracle::tools_agree(&img, &scratch, oracle::Benign::default()).unwrap();

        // A torn primary GPT (entries changed, header not): Linux without
        // `gpt` makes no partitions. The installer's reader falls back to
        // the backup and still says it boots.
        let torn = fx.path("torn.img");
        sparse_copy(&img, &torn);
        flip(&torn, 2 * 512 + 128 + 40);
        assert_eq!(booted_version(&torn, &[b]), Ok("1.0.0".into()));
        let r = oracle::boot(&torn, &[b]);
        if booted.force_gpt {
            assert_eq!(r.map(|x| x.version), Ok("1.0.0".into()));
            oracle::tools_agree(&torn, &scratch, benign(&torn, &booted)).unwrap();
        } else {
            let e = r.unwrap_err();
            assert!(e.contains("Linux sees no partitions"), "{e}");
        }
        let e = oracle::tools_agree(&torn, &scratch, oracle::Benign::default()).unwrap_err();
        assert!(e.contains("Main partition table: ERROR"), "{e}");
    }
    let img = fx.image("esp.img.base", DISK_SIZE);
    install(&install_opts(&img, &with_gpt.dir)).unwrap();
    let esp = oracle::firmware_esp(&img).unwrap();

    // A boot sector that differs from its backup: fsck.fat -n exits 0 and
    // says so; the oracle reads the line.
    let bad = fx.path("bad-boot.img");
    sparse_copy(&img, &bad);
    flip(&bad, esp.offset() + 3);
    oracle::extract(&bad, &esp, &scratch);
    assert!(tool("fsck.fat", &["-n", scratch.to_str().unwrap()])
        .status
        .success());
    let e = oracle::tools_agree(&bad, &scratch, oracle::Benign::default()).unwrap_err();
    assert!(
        e.contains("differences between boot sector and its backup"),
        "{e}"
    );

    // A leaked cluster (allocated, owned by no file; fsck.fat exits 1) is
    // what a cut may leave by design: accepted.
    let leak = fx.path("leak.img");
    sparse_copy(&img, &leak);
    let geo = {
        let mut f = fs::File::open(&leak).unwrap();
        artifacts::fat::Fat32::open(&mut f, esp.offset(), esp.len())
            .unwrap()
            .geometry()
    };
    for copy in 0..geo.fat_count {
        let at = esp.offset() + geo.fat_offset(copy) + 4 * 5000;
        write_bytes(&leak, at, &0x0FFF_FFFFu32.to_le_bytes());
    }
    oracle::extract(&leak, &esp, &scratch);
    assert_eq!(
        tool("fsck.fat", &["-n", scratch.to_str().unwrap()])
            .status
            .code(),
        Some(1)
    );
    oracle::tools_agree(&leak, &scratch, oracle::Benign::default()).unwrap();
}

fn flip(img: &Path, at: u64) {
    use std::os::unix::fs::FileExt;
    let f = fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(img)
        .unwrap();
    let mut b = [0u8; 1];
    f.read_exact_at(&mut b, at).unwrap();
    f.write_all_at(&[b[0] ^ 0xff], at).unwrap();
}

fn write_bytes(img: &Path, at: u64, data: &[u8]) {
    use std::os::unix::fs::FileExt;
    let f = fs::OpenOptions::new().write(true).open(img).unwrap();
    f.write_all_at(data, at).unwrap();
}

/// Names in EFI/Linux (`.tmp` files too), read raw.
fn linux_dir(img: &Path) -> Vec<String> {
    let esp = oracle::firmware_esp(img).unwrap();
    let mut f = fs::File::open(img).unwrap();
    let mut v = artifacts::fat::Fat32::open(&mut f, esp.offset(), esp.len()).unwrap();
    let mut names: Vec<String> = v
        .list("EFI/Linux")
        .unwrap()
        .into_iter()
        .map(|e| e.name)
        .collect();
    names.sort();
    names
}

/// What the boot model says the next power-on does: the entry list after
/// it (sorted), or None when systemd-boot's rename is refused because the
/// new name exists (the entry then boots uncounted).
fn predicted_power_on(img: &Path) -> Option<Vec<String>> {
    let mut entries = entry_files(img);
    let model = with_esp(img, |v| installer::bootmodel::BootModel::read(v).unwrap());
    if let Some((from, to)) = model.boot_rename() {
        if entries.contains(&to) {
            return None;
        }
        for e in &mut entries {
            if *e == from {
                *e = to.clone();
            }
        }
    }
    entries.sort();
    Some(entries)
}

/// Cut images from the middle of the ESP steps, powered on with the real
/// systemd-boot 252 under OVMF: the entry it picks (its counting rename) is
/// the one the model predicts. Runs QEMU: under /tmp/cairn-heavy.lock.
#[test]
fn power_cut_images_boot_as_the_model_predicts() {
    let s = Scenario::first();
    let log = s.record();
    let new_loader = bundle_loader(&s.new);
    let walk = s.fx.path("walk.img");
    sparse_copy(&s.base, &walk);
    let mut picks: Vec<(&str, std::path::PathBuf)> = Vec::new();
    let mut pick = |label: &'static str, img: &Path| {
        if !picks.iter().any(|(l, _)| *l == label) {
            let p = s.fx.path(&format!("pick-{label}.img"));
            sparse_copy(img, &p);
            picks.push((label, p));
        }
    };
    for e in 1..=cuts::epochs(&log) {
        cuts::apply_epochs(&log, &walk, e - 1, e);
        let names = linux_dir(&walk);
        let tmp = names.iter().any(|n| n.ends_with(".tmp"));
        let new = names
            .iter()
            .any(|n| n.starts_with("cairn-2.0.0") && n.ends_with(".efi"));
        if tmp && !new {
            pick("uki-written-not-renamed", &walk);
        }
        if new && esp_loader(&walk) != new_loader {
            pick("renamed-old-loader", &walk);
        }
        if esp_loader(&walk) == new_loader && e < cuts::epochs(&log) {
            pick("loader-entry-rewritten-old-chain-held", &walk);
        }
    }
    // A counting rename cut as EDK2 can leave it when the two entries sit
    // in different sectors: the new name written, the old not deleted.
    let both = s.fx.path("pick-both-names.img");
    sparse_copy(&walk, &both);
    let model = with_esp(&both, |v| installer::bootmodel::BootModel::read(v).unwrap());
    let (from, to) = model.boot_rename().unwrap();
    let (deletions, w) = common::edk2::entry_writes(&both, &from, &to, &s.fx.path("edk2.img"))
        .unwrap()
        .unwrap();
    common::edk2::apply(&both, &w, |i| i >= deletions);
    assert_eq!(entry_files(&both).len(), 3, "{:?}", entry_files(&both));
    picks.push(("both-names", both));
    assert_eq!(
        picks.len(),
        4,
        "{:?}",
        picks.iter().map(|p| p.0).collect::<Vec<_>>()
    );

    for (label, img) in &picks {
        let booted = oracle::boot(img, &s.releases()).unwrap();
        let before = entry_files(img);
        let predicted = predicted_power_on(img);
        eprintln!("{label}: model boots {booted:?}; entries {before:?} -> {predicted:?}");
        match predicted {
            Some(after) => {
                let mut now = common::firmware::power_on(&s.fx, img);
                now.sort();
                assert_eq!(
                    now, after,
                    "{label}: systemd-boot's rename differs from the model"
                );
            }
            None => {
                let (now, console) = common::firmware::power_on_until(
                    &s.fx,
                    img,
                    std::time::Duration::from_secs(240),
                    |_, c| c.contains("Failed to rename"),
                );
                assert_eq!(now, before, "{label}: systemd-boot renamed something");
                assert!(
                    console.contains("Failed to rename"),
                    "{label}: systemd-boot did not report the refused rename; console tail:\n{}",
                    &console[console.len().saturating_sub(2000)..]
                );
            }
        }
    }

    // The placement under real EDK2: after an upgrade from a blessed
    // release (2.0.0 -> 3.0.0, which places 3.0.0's entry in the next
    // sector), the first power-on renames it (+3 -> +2-1) by changing
    // exactly one 512-byte sector of EFI/Linux, the one common::edk2
    // predicts.
    let s = Scenario::second();
    let log = s.record();
    let walk = s.fx.path("placed.img");
    sparse_copy(&s.base, &walk);
    cuts::apply_epochs(&log, &walk, 0, cuts::epochs(&log));
    let model = with_esp(&walk, |v| installer::bootmodel::BootModel::read(v).unwrap());
    let (from, to) = model.boot_rename().unwrap();
    assert!(from.starts_with("cairn-3.0.0+3"), "{from}");
    let predicted = common::edk2::rename_writes(&walk, &from, &to, &s.fx.path("edk2.img"))
        .unwrap()
        .unwrap();
    assert_eq!(
        predicted.len(),
        1,
        "the model writes {} sectors",
        predicted.len()
    );
    let expected = predicted_power_on(&walk).unwrap();
    let (offsets, before) = common::edk2::linux_dir_raw(&walk).unwrap();
    let mut now = common::firmware::power_on(&s.fx, &walk);
    now.sort();
    assert_eq!(
        now, expected,
        "systemd-boot's rename differs from the model"
    );
    let (_, after) = common::edk2::linux_dir_raw(&walk).unwrap();
    let changed: Vec<u64> = (0..offsets.len())
        .filter(|&k| before[k * 512..(k + 1) * 512] != after[k * 512..(k + 1) * 512])
        .map(|k| offsets[k])
        .collect();
    let k = offsets.iter().position(|o| *o == predicted[0].0).unwrap();
    let same = after[k * 512..(k + 1) * 512] == predicted[0].1[..];
    eprintln!(
        "real EDK2 renamed {from} -> {to} changing EFI/Linux sectors at {changed:?}; \
         the model predicts {}; byte-identical: {same}",
        predicted[0].0
    );
    assert_eq!(changed, [predicted[0].0], "{from} -> {to} under OVMF");
}
