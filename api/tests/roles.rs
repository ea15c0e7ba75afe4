//! The role matrix: every operation × every role, over real mutual TLS.

mod common;
use api::client::ClientError;
use api::role::{Operation, Role};
use common::*;
use std::sync::Arc;

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
    let body = serde_json::json!({"config": "hostname = \"x\"\n", "dry_run": true});
    for (org, granted) in certs {
        let id = pki.client("alice", org);
        let c = client(&pki, &id);
        for op in Operation::ALL {
            let before = node.calls().len();
            let b = (op == Operation::ConfigApply).then_some(&body);
            let r = c.call(&addr, op, b);
            let allowed = granted.is_some_and(|g| g >= op.needs());
            let who = format!("{op} with O={org:?}");
            if allowed {
                match r {
                    Ok(_) => assert_eq!(node.calls().len(), before + 1, "{who}: one call"),
                    // Not built yet: authorized, then 501, node untouched.
                    Err(ClientError::Node { status: 501, .. }) => {
                        assert_eq!(node.calls().len(), before, "{who}")
                    }
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
    assert!(node.calls().is_empty());
}
