//! Who gets through the handshake: only certificates of the API CA, in
//! their validity window, over TLS 1.3.

mod common;
use api::client::{Client, ClientError};
use api::pki::{self, Validity};
use api::role::Operation;
use common::*;
use std::sync::Arc;
use time::{Duration, OffsetDateTime};

fn expect_handshake(r: Result<serde_json::Value, ClientError>, addr: &str, what: &str) {
    match r {
        Err(e @ ClientError::Handshake { .. }) => {
            let m = e.to_string();
            assert!(m.contains("handshake") && m.contains(addr), "{what}: {m}");
        }
        other => panic!("{what}: expected a handshake failure, got {other:?}"),
    }
}

#[test]
fn only_valid_certificates_of_the_api_ca_get_in() {
    let pki = Pki::new();
    let node = Arc::new(FakeNode::default());
    let addr = start(&pki, node.clone());

    // A good admin certificate works (sanity).
    let good = pki.client("admin", Some("os:admin"));
    client(&pki, &good)
        .call(&addr, Operation::Version, None)
        .unwrap();

    // Signed by another CA, with the admin role in it.
    let other = Pki::new();
    let foreign = other.client("mallory", Some("os:admin"));
    expect_handshake(
        client(&pki, &foreign).call(&addr, Operation::Reboot, None),
        &addr,
        "foreign CA",
    );

    // Expired, and not yet valid.
    let now = OffsetDateTime::now_utc();
    for (what, v) in [
        (
            "expired",
            Validity {
                not_before: now - Duration::days(10),
                not_after: now - Duration::days(1),
            },
        ),
        (
            "not yet valid",
            Validity {
                not_before: now + Duration::days(1),
                not_after: now + Duration::days(10),
            },
        ),
    ] {
        let id = pki::issue_client_with_org(&pki.ca, "old", Some("os:admin"), v).unwrap();
        expect_handshake(
            client(&pki, &id).call(&addr, Operation::Reboot, None),
            &addr,
            what,
        );
    }

    // No client certificate at all.
    let anon = Client::with_identity(&pki.ca.cert_pem, None).unwrap();
    expect_handshake(
        anon.call(&addr, Operation::Version, None),
        &addr,
        "no certificate",
    );

    // A client that does not trust the node (another CA in its config).
    let c =
        Client::with_identity(&other.ca.cert_pem, Some((&good.cert_pem, &good.key_pem))).unwrap();
    expect_handshake(
        c.call(&addr, Operation::Version, None),
        &addr,
        "untrusted node",
    );

    assert_eq!(
        node.calls(),
        ["version"],
        "only the good call reached the node"
    );
}

#[test]
fn tls12_client_is_refused() {
    use rustls::pki_types::ServerName;
    use std::io::{Read, Write};
    let pki = Pki::new();
    let addr = start(&pki, Arc::new(FakeNode::default()));
    let id = pki.client("admin", Some("os:admin"));
    let mut roots = rustls::RootCertStore::empty();
    roots
        .add(pki::cert_der_from_pem(&pki.ca.cert_pem, "ca").unwrap())
        .unwrap();
    let cfg = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_protocol_versions(&[&rustls::version::TLS12])
    .unwrap()
    .with_root_certificates(roots)
    .with_client_auth_cert(
        vec![pki::cert_der_from_pem(&id.cert_pem, "c").unwrap()],
        pki::key_der_from_pem(&id.key_pem, "k").unwrap(),
    )
    .unwrap();
    let mut conn =
        rustls::ClientConnection::new(Arc::new(cfg), ServerName::try_from("127.0.0.1").unwrap())
            .unwrap();
    let mut sock = std::net::TcpStream::connect(&addr).unwrap();
    let mut tls = rustls::Stream::new(&mut conn, &mut sock);
    let r = tls
        .write_all(b"GET /v1/version HTTP/1.1\r\nhost: x\r\n\r\n")
        .and_then(|()| tls.read(&mut [0u8; 64]));
    let e = r.expect_err("a TLS 1.2 handshake must fail");
    assert!(e.to_string().contains("ProtocolVersion"), "{e}");
}
