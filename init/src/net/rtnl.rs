//! Links, addresses and routes through rtnetlink (synchronous: one request,
//! then its answer), with messages built by `netlink-packet-route`.

use contract::machine::Ipv4Cidr;
use netlink_packet_core::{
    NetlinkHeader, NetlinkMessage, NetlinkPayload, NLM_F_ACK, NLM_F_CREATE, NLM_F_DUMP,
    NLM_F_REPLACE, NLM_F_REQUEST,
};
use netlink_packet_route::address::{AddressAttribute, AddressMessage, AddressScope};
use netlink_packet_route::link::{LinkAttribute, LinkFlags, LinkMessage};
use netlink_packet_route::route::{
    RouteAddress, RouteAttribute, RouteHeader, RouteMessage, RouteProtocol, RouteScope, RouteType,
};
use netlink_packet_route::{AddressFamily, RouteNetlinkMessage};
use netlink_sys::{protocols::NETLINK_ROUTE, Socket, SocketAddr};
use std::io;
use std::net::{IpAddr, Ipv4Addr};
use std::os::fd::{AsRawFd, RawFd};

/// rtnetlink multicast group of link changes (RTMGRP_LINK).
const RTMGRP_LINK: u32 = 1;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LinkInfo {
    pub index: u32,
    pub name: String,
    pub mac: Option<[u8; 6]>,
    pub up: bool,
    /// IFF_LOWER_UP: the driver sees carrier.
    pub carrier: bool,
    pub loopback: bool,
}

pub fn link_info(m: &LinkMessage) -> LinkInfo {
    let mut name = String::new();
    let mut mac = None;
    for a in &m.attributes {
        match a {
            LinkAttribute::IfName(n) => name = n.clone(),
            LinkAttribute::Address(a) if a.len() == 6 => {
                let mut b = [0u8; 6];
                b.copy_from_slice(a);
                mac = Some(b);
            }
            _ => {}
        }
    }
    let f = m.header.flags;
    LinkInfo {
        index: m.header.index,
        name,
        mac,
        up: f.contains(LinkFlags::Up),
        carrier: f.contains(LinkFlags::LowerUp),
        loopback: f.contains(LinkFlags::Loopback),
    }
}

fn errno(e: &netlink_packet_core::ErrorMessage) -> Option<io::Error> {
    e.code.map(|c| io::Error::from_raw_os_error(-c.get()))
}

fn socket() -> io::Result<Socket> {
    let mut s = Socket::new(NETLINK_ROUTE)?;
    s.bind_auto()?;
    Ok(s)
}

/// Reads datagrams until `done` says the exchange is over.
fn read_messages(
    s: &Socket,
    mut each: impl FnMut(NetlinkMessage<RouteNetlinkMessage>) -> io::Result<bool>,
) -> io::Result<()> {
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        let n = s.recv(&mut &mut buf[..], 0)?;
        let mut off = 0;
        while off < n {
            let msg = NetlinkMessage::<RouteNetlinkMessage>::deserialize(&buf[off..n])
                .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e.to_string()))?;
            let len = msg.header.length as usize;
            if each(msg)? {
                return Ok(());
            }
            if len == 0 {
                break;
            }
            off += len;
        }
    }
}

/// The request socket.
pub struct Rtnl {
    sock: Socket,
    seq: u32,
}

impl Rtnl {
    pub fn open() -> io::Result<Rtnl> {
        Ok(Rtnl {
            sock: socket()?,
            seq: 0,
        })
    }

    fn send(&mut self, msg: RouteNetlinkMessage, flags: u16) -> io::Result<u32> {
        self.seq += 1;
        let mut h = NetlinkHeader::default();
        h.flags = NLM_F_REQUEST | flags;
        h.sequence_number = self.seq;
        let mut m = NetlinkMessage::new(h, NetlinkPayload::from(msg));
        m.finalize();
        let mut buf = vec![0; m.header.length as usize];
        m.serialize(&mut buf);
        self.sock.send_to(&buf, &SocketAddr::new(0, 0), 0)?;
        Ok(self.seq)
    }

    /// A change request: waits for the kernel's ACK or error.
    fn change(&mut self, msg: RouteNetlinkMessage, flags: u16) -> io::Result<()> {
        let seq = self.send(msg, NLM_F_ACK | flags)?;
        let mut result = Ok(());
        read_messages(&self.sock, |m| {
            if m.header.sequence_number != seq {
                return Ok(false);
            }
            if let NetlinkPayload::Error(e) = &m.payload {
                if let Some(err) = errno(e) {
                    result = Err(err);
                }
                return Ok(true);
            }
            Ok(false)
        })?;
        result
    }

    pub fn links(&mut self) -> io::Result<Vec<LinkInfo>> {
        let seq = self.send(
            RouteNetlinkMessage::GetLink(LinkMessage::default()),
            NLM_F_DUMP,
        )?;
        let mut out = Vec::new();
        let mut result = Ok(());
        read_messages(&self.sock, |m| {
            if m.header.sequence_number != seq {
                return Ok(false);
            }
            match m.payload {
                NetlinkPayload::Done(_) => return Ok(true),
                NetlinkPayload::Error(e) => {
                    result = Err(errno(&e).unwrap_or_else(|| io::Error::other("dump ended early")));
                    return Ok(true);
                }
                NetlinkPayload::InnerMessage(RouteNetlinkMessage::NewLink(l)) => {
                    out.push(link_info(&l))
                }
                _ => {}
            }
            Ok(false)
        })?;
        result?;
        out.sort_by_key(|l| l.index);
        Ok(out)
    }

    pub fn set_up(&mut self, index: u32) -> io::Result<()> {
        let mut m = LinkMessage::default();
        m.header.index = index;
        m.header.flags = LinkFlags::Up;
        m.header.change_mask = LinkFlags::Up;
        self.change(RouteNetlinkMessage::SetLink(m), 0)
    }

    fn address(index: u32, a: &Ipv4Cidr) -> AddressMessage {
        let mut m = AddressMessage::default();
        m.header.family = AddressFamily::Inet;
        m.header.prefix_len = a.prefix;
        m.header.scope = AddressScope::Universe;
        m.header.index = index;
        let ip = IpAddr::V4(a.addr);
        m.attributes.push(AddressAttribute::Local(ip));
        m.attributes.push(AddressAttribute::Address(ip));
        if a.prefix < 31 {
            let bcast = u32::from(a.network()) | !u32::from(a.netmask());
            m.attributes
                .push(AddressAttribute::Broadcast(Ipv4Addr::from(bcast)));
        }
        m
    }

    /// Adds (or refreshes) an address on a link.
    pub fn add_address(&mut self, index: u32, a: &Ipv4Cidr) -> io::Result<()> {
        self.change(
            RouteNetlinkMessage::NewAddress(Self::address(index, a)),
            NLM_F_CREATE | NLM_F_REPLACE,
        )
    }

    pub fn del_address(&mut self, index: u32, a: &Ipv4Cidr) -> io::Result<()> {
        self.change(RouteNetlinkMessage::DelAddress(Self::address(index, a)), 0)
    }

    fn route(
        index: Option<u32>,
        to: &Ipv4Cidr,
        via: Ipv4Addr,
        proto: RouteProtocol,
    ) -> RouteMessage {
        let mut m = RouteMessage::default();
        let h = &mut m.header;
        h.address_family = AddressFamily::Inet;
        h.destination_prefix_length = to.prefix;
        h.table = RouteHeader::RT_TABLE_MAIN;
        h.protocol = proto;
        h.scope = RouteScope::Universe;
        h.kind = RouteType::Unicast;
        if to.prefix > 0 {
            m.attributes
                .push(RouteAttribute::Destination(RouteAddress::Inet(
                    to.network(),
                )));
        }
        m.attributes
            .push(RouteAttribute::Gateway(RouteAddress::Inet(via)));
        if let Some(i) = index {
            m.attributes.push(RouteAttribute::Oif(i));
        }
        m
    }

    /// Adds or replaces the route to `to` via `via` (`0.0.0.0/0`: default).
    pub fn replace_route(
        &mut self,
        index: Option<u32>,
        to: &Ipv4Cidr,
        via: Ipv4Addr,
        dhcp: bool,
    ) -> io::Result<()> {
        let proto = if dhcp {
            RouteProtocol::Dhcp
        } else {
            RouteProtocol::Static
        };
        self.change(
            RouteNetlinkMessage::NewRoute(Self::route(index, to, via, proto)),
            NLM_F_CREATE | NLM_F_REPLACE,
        )
    }
}

/// A socket subscribed to link changes (carrier up and down).
pub struct Monitor {
    sock: Socket,
}

impl Monitor {
    pub fn open() -> io::Result<Monitor> {
        let mut s = Socket::new(NETLINK_ROUTE)?;
        s.bind(&SocketAddr::new(0, RTMGRP_LINK))?;
        s.set_non_blocking(true)?;
        Ok(Monitor { sock: s })
    }

    pub fn fd(&self) -> RawFd {
        self.sock.as_raw_fd()
    }

    /// Whether any link change was announced since the last call (never
    /// blocks). The caller then reads every link again: a missed message
    /// (a full socket buffer) cannot leave it with a stale view.
    pub fn drain(&self) -> bool {
        let mut any = false;
        let r = read_messages(&self.sock, |_| {
            any = true;
            Ok(false)
        });
        // ENOBUFS: messages were dropped; something changed.
        any || matches!(r, Err(e) if e.raw_os_error() == Some(libc::ENOBUFS))
    }
}
