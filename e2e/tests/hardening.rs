//! Issue 16: hardened by default, as the booted node itself reports it.
//! One cold boot of `disk.raw`; everything asserted comes from the kernel
//! at run time (what init reads back from /proc and securityfs, what a
//! health check sees of its own process), not from the profile.
//! The Secure Boot scenario (secure_boot.rs) asserts `lockdown
//! confidentiality` with the same reader.

use std::collections::BTreeMap;

use anyhow::{ensure, Context, Result};
use e2e::*;

/// The defaults every node must end up with (contract/src/sysctl.rs).
const SYSCTLS: &[(&str, &str)] = &[
    ("kernel.kptr_restrict", "2"),
    ("kernel.dmesg_restrict", "1"),
    ("dev.tty.ldisc_autoload", "0"),
    ("kernel.yama.ptrace_scope", "2"),
    ("kernel.perf_event_paranoid", "3"),
    ("fs.protected_symlinks", "1"),
    ("fs.protected_hardlinks", "1"),
    ("fs.protected_fifos", "2"),
    ("fs.protected_regular", "2"),
    ("fs.suid_dumpable", "0"),
    ("kernel.randomize_va_space", "2"),
    ("vm.mmap_rnd_bits", "32"),
    ("net.ipv4.conf.all.accept_redirects", "0"),
    ("net.ipv4.conf.all.send_redirects", "0"),
    ("net.ipv4.conf.all.accept_source_route", "0"),
    ("net.ipv4.tcp_syncookies", "1"),
    ("net.ipv6.conf.all.accept_redirects", "0"),
];

/// Sysctls whose Kconfig option is off in the shipped 6.1 kernel, so init
/// reports them absent. Any other name reported absent is a failure: the
/// kernel lost something the table relies on.
const ABSENT_OK: &[&str] = &[
    "kernel.unprivileged_bpf_disabled",
    "net.core.bpf_jit_harden",
    "kernel.kexec_load_disabled",
    "vm.unprivileged_userfaultfd",
    "kernel.sysrq",
];

/// KSPP boot parameters the default profile must carry into the booted kernel.
const CMDLINE: &[&str] = &[
    "init_on_alloc=1",
    "init_on_free=1",
    "slab_nomerge",
    "page_alloc.shuffle=1",
    "randomize_kstack_offset=on",
    "vsyscall=none",
    "pti=on",
    "lockdown=integrity",
];

fn cairn_lines(console: &str) -> Vec<&str> {
    console
        .lines()
        .filter_map(|l| {
            l.find("cairn: ")
                .map(|i| l[i + "cairn: ".len()..].trim_end())
        })
        .collect()
}

fn health_lines<'a>(console: &'a str, check: &str) -> Vec<&'a str> {
    let tag = format!("health/{check}: ");
    console
        .lines()
        .filter_map(|l| l.find(&tag).map(|i| l[i + tag.len()..].trim_end()))
        .collect()
}

#[test]
fn default_node_reports_its_sysctls_lockdown_and_a_confined_health_check() -> Result<()> {
    require_tools(&["qemu-system-x86_64"])?;
    let images = images_dir()?;
    let work = tempfile::tempdir()?;
    let disk = work.path().join("disk.raw");
    sparse_copy(&images.join("disk.raw"), &disk)?;
    let mut m = Machine::new("hardening", work.path(), None)?;
    m.disks.push(Disk::virtio(&disk));
    let mut b = m.boot()?;
    b.expect("cairn: boot ok slot=A version=1.0.0", BOOT_TIMEOUT)?;
    print_timings("hardening: default image", &b, "cairn: boot ok");
    let console = b.console();
    b.kill()?;
    let cairn = cairn_lines(&console);
    let show = || format!("--- console ---\n{console}");

    // The command line the kernel booted with (signed in the UKI).
    let cmdline = cairn
        .iter()
        .find_map(|l| l.strip_prefix("cmdline "))
        .with_context(|| format!("no `cairn: cmdline` line\n{}", show()))?;
    let params: Vec<&str> = cmdline.split_whitespace().collect();
    for p in CMDLINE {
        ensure!(params.contains(p), "booted cmdline lacks {p}: {cmdline}");
    }

    ensure!(
        cairn.contains(&"lockdown integrity"),
        "expected `cairn: lockdown integrity`\n{}",
        show()
    );
    let lsm = cairn
        .iter()
        .find_map(|l| l.strip_prefix("lsm "))
        .with_context(|| format!("no `cairn: lsm` line\n{}", show()))?;
    for want in ["lockdown", "yama"] {
        ensure!(
            lsm.split(',').any(|x| x == want),
            "LSM {want} not active: {lsm}"
        );
    }

    // Sysctls: every failed write is a failure; absent names only the known ones.
    for l in &cairn {
        if let Some(rest) = l.strip_prefix("sysctl ") {
            if let Some(name) = rest.strip_suffix(" not in this kernel") {
                ensure!(
                    ABSENT_OK.contains(&name),
                    "sysctl {name} is missing from the kernel, and the fragment should have it"
                );
            } else if rest.contains(": ") {
                anyhow::bail!("a sysctl write failed: {l}");
            }
        }
    }
    let effective: BTreeMap<&str, &str> = cairn
        .iter()
        .filter_map(|l| l.strip_prefix("sysctl "))
        .filter(|l| !l.ends_with(" not in this kernel"))
        .flat_map(|l| l.split_whitespace())
        .filter_map(|kv| kv.split_once('='))
        .collect();
    for (k, v) in SYSCTLS {
        ensure!(
            effective.get(k) == Some(v),
            "sysctl {k}: expected {v}, the node reports {:?}\n{}",
            effective.get(k),
            show()
        );
    }

    // A health check as the node runs it: nobody, no capabilities, no
    // new privileges, its own mount namespace with a read-only root, and
    // the writable mounts without setuid, devices or executables.
    let report = health_lines(&console, "least-privilege");
    let field = |key: &str| -> Result<String> {
        report
            .iter()
            .find_map(|l| l.strip_prefix(key))
            .map(|v| v.trim().to_string())
            .with_context(|| format!("health/least-privilege printed no {key:?}\n{}", show()))
    };
    ensure!(
        field("self-report uid=")? == "65534 gid=65534",
        "uid/gid: {report:?}"
    );
    for cap in ["CapInh:", "CapPrm:", "CapEff:", "CapBnd:", "CapAmb:"] {
        ensure!(
            field(cap)? == "0000000000000000",
            "{cap} not empty: {report:?}"
        );
    }
    ensure!(
        field("NoNewPrivs:")? == "1",
        "no_new_privs not set: {report:?}"
    );
    ensure!(
        field("self-report root=")? == "ro",
        "root writable: {report:?}"
    );
    let init_ns = cairn
        .iter()
        .find_map(|l| l.strip_prefix("mount namespace "))
        .with_context(|| format!("init printed no mount namespace\n{}", show()))?;
    let child_ns = field("self-report mountns=")?;
    ensure!(
        child_ns != init_ns,
        "the health check shares init's mount namespace {init_ns}"
    );
    for dir in ["/system/state", "/var"] {
        let opts = field(&format!("self-report mount {dir} "))?;
        for flag in ["nosuid", "nodev", "noexec"] {
            ensure!(
                opts.split(',').any(|o| o == flag),
                "{dir} is mounted {opts} in the service's namespace: no {flag}"
            );
        }
    }
    Ok(())
}
