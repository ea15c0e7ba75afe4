//! config apply: limits, malformed requests, validation errors.

mod common;
use api::client::ClientError;
use api::role::Operation;
use common::*;
use std::sync::Arc;

fn admin() -> (Pki, Arc<FakeNode>, String, api::client::Client) {
    let pki = Pki::new();
    let node = Arc::new(FakeNode::default());
    let addr = start(&pki, node.clone());
    let c = client(&pki, &pki.client("root", Some("os:admin")));
    (pki, node, addr, c)
}

fn status_of(r: Result<serde_json::Value, ClientError>) -> (u16, String, Option<String>) {
    match r {
        Err(ClientError::Node {
            status,
            message,
            field,
            ..
        }) => (status, message, field),
        other => panic!("expected an error answer, got {other:?}"),
    }
}

#[test]
fn apply_and_dry_run() {
    let (_p, node, addr, c) = admin();
    let v = c
        .call(
            &addr,
            Operation::ConfigApply,
            Some(&serde_json::json!({"config": "a", "dry_run": true})),
        )
        .unwrap();
    assert_eq!(
        v,
        serde_json::json!({"dry_run": true, "applied": false, "diff": "+a"})
    );
    let v = c
        .call(
            &addr,
            Operation::ConfigApply,
            Some(&serde_json::json!({"config": "a"})),
        )
        .unwrap();
    assert_eq!(v["applied"], true);
    assert_eq!(node.calls(), ["config_apply", "config_apply"]);
}

#[test]
fn oversized_body_is_413() {
    let (_p, node, addr, c) = admin();
    // Just over the limit, and far over it (refused from its length).
    for n in [api::server::MAX_BODY, 8 * api::server::MAX_BODY] {
        let big = serde_json::json!({"config": "x".repeat(n)});
        let (status, message, _) = status_of(c.call(&addr, Operation::ConfigApply, Some(&big)));
        assert_eq!(status, 413);
        assert!(message.contains("limit"), "{message}");
    }
    assert!(node.calls().is_empty());
}

#[test]
fn malformed_json_is_400_with_the_reason() {
    let (_p, node, addr, c) = admin();
    for (body, reason) in [
        (serde_json::json!({"config": 5}), "invalid type"),
        (
            serde_json::json!({"config": "a", "force": true}),
            "unknown field `force`",
        ),
        (serde_json::json!([]), "expected struct ApplyRequest"),
    ] {
        let (status, message, _) = status_of(c.call(&addr, Operation::ConfigApply, Some(&body)));
        assert_eq!(status, 400, "{body}");
        assert!(message.contains(reason), "{body}: {message}");
    }
    // Not JSON at all: POST with no body.
    let (status, message, _) = status_of(c.call(&addr, Operation::ConfigApply, None));
    assert_eq!(status, 400);
    assert!(message.contains("malformed request"), "{message}");
    assert!(node.calls().is_empty());
}

#[test]
fn validation_error_is_422_with_the_field() {
    let (_p, _node, addr, c) = admin();
    let body = serde_json::json!({"config": "invalid"});
    let (status, message, field) = status_of(c.call(&addr, Operation::ConfigApply, Some(&body)));
    assert_eq!(status, 422);
    assert_eq!(field.as_deref(), Some("services[0].exec"));
    assert!(message.contains("absolute"), "{message}");
}
