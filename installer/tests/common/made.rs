//! Whole-disk contents made by the real tools (xorriso, mksquashfs,
//! sfdisk, ...), written over a test image: what the blank rule must find.
//! Each maker returns `Err` with the tool's output when the tool fails, so
//! a caller can say why this machine cannot make an image.

use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

pub fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

/// Runs a tool that must exist (ci/deps installs it); Err with its output
/// when it fails.
pub fn sh(tool: &str, args: &[&str]) -> Result<(), String> {
    let out = Command::new(tool)
        .args(args)
        .env("LVM_SUPPRESS_FD_WARNINGS", "1")
        .stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("{tool} is required (ci/deps installs it): {e}"));
    if out.status.success() {
        Ok(())
    } else {
        Err(format!(
            "{tool} {args:?}: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ))
    }
}

/// An MBR (DOS label) with one 10 MiB Linux partition.
pub fn sfdisk_dos(img: &Path) -> Result<(), String> {
    let mut child = Command::new("sfdisk")
        .args(["-q", s(img)])
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .spawn()
        .expect("sfdisk is required");
    child
        .stdin
        .take()
        .unwrap()
        .write_all(b"label: dos\n,10M,83\n")
        .unwrap();
    match child.wait().unwrap().success() {
        true => Ok(()),
        false => Err("sfdisk failed".into()),
    }
}

/// Copies a file made by a tool to the start of the image.
fn put_at_start(img: &Path, made: &Path) {
    let data = fs::read(made).unwrap();
    fs::OpenOptions::new()
        .write(true)
        .open(img)
        .unwrap()
        .write_all(&data)
        .unwrap();
}

/// A one-file source tree beside `img`, and where to make the image of it.
fn source_tree(img: &Path) -> (PathBuf, PathBuf) {
    let dir = img.with_extension("src");
    fs::create_dir_all(&dir).unwrap();
    fs::write(dir.join("f"), b"x").unwrap();
    (dir, img.with_extension("made"))
}

/// An ISO 9660 filesystem (xorriso) at the start of the image.
pub fn iso(img: &Path) -> Result<(), String> {
    let (src, out) = source_tree(img);
    sh(
        "xorriso",
        &["-as", "mkisofs", "-quiet", "-o", s(&out), s(&src)],
    )?;
    put_at_start(img, &out);
    Ok(())
}

/// A squashfs (mksquashfs) at the start of the image.
pub fn squashfs(img: &Path) -> Result<(), String> {
    let (src, out) = source_tree(img);
    sh("mksquashfs", &[s(&src), s(&out), "-quiet", "-noappend"])?;
    put_at_start(img, &out);
    Ok(())
}
