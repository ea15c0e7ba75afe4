//! Applies contract::sysctl: the defaults before anything reads a disk, the
//! machine config's overrides before network and services, then one console
//! line with what the kernel reports back (the e2e test reads it).
//!
//! A name this kernel does not have (its Kconfig option is off) is reported
//! once and is not an error: the table is shared by every kernel cairn may
//! ship. Any other failed write is logged and the boot goes on; the read-back
//! line shows what is in effect.

use std::collections::BTreeSet;
use std::fs::{self, OpenOptions};
use std::io::{ErrorKind, Write};
use std::path::{Path, PathBuf};

pub const PROC_SYS: &str = "/proc/sys";

/// IPv6 (unlike IPv4) does not copy `conf.default.X` to interfaces that
/// exist already, and its redirect check reads only the interface's own
/// value; every built-in NIC exists before init runs, so a `default` entry
/// is also written to each of them.
const IPV6_DEFAULT: &str = "net.ipv6.conf.default.";

pub struct Sysctls {
    root: PathBuf,
    absent: BTreeSet<String>,
}

impl Sysctls {
    /// `root` is /proc/sys outside tests.
    pub fn new(root: &Path) -> Self {
        Sysctls {
            root: root.to_path_buf(),
            absent: BTreeSet::new(),
        }
    }

    fn path(&self, name: &str) -> PathBuf {
        self.root.join(contract::sysctl::proc_path(name))
    }

    /// Writes each setting in order; returns the console messages (an
    /// absent name once per boot, each failed write).
    pub fn apply<'a>(
        &mut self,
        settings: impl IntoIterator<Item = (&'a str, &'a str)>,
    ) -> Vec<String> {
        let mut msgs = Vec::new();
        for (name, value) in settings {
            match write(&self.path(name), value) {
                Ok(()) => {}
                Err(e) if e.kind() == ErrorKind::NotFound => {
                    if self.absent.insert(name.to_string()) {
                        msgs.push(format!("sysctl {name} not in this kernel"));
                    }
                    continue;
                }
                Err(e) => msgs.push(format!("sysctl {name}={value}: {e}")),
            }
            if let Some(key) = name.strip_prefix(IPV6_DEFAULT) {
                for iface in interfaces(&self.root.join("net/ipv6/conf")) {
                    let p = self.root.join("net/ipv6/conf").join(&iface).join(key);
                    if let Err(e) = write(&p, value) {
                        if e.kind() != ErrorKind::NotFound {
                            msgs.push(format!("sysctl net.ipv6.conf.{iface}.{key}={value}: {e}"));
                        }
                    }
                }
            }
        }
        msgs
    }

    /// `name=value` for each name the kernel has, as it reads back; a value
    /// of several numbers (the kernel separates them with tabs) is written
    /// with commas, so the line splits on spaces.
    pub fn read_back<'a>(&self, names: impl IntoIterator<Item = &'a str>) -> String {
        let mut out = Vec::new();
        for name in names {
            if self.absent.contains(name) {
                continue;
            }
            match fs::read_to_string(self.path(name)) {
                Ok(v) => out.push(format!(
                    "{name}={}",
                    v.split_whitespace().collect::<Vec<_>>().join(",")
                )),
                Err(e) if e.kind() == ErrorKind::NotFound => {}
                Err(_) => out.push(format!("{name}=?")),
            }
        }
        out.join(" ")
    }
}

/// No O_CREAT or O_TRUNC: /proc/sys files exist or the kernel lacks them.
fn write(path: &Path, value: &str) -> std::io::Result<()> {
    OpenOptions::new()
        .write(true)
        .open(path)?
        .write_all(format!("{value}\n").as_bytes())
}

/// Interface directories under `net/ipv{4,6}/conf`, without `all` and
/// `default`, sorted.
fn interfaces(conf: &Path) -> Vec<String> {
    let mut v: Vec<String> = fs::read_dir(conf)
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| e.file_name().into_string().ok())
        .filter(|n| n != "all" && n != "default")
        .collect();
    v.sort();
    v
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A fake /proc/sys holding `names` as empty files.
    fn fake(names: &[&str]) -> tempfile::TempDir {
        let d = tempfile::tempdir().unwrap();
        for n in names {
            let p = d.path().join(contract::sysctl::proc_path(n));
            fs::create_dir_all(p.parent().unwrap()).unwrap();
            fs::write(p, "").unwrap();
        }
        d
    }

    #[test]
    fn writes_reports_absent_once_and_reads_back_in_order() {
        let d = fake(&[
            "kernel.kptr_restrict",
            "kernel.yama.ptrace_scope",
            "net.ipv4.ip_local_port_range",
            "net.ipv6.conf.default.accept_redirects",
            "net.ipv6.conf.all.accept_redirects",
            "net.ipv6.conf.eth0.accept_redirects",
            "net.ipv6.conf.lo.accept_redirects",
        ]);
        let mut s = Sysctls::new(d.path());
        let msgs = s.apply([
            ("kernel.kptr_restrict", "2"),
            ("kernel.unprivileged_bpf_disabled", "1"),
            ("kernel.yama.ptrace_scope", "2"),
            ("net.ipv6.conf.all.accept_redirects", "0"),
            ("net.ipv6.conf.default.accept_redirects", "0"),
        ]);
        assert_eq!(
            msgs,
            ["sysctl kernel.unprivileged_bpf_disabled not in this kernel"]
        );
        // the overrides: an absent name again is not reported twice
        let msgs = s.apply([
            ("kernel.yama.ptrace_scope", "3"),
            ("kernel.unprivileged_bpf_disabled", "1"),
            ("net.ipv4.ip_local_port_range", "1024 65000"),
        ]);
        assert!(msgs.is_empty(), "{msgs:?}");
        let read = |n: &str| fs::read_to_string(d.path().join(contract::sysctl::proc_path(n)));
        assert_eq!(read("kernel.kptr_restrict").unwrap(), "2\n");
        assert_eq!(read("net.ipv6.conf.eth0.accept_redirects").unwrap(), "0\n");
        assert_eq!(read("net.ipv6.conf.lo.accept_redirects").unwrap(), "0\n");
        assert_eq!(
            s.read_back([
                "kernel.kptr_restrict",
                "kernel.unprivileged_bpf_disabled",
                "kernel.yama.ptrace_scope",
                "net.ipv4.ip_local_port_range",
            ]),
            "kernel.kptr_restrict=2 kernel.yama.ptrace_scope=3 net.ipv4.ip_local_port_range=1024,65000"
        );
        // the kernel's own multi-number format (tabs)
        fs::write(
            d.path().join("net/ipv4/ip_local_port_range"),
            "32768\t60999\n",
        )
        .unwrap();
        assert_eq!(
            s.read_back(["net.ipv4.ip_local_port_range"]),
            "net.ipv4.ip_local_port_range=32768,60999"
        );
    }

    #[test]
    fn a_failed_write_is_logged_and_the_boot_goes_on() {
        let d = fake(&["kernel.dmesg_restrict"]);
        // a directory where the file should be: EISDIR on open for writing
        fs::create_dir_all(d.path().join("kernel/kptr_restrict")).unwrap();
        let mut s = Sysctls::new(d.path());
        let msgs = s.apply([
            ("kernel.kptr_restrict", "2"),
            ("kernel.dmesg_restrict", "1"),
        ]);
        assert_eq!(msgs.len(), 1, "{msgs:?}");
        assert!(
            msgs[0].starts_with("sysctl kernel.kptr_restrict=2: "),
            "{msgs:?}"
        );
        assert_eq!(
            s.read_back(["kernel.kptr_restrict", "kernel.dmesg_restrict"]),
            "kernel.kptr_restrict=? kernel.dmesg_restrict=1"
        );
    }

    #[test]
    fn the_whole_table_applies_to_a_kernel_with_part_of_it() {
        let present: Vec<&str> = contract::sysctl::TABLE
            .iter()
            .map(|s| s.name)
            .filter(|n| !n.contains("bpf") && *n != "kernel.sysrq")
            .collect();
        let d = fake(&present);
        let mut s = Sysctls::new(d.path());
        let msgs = s.apply(contract::sysctl::defaults());
        assert_eq!(msgs.len(), 3, "{msgs:?}");
        let effective = contract::sysctl::effective(&Default::default());
        let line = s.read_back(effective.iter().map(|(n, _)| *n));
        let want: Vec<String> = effective
            .iter()
            .filter(|(n, _)| present.contains(n))
            .map(|(n, v)| format!("{n}={v}"))
            .collect();
        assert_eq!(line, want.join(" "));
        assert!(
            line.starts_with("kernel.kptr_restrict=2 kernel.dmesg_restrict=1 "),
            "{line}"
        );
    }
}
