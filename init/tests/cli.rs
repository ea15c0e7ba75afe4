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
