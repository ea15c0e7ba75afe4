//! docs/openapi.json, the API's schema, against the code: every operation
//! at its route with its role, and the documented bodies the ones the
//! server reads and writes. The document is the contract a non-Rust client
//! is written from; this keeps it from drifting.

use api::role::Operation;
use api::routes::{route, Method};
use api::server::{ApplyOutcome, ApplyRequest, RotateRequest, UpgradeRequest, Version};
use serde_json::Value;
use std::collections::BTreeSet;

fn doc() -> Value {
    let p = concat!(env!("CARGO_MANIFEST_DIR"), "/../docs/openapi.json");
    serde_json::from_str(&std::fs::read_to_string(p).unwrap()).unwrap()
}

fn schema<'a>(d: &'a Value, name: &str) -> &'a Value {
    &d["components"]["schemas"][name]
}

/// The property names of a documented object schema.
fn props(d: &Value, name: &str) -> BTreeSet<String> {
    schema(d, name)["properties"]
        .as_object()
        .unwrap_or_else(|| panic!("schema {name} has no properties"))
        .keys()
        .cloned()
        .collect()
}

/// The keys `v` serializes with.
fn keys(v: impl serde::Serialize) -> BTreeSet<String> {
    serde_json::to_value(v)
        .unwrap()
        .as_object()
        .unwrap()
        .keys()
        .cloned()
        .collect()
}

#[test]
fn every_operation_is_documented_at_its_route_with_its_role() {
    let d = doc();
    let mut documented = 0;
    for (_, methods) in d["paths"].as_object().unwrap() {
        documented += methods.as_object().unwrap().len();
    }
    assert_eq!(
        documented,
        Operation::ALL.len(),
        "operations in the document"
    );
    for op in Operation::ALL {
        let (method, path) = route(op);
        let m = match method {
            Method::Get => "get",
            Method::Post => "post",
        };
        let o = &d["paths"][path][m];
        assert!(o.is_object(), "{op}: {m} {path} is not documented");
        assert_eq!(o["operationId"], op.as_str(), "{op}");
        assert_eq!(o["x-cairn-role"], op.needs().as_str(), "{op}");
        assert!(o["responses"]["403"].is_object(), "{op}: no 403");
        assert!(o["responses"]["200"].is_object(), "{op}: no 200");
    }
}

#[test]
fn documented_bodies_are_the_ones_the_server_uses() {
    let d = doc();
    let example = |path: &str, ty: &str| -> Value {
        d["paths"][path]["post"]["requestBody"]["content"][ty]["example"].clone()
    };
    // Requests: the documented examples are accepted as they are, and the
    // documented fields are the struct's (deny_unknown_fields).
    let up: UpgradeRequest =
        serde_json::from_value(example("/v1/upgrade", "application/json")).unwrap();
    assert!(!up.image.is_empty());
    let apply: ApplyRequest =
        serde_json::from_value(example("/v1/config/apply", "application/json")).unwrap();
    assert_eq!(keys(&apply), props(&d, "ApplyRequest"));
    let _: RotateRequest =
        serde_json::from_value(example("/v1/certs/rotate", "application/json")).unwrap();
    assert_eq!(keys(&up), props(&d, "UpgradeRequest"));
    assert!(d["paths"]["/v1/upgrade"]["post"]["requestBody"]["content"]
        [api::routes::BUNDLE_CONTENT_TYPE]
        .is_object());

    // Answers.
    let v = Version {
        os: "cairn".into(),
        version: "1.0.0".into(),
        api: "0.1.0".into(),
    };
    assert_eq!(keys(&v), props(&d, "Version"));
    let a = ApplyOutcome {
        dry_run: true,
        applied: false,
        diff: String::new(),
    };
    assert_eq!(keys(&a), props(&d, "ApplyOutcome"));
    let e = contract::control::Event {
        seq: 1,
        ms: 2,
        kind: contract::control::EventKind::Upgrade,
        by: Some("CN=a".into()),
        message: "m".into(),
    };
    assert_eq!(keys(&e), props(&d, "Event"));
    let at = contract::update::Attempt {
        at: 0,
        source: "r/c:1".into(),
        running: "1.0.0".into(),
        offered: None,
        outcome: contract::update::Outcome::UpToDate,
        detail: String::new(),
    };
    assert_eq!(keys(&at), props(&d, "Attempt"));
    let outcomes: Vec<Value> = [
        contract::update::Outcome::UpToDate,
        contract::update::Outcome::SkippedBad,
        contract::update::Outcome::Installed,
        contract::update::Outcome::Failed,
    ]
    .iter()
    .map(|o| serde_json::to_value(o).unwrap())
    .collect();
    assert_eq!(
        schema(&d, "Attempt")["properties"]["outcome"]["enum"],
        Value::Array(outcomes)
    );
    let line = contract::control::LogLine {
        source: "web".into(),
        seq: 1,
        ms: 2,
        stream: "out".into(),
        text: "t".into(),
    };
    assert_eq!(keys(&line), props(&d, "LogLine"));
    assert_eq!(
        keys(api::server::ErrorBody {
            error: "e".into(),
            field: Some("f".into()),
        }),
        props(&d, "ErrorBody")
    );
}
