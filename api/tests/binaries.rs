//! End to end through the binaries: secrets and client configs as `cairn
//! gen` makes them (the api::gen functions it calls), a real cairnd
//! serving them, cairnctl's output and exit codes.

mod common;
use common::fake_init::{done, event, log, FakeInit, Step};
use contract::control::{ErrorKind, EventKind, Reply, Request};
use serde_json::json;
use std::io::{BufRead, BufReader};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};

struct Cairnd {
    child: Child,
    addr: String,
    log: Arc<Mutex<Vec<String>>>,
}

impl Drop for Cairnd {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn start_cairnd(secrets: &Path, dir: &Path, control: &Path) -> Cairnd {
    std::fs::write(dir.join("os-release"), "NAME=\"cairn\"\nVERSION_ID=1.0.0\n").unwrap();
    std::fs::write(dir.join("status.json"), r#"{"booted":"1.0.0","next":"a"}"#).unwrap();
    let mut child = Command::new(env!("CARGO_BIN_EXE_cairnd"))
        .args(["--listen", "127.0.0.1:0", "--secrets"])
        .arg(secrets)
        .arg("--os-release")
        .arg(dir.join("os-release"))
        .arg("--status")
        .arg(dir.join("status.json"))
        .arg("--control")
        .arg(control)
        .env("NO_COLOR", "1")
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stderr.take().unwrap()).lines();
    let mut addr = None;
    for l in lines.by_ref() {
        let l = l.unwrap();
        if let Some((_, a)) = l.split_once("listening on ") {
            addr = Some(a.split_whitespace().next().unwrap().to_string());
            break;
        }
    }
    let log = Arc::new(Mutex::new(Vec::new()));
    let l2 = log.clone();
    std::thread::spawn(move || {
        for l in lines.map_while(Result::ok) {
            l2.lock().unwrap().push(l);
        }
    });
    Cairnd {
        child,
        addr: addr.expect("cairnd printed its address"),
        log,
    }
}

struct Out {
    code: i32,
    stdout: String,
    stderr: String,
}

fn ctl_command(config: &Path, node: &str, args: &[&str]) -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_cairnctl"));
    c.arg("--config")
        .arg(config)
        .args(["--nodes", node])
        .args(args);
    c
}

fn ctl(config: &Path, node: &str, args: &[&str]) -> Out {
    let o = ctl_command(config, node, args).output().unwrap();
    Out {
        code: o.status.code().unwrap(),
        stdout: String::from_utf8_lossy(&o.stdout).into(),
        stderr: String::from_utf8_lossy(&o.stderr).into(),
    }
}

fn mode(p: &Path) -> u32 {
    std::fs::metadata(p).unwrap().permissions().mode() & 0o777
}

fn client(secrets: &Path, dir: &Path, role: &str, name: &str) -> PathBuf {
    let out = dir.join(format!("{name}.toml"));
    api::gen::client(
        secrets,
        role.parse().unwrap(),
        name,
        &["127.0.0.1:1".into()],
        1,
        &out,
    )
    .unwrap();
    assert_eq!(mode(&out), 0o600, "client config mode");
    out
}

#[test]
fn gen_then_cairnctl_against_cairnd() {
    let t = tempfile::tempdir().unwrap();
    let secrets = t.path().join("secrets");
    api::gen::secrets(&secrets, &["127.0.0.1".into()]).unwrap();
    assert_eq!(mode(&secrets.join("ca.key")), 0o600);
    assert_eq!(mode(&secrets.join("server.key")), 0o600);
    let reader = client(&secrets, t.path(), "os:reader", "alice");
    let admin = client(&secrets, t.path(), "os:admin", "root");
    // cairnd needs no CA key: serve from a copy without it.
    let node_dir = t.path().join("node");
    std::fs::create_dir(&node_dir).unwrap();
    for f in ["ca.crt", "server.crt", "server.key"] {
        std::fs::copy(secrets.join(f), node_dir.join(f)).unwrap();
    }
    let init = FakeInit::start(script);
    let mut d = start_cairnd(&node_dir, t.path(), &init.path);
    let a = d.addr.clone();
    let a = a.as_str();

    let o = ctl(&reader, a, &["version"]);
    assert_eq!(
        (o.code, o.stdout.trim()),
        (0, "cairn 1.0.0 (cairnd 0.1.0)"),
        "{}",
        o.stderr
    );

    let o = ctl(&reader, a, &["--json", "status"]);
    assert_eq!(o.code, 0, "{}", o.stderr);
    let v: serde_json::Value = serde_json::from_str(&o.stdout).unwrap();
    assert_eq!(v["node"], a);
    assert_eq!(v["result"]["booted"], "1.0.0");

    // A reader's reboot is refused with the role it needs.
    let o = ctl(&reader, a, &["reboot"]);
    assert_eq!(o.code, 1);
    assert!(
        o.stderr.contains("reboot needs role os:operator"),
        "{}",
        o.stderr
    );
    assert!(o.stderr.contains("CN=alice"), "{}", o.stderr);

    // An admin's reboot reaches init with the certificate's subject.
    let o = ctl(&admin, a, &["reboot"]);
    assert_eq!(
        (o.code, o.stdout.as_str()),
        (0, "reboot: requested\n"),
        "{}",
        o.stderr
    );
    match init.requests().last() {
        Some(Request::Reboot { by }) => assert!(by.contains("CN=root"), "{by}"),
        other => panic!("{other:?}"),
    }

    // config apply: invalid refused with init's message and field (422).
    std::fs::write(t.path().join("bad.toml"), "hostname = \"n2\"\nbogus = 1\n").unwrap();
    std::fs::write(t.path().join("good.toml"), "hostname = \"n2\"\n").unwrap();
    let bad = t.path().join("bad.toml");
    let o = ctl(
        &admin,
        a,
        &["config", "apply", bad.to_str().unwrap(), "--dry-run"],
    );
    assert_eq!(o.code, 1);
    assert!(
        o.stderr.contains("422") && o.stderr.contains("bogus"),
        "{}",
        o.stderr
    );
    let o = ctl(
        &admin,
        a,
        &["--json", "config", "apply", bad.to_str().unwrap()],
    );
    let v: serde_json::Value = serde_json::from_str(&o.stdout).unwrap();
    assert_eq!(v["field"], "machine.toml:2:1");
    let good = t.path().join("good.toml");
    let o = ctl(
        &admin,
        a,
        &["config", "apply", good.to_str().unwrap(), "--dry-run"],
    );
    assert_eq!(o.code, 0, "{}", o.stderr);
    assert_eq!(
        o.stdout,
        "-hostname = \"n1\"\n+hostname = \"n2\"\ndry run: valid, nothing stored\n"
    );
    let o = ctl(&reader, a, &["config", "get"]);
    assert_eq!((o.code, o.stdout.as_str()), (0, "hostname = \"n1\"\n"));

    // Logs: the sources, then a source's kept lines.
    let o = ctl(&reader, a, &["logs"]);
    assert_eq!(
        (o.code, o.stdout.as_str()),
        (0, "init\nweb\n"),
        "{}",
        o.stderr
    );
    let o = ctl(&reader, a, &["logs", "web", "--tail", "1"]);
    assert_eq!(
        (o.code, o.stdout.as_str()),
        (0, "web: listening\n"),
        "{}",
        o.stderr
    );
    let o = ctl(&reader, a, &["--json", "logs", "web"]);
    let v: serde_json::Value = serde_json::from_str(o.stdout.trim()).unwrap();
    assert_eq!(
        (v["node"].as_str(), v["text"].as_str()),
        (Some(a), Some("listening"))
    );
    let o = ctl(&reader, a, &["logs", "nope"]);
    assert_eq!(o.code, 1);
    assert!(o.stderr.contains("404"), "{}", o.stderr);

    // logs -f: lines pushed while it runs are printed as they come.
    let mut child = ctl_command(&reader, a, &["logs", "web", "-f"])
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut out = BufReader::new(child.stdout.take().unwrap()).lines();
    assert_eq!(out.next().unwrap().unwrap(), "web: listening");
    init.wait("cairnctl follows", |i| i.held() == 1);
    init.push(&log("web", 2, "GET / 200"));
    assert_eq!(out.next().unwrap().unwrap(), "web: GET / 200");
    child.kill().unwrap();
    child.wait().unwrap();

    // upgrade: progress as it comes, then the result; a failure exits 1.
    let o = ctl(
        &admin,
        a,
        &["upgrade", "--image", "reg/cairn:2.0.0", "--insecure"],
    );
    assert_eq!(o.code, 0, "{}", o.stderr);
    assert_eq!(
        o.stdout,
        "1 upgrade: pulling reg/cairn:2.0.0 (by CN=root)\n2 upgrade: writing slot b\nupgrade: done: {\"next\":\"2.0.0\"}\n"
    );
    let o = ctl(&admin, a, &["upgrade", "--image", "reg/cairn:bad"]);
    assert_eq!(o.code, 1);
    assert!(o.stdout.contains("pulling reg/cairn:bad"), "{}", o.stdout);
    assert!(
        o.stderr.contains("signature does not verify"),
        "{}",
        o.stderr
    );
    let o = ctl(&reader, a, &["upgrade", "--image", "reg/cairn:2.0.0"]);
    assert_eq!(o.code, 1);
    assert!(o.stderr.contains("needs role os:operator"), "{}", o.stderr);

    // Unreachable node and a node of another CA: exit 3.
    let o = ctl(&reader, "127.0.0.1:1", &["version"]);
    assert_eq!(o.code, 3, "{}", o.stderr);
    assert!(
        o.stderr.contains("127.0.0.1:1: cannot connect"),
        "{}",
        o.stderr
    );
    let other = t.path().join("other");
    api::gen::secrets(&other, &[]).unwrap();
    let stranger = client(&other, t.path(), "os:admin", "mallory");
    let o = ctl(&stranger, a, &["version"]);
    assert_eq!(o.code, 3, "{}", o.stderr);
    assert!(o.stderr.contains("TLS handshake failed"), "{}", o.stderr);

    // A client config others can read is refused: exit 2.
    std::fs::set_permissions(&reader, std::fs::Permissions::from_mode(0o644)).unwrap();
    let o = ctl(&reader, a, &["version"]);
    assert_eq!(o.code, 2);
    assert!(o.stderr.contains("chmod 600"), "{}", o.stderr);

    // The node logged the changing calls with the subject, and no key.
    std::thread::sleep(std::time::Duration::from_millis(200));
    let log = d.log.lock().unwrap().join("\n");
    assert!(log.contains("CN=root") && log.contains("reboot"), "{log}");
    assert!(log.contains("CN=alice") && log.contains("refused"), "{log}");
    assert!(!log.contains("PRIVATE KEY"), "{log}");

    // rotate-certs: a reader is refused; the admin's new identity (issued
    // from the CA in `secrets`) is checked by cairnd and stored by init,
    // then cairnd exits cleanly for init to restart it with the new one.
    std::fs::set_permissions(&reader, std::fs::Permissions::from_mode(0o600)).unwrap();
    let sec = secrets.to_str().unwrap();
    let o = ctl(&reader, a, &["rotate-certs", "--secrets", sec]);
    assert_eq!(o.code, 1, "{}", o.stderr);
    assert!(o.stderr.contains("needs role os:admin"), "{}", o.stderr);
    let o = ctl(
        &admin,
        a,
        &["rotate-certs", "--secrets", sec, "--days", "30"],
    );
    assert_eq!(o.code, 0, "{}", o.stderr);
    assert!(
        o.stdout.contains("rotated: serving certificate serial")
            && o.stdout.contains("for 127.0.0.1, localhost valid until"),
        "{}",
        o.stdout
    );
    match init.requests().last() {
        Some(Request::RotateCerts { by, crt, .. }) => {
            assert!(by.contains("CN=root"), "{by}");
            assert!(crt.contains("BEGIN CERTIFICATE"));
        }
        other => panic!("{other:?}"),
    }
    let t0 = std::time::Instant::now();
    let status = loop {
        if let Some(st) = d.child.try_wait().unwrap() {
            break st;
        }
        assert!(t0.elapsed().as_secs() < 10, "cairnd did not restart");
        std::thread::sleep(std::time::Duration::from_millis(50));
    };
    assert!(status.success(), "{status:?}");
    let o = ctl(&admin, a, &["rotate-certs", "--secrets", "/nonexistent"]);
    assert_eq!(o.code, 2);
    assert!(o.stderr.contains("/nonexistent"), "{}", o.stderr);
}

/// The fake init behind cairnd in [`gen_then_cairnctl_against_cairnd`].
fn script(r: &Request) -> Vec<Step> {
    match r {
        Request::LogSources => vec![Step::Send(done(json!(["init", "web"])))],
        Request::Logs { source, follow, .. } if source == "web" => {
            let mut v = vec![Step::Send(log("web", 1, "listening"))];
            v.push(if *follow {
                Step::Hold
            } else {
                Step::Send(done(json!(null)))
            });
            v
        }
        Request::Logs { .. } => vec![Step::Send(Reply::refused(
            ErrorKind::NotFound,
            "no log source",
        ))],
        Request::ConfigApply {
            config, dry_run, ..
        } => {
            if config.contains("bogus") {
                vec![Step::Send(Reply::Error {
                    error: "machine.toml:2:1: unknown field `bogus`".into(),
                    kind: ErrorKind::Invalid,
                    field: Some("machine.toml:2:1".into()),
                })]
            } else {
                vec![Step::Send(done(json!({
                    "dry_run": dry_run, "applied": !dry_run,
                    "diff": format!("-hostname = \"n1\"\n+{config}")
                })))]
            }
        }
        Request::ConfigGet => vec![Step::Send(done(json!("hostname = \"n1\"\n")))],
        Request::Upgrade { by, image, .. } => {
            let mut pull = contract::control::Event {
                seq: 1,
                ms: 0,
                kind: EventKind::Upgrade,
                by: Some(by.clone()),
                message: format!("pulling {image}"),
            };
            if image.ends_with(":bad") {
                pull.seq = 3;
                return vec![
                    Step::Send(Reply::Event(pull)),
                    Step::Send(Reply::error("signature does not verify")),
                ];
            }
            vec![
                Step::Send(Reply::Event(pull)),
                Step::Sleep(100),
                Step::Send(event(2, EventKind::Upgrade, "writing slot b")),
                Step::Send(done(json!({"next": "2.0.0"}))),
            ]
        }
        _ => vec![Step::Send(done(json!(null)))],
    }
}
