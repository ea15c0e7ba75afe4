//! The binary's behaviour outside PID 1.

use std::process::Command;

#[test]
fn version_flag() {
    let o = Command::new(env!("CARGO_BIN_EXE_init"))
        .arg("--version")
        .output()
        .unwrap();
    assert!(o.status.success());
    assert_eq!(
        String::from_utf8(o.stdout).unwrap(),
        format!("cairn-init {}\n", env!("CARGO_PKG_VERSION"))
    );
}

#[test]
fn refuses_to_run_unless_pid_1() {
    let o = Command::new(env!("CARGO_BIN_EXE_init")).output().unwrap();
    assert_eq!(o.status.code(), Some(1));
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        err.contains("cairn: boot failed: ") && err.contains("must run as PID 1"),
        "{err}"
    );
}

#[test]
fn self_report_prints_the_privileges_it_runs_with() {
    let o = Command::new(env!("CARGO_BIN_EXE_init"))
        .arg("--self-report")
        .output()
        .unwrap();
    assert!(o.status.success());
    let out = String::from_utf8(o.stdout).unwrap();
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(lines.len(), 14, "{out}");
    // SAFETY: no arguments.
    let (uid, gid) = unsafe { (libc::getuid(), libc::getgid()) };
    assert_eq!(lines[0], format!("self-report uid={uid} gid={gid}"));
    let keys = [
        "CapInh:",
        "CapPrm:",
        "CapEff:",
        "CapBnd:",
        "CapAmb:",
        "NoNewPrivs:",
        "Seccomp:",
    ];
    for (l, k) in lines[1..8].iter().zip(keys) {
        assert!(l.starts_with(k), "{l} ({k})");
    }
    assert!(
        lines[8] == "self-report root=ro" || lines[8] == "self-report root=rw",
        "{}",
        lines[8]
    );
    assert!(
        lines[9].starts_with("self-report mountns=mnt:["),
        "{}",
        lines[9]
    );
    // Run by the test harness, not by init: the caller's environment shows.
    assert!(
        lines[10].starts_with("self-report env=") && lines[10].contains("PATH"),
        "{}",
        lines[10]
    );
    for (l, dir) in lines[11..].iter().zip(["/system/state", "/var", "/run"]) {
        assert!(l.starts_with(&format!("self-report mount {dir} ")), "{l}");
    }
}
