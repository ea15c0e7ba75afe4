//! The kernel sysctls init sets before any service starts, and the subset a
//! machine config (`[sysctl]`) may change. One table: init writes it, the
//! machine config validator checks overrides against it, docs/design.md
//! describes it.
//!
//! The defaults are the hardening floor of the image. The machine config is
//! not signed (it lives on STATE), so it may only change what weakens no
//! kernel protection: network role (forwarding, reverse-path filtering),
//! capacity tunables, and two hardening knobs only upward (or, for perf,
//! down to user-space-only profiling). Everything else is locked, including
//! every name not in the table (`kernel.core_pattern`, `kernel.modprobe`
//! and the like would undo what the image enforces).
//!
//! Checked against the kernel this repository builds (Debian 6.1 with
//! pkgs/kernel/fragment.config): entries whose option is off there are kept
//! so a later kernel that has the option gets the setting; init reports
//! them as absent (`cairn: sysctl NAME not in this kernel`).

use std::collections::BTreeMap;

/// What a machine config may do with one entry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Change {
    /// Not overridable.
    Locked,
    /// One integer in `min..=max`.
    Between(i64, i64),
    /// Exactly this many integers (the kernel checks their ranges).
    Integers(usize),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Sysctl {
    /// Dotted name, as `sysctl(8)` writes it.
    pub name: &'static str,
    /// What init writes at every boot; `None`: left at the kernel's value
    /// unless the machine config sets it.
    pub default: Option<&'static str>,
    pub change: Change,
    pub why: &'static str,
}

const fn set(name: &'static str, value: &'static str, why: &'static str) -> Sysctl {
    Sysctl {
        name,
        default: Some(value),
        change: Change::Locked,
        why,
    }
}

const fn tunable(name: &'static str, change: Change, why: &'static str) -> Sysctl {
    Sysctl {
        name,
        default: None,
        change,
        why,
    }
}

/// Any non-negative `int` sysctl: the kernel enforces its own limit.
const INT: Change = Change::Between(0, i32::MAX as i64);

use Change::{Between, Integers};

/// In the order init writes them and prints them.
pub const TABLE: &[Sysctl] = &[
    // --- kernel information leaks ---
    set(
        "kernel.kptr_restrict",
        "2",
        "kernel pointers print as 0 even to root (no KASLR leak through /proc or logs)",
    ),
    set(
        "kernel.dmesg_restrict",
        "1",
        "the kernel log needs CAP_SYSLOG (it holds addresses and driver state)",
    ),
    // --- attack surface (off in this kernel's Kconfig; kept for a kernel that has them) ---
    set(
        "kernel.unprivileged_bpf_disabled",
        "1",
        "no bpf(2) without CAP_BPF (absent: BPF_SYSCALL is off)",
    ),
    set(
        "net.core.bpf_jit_harden",
        "2",
        "JIT constant blinding for every user (absent: BPF_JIT is off)",
    ),
    set(
        "kernel.kexec_load_disabled",
        "1",
        "no kexec into another kernel, even as root (absent: KEXEC is off)",
    ),
    set(
        "vm.unprivileged_userfaultfd",
        "0",
        "userfaultfd stalls kernel copies in exploits (absent: USERFAULTFD is off)",
    ),
    set(
        "kernel.sysrq",
        "0",
        "no SysRq from the console (absent: MAGIC_SYSRQ is off)",
    ),
    set(
        "dev.tty.ldisc_autoload",
        "0",
        "no line discipline loaded because an unprivileged user asked",
    ),
    // --- process isolation ---
    Sysctl {
        // 3 (no ptrace at all) cannot be lowered again until reboot, and
        // 2 already limits ptrace to CAP_SYS_PTRACE, which services lack.
        change: Between(2, 3),
        ..set(
            "kernel.yama.ptrace_scope",
            "2",
            "ptrace only with CAP_SYS_PTRACE (a compromised service cannot read another's memory)",
        )
    },
    Sysctl {
        // Debian's SECURITY_PERF_EVENTS_RESTRICT patch makes 3 mean "no
        // perf_event_open without CAP_PERFMON"; 2 allows user-space-only
        // profiling, for a machine that is being profiled.
        change: Between(2, 3),
        ..set(
            "kernel.perf_event_paranoid",
            "3",
            "no perf events for unprivileged users (perf has been a steady source of kernel bugs)",
        )
    },
    set(
        "fs.protected_symlinks",
        "1",
        "no following another user's symlink in a sticky world-writable directory",
    ),
    set(
        "fs.protected_hardlinks",
        "1",
        "no hard links to files the user cannot read and write",
    ),
    set(
        "fs.protected_fifos",
        "2",
        "no O_CREAT opening of another user's FIFO in sticky directories (group-writable too)",
    ),
    set(
        "fs.protected_regular",
        "2",
        "the same for regular files (spoofed temporary files)",
    ),
    set(
        "fs.suid_dumpable",
        "0",
        "a setuid or credential-changing process never dumps core",
    ),
    // --- address space layout ---
    set(
        "kernel.randomize_va_space",
        "2",
        "full ASLR: stack, mmap, vDSO and heap (brk)",
    ),
    set(
        "vm.mmap_rnd_bits",
        "32",
        "the x86_64 maximum of mmap randomisation (Kconfig's value, enforced)",
    ),
    // --- network: a host, not a router ---
    // rp_filter is left at the kernel's 0 unless machine config sets it:
    // init's DHCP client takes its offers on a UDP socket before the link
    // has an address, and with any reverse-path filter on, the kernel drops
    // them (there is no route back to the server yet). A node with a
    // static address may set 1 (strict) or 2 (loose) in [sysctl]; a DHCP
    // client on raw sockets would let this be a default (issue 16 residual).
    tunable(
        "net.ipv4.conf.all.rp_filter",
        Between(0, 2),
        "reverse-path filter: 1 strict (drops spoofed sources), 2 loose; not set by default (DHCP)",
    ),
    tunable(
        "net.ipv4.conf.default.rp_filter",
        Between(0, 2),
        "the same for interfaces created later",
    ),
    set(
        "net.ipv4.conf.all.accept_redirects",
        "0",
        "no ICMP redirect may rewrite the routing table",
    ),
    set(
        "net.ipv4.conf.default.accept_redirects",
        "0",
        "the same for each interface",
    ),
    set(
        "net.ipv4.conf.all.send_redirects",
        "0",
        "a host does not tell others how to route",
    ),
    set(
        "net.ipv4.conf.default.send_redirects",
        "0",
        "the same for each interface",
    ),
    set(
        "net.ipv4.conf.all.accept_source_route",
        "0",
        "no sender-chosen routes",
    ),
    set(
        "net.ipv4.conf.default.accept_source_route",
        "0",
        "the same for each interface",
    ),
    set(
        "net.ipv4.tcp_syncookies",
        "1",
        "SYN floods do not exhaust the listen queue",
    ),
    set(
        "net.ipv4.icmp_echo_ignore_broadcasts",
        "1",
        "no smurf amplification",
    ),
    set(
        "net.ipv4.tcp_rfc1337",
        "1",
        "TIME-WAIT sockets drop RSTs instead of dying early (RFC 1337 assassination)",
    ),
    set(
        "net.ipv6.conf.all.accept_redirects",
        "0",
        "no ICMPv6 redirect may rewrite the routing table",
    ),
    set(
        "net.ipv6.conf.default.accept_redirects",
        "0",
        "the same for each interface (init also writes every existing one: IPv6 does not copy it)",
    ),
    set(
        "net.ipv6.conf.all.accept_source_route",
        "0",
        "no sender-chosen routes (type 0 headers)",
    ),
    set(
        "net.ipv6.conf.default.accept_source_route",
        "0",
        "the same for each interface",
    ),
    // --- machine config only: network role ---
    tunable(
        "net.ipv4.ip_forward",
        Between(0, 1),
        "route between interfaces (container hosts, routers)",
    ),
    tunable(
        "net.ipv4.conf.all.forwarding",
        Between(0, 1),
        "the same, for all interfaces",
    ),
    tunable(
        "net.ipv4.conf.default.forwarding",
        Between(0, 1),
        "the same, for each new interface",
    ),
    tunable(
        "net.ipv6.conf.all.forwarding",
        Between(0, 1),
        "IPv6 routing between interfaces",
    ),
    tunable(
        "net.ipv6.conf.default.forwarding",
        Between(0, 1),
        "the same, for each new interface",
    ),
    // --- machine config only: capacity ---
    tunable("net.core.somaxconn", INT, "listen backlog limit"),
    tunable("net.core.netdev_max_backlog", INT, "receive queue per CPU"),
    tunable(
        "net.core.rmem_default",
        INT,
        "default socket receive buffer",
    ),
    tunable("net.core.rmem_max", INT, "largest socket receive buffer"),
    tunable("net.core.wmem_default", INT, "default socket send buffer"),
    tunable("net.core.wmem_max", INT, "largest socket send buffer"),
    tunable(
        "net.ipv4.ip_local_port_range",
        Integers(2),
        "ephemeral ports: first last",
    ),
    tunable(
        "net.ipv4.tcp_rmem",
        Integers(3),
        "TCP receive buffer: min default max",
    ),
    tunable(
        "net.ipv4.tcp_wmem",
        Integers(3),
        "TCP send buffer: min default max",
    ),
    tunable(
        "net.ipv4.tcp_max_syn_backlog",
        INT,
        "half-open connections kept",
    ),
    tunable("net.ipv4.tcp_fin_timeout", INT, "seconds in FIN-WAIT-2"),
    tunable(
        "net.ipv4.tcp_keepalive_time",
        INT,
        "idle seconds before keepalives",
    ),
    tunable(
        "net.ipv4.tcp_keepalive_intvl",
        INT,
        "seconds between keepalives",
    ),
    tunable(
        "net.ipv4.tcp_keepalive_probes",
        INT,
        "keepalives before a reset",
    ),
    tunable(
        "net.ipv4.tcp_tw_reuse",
        Between(0, 2),
        "reuse TIME-WAIT sockets for outgoing connections",
    ),
    tunable(
        "net.ipv4.tcp_slow_start_after_idle",
        Between(0, 1),
        "restart slow start after idle",
    ),
    tunable(
        "net.ipv4.tcp_mtu_probing",
        Between(0, 2),
        "packetization-layer path MTU discovery",
    ),
    tunable(
        "vm.swappiness",
        Between(0, 200),
        "reclaim preference (there is no swap, so page cache only)",
    ),
    tunable("vm.overcommit_memory", Between(0, 2), "overcommit policy"),
    tunable(
        "vm.overcommit_ratio",
        INT,
        "commit limit with overcommit_memory = 2",
    ),
    tunable(
        "vm.max_map_count",
        INT,
        "mappings per process (databases, JVMs)",
    ),
    tunable(
        "vm.dirty_ratio",
        Between(0, 100),
        "dirty page cache that blocks writers, % of memory",
    ),
    tunable(
        "vm.dirty_background_ratio",
        Between(0, 100),
        "dirty page cache that starts writeback, % of memory",
    ),
    tunable(
        "vm.dirty_expire_centisecs",
        INT,
        "age at which dirty data is written",
    ),
    tunable(
        "vm.dirty_writeback_centisecs",
        INT,
        "writeback thread interval",
    ),
    tunable(
        "vm.min_free_kbytes",
        INT,
        "memory kept free for atomic allocations",
    ),
    tunable(
        "vm.vfs_cache_pressure",
        INT,
        "reclaim of dentry and inode caches",
    ),
    tunable(
        "fs.inotify.max_user_watches",
        INT,
        "inotify watches per user",
    ),
    tunable(
        "fs.inotify.max_user_instances",
        INT,
        "inotify instances per user",
    ),
    tunable(
        "fs.inotify.max_queued_events",
        INT,
        "queued inotify events per instance",
    ),
    tunable("fs.file-max", INT, "open files system-wide"),
    tunable(
        "fs.nr_open",
        INT,
        "open files per process (the hard limit's ceiling)",
    ),
    tunable(
        "fs.aio-max-nr",
        INT,
        "asynchronous I/O requests system-wide",
    ),
    tunable("kernel.pid_max", INT, "process ID space"),
    tunable("kernel.threads-max", INT, "threads system-wide"),
];

pub fn lookup(name: &str) -> Option<&'static Sysctl> {
    TABLE.iter().find(|s| s.name == name)
}

/// The names a machine config may set, in table order.
pub fn overridable() -> impl Iterator<Item = &'static str> {
    TABLE
        .iter()
        .filter(|s| s.change != Change::Locked)
        .map(|s| s.name)
}

/// What init writes before reading the machine config.
pub fn defaults() -> Vec<(&'static str, &'static str)> {
    TABLE
        .iter()
        .filter_map(|s| s.default.map(|v| (s.name, v)))
        .collect()
}

/// `/proc/sys`-relative path of a sysctl: dots become slashes.
pub fn proc_path(name: &str) -> String {
    name.replace('.', "/")
}

/// A value written in `[sysctl]`: integers separated by blanks, stored with
/// single spaces (what init writes). `vm.swappiness = 10` and
/// `"net.ipv4.ip_local_port_range" = "32768 60999"` both parse.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Value(String);

impl Value {
    pub fn parse(raw: &str) -> Result<Value, String> {
        if let Some(c) = raw
            .chars()
            .find(|c| !(c.is_ascii_digit() || *c == '-' || *c == ' ' || *c == '\t'))
        {
            return Err(format!(
                "{raw:?}: {c:?} is not allowed (a value is integers separated by spaces)"
            ));
        }
        let words: Vec<&str> = raw.split_whitespace().collect();
        if words.is_empty() {
            return Err(format!(
                "{raw:?}: empty (a value is integers separated by spaces)"
            ));
        }
        for w in &words {
            if w.parse::<i64>().is_err() {
                return Err(format!("{raw:?}: {w:?} is not an integer"));
            }
        }
        Ok(Value(words.join(" ")))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    fn integers(&self) -> Vec<i64> {
        // parse() admitted only words that are i64
        self.0.split(' ').filter_map(|w| w.parse().ok()).collect()
    }
}

impl std::fmt::Display for Value {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

/// `[sysctl]` as TOML gives it: quoted names (`"vm.swappiness" = 10`) and
/// bare dotted keys (`vm.swappiness = 10`, which TOML nests as tables) are
/// the same name. Values are integers or strings of integers.
pub fn from_toml(table: &toml::Table) -> Result<BTreeMap<String, Value>, String> {
    fn walk(
        prefix: &str,
        t: &toml::Table,
        out: &mut BTreeMap<String, Value>,
    ) -> Result<(), String> {
        for (k, v) in t {
            let name = if prefix.is_empty() {
                k.clone()
            } else {
                format!("{prefix}.{k}")
            };
            let value = match v {
                toml::Value::Table(inner) => {
                    walk(&name, inner, out)?;
                    continue;
                }
                toml::Value::Integer(i) => Value::parse(&i.to_string()),
                toml::Value::String(s) => Value::parse(s),
                other => Err(format!(
                    "a {} (a value is an integer or a string of integers)",
                    other.type_str()
                )),
            }
            .map_err(|e| format!("sysctl.{name:?}: {e}"))?;
            if out.insert(name.clone(), value).is_some() {
                return Err(format!("sysctl.{name:?} is given twice"));
            }
        }
        Ok(())
    }
    let mut out = BTreeMap::new();
    walk("", table, &mut out)?;
    Ok(out)
}

/// Refuses a name outside the overridable set, or a value its entry does
/// not take. Messages start with the field (`sysctl."NAME"`).
pub fn check_override(name: &str, value: &Value) -> Result<(), String> {
    let field = format!("sysctl.{name:?}");
    let entry = lookup(name).filter(|s| s.change != Change::Locked);
    let Some(entry) = entry else {
        let list: Vec<&str> = overridable().collect();
        return Err(format!(
            "{field}: not in the set machine config may change ({})",
            list.join(", ")
        ));
    };
    let ints = value.integers();
    match entry.change {
        Change::Locked => unreachable!("filtered above"),
        Change::Between(min, max) => match ints[..] {
            [n] if (min..=max).contains(&n) => Ok(()),
            [n] => Err(format!("{field}: {n} is outside {min}..={max}")),
            _ => Err(format!("{field}: {value:?} must be one integer")),
        },
        Change::Integers(count) if ints.len() == count => Ok(()),
        Change::Integers(count) => Err(format!(
            "{field}: \"{value}\" must be {count} integers separated by spaces"
        )),
    }
}

/// What init leaves in effect: the defaults, with overrides in their place,
/// and overridden tunables, in table order. `overrides` must have passed
/// [`check_override`] (unknown names are skipped).
pub fn effective(overrides: &BTreeMap<String, Value>) -> Vec<(&'static str, String)> {
    TABLE
        .iter()
        .filter_map(|s| {
            let v = overrides
                .get(s.name)
                .map(|v| v.to_string())
                .or_else(|| s.default.map(str::to_string))?;
            Some((s.name, v))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn table_is_well_formed() {
        let mut seen = std::collections::BTreeSet::new();
        for s in TABLE {
            assert!(seen.insert(s.name), "{} twice", s.name);
            assert!(!s.why.is_empty() && s.name.split('.').count() >= 2);
            // a default or a way to set it: otherwise the entry does nothing
            assert!(
                s.default.is_some() || s.change != Change::Locked,
                "{}",
                s.name
            );
            if let Some(d) = s.default {
                let v = Value::parse(d).unwrap();
                if s.change != Change::Locked {
                    check_override(s.name, &v).unwrap();
                }
            }
        }
        assert_eq!(
            proc_path("net.ipv4.conf.all.rp_filter"),
            "net/ipv4/conf/all/rp_filter"
        );
        assert_eq!(defaults()[0], ("kernel.kptr_restrict", "2"));
    }

    #[test]
    fn values_are_integers_with_single_spaces() {
        assert_eq!(
            Value::parse(" 32768 \t 60999 ").unwrap().as_str(),
            "32768 60999"
        );
        assert_eq!(Value::parse("-1").unwrap().as_str(), "-1");
        for bad in [
            "", "  ", "1;reboot", "0x10", "1.5", "--1", "1-2", "cubic", "1\n",
        ] {
            assert!(Value::parse(bad).is_err(), "{bad:?}");
        }
        assert!(Value::parse("1;reboot").unwrap_err().contains("';'"));
    }

    #[test]
    fn overrides_are_checked_against_the_table() {
        let v = |s| Value::parse(s).unwrap();
        check_override("net.ipv4.ip_forward", &v("1")).unwrap();
        check_override("kernel.yama.ptrace_scope", &v("3")).unwrap();
        check_override("kernel.perf_event_paranoid", &v("2")).unwrap();
        check_override("net.ipv4.ip_local_port_range", &v("1024 65000")).unwrap();
        check_override("vm.swappiness", &v("10")).unwrap();

        let e = check_override("kernel.kptr_restrict", &v("0")).unwrap_err();
        assert!(
            e.starts_with(
                "sysctl.\"kernel.kptr_restrict\": not in the set machine config may change (kernel.yama.ptrace_scope, kernel.perf_event_paranoid, net.ipv4.conf.all.rp_filter,"
            ),
            "{e}"
        );
        assert!(e.contains("net.ipv4.ip_forward"), "{e}");
        let e = check_override("kernel.core_pattern", &v("1")).unwrap_err();
        assert!(
            e.starts_with("sysctl.\"kernel.core_pattern\": not in the set"),
            "{e}"
        );
        let e = check_override("kernel.yama.ptrace_scope", &v("1")).unwrap_err();
        assert!(e.contains("1 is outside 2..=3"), "{e}");
        let e = check_override("kernel.perf_event_paranoid", &v("-1")).unwrap_err();
        assert!(e.contains("outside"), "{e}");
        let e = check_override("net.ipv4.ip_forward", &v("1 1")).unwrap_err();
        assert!(e.contains("one integer"), "{e}");
        let e = check_override("net.ipv4.tcp_rmem", &v("4096 87380")).unwrap_err();
        assert!(e.contains("3 integers"), "{e}");
        assert!(check_override("vm.swappiness", &v("-5")).is_err());
    }

    #[test]
    fn dotted_and_quoted_names_are_one() {
        let t: toml::Table = toml::from_str(
            "vm.swappiness = 10\n\"net.ipv4.ip_local_port_range\" = \"1024  65000\"\nnet.ipv4.ip_forward = 1\n",
        )
        .unwrap();
        let m = from_toml(&t).unwrap();
        let got: Vec<(&str, &str)> = m.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
        assert_eq!(
            got,
            [
                ("net.ipv4.ip_forward", "1"),
                ("net.ipv4.ip_local_port_range", "1024 65000"),
                ("vm.swappiness", "10")
            ]
        );
        let t: toml::Table =
            toml::from_str("\"vm.swappiness\" = 1\n[vm]\nswappiness = 2\n").unwrap();
        assert!(from_toml(&t).unwrap_err().contains("given twice"));
        let t: toml::Table = toml::from_str("vm.swappiness = 1.5").unwrap();
        let e = from_toml(&t).unwrap_err();
        assert!(e.starts_with("sysctl.\"vm.swappiness\": a float"), "{e}");
        let t: toml::Table = toml::from_str("vm.swappiness = \"ten\"").unwrap();
        let e = from_toml(&t).unwrap_err();
        assert!(
            e.starts_with("sysctl.\"vm.swappiness\": \"ten\": 't' is not allowed"),
            "{e}"
        );
    }

    #[test]
    fn effective_keeps_table_order() {
        let mut o = BTreeMap::new();
        o.insert("vm.swappiness".to_string(), Value::parse("10").unwrap());
        o.insert(
            "kernel.yama.ptrace_scope".to_string(),
            Value::parse("3").unwrap(),
        );
        let e = effective(&o);
        assert_eq!(e.len(), defaults().len() + 1);
        assert_eq!(e[0], ("kernel.kptr_restrict", "2".to_string()));
        assert!(e.contains(&("kernel.yama.ptrace_scope", "3".to_string())));
        assert_eq!(e.last().unwrap(), &("vm.swappiness", "10".to_string()));
    }
}
