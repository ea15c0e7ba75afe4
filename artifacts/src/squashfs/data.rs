//! File content: data blocks and fragment blocks, compressed in parallel.
//!
//! One reader thread walks the files in tree order, drops duplicates (whole
//! file content, by sha256), finds all-zero blocks (stored as sparse) and
//! packs tails into fragment blocks. Every block that needs compressing
//! becomes a job with a sequence number; workers compress jobs in any order
//! and the calling thread writes results strictly by sequence number, so the
//! bytes do not depend on the thread count or on scheduling.

use std::collections::{BTreeMap, HashMap};
use std::fs::File;
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{channel, sync_channel, Receiver, Sender};
use std::sync::{Arc, Mutex};

use sha2::{Digest, Sha256};

use super::compress::Codec;
use super::{BlockCache, SquashfsError};
use crate::tree::{Kind, Tree};

/// Set in a data block's size word when the block is stored uncompressed.
pub const DATA_UNCOMPRESSED: u32 = 1 << 24;

/// Where one data block of a file went.
#[derive(Debug, Clone, Copy)]
enum Slot {
    /// The job with this sequence number.
    Job(usize),
    /// All zeros: stored as size 0, nothing written.
    Sparse,
}

#[derive(Debug, Clone)]
struct Plan {
    blocks: Vec<Slot>,
    /// (fragment index, offset in the fragment block)
    fragment: Option<(u32, u32)>,
    sparse_bytes: u64,
}

/// A file's content as the inode needs it.
#[derive(Debug, Clone, Default)]
pub struct FileData {
    pub start: u64,
    pub block_sizes: Vec<u32>,
    pub fragment: Option<(u32, u32)>,
    pub sparse_bytes: u64,
}

pub struct DataOut {
    /// By entry index, for every regular file entry (link followers included).
    pub files: HashMap<usize, FileData>,
    /// Fragment table entries: (absolute start, size word).
    pub fragments: Vec<(u64, u32)>,
    pub data_blocks: u64,
    pub sparse_blocks: u64,
    pub duplicates: u64,
    pub cache_hits: u64,
}

struct Job {
    seq: usize,
    buf: Arc<Vec<u8>>,
    start: usize,
    end: usize,
    what: JobWhat,
}

#[derive(Clone, Copy)]
enum JobWhat {
    Block,
    Fragment,
}

/// A compressed (or stored) block, ready to write.
struct Done {
    seq: usize,
    bytes: Vec<u8>,
    compressed: bool,
}

struct ReaderOut {
    plans: Vec<(usize, usize)>, // (entry index, plan index)
    unique: Vec<Plan>,
    fragment_jobs: Vec<usize>,
    sparse_blocks: u64,
    duplicates: u64,
}

pub struct Settings<'a> {
    pub level: i32,
    pub block_size: usize,
    pub threads: usize,
    pub cache: Option<&'a dyn BlockCache>,
}

/// Writes all file content to `out`, starting at absolute offset `pos`.
/// Returns where everything went; `pos` is advanced past the data.
pub fn write_data<W: Write>(
    tree: &Tree,
    out: &mut W,
    pos: &mut u64,
    s: &Settings,
) -> Result<DataOut, SquashfsError> {
    let threads = s.threads.max(1);
    let hits = AtomicU64::new(0);
    let (job_tx, job_rx) = sync_channel::<Job>(threads * 4);
    let job_rx = Arc::new(Mutex::new(job_rx));
    let (done_tx, done_rx) = channel::<Result<Done, SquashfsError>>();
    let mut placed: Vec<(u64, u32)> = Vec::new();

    let (reader_res, write_res) = std::thread::scope(|scope| {
        let reader = scope.spawn(|| read_files(tree, s.block_size, job_tx));
        for _ in 0..threads {
            let rx = Arc::clone(&job_rx);
            let tx = done_tx.clone();
            let hits = &hits;
            scope.spawn(move || compress_jobs(rx, tx, s, hits));
        }
        drop(done_tx);
        let write_res = write_in_order(done_rx, out, pos, &mut placed);
        (reader.join(), write_res)
    });
    // A reader error is the cause of any writer error that follows it.
    let r = match reader_res {
        Ok(r) => r?,
        Err(p) => std::panic::resume_unwind(p),
    };
    write_res?;

    let mut files = HashMap::new();
    let per_plan: Vec<FileData> = r
        .unique
        .iter()
        .map(|p| {
            let start = p
                .blocks
                .iter()
                .find_map(|b| match b {
                    Slot::Job(q) => Some(placed[*q].0),
                    Slot::Sparse => None,
                })
                .unwrap_or(0);
            FileData {
                start,
                block_sizes: p
                    .blocks
                    .iter()
                    .map(|b| match b {
                        Slot::Job(q) => placed[*q].1,
                        Slot::Sparse => 0,
                    })
                    .collect(),
                fragment: p.fragment,
                sparse_bytes: p.sparse_bytes,
            }
        })
        .collect();
    for (entry, plan) in &r.plans {
        files.insert(*entry, per_plan[*plan].clone());
    }
    // Hard-link followers share the first member's content.
    for (i, e) in tree.entries.iter().enumerate() {
        if let (Kind::File { .. }, Some(g)) = (&e.kind, e.link_group) {
            if g != i {
                if let Some(d) = files.get(&g).cloned() {
                    files.insert(i, d);
                }
            }
        }
    }
    let fragments = r.fragment_jobs.iter().map(|&q| placed[q]).collect();
    let data_blocks = placed.len() as u64 - r.fragment_jobs.len() as u64;
    Ok(DataOut {
        files,
        fragments,
        data_blocks,
        sparse_blocks: r.sparse_blocks,
        duplicates: r.duplicates,
        cache_hits: hits.load(Ordering::Relaxed),
    })
}

fn read_files(
    tree: &Tree,
    bs: usize,
    jobs: std::sync::mpsc::SyncSender<Job>,
) -> Result<ReaderOut, SquashfsError> {
    let mut seq = 0usize;
    let mut by_hash: HashMap<[u8; 32], usize> = HashMap::new();
    let mut out = ReaderOut {
        plans: Vec::new(),
        unique: Vec::new(),
        fragment_jobs: Vec::new(),
        sparse_blocks: 0,
        duplicates: 0,
    };
    let mut frag: Vec<u8> = Vec::with_capacity(bs);
    // The receiver only goes away when the writer failed; its error is the
    // one reported, so a failed send just ends reading.
    let send = |job: Job| jobs.send(job).is_ok();
    for (i, e) in tree.entries.iter().enumerate() {
        let Kind::File { size } = e.kind else {
            continue;
        };
        if e.link_group.is_some_and(|g| g != i) {
            continue;
        }
        let (mut content, hash) = Content::open(&e.source, size)?;
        if let Some(&p) = by_hash.get(&hash) {
            out.plans.push((i, p));
            out.duplicates += 1;
            continue;
        }
        let full = (size / bs as u64) as usize;
        let mut plan = Plan {
            blocks: Vec::with_capacity(full + 1),
            fragment: None,
            sparse_bytes: 0,
        };
        for b in 0..full {
            let (buf, start, end) = content.block(b * bs, bs)?;
            if buf[start..end].iter().all(|&x| x == 0) {
                plan.blocks.push(Slot::Sparse);
                plan.sparse_bytes += bs as u64;
                out.sparse_blocks += 1;
                continue;
            }
            plan.blocks.push(Slot::Job(seq));
            if !send(Job {
                seq,
                buf,
                start,
                end,
                what: JobWhat::Block,
            }) {
                return Ok(out);
            }
            seq += 1;
        }
        let tail_len = (size % bs as u64) as usize;
        let (buf, start, end) = content.block(full * bs, tail_len)?;
        content.finish()?;
        let tail = &buf[start..end];
        if !tail.is_empty() {
            if frag.len() + tail.len() > bs && !flush_fragment(&mut frag, &mut seq, &mut out, &send)
            {
                return Ok(out);
            }
            plan.fragment = Some((out.fragment_jobs.len() as u32, frag.len() as u32));
            frag.extend_from_slice(tail);
        }
        by_hash.insert(hash, out.unique.len());
        out.plans.push((i, out.unique.len()));
        out.unique.push(plan);
    }
    flush_fragment(&mut frag, &mut seq, &mut out, &send);
    Ok(out)
}

/// Queues the fragment block being filled; false when the writer is gone.
fn flush_fragment(
    frag: &mut Vec<u8>,
    seq: &mut usize,
    out: &mut ReaderOut,
    send: &dyn Fn(Job) -> bool,
) -> bool {
    if frag.is_empty() {
        return true;
    }
    let cap = frag.capacity();
    let buf = Arc::new(std::mem::replace(frag, Vec::with_capacity(cap)));
    out.fragment_jobs.push(*seq);
    let end = buf.len();
    let ok = send(Job {
        seq: *seq,
        buf,
        start: 0,
        end,
        what: JobWhat::Fragment,
    });
    *seq += 1;
    ok
}

/// Files up to this size are read whole: one read, hashed in memory.
const WHOLE_READ_MAX: u64 = 8 << 20;

/// A file's content, handed out block by block. Larger files are hashed in
/// a first streaming pass (the duplicate check needs the hash before any
/// block is queued) and read again block by block, so memory stays at a few
/// blocks per worker whatever the file size.
enum Content {
    Whole(Arc<Vec<u8>>),
    Stream {
        file: File,
        path: std::path::PathBuf,
        hash: [u8; 32],
        hasher: Sha256,
    },
}

impl Content {
    fn open(path: &Path, size: u64) -> Result<(Content, [u8; 32]), SquashfsError> {
        if size <= WHOLE_READ_MAX {
            let c = read_exact_size(path, size)?;
            let hash = Sha256::digest(&c).into();
            return Ok((Content::Whole(Arc::new(c)), hash));
        }
        let err = |source| SquashfsError::Read {
            path: path.to_path_buf(),
            source,
        };
        let mut f = File::open(path).map_err(err)?;
        let mut hasher = Sha256::new();
        let mut buf = vec![0u8; 1 << 20];
        let mut seen = 0u64;
        loop {
            let n = f.read(&mut buf).map_err(err)?;
            if n == 0 {
                break;
            }
            hasher.update(&buf[..n]);
            seen += n as u64;
        }
        if seen != size {
            return Err(SquashfsError::SizeChanged {
                path: path.to_path_buf(),
                expected: size,
                actual: seen,
            });
        }
        let hash: [u8; 32] = hasher.finalize().into();
        f.seek(SeekFrom::Start(0)).map_err(err)?;
        let c = Content::Stream {
            file: f,
            path: path.to_path_buf(),
            hash,
            hasher: Sha256::new(),
        };
        Ok((c, hash))
    }

    /// `len` bytes at `start`, as (buffer, range); blocks are asked for in order.
    fn block(
        &mut self,
        start: usize,
        len: usize,
    ) -> Result<(Arc<Vec<u8>>, usize, usize), SquashfsError> {
        match self {
            Content::Whole(c) => Ok((Arc::clone(c), start, start + len)),
            Content::Stream {
                file, path, hasher, ..
            } => {
                let mut b = vec![0u8; len];
                file.read_exact(&mut b)
                    .map_err(|source| SquashfsError::Read {
                        path: path.clone(),
                        source,
                    })?;
                hasher.update(&b);
                Ok((Arc::new(b), 0, len))
            }
        }
    }

    /// Checks a streamed file still had the content it was hashed with.
    fn finish(self) -> Result<(), SquashfsError> {
        if let Content::Stream {
            mut file,
            path,
            hash,
            hasher,
        } = self
        {
            let mut extra = [0u8; 1];
            let more = file
                .read(&mut extra)
                .map_err(|source| SquashfsError::Read {
                    path: path.clone(),
                    source,
                })?;
            if more != 0 || <[u8; 32]>::from(hasher.finalize()) != hash {
                return Err(SquashfsError::Changed { path });
            }
        }
        Ok(())
    }
}

/// Reads a whole file, insisting it still has the size the tree recorded:
/// the inode was planned with that size.
fn read_exact_size(path: &Path, size: u64) -> Result<Vec<u8>, SquashfsError> {
    let err = |source| SquashfsError::Read {
        path: path.to_path_buf(),
        source,
    };
    let f = File::open(path).map_err(err)?;
    let mut buf = Vec::with_capacity(size as usize);
    // One byte past the expected size tells a grown file from an exact one.
    (&f).take(size + 1).read_to_end(&mut buf).map_err(err)?;
    if buf.len() as u64 != size {
        let actual = f.metadata().map_err(err)?.len();
        return Err(SquashfsError::SizeChanged {
            path: path.to_path_buf(),
            expected: size,
            actual,
        });
    }
    Ok(buf)
}

fn compress_jobs(
    rx: Arc<Mutex<Receiver<Job>>>,
    tx: Sender<Result<Done, SquashfsError>>,
    s: &Settings,
    hits: &AtomicU64,
) {
    let mut codec = match Codec::new(s.level) {
        Ok(c) => c,
        Err(e) => {
            let _ = tx.send(Err(e));
            return;
        }
    };
    loop {
        // The lock is held only while taking one job.
        let job = match rx.lock() {
            Ok(guard) => guard.recv(),
            Err(_) => return,
        };
        let Ok(job) = job else { return };
        let data = &job.buf[job.start..job.end];
        let res = compress_one(&mut codec, data, &job, s, hits);
        if tx.send(res).is_err() {
            return;
        }
    }
}

fn compress_one(
    codec: &mut Codec,
    data: &[u8],
    job: &Job,
    s: &Settings,
    hits: &AtomicU64,
) -> Result<Done, SquashfsError> {
    let key = s.cache.map(|_| cache_key(s.level, data));
    if let (Some(cache), Some(key)) = (s.cache, &key) {
        if let Some(stored) = cache.get(key) {
            // A stored block keeps the input length, a compressed one is
            // strictly shorter: the length alone says which it is.
            if stored.len() <= data.len() {
                hits.fetch_add(1, Ordering::Relaxed);
                let compressed = stored.len() < data.len();
                return Ok(Done {
                    seq: job.seq,
                    bytes: stored,
                    compressed,
                });
            }
        }
    }
    let what = match job.what {
        JobWhat::Block => "data block",
        JobWhat::Fragment => "fragment block",
    };
    let (bytes, compressed) = match codec.compress(data, what)? {
        Some(c) => (c, true),
        None => (data.to_vec(), false),
    };
    if let (Some(cache), Some(key)) = (s.cache, key) {
        cache.put(key, bytes.clone());
    }
    Ok(Done {
        seq: job.seq,
        bytes,
        compressed,
    })
}

/// The cache key: the level is hashed in, so one cache can serve builds at
/// different levels without handing back a block compressed at another.
pub fn cache_key(level: i32, block: &[u8]) -> [u8; 32] {
    let mut h = Sha256::new();
    h.update(b"cairn-squashfs-zstd\0");
    h.update(level.to_le_bytes());
    h.update(block);
    h.finalize().into()
}

fn write_in_order<W: Write>(
    rx: Receiver<Result<Done, SquashfsError>>,
    out: &mut W,
    pos: &mut u64,
    placed: &mut Vec<(u64, u32)>,
) -> Result<(), SquashfsError> {
    let mut waiting: BTreeMap<usize, Done> = BTreeMap::new();
    for res in rx {
        let d = res?;
        waiting.insert(d.seq, d);
        while let Some(d) = waiting.remove(&placed.len()) {
            out.write_all(&d.bytes)
                .map_err(|source| SquashfsError::Write {
                    offset: *pos,
                    source,
                })?;
            let mut word = d.bytes.len() as u32;
            if !d.compressed {
                word |= DATA_UNCOMPRESSED;
            }
            placed.push((*pos, word));
            *pos += d.bytes.len() as u64;
        }
    }
    Ok(())
}
