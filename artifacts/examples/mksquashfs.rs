//! mksquashfs SRC_DIR OUT.img [--level N] [--epoch N] [--threads N] [--cache DIR]
//!
//! Builds a root-owned squashfs image of SRC_DIR with cairn's writer (the
//! benchmark counterpart of `mksquashfs -all-root`). The epoch defaults to
//! $SOURCE_DATE_EPOCH, else 0. `--cache DIR` keeps compressed blocks in DIR
//! so the next build only compresses blocks that changed.

use std::path::PathBuf;
use std::process::ExitCode;

use artifacts::squashfs::{write_squashfs_file, BlockCache, DirCache, SquashfsOptions};
use artifacts::{Normalize, Tree};

fn main() -> ExitCode {
    match run() {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("mksquashfs: {e}");
            ExitCode::FAILURE
        }
    }
}

fn run() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let mut pos: Vec<String> = Vec::new();
    let mut level = artifacts::squashfs::DEFAULT_LEVEL;
    let mut threads = 0usize;
    let mut cache: Option<DirCache> = None;
    let mut epoch: u64 = match std::env::var("SOURCE_DATE_EPOCH") {
        Ok(v) => v
            .parse()
            .map_err(|_| format!("SOURCE_DATE_EPOCH={v:?} is not a number"))?,
        Err(_) => 0,
    };
    while let Some(a) = args.next() {
        let mut value = |name: &str| {
            args.next()
                .ok_or_else(|| format!("{name} needs a value"))
                .and_then(|v| {
                    v.parse::<u64>()
                        .map_err(|_| format!("{name} {v:?} is not a number"))
                })
        };
        if a == "--cache" {
            cache = Some(DirCache::new(
                args.next().ok_or("--cache needs a directory")?,
            ));
            continue;
        }
        match a.as_str() {
            "--level" => level = value("--level")? as i32,
            "--epoch" => epoch = value("--epoch")?,
            "--threads" => threads = value("--threads")? as usize,
            _ if a.starts_with("--") => return Err(format!("unknown option {a}").into()),
            _ => pos.push(a),
        }
    }
    let [src, out] = <[String; 2]>::try_from(pos).map_err(|_| {
        "usage: mksquashfs SRC_DIR OUT.img [--level N] [--epoch N] [--threads N] [--cache DIR]"
    })?;
    let tree = Tree::read(&PathBuf::from(src), Normalize::root_owned(epoch))?;
    let mut opts = SquashfsOptions::new(epoch);
    opts.level = level;
    opts.threads = threads;
    opts.cache = cache.as_ref().map(|c| c as &dyn BlockCache);
    let stats = write_squashfs_file(&tree, &PathBuf::from(out), &opts)?;
    eprintln!("{stats:?}");
    Ok(())
}
