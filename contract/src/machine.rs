//! The machine configuration (`machine.toml`), the one file an operator
//! writes. Parsing is strict (unknown keys are errors) so a typo fails the
//! boot loudly instead of silently dropping a service.

use serde::{Deserialize, Deserializer};
use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr};
use std::path::Path;
use thiserror::Error;

#[derive(Debug, Error, PartialEq, Eq)]
pub enum ConfigError {
    #[error("{file}:{line}:{column}: {message}")]
    Syntax {
        file: String,
        line: usize,
        column: usize,
        message: String,
    },
    #[error("{file}: {what}")]
    Invalid { file: String, what: String },
    #[error("reading {file}: {message}")]
    Read { file: String, message: String },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "kebab-case")]
pub enum Restart {
    #[default]
    Always,
    OnFailure,
    Never,
}

#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Service {
    pub name: String,
    pub exec: String,
    #[serde(default)]
    pub args: Vec<String>,
    #[serde(default)]
    pub restart: Restart,
    /// Numeric uid it runs as (`user = 0` only when written).
    #[serde(default = "nobody")]
    pub user: u32,
    /// Numeric gid it runs as; it has no supplementary groups.
    #[serde(default = "nobody")]
    pub group: u32,
    /// Capability names (contract::caps::ALLOWED); none by default.
    #[serde(default)]
    pub capabilities: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Health {
    pub name: String,
    pub exec: String,
    #[serde(default)]
    pub args: Vec<String>,
    pub timeout_s: u32,
    /// As for a service: a check runs as nobody unless told otherwise.
    #[serde(default = "nobody")]
    pub user: u32,
    #[serde(default = "nobody")]
    pub group: u32,
    #[serde(default)]
    pub capabilities: Vec<String>,
}

/// The uid and gid a service or health check runs as unless its table
/// names one: the kernel's overflow id, owning nothing on the image.
pub const NOBODY: u32 = 65534;

fn nobody() -> u32 {
    NOBODY
}

/// `user`, `group` and `capabilities` of one service or health check.
fn validate_privileges(
    kind: &str,
    name: &str,
    user: u32,
    group: u32,
    caps: &[String],
) -> Result<(), String> {
    // u32::MAX is -1 to setresuid/setresgid: "leave unchanged", i.e. root.
    for (field, id) in [("user", user), ("group", group)] {
        if id == u32::MAX {
            return Err(format!(
                "{kind} {name:?}: {field}: {id} is not an id (it means \"unchanged\" to the kernel)"
            ));
        }
    }
    crate::caps::mask(caps)
        .map(|_| ())
        .map_err(|e| format!("{kind} {name:?}: capabilities: {e}"))
}

#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct MachineConfig {
    pub hostname: Option<String>,
    pub console_loglevel: Option<u8>,
    #[serde(default, rename = "service")]
    pub services: Vec<Service>,
    #[serde(default, rename = "health")]
    pub health: Vec<Health>,
    /// Absent: DHCPv4 on every link with carrier (see [`Network`]).
    #[serde(default)]
    pub network: Network,
    #[serde(default)]
    pub time: Time,
    /// Off unless present (contract::update).
    pub update: Option<crate::update::Update>,
    /// `[sysctl]`: overrides of the subset contract::sysctl allows, by
    /// dotted name.
    #[serde(default, deserialize_with = "sysctl_table")]
    pub sysctl: BTreeMap<String, crate::sysctl::Value>,
    /// `[api]`: the node API's identity; no API without it (contract::api).
    pub api: Option<crate::api::Api>,
}

fn sysctl_table<'de, D: Deserializer<'de>>(
    d: D,
) -> Result<BTreeMap<String, crate::sysctl::Value>, D::Error> {
    crate::sysctl::from_toml(&toml::Table::deserialize(d)?).map_err(serde::de::Error::custom)
}

/// Where init writes the resolver configuration; the rootfs's
/// `/etc/resolv.conf` is a symlink here (the root is read-only).
pub const RESOLV_CONF: &str = "/run/cairn/resolv.conf";
/// The network state init keeps for a status reader, as JSON.
pub const NETWORK_STATE: &str = "/run/cairn/network.json";
/// The whole node's status as one JSON document (booted release, disk as
/// `cairn-installer status --json` shows it, network, last update attempt,
/// releases marked bad), rewritten by init whenever a part changes; the
/// shape is in docs/updates.md ("Status on the node").
pub const NODE_STATUS: &str = "/run/cairn/status.json";
/// The machine config a node boots with: init imports it from the ESP
/// into STATE, the node API reads and replaces it there.
pub const STORED_CONFIG: &str = "/system/state/config/machine.toml";

/// A line diff good enough to review a config change: lines only in the
/// old text with `-`, only in the new with `+`, each in its order. What
/// `config apply --dry-run` answers.
pub fn line_diff(old: &str, new: &str) -> String {
    let mut out = String::new();
    for l in old.lines().filter(|l| !new.lines().any(|n| n == *l)) {
        out.push_str(&format!("-{l}\n"));
    }
    for l in new.lines().filter(|l| !old.lines().any(|o| o == *l)) {
        out.push_str(&format!("+{l}\n"));
    }
    out
}

/// An IPv4 address with its prefix length, written `10.0.2.20/24`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Ipv4Cidr {
    pub addr: Ipv4Addr,
    pub prefix: u8,
}

impl Ipv4Cidr {
    pub fn netmask(&self) -> Ipv4Addr {
        Ipv4Addr::from(u32::MAX.checked_shl(32 - self.prefix as u32).unwrap_or(0))
    }
    pub fn network(&self) -> Ipv4Addr {
        Ipv4Addr::from(u32::from(self.addr) & u32::from(self.netmask()))
    }
    pub fn contains(&self, ip: Ipv4Addr) -> bool {
        u32::from(ip) & u32::from(self.netmask()) == u32::from(self.network())
    }
    /// The prefix length of a contiguous netmask (`None` for e.g. 255.0.255.0).
    pub fn prefix_of(mask: Ipv4Addr) -> Option<u8> {
        let m = u32::from(mask);
        let p = m.leading_ones();
        (m.checked_shl(p).unwrap_or(0) == 0).then_some(p as u8)
    }
}

impl std::fmt::Display for Ipv4Cidr {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.addr, self.prefix)
    }
}

impl std::str::FromStr for Ipv4Cidr {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let (a, p) = s
            .split_once('/')
            .ok_or_else(|| format!("{s:?}: expected ADDRESS/PREFIX, e.g. 10.0.2.20/24"))?;
        let addr: Ipv4Addr = a
            .parse()
            .map_err(|_| format!("{s:?}: {a:?} is not an IPv4 address"))?;
        let prefix: u8 = p
            .parse()
            .ok()
            .filter(|p| *p <= 32)
            .ok_or_else(|| format!("{s:?}: prefix {p:?} is not 0..=32"))?;
        Ok(Ipv4Cidr { addr, prefix })
    }
}

/// Parsed from a string so a bad value is reported at its line and column.
impl<'de> Deserialize<'de> for Ipv4Cidr {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

/// `[network]`. With no `[[network.link]]`, every link but loopback that
/// has carrier runs DHCPv4; with links named, only those are configured.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct Network {
    #[serde(default, rename = "link")]
    pub links: Vec<Link>,
    #[serde(default, rename = "route")]
    pub routes: Vec<Route>,
    /// Name servers for /etc/resolv.conf, ahead of any DHCP gave.
    #[serde(default)]
    pub dns: Vec<IpAddr>,
}

#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Link {
    pub name: String,
    /// Default: DHCP when no `addresses` are given.
    pub dhcp: Option<bool>,
    #[serde(default)]
    pub addresses: Vec<Ipv4Cidr>,
    pub gateway: Option<Ipv4Addr>,
}

impl Link {
    pub fn uses_dhcp(&self) -> bool {
        self.dhcp.unwrap_or(self.addresses.is_empty())
    }
}

/// `[[network.route]]`: `to = "10.9.0.0/16"`, `via = "10.0.2.1"`, and
/// optionally the `link` it leaves by.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Route {
    pub to: Ipv4Cidr,
    pub via: Ipv4Addr,
    pub link: Option<String>,
}

/// `[time]`: SNTP servers (IPv4 addresses or host names), queried once the
/// network is up. None: the clock is left as the firmware set it.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct Time {
    #[serde(default)]
    pub servers: Vec<String>,
}

/// 1-based line and column (in characters) of a byte offset.
fn line_col(src: &str, offset: usize) -> (usize, usize) {
    let offset = offset.min(src.len());
    let before = &src[..src.floor_char_boundary_compat(offset)];
    let line = before.matches('\n').count() + 1;
    let col = before.rsplit('\n').next().map_or(0, |l| l.chars().count()) + 1;
    (line, col)
}

trait FloorBoundary {
    fn floor_char_boundary_compat(&self, i: usize) -> usize;
}
impl FloorBoundary for str {
    fn floor_char_boundary_compat(&self, mut i: usize) -> usize {
        while !self.is_char_boundary(i) {
            i -= 1;
        }
        i
    }
}

fn valid_name(n: &str) -> bool {
    !n.is_empty()
        && n.len() <= 64
        && n.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_' || b == b'.')
}

fn valid_hostname(h: &str) -> bool {
    !h.is_empty()
        && h.len() <= 64
        && h.split('.').all(|l| {
            !l.is_empty()
                && !l.starts_with('-')
                && !l.ends_with('-')
                && l.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
        })
}

/// A kernel interface name: 1-15 bytes, no '/', ':' or whitespace.
fn valid_ifname(n: &str) -> bool {
    !n.is_empty()
        && n.len() < 16
        && n != "."
        && n != ".."
        && n.bytes()
            .all(|b| b.is_ascii_graphic() && b != b'/' && b != b':')
}

impl Network {
    fn validate(&self) -> Result<(), String> {
        let mut seen = std::collections::BTreeSet::new();
        for l in &self.links {
            let n = &l.name;
            if !valid_ifname(n) {
                return Err(format!(
                    "network.link {n:?}: an interface name is 1-15 printable bytes without '/' or ':'"
                ));
            }
            if !seen.insert(n.as_str()) {
                return Err(format!("network.link {n:?} is defined twice"));
            }
            if l.dhcp == Some(true) && !l.addresses.is_empty() {
                return Err(format!(
                    "network.link {n:?}: dhcp = true and static addresses: choose one"
                ));
            }
            if l.dhcp == Some(false) && l.addresses.is_empty() {
                return Err(format!(
                    "network.link {n:?}: dhcp = false needs static addresses"
                ));
            }
            for a in &l.addresses {
                if a.prefix == 0 || a.addr.is_unspecified() || a.addr.is_broadcast() {
                    return Err(format!(
                        "network.link {n:?}: address {a} is not a host address"
                    ));
                }
            }
            if let Some(g) = l.gateway {
                if l.addresses.is_empty() {
                    return Err(format!(
                        "network.link {n:?}: gateway {g} without static addresses (DHCP supplies the gateway)"
                    ));
                }
                if !l.addresses.iter().any(|a| a.contains(g)) {
                    return Err(format!(
                        "network.link {n:?}: gateway {g} is in none of the link's subnets"
                    ));
                }
            }
        }
        for r in &self.routes {
            if r.to.addr != r.to.network() {
                return Err(format!(
                    "network.route to {}: host bits set (the network is {}/{})",
                    r.to,
                    r.to.network(),
                    r.to.prefix
                ));
            }
            if let Some(l) = &r.link {
                if !self.links.is_empty() && !seen.contains(l.as_str()) {
                    return Err(format!(
                        "network.route to {}: link {l:?} is not a configured network.link",
                        r.to
                    ));
                }
            }
        }
        Ok(())
    }
}

impl MachineConfig {
    /// `file` only names the source in error messages.
    pub fn parse(src: &str, file: &str) -> Result<Self, ConfigError> {
        let cfg: MachineConfig = toml::from_str(src).map_err(|e| {
            let (line, column) = e.span().map_or((1, 1), |s| line_col(src, s.start));
            ConfigError::Syntax {
                file: file.to_string(),
                line,
                column,
                message: e.message().to_string(),
            }
        })?;
        cfg.validate(file)?;
        Ok(cfg)
    }

    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let file = path.display().to_string();
        let src = std::fs::read_to_string(path).map_err(|e| ConfigError::Read {
            file: file.clone(),
            message: e.to_string(),
        })?;
        Self::parse(&src, &file)
    }

    fn validate(&self, file: &str) -> Result<(), ConfigError> {
        let bad = |what: String| ConfigError::Invalid {
            file: file.to_string(),
            what,
        };
        if let Some(h) = &self.hostname {
            if !valid_hostname(h) {
                return Err(bad(format!(
                    "hostname {h:?}: letters, digits and '-' in dot-separated labels, at most 64 bytes"
                )));
            }
        }
        if let Some(l) = self.console_loglevel {
            if l > 8 {
                return Err(bad(format!("console_loglevel {l}: must be 0..=8")));
            }
        }
        let mut seen = std::collections::BTreeSet::new();
        for (kind, name, exec, (user, group, caps)) in self
            .services
            .iter()
            .map(|s| {
                let p = (s.user, s.group, &s.capabilities);
                ("service", &s.name, &s.exec, p)
            })
            .chain(self.health.iter().map(|h| {
                let p = (h.user, h.group, &h.capabilities);
                ("health", &h.name, &h.exec, p)
            }))
        {
            if !valid_name(name) {
                return Err(bad(format!(
                    "{kind} name {name:?}: use 1-64 of [A-Za-z0-9._-]"
                )));
            }
            if !seen.insert((kind, name.clone())) {
                return Err(bad(format!("{kind} {name:?} is defined twice")));
            }
            if !exec.starts_with('/') {
                return Err(bad(format!(
                    "{kind} {name:?}: exec {exec:?} must be an absolute path (there is no PATH search)"
                )));
            }
            validate_privileges(kind, name, user, group, caps).map_err(&bad)?;
        }
        self.network.validate().map_err(&bad)?;
        for t in &self.time.servers {
            if t.parse::<IpAddr>().is_err() && !valid_hostname(t) {
                return Err(bad(format!(
                    "time server {t:?}: not an IP address or host name"
                )));
            }
        }
        if let Some(u) = &self.update {
            u.validate().map_err(bad)?;
        }
        if let Some(a) = &self.api {
            a.validate().map_err(&bad)?;
            if self
                .services
                .iter()
                .any(|s| s.name == crate::api::SERVICE_NAME)
            {
                return Err(bad(format!(
                    "service {:?}: the name is the node API's (from [api])",
                    crate::api::SERVICE_NAME
                )));
            }
        }
        for (name, value) in &self.sysctl {
            crate::sysctl::check_override(name, value).map_err(&bad)?;
        }
        for h in &self.health {
            if h.timeout_s == 0 {
                return Err(bad(format!(
                    "health {:?}: timeout_s must be at least 1",
                    h.name
                )));
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: &str = r#"
hostname = "node-1.example"
console_loglevel = 4

[[service]]
name = "web"
exec = "/usr/bin/web"
args = ["--port", "80"]
restart = "on-failure"

[[service]]
name = "logger"
exec = "/usr/bin/logger"

[[health]]
name = "web-up"
exec = "/usr/bin/check"
args = ["http://localhost/"]
timeout_s = 30
"#;

    #[test]
    fn parses_full_config_in_order() {
        let c = MachineConfig::parse(GOOD, "machine.toml").unwrap();
        assert_eq!(c.hostname.as_deref(), Some("node-1.example"));
        assert_eq!(c.console_loglevel, Some(4));
        let names: Vec<_> = c.services.iter().map(|s| s.name.as_str()).collect();
        assert_eq!(names, ["web", "logger"]);
        assert_eq!(c.services[0].args, ["--port", "80"]);
        assert_eq!(c.services[0].restart, Restart::OnFailure);
        assert_eq!(c.services[1].restart, Restart::Always);
        assert_eq!(c.health[0].timeout_s, 30);
    }

    #[test]
    fn empty_config_is_valid() {
        assert_eq!(
            MachineConfig::parse("", "f").unwrap(),
            MachineConfig::default()
        );
    }

    fn syntax(src: &str) -> (usize, usize, String) {
        match MachineConfig::parse(src, "m.toml") {
            Err(ConfigError::Syntax {
                line,
                column,
                message,
                file,
            }) => {
                assert_eq!(file, "m.toml");
                (line, column, message)
            }
            other => panic!("expected syntax error, got {other:?}"),
        }
    }

    #[test]
    fn syntax_errors_carry_line_and_column() {
        let (l, c, _) = syntax("hostname = \"a\"\n\n[[service]]\nname = \"x\"\nexec = /bin/x\n");
        assert_eq!((l, c), (5, 8));
        // unknown key: points at the key, message names it
        let (l, c, m) = syntax(
            "hostname = \"a\"\n[[service]]\nname = \"x\"\nexec = \"/x\"\n  restrat = \"never\"\n",
        );
        assert_eq!((l, c), (5, 3));
        assert!(m.contains("restrat"), "{m}");
        // wrong type
        let (l, c, _) = syntax("console_loglevel = \"loud\"\n");
        assert_eq!((l, c), (1, 20));
        // bad enum value
        let (l, _, m) = syntax("[[service]]\nname=\"a\"\nexec=\"/a\"\nrestart = \"sometimes\"\n");
        assert_eq!(l, 4);
        assert!(m.contains("sometimes"), "{m}");
        // missing field: error still located (at the table)
        let (l, _, m) = syntax("[[health]]\nname = \"h\"\nexec = \"/h\"\n");
        assert_eq!(l, 1);
        assert!(m.contains("timeout_s"), "{m}");
    }

    #[test]
    fn semantic_errors_name_the_field() {
        let inv = |src: &str| match MachineConfig::parse(src, "m.toml") {
            Err(ConfigError::Invalid { what, .. }) => what,
            other => panic!("expected invalid, got {other:?}"),
        };
        assert!(inv("hostname = \"bad host\"").contains("hostname"));
        assert!(inv("console_loglevel = 9").contains("console_loglevel 9"));
        assert!(inv("[[service]]\nname=\"a\"\nexec=\"sh\"").contains("absolute"));
        assert!(
            inv("[[service]]\nname=\"a\"\nexec=\"/a\"\n[[service]]\nname=\"a\"\nexec=\"/b\"")
                .contains("defined twice")
        );
        assert!(inv("[[service]]\nname=\"a b\"\nexec=\"/a\"").contains("name"));
        assert!(inv("[[health]]\nname=\"h\"\nexec=\"/h\"\ntimeout_s=0").contains("timeout_s"));
        assert!(
            inv("[update]\nsource=\"r.example/cairn\"\ninterval_s=1").contains("update.interval_s")
        );
    }

    #[test]
    fn privileges_default_to_nobody_without_capabilities() {
        let c = MachineConfig::parse(GOOD, "m.toml").unwrap();
        for (u, g, caps) in c
            .services
            .iter()
            .map(|s| (s.user, s.group, &s.capabilities))
            .chain(c.health.iter().map(|h| (h.user, h.group, &h.capabilities)))
        {
            assert_eq!((u, g), (NOBODY, 65534));
            assert!(caps.is_empty());
        }
        let c = MachineConfig::parse(
            r#"
[[service]]
name = "web"
exec = "/usr/bin/web"
user = 0
group = 33
capabilities = ["CAP_NET_BIND_SERVICE", "CAP_NET_RAW"]
[[health]]
name = "ping"
exec = "/usr/bin/ping"
timeout_s = 5
user = 1000
capabilities = ["CAP_NET_RAW"]
"#,
            "m.toml",
        )
        .unwrap();
        let s = &c.services[0];
        assert_eq!((s.user, s.group), (0, 33));
        assert_eq!(s.capabilities, ["CAP_NET_BIND_SERVICE", "CAP_NET_RAW"]);
        let h = &c.health[0];
        assert_eq!((h.user, h.group), (1000, NOBODY));
        assert_eq!(h.capabilities, ["CAP_NET_RAW"]);
    }

    #[test]
    fn refused_privileges_name_the_table_and_field() {
        let inv = |src: &str| match MachineConfig::parse(src, "m.toml") {
            Err(ConfigError::Invalid { what, .. }) => what,
            other => panic!("expected invalid, got {other:?}"),
        };
        let svc = "[[service]]\nname = \"web\"\nexec = \"/w\"\n";
        let e = inv(&format!("{svc}capabilities = [\"CAP_SYS_ADMIN\"]"));
        assert!(
            e.starts_with(
                "service \"web\": capabilities: CAP_SYS_ADMIN is not in the set a service may hold (CAP_CHOWN, "
            ),
            "{e}"
        );
        assert!(e.ends_with("CAP_IPC_LOCK)"), "{e}");
        let e = inv(&format!("{svc}capabilities = [\"CAP_KILL\", \"CAP_KILL\"]"));
        assert_eq!(e, "service \"web\": capabilities: CAP_KILL is listed twice");
        let e = inv(&format!("{svc}capabilities = [\"NET_ADMIN\"]"));
        assert!(
            e.starts_with("service \"web\": capabilities: NET_ADMIN is not a Linux capability"),
            "{e}"
        );
        let e = inv(&format!("{svc}user = 4294967295"));
        assert!(e.starts_with("service \"web\": user: 4294967295"), "{e}");
        let e = inv(&format!("{svc}group = 4294967295"));
        assert!(e.starts_with("service \"web\": group:"), "{e}");
        let chk = "[[health]]\nname = \"h\"\nexec = \"/h\"\ntimeout_s = 1\n";
        let e = inv(&format!("{chk}capabilities = [\"CAP_SETPCAP\"]"));
        assert!(
            e.starts_with("health \"h\": capabilities: CAP_SETPCAP is not in the set"),
            "{e}"
        );
        // types are syntax errors, located at the value
        let (l, _, _) = syntax(&format!("{svc}user = -1"));
        assert_eq!(l, 4);
        let (l, _, _) = syntax(&format!("{svc}user = \"nobody\""));
        assert_eq!(l, 4);
        let (l, _, _) = syntax(&format!("{svc}capabilities = \"CAP_KILL\""));
        assert_eq!(l, 4);
    }

    #[test]
    fn network_absent_means_dhcp_everywhere() {
        let c = MachineConfig::parse("hostname = \"n\"", "m.toml").unwrap();
        assert!(c.network.links.is_empty());
        assert!(c.network.dns.is_empty() && c.time.servers.is_empty());
    }

    #[test]
    fn network_parses_links_routes_dns_time() {
        let c = MachineConfig::parse(
            r#"
[network]
dns = ["10.0.2.3", "2001:db8::53"]
[[network.link]]
name = "eth0"
[[network.link]]
name = "eth1"
addresses = ["10.0.3.20/24", "192.168.7.1/30"]
gateway = "10.0.3.1"
[[network.route]]
to = "10.9.0.0/16"
via = "10.0.3.254"
link = "eth1"
[time]
servers = ["10.0.2.3", "pool.ntp.example"]
"#,
            "m.toml",
        )
        .unwrap();
        let n = &c.network;
        assert!(n.links[0].uses_dhcp());
        assert!(!n.links[1].uses_dhcp());
        let a = n.links[1].addresses[0];
        assert_eq!((a.addr, a.prefix), (Ipv4Addr::new(10, 0, 3, 20), 24));
        assert_eq!(a.to_string(), "10.0.3.20/24");
        assert_eq!(a.netmask(), Ipv4Addr::new(255, 255, 255, 0));
        assert_eq!(
            n.links[1].addresses[1].netmask(),
            Ipv4Addr::new(255, 255, 255, 252)
        );
        assert_eq!(n.routes[0].to.to_string(), "10.9.0.0/16");
        assert_eq!(n.dns.len(), 2);
        assert_eq!(c.time.servers[1], "pool.ntp.example");
        assert_eq!(
            Ipv4Cidr::prefix_of(Ipv4Addr::new(255, 255, 255, 0)),
            Some(24)
        );
        assert_eq!(Ipv4Cidr::prefix_of(Ipv4Addr::new(0, 0, 0, 0)), Some(0));
        assert_eq!(Ipv4Cidr::prefix_of(Ipv4Addr::new(255, 0, 255, 0)), None);
    }

    #[test]
    fn bad_addresses_are_located_at_their_value() {
        let src = "[[network.link]]\nname = \"eth0\"\naddresses = [\"10.0.2.20/33\"]\n";
        let (l, c, m) = syntax(src);
        assert_eq!((l, c), (3, 13), "{m}"); // the array holding it
        assert!(m.contains("prefix \"33\""), "{m}");
        let (l, _, m) = syntax("[[network.link]]\nname = \"eth0\"\naddresses = [\"10.0.2/24\"]\n");
        assert_eq!(l, 3);
        assert!(m.contains("not an IPv4 address"), "{m}");
        let (l, _, m) = syntax("[[network.link]]\nname = \"e\"\naddresses = [\"10.0.2.9\"]\n");
        assert_eq!(l, 3);
        assert!(m.contains("ADDRESS/PREFIX"), "{m}");
        let (l, _, _) = syntax("[network]\ndns = [\"10.0.2\"]\n");
        assert_eq!(l, 2);
        let (l, _, m) = syntax("[network]\n[[network.link]]\nname = \"e\"\nmtu = 9000\n");
        assert_eq!(l, 4);
        assert!(m.contains("mtu"), "{m}");
        let (l, _, _) = syntax("[[network.link]]\nname = \"e\"\naddresses = [\"10.0.0.2/8\"]\ngateway = \"10.0.0.256\"\n");
        assert_eq!(l, 4);
    }

    #[test]
    fn network_semantic_errors_name_the_link() {
        let inv = |src: &str| match MachineConfig::parse(src, "m.toml") {
            Err(ConfigError::Invalid { what, .. }) => what,
            other => panic!("expected invalid, got {other:?}"),
        };
        let l = "[[network.link]]\nname = ";
        assert!(inv(&format!("{l}\"eth0/x\"")).contains("interface name"));
        assert!(inv(&format!("{l}\"a-very-long-ifname\"")).contains("interface name"));
        assert!(inv(&format!("{l}\"e\"\n{l}\"e\"")).contains("defined twice"));
        assert!(inv(&format!(
            "{l}\"e\"\ndhcp = true\naddresses = [\"10.0.0.2/8\"]"
        ))
        .contains("choose one"));
        assert!(inv(&format!("{l}\"e\"\ndhcp = false")).contains("needs static"));
        assert!(inv(&format!(
            "{l}\"e\"\naddresses = [\"10.0.0.2/8\"]\ngateway = \"11.0.0.1\""
        ))
        .contains("none of the link's subnets"));
        assert!(inv(&format!("{l}\"e\"\ngateway = \"11.0.0.1\"")).contains("without static"));
        assert!(inv(&format!("{l}\"e\"\naddresses = [\"0.0.0.0/8\"]")).contains("not a host"));
        assert!(
            inv("[[network.route]]\nto = \"10.9.1.0/16\"\nvia = \"10.0.0.1\"")
                .contains("host bits")
        );
        assert!(inv(&format!(
            "{l}\"e\"\n[[network.route]]\nto = \"10.9.0.0/16\"\nvia = \"10.0.0.1\"\nlink = \"f\""
        ))
        .contains("not a configured"));
        assert!(inv("[time]\nservers = [\"bad host\"]").contains("time server"));
    }

    #[test]
    fn sysctl_overrides_parse_and_are_checked() {
        let c = MachineConfig::parse(
            "[sysctl]\nnet.ipv4.ip_forward = 1\n\"kernel.yama.ptrace_scope\" = 3\n\"net.ipv4.tcp_rmem\" = \"4096 131072 6291456\"\n",
            "m.toml",
        )
        .unwrap();
        let got: Vec<(&str, &str)> = c
            .sysctl
            .iter()
            .map(|(k, v)| (k.as_str(), v.as_str()))
            .collect();
        assert_eq!(
            got,
            [
                ("kernel.yama.ptrace_scope", "3"),
                ("net.ipv4.ip_forward", "1"),
                ("net.ipv4.tcp_rmem", "4096 131072 6291456")
            ]
        );
        let inv = |src: &str| match MachineConfig::parse(src, "m.toml") {
            Err(ConfigError::Invalid { what, .. }) => what,
            other => panic!("expected invalid, got {other:?}"),
        };
        let e = inv("[sysctl]\n\"kernel.kptr_restrict\" = 0\n");
        assert!(
            e.starts_with(
                "sysctl.\"kernel.kptr_restrict\": not in the set machine config may change ("
            ) && e.contains("net.ipv4.ip_forward"),
            "{e}"
        );
        assert!(inv("[sysctl]\nkernel.modprobe = 1\n").contains("sysctl.\"kernel.modprobe\""));
        assert!(inv("[sysctl]\nkernel.yama.ptrace_scope = 0\n").contains("outside 2..=3"));
        // a bad value is a syntax error at the table, with the field named
        let (l, _, m) = syntax("hostname = \"n\"\n[sysctl]\nvm.swappiness = \"10; reboot\"\n");
        assert_eq!(l, 2, "{m}");
        assert!(
            m.contains("sysctl.\"vm.swappiness\"") && m.contains("';'"),
            "{m}"
        );
        let (_, _, m) = syntax("[sysctl]\nvm.swappiness = true\n");
        assert!(m.contains("a boolean"), "{m}");
    }

    #[test]
    fn line_col_counts_characters() {
        assert_eq!(line_col("ab\ncé d", 6), (2, 3));
        assert_eq!(line_col("x", 99), (1, 2));
    }
}
