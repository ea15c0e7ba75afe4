//! Linux capability names and numbers, once, and the set a service or
//! health check may be given in `machine.toml` (`capabilities = [...]`).
//! init turns a validated list into a bit mask with [`mask`] and applies
//! it between fork and exec; the machine config refuses anything outside
//! [`ALLOWED`] at parse time, so a refused name fails the builder, the
//! installer and the boot alike.

use thiserror::Error;

/// Every capability the kernel defines (include/uapi/linux/capability.h),
/// by number. Names outside this table are unknown, not merely refused.
pub const ALL: [(&str, u8); 41] = [
    ("CAP_CHOWN", 0),
    ("CAP_DAC_OVERRIDE", 1),
    ("CAP_DAC_READ_SEARCH", 2),
    ("CAP_FOWNER", 3),
    ("CAP_FSETID", 4),
    ("CAP_KILL", 5),
    ("CAP_SETGID", 6),
    ("CAP_SETUID", 7),
    ("CAP_SETPCAP", 8),
    ("CAP_LINUX_IMMUTABLE", 9),
    ("CAP_NET_BIND_SERVICE", 10),
    ("CAP_NET_BROADCAST", 11),
    ("CAP_NET_ADMIN", 12),
    ("CAP_NET_RAW", 13),
    ("CAP_IPC_LOCK", 14),
    ("CAP_IPC_OWNER", 15),
    ("CAP_SYS_MODULE", 16),
    ("CAP_SYS_RAWIO", 17),
    ("CAP_SYS_CHROOT", 18),
    ("CAP_SYS_PTRACE", 19),
    ("CAP_SYS_PACCT", 20),
    ("CAP_SYS_ADMIN", 21),
    ("CAP_SYS_BOOT", 22),
    ("CAP_SYS_NICE", 23),
    ("CAP_SYS_RESOURCE", 24),
    ("CAP_SYS_TIME", 25),
    ("CAP_SYS_TTY_CONFIG", 26),
    ("CAP_MKNOD", 27),
    ("CAP_LEASE", 28),
    ("CAP_AUDIT_WRITE", 29),
    ("CAP_AUDIT_CONTROL", 30),
    ("CAP_SETFCAP", 31),
    ("CAP_MAC_OVERRIDE", 32),
    ("CAP_MAC_ADMIN", 33),
    ("CAP_SYSLOG", 34),
    ("CAP_WAKE_ALARM", 35),
    ("CAP_BLOCK_SUSPEND", 36),
    ("CAP_AUDIT_READ", 37),
    ("CAP_PERFMON", 38),
    ("CAP_BPF", 39),
    ("CAP_CHECKPOINT_RESTORE", 40),
];

/// What a service may hold: each acts on the service's own files, sockets,
/// processes or resource limits, or on the network and clock it serves.
///
/// Everything else is refused because it reaches past the service into
/// the machine, or undoes the confinement itself:
/// - CAP_SYS_ADMIN (mount, namespaces, most of the kernel), CAP_SYS_MODULE
///   (load kernel code), CAP_SYS_RAWIO (raw I/O ports and disk sectors),
///   CAP_SYS_BOOT (reboot, kexec), CAP_BPF and CAP_PERFMON (kernel programs
///   and kernel memory observation), CAP_SYS_PTRACE (read and write other
///   processes, including init), CAP_SYS_CHROOT (a classic escape route
///   with a writable directory), CAP_MKNOD (device nodes for the disks);
/// - CAP_SETPCAP and CAP_SETFCAP (give capabilities back, to itself or to
///   files), CAP_MAC_ADMIN and CAP_MAC_OVERRIDE (bypass an LSM),
///   CAP_LINUX_IMMUTABLE (clear immutable/append-only flags that protect
///   records), CAP_AUDIT_* (turn off or forge the audit trail),
///   CAP_SYSLOG (read kernel addresses from the log);
/// - CAP_CHECKPOINT_RESTORE, CAP_BLOCK_SUSPEND, CAP_WAKE_ALARM, CAP_LEASE,
///   CAP_SYS_PACCT, CAP_SYS_TTY_CONFIG, CAP_NET_BROADCAST, CAP_IPC_OWNER:
///   machine-wide or niche powers no appliance service needs; asking is
///   more likely a mistake than a need.
pub const ALLOWED: [&str; 15] = [
    "CAP_CHOWN",
    "CAP_DAC_OVERRIDE",
    "CAP_DAC_READ_SEARCH",
    "CAP_FOWNER",
    "CAP_FSETID",
    "CAP_KILL",
    "CAP_SETGID",
    "CAP_SETUID",
    "CAP_NET_BIND_SERVICE",
    "CAP_NET_RAW",
    "CAP_NET_ADMIN",
    "CAP_SYS_TIME",
    "CAP_SYS_NICE",
    "CAP_SYS_RESOURCE",
    "CAP_IPC_LOCK",
];

#[derive(Debug, Error, PartialEq, Eq)]
pub enum CapError {
    #[error("{0} is not a Linux capability name (they are written like CAP_NET_BIND_SERVICE)")]
    Unknown(String),
    #[error("{name} is not in the set a service may hold ({})", ALLOWED.join(", "))]
    Refused { name: String },
    #[error("{0} is listed twice")]
    Duplicate(String),
}

/// The number of a capability name, allowed or not.
pub fn number(name: &str) -> Option<u8> {
    ALL.iter().find(|(n, _)| *n == name).map(|(_, b)| *b)
}

/// The bit mask (bit n = capability n) of a list of names, each known,
/// allowed and listed once.
pub fn mask<S: AsRef<str>>(names: &[S]) -> Result<u64, CapError> {
    let mut m = 0u64;
    for n in names {
        let n = n.as_ref();
        let bit = number(n).ok_or_else(|| CapError::Unknown(n.to_string()))?;
        if !ALLOWED.contains(&n) {
            return Err(CapError::Refused { name: n.into() });
        }
        if m & (1 << bit) != 0 {
            return Err(CapError::Duplicate(n.into()));
        }
        m |= 1 << bit;
    }
    Ok(m)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn table_is_dense_and_allowed_names_are_in_it() {
        for (i, (_, b)) in ALL.iter().enumerate() {
            assert_eq!(*b as usize, i);
        }
        for a in ALLOWED {
            assert!(number(a).is_some(), "{a}");
        }
    }

    #[test]
    fn masks_and_refusals() {
        assert_eq!(mask::<&str>(&[]), Ok(0));
        assert_eq!(mask(&["CAP_NET_BIND_SERVICE"]), Ok(0x400));
        assert_eq!(mask(&["CAP_CHOWN", "CAP_KILL"]), Ok(0x21));
        let e = mask(&["CAP_SYS_ADMIN"]).unwrap_err();
        assert!(e.to_string().starts_with(
            "CAP_SYS_ADMIN is not in the set a service may hold (CAP_CHOWN, CAP_DAC_OVERRIDE"
        ));
        assert_eq!(
            mask(&["CAP_NET_RAW", "CAP_NET_RAW"]),
            Err(CapError::Duplicate("CAP_NET_RAW".into()))
        );
        assert_eq!(
            mask(&["cap_net_raw"]),
            Err(CapError::Unknown("cap_net_raw".into()))
        );
        for refused in ["CAP_SETPCAP", "CAP_BPF", "CAP_MKNOD", "CAP_SYS_PTRACE"] {
            assert!(matches!(mask(&[refused]), Err(CapError::Refused { .. })));
        }
    }
}
