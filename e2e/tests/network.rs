//! Networking in init (issue 13 part 1): a node with a NIC on QEMU's user
//! network gets slirp's lease and writes resolv.conf; a node whose NIC
//! reaches no DHCP server says so, backs off, and still boots and blesses.
//! Health never waits for the network.
//!
//! slirp with `restrict=on` (the only way a test may run a guest) leaves
//! the router and DNS options out of its DHCP replies (libslirp's
//! bootp.c), so the lease is `10.0.2.15/24` without a gateway, and the
//! name server comes from the machine config's `[network] dns`.

use anyhow::Result;
use e2e::*;

/// Seconds from QEMU start to the first line containing `needle`.
fn at(b: &Boot, needle: &str) -> Option<f64> {
    b.all
        .iter()
        .find(|(_, l)| l.contains(needle))
        .map(|(t, _)| t.as_secs_f64())
}

#[test]
fn dhcp_lease_from_qemu_user_network() -> Result<()> {
    require_tools(&["qemu-system-x86_64"])?;
    let work = tempfile::tempdir()?;
    // restrict=on: the guest reaches nothing beyond slirp itself.
    let mut m = machine_with(
        "net-dhcp",
        work.path(),
        &[
            "-netdev",
            "user,id=n0,restrict=on",
            "-device",
            "virtio-net-pci,netdev=n0",
        ],
        Some("\n[network]\ndns = [\"10.0.2.3\"]\n"),
    )?;
    let mut b = m.boot()?;
    let lines = wait_all(
        &mut b,
        &[
            "cairn: network up eth0",
            "cairn: resolv.conf: nameserver",
            "cairn: boot ok",
        ],
    )?;
    assert!(
        lines[0].ends_with("cairn: network up eth0 10.0.2.15/24"),
        "{}",
        lines[0]
    );
    assert!(
        lines[1].ends_with("cairn: resolv.conf: nameserver 10.0.2.3"),
        "{}",
        lines[1]
    );
    assert!(lines[2].contains("slot=A version=1.0.0"), "{}", lines[2]);
    assert!(
        !b.all.iter().any(|(_, l)| l.contains("no DHCP answer")),
        "slirp answers the first DISCOVER"
    );
    print_timings("net-dhcp", &b, "cairn: boot ok");
    println!(
        "net-dhcp: QEMU start -> lease {:.1}s, -> boot ok {:.1}s",
        at(&b, "cairn: network up").unwrap_or(f64::NAN),
        at(&b, "cairn: boot ok").unwrap_or(f64::NAN)
    );
    b.kill()
}

#[test]
fn no_dhcp_server_retries_and_still_blesses() -> Result<()> {
    require_tools(&["qemu-system-x86_64"])?;
    let work = tempfile::tempdir()?;
    // A NIC on a hub with nothing else on it: carrier, but no server.
    let mut m = machine_with(
        "net-silent",
        work.path(),
        &[
            "-netdev",
            "hubport,id=n0,hubid=0",
            "-device",
            "virtio-net-pci,netdev=n0",
        ],
        Some("\n[network]\ndns = [\"10.0.2.3\"]\n"),
    )?;
    let mut b = m.boot()?;
    let lines = wait_all(
        &mut b,
        &[
            "cairn: network eth0: no DHCP answer, retrying in",
            "cairn: boot ok",
        ],
    )?;
    assert!(lines[1].contains("slot=A version=1.0.0"), "{}", lines[1]);
    // It keeps trying, waiting longer each time.
    let second = b.expect("no DHCP answer, retrying in", BOOT_TIMEOUT)?;
    let secs = |l: &str| -> f64 {
        l.rsplit("retrying in ")
            .next()
            .and_then(|s| s.trim_end_matches('s').parse().ok())
            .unwrap_or(f64::NAN)
    };
    let (w1, w2) = (secs(&lines[0]), secs(&second));
    assert!(w2 > w1, "backoff grows: {w1}s then {w2}s");
    assert!(
        !b.all.iter().any(|(_, l)| l.contains("cairn: network up")),
        "no lease without a server"
    );
    print_timings("net-silent", &b, "cairn: boot ok");
    println!(
        "net-silent: first retry line {:.1}s, boot ok {:.1}s after QEMU start (retry waits {w1}s, {w2}s)",
        at(&b, "no DHCP answer").unwrap_or(f64::NAN),
        at(&b, "cairn: boot ok").unwrap_or(f64::NAN)
    );
    b.kill()
}

#[test]
fn static_address_and_gateway_from_machine_config() -> Result<()> {
    require_tools(&["qemu-system-x86_64"])?;
    let work = tempfile::tempdir()?;
    let mut m = machine_with(
        "net-static",
        work.path(),
        &[
            "-netdev",
            "user,id=n0,restrict=on",
            "-device",
            "virtio-net-pci,netdev=n0",
        ],
        Some(
            "\n[network]\ndns = [\"10.0.2.3\"]\n[[network.link]]\nname = \"eth0\"\naddresses = [\"10.0.2.20/24\"]\ngateway = \"10.0.2.2\"\n",
        ),
    )?;
    let mut b = m.boot()?;
    let lines = wait_all(
        &mut b,
        &[
            "cairn: network up eth0",
            "cairn: resolv.conf: nameserver",
            "cairn: boot ok",
        ],
    )?;
    assert!(
        lines[0].ends_with("cairn: network up eth0 10.0.2.20/24 gw 10.0.2.2"),
        "{}",
        lines[0]
    );
    assert!(lines[1].ends_with("nameserver 10.0.2.3"), "{}", lines[1]);
    assert!(
        !b.all
            .iter()
            .any(|(_, l)| l.contains("DHCP") || l.contains("default route")),
        "a static link runs no DHCP, and its route was accepted"
    );
    print_timings("net-static", &b, "cairn: boot ok");
    b.kill()
}
