//! The control socket end to end on a temporary socket, with a fake node:
//! every request type, the peer check, malformed and oversized requests,
//! one upgrade at a time, and the config store.

use cairn_init::control::{Node, Paths, Power, Server};
use cairn_init::health::CheckResult;
use cairn_init::ring::Ring;
use cairn_init::supervisor::Console;
use contract::control::{ErrorKind, EventKind, Reply, MAX_REQUEST};
use contract::update::{Attempt, Outcome, Update};
use serde_json::{json, Value};
use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::UnixStream;
use std::sync::{mpsc, Arc, Mutex};
use std::time::{Duration, Instant};

#[derive(Default)]
struct Fake {
    powers: Mutex<Vec<Power>>,
    upgrades: Mutex<Vec<Update>>,
    /// The outcome of the next upgrade, sent when the test lets it end.
    gate: Mutex<Option<mpsc::Receiver<Outcome>>>,
    rollback_fails: Mutex<bool>,
    ring: Option<&'static Ring>,
    /// Every uploaded bundle's bytes, as the node read them.
    bundles: Mutex<Vec<Vec<u8>>>,
}

impl Node for Fake {
    fn health(&self) -> Vec<CheckResult> {
        vec![
            CheckResult {
                name: "web".into(),
                ok: true,
                detail: "exit code 0".into(),
            },
            CheckResult {
                name: "db".into(),
                ok: false,
                detail: "exit code 1".into(),
            },
        ]
    }
    fn power(&self, how: Power) {
        self.powers.lock().unwrap().push(how);
    }
    fn rollback(&self) -> Result<Value, String> {
        if *self.rollback_fails.lock().unwrap() {
            return Err("the other slot holds no release".into());
        }
        Ok(json!({"from_version": "2.0.0", "to_version": "1.0.0", "to_slot": "A"}))
    }
    fn upgrade(&self, cfg: &Update) -> Result<Attempt, String> {
        self.upgrades.lock().unwrap().push(cfg.clone());
        if let Some(r) = self.ring {
            r.event(EventKind::Upgrade, None, format!("pulling {}", cfg.tag));
            // Not an upgrade event: never streamed to the upgrade's client.
            r.event(EventKind::Service, None, "web started");
        }
        let gate = self.gate.lock().unwrap().take();
        let outcome = match gate {
            Some(rx) => rx.recv_timeout(Duration::from_secs(20)).unwrap(),
            None => Outcome::UpToDate,
        };
        Ok(Attempt {
            at: 0,
            source: format!("{}:{}", cfg.source, cfg.tag),
            running: "1.0.0".into(),
            offered: Some(cfg.tag.clone()),
            outcome,
            detail: "fake".into(),
        })
    }
    fn upgrade_bundle(
        &self,
        source: &str,
        size: u64,
        mut r: Box<dyn std::io::Read + Send>,
    ) -> Result<Attempt, String> {
        let mut got = Vec::new();
        r.read_to_end(&mut got)
            .map_err(|e| format!("{source}: {e}"))?;
        if got.len() as u64 != size {
            return Err(format!(
                "{source} ended after {} of {size} bytes",
                got.len()
            ));
        }
        self.bundles.lock().unwrap().push(got);
        Ok(Attempt {
            at: 0,
            source: source.into(),
            running: "1.0.0".into(),
            offered: Some("2.0.0".into()),
            outcome: Outcome::UpToDate,
            detail: "fake".into(),
        })
    }
}

struct Harness {
    _dir: tempfile::TempDir,
    paths: Paths,
    ring: &'static Ring,
    fake: Arc<Fake>,
    console: Arc<Mutex<Vec<u8>>>,
}

impl Harness {
    fn start(peers: fn(u32) -> bool) -> Harness {
        let dir = tempfile::tempdir().unwrap();
        let kmsg = dir.path().join("kmsg");
        std::fs::write(
            &kmsg,
            "6,1,1234567,-;Linux version 6.1\n SUBSYSTEM=pci\n4,2,2000000,-;second\n",
        )
        .unwrap();
        let paths = Paths {
            socket: dir.path().join("run/control.sock"),
            config: dir.path().join("state/config/machine.toml"),
            kmsg,
            group: unsafe { libc::getgid() },
            secrets: dir.path().join("run/api"),
            secrets_owner: unsafe { (libc::getuid(), libc::getgid()) },
        };
        let ring: &'static Ring = Box::leak(Box::new(Ring::new()));
        let fake = Arc::new(Fake {
            ring: Some(ring),
            ..Default::default()
        });
        let console = Arc::new(Mutex::new(Vec::new()));
        let c: Console = console.clone();
        let server = Arc::new(Server {
            paths: paths.clone(),
            ring,
            node: fake.clone(),
            console: c,
            peers,
        });
        let l = server.bind().unwrap();
        server.spawn(l).unwrap();
        Harness {
            _dir: dir,
            paths,
            ring,
            fake,
            console,
        }
    }

    fn connect(&self, request: &str) -> Conn {
        let mut s = UnixStream::connect(&self.paths.socket).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
        // A refused peer's connection is answered and closed at once, so
        // the write may find it gone: the reply is what a test checks.
        let _ = s
            .write_all(request.as_bytes())
            .and_then(|_| s.write_all(b"\n"));
        Conn {
            r: BufReader::new(s),
        }
    }

    /// Every reply to `request`, up to its `Done` or `Error`.
    fn call(&self, request: &str) -> Vec<Reply> {
        let mut c = self.connect(request);
        let mut out = Vec::new();
        while let Some(r) = c.next() {
            let end = matches!(r, Reply::Done { .. } | Reply::Error { .. });
            out.push(r);
            if end {
                break;
            }
        }
        out
    }

    fn console(&self) -> String {
        String::from_utf8_lossy(&self.console.lock().unwrap()).into_owned()
    }
}

struct Conn {
    r: BufReader<UnixStream>,
}

impl Conn {
    fn next(&mut self) -> Option<Reply> {
        let mut l = String::new();
        if self.r.read_line(&mut l).unwrap() == 0 {
            return None;
        }
        Some(serde_json::from_str(&l).unwrap_or_else(|e| panic!("{l:?}: {e}")))
    }
}

fn result(replies: &[Reply]) -> Value {
    match replies.last() {
        Some(Reply::Done { result }) => result.clone(),
        other => panic!("no Done: {other:?} in {replies:?}"),
    }
}

fn error(replies: &[Reply]) -> (String, ErrorKind, Option<String>) {
    match replies.last() {
        Some(Reply::Error { error, kind, field }) => (error.clone(), *kind, field.clone()),
        other => panic!("no Error: {other:?} in {replies:?}"),
    }
}

fn wait(what: &str, cond: impl Fn() -> bool) {
    let t = Instant::now();
    while !cond() {
        assert!(t.elapsed() < Duration::from_secs(10), "timed out: {what}");
        std::thread::sleep(Duration::from_millis(10));
    }
}

#[test]
fn socket_is_private_to_root_and_its_group() {
    let h = Harness::start(cairn_init::control::peer_allowed);
    let m = std::fs::metadata(&h.paths.socket).unwrap();
    assert_eq!(m.permissions().mode() & 0o777, 0o660);
    let s = UnixStream::connect(&h.paths.socket).unwrap();
    assert_eq!(cairn_init::control::peer_uid(&s).unwrap(), unsafe {
        libc::getuid()
    });
    assert!(cairn_init::control::peer_allowed(0));
    assert!(cairn_init::control::peer_allowed(contract::api::UID));
    assert!(!cairn_init::control::peer_allowed(1000));
}

#[test]
fn a_refused_peer_gets_an_error_and_nothing_runs() {
    let h = Harness::start(|_| false);
    let (e, ..) = error(&h.call(r#"{"op":"reboot","by":"CN=mallory"}"#));
    assert!(e.contains("may not use"), "{e}");
    assert!(h.fake.powers.lock().unwrap().is_empty());
    assert!(h.console().contains("refused a connection from uid"));
}

#[test]
fn malformed_and_oversized_requests_are_refused() {
    let h = Harness::start(cairn_init::control::peer_allowed);
    for bad in [
        "not json",
        r#"{"op":"format_disk"}"#,
        r#"{"op":"reboot"}"#,
        r#"{"op":"reboot","by":"x","extra":1}"#,
        "",
        "\u{0}\u{1}\u{ff}",
    ] {
        let (e, kind, _) = error(&h.call(bad));
        assert_eq!(kind, ErrorKind::Invalid, "{bad}: {e}");
        assert!(e.starts_with("malformed request"), "{e}");
    }
    // Over MAX_REQUEST without a newline: refused once the limit is read.
    let s = UnixStream::connect(&h.paths.socket).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    let w = s.try_clone().unwrap();
    let writer = std::thread::spawn(move || {
        let mut w = w;
        let chunk = vec![b'x'; 64 * 1024];
        let mut sent = 0;
        while sent <= MAX_REQUEST + chunk.len() {
            if w.write_all(&chunk).is_err() {
                break;
            }
            sent += chunk.len();
        }
    });
    let mut l = String::new();
    BufReader::new(&s).read_line(&mut l).unwrap();
    let r: Reply = serde_json::from_str(&l).unwrap();
    let (e, kind, _) = error(&[r]);
    assert_eq!(kind, ErrorKind::Invalid);
    assert!(e.contains("longer than"), "{e}");
    drop(s);
    writer.join().unwrap();
    // The server is still there.
    assert!(matches!(
        h.call(r#"{"op":"log_sources"}"#).last(),
        Some(Reply::Done { .. })
    ));
}

#[test]
fn logs_sources_tail_follow_and_unknown_source() {
    let h = Harness::start(cairn_init::control::peer_allowed);
    for i in 1..=5 {
        h.ring.push_line("web", "out", &format!("line {i}"));
    }
    h.ring.push_line("db", "err", "oops");
    assert_eq!(
        result(&h.call(r#"{"op":"log_sources"}"#)),
        json!(["db", "web"])
    );
    let r = h.call(r#"{"op":"logs","source":"web","tail":2}"#);
    assert_eq!(r.len(), 3);
    let texts: Vec<_> = r
        .iter()
        .filter_map(|r| match r {
            Reply::Log(l) => Some((l.seq, l.text.clone())),
            _ => None,
        })
        .collect();
    assert_eq!(texts, [(4, "line 4".into()), (5, "line 5".to_string())]);
    assert_eq!(result(&r), Value::Null);
    assert_eq!(h.call(r#"{"op":"logs","source":"web"}"#).len(), 6);
    let (e, kind, _) = error(&h.call(r#"{"op":"logs","source":"nope"}"#));
    assert_eq!(kind, ErrorKind::NotFound, "{e}");

    // Follow: the last line kept, then each new one as it comes.
    let mut c = h.connect(r#"{"op":"logs","source":"web","tail":1,"follow":true}"#);
    assert!(matches!(c.next(), Some(Reply::Log(l)) if l.text == "line 5"));
    h.ring.push_line("db", "out", "other source");
    h.ring.push_line("web", "out", "line 6");
    assert!(matches!(c.next(), Some(Reply::Log(l)) if l.text == "line 6" && l.seq == 6));
    // `tail 0` follows from the end: only what comes next.
    let mut c0 = h.connect(r#"{"op":"logs","source":"web","tail":0,"follow":true}"#);
    std::thread::sleep(Duration::from_millis(100));
    h.ring.push_line("web", "err", "line 7");
    assert!(matches!(c0.next(), Some(Reply::Log(l)) if l.text == "line 7" && l.stream == "err"));
    assert!(matches!(c.next(), Some(Reply::Log(l)) if l.text == "line 7"));
}

#[test]
fn events_kept_and_followed() {
    let h = Harness::start(cairn_init::control::peer_allowed);
    h.ring.event(EventKind::Boot, None, "boot ok");
    h.ring.event(EventKind::Service, None, "started web");
    let r = h.call(r#"{"op":"events"}"#);
    assert_eq!(r.len(), 3);
    assert!(matches!(&r[0], Reply::Event(e) if e.kind == EventKind::Boot && e.seq == 1));
    assert_eq!(result(&r), Value::Null);
    let mut c = h.connect(r#"{"op":"events","follow":true}"#);
    assert!(matches!(c.next(), Some(Reply::Event(e)) if e.seq == 1));
    assert!(matches!(c.next(), Some(Reply::Event(e)) if e.seq == 2));
    h.ring.event(EventKind::Network, None, "network up eth0");
    assert!(
        matches!(c.next(), Some(Reply::Event(e)) if e.kind == EventKind::Network && e.seq == 3)
    );
}

#[test]
fn dmesg_and_health() {
    let h = Harness::start(cairn_init::control::peer_allowed);
    assert_eq!(
        result(&h.call(r#"{"op":"dmesg"}"#)),
        json!(["[    1.234567] Linux version 6.1", "[    2.000000] second"])
    );
    let v = result(&h.call(r#"{"op":"health"}"#));
    assert_eq!(v[0]["name"], "web");
    assert_eq!(v[0]["ok"], true);
    assert_eq!(v[1]["ok"], false);
    std::fs::remove_file(&h.paths.kmsg).unwrap();
    let (e, kind, _) = error(&h.call(r#"{"op":"dmesg"}"#));
    assert_eq!(kind, ErrorKind::Failed, "{e}");
}

#[test]
fn reboot_and_shutdown_answer_then_ask_the_main_loop() {
    let h = Harness::start(cairn_init::control::peer_allowed);
    assert_eq!(
        result(&h.call(r#"{"op":"reboot","by":"CN=ops"}"#)),
        json!({"action": "reboot"})
    );
    assert_eq!(
        result(&h.call(r#"{"op":"shutdown","by":"CN=ops"}"#)),
        json!({"action": "shutdown"})
    );
    // The answer goes out first, then the main loop is asked.
    wait("both asked of the main loop", || {
        *h.fake.powers.lock().unwrap() == [Power::Reboot, Power::PowerOff]
    });
    assert!(h.console().contains("reboot requested by CN=ops"));
    let ev = h.ring.events();
    assert!(ev
        .iter()
        .any(|e| e.kind == EventKind::Power && e.by.as_deref() == Some("CN=ops")));
}

const PEM_API: &str = "[api]\nca = \"\"\"\n-----BEGIN CERTIFICATE-----\nAA\n-----END CERTIFICATE-----\n\"\"\"\ncrt = \"\"\"\n-----BEGIN CERTIFICATE-----\nBB\n-----END CERTIFICATE-----\n\"\"\"\nkey = \"\"\"\n-----BEGIN PRIVATE KEY-----\nSECRETKEY\n-----END PRIVATE KEY-----\n\"\"\"\n";

#[test]
fn rotate_certs_replaces_the_identity_in_place_and_on_run() {
    let h = Harness::start(cairn_init::control::peer_allowed);
    let rotate = json!({"op": "rotate_certs", "by": "CN=admin",
        "crt": "-----BEGIN CERTIFICATE-----\nNEWCRT\n-----END CERTIFICATE-----\n",
        "key": "-----BEGIN PRIVATE KEY-----\nNEWKEY\n-----END PRIVATE KEY-----\n"})
    .to_string();
    // Nothing stored, or no [api]: nothing to rotate, nothing written.
    let (_, kind, _) = error(&h.call(&rotate));
    assert_eq!(kind, ErrorKind::NotFound);
    result(&h.call(&apply("hostname = \"n1\"\n", false)));
    let (e, kind, _) = error(&h.call(&rotate));
    assert_eq!(kind, ErrorKind::NotFound);
    assert!(e.contains("no [api]"), "{e}");
    assert!(!h.paths.secrets.exists());

    let text = format!("# the fleet's node\nhostname = \"n1\"\n{PEM_API}");
    result(&h.call(&apply(&text, false)));
    let v = result(&h.call(&rotate));
    assert_eq!(v["rotated"], true);
    let stored = std::fs::read_to_string(&h.paths.config).unwrap();
    assert!(
        stored.starts_with("# the fleet's node\n") && stored.contains("NEWCRT"),
        "{stored}"
    );
    assert!(stored.contains("NEWKEY") && !stored.contains("SECRETKEY"));
    assert!(
        !stored.contains("BB") && stored.contains("AA"),
        "the CA stays"
    );
    let cfg = contract::machine::MachineConfig::parse(&stored, "m").unwrap();
    assert!(cfg.api.unwrap().crt.contains("NEWCRT"));
    for (name, want) in [
        ("server.crt", "NEWCRT"),
        ("server.key", "NEWKEY"),
        ("ca.crt", "AA"),
    ] {
        let p = h.paths.secrets.join(name);
        assert!(
            std::fs::read_to_string(&p).unwrap().contains(want),
            "{name}"
        );
        let mode = std::fs::metadata(&p).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600, "{name}");
    }
    assert!(h.ring.events().iter().any(|e| e.kind == EventKind::Config
        && e.by.as_deref() == Some("CN=admin")
        && e.message.contains("rotated")));
    assert!(!h.console().contains("NEWKEY"), "the key is never logged");
}

#[test]
fn rotate_certs_rewrites_a_config_with_escaped_pem_strings() {
    let old = contract::api::Api {
        listen: "0.0.0.0:50000".into(),
        ca: "-----BEGIN CERTIFICATE-----\nAA\n-----END CERTIFICATE-----".into(),
        crt: "-----BEGIN CERTIFICATE-----\nBB\n-----END CERTIFICATE-----".into(),
        key: "-----BEGIN PRIVATE KEY-----\nKK\n-----END PRIVATE KEY-----".into(),
    };
    // One-line strings with \n escapes: the PEM text is not in the file.
    let text = format!(
        "hostname = \"n\"\n[api]\nca = {:?}\ncrt = {:?}\nkey = {:?}\n",
        old.ca, old.crt, old.key
    );
    let next = cairn_init::control::replace_identity(
        &text,
        &old,
        "-----BEGIN CERTIFICATE-----\nCC\n-----END CERTIFICATE-----",
        "-----BEGIN PRIVATE KEY-----\nLL\n-----END PRIVATE KEY-----",
    )
    .unwrap();
    let cfg = contract::machine::MachineConfig::parse(&next, "m").unwrap();
    let api = cfg.api.unwrap();
    assert_eq!(cfg.hostname.as_deref(), Some("n"));
    assert!(api.crt.contains("CC") && api.key.contains("LL") && api.ca.contains("AA"));
}

fn apply(config: &str, dry_run: bool) -> String {
    json!({"op": "config_apply", "by": "CN=admin", "config": config, "dry_run": dry_run})
        .to_string()
}

#[test]
fn config_apply_validates_diffs_and_stores_atomically() {
    let h = Harness::start(cairn_init::control::peer_allowed);
    let stored = &h.paths.config;
    let (_, kind, _) = error(&h.call(r#"{"op":"config_get"}"#));
    assert_eq!(kind, ErrorKind::NotFound);

    // A syntax error names its line and column.
    let (e, kind, field) = error(&h.call(&apply("hostname = \"n\"\n[[service]\n", false)));
    assert_eq!(kind, ErrorKind::Invalid);
    assert!(
        field.as_deref().unwrap().starts_with("machine.toml:2:"),
        "{field:?}"
    );
    assert!(e.contains("machine.toml:2:"), "{e}");
    // So does a config that parses but does not validate.
    let (e, kind, field) = error(&h.call(&apply("hostname = \"-bad-\"\n", false)));
    assert_eq!(kind, ErrorKind::Invalid, "{e}");
    assert_eq!(field.as_deref(), Some("machine.toml"));
    assert!(e.contains("hostname"), "{e}");
    assert!(!stored.exists());

    // A dry run answers the diff and writes nothing.
    let v = result(&h.call(&apply("hostname = \"n1\"\n", true)));
    assert_eq!(v["dry_run"], true);
    assert_eq!(v["applied"], false);
    assert_eq!(v["diff"], "+hostname = \"n1\"\n");
    assert!(!stored.exists() && !stored.parent().unwrap().exists());

    let text = format!("hostname = \"n1\"\n{PEM_API}");
    let v = result(&h.call(&apply(&text, false)));
    assert_eq!(
        (v["dry_run"].clone(), v["applied"].clone()),
        (json!(false), json!(true))
    );
    assert!(!v["diff"].as_str().unwrap().contains("SECRETKEY"), "{v}");
    assert_eq!(std::fs::read_to_string(stored).unwrap(), text);
    let m = std::fs::metadata(stored).unwrap();
    assert_eq!(m.permissions().mode() & 0o777, 0o600);
    let names: Vec<_> = std::fs::read_dir(stored.parent().unwrap())
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(names, ["machine.toml"], "no temporary file left");
    // The stored config is what boot loads, with the same parser.
    contract::machine::MachineConfig::load(stored).unwrap();
    assert!(h
        .console()
        .contains("machine config stored by CN=admin (effective next boot)"));
    assert!(h.ring.events().iter().any(|e| e.kind == EventKind::Config
        && e.by.as_deref() == Some("CN=admin")
        && e.message.contains("stored")));

    // config get never shows the key.
    let got = result(&h.call(r#"{"op":"config_get"}"#));
    let got = got.as_str().unwrap();
    assert!(
        !got.contains("SECRETKEY") && got.contains(contract::api::REDACTED),
        "{got}"
    );
    assert!(got.contains("n1"));

    // A second dry run diffs against the stored one, key redacted.
    let next = format!("hostname = \"n2\"\n{PEM_API}");
    let v = result(&h.call(&apply(&next, true)));
    assert_eq!(v["diff"], "-hostname = \"n1\"\n+hostname = \"n2\"\n");
    assert_eq!(std::fs::read_to_string(stored).unwrap(), text);
    // A refused apply leaves the stored config alone.
    error(&h.call(&apply("hostname = 1\n", false)));
    assert_eq!(std::fs::read_to_string(stored).unwrap(), text);
}

/// The upgrade lock is one per process (the agent shares it): everything
/// that takes it is in this one test, in order, the installing upgrade
/// (which keeps it until the reboot) last.
#[test]
fn upgrade_and_rollback_take_turns() {
    let h = Harness::start(cairn_init::control::peer_allowed);
    let up = |image: &str| {
        json!({"op": "upgrade", "by": "CN=a", "image": image, "insecure": true}).to_string()
    };

    let (e, kind, _) = error(&h.call(&up("no-tag")));
    assert_eq!(kind, ErrorKind::Invalid, "{e}");

    // Rollback: what boots next, logged with who asked.
    let v = result(&h.call(r#"{"op":"rollback","by":"CN=ops"}"#));
    assert_eq!(v["to_version"], "1.0.0");
    assert!(h.console().contains("rollback requested by CN=ops"));
    *h.fake.rollback_fails.lock().unwrap() = true;
    let (e, kind, _) = error(&h.call(r#"{"op":"rollback","by":"CN=ops"}"#));
    assert_eq!(kind, ErrorKind::Failed);
    assert!(e.contains("no release"), "{e}");
    *h.fake.rollback_fails.lock().unwrap() = false;

    // Up to date: an answer, no reboot.
    let r = h.call(&up("localhost:5000/cairn/os:1.0.0"));
    assert_eq!(result(&r)["outcome"], "up-to-date");
    assert!(h.fake.powers.lock().unwrap().is_empty());

    // One upgrade at a time: a second one, or a rollback, is Busy and
    // names who holds the lock.
    let (tx, rx) = mpsc::channel();
    *h.fake.gate.lock().unwrap() = Some(rx);
    let mut first = h.connect(&up("localhost:5000/cairn/os:2.0.0"));
    wait("the first upgrade runs", || {
        h.fake.upgrades.lock().unwrap().len() == 2
    });
    let (e, kind, _) = error(&h.call(
        &json!({"op": "upgrade", "by": "CN=b", "image": "r/c:3", "insecure": false}).to_string(),
    ));
    assert_eq!(kind, ErrorKind::Busy);
    assert!(e.contains("CN=a"), "{e}");
    let (e, kind, _) = error(&h.call(r#"{"op":"rollback","by":"CN=b"}"#));
    assert_eq!(kind, ErrorKind::Busy);
    assert!(e.contains("CN=a"), "{e}");
    assert_eq!(h.fake.upgrades.lock().unwrap().len(), 2);
    tx.send(Outcome::Failed).unwrap();
    let mut got = Vec::new();
    while let Some(r) = first.next() {
        let end = matches!(r, Reply::Done { .. } | Reply::Error { .. });
        got.push(r);
        if end {
            break;
        }
    }
    // Only upgrade events are streamed: asked, the fake's progress, the end.
    let msgs: Vec<_> = got
        .iter()
        .filter_map(|r| match r {
            Reply::Event(e) => {
                assert_eq!(e.kind, EventKind::Upgrade);
                Some(e.message.clone())
            }
            _ => None,
        })
        .collect();
    assert_eq!(msgs.len(), 3, "{msgs:?}");
    assert!(msgs[0].contains("requested") && msgs[1] == "pulling 2.0.0");
    assert!(msgs[2].starts_with("failed"), "{msgs:?}");
    let (_, kind, _) = error(&got);
    assert_eq!(kind, ErrorKind::Failed);
    // The lock is free again; the request reached the node as a channel.
    let u = h.fake.upgrades.lock().unwrap()[1].clone();
    assert_eq!(
        (u.source.as_str(), u.tag.as_str(), u.plain_http),
        ("localhost:5000/cairn/os", "2.0.0", true)
    );

    // A bundle upload: the body follows the request line on the same
    // connection, in the same write and later ones; the node reads exactly
    // `size` bytes of it.
    let body: Vec<u8> = (0..200_000u32).map(|i| (i % 251) as u8).collect();
    let line = json!({"op": "upgrade_bundle", "by": "CN=a", "size": body.len()}).to_string();
    let mut s = UnixStream::connect(&h.paths.socket).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    s.write_all(format!("{line}\n").as_bytes()).unwrap();
    s.write_all(&body[..1000]).unwrap();
    std::thread::sleep(Duration::from_millis(50));
    s.write_all(&body[1000..]).unwrap();
    let mut replies = Vec::new();
    for l in BufReader::new(s).lines() {
        let r: Reply = serde_json::from_str(&l.unwrap()).unwrap();
        let end = matches!(r, Reply::Done { .. } | Reply::Error { .. });
        replies.push(r);
        if end {
            break;
        }
    }
    assert_eq!(result(&replies)["outcome"], "up-to-date");
    assert_eq!(*h.fake.bundles.lock().unwrap(), vec![body.clone()]);
    assert!(h
        .console()
        .contains("api: upgrade from a bundle of 200000 bytes requested by CN=a"));

    // A client that hangs up mid-upload: the node sees a short body and
    // the upgrade fails; the lock is free again.
    let mut s = UnixStream::connect(&h.paths.socket).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    s.write_all(format!("{line}\n").as_bytes()).unwrap();
    s.write_all(&body[..5000]).unwrap();
    s.shutdown(std::net::Shutdown::Write).unwrap();
    let mut text = String::new();
    BufReader::new(s).read_to_string(&mut text).unwrap();
    assert!(text.contains("ended after 5000 of 200000 bytes"), "{text}");
    assert_eq!(h.fake.bundles.lock().unwrap().len(), 1);

    // Too big: refused from the declared size, before the body is read.
    let huge = contract::control::MAX_BUNDLE + 1;
    let (e, kind, _) =
        error(&h.call(&json!({"op": "upgrade_bundle", "by": "CN=a", "size": huge}).to_string()));
    assert_eq!(kind, ErrorKind::Invalid);
    assert!(e.contains(&huge.to_string()), "{e}");
    // Only upgrade_bundle has a body.
    let mut s = UnixStream::connect(&h.paths.socket).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    s.write_all(b"{\"op\":\"dmesg\"}\ntrailing").unwrap();
    let mut text = String::new();
    BufReader::new(s).read_to_string(&mut text).unwrap();
    assert!(text.contains("only upgrade_bundle has a body"), "{text}");

    // Installed: the answer, then the clean reboot; the lock stays taken.
    let (tx, rx) = mpsc::channel();
    *h.fake.gate.lock().unwrap() = Some(rx);
    tx.send(Outcome::Installed).unwrap();
    let r = h.call(&up("localhost:5000/cairn/os:2.0.1"));
    assert_eq!(result(&r)["outcome"], "installed");
    wait("the reboot is asked for", || {
        *h.fake.powers.lock().unwrap() == [Power::Reboot]
    });
    let (_, kind, _) = error(&h.call(&up("localhost:5000/cairn/os:2.0.2")));
    assert_eq!(kind, ErrorKind::Busy);
}

#[test]
fn every_connection_is_served_independently() {
    let h = Harness::start(cairn_init::control::peer_allowed);
    h.ring.push_line("web", "out", "x");
    // A follower that never reads does not stop others.
    let _idle = h.connect(r#"{"op":"logs","source":"web","follow":true}"#);
    let ts: Vec<_> = (0..8)
        .map(|_| {
            let p = h.paths.socket.clone();
            std::thread::spawn(move || {
                let mut s = UnixStream::connect(&p).unwrap();
                s.write_all(b"{\"op\":\"log_sources\"}\n").unwrap();
                let mut l = String::new();
                BufReader::new(s).read_line(&mut l).unwrap();
                l
            })
        })
        .collect();
    for t in ts {
        assert!(t.join().unwrap().contains("\"reply\":\"done\""));
    }
}
