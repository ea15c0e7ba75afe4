//! `cairn build --check-reproducible`: the profile built twice in fresh
//! temporary directories, under another path, umask and TZ and with empty
//! stage caches, and every output compared byte for byte.

use std::fs;
use std::io::Read;
use std::path::Path;

use anyhow::{Context, Result};

use crate::pipeline::{self, BuildOptions};

/// The two builds: each differs from the other in what a build must not
/// depend on (its directory, the umask, the time zone).
const RUNS: [(&str, u32, &str); 2] = [("a", 0o022, "UTC"), ("b-other-path", 0o077, "Asia/Kolkata")];

/// What the check found.
#[derive(Debug)]
pub struct Report {
    /// Every output compared, in name order, with its sha256 where both
    /// builds agreed (up to the first difference).
    pub identical: Vec<(String, String)>,
    pub verdict: Verdict,
}

#[derive(Debug, PartialEq, Eq)]
pub enum Verdict {
    Reproducible,
    /// The builds wrote different sets of files.
    FileSets {
        a: Vec<String>,
        b: Vec<String>,
    },
    /// `name` differs, first at byte `offset`.
    Differs {
        name: String,
        sha256_a: String,
        sha256_b: String,
        offset: u64,
    },
}

/// Builds `opts.profile` twice and compares the outputs. `opts.out` and
/// `opts.stage_cache` are ignored: each build gets its own, fresh. Without
/// `opts.key`, one key is made for both builds, since the signature is part
/// of the output. Sets the process umask and `TZ` while it runs (restored
/// after): call it from a single-threaded program.
pub fn check(opts: &BuildOptions) -> Result<Report> {
    let keydir = tempfile::tempdir()?;
    let key = match &opts.key {
        Some(k) => k.clone(),
        None => {
            let k = keydir.path().join("repro.key");
            signing::PrivateKey::generate()?.write_new(&k)?;
            k
        }
    };
    let saved_tz = std::env::var_os("TZ");
    let mut dirs = Vec::new();
    let mut result = Ok(());
    for (name, umask, tz) in RUNS {
        let dir = tempfile::Builder::new()
            .prefix(&format!("cairn-repro-{name}-"))
            .tempdir()?;
        tracing::info!(
            "reproducibility build {name}: {} (umask {umask:03o}, TZ={tz})",
            dir.path().display()
        );
        let old_umask = set_umask(umask);
        // SAFETY: the caller is single-threaded (see above); TZ only
        // affects this process.
        unsafe { std::env::set_var("TZ", tz) };
        result = pipeline::build(&BuildOptions {
            profile: opts.profile.clone(),
            out: dir.path().join("out"),
            key: Some(key.clone()),
            cache: opts.cache.clone(),
            stage_cache: Some(dir.path().join("stages")),
            repo: opts.repo.clone(),
            secure_boot_keys: opts.secure_boot_keys.clone(),
            version: opts.version.clone(),
            outputs: opts.outputs.clone(),
            kernel_args: opts.kernel_args.clone(),
        })
        .map(drop);
        set_umask(old_umask);
        dirs.push(dir);
        if result.is_err() {
            break;
        }
    }
    // SAFETY: as above.
    unsafe {
        match saved_tz {
            Some(tz) => std::env::set_var("TZ", tz),
            None => std::env::remove_var("TZ"),
        }
    }
    result?;
    compare(&dirs[0].path().join("out"), &dirs[1].path().join("out"))
}

fn set_umask(mask: u32) -> u32 {
    // SAFETY: umask cannot fail; it only swaps the process's mask.
    unsafe { libc::umask(mask as libc::mode_t) as u32 }
}

/// Compares two output directories: the same files, byte for byte.
pub fn compare(a: &Path, b: &Path) -> Result<Report> {
    let (na, nb) = (output_files(a)?, output_files(b)?);
    if na != nb {
        return Ok(Report {
            identical: Vec::new(),
            verdict: Verdict::FileSets { a: na, b: nb },
        });
    }
    let mut identical = Vec::new();
    for n in na {
        let (pa, pb) = (a.join(&n), b.join(&n));
        let (ha, hb) = (signing::hash_file(&pa)?.1, signing::hash_file(&pb)?.1);
        if ha != hb {
            let offset = first_difference(&pa, &pb)?;
            return Ok(Report {
                identical,
                verdict: Verdict::Differs {
                    name: n,
                    sha256_a: ha.to_hex(),
                    sha256_b: hb.to_hex(),
                    offset,
                },
            });
        }
        identical.push((n, ha.to_hex()));
    }
    Ok(Report {
        identical,
        verdict: Verdict::Reproducible,
    })
}

/// Every output file below `root`, `oci/` included, sorted; hidden files
/// (an older cairn's `.cairn-outputs.json` bookkeeping) are not outputs.
fn output_files(root: &Path) -> Result<Vec<String>> {
    fn walk(root: &Path, rel: &Path, v: &mut Vec<String>) -> Result<()> {
        let dir = root.join(rel);
        for e in fs::read_dir(&dir).with_context(|| format!("listing {}", dir.display()))? {
            let e = e?;
            let name = e.file_name().to_string_lossy().into_owned();
            if name.starts_with('.') {
                continue;
            }
            let r = rel.join(&name);
            if e.file_type()?.is_dir() {
                walk(root, &r, v)?;
            } else {
                v.push(r.to_string_lossy().into_owned());
            }
        }
        Ok(())
    }
    let mut v = Vec::new();
    walk(root, Path::new(""), &mut v)?;
    v.sort();
    Ok(v)
}

/// The offset of the first byte where `a` and `b` differ (or where the
/// shorter one ends).
fn first_difference(a: &Path, b: &Path) -> Result<u64> {
    let open = |p: &Path| fs::File::open(p).with_context(|| format!("opening {}", p.display()));
    let (mut fa, mut fb) = (open(a)?, open(b)?);
    let (mut ba, mut bb) = (vec![0u8; 1 << 16], vec![0u8; 1 << 16]);
    let mut off = 0u64;
    loop {
        let na = read_full(&mut fa, &mut ba)?;
        let nb = read_full(&mut fb, &mut bb)?;
        let n = na.min(nb);
        if let Some(i) = (0..n).find(|&i| ba[i] != bb[i]) {
            return Ok(off + i as u64);
        }
        if na != nb || n == 0 {
            return Ok(off + n as u64);
        }
        off += n as u64;
    }
}

/// Fills `buf` unless the file ends first: a short read is not an end.
fn read_full(f: &mut fs::File, buf: &mut [u8]) -> Result<usize> {
    let mut n = 0;
    while n < buf.len() {
        match f.read(&mut buf[n..])? {
            0 => break,
            k => n += k,
        }
    }
    Ok(n)
}

impl std::fmt::Display for Verdict {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Verdict::Reproducible => write!(f, "reproducible"),
            Verdict::FileSets { a, b } => write!(
                f,
                "the two builds produced different file sets: {a:?} vs {b:?}"
            ),
            Verdict::Differs {
                name,
                sha256_a,
                sha256_b,
                offset,
            } => write!(
                f,
                "NOT reproducible: {name} differs ({sha256_a} vs {sha256_b}), first difference at byte offset {offset}"
            ),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dir_with(files: &[(&str, &[u8])]) -> tempfile::TempDir {
        let d = tempfile::tempdir().unwrap();
        for (name, bytes) in files {
            let p = d.path().join(name);
            fs::create_dir_all(p.parent().unwrap()).unwrap();
            fs::write(p, bytes).unwrap();
        }
        d
    }

    #[test]
    fn identical_outputs_are_reproducible_and_bookkeeping_is_not_compared() {
        let a = dir_with(&[
            ("disk.raw", b"abc"),
            ("oci/index.json", b"{}"),
            (".cairn-outputs.json", b"1"),
        ]);
        let b = dir_with(&[
            ("disk.raw", b"abc"),
            ("oci/index.json", b"{}"),
            (".cairn-outputs.json", b"2"),
        ]);
        let r = compare(a.path(), b.path()).unwrap();
        assert_eq!(r.verdict, Verdict::Reproducible);
        let names: Vec<&str> = r.identical.iter().map(|(n, _)| n.as_str()).collect();
        assert_eq!(names, ["disk.raw", "oci/index.json"]);
    }

    #[test]
    fn a_differing_byte_is_named_with_its_offset() {
        let mut big = vec![7u8; (1 << 16) + 10];
        let a = dir_with(&[("a.bin", b"same"), ("b.bin", &big)]);
        big[(1 << 16) + 3] = 8;
        let b = dir_with(&[("a.bin", b"same"), ("b.bin", &big)]);
        let r = compare(a.path(), b.path()).unwrap();
        assert_eq!(r.identical.len(), 1);
        match &r.verdict {
            Verdict::Differs { name, offset, .. } => {
                assert_eq!((name.as_str(), *offset), ("b.bin", (1 << 16) + 3));
            }
            v => panic!("{v:?}"),
        }
        assert!(
            r.verdict.to_string().contains("b.bin differs"),
            "{}",
            r.verdict
        );
    }

    #[test]
    fn a_missing_or_shorter_file_is_a_difference() {
        let a = dir_with(&[("x", b"abc"), ("y", b"1")]);
        let b = dir_with(&[("x", b"ab")]);
        let r = compare(a.path(), b.path()).unwrap();
        assert!(
            matches!(r.verdict, Verdict::FileSets { .. }),
            "{:?}",
            r.verdict
        );
        fs::write(b.path().join("y"), b"1").unwrap();
        let r = compare(a.path(), b.path()).unwrap();
        assert!(
            matches!(&r.verdict, Verdict::Differs { name, offset: 2, .. } if name == "x"),
            "{:?}",
            r.verdict
        );
    }
}
