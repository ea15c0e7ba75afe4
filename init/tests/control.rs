//! init's control socket (contract::control) on a temporary socket with a
//! fake node: every request, the peer check's rules, malformed and
//! oversized requests, a second upgrade while one runs, config apply
//! (refused with its position, dry run, atomic store), and garbage lines.

use cairn_init::control::{Node, Paths, Power, Server};
use cairn_init::health::CheckResult;
use cairn_init::ring::RING;
use contract::control::{ErrorKind, Reply, Request};
use contract::update::{Attempt, Outcome, Update};
use serde_json::{json, Value};
use std::io::{BufRead, BufReader, Write};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

#[derive(Default)]
struct Fake {
    power: Mutex<Vec<Power>>,
}

impl Node for Fake {
    fn health(&self) -> Vec<CheckResult> {
        vec![CheckResult {
            name: "fake".into(),
            ok: true,
            detail: "exit code 0".into(),
        }]
    }
    fn power(&self, how: Power) {
        self.power.lock().unwrap().push(how);
    }
    fn rollback(&self) -> Result<Value, String> {
        Ok(json!({"to_version": "1.0.0", "to_slot": "BOOT-A"}))
    }
    fn upgrade(&self, cfg: &Update) -> Result<Attempt, String> {
        cairn_init::update::progress(&format!("fake pull of {}:{}", cfg.source, cfg.tag));
        std::thread::sleep(Duration::from_millis(1500));
        Ok(Attempt {
            at: 0,
            source: format!("{}:{}", cfg.source, cfg.tag),
            running: "1.0.0".into(),
            offered: Some("1.0.0".into()),
            outcome: Outcome::UpToDate,
            detail: "1.0.0 is running".into(),
        })
    }
}

struct Harness {
    _dir: tempfile::TempDir,
    socket: PathBuf,
    config: PathBuf,
    fake: Arc<Fake>,
}

fn start() -> Harness {
    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("run/control.sock");
    let config = dir.path().join("state/config/machine.toml");
    let kmsg = dir.path().join("kmsg");
    std::fs::write(&kmsg, "").unwrap();
    let fake = Arc::new(Fake::default());
    let server = Arc::new(Server {
        paths: Paths {
            socket: socket.clone(),
            config: config.clone(),
            kmsg,
            // SAFETY: getgid cannot fail.
            group: unsafe { libc::getgid() },
        },
        ring: &RING,
        node: fake.clone(),
        console: Arc::new(Mutex::new(std::io::sink())),
    });
    let l = server.bind().unwrap();
    server.spawn(l).unwrap();
    Harness {
        _dir: dir,
        socket,
        config,
        fake,
    }
}

/// Sends `line` and reads every reply line until the server closes.
fn call_raw(socket: &Path, line: &[u8]) -> Vec<Reply> {
    let mut s = UnixStream::connect(socket).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    // The server may answer and close before taking all of an oversized
    // request: the rest of the write then fails, and the reply may be lost
    // to the reset; what was read is what was answered.
    let _ = s.write_all(line);
    let _ = s.shutdown(std::net::Shutdown::Write);
    BufReader::new(s)
        .lines()
        .map_while(Result::ok)
        .map(|l| serde_json::from_str(&l).unwrap())
        .collect()
}

fn call(socket: &Path, req: &Request) -> Vec<Reply> {
    let mut line = serde_json::to_vec(req).unwrap();
    line.push(b'\n');
    call_raw(socket, &line)
}

fn done(r: &[Reply]) -> &Value {
    match r.last() {
        Some(Reply::Done { result }) => result,
        other => panic!("expected done, got {other:?}"),
    }
}

fn refused(r: &[Reply]) -> (String, ErrorKind, Option<String>) {
    match r.last() {
        Some(Reply::Error { error, kind, field }) => (error.clone(), *kind, field.clone()),
        other => panic!("expected an error, got {other:?}"),
    }
}

#[test]
fn socket_is_0660_and_reads_answer() {
    let h = start();
    let mode = std::fs::metadata(&h.socket).unwrap().permissions().mode();
    assert_eq!(mode & 0o777, 0o660);
    RING.push_line("svc-a", "out", "hello from a service\n");
    let sources = call(&h.socket, &Request::LogSources);
    assert!(done(&sources).to_string().contains("svc-a"));
    let logs = call(
        &h.socket,
        &Request::Logs {
            source: "svc-a".into(),
            follow: false,
            tail: Some(1),
        },
    );
    assert!(matches!(&logs[0], Reply::Log(l) if l.text == "hello from a service"));
    let missing = call(
        &h.socket,
        &Request::Logs {
            source: "nope".into(),
            follow: false,
            tail: None,
        },
    );
    assert_eq!(refused(&missing).1, ErrorKind::NotFound);
    let health = call(&h.socket, &Request::Health);
    assert_eq!(done(&health)[0]["name"], "fake");
    let dmesg = call(&h.socket, &Request::Dmesg);
    assert!(done(&dmesg).is_array());
    let none = call(&h.socket, &Request::ConfigGet);
    assert_eq!(refused(&none).1, ErrorKind::NotFound);
}

#[test]
fn malformed_oversized_and_garbage_requests_are_refused() {
    let h = start();
    for line in [
        &b"not json\n"[..],
        b"{\"op\":\"reboot\"}\n",
        b"{\"op\":\"logs\",\"source\":1}\n",
        b"{\"op\":\"logs\",\"source\":\"init\",\"follow\":\"yes\"}\n",
        b"\xff\xfe\n",
        b"\n",
    ] {
        let r = call_raw(&h.socket, line);
        assert_eq!(refused(&r).1, ErrorKind::Invalid, "{line:?}");
    }
    let mut big = vec![b' '; contract::control::MAX_REQUEST + 10];
    big.push(b'\n');
    let r = call_raw(&h.socket, &big);
    if !r.is_empty() {
        assert!(refused(&r).0.contains("longer than"), "{r:?}");
    }
    // Pseudo-random bytes (a fixed LCG: reproducible): never a panic,
    // always one error line, and the server keeps answering.
    let mut x: u64 = 0x2545F4914F6CDD1D;
    for n in 0..200 {
        let mut line: Vec<u8> = (0..(n % 97))
            .map(|_| {
                x = x
                    .wrapping_mul(6364136223846793005)
                    .wrapping_add(1442695040888963407);
                (x >> 56) as u8
            })
            .filter(|b| *b != b'\n')
            .collect();
        line.push(b'\n');
        let r = call_raw(&h.socket, &line);
        assert_eq!(r.len(), 1, "{line:?}");
    }
    assert!(done(&call(&h.socket, &Request::Health)).is_array());
    assert!(h.fake.power.lock().unwrap().is_empty());
}

#[test]
fn config_apply_refuses_with_position_dry_runs_and_stores() {
    let h = start();
    let bad = call(
        &h.socket,
        &Request::ConfigApply {
            by: "CN=t".into(),
            config: "hostname = \"a\"\n[[health]]\nname = \"x\"\nexec = 42\n".into(),
            dry_run: false,
        },
    );
    let (e, kind, field) = refused(&bad);
    assert_eq!(kind, ErrorKind::Invalid, "{e}");
    assert!(field.unwrap().starts_with("machine.toml:4:"), "{e}");
    assert!(!h.config.exists(), "nothing stored");
    let good = "hostname = \"b\"\n";
    let dry = call(
        &h.socket,
        &Request::ConfigApply {
            by: "CN=t".into(),
            config: good.into(),
            dry_run: true,
        },
    );
    assert!(done(&dry)["diff"]
        .as_str()
        .unwrap()
        .contains("+hostname = \"b\""));
    assert!(!h.config.exists(), "a dry run stores nothing");
    let applied = call(
        &h.socket,
        &Request::ConfigApply {
            by: "CN=t".into(),
            config: good.into(),
            dry_run: false,
        },
    );
    assert_eq!(done(&applied)["applied"], true);
    assert_eq!(std::fs::read_to_string(&h.config).unwrap(), good);
    let mode = std::fs::metadata(&h.config).unwrap().permissions().mode();
    assert_eq!(mode & 0o777, 0o600);
    let got = call(&h.socket, &Request::ConfigGet);
    assert_eq!(done(&got), good);
    let events = call(&h.socket, &Request::Events { follow: false });
    assert!(events.iter().any(|r| matches!(r,
        Reply::Event(e) if e.by.as_deref() == Some("CN=t") && e.message.contains("stored"))));
}

#[test]
fn one_upgrade_at_a_time_and_power_is_asked_of_the_node() {
    let h = start();
    let req = Request::Upgrade {
        by: "CN=first".into(),
        image: "10.0.2.100:5000/cairn:2.0.0".into(),
        insecure: true,
    };
    let sock = h.socket.clone();
    let first = std::thread::spawn(move || call(&sock, &req));
    std::thread::sleep(Duration::from_millis(500));
    let second = call(
        &h.socket,
        &Request::Upgrade {
            by: "CN=second".into(),
            image: "10.0.2.100:5000/cairn:2.0.0".into(),
            insecure: true,
        },
    );
    let (e, kind, _) = refused(&second);
    assert_eq!(kind, ErrorKind::Busy);
    assert!(e.contains("CN=first"), "{e}");
    let first = first.join().unwrap();
    assert!(
        first
            .iter()
            .any(|r| matches!(r, Reply::Event(e) if e.message.contains("fake pull"))),
        "progress streamed: {first:?}"
    );
    // Up to date is not an install: an error answer, no reboot.
    assert!(refused(&first).0.contains("up to date"));
    let bad_image = call(
        &h.socket,
        &Request::Upgrade {
            by: "CN=t".into(),
            image: "no-tag".into(),
            insecure: false,
        },
    );
    assert_eq!(refused(&bad_image).1, ErrorKind::Invalid);
    let rb = call(&h.socket, &Request::Rollback { by: "CN=op".into() });
    assert_eq!(done(&rb)["to_version"], "1.0.0");
    assert!(h.fake.power.lock().unwrap().is_empty());
    call(&h.socket, &Request::Reboot { by: "CN=op".into() });
    call(&h.socket, &Request::Shutdown { by: "CN=op".into() });
    assert_eq!(
        *h.fake.power.lock().unwrap(),
        [Power::Reboot, Power::PowerOff]
    );
}

#[test]
fn only_root_and_cairnd_may_connect() {
    assert!(cairn_init::control::peer_allowed(0));
    assert!(cairn_init::control::peer_allowed(contract::api::UID));
    assert!(!cairn_init::control::peer_allowed(65534));
    assert!(!cairn_init::control::peer_allowed(1000));
}
