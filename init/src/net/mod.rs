//! The network manager: a thread of PID 1 beside the supervisor. It brings
//! links up, runs a DHCPv4 client per link with carrier (or applies the
//! static config), follows carrier changes, keeps `/etc/resolv.conf` and
//! the JSON state under /run, and sets the clock by SNTP.
//!
//! Nothing here can fail the boot: errors are console lines and retries.
//! Health and blessing never wait for the network.
//!
//! Privilege: as a thread it runs with PID 1's capabilities. It needs only
//! CAP_NET_ADMIN (links, addresses, routes), CAP_NET_BIND_SERVICE and
//! CAP_NET_RAW (port 68, SO_BINDTODEVICE) and CAP_SYS_TIME (SNTP step);
//! moving it into a child holding just those is issue 16's to do.

pub mod dhcp;
pub mod rtnl;
pub mod sntp;
pub mod status;
pub mod wire;

use crate::say;
use contract::machine::{Ipv4Cidr, Link, MachineConfig, Network, Time};
use dhcp::{Action, Client, Dest, Lease};
use rtnl::{LinkInfo, Monitor, Rtnl};
use status::{LinkStatus, Status, TimeStatus};
use std::collections::BTreeMap;
use std::io;
use std::net::{IpAddr, Ipv4Addr, SocketAddrV4, UdpSocket};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::path::Path;
use std::sync::{Condvar, Mutex};
use std::time::{Duration, Instant};

/// What the config says to do with a link.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Plan {
    Dhcp,
    Static(Link),
    /// Loopback, or a link the config does not name.
    Ignore,
}

/// With no links named, DHCP on every link but loopback; else only the
/// named ones, each as configured.
pub fn plan_for(cfg: &Network, link: &LinkInfo) -> Plan {
    if link.loopback {
        return Plan::Ignore;
    }
    if cfg.links.is_empty() {
        return if link.mac.is_some() {
            Plan::Dhcp
        } else {
            Plan::Ignore
        };
    }
    match cfg.links.iter().find(|l| l.name == link.name) {
        Some(l) if l.uses_dhcp() && link.mac.is_some() => Plan::Dhcp,
        Some(l) if !l.uses_dhcp() => Plan::Static(l.clone()),
        _ => Plan::Ignore,
    }
}

/// The console line of a configured link.
pub fn up_line(name: &str, addr: &Ipv4Cidr, gw: Option<Ipv4Addr>) -> String {
    match gw {
        Some(g) => format!("network up {name} {addr} gw {g}"),
        None => format!("network up {name} {addr}"),
    }
}

/// The console line when nobody answers.
pub fn no_answer_line(name: &str, retry_in: Duration) -> String {
    format!(
        "network {name}: no DHCP answer, retrying in {:.1}s",
        retry_in.as_secs_f64()
    )
}

const DEFAULT_ROUTE: Ipv4Cidr = Ipv4Cidr {
    addr: Ipv4Addr::UNSPECIFIED,
    prefix: 0,
};
const TIME_RETRY_FIRST: Duration = Duration::from_secs(30);
const TIME_RETRY_MAX: Duration = Duration::from_secs(3600);
const TIME_INTERVAL: Duration = Duration::from_secs(3600);
/// The longest sleep: a bound on how stale a missed event could leave us.
const MAX_WAIT: Duration = Duration::from_secs(60);

struct DhcpLink {
    client: Client,
    sock: UdpSocket,
}

struct Managed {
    info: LinkInfo,
    plan: Plan,
    dhcp: Option<DhcpLink>,
    /// What is configured on the link now: (addresses, gateway, dns).
    applied: Option<Lease>,
    static_done: bool,
}

/// A UDP socket on port 68 of one interface: SO_BINDTODEVICE keeps each
/// link's exchange on that link, and broadcasts leave with source 0.0.0.0
/// while the link has no address yet.
fn dhcp_socket(ifname: &str) -> io::Result<UdpSocket> {
    let one: libc::c_int = 1;
    let opt = |fd: libc::c_int, name, val: *const libc::c_void, len| {
        // SAFETY: `val` points to `len` readable bytes for the call.
        if unsafe { libc::setsockopt(fd, libc::SOL_SOCKET, name, val, len) } < 0 {
            Err(io::Error::last_os_error())
        } else {
            Ok(())
        }
    };
    // SAFETY: plain socket(2).
    let fd = unsafe {
        libc::socket(
            libc::AF_INET,
            libc::SOCK_DGRAM | libc::SOCK_CLOEXEC | libc::SOCK_NONBLOCK,
            0,
        )
    };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: a fresh descriptor we own from here on.
    let owned = unsafe { OwnedFd::from_raw_fd(fd) };
    let int = std::mem::size_of::<libc::c_int>() as libc::socklen_t;
    let p = (&one as *const libc::c_int).cast();
    opt(fd, libc::SO_REUSEADDR, p, int)?;
    opt(fd, libc::SO_BROADCAST, p, int)?;
    opt(
        fd,
        libc::SO_BINDTODEVICE,
        ifname.as_ptr().cast(),
        ifname.len() as libc::socklen_t,
    )?;
    // SAFETY: plain data, fields set below.
    let mut sa: libc::sockaddr_in = unsafe { std::mem::zeroed() };
    sa.sin_family = libc::AF_INET as libc::sa_family_t;
    sa.sin_port = wire::CLIENT_PORT.to_be();
    // SAFETY: `sa` is a valid sockaddr_in of the given length.
    let r = unsafe {
        libc::bind(
            fd,
            (&sa as *const libc::sockaddr_in).cast(),
            std::mem::size_of::<libc::sockaddr_in>() as libc::socklen_t,
        )
    };
    if r < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(UdpSocket::from(owned))
}

/// Waits until one of `fds` is readable or `timeout` passes; returns the
/// readable ones' positions.
fn wait_readable(fds: &[libc::c_int], timeout: Duration) -> Vec<usize> {
    let mut p: Vec<libc::pollfd> = fds
        .iter()
        .map(|&fd| libc::pollfd {
            fd,
            events: libc::POLLIN,
            revents: 0,
        })
        .collect();
    let ms = timeout.as_millis().min(i32::MAX as u128) as libc::c_int;
    // SAFETY: `p` is a valid array of `p.len()` pollfds.
    let n = unsafe { libc::poll(p.as_mut_ptr(), p.len() as libc::nfds_t, ms) };
    if n <= 0 {
        return Vec::new();
    }
    p.iter()
        .enumerate()
        .filter(|(_, q)| q.revents != 0)
        .map(|(i, _)| i)
        .collect()
}

struct Manager {
    cfg: Network,
    time: Time,
    hostname: Option<String>,
    rtnl: Rtnl,
    mon: Monitor,
    links: BTreeMap<u32, Managed>,
    generation: u32,
    epoch: Instant,
    resolv: Option<String>,
    status: Option<String>,
    time_status: TimeStatus,
    time_due: Option<Duration>,
    time_retry: Duration,
}

/// Whether some link has an address: the update agent waits for it before
/// its first check, which could only fail without one.
static UP: Mutex<bool> = Mutex::new(false);
static UP_CHANGED: Condvar = Condvar::new();

fn mark_up() {
    *UP.lock().unwrap_or_else(|e| e.into_inner()) = true;
    UP_CHANGED.notify_all();
}

/// Waits until some link has an address, at most `timeout`; whether it has.
pub fn wait_up(timeout: Duration) -> bool {
    let guard = UP.lock().unwrap_or_else(|e| e.into_inner());
    let (guard, _) = UP_CHANGED
        .wait_timeout_while(guard, timeout, |up| !*up)
        .unwrap_or_else(|e| e.into_inner());
    *guard
}

/// Starts the manager thread. Returns at once; failures are logged.
pub fn spawn(cfg: &MachineConfig) {
    let network = cfg.network.clone();
    let time = cfg.time.clone();
    let hostname = cfg.hostname.clone();
    let r = std::thread::Builder::new()
        .name("cairn-net".into())
        .spawn(move || {
            let mut m = match Manager::new(network, time, hostname) {
                Ok(m) => m,
                Err(e) => {
                    say!("network: cannot open rtnetlink: {e}; no networking this boot");
                    return;
                }
            };
            m.run()
        });
    if let Err(e) = r {
        say!("network: cannot start the manager thread: {e}");
    }
}

impl Manager {
    fn new(cfg: Network, time: Time, hostname: Option<String>) -> io::Result<Manager> {
        Ok(Manager {
            time_status: TimeStatus {
                servers: time.servers.clone(),
                ..TimeStatus::default()
            },
            cfg,
            time,
            hostname,
            rtnl: Rtnl::open()?,
            mon: Monitor::open()?,
            links: BTreeMap::new(),
            generation: 0,
            epoch: Instant::now(),
            resolv: None,
            status: None,
            time_due: None,
            time_retry: TIME_RETRY_FIRST,
        })
    }

    fn now(&self) -> Duration {
        self.epoch.elapsed()
    }

    fn run(&mut self) -> ! {
        self.publish();
        self.refresh_links();
        loop {
            let now = self.now();
            let next = self
                .links
                .values()
                .filter_map(|l| l.dhcp.as_ref().map(|d| d.client.deadline()))
                .chain(self.time_due)
                .min()
                .unwrap_or(now + MAX_WAIT);
            let wait = next.saturating_sub(now).min(MAX_WAIT);
            let mut fds = vec![self.mon.fd()];
            let mut owners = vec![0u32];
            for (i, l) in &self.links {
                if let Some(d) = &l.dhcp {
                    fds.push(d.sock.as_raw_fd());
                    owners.push(*i);
                }
            }
            for r in wait_readable(&fds, wait) {
                if r == 0 {
                    if self.mon.drain() {
                        self.refresh_links();
                    }
                } else {
                    self.receive(owners[r]);
                }
            }
            let now = self.now();
            let indexes: Vec<u32> = self.links.keys().copied().collect();
            for i in indexes {
                let actions = match self.links.get_mut(&i).and_then(|l| l.dhcp.as_mut()) {
                    Some(d) => d.client.poll(now),
                    None => continue,
                };
                self.act(i, actions);
            }
            if self.time_due.is_some_and(|t| t <= now) {
                self.sync_time();
            }
            self.publish();
        }
    }

    /// Reads every link again and reacts to what changed.
    fn refresh_links(&mut self) {
        let infos = match self.rtnl.links() {
            Ok(l) => l,
            Err(e) => {
                say!("network: listing links: {e}");
                return;
            }
        };
        let present: Vec<u32> = infos.iter().map(|l| l.index).collect();
        self.links.retain(|i, _| present.contains(i));
        for info in infos {
            let index = info.index;
            if !self.links.contains_key(&index) {
                let plan = plan_for(&self.cfg, &info);
                if (info.loopback || plan != Plan::Ignore) && !info.up {
                    if let Err(e) = self.rtnl.set_up(index) {
                        say!("network {}: bringing the link up: {e}", info.name);
                    }
                }
                self.links.insert(
                    index,
                    Managed {
                        info: info.clone(),
                        plan,
                        dhcp: None,
                        applied: None,
                        static_done: false,
                    },
                );
            }
            self.update_link(index, info);
        }
    }

    fn update_link(&mut self, index: u32, info: LinkInfo) {
        let Some(l) = self.links.get_mut(&index) else {
            return;
        };
        let had_carrier = l.info.carrier;
        l.info = info;
        match l.plan.clone() {
            Plan::Ignore => {}
            Plan::Static(link) => {
                if !l.static_done {
                    l.static_done = true;
                    self.apply_static(index, &link);
                }
            }
            Plan::Dhcp => {
                let name = l.info.name.clone();
                if l.info.carrier && l.dhcp.is_none() {
                    let Some(mac) = l.info.mac else { return };
                    match dhcp_socket(&name) {
                        Ok(sock) => {
                            self.generation += 1;
                            let client = Client::new(mac, self.generation, self.now());
                            if let Some(l) = self.links.get_mut(&index) {
                                l.dhcp = Some(DhcpLink { client, sock });
                            }
                        }
                        Err(e) => say!("network {name}: DHCP socket: {e}"),
                    }
                } else if !l.info.carrier && l.dhcp.is_some() {
                    // The lease stays configured: the link may come back to
                    // the same network. It is confirmed by DHCP then.
                    l.dhcp = None;
                    net_event(format!("network {name}: carrier lost"));
                } else if l.info.carrier && !had_carrier {
                    net_event(format!("network {name}: carrier"));
                }
            }
        }
    }

    fn receive(&mut self, index: u32) {
        let mut buf = [0u8; 1500];
        loop {
            let Some(l) = self.links.get_mut(&index) else {
                return;
            };
            let Some(d) = l.dhcp.as_mut() else { return };
            let Some(mac) = l.info.mac else { return };
            let n = match d.sock.recv_from(&mut buf) {
                Ok((n, _)) => n,
                Err(_) => return, // EAGAIN: drained
            };
            let Some(reply) = wire::decode(&mac, &buf[..n]) else {
                continue;
            };
            let now = self.epoch.elapsed();
            let actions = d.client.on_reply(&reply, now);
            self.act(index, actions);
        }
    }

    fn act(&mut self, index: u32, actions: Vec<Action>) {
        for a in actions {
            let Some(l) = self.links.get(&index) else {
                return;
            };
            let name = l.info.name.clone();
            match a {
                Action::Send { xid, request, to } => {
                    let (Some(d), Some(mac)) = (&l.dhcp, l.info.mac) else {
                        continue;
                    };
                    let bytes = wire::encode(&mac, xid, &request, self.hostname.as_deref());
                    let ip = match to {
                        Dest::Broadcast => Ipv4Addr::BROADCAST,
                        Dest::Unicast(ip) => ip,
                    };
                    if let Err(e) = d
                        .sock
                        .send_to(&bytes, SocketAddrV4::new(ip, wire::SERVER_PORT))
                    {
                        say!("network {name}: sending DHCP to {ip}: {e}");
                    }
                }
                Action::NoAnswer { retry_in } => say!("{}", no_answer_line(&name, retry_in)),
                Action::Bound(lease) => self.bound(index, lease),
                Action::Lost { lease, why } => {
                    if let Err(e) = self.rtnl.del_address(index, &lease.addr) {
                        say!("network {name}: removing {}: {e}", lease.addr);
                    }
                    if let Some(l) = self.links.get_mut(&index) {
                        l.applied = None;
                    }
                    net_event(format!("network {name}: {why}; {} removed", lease.addr));
                }
            }
        }
    }

    fn bound(&mut self, index: u32, lease: Lease) {
        let Some(l) = self.links.get(&index) else {
            return;
        };
        let name = l.info.name.clone();
        let old = l.applied.clone();
        let same = old
            .as_ref()
            .is_some_and(|o| o.addr == lease.addr && o.gateway == lease.gateway);
        if same {
            say!(
                "network {name}: lease of {} renewed for {}s",
                lease.addr,
                lease.lease.as_secs()
            );
        } else {
            if let Some(o) = &old {
                if o.addr != lease.addr {
                    let _ = self.rtnl.del_address(index, &o.addr);
                }
            }
            if let Err(e) = self.rtnl.add_address(index, &lease.addr) {
                say!("network {name}: adding {}: {e}", lease.addr);
                return;
            }
            if let Some(gw) = lease.gateway {
                if let Err(e) = self
                    .rtnl
                    .replace_route(Some(index), &DEFAULT_ROUTE, gw, true)
                {
                    say!("network {name}: default route via {gw}: {e}");
                }
            }
            net_event(up_line(&name, &lease.addr, lease.gateway));
            self.apply_routes();
        }
        if let Some(l) = self.links.get_mut(&index) {
            l.applied = Some(lease);
        }
        self.network_up();
    }

    fn apply_static(&mut self, index: u32, link: &Link) {
        for a in &link.addresses {
            if let Err(e) = self.rtnl.add_address(index, a) {
                say!("network {}: adding {a}: {e}", link.name);
                continue;
            }
            net_event(up_line(
                &link.name,
                a,
                link.gateway.filter(|g| a.contains(*g)),
            ));
        }
        if let Some(gw) = link.gateway {
            if let Err(e) = self
                .rtnl
                .replace_route(Some(index), &DEFAULT_ROUTE, gw, false)
            {
                say!("network {}: default route via {gw}: {e}", link.name);
            }
        }
        if let (Some(l), Some(a)) = (self.links.get_mut(&index), link.addresses.first()) {
            l.applied = Some(Lease {
                addr: *a,
                gateway: link.gateway,
                dns: Vec::new(),
                server: Ipv4Addr::UNSPECIFIED,
                lease: Duration::ZERO,
                t1: Duration::ZERO,
                t2: Duration::ZERO,
            });
        }
        self.apply_routes();
        self.network_up();
    }

    /// The configured extra routes, (re)applied after each address change:
    /// a route's gateway must be reachable when it is added.
    fn apply_routes(&mut self) {
        for r in self.cfg.routes.clone() {
            let index = r.link.as_ref().and_then(|n| {
                self.links
                    .iter()
                    .find(|(_, l)| &l.info.name == n)
                    .map(|(i, _)| *i)
            });
            if r.link.is_some() && index.is_none() {
                continue; // its link is not here (yet)
            }
            if let Err(e) = self.rtnl.replace_route(index, &r.to, r.via, false) {
                say!("network: route {} via {}: {e}", r.to, r.via);
            }
        }
    }

    /// Called when an address was configured: first time sync due.
    fn network_up(&mut self) {
        mark_up();
        if !self.time.servers.is_empty() && self.time_due.is_none() {
            self.time_due = Some(self.now());
        }
    }

    fn sync_time(&mut self) {
        let mut errors = Vec::new();
        for s in self.time.servers.clone() {
            match sntp::query(&s) {
                Ok(off) => {
                    let step = sntp::needs_step(off);
                    let mut stepped = false;
                    if step {
                        match sntp::step_clock(off) {
                            Ok(()) => stepped = true,
                            Err(e) => say!("time: stepping the clock: {e}"),
                        }
                    }
                    say!(
                        "time: {s} offset {:+.3}s, clock {}",
                        off as f64 / 1e6,
                        if stepped { "stepped" } else { "kept" }
                    );
                    self.time_status.last_server = Some(s);
                    self.time_status.last_offset_us = Some(off);
                    self.time_status.stepped |= stepped;
                    self.time_status.last_error = None;
                    self.time_retry = TIME_RETRY_FIRST;
                    self.time_due = Some(self.now() + TIME_INTERVAL);
                    return;
                }
                Err(e) => errors.push(e),
            }
        }
        let errs = errors.join("; ");
        say!(
            "time: no SNTP answer ({errs}); retrying in {}s",
            self.time_retry.as_secs()
        );
        self.time_status.last_error = Some(errs);
        self.time_due = Some(self.now() + self.time_retry);
        self.time_retry = (self.time_retry * 2).min(TIME_RETRY_MAX);
    }

    /// Writes resolv.conf and the state file when they changed.
    fn publish(&mut self) {
        let learned: Vec<IpAddr> = self
            .links
            .values()
            .filter_map(|l| l.applied.as_ref())
            .flat_map(|a| a.dns.iter().map(|d| IpAddr::V4(*d)))
            .collect();
        let servers = status::nameservers(&self.cfg.dns, &learned);
        let text = status::resolv_conf(&servers);
        if self.resolv.as_deref() != Some(text.as_str()) {
            match status::write_atomic(Path::new(contract::machine::RESOLV_CONF), &text) {
                Ok(()) => {
                    if !servers.is_empty() {
                        let list: Vec<String> = servers.iter().map(|s| s.to_string()).collect();
                        say!("resolv.conf: nameserver {}", list.join(", "));
                    }
                    self.resolv = Some(text);
                }
                Err(e) => say!("network: writing {}: {e}", contract::machine::RESOLV_CONF),
            }
        }
        let st = Status {
            links: self.links.values().map(link_status).collect(),
            dns: servers.iter().map(|s| s.to_string()).collect(),
            time: self.time_status.clone(),
        };
        let json = serde_json::to_string_pretty(&st).unwrap_or_default() + "\n";
        if self.status.as_deref() != Some(json.as_str()) {
            if let Err(e) = status::write_atomic(Path::new(contract::machine::NETWORK_STATE), &json)
            {
                say!("network: writing {}: {e}", contract::machine::NETWORK_STATE);
            }
            self.status = Some(json);
            crate::status::refresh();
        }
    }
}

fn link_status(l: &Managed) -> LinkStatus {
    let (mode, state) = match (&l.plan, &l.dhcp) {
        (Plan::Ignore, _) => ("unmanaged", String::new()),
        (Plan::Static(_), _) => ("static", "configured".to_string()),
        (Plan::Dhcp, Some(d)) => ("dhcp", d.client.state_name().to_string()),
        (Plan::Dhcp, None) => ("dhcp", "no-carrier".to_string()),
    };
    let mut addresses = Vec::new();
    if let Plan::Static(s) = &l.plan {
        addresses = s.addresses.iter().map(|a| a.to_string()).collect();
    } else if let Some(a) = &l.applied {
        addresses.push(a.addr.to_string());
    }
    let dhcp = l.applied.as_ref().filter(|_| l.plan == Plan::Dhcp);
    LinkStatus {
        name: l.info.name.clone(),
        mac: status::mac_text(&l.info.mac),
        carrier: l.info.carrier,
        mode,
        state,
        addresses,
        gateway: l
            .applied
            .as_ref()
            .and_then(|a| a.gateway)
            .map(|g| g.to_string()),
        dns: l
            .applied
            .as_ref()
            .map(|a| a.dns.iter().map(|d| d.to_string()).collect())
            .unwrap_or_default(),
        dhcp_server: dhcp.map(|a| a.server.to_string()),
        lease_s: dhcp.map(|a| a.lease.as_secs()),
    }
}

/// A console line that is also a network event (an address got or lost,
/// a carrier change) for the node API's event stream.
fn net_event(msg: String) {
    say!("{msg}");
    crate::ring::event(contract::control::EventKind::Network, None, msg);
}

#[cfg(test)]
mod tests {
    use super::*;

    fn link(name: &str, loopback: bool) -> LinkInfo {
        LinkInfo {
            index: 2,
            name: name.into(),
            mac: Some([2, 0, 0, 0, 0, 1]),
            up: false,
            carrier: true,
            loopback,
        }
    }

    fn net(src: &str) -> Network {
        MachineConfig::parse(src, "m.toml").unwrap().network
    }

    #[test]
    fn default_is_dhcp_everywhere_but_loopback() {
        let n = net("");
        assert_eq!(plan_for(&n, &link("eth0", false)), Plan::Dhcp);
        assert_eq!(plan_for(&n, &link("enp0s3", false)), Plan::Dhcp);
        assert_eq!(plan_for(&n, &link("lo", true)), Plan::Ignore);
        let mut no_mac = link("tun0", false);
        no_mac.mac = None;
        assert_eq!(plan_for(&n, &no_mac), Plan::Ignore);
    }

    #[test]
    fn named_links_only_and_as_configured() {
        let n = net(
            "[[network.link]]\nname = \"eth0\"\n[[network.link]]\nname = \"eth1\"\naddresses = [\"10.0.3.2/24\"]\n",
        );
        assert_eq!(plan_for(&n, &link("eth0", false)), Plan::Dhcp);
        assert!(
            matches!(plan_for(&n, &link("eth1", false)), Plan::Static(l) if l.addresses.len() == 1)
        );
        assert_eq!(plan_for(&n, &link("eth2", false)), Plan::Ignore);
    }

    #[test]
    fn console_lines() {
        let a: Ipv4Cidr = "10.0.2.15/24".parse().unwrap();
        assert_eq!(
            up_line("eth0", &a, Some(Ipv4Addr::new(10, 0, 2, 2))),
            "network up eth0 10.0.2.15/24 gw 10.0.2.2"
        );
        assert_eq!(up_line("eth0", &a, None), "network up eth0 10.0.2.15/24");
        assert_eq!(
            no_answer_line("eth0", Duration::from_millis(4250)),
            "network eth0: no DHCP answer, retrying in 4.2s"
        );
    }
}
