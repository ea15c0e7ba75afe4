//! The role matrix: every operation × every role, over real mutual TLS.

mod common;
use api::client::ClientError;
use api::role::{Operation, Role};
use common::fake_init::{self, FakeInit};
use common::*;
use std::sync::Arc;

/// Calls `op` the way cairnctl does: streams read to their end, bodies
/// where the route takes one.
fn invoke(c: &api::client::Client, addr: &str, op: Operation) -> Result<(), ClientError> {
    let config = serde_json::json!({"config": "hostname = \"x\"\n", "dry_run": true});
    let image = serde_json::json!({"image": "reg/cairn:2.0.0"});
    let rotate = serde_json::json!({"crt": "C", "key": "K"});
    let drain = |l: api::client::Lines| l.collect::<Result<Vec<_>, _>>().map(drop);
    match op {
        Operation::Events => drain(c.stream(addr, op, &[], None)?),
        Operation::Upgrade => drain(c.stream(addr, op, &[], Some(&image))?),
        Operation::ConfigApply => c.call(addr, op, Some(&config)).map(drop),
        Operation::RotateCerts => c.call(addr, op, Some(&rotate)).map(drop),
        _ => c.call(addr, op, None).map(drop),
    }
}

#[test]
fn every_operation_for_every_role() {
    let pki = Pki::new();
    let node = Arc::new(FakeNode::default());
    let addr = start(&pki, node.clone());
    // (certificate O, granted role): no O at all, an unrelated O, each role.
    let certs: [(Option<&str>, Option<Role>); 5] = [
        (None, None),
        (Some("Acme Corp"), None),
        (Some("os:reader"), Some(Role::Reader)),
        (Some("os:operator"), Some(Role::Operator)),
        (Some("os:admin"), Some(Role::Admin)),
    ];
    for (org, granted) in certs {
        let id = pki.client("alice", org);
        let c = client(&pki, &id);
        for op in Operation::ALL {
            let before = node.calls().len();
            let r = invoke(&c, &addr, op);
            let allowed = granted.is_some_and(|g| g >= op.needs());
            let who = format!("{op} with O={org:?}");
            if allowed {
                match r {
                    Ok(_) => assert_eq!(node.calls().len(), before + 1, "{who}: one call"),
                    Err(e) => panic!("{who}: expected allowed, got {e}"),
                }
            } else {
                match r {
                    Err(ClientError::Refused { message, .. }) => {
                        let needs = format!("{op} needs role {}", op.needs());
                        assert!(message.contains(&needs), "{who}: {message}");
                        assert!(message.contains("CN=alice"), "{who}: {message}");
                    }
                    other => panic!("{who}: expected refused, got {other:?}"),
                }
                assert_eq!(
                    node.calls().len(),
                    before,
                    "{who}: refused call reached the node"
                );
            }
        }
    }
}

#[test]
fn a_reader_cannot_change_the_node_and_init_never_hears_of_it() {
    let pki = Pki::new();
    let init = FakeInit::start(|_| {
        vec![fake_init::Step::Send(fake_init::done(
            serde_json::Value::Null,
        ))]
    });
    let addr = start(&pki, Arc::new(fake_init::node(&init, &pki.ca.cert_pem)));
    let c = client(&pki, &pki.client("carol", Some("os:reader")));
    for op in Operation::ALL.into_iter().filter(|op| op.mutates()) {
        match invoke(&c, &addr, op) {
            Err(ClientError::Refused { message, .. }) => {
                assert!(message.contains("CN=carol"), "{op}: {message}")
            }
            other => panic!("{op}: expected refused, got {other:?}"),
        }
    }
    assert!(init.requests().is_empty(), "{:?}", init.requests());
    // What a reader may do does reach init.
    invoke(&c, &addr, Operation::Health).unwrap();
    assert_eq!(init.requests(), [contract::control::Request::Health]);
}

#[test]
fn refused_config_apply_is_refused_before_its_body_is_read() {
    // A reader's malformed, oversized upload gets 403, not 400 or 413.
    let pki = Pki::new();
    let node = Arc::new(FakeNode::default());
    let addr = start(&pki, node.clone());
    let c = client(&pki, &pki.client("bob", Some("os:reader")));
    let big = serde_json::json!({"config": "x".repeat(2 * api::server::MAX_BODY)});
    match c.call(&addr, Operation::ConfigApply, Some(&big)) {
        Err(ClientError::Refused { message, .. }) => {
            assert!(message.contains("needs role os:admin"), "{message}")
        }
        other => panic!("{other:?}"),
    }
    // The same for an upgrade by a reader.
    let big = serde_json::json!({"image": "x".repeat(2 * api::server::MAX_BODY)});
    match c.stream(&addr, Operation::Upgrade, &[], Some(&big)) {
        Err(ClientError::Refused { message, .. }) => {
            assert!(message.contains("needs role os:operator"), "{message}")
        }
        Err(e) => panic!("{e}"),
        Ok(_) => panic!("upgrade by a reader answered 200"),
    }
    assert!(node.calls().is_empty());
}
