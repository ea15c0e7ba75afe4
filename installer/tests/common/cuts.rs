//! Power-cut models over a recorded write log.
//!
//! [`RecordingDisk`] runs an operation to completion and keeps every write
//! (offset, bytes) with the barrier epoch it was issued in: `flush` is the
//! only durability barrier the installer has (fdatasync on a real disk), so
//! writes between two flushes may reach the medium in any order, or not at
//! all, when the power goes. A cut image is then: the base image, every
//! write of the epochs before the cut, and some of the writes of the epoch
//! in flight. [`cut_points`] lists which ones:
//!
//! * every subset of the epoch's writes when it has at most
//!   [`EXHAUSTIVE`] of them, otherwise every subset of size 0, 1, n-1 and n
//!   plus a seeded sample, so a big epoch stays bounded and the run stays
//!   the same from one run to the next;
//! * a sector-granular tear of each multi-sector write (its first sector
//!   only, all but its first, its last only, all but its last), with the
//!   rest of the epoch either all there or all lost.
//!
//! Writes that persist land in issue order (a later write to the same bytes
//! wins): a device may drop or reorder commands, but what it keeps of one
//! sector is one of the versions written to it, and for the overlapping
//! writes this installer issues (FAT sectors, FSInfo) the later version is
//! a superset of the earlier's intent.
//!
//! The old prefix model ("the first k writes persist") is the subset made
//! of an epoch's first writes, so every prefix cut is among these.

use std::fs;
use std::io::{self, Read, Seek, SeekFrom, Write};
use std::os::unix::fs::FileExt;
use std::path::Path;

pub const SECTOR: usize = 512;

/// Epochs with at most this many writes are cut at every subset (2^n).
pub const EXHAUSTIVE: usize = 10;
/// Random subsets drawn from an epoch with more writes than [`EXHAUSTIVE`].
pub const SAMPLED: usize = 256;

/// One write as the disk received it.
#[derive(Debug, Clone)]
pub struct Logged {
    /// Barriers (flushes) issued before this write.
    pub epoch: usize,
    pub offset: u64,
    pub data: Vec<u8>,
}

/// A disk image that records every write and barrier and passes them on.
pub struct RecordingDisk {
    pub file: fs::File,
    pub log: Vec<Logged>,
    pub epoch: usize,
}

impl RecordingDisk {
    pub fn new(path: &Path) -> RecordingDisk {
        RecordingDisk {
            file: fs::OpenOptions::new()
                .read(true)
                .write(true)
                .open(path)
                .unwrap(),
            log: Vec::new(),
            epoch: 0,
        }
    }
}

impl Read for RecordingDisk {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        self.file.read(buf)
    }
}

impl Write for RecordingDisk {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let offset = self.file.stream_position()?;
        let n = self.file.write(buf)?;
        self.log.push(Logged {
            epoch: self.epoch,
            offset,
            data: buf[..n].to_vec(),
        });
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        // Consecutive barriers with nothing between them are one barrier.
        if self.log.last().is_some_and(|w| w.epoch == self.epoch) {
            self.epoch += 1;
        }
        Ok(())
    }
}

impl Seek for RecordingDisk {
    fn seek(&mut self, pos: SeekFrom) -> io::Result<u64> {
        self.file.seek(pos)
    }
}

/// Which sectors of a torn write persist.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Tear {
    FirstOnly,
    AllButFirst,
    LastOnly,
    AllButLast,
}

impl Tear {
    const ALL: [Tear; 4] = [
        Tear::FirstOnly,
        Tear::AllButFirst,
        Tear::LastOnly,
        Tear::AllButLast,
    ];

    /// The byte ranges of a `len`-byte write at `offset` that persist:
    /// sector boundaries are those of the disk, not of the write.
    fn kept(self, offset: u64, len: usize) -> Vec<(usize, usize)> {
        let first_end = ((offset as usize / SECTOR + 1) * SECTOR - offset as usize).min(len);
        let last_start = {
            let end = offset as usize + len;
            let s = (end - 1) / SECTOR * SECTOR;
            s.saturating_sub(offset as usize)
        };
        match self {
            Tear::FirstOnly => vec![(0, first_end)],
            Tear::AllButFirst => vec![(first_end, len)],
            Tear::LastOnly => vec![(last_start, len)],
            Tear::AllButLast => vec![(0, last_start)],
        }
    }
}

/// One cut: all epochs before `epoch`, and of epoch `epoch` the writes at
/// `kept` (indices into the whole log), one of them possibly torn.
#[derive(Debug, Clone)]
pub struct CutPoint {
    pub epoch: usize,
    pub kept: Vec<usize>,
    pub torn: Option<(usize, Tear)>,
}

impl CutPoint {
    pub fn label(&self, log: &[Logged]) -> String {
        let range = epoch_range(log, self.epoch);
        let rel: Vec<String> = self
            .kept
            .iter()
            .map(|i| format!("{}", i - range.start + 1))
            .collect();
        let torn = self
            .torn
            .map(|(i, t)| format!(", write {} torn {t:?}", i - range.start + 1))
            .unwrap_or_default();
        format!(
            "epoch {}/{} (log writes {}..={}): kept {{{}}}{torn}",
            self.epoch + 1,
            epochs(log),
            range.start + 1,
            range.end,
            rel.join(",")
        )
    }

    /// Writes this cut's state of the disk over `img`, which holds the
    /// state before epoch `epoch` (see [`apply_epochs`]).
    pub fn apply(&self, log: &[Logged], img: &Path) {
        let f = fs::OpenOptions::new().write(true).open(img).unwrap();
        let range = epoch_range(log, self.epoch);
        for i in range {
            let w = &log[i];
            if self.kept.contains(&i) {
                f.write_all_at(&w.data, w.offset).unwrap();
            } else if let Some((_, tear)) = self.torn.filter(|(t, _)| *t == i) {
                for (a, b) in tear.kept(w.offset, w.data.len()) {
                    f.write_all_at(&w.data[a..b], w.offset + a as u64).unwrap();
                }
            }
        }
    }
}

/// Number of epochs in the log.
pub fn epochs(log: &[Logged]) -> usize {
    log.last().map_or(0, |w| w.epoch + 1)
}

/// Indices of the writes of epoch `e`.
pub fn epoch_range(log: &[Logged], e: usize) -> std::ops::Range<usize> {
    let start = log.partition_point(|w| w.epoch < e);
    let end = log.partition_point(|w| w.epoch <= e);
    start..end
}

/// Applies every write of epochs `from..to` to `img`, in issue order.
pub fn apply_epochs(log: &[Logged], img: &Path, from: usize, to: usize) {
    let f = fs::OpenOptions::new().write(true).open(img).unwrap();
    for w in log.iter().filter(|w| w.epoch >= from && w.epoch < to) {
        f.write_all_at(&w.data, w.offset).unwrap();
    }
}

/// A small deterministic generator (SplitMix64): the sampled subsets are
/// the same on every run.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
}

/// Every cut point of the log (see the module docs), in epoch order. The
/// state after the last barrier (the finished operation) is not a cut.
pub fn cut_points(log: &[Logged]) -> Vec<CutPoint> {
    let mut out = Vec::new();
    for e in 0..epochs(log) {
        let r = epoch_range(log, e);
        let n = r.len();
        let idx: Vec<usize> = r.clone().collect();
        let subset = |mask: &dyn Fn(usize) -> bool| -> Vec<usize> {
            idx.iter()
                .enumerate()
                .filter(|(j, _)| mask(*j))
                .map(|(_, &i)| i)
                .collect()
        };
        let mut masks: Vec<Vec<bool>> = Vec::new();
        if n <= EXHAUSTIVE {
            // The full set is the next epoch's empty set: skipped.
            for m in 0u32..(1u32 << n) - 1 {
                masks.push((0..n).map(|j| m >> j & 1 == 1).collect());
            }
        } else {
            masks.push(vec![false; n]);
            for j in 0..n {
                masks.push((0..n).map(|k| k == j).collect());
                masks.push((0..n).map(|k| k != j).collect());
            }
            let mut rng = Rng(0xC0FFEE ^ e as u64);
            for _ in 0..SAMPLED {
                masks.push((0..n).map(|_| rng.next() & 1 == 1).collect());
            }
            masks.sort();
            masks.dedup();
            masks.retain(|m| !m.iter().all(|b| *b));
        }
        for m in masks {
            out.push(CutPoint {
                epoch: e,
                kept: subset(&|j| m[j]),
                torn: None,
            });
        }
        for &i in &idx {
            let w = &log[i];
            let first = w.offset as usize / SECTOR;
            let last = (w.offset as usize + w.data.len() - 1) / SECTOR;
            if first == last {
                continue;
            }
            for tear in Tear::ALL {
                for others in [false, true] {
                    out.push(CutPoint {
                        epoch: e,
                        kept: if others {
                            idx.iter().copied().filter(|&k| k != i).collect()
                        } else {
                            Vec::new()
                        },
                        torn: Some((i, tear)),
                    });
                }
            }
        }
    }
    out
}

/// (epoch sizes, cut count) for the report line.
pub fn summary(log: &[Logged]) -> String {
    let sizes: Vec<String> = (0..epochs(log))
        .map(|e| epoch_range(log, e).len().to_string())
        .collect();
    format!(
        "{} writes in {} epochs (sizes {}): {} cut points",
        log.len(),
        epochs(log),
        sizes.join(" "),
        cut_points(log).len()
    )
}
