//! DHCPv4 messages on the wire, through `dhcproto`: client messages from a
//! [`Request`], server messages into a [`Reply`] (or nothing, when the
//! message is not a reply to this hardware address).

use super::dhcp::{Reply, ReplyKind, Request};
use dhcproto::v4::{DhcpOption, Flags, Message, MessageType, Opcode, OptionCode};
use dhcproto::{Decodable, Decoder, Encodable, Encoder};
use std::net::Ipv4Addr;

pub const SERVER_PORT: u16 = 67;
pub const CLIENT_PORT: u16 = 68;
/// What we tell servers we accept (option 57): an Ethernet frame's IP payload.
const MAX_MESSAGE: u16 = 1500 - 28;

/// Client identifier (option 61): hardware type 1 (Ethernet) and the MAC.
fn client_id(mac: &[u8; 6]) -> Vec<u8> {
    let mut v = vec![1];
    v.extend_from_slice(mac);
    v
}

pub fn encode(mac: &[u8; 6], xid: u32, req: &Request, hostname: Option<&str>) -> Vec<u8> {
    let unspec = Ipv4Addr::UNSPECIFIED;
    let ciaddr = match req {
        Request::Extend { ciaddr } => *ciaddr,
        _ => unspec,
    };
    let mut m = Message::new_with_id(xid, ciaddr, unspec, unspec, unspec, mac);
    // Until the address is configured the kernel cannot take a unicast to
    // it: ask for broadcast replies.
    if ciaddr.is_unspecified() {
        m.set_flags(Flags::default().set_broadcast());
    }
    let o = m.opts_mut();
    o.insert(DhcpOption::MessageType(match req {
        Request::Discover => MessageType::Discover,
        _ => MessageType::Request,
    }));
    o.insert(DhcpOption::ClientIdentifier(client_id(mac)));
    o.insert(DhcpOption::MaxMessageSize(MAX_MESSAGE));
    o.insert(DhcpOption::ParameterRequestList(vec![
        OptionCode::SubnetMask,
        OptionCode::Router,
        OptionCode::DomainNameServer,
        OptionCode::AddressLeaseTime,
        OptionCode::Renewal,
        OptionCode::Rebinding,
    ]));
    if let Some(h) = hostname {
        o.insert(DhcpOption::Hostname(h.to_string()));
    }
    if let Request::Select { requested, server } = req {
        o.insert(DhcpOption::RequestedIpAddress(*requested));
        o.insert(DhcpOption::ServerIdentifier(*server));
    }
    let mut buf = Vec::with_capacity(300);
    // Encoding a message we built from valid parts cannot fail.
    let _ = m.encode(&mut Encoder::new(&mut buf));
    buf
}

/// A server's reply to `mac`; `None` for anything else (a request, another
/// client's reply, a message type we do not act on, malformed bytes).
pub fn decode(mac: &[u8; 6], bytes: &[u8]) -> Option<Reply> {
    let m = Message::decode(&mut Decoder::new(bytes)).ok()?;
    if m.opcode() != Opcode::BootReply || m.chaddr().get(..6) != Some(&mac[..]) {
        return None;
    }
    let o = m.opts();
    let kind = match o.msg_type()? {
        MessageType::Offer => ReplyKind::Offer,
        MessageType::Ack => ReplyKind::Ack,
        MessageType::Nak => ReplyKind::Nak,
        _ => return None,
    };
    let ip = |code| match o.get(code) {
        Some(DhcpOption::ServerIdentifier(a)) | Some(DhcpOption::SubnetMask(a)) => Some(*a),
        _ => None,
    };
    let secs = |code| match o.get(code) {
        Some(DhcpOption::AddressLeaseTime(s))
        | Some(DhcpOption::Renewal(s))
        | Some(DhcpOption::Rebinding(s)) => Some(*s),
        _ => None,
    };
    let router = match o.get(OptionCode::Router) {
        Some(DhcpOption::Router(r)) => r.first().copied(),
        _ => None,
    };
    let dns = match o.get(OptionCode::DomainNameServer) {
        Some(DhcpOption::DomainNameServer(d)) => d.clone(),
        _ => Vec::new(),
    };
    Some(Reply {
        kind,
        xid: m.xid(),
        yiaddr: m.yiaddr(),
        server: ip(OptionCode::ServerIdentifier),
        mask: ip(OptionCode::SubnetMask),
        router,
        dns,
        lease_s: secs(OptionCode::AddressLeaseTime),
        t1_s: secs(OptionCode::Renewal),
        t2_s: secs(OptionCode::Rebinding),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const MAC: [u8; 6] = [0x52, 0x54, 0x00, 0x12, 0x34, 0x56];

    /// An OFFER laid out byte by byte from RFC 2131 section 2 (what slirp
    /// sends a QEMU guest): not produced by dhcproto, so decoding is
    /// checked against the format, not against the encoder.
    fn offer_bytes(xid: u32, chaddr: [u8; 6], msg_type: u8) -> Vec<u8> {
        let mut b = vec![0u8; 236];
        b[0] = 2; // BOOTREPLY
        b[1] = 1; // Ethernet
        b[2] = 6;
        b[4..8].copy_from_slice(&xid.to_be_bytes());
        b[10] = 0x80; // broadcast flag
        b[16..20].copy_from_slice(&[10, 0, 2, 15]); // yiaddr
        b[20..24].copy_from_slice(&[10, 0, 2, 2]); // siaddr
        b[28..34].copy_from_slice(&chaddr);
        b.extend_from_slice(&[99, 130, 83, 99]); // magic cookie
        b.extend_from_slice(&[53, 1, msg_type]);
        b.extend_from_slice(&[54, 4, 10, 0, 2, 2]); // server id
        b.extend_from_slice(&[51, 4, 0, 1, 81, 128]); // lease 86400
        b.extend_from_slice(&[1, 4, 255, 255, 255, 0]); // mask
        b.extend_from_slice(&[3, 4, 10, 0, 2, 2]); // router
        b.extend_from_slice(&[6, 8, 10, 0, 2, 3, 10, 0, 2, 4]); // dns
        b.push(255);
        b
    }

    #[test]
    fn decodes_an_offer_laid_out_by_hand() {
        let r = decode(&MAC, &offer_bytes(0xdead_beef, MAC, 2)).expect("an offer");
        assert_eq!(r.kind, ReplyKind::Offer);
        assert_eq!(r.xid, 0xdead_beef);
        assert_eq!(r.yiaddr, Ipv4Addr::new(10, 0, 2, 15));
        assert_eq!(r.server, Some(Ipv4Addr::new(10, 0, 2, 2)));
        assert_eq!(r.mask, Some(Ipv4Addr::new(255, 255, 255, 0)));
        assert_eq!(r.router, Some(Ipv4Addr::new(10, 0, 2, 2)));
        assert_eq!(
            r.dns,
            [Ipv4Addr::new(10, 0, 2, 3), Ipv4Addr::new(10, 0, 2, 4)]
        );
        assert_eq!((r.lease_s, r.t1_s, r.t2_s), (Some(86400), None, None));
        let l = super::super::dhcp::lease_of(&r).unwrap();
        assert_eq!(l.addr.to_string(), "10.0.2.15/24");
        assert_eq!(
            decode(&MAC, &offer_bytes(1, MAC, 5)).unwrap().kind,
            ReplyKind::Ack
        );
        assert_eq!(
            decode(&MAC, &offer_bytes(1, MAC, 6)).unwrap().kind,
            ReplyKind::Nak
        );
    }

    #[test]
    fn ignores_what_is_not_a_reply_to_us() {
        let mut other = MAC;
        other[5] ^= 1;
        assert!(
            decode(&MAC, &offer_bytes(1, other, 2)).is_none(),
            "another client"
        );
        let mut req = offer_bytes(1, MAC, 2);
        req[0] = 1;
        assert!(decode(&MAC, &req).is_none(), "a BOOTREQUEST");
        assert!(
            decode(&MAC, &offer_bytes(1, MAC, 3)).is_none(),
            "a REQUEST type"
        );
        assert!(
            decode(&MAC, &offer_bytes(1, MAC, 2)[..100]).is_none(),
            "truncated"
        );
        assert!(decode(&MAC, b"").is_none());
    }

    /// Reads option `code` of an encoded message by walking the TLVs.
    fn option(b: &[u8], code: u8) -> Option<Vec<u8>> {
        assert_eq!(&b[236..240], &[99, 130, 83, 99]);
        let mut i = 240;
        while i < b.len() && b[i] != 255 {
            if b[i] == 0 {
                i += 1;
                continue;
            }
            let len = b[i + 1] as usize;
            if b[i] == code {
                return Some(b[i + 2..i + 2 + len].to_vec());
            }
            i += 2 + len;
        }
        None
    }

    #[test]
    fn client_messages_have_the_rfc_layout() {
        let d = encode(&MAC, 0x0102_0304, &Request::Discover, Some("cairn"));
        assert_eq!(d[0], 1, "BOOTREQUEST");
        assert_eq!(&d[4..8], &[1, 2, 3, 4]);
        assert_eq!(d[10] & 0x80, 0x80, "broadcast flag before an address");
        assert_eq!(&d[12..16], &[0; 4], "ciaddr");
        assert_eq!(&d[28..34], &MAC);
        assert_eq!(option(&d, 53), Some(vec![1]), "DISCOVER");
        assert_eq!(
            option(&d, 61),
            Some(vec![1, 0x52, 0x54, 0, 0x12, 0x34, 0x56])
        );
        assert_eq!(option(&d, 12), Some(b"cairn".to_vec()));
        let prl = option(&d, 55).unwrap();
        for c in [1, 3, 6, 51] {
            assert!(prl.contains(&c), "asks for option {c}");
        }
        assert_eq!(option(&d, 50), None);

        let sel = Request::Select {
            requested: Ipv4Addr::new(10, 0, 2, 15),
            server: Ipv4Addr::new(10, 0, 2, 2),
        };
        let r = encode(&MAC, 7, &sel, None);
        assert_eq!(option(&r, 53), Some(vec![3]), "REQUEST");
        assert_eq!(option(&r, 50), Some(vec![10, 0, 2, 15]));
        assert_eq!(option(&r, 54), Some(vec![10, 0, 2, 2]));

        let ext = Request::Extend {
            ciaddr: Ipv4Addr::new(10, 0, 2, 15),
        };
        let e = encode(&MAC, 8, &ext, None);
        assert_eq!(&e[12..16], &[10, 0, 2, 15], "ciaddr when renewing");
        assert_eq!(e[10] & 0x80, 0, "unicast replies once configured");
        assert_eq!(
            option(&e, 50),
            None,
            "no requested address (RFC 2131 4.3.2)"
        );
        assert_eq!(option(&e, 54), None);
    }
}
