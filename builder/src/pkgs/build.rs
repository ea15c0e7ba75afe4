//! Running one build script in a fresh directory with a fixed environment.

use std::collections::BTreeMap;
use std::fs;
use std::io::{Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use super::error::{io_err, PkgError};

pub const FIXED_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// Everything the script sees, besides the files.
pub struct Invocation<'a> {
    pub package: &'a str,
    pub script: &'a Path,
    pub workdir: &'a Path,
    pub home: &'a Path,
    pub src: &'a Path,
    pub out: &'a Path,
    pub repo: &'a Path,
    pub deps: &'a BTreeMap<String, PathBuf>,
    pub jobs: u32,
    pub epoch: u64,
    pub extra_env: &'a BTreeMap<String, String>,
    pub log: &'a Path,
}

/// `CAIRN_DEP_<NAME>`: upper-cased, `-` as `_`.
pub fn dep_var(name: &str) -> String {
    format!("CAIRN_DEP_{}", name.to_ascii_uppercase().replace('-', "_"))
}

pub fn run_script(inv: &Invocation) -> Result<(), PkgError> {
    let log = fs::File::create(inv.log).map_err(io_err(inv.log))?;
    let log2 = log.try_clone().map_err(io_err(inv.log))?;
    let mut cmd = Command::new("/bin/bash");
    cmd.arg(inv.script)
        .current_dir(inv.workdir)
        .env_clear()
        .env("CAIRN_SRC", inv.src)
        .env("CAIRN_OUT", inv.out)
        .env("CAIRN_REPO", inv.repo)
        .env("CAIRN_JOBS", inv.jobs.to_string())
        .env("SOURCE_DATE_EPOCH", inv.epoch.to_string())
        .env("TZ", "UTC")
        .env("LC_ALL", "C")
        .env("PATH", FIXED_PATH)
        .env("HOME", inv.home)
        .stdin(Stdio::null())
        .stdout(Stdio::from(log))
        .stderr(Stdio::from(log2));
    // If cairn dies the script goes too instead of running on unobserved.
    // SAFETY: prctl is async-signal-safe and touches no memory of ours.
    unsafe {
        use std::os::unix::process::CommandExt;
        cmd.pre_exec(|| {
            if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    for (dep, out) in inv.deps {
        cmd.env(dep_var(dep), out);
    }
    for (k, v) in inv.extra_env {
        cmd.env(k, v);
    }
    let pb = indicatif::ProgressBar::new_spinner();
    pb.set_style(
        indicatif::ProgressStyle::with_template("{spinner} {msg} [{elapsed}]")
            .unwrap_or_else(|_| indicatif::ProgressStyle::default_spinner()),
    );
    pb.set_message(format!("building {}", inv.package));
    pb.enable_steady_tick(Duration::from_millis(200));
    let status = cmd.status().map_err(|e| PkgError::BuildFailed {
        package: inv.package.into(),
        status: format!("could not start /bin/bash: {e}"),
        log: inv.log.to_path_buf(),
        tail: String::new(),
    });
    pb.finish_and_clear();
    let status = status?;
    if status.success() {
        return Ok(());
    }
    Err(PkgError::BuildFailed {
        package: inv.package.into(),
        status: status.to_string(),
        log: inv.log.to_path_buf(),
        tail: tail(inv.log, 30),
    })
}

/// The last `lines` lines of a log (reads at most the last 64 KiB).
pub fn tail(path: &Path, lines: usize) -> String {
    let Ok(mut f) = fs::File::open(path) else {
        return String::new();
    };
    let len = f.metadata().map(|m| m.len()).unwrap_or(0);
    let _ = f.seek(SeekFrom::Start(len.saturating_sub(64 * 1024)));
    let mut buf = Vec::new();
    let _ = f.read_to_end(&mut buf);
    let text = String::from_utf8_lossy(&buf);
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

#[cfg(test)]
mod tests {
    #[test]
    fn dep_var_follows_the_design_contract() {
        assert_eq!(super::dep_var("rust-musl"), "CAIRN_DEP_RUST_MUSL");
        assert_eq!(super::dep_var("kernel"), "CAIRN_DEP_KERNEL");
    }
}
