//! SNTP (through `sntpc`): asks the configured servers for the time and
//! steps the clock when it is off by more than [`STEP_THRESHOLD`] (a
//! machine without an RTC starts in 1970, which fails every certificate).

use std::net::{SocketAddr, ToSocketAddrs, UdpSocket};
use std::time::Duration;

/// Offsets below this are left alone (no slewing here: a step or nothing).
pub const STEP_THRESHOLD_US: i64 = 1_000_000;
const TIMEOUT: Duration = Duration::from_secs(2);

/// Whether an offset (server minus local, in microseconds) calls for a step.
pub fn needs_step(offset_us: i64) -> bool {
    offset_us.unsigned_abs() > STEP_THRESHOLD_US as u64
}

/// `sntpc` drives its exchange through this trait; the std socket blocks
/// (with a timeout), so each future is ready when polled.
struct Sock(UdpSocket);

impl sntpc::NtpUdpSocket for Sock {
    async fn send_to(&self, buf: &[u8], addr: SocketAddr) -> sntpc::Result<usize> {
        self.0.send_to(buf, addr).map_err(|_| sntpc::Error::Network)
    }
    async fn recv_from(&self, buf: &mut [u8]) -> sntpc::Result<(usize, SocketAddr)> {
        self.0.recv_from(buf).map_err(|_| sntpc::Error::Network)
    }
}

/// The offset reported by `server` (`HOST` or `HOST:PORT`, port 123 by
/// default), in microseconds.
pub fn query(server: &str) -> Result<i64, String> {
    let with_port = if server.parse::<std::net::IpAddr>().is_ok() || !server.contains(':') {
        format!("{server}:123")
    } else {
        server.to_string()
    };
    let addr = with_port
        .to_socket_addrs()
        .map_err(|e| format!("resolving {server}: {e}"))?
        .find(SocketAddr::is_ipv4)
        .ok_or_else(|| format!("{server}: no IPv4 address"))?;
    let sock = UdpSocket::bind("0.0.0.0:0").map_err(|e| format!("UDP socket: {e}"))?;
    sock.set_read_timeout(Some(TIMEOUT))
        .map_err(|e| format!("UDP socket: {e}"))?;
    let ctx = sntpc::NtpContext::new(sntpc::StdTimestampGen::default());
    sntpc::sync::get_time(addr, &Sock(sock), ctx)
        .map(|r| r.offset())
        .map_err(|e| format!("{server} ({addr}): {e:?}"))
}

/// Steps CLOCK_REALTIME by `offset_us`.
pub fn step_clock(offset_us: i64) -> std::io::Result<()> {
    // SAFETY: plain data out-pointer.
    let mut ts: libc::timespec = unsafe { std::mem::zeroed() };
    // SAFETY: valid out-pointer.
    if unsafe { libc::clock_gettime(libc::CLOCK_REALTIME, &mut ts) } < 0 {
        return Err(std::io::Error::last_os_error());
    }
    let now_us = ts.tv_sec as i128 * 1_000_000 + ts.tv_nsec as i128 / 1000;
    let then = now_us + offset_us as i128;
    ts.tv_sec = (then.div_euclid(1_000_000)) as _;
    ts.tv_nsec = (then.rem_euclid(1_000_000) * 1000) as _;
    // SAFETY: valid timespec.
    if unsafe { libc::clock_settime(libc::CLOCK_REALTIME, &ts) } < 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn steps_only_beyond_one_second() {
        assert!(!needs_step(0));
        assert!(!needs_step(999_999));
        assert!(!needs_step(-1_000_000));
        assert!(needs_step(1_000_001));
        assert!(needs_step(-5_000_000));
        // A clock in 1970 against 2026: a step.
        assert!(needs_step(1_780_000_000 * 1_000_000));
    }

    /// A local SNTP server on loopback answering with a fixed time:
    /// `query` reports the offset between it and our clock.
    #[test]
    fn query_reports_the_servers_offset() {
        let srv = UdpSocket::bind("127.0.0.1:0").unwrap();
        let addr = srv.local_addr().unwrap();
        let t = std::thread::spawn(move || {
            let mut b = [0u8; 48];
            let (n, from) = srv.recv_from(&mut b).unwrap();
            assert_eq!(n, 48);
            let mut r = [0u8; 48];
            r[0] = (4 << 3) | 4; // version 4, server mode
            r[1] = 1; // stratum
            r[24..32].copy_from_slice(&b[40..48]); // originate = client's transmit
                                                   // 2030-01-01T00:00:00Z in NTP seconds, for receive and transmit.
            let ntp: u32 = (1_893_456_000u64 + 2_208_988_800) as u32;
            r[32..36].copy_from_slice(&ntp.to_be_bytes());
            r[40..44].copy_from_slice(&ntp.to_be_bytes());
            srv.send_to(&r, from).unwrap();
        });
        let off = query(&addr.to_string()).unwrap();
        t.join().unwrap();
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs() as i64;
        let expect = (1_893_456_000 - now) * 1_000_000;
        assert!((off - expect).abs() < 5_000_000, "offset {off} vs {expect}");
        assert!(query("127.0.0.1:1").is_err(), "nobody there");
    }
}
