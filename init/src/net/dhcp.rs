//! The DHCPv4 client state machine (RFC 2131 section 4.4), free of I/O and
//! of the clock: `now` is any monotonic time the caller passes in, replies
//! arrive decoded ([`Reply`]), and what to do comes back as [`Action`]s.
//! The wire format lives in `wire`; the sockets and netlink in `manager`.

use contract::machine::Ipv4Cidr;
use std::net::Ipv4Addr;
use std::time::Duration;

/// How long a DISCOVER waits for an OFFER before the retry is announced.
pub const ANSWER_WAIT: Duration = Duration::from_secs(3);
/// Unanswered DISCOVERs back off from this, doubling, ...
pub const BACKOFF_BASE: Duration = Duration::from_secs(2);
/// ... up to this (plus jitter).
pub const BACKOFF_CAP: Duration = Duration::from_secs(64);
/// REQUEST retransmissions before selecting again.
pub const REQUEST_TRIES: u32 = 4;
/// Shortest wait between renewal (or rebinding) retransmissions (RFC 2131).
pub const MIN_RENEW_WAIT: Duration = Duration::from_secs(60);
/// Lease length assumed when an ACK omits option 51.
pub const DEFAULT_LEASE: Duration = Duration::from_secs(3600);

/// A lease as the link is configured from it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Lease {
    pub addr: Ipv4Cidr,
    pub gateway: Option<Ipv4Addr>,
    pub dns: Vec<Ipv4Addr>,
    pub server: Ipv4Addr,
    pub lease: Duration,
    pub t1: Duration,
    pub t2: Duration,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReplyKind {
    Offer,
    Ack,
    Nak,
}

/// A server's message, decoded and already checked to be for this client's
/// hardware address.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reply {
    pub kind: ReplyKind,
    pub xid: u32,
    pub yiaddr: Ipv4Addr,
    pub server: Option<Ipv4Addr>,
    pub mask: Option<Ipv4Addr>,
    pub router: Option<Ipv4Addr>,
    pub dns: Vec<Ipv4Addr>,
    pub lease_s: Option<u32>,
    pub t1_s: Option<u32>,
    pub t2_s: Option<u32>,
}

/// What a client message asks for; `wire::encode` turns it into bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Request {
    Discover,
    /// REQUEST in SELECTING: the offered address from that server.
    Select {
        requested: Ipv4Addr,
        server: Ipv4Addr,
    },
    /// REQUEST in RENEWING (unicast to the server) or REBINDING (broadcast).
    Extend {
        ciaddr: Ipv4Addr,
    },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Dest {
    Broadcast,
    Unicast(Ipv4Addr),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    Send {
        xid: u32,
        request: Request,
        to: Dest,
    },
    /// Configure the link from this lease (new, or extended: compare).
    Bound(Lease),
    /// The lease ran out or the server refused it: remove it from the link.
    Lost { lease: Lease, why: &'static str },
    /// Nobody answered a DISCOVER; the next goes out after `retry_in`.
    NoAnswer { retry_in: Duration },
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum State {
    /// DISCOVER `xid` sent at `sent` (none yet: `sent` is None).
    Selecting {
        xid: u32,
        sent: Option<Duration>,
    },
    Requesting {
        xid: u32,
        offer: Lease,
        tries: u32,
    },
    Bound {
        lease: Lease,
        since: Duration,
    },
    Renewing {
        xid: u32,
        lease: Lease,
        since: Duration,
    },
    Rebinding {
        xid: u32,
        lease: Lease,
        since: Duration,
    },
}

/// One link's client.
#[derive(Debug, Clone)]
pub struct Client {
    mac: [u8; 6],
    /// Distinguishes transaction ids across restarts of the client.
    generation: u32,
    seq: u32,
    /// Unanswered or refused attempts since the last lease: the backoff step.
    failures: u32,
    /// The id of the DISCOVER before the current one, whose OFFER is late.
    late: Option<u32>,
    state: State,
    deadline: Duration,
}

/// FNV-1a: spreads the MAC (and counters) into ids and jitter, so that
/// machines that boot together do not retry in step, without the clock
/// or a random source.
fn fnv(parts: &[&[u8]]) -> u32 {
    let mut h: u32 = 0x811c_9dc5;
    for p in parts {
        for b in *p {
            h ^= *b as u32;
            h = h.wrapping_mul(0x0100_0193);
        }
    }
    h
}

/// The wait before DISCOVER number `failures + 1`: exponential from
/// [`BACKOFF_BASE`] to [`BACKOFF_CAP`] plus up to one second of jitter
/// derived from the MAC and the step.
pub fn backoff(mac: &[u8; 6], failures: u32) -> Duration {
    let exp = BACKOFF_BASE
        .saturating_mul(1u32 << failures.min(16))
        .min(BACKOFF_CAP);
    let jitter_ms = fnv(&[mac, b"backoff", &failures.to_be_bytes()]) % 1000;
    exp + Duration::from_millis(jitter_ms as u64)
}

impl Client {
    /// A client that sends its first DISCOVER at `now`.
    pub fn new(mac: [u8; 6], generation: u32, now: Duration) -> Client {
        let mut c = Client {
            mac,
            generation,
            seq: 0,
            failures: 0,
            late: None,
            state: State::Selecting { xid: 0, sent: None },
            deadline: now,
        };
        c.state = State::Selecting {
            xid: c.next_xid(),
            sent: None,
        };
        c
    }

    fn next_xid(&mut self) -> u32 {
        self.seq += 1;
        fnv(&[
            &self.mac,
            &self.generation.to_be_bytes(),
            &self.seq.to_be_bytes(),
        ])
    }

    /// When [`Client::poll`] next has something to do.
    pub fn deadline(&self) -> Duration {
        self.deadline
    }

    /// The lease in force, if any.
    pub fn lease(&self) -> Option<&Lease> {
        match &self.state {
            State::Bound { lease, .. }
            | State::Renewing { lease, .. }
            | State::Rebinding { lease, .. } => Some(lease),
            _ => None,
        }
    }

    /// A short name of the state, for the status file.
    pub fn state_name(&self) -> &'static str {
        match self.state {
            State::Selecting { .. } => "selecting",
            State::Requesting { .. } => "requesting",
            State::Bound { .. } => "bound",
            State::Renewing { .. } => "renewing",
            State::Rebinding { .. } => "rebinding",
        }
    }

    fn select_again(&mut self, now: Duration, after: Duration) {
        self.late = None;
        self.state = State::Selecting {
            xid: self.next_xid(),
            sent: None,
        };
        self.deadline = now + after;
    }

    /// Timers: call when `now >= deadline()` (earlier calls do nothing).
    pub fn poll(&mut self, now: Duration) -> Vec<Action> {
        if now < self.deadline {
            return Vec::new();
        }
        let mut out = Vec::new();
        match self.state.clone() {
            State::Selecting { xid, sent: None } => {
                out.push(Action::Send {
                    xid,
                    request: Request::Discover,
                    to: Dest::Broadcast,
                });
                self.state = State::Selecting {
                    xid,
                    sent: Some(now),
                };
                self.deadline = now + ANSWER_WAIT;
            }
            State::Selecting { xid, sent: Some(_) } => {
                // Unanswered: a fresh DISCOVER after the backoff. A late
                // OFFER for `xid` is still taken until then.
                let retry_in = backoff(&self.mac, self.failures);
                self.failures += 1;
                out.push(Action::NoAnswer { retry_in });
                self.late = Some(xid);
                let next = self.next_xid();
                self.state = State::Selecting {
                    xid: next,
                    sent: None,
                };
                self.deadline = now + retry_in;
            }
            State::Requesting { xid, offer, tries } => {
                if tries >= REQUEST_TRIES {
                    self.failures += 1;
                    let wait = backoff(&self.mac, self.failures);
                    out.push(Action::NoAnswer { retry_in: wait });
                    self.select_again(now, wait);
                } else {
                    out.push(Action::Send {
                        xid,
                        request: Request::Select {
                            requested: offer.addr.addr,
                            server: offer.server,
                        },
                        to: Dest::Broadcast,
                    });
                    self.deadline = now + Duration::from_secs(4 << tries.min(4));
                    self.state = State::Requesting {
                        xid,
                        offer,
                        tries: tries + 1,
                    };
                }
            }
            State::Bound { lease, since } => {
                // T1: renew with the server that gave the lease.
                let xid = self.next_xid();
                self.state = State::Renewing { xid, lease, since };
                self.deadline = now;
                return self.poll(now);
            }
            State::Renewing { xid, lease, since } => {
                if now >= since + lease.t2 {
                    let xid = self.next_xid();
                    self.state = State::Rebinding { xid, lease, since };
                    return self.poll(now);
                }
                out.push(Action::Send {
                    xid,
                    request: Request::Extend {
                        ciaddr: lease.addr.addr,
                    },
                    to: Dest::Unicast(lease.server),
                });
                self.deadline = retransmit(now, since + lease.t2);
                self.state = State::Renewing { xid, lease, since };
            }
            State::Rebinding { xid, lease, since } => {
                if now >= since + lease.lease {
                    out.push(Action::Lost {
                        lease,
                        why: "lease expired",
                    });
                    self.select_again(now, Duration::ZERO);
                    return out;
                }
                out.push(Action::Send {
                    xid,
                    request: Request::Extend {
                        ciaddr: lease.addr.addr,
                    },
                    to: Dest::Broadcast,
                });
                self.deadline = retransmit(now, since + lease.lease);
                self.state = State::Rebinding { xid, lease, since };
            }
        }
        out
    }

    /// A decoded server message.
    pub fn on_reply(&mut self, r: &Reply, now: Duration) -> Vec<Action> {
        let mut out = Vec::new();
        match (self.state.clone(), r.kind) {
            (State::Selecting { xid, .. }, ReplyKind::Offer)
                if r.xid == xid || Some(r.xid) == self.late =>
            {
                let Some(offer) = lease_of(r) else {
                    return out;
                };
                self.late = None;
                self.state = State::Requesting {
                    xid: r.xid,
                    offer,
                    tries: 0,
                };
                self.deadline = now;
                out = self.poll(now);
            }
            (State::Requesting { xid, offer, .. }, ReplyKind::Ack) if r.xid == xid => {
                // An ACK for another address than offered is still the
                // server's word: take what it acknowledged.
                let lease = lease_of(r).unwrap_or(offer);
                out.push(self.bind(lease, now));
            }
            (State::Requesting { xid, .. }, ReplyKind::Nak) if r.xid == xid => {
                self.failures += 1;
                let wait = backoff(&self.mac, self.failures);
                self.select_again(now, wait);
            }
            (
                State::Renewing { xid, lease, .. } | State::Rebinding { xid, lease, .. },
                ReplyKind::Ack,
            ) if r.xid == xid => {
                let fresh = lease_of(r).unwrap_or(lease);
                out.push(self.bind(fresh, now));
            }
            (
                State::Renewing { xid, lease, .. } | State::Rebinding { xid, lease, .. },
                ReplyKind::Nak,
            ) if r.xid == xid => {
                out.push(Action::Lost {
                    lease,
                    why: "server refused the renewal (NAK)",
                });
                self.select_again(now, Duration::ZERO);
            }
            _ => {} // not ours, stale, or out of order: ignored
        }
        out
    }

    fn bind(&mut self, lease: Lease, now: Duration) -> Action {
        self.failures = 0;
        self.deadline = now + lease.t1;
        self.state = State::Bound {
            lease: lease.clone(),
            since: now,
        };
        Action::Bound(lease)
    }
}

/// Half the time left to `until`, at least [`MIN_RENEW_WAIT`], never past it.
fn retransmit(now: Duration, until: Duration) -> Duration {
    let half = until.saturating_sub(now) / 2;
    (now + half.max(MIN_RENEW_WAIT)).min(until)
}

/// The lease an OFFER or ACK describes, with RFC 2131's defaults for T1
/// (half the lease) and T2 (7/8), clamped so T1 <= T2 <= lease. `None` when
/// it offers no usable address or names no server.
pub fn lease_of(r: &Reply) -> Option<Lease> {
    let server = r.server?;
    if r.yiaddr.is_unspecified() || r.yiaddr.is_broadcast() || r.yiaddr.is_multicast() {
        return None;
    }
    let prefix = r.mask.and_then(Ipv4Cidr::prefix_of).unwrap_or(24);
    let lease = r
        .lease_s
        .map_or(DEFAULT_LEASE, |s| Duration::from_secs(s as u64));
    let t2 = r
        .t2_s
        .map_or(lease * 7 / 8, |s| Duration::from_secs(s as u64))
        .min(lease);
    let t1 = r
        .t1_s
        .map_or(lease / 2, |s| Duration::from_secs(s as u64))
        .min(t2);
    Some(Lease {
        addr: Ipv4Cidr {
            addr: r.yiaddr,
            prefix,
        },
        gateway: r.router,
        dns: r.dns.clone(),
        server,
        lease,
        t1,
        t2,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const MAC: [u8; 6] = [0x52, 0x54, 0x00, 0x12, 0x34, 0x56];
    const SERVER: Ipv4Addr = Ipv4Addr::new(10, 0, 2, 2);
    const YOU: Ipv4Addr = Ipv4Addr::new(10, 0, 2, 15);
    fn s(n: u64) -> Duration {
        Duration::from_secs(n)
    }

    fn reply(kind: ReplyKind, xid: u32) -> Reply {
        Reply {
            kind,
            xid,
            yiaddr: YOU,
            server: Some(SERVER),
            mask: Some(Ipv4Addr::new(255, 255, 255, 0)),
            router: Some(SERVER),
            dns: vec![Ipv4Addr::new(10, 0, 2, 3)],
            lease_s: Some(1000),
            t1_s: None,
            t2_s: None,
        }
    }

    fn sent(actions: &[Action]) -> Vec<(u32, Request, Dest)> {
        actions
            .iter()
            .filter_map(|a| match a {
                Action::Send { xid, request, to } => Some((*xid, *request, *to)),
                _ => None,
            })
            .collect()
    }

    /// DISCOVER at 0, OFFER, REQUEST, ACK: returns the bound client.
    fn bound_at(t: Duration) -> (Client, Lease) {
        let mut c = Client::new(MAC, 1, t);
        let d = sent(&c.poll(t));
        assert_eq!(d.len(), 1);
        let (xid, req, to) = d[0];
        assert_eq!((req, to), (Request::Discover, Dest::Broadcast));
        let r = sent(&c.on_reply(&reply(ReplyKind::Offer, xid), t));
        assert_eq!(
            r,
            [(
                xid,
                Request::Select {
                    requested: YOU,
                    server: SERVER
                },
                Dest::Broadcast
            )]
        );
        let a = c.on_reply(&reply(ReplyKind::Ack, xid), t);
        let Some(Action::Bound(lease)) = a.first() else {
            panic!("no lease: {a:?}")
        };
        assert_eq!(c.state_name(), "bound");
        (c, lease.clone())
    }

    #[test]
    fn discover_offer_request_ack_binds_with_rfc_timers() {
        let (c, lease) = bound_at(s(5));
        assert_eq!(lease.addr.to_string(), "10.0.2.15/24");
        assert_eq!(lease.gateway, Some(SERVER));
        assert_eq!(lease.dns, [Ipv4Addr::new(10, 0, 2, 3)]);
        // T1 = lease/2, T2 = 7/8 lease when the server gives none.
        assert_eq!((lease.t1, lease.t2), (s(500), s(875)));
        assert_eq!(c.deadline(), s(505));
    }

    #[test]
    fn replies_for_other_transactions_are_ignored() {
        let mut c = Client::new(MAC, 1, s(0));
        let xid = sent(&c.poll(s(0)))[0].0;
        assert!(c
            .on_reply(&reply(ReplyKind::Offer, xid ^ 1), s(1))
            .is_empty());
        assert!(c.on_reply(&reply(ReplyKind::Ack, xid), s(1)).is_empty());
        assert_eq!(c.state_name(), "selecting");
        // An offer without a server identifier is unusable.
        let mut r = reply(ReplyKind::Offer, xid);
        r.server = None;
        assert!(c.on_reply(&r, s(1)).is_empty());
    }

    #[test]
    fn renews_at_t1_unicast_then_rebinds_at_t2_broadcast_then_expires() {
        let (mut c, lease) = bound_at(s(0));
        assert!(c.poll(s(499)).is_empty(), "nothing before T1");
        let r = sent(&c.poll(s(500)));
        assert_eq!(r.len(), 1);
        assert_eq!(r[0].1, Request::Extend { ciaddr: YOU });
        assert_eq!(r[0].2, Dest::Unicast(SERVER));
        assert_eq!(c.state_name(), "renewing");
        // Retransmit: half the time to T2 (187 s), at least 60 s.
        assert_eq!(c.deadline(), s(500 + 187) + Duration::from_millis(500));
        let mut t = c.deadline();
        while c.state_name() == "renewing" {
            let a = c.poll(t);
            assert!(!a.is_empty());
            t = c.deadline();
        }
        assert_eq!(c.state_name(), "rebinding");
        assert!(t <= lease.lease);
        let mut last = Vec::new();
        while c.state_name() == "rebinding" {
            last = c.poll(t);
            if c.state_name() == "rebinding" {
                assert_eq!(sent(&last)[0].2, Dest::Broadcast);
            }
            t = c.deadline();
        }
        assert!(
            matches!(
                &last[..],
                [Action::Lost {
                    why: "lease expired",
                    ..
                }]
            ),
            "{last:?}"
        );
        assert_eq!(c.state_name(), "selecting");
        // and it starts over right away
        assert_eq!(sent(&c.poll(t))[0].1, Request::Discover);
    }

    #[test]
    fn ack_while_renewing_extends_the_lease() {
        let (mut c, _) = bound_at(s(0));
        let xid = sent(&c.poll(s(500)))[0].0;
        let mut r = reply(ReplyKind::Ack, xid);
        r.lease_s = Some(2000);
        let a = c.on_reply(&r, s(510));
        assert!(matches!(&a[..], [Action::Bound(l)] if l.lease == s(2000)));
        assert_eq!(c.deadline(), s(510 + 1000));
    }

    #[test]
    fn nak_while_renewing_drops_the_lease_and_rediscovers() {
        let (mut c, lease) = bound_at(s(0));
        let xid = sent(&c.poll(s(500)))[0].0;
        let a = c.on_reply(&reply(ReplyKind::Nak, xid), s(501));
        assert_eq!(
            a,
            [Action::Lost {
                lease,
                why: "server refused the renewal (NAK)"
            }]
        );
        assert_eq!(sent(&c.poll(s(501)))[0].1, Request::Discover);
    }

    #[test]
    fn nak_to_request_backs_off_then_rediscovers() {
        let mut c = Client::new(MAC, 1, s(0));
        let xid = sent(&c.poll(s(0)))[0].0;
        c.on_reply(&reply(ReplyKind::Offer, xid), s(1));
        assert!(c.on_reply(&reply(ReplyKind::Nak, xid), s(2)).is_empty());
        assert_eq!(c.state_name(), "selecting");
        assert!(c.deadline() > s(2));
        let a = sent(&c.poll(c.deadline()));
        assert_eq!(a[0].1, Request::Discover);
        assert_ne!(a[0].0, xid, "a new transaction");
    }

    #[test]
    fn silence_backs_off_exponentially_with_mac_jitter_and_caps() {
        let mut c = Client::new(MAC, 1, s(0));
        let mut t = s(0);
        let mut waits = Vec::new();
        let mut xids = Vec::new();
        for _ in 0..9 {
            let a = c.poll(t);
            xids.push(sent(&a)[0].0);
            t = c.deadline();
            assert_eq!(t - s(0), t - s(0));
            let a = c.poll(t);
            let [Action::NoAnswer { retry_in }] = a[..] else {
                panic!("{a:?}")
            };
            waits.push(retry_in);
            assert_eq!(c.deadline(), t + retry_in);
            t = c.deadline();
        }
        for (i, w) in waits.iter().enumerate() {
            let base = (BACKOFF_BASE * (1 << i)).min(BACKOFF_CAP);
            assert!(*w >= base && *w < base + s(1), "wait {i}: {w:?}");
        }
        assert!(waits[8] < BACKOFF_CAP + s(1));
        xids.sort();
        xids.dedup();
        assert_eq!(xids.len(), 9, "each DISCOVER is a new transaction");
        // Jitter comes from the MAC: same MAC same waits, other MAC other.
        assert_eq!(backoff(&MAC, 3), backoff(&MAC, 3));
        let other = [0x52, 0x54, 0x00, 0x12, 0x34, 0x57];
        assert_ne!(
            (0..4).map(|k| backoff(&MAC, k)).collect::<Vec<_>>(),
            (0..4).map(|k| backoff(&other, k)).collect::<Vec<_>>()
        );
    }

    #[test]
    fn a_late_offer_for_the_previous_discover_is_taken() {
        let mut c = Client::new(MAC, 1, s(0));
        let xid = sent(&c.poll(s(0)))[0].0;
        c.poll(c.deadline()); // unanswered: waiting to retry
        let a = sent(&c.on_reply(&reply(ReplyKind::Offer, xid), s(4)));
        assert!(matches!(a[..], [(x, Request::Select { .. }, _)] if x == xid));
    }

    #[test]
    fn unanswered_requests_go_back_to_selecting() {
        let mut c = Client::new(MAC, 1, s(0));
        let xid = sent(&c.poll(s(0)))[0].0;
        c.on_reply(&reply(ReplyKind::Offer, xid), s(0));
        let mut n = 1;
        loop {
            let a = c.poll(c.deadline());
            if c.state_name() == "selecting" {
                assert!(matches!(a[..], [Action::NoAnswer { .. }]), "{a:?}");
                break;
            }
            n += 1;
        }
        assert_eq!(n, REQUEST_TRIES);
    }

    #[test]
    fn lease_defaults_and_clamps() {
        let mut r = reply(ReplyKind::Ack, 1);
        r.lease_s = None;
        r.mask = None;
        let l = lease_of(&r).unwrap();
        assert_eq!((l.lease, l.addr.prefix), (DEFAULT_LEASE, 24));
        r.lease_s = Some(100);
        r.t1_s = Some(500);
        r.t2_s = Some(400);
        let l = lease_of(&r).unwrap();
        assert_eq!((l.t1, l.t2, l.lease), (s(100), s(100), s(100)));
        r.yiaddr = Ipv4Addr::UNSPECIFIED;
        assert!(lease_of(&r).is_none());
    }
}
