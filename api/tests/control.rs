//! The real node (api::node::InitNode) over a fake init, through the real
//! TLS server: what cairnd asks init, and how init's replies become HTTP
//! answers and NDJSON streams.

mod common;
use api::client::{Client, ClientError};
use api::role::Operation;
use common::fake_init::{self, done, event, log, FakeInit, Step};
use common::*;
use contract::control::{ErrorKind, EventKind, Reply, Request};
use serde_json::json;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

struct Setup {
    init: FakeInit,
    addr: String,
    reader: Client,
    operator: Client,
    admin: Client,
}

fn setup(script: impl Fn(&Request) -> Vec<Step> + Send + Sync + 'static) -> Setup {
    let pki = Pki::new();
    let init = FakeInit::start(script);
    let addr = start(&pki, Arc::new(fake_init::node(&init, &pki.ca.cert_pem)));
    Setup {
        addr,
        reader: client(&pki, &pki.client("ro", Some("os:reader"))),
        operator: client(&pki, &pki.client("op", Some("os:operator"))),
        admin: client(&pki, &pki.client("root", Some("os:admin"))),
        init,
    }
}

fn status_of<T: std::fmt::Debug>(r: Result<T, ClientError>) -> (u16, String, Option<String>) {
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

fn q(pairs: &[(&'static str, &str)]) -> Vec<(&'static str, String)> {
    pairs.iter().map(|(k, v)| (*k, v.to_string())).collect()
}

#[test]
fn logs_sources_tail_and_unknown_source() {
    let s = setup(|r| match r {
        Request::LogSources => vec![Step::Send(done(json!(["init", "web"])))],
        Request::Logs { source, .. } if source == "web" => vec![
            Step::Send(log("web", 7, "seven")),
            Step::Send(log("web", 8, "eight")),
            Step::Send(done(json!(null))),
        ],
        _ => vec![Step::Send(Reply::refused(
            ErrorKind::NotFound,
            "no log source \"nope\"",
        ))],
    });
    let v = s.reader.call(&s.addr, Operation::Logs, None).unwrap();
    assert_eq!(v, json!({"sources": ["init", "web"]}));

    let lines: Vec<_> = s
        .reader
        .stream(
            &s.addr,
            Operation::Logs,
            &q(&[("source", "web"), ("tail", "2")]),
            None,
        )
        .unwrap()
        .collect::<Result<_, _>>()
        .unwrap();
    assert_eq!(lines.len(), 2);
    assert_eq!(lines[0]["text"], "seven");
    assert_eq!(lines[1]["seq"], 8);
    assert_eq!(
        s.init.requests()[1],
        Request::Logs {
            source: "web".into(),
            follow: false,
            tail: Some(2)
        }
    );

    let (status, message, _) =
        status_of(
            s.reader
                .stream(&s.addr, Operation::Logs, &q(&[("source", "nope")]), None),
        );
    assert_eq!(status, 404);
    assert!(message.contains("no log source"), "{message}");

    // A query cairnd does not know is the client's mistake.
    let (status, message, _) = status_of(s.reader.stream(
        &s.addr,
        Operation::Logs,
        &q(&[("source", "web"), ("tail", "many")]),
        None,
    ));
    assert_eq!(status, 400, "{message}");
}

#[test]
fn logs_follow_delivers_new_lines_and_hangs_up_with_the_client() {
    let s = setup(|_| vec![Step::Send(log("web", 1, "old")), Step::Hold]);
    let mut lines = s
        .reader
        .stream(
            &s.addr,
            Operation::Logs,
            &q(&[("source", "web"), ("follow", "true")]),
            None,
        )
        .unwrap();
    assert_eq!(lines.next().unwrap().unwrap()["text"], "old");
    s.init.wait("the follower is held", |i| i.held() == 1);
    // Pushed after the client subscribed: it arrives.
    s.init.push(&log("web", 2, "new"));
    assert_eq!(lines.next().unwrap().unwrap()["text"], "new");
    assert!(matches!(
        &s.init.requests()[0],
        Request::Logs { follow: true, .. }
    ));
    // The client goes away; at the next line cairnd notices and closes
    // its connection to init.
    drop(lines);
    s.init.wait("cairnd hung up on init", |i| {
        i.push(&log("web", 3, "later"));
        i.hangups() == 1
    });
}

#[test]
fn events_follow() {
    let s = setup(|_| {
        vec![
            Step::Send(event(1, EventKind::Boot, "booted 1.0.0 from slot a")),
            Step::Hold,
        ]
    });
    let mut lines = s
        .reader
        .stream(&s.addr, Operation::Events, &q(&[("follow", "1")]), None)
        .unwrap();
    assert_eq!(lines.next().unwrap().unwrap()["kind"], "boot");
    s.init.wait("held", |i| i.held() == 1);
    s.init.push(&event(2, EventKind::Service, "web started"));
    let v = lines.next().unwrap().unwrap();
    assert_eq!(
        (v["seq"].as_u64(), v["message"].as_str()),
        (Some(2), Some("web started"))
    );
    assert_eq!(s.init.requests(), [Request::Events { follow: true }]);
    // init goes away: the stream ends with an error line.
    s.init.release();
    match lines.next() {
        Some(Err(ClientError::StreamFailed { message, .. })) => {
            assert!(message.contains("init closed"), "{message}")
        }
        other => panic!("{other:?}"),
    }
}

#[test]
fn upgrade_streams_progress_then_result_and_a_second_is_409() {
    let busy = AtomicBool::new(false);
    let s = setup(move |r| match r {
        Request::Upgrade { .. } if busy.swap(true, Ordering::SeqCst) => vec![Step::Send(
            Reply::refused(ErrorKind::Busy, "an upgrade to reg/cairn:2.0.0 is running"),
        )],
        Request::Upgrade { .. } => vec![
            Step::Send(event(5, EventKind::Upgrade, "pulling reg/cairn:2.0.0")),
            Step::Hold,
        ],
        _ => vec![],
    });
    let body = json!({"image": "reg/cairn:2.0.0", "insecure": true});
    let mut lines = s
        .operator
        .stream(&s.addr, Operation::Upgrade, &[], Some(&body))
        .unwrap();
    // Progress arrives while init is still at work.
    assert_eq!(
        lines.next().unwrap().unwrap()["message"],
        "pulling reg/cairn:2.0.0"
    );
    s.init.wait("held", |i| i.held() == 1);

    let (status, message, _) =
        status_of(
            s.operator
                .stream(&s.addr, Operation::Upgrade, &[], Some(&body)),
        );
    assert_eq!(status, 409);
    assert!(message.contains("is running"), "{message}");

    s.init
        .push(&event(6, EventKind::Upgrade, "wrote slot b; rebooting"));
    s.init.push(&done(json!({"next": "2.0.0"})));
    let rest: Vec<_> = lines.collect::<Result<_, _>>().unwrap();
    assert_eq!(rest.len(), 2, "{rest:?}");
    assert_eq!(rest[0]["seq"], 6);
    assert_eq!(rest[1], json!({"result": {"next": "2.0.0"}}));
    match &s.init.requests()[0] {
        Request::Upgrade {
            by,
            image,
            insecure,
        } => {
            assert!(by.contains("CN=op"), "{by}");
            assert_eq!((image.as_str(), *insecure), ("reg/cairn:2.0.0", true));
        }
        other => panic!("{other:?}"),
    }
}

#[test]
fn upgrade_from_a_bundle_streams_the_tar_to_init() {
    let s = setup(|r| match r {
        Request::UpgradeBundle { .. } => vec![
            // As init does: the first event before the body is read, so
            // the answer streams while the client still uploads.
            Step::Send(event(
                9,
                EventKind::Upgrade,
                "upgrade from a bundle requested",
            )),
            Step::ReadBody,
            Step::Send(event(10, EventKind::Upgrade, "2.0.0 verified")),
            Step::Send(done(
                json!({"outcome": "installed", "detail": "2.0.0 written to B"}),
            )),
        ],
        _ => vec![],
    });
    let dir = tempfile::tempdir().unwrap();
    let tar = dir.path().join("update.tar");
    // Bigger than every socket buffer on the way.
    let bytes: Vec<u8> = (0..20_000_000u32).map(|i| (i % 253) as u8).collect();
    std::fs::write(&tar, &bytes).unwrap();

    // A reader is refused before a byte of the bundle is sent on to init.
    match s.reader.upgrade_bundle(&s.addr, &tar) {
        Err(ClientError::Refused { message, .. }) => {
            assert!(message.contains("needs role os:operator"), "{message}")
        }
        Err(e) => panic!("{e}"),
        Ok(_) => panic!("a reader's upload answered 200"),
    }
    assert!(s.init.requests().is_empty());

    let lines: Vec<_> = s
        .operator
        .upgrade_bundle(&s.addr, &tar)
        .unwrap()
        .collect::<Result<_, _>>()
        .unwrap();
    assert_eq!(lines[1]["message"], "2.0.0 verified");
    assert_eq!(lines[2]["result"]["outcome"], "installed");
    assert_eq!(
        s.init.bodies(),
        vec![bytes.clone()],
        "init got the tar unchanged"
    );
    match &s.init.requests()[..] {
        [Request::UpgradeBundle { by, size }] => {
            assert!(by.contains("CN=op"), "{by}");
            assert_eq!(*size, bytes.len() as u64);
        }
        other => panic!("{other:?}"),
    }

    // A bundle that cannot be read is the client's error, naming it.
    let missing = dir.path().join("nope.tar");
    match s.operator.upgrade_bundle(&s.addr, &missing) {
        Err(e @ ClientError::Bundle { .. }) => {
            assert!(e.to_string().contains("nope.tar"), "{e}")
        }
        Err(e) => panic!("{e}"),
        Ok(_) => panic!("a missing bundle was sent"),
    }
    assert_eq!(s.init.requests().len(), 1);
}

#[test]
fn rotate_certs_checks_the_identity_before_init_stores_it() {
    let pki = Pki::new();
    let init = FakeInit::start(|r| match r {
        Request::RotateCerts { .. } => vec![Step::Send(done(json!({"rotated": true})))],
        _ => vec![],
    });
    let addr = start(&pki, Arc::new(fake_init::node(&init, &pki.ca.cert_pem)));
    let admin = client(&pki, &pki.client("root", Some("os:admin")));
    let rotate = |id: &api::pki::Identity, key: &str| {
        admin.call(
            &addr,
            Operation::RotateCerts,
            Some(&json!({"crt": id.cert_pem, "key": key})),
        )
    };
    let days = api::pki::Validity::days_from_now;
    let fresh = api::pki::issue_server(&pki.ca, &["127.0.0.1".into()], days(30)).unwrap();

    // Refused, each naming the field, and init never asked.
    let other_ca = api::pki::generate_ca("other", days(1)).unwrap();
    let foreign = api::pki::issue_server(&other_ca, &["127.0.0.1".into()], days(1)).unwrap();
    let expired = api::pki::issue_server(
        &pki.ca,
        &["127.0.0.1".into()],
        api::pki::Validity {
            not_before: time::OffsetDateTime::now_utc() - time::Duration::days(10),
            not_after: time::OffsetDateTime::now_utc() - time::Duration::days(1),
        },
    )
    .unwrap();
    let client_cert = pki.client("c", Some("os:admin"));
    for (what, id, key, field) in [
        ("another CA's", &foreign, foreign.key_pem.as_str(), "crt"),
        ("an expired", &expired, expired.key_pem.as_str(), "crt"),
        (
            "a client",
            &client_cert,
            client_cert.key_pem.as_str(),
            "crt",
        ),
        (
            "someone else's key",
            &fresh,
            pki.server.key_pem.as_str(),
            "key",
        ),
        ("not PEM", &fresh, "garbage", "key"),
    ] {
        let (status, message, f) = status_of(rotate(id, key));
        assert_eq!(status, 422, "{what}: {message}");
        assert_eq!(f.as_deref(), Some(field), "{what}: {message}");
        assert!(
            message.starts_with(&format!("{field}: ")),
            "{what}: {message}"
        );
    }
    assert!(init.requests().is_empty(), "{:?}", init.requests());

    let before = fake_init::ROTATED.load(std::sync::atomic::Ordering::SeqCst);
    let v = rotate(&fresh, &fresh.key_pem).unwrap();
    assert_eq!(v["rotated"], true);
    assert!(!v["serial"].as_str().unwrap().is_empty(), "{v}");
    assert!(v["not_after"].as_str().is_some(), "{v}");
    match &init.requests()[..] {
        [Request::RotateCerts { by, crt, key }] => {
            assert!(by.contains("CN=root"), "{by}");
            assert_eq!((crt, key), (&fresh.cert_pem, &fresh.key_pem));
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(
        fake_init::ROTATED.load(std::sync::atomic::Ordering::SeqCst),
        before + 1,
        "cairnd restarts to serve it"
    );
}

#[test]
fn upgrade_failure_after_progress_ends_the_stream_with_the_error() {
    let s = setup(|_| {
        vec![
            Step::Send(event(1, EventKind::Upgrade, "pulling")),
            Step::Send(Reply::error("signature does not verify")),
        ]
    });
    let lines: Vec<_> = s
        .operator
        .stream(
            &s.addr,
            Operation::Upgrade,
            &[],
            Some(&json!({"image": "reg/cairn:6.6.6"})),
        )
        .unwrap()
        .collect();
    assert_eq!(lines.len(), 2);
    assert_eq!(lines[0].as_ref().unwrap()["message"], "pulling");
    match &lines[1] {
        Err(ClientError::StreamFailed { message, .. }) => {
            assert!(message.contains("signature"), "{message}")
        }
        other => panic!("{other:?}"),
    }
    // A malformed request never reaches init.
    let (status, _, _) =
        status_of(
            s.operator
                .stream(&s.addr, Operation::Upgrade, &[], Some(&json!({"img": "x"}))),
        );
    assert_eq!(status, 400);
    assert_eq!(s.init.requests().len(), 1);
}

#[test]
fn config_apply_invalid_is_422_with_the_field_and_dry_run_answers_the_diff() {
    let s = setup(|r| match r {
        Request::ConfigApply { config, .. } if config.contains("bogus") => {
            vec![Step::Send(Reply::Error {
                error: "unknown field `bogus`".into(),
                kind: ErrorKind::Invalid,
                field: Some("machine.toml:2:1".into()),
            })]
        }
        Request::ConfigApply { dry_run, .. } => vec![Step::Send(done(json!({
            "dry_run": dry_run, "applied": !dry_run,
            "diff": "-hostname = \"n1\"\n+hostname = \"n2\"\n"
        })))],
        Request::ConfigGet => vec![Step::Send(done(json!("[api]\nkey = \"(redacted)\"\n")))],
        _ => vec![],
    });
    let bad = json!({"config": "hostname = \"n2\"\nbogus = 1\n"});
    let (status, message, field) =
        status_of(s.admin.call(&s.addr, Operation::ConfigApply, Some(&bad)));
    assert_eq!(status, 422);
    assert_eq!(field.as_deref(), Some("machine.toml:2:1"));
    assert!(message.contains("bogus"), "{message}");

    let good = json!({"config": "hostname = \"n2\"\n", "dry_run": true});
    let v = s
        .admin
        .call(&s.addr, Operation::ConfigApply, Some(&good))
        .unwrap();
    assert_eq!(v["diff"], "-hostname = \"n1\"\n+hostname = \"n2\"\n");
    assert_eq!(
        (v["dry_run"].as_bool(), v["applied"].as_bool()),
        (Some(true), Some(false))
    );
    match &s.init.requests()[1] {
        Request::ConfigApply { by, dry_run, .. } => {
            assert!(by.contains("CN=root") && *dry_run, "{by}")
        }
        other => panic!("{other:?}"),
    }
    let v = s.reader.call(&s.addr, Operation::ConfigGet, None).unwrap();
    assert_eq!(v["config"], "[api]\nkey = \"(redacted)\"\n");
}

#[test]
fn power_rollback_dmesg_health_pass_through() {
    let s = setup(|r| match r {
        Request::Rollback { .. } => vec![Step::Send(done(json!({"next": "0.9.0"})))],
        Request::Dmesg => vec![Step::Send(done(json!("[0.000] Linux\n")))],
        Request::Health => vec![Step::Send(done(
            json!({"checks": [{"name": "web", "ok": true}]}),
        ))],
        _ => vec![Step::Send(done(json!(null)))],
    });
    let v = s.operator.call(&s.addr, Operation::Reboot, None).unwrap();
    assert_eq!(v, json!({"ok": true}));
    s.operator.call(&s.addr, Operation::Shutdown, None).unwrap();
    let v = s.operator.call(&s.addr, Operation::Rollback, None).unwrap();
    assert_eq!(v, json!({"next": "0.9.0"}));
    let v = s.reader.call(&s.addr, Operation::Dmesg, None).unwrap();
    assert_eq!(v, json!({"dmesg": "[0.000] Linux\n"}));
    let v = s.reader.call(&s.addr, Operation::Health, None).unwrap();
    assert_eq!(v["checks"][0]["ok"], true);
    let r = s.init.requests();
    // `by` is the certificate's subject, as cairnd logs it.
    let Request::Reboot { by } = &r[0] else {
        panic!("{r:?}")
    };
    assert!(by.contains("CN=op"), "{by}");
    assert_eq!(r[1].by(), Some(by.as_str()));
    assert_eq!(r[2].by(), Some(by.as_str()));
    assert_eq!(&r[3..], [Request::Dmesg, Request::Health]);
    // Version and status are cairnd's own reads.
    let v = s.reader.call(&s.addr, Operation::Version, None).unwrap();
    assert_eq!(v["version"], "1.0.0");
    assert_eq!(s.init.requests().len(), 5);
}

#[test]
fn no_control_socket_is_503_with_a_clear_message() {
    let s = setup(|_| vec![]);
    std::fs::remove_file(&s.init.path).unwrap();
    for (c, op) in [
        (&s.operator, Operation::Reboot),
        (&s.reader, Operation::Logs),
        (&s.reader, Operation::Dmesg),
    ] {
        let (status, message, _) = status_of(c.call(&s.addr, op, None));
        assert_eq!(status, 503, "{op}");
        assert!(
            message.contains("init's control socket") && message.contains("control.sock"),
            "{op}: {message}"
        );
    }
    let (status, _, _) =
        status_of(
            s.reader
                .stream(&s.addr, Operation::Events, &q(&[("follow", "true")]), None),
        );
    assert_eq!(status, 503);
    // version and status do not need init.
    s.reader.call(&s.addr, Operation::Status, None).unwrap();
}
