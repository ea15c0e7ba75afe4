//! Fuzzing the request decoding: arbitrary bodies on config apply, straight
//! into the router (no TLS), as an admin. Whatever arrives, the answer is a
//! client error or a success, never a 5xx, and the node is only called for
//! a well-formed request.

mod common;
use api::pki::Peer;
use api::role::Role;
use axum::body::Body;
use common::FakeNode;
use proptest::prelude::*;
use std::sync::Arc;

fn post(body: Vec<u8>) -> (u16, usize) {
    let node = Arc::new(FakeNode::default());
    let app = api::server::router(node.clone());
    let mut req = axum::http::Request::post("/v1/config/apply")
        .body(Body::from(body))
        .unwrap();
    req.extensions_mut().insert(Arc::new(Peer {
        subject: "CN=fuzz".into(),
        organizations: vec!["os:admin".into()],
        role: Some(Role::Admin),
    }));
    let rt = tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap();
    let resp = rt.block_on(tower::ServiceExt::oneshot(app, req)).unwrap();
    (resp.status().as_u16(), node.calls().len())
}

fn json_like() -> impl Strategy<Value = String> {
    // Fragments of the real shape, shuffled, so decoding goes deep.
    let piece = prop_oneof![
        Just("{".to_string()),
        Just("}".to_string()),
        Just("\"config\"".to_string()),
        Just("\"dry_run\"".to_string()),
        Just(":".to_string()),
        Just(",".to_string()),
        Just("true".to_string()),
        Just("null".to_string()),
        Just("[1,".to_string()),
        "\"[a-z\\\\\"\\n]{0,8}\"",
        "-?[0-9]{1,4}",
    ];
    prop::collection::vec(piece, 0..12).prop_map(|v| v.concat())
}

proptest! {
    #[test]
    fn arbitrary_bytes(body in prop::collection::vec(any::<u8>(), 0..512)) {
        let (status, calls) = post(body);
        prop_assert!(matches!(status, 200 | 400 | 422), "status {status}");
        prop_assert_eq!(calls > 0, status != 400);
    }

    #[test]
    fn json_fragments(body in json_like()) {
        let (status, calls) = post(body.into_bytes());
        prop_assert!(matches!(status, 200 | 400 | 422), "status {status}");
        prop_assert_eq!(calls > 0, status != 400);
    }
}

#[test]
fn well_formed_reaches_the_node() {
    let (status, calls) = post(br#"{"config":"a","dry_run":true}"#.to_vec());
    assert_eq!((status, calls), (200, 1));
}
