//! End to end through the binaries: secrets and client configs as `cairn
//! gen` makes them (the api::gen functions it calls), a real cairnd
//! serving them, cairnctl's output and exit codes.

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

fn start_cairnd(secrets: &Path, dir: &Path) -> Cairnd {
    std::fs::write(dir.join("os-release"), "NAME=\"cairn\"\nVERSION_ID=1.0.0\n").unwrap();
    std::fs::write(dir.join("status.json"), r#"{"booted":"1.0.0","next":"a"}"#).unwrap();
    std::fs::write(dir.join("machine.toml"), "hostname = \"n1\"\n").unwrap();
    let mut child = Command::new(env!("CARGO_BIN_EXE_cairnd"))
        .args(["--listen", "127.0.0.1:0", "--secrets"])
        .arg(secrets)
        .arg("--os-release")
        .arg(dir.join("os-release"))
        .arg("--status")
        .arg(dir.join("status.json"))
        .arg("--machine-config")
        .arg(dir.join("machine.toml"))
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

fn ctl(config: &Path, node: &str, args: &[&str]) -> Out {
    let o = Command::new(env!("CARGO_BIN_EXE_cairnctl"))
        .arg("--config")
        .arg(config)
        .args(["--nodes", node])
        .args(args)
        .output()
        .unwrap();
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
    let d = start_cairnd(&node_dir, t.path());
    let a = d.addr.as_str();

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

    // An admin's reboot is authorized and logged, then 501 until wired.
    let o = ctl(&admin, a, &["reboot"]);
    assert_eq!(o.code, 1);
    assert!(
        o.stderr.contains("501") && o.stderr.contains("not implemented"),
        "{}",
        o.stderr
    );

    // config apply: invalid refused with the parser's message (422).
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
}
