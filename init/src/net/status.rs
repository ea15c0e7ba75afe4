//! What the network manager publishes: `/etc/resolv.conf` (its target on
//! /run) and the JSON state a status reader serves. Pure text builders,
//! plus an atomic write.

use serde::Serialize;
use std::io::Write;
use std::net::IpAddr;
use std::path::Path;

#[derive(Debug, Clone, Default, Serialize, PartialEq, Eq)]
pub struct LinkStatus {
    pub name: String,
    pub mac: String,
    pub carrier: bool,
    /// "dhcp", "static" or "unmanaged".
    pub mode: &'static str,
    /// DHCP state ("selecting", "bound", ...), "configured", "no-carrier".
    pub state: String,
    pub addresses: Vec<String>,
    pub gateway: Option<String>,
    pub dns: Vec<String>,
    pub dhcp_server: Option<String>,
    pub lease_s: Option<u64>,
}

#[derive(Debug, Clone, Default, Serialize, PartialEq, Eq)]
pub struct TimeStatus {
    pub servers: Vec<String>,
    /// The last answer: server and offset (server minus local), and
    /// whether the clock was stepped.
    pub last_server: Option<String>,
    pub last_offset_us: Option<i64>,
    pub stepped: bool,
    pub last_error: Option<String>,
}

#[derive(Debug, Clone, Default, Serialize, PartialEq, Eq)]
pub struct Status {
    pub links: Vec<LinkStatus>,
    pub dns: Vec<String>,
    pub time: TimeStatus,
}

pub fn mac_text(mac: &Option<[u8; 6]>) -> String {
    mac.map_or(String::new(), |m| {
        m.iter()
            .map(|b| format!("{b:02x}"))
            .collect::<Vec<_>>()
            .join(":")
    })
}

/// Name servers in order, without repeats: configured first, then each
/// link's DHCP servers.
pub fn nameservers(configured: &[IpAddr], learned: &[IpAddr]) -> Vec<IpAddr> {
    let mut out: Vec<IpAddr> = Vec::new();
    for a in configured.iter().chain(learned) {
        if !out.contains(a) {
            out.push(*a);
        }
    }
    out
}

pub fn resolv_conf(servers: &[IpAddr]) -> String {
    let mut s = String::from("# written by cairn-init from the machine config and DHCP\n");
    for a in servers {
        s.push_str(&format!("nameserver {a}\n"));
    }
    s
}

/// Writes `bytes` to `path` through a temporary file, a sync and a rename,
/// so a reader (or a power cut, for STATE) sees the old or the new content,
/// never a part. Init's one atomic writer: /run's status files and STATE's
/// bad-release record (on tmpfs the syncs cost nothing).
pub fn write_atomic(path: &Path, bytes: impl AsRef<[u8]>) -> std::io::Result<()> {
    let dir = path.parent();
    if let Some(d) = dir {
        std::fs::create_dir_all(d)?;
    }
    let tmp = path.with_extension("new");
    let mut f = std::fs::File::create(&tmp)?;
    f.write_all(bytes.as_ref())?;
    f.sync_all()?;
    drop(f);
    std::fs::rename(&tmp, path)?;
    if let Some(d) = dir {
        std::fs::File::open(d)?.sync_all()?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn resolv_conf_lists_configured_then_learned_once_each() {
        let a: IpAddr = "1.1.1.1".parse().unwrap();
        let b: IpAddr = "10.0.2.3".parse().unwrap();
        let s = nameservers(&[a], &[b, a, b]);
        assert_eq!(s, [a, b]);
        let text = resolv_conf(&s);
        let lines: Vec<_> = text.lines().filter(|l| !l.starts_with('#')).collect();
        assert_eq!(lines, ["nameserver 1.1.1.1", "nameserver 10.0.2.3"]);
        assert_eq!(
            mac_text(&Some([0x52, 0x54, 0, 0x12, 0x34, 0x56])),
            "52:54:00:12:34:56"
        );
    }

    #[test]
    fn status_is_json_with_the_link_fields() {
        let st = Status {
            links: vec![LinkStatus {
                name: "eth0".into(),
                mode: "dhcp",
                state: "bound".into(),
                addresses: vec!["10.0.2.15/24".into()],
                ..LinkStatus::default()
            }],
            ..Status::default()
        };
        let v: serde_json::Value =
            serde_json::from_str(&serde_json::to_string(&st).unwrap()).unwrap();
        assert_eq!(v["links"][0]["addresses"][0], "10.0.2.15/24");
        assert_eq!(v["links"][0]["state"], "bound");
        assert!(v["time"]["last_offset_us"].is_null());
    }

    #[test]
    fn writes_are_atomic_replacements() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("x/resolv.conf");
        write_atomic(&p, "a\n").unwrap();
        write_atomic(&p, "b\n").unwrap();
        assert_eq!(std::fs::read_to_string(&p).unwrap(), "b\n");
        assert!(!p.with_extension("new").exists());
    }
}
