//! Test support shared by the artifacts, signing, installer and e2e tests:
//! one QEMU/OVMF harness ([`qemu`]), one set of checks by the independent
//! tools ([`check`]: `sgdisk -v`, `fsck.fat -n`), the boot fixtures the
//! loader tests build ([`fixtures`]), a real registry ([`registry`]) and the
//! small helpers every suite needs.

pub mod check;
pub mod fixtures;
pub mod qemu;
pub mod registry;

use std::fs;
use std::io::{Read, Seek, SeekFrom, Write};
use std::os::unix::io::AsRawFd;
use std::path::Path;
use std::process::{Command, Output, Stdio};

use anyhow::{bail, Context, Result};

/// Runs a command and returns its output whatever its exit status; only a
/// command that cannot start (a tool not installed) is an error.
pub fn output(cmd: &mut Command) -> Result<Output> {
    cmd.output()
        .with_context(|| format!("running {cmd:?} (is it installed? ci/deps installs it)"))
}

/// Runs a command and returns its stdout, failing with its stderr.
pub fn run_bytes(cmd: &mut Command) -> Result<Vec<u8>> {
    let out = output(cmd)?;
    if !out.status.success() {
        bail!(
            "{cmd:?} failed ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(out.stdout)
}

/// [`run_bytes`] with stdout as text.
pub fn run(cmd: &mut Command) -> Result<String> {
    Ok(String::from_utf8_lossy(&run_bytes(cmd)?).into_owned())
}

/// Runs a command with `input` on its stdin; it must succeed.
pub fn run_with_stdin(cmd: &mut Command, input: &[u8]) -> Result<()> {
    let mut child = cmd
        .stdin(Stdio::piped())
        .spawn()
        .with_context(|| format!("starting {cmd:?}"))?;
    child
        .stdin
        .take()
        .context("piped stdin")?
        .write_all(input)
        .with_context(|| format!("writing to {cmd:?}"))?;
    let st = child.wait()?;
    if !st.success() {
        bail!("{cmd:?} failed ({st})");
    }
    Ok(())
}

/// Fails clearly when a tool a test needs is missing (CI installs them),
/// or the OVMF firmware is.
pub fn require_tools(tools: &[&str]) -> Result<()> {
    for t in tools {
        let ok = Command::new("sh")
            .arg("-c")
            .arg(format!("command -v {t}"))
            .stdout(Stdio::null())
            .status()
            .map(|s| s.success())
            .unwrap_or(false);
        if !ok {
            bail!("{t} is not installed: run ci/deps");
        }
    }
    for f in [qemu::OVMF_CODE, qemu::OVMF_VARS] {
        if !Path::new(f).exists() {
            bail!("{f} is missing: install the ovmf package (ci/deps)");
        }
    }
    Ok(())
}

/// The sha256 of a whole file (hex) by `sha256sum`: the independent tool,
/// and fast where a debug-build hasher over a disk image is not.
pub fn sha256_file(path: &Path) -> Result<String> {
    let out = run(Command::new("sha256sum").arg(path))?;
    out.split_whitespace()
        .next()
        .filter(|h| h.len() == 64)
        .map(str::to_string)
        .with_context(|| format!("sha256sum {} printed no digest", path.display()))
}

/// Copies `from` to `to` keeping holes (SEEK_DATA/SEEK_HOLE), so copying a
/// mostly empty disk image costs what it holds.
pub fn sparse_copy(from: &Path, to: &Path) -> Result<()> {
    let ctx = || format!("sparse copy {} -> {}", from.display(), to.display());
    let mut src = fs::File::open(from).with_context(ctx)?;
    let len = src.metadata().with_context(ctx)?.len();
    let mut dst = fs::File::create(to).with_context(ctx)?;
    dst.set_len(len).with_context(ctx)?;
    let fd = src.as_raw_fd();
    let mut pos: i64 = 0;
    let mut buf = vec![0u8; 1 << 20];
    while (pos as u64) < len {
        // SAFETY: lseek on a descriptor `src` owns; no memory is passed.
        let data = unsafe { libc::lseek(fd, pos, libc::SEEK_DATA) };
        if data < 0 {
            break; // ENXIO: nothing but a hole to the end
        }
        // SAFETY: as above.
        let hole = unsafe { libc::lseek(fd, data, libc::SEEK_HOLE) };
        let end = if hole < 0 { len as i64 } else { hole };
        src.seek(SeekFrom::Start(data as u64)).with_context(ctx)?;
        dst.seek(SeekFrom::Start(data as u64)).with_context(ctx)?;
        let mut left = (end - data) as usize;
        while left > 0 {
            let n = left.min(buf.len());
            src.read_exact(&mut buf[..n]).with_context(ctx)?;
            dst.write_all(&buf[..n]).with_context(ctx)?;
            left -= n;
        }
        pos = end;
    }
    Ok(())
}

/// The last `n` lines of `text`, for failure messages.
pub fn tail(text: &str, n: usize) -> String {
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sparse_copy_keeps_data_and_holes() {
        let d = tempfile::tempdir().unwrap();
        let (a, b) = (d.path().join("a"), d.path().join("b"));
        let f = fs::File::create(&a).unwrap();
        f.set_len(8 << 20).unwrap();
        use std::os::unix::fs::FileExt;
        f.write_all_at(b"start", 0).unwrap();
        f.write_all_at(b"middle", 5 << 20).unwrap();
        drop(f);
        sparse_copy(&a, &b).unwrap();
        assert_eq!(fs::read(&a).unwrap(), fs::read(&b).unwrap());
        assert_eq!(sha256_file(&a).unwrap(), sha256_file(&b).unwrap());
    }

    #[test]
    fn tail_keeps_the_last_lines() {
        assert_eq!(tail("a\nb\nc\n", 2), "b\nc");
        assert_eq!(tail("a", 5), "a");
    }
}
