//! Running one build script in a fresh directory with a fixed environment.

use std::collections::BTreeMap;
use std::fs;
use std::io::{Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use super::error::{io_err, PkgError};

pub const FIXED_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// How often a long build says it is alive in a log (CI, a file): elapsed
/// time and the build's last log line. A terminal gets the spinner,
/// whose message follows the last line every [`TICK`].
const REPORT_EVERY: Duration = Duration::from_secs(30);
const TICK: Duration = Duration::from_secs(2);

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
    let to_log = !std::io::IsTerminal::is_terminal(&std::io::stderr());
    let mut next_report = REPORT_EVERY;
    let status = cmd
        .spawn()
        .and_then(|mut child| {
            wait_with_ticks(&mut child, TICK, |elapsed| {
                let last = last_line(inv.log);
                pb.set_message(format!("building {}: {last}", inv.package));
                if to_log && elapsed >= next_report {
                    next_report += REPORT_EVERY;
                    tracing::info!(
                        "building {}: {}m{:02}s, last log line: {last}",
                        inv.package,
                        elapsed.as_secs() / 60,
                        elapsed.as_secs() % 60
                    );
                }
            })
        })
        .map_err(|e| PkgError::BuildFailed {
            package: inv.package.into(),
            status: format!("could not run /bin/bash: {e}"),
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

/// Waits for `child`, calling `tick` with the time since the start every
/// `every` while it runs.
fn wait_with_ticks(
    child: &mut Child,
    every: Duration,
    mut tick: impl FnMut(Duration),
) -> std::io::Result<ExitStatus> {
    let start = Instant::now();
    let mut next = every;
    loop {
        if let Some(st) = child.try_wait()? {
            return Ok(st);
        }
        let elapsed = start.elapsed();
        if elapsed >= next {
            next += every;
            tick(elapsed);
        }
        std::thread::sleep(Duration::from_millis(100).min(every));
    }
}

/// The log's last non-empty line, cut to fit a status line.
fn last_line(log: &Path) -> String {
    let t = tail(log, 5);
    let line = t.lines().rev().find(|l| !l.trim().is_empty()).unwrap_or("");
    let line = line.trim();
    match line.char_indices().nth(100) {
        Some((i, _)) => format!("{}…", &line[..i]),
        None => line.to_string(),
    }
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
    use super::*;

    /// What a CI log sees of a long build: ticks while it runs, each able
    /// to read the build's latest line.
    #[test]
    fn a_running_build_ticks_with_its_last_log_line() {
        let d = tempfile::tempdir().unwrap();
        let log = d.path().join("log");
        let f = fs::File::create(&log).unwrap();
        let mut child = Command::new("/bin/sh")
            .args([
                "-c",
                "echo configuring; sleep 0.4; echo '  CC kernel/fork.o  '; sleep 0.4",
            ])
            .stdout(Stdio::from(f))
            .spawn()
            .unwrap();
        let mut seen = Vec::new();
        let st = wait_with_ticks(&mut child, Duration::from_millis(150), |e| {
            seen.push((e, last_line(&log)))
        })
        .unwrap();
        assert!(st.success());
        assert!(seen.len() >= 3, "{seen:?}");
        assert!(seen.windows(2).all(|w| w[0].0 < w[1].0), "{seen:?}");
        assert!(seen.iter().any(|(_, l)| l == "configuring"), "{seen:?}");
        assert_eq!(seen.last().unwrap().1, "CC kernel/fork.o");
        fs::write(&log, format!("{}\n\n", "x".repeat(300))).unwrap();
        assert_eq!(last_line(&log).chars().count(), 101);
    }

    #[test]
    fn dep_var_follows_the_design_contract() {
        assert_eq!(super::dep_var("rust-musl"), "CAIRN_DEP_RUST_MUSL");
        assert_eq!(super::dep_var("kernel"), "CAIRN_DEP_KERNEL");
    }
}
