//! The node API (issue 14, scenario 14 in docs/e2e.md): a node whose
//! machine config has the `[api]` identity made by `cairn gen secrets` and
//! `cairn gen machine-api`, managed only with `cairnctl` through one
//! forward (host 127.0.0.1:PORT -> guest :50000) on QEMU user networking
//! with `restrict=on`. The registry the upgrade pulls from is the test's
//! own on 127.0.0.1, reached through one `guestfwd`.
//!
//! Boot 1 (1.0.0): reader reads status, logs, events; its reboot is refused
//! naming the role; a client of another CA is refused at the handshake; an
//! invalid config is refused with its position, a valid one dry-run then
//! applied; an operator reboots (clean: STATE unmounted first).
//! Boot 2 (1.0.0): the applied config took effect (its health check runs);
//! a second upgrade while one runs is refused; the operator's upgrade to
//! 2.0.0 streams its progress and reboots.
//! Boot 3 (2.0.0): blessed, the API still up (its identity is in STATE);
//! rollback, reboot. Boot 4: 1.0.0 again.
//! A second node (1.0.0): the admin rotates its serving certificate (the
//! new one served at once and after reboots); a tampered `update.tar`
//! uploaded by the operator
//! is refused at its digest and the node runs on; the genuine one is
//! installed and the node boots 2.0.0.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::{Duration, Instant};

use anyhow::{ensure, Context, Result};
use e2e::*;
use testkit::registry::{free_port, Registry};

fn bin(name: &str, package: &str) -> Result<PathBuf> {
    let p = repo_root().join("target/release").join(name);
    ensure!(
        p.is_file(),
        "{} is missing: cargo build --release -p {package}",
        p.display()
    );
    Ok(p)
}

fn cairn(args: &[&dyn AsRef<std::ffi::OsStr>]) -> Result<String> {
    let mut c = Command::new(bin("cairn", "builder")?);
    for a in args {
        c.arg(a);
    }
    let o = c.output()?;
    ensure!(
        o.status.success(),
        "cairn {:?}: {}",
        c.get_args().collect::<Vec<_>>(),
        String::from_utf8_lossy(&o.stderr)
    );
    Ok(String::from_utf8_lossy(&o.stdout).into_owned())
}

/// One cairnctl call: (exit code, stdout, stderr).
struct Ctl {
    code: i32,
    out: String,
    err: String,
}

fn ctl(config: &Path, args: &[&str]) -> Result<Ctl> {
    let o: Output = Command::new(bin("cairnctl", "api")?)
        .arg("--config")
        .arg(config)
        .args(args)
        .output()?;
    let c = Ctl {
        code: o.status.code().unwrap_or(-1),
        out: String::from_utf8_lossy(&o.stdout).into_owned(),
        err: String::from_utf8_lossy(&o.stderr).into_owned(),
    };
    eprintln!(
        "cairnctl {} -> {}\n{}{}",
        args.join(" "),
        c.code,
        testkit::tail(&c.out, 15),
        testkit::tail(&c.err, 15)
    );
    Ok(c)
}

fn ok(config: &Path, args: &[&str]) -> Result<String> {
    let c = ctl(config, args)?;
    ensure!(
        c.code == 0,
        "cairnctl {} exited {}: {}{}",
        args.join(" "),
        c.code,
        c.out,
        c.err
    );
    Ok(c.out)
}

/// Waits (the node's API comes up a moment after `boot ok`) until `version`
/// answers.
fn api_up(config: &Path, b: &Boot) -> Result<String> {
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let c = ctl(config, &["--json", "version"])?;
        if c.code == 0 {
            return Ok(c.out);
        }
        ensure!(
            Instant::now() < deadline,
            "the API did not answer in 120 s: {}\n{}",
            c.err,
            b.tail()
        );
        std::thread::sleep(Duration::from_secs(2));
    }
}

/// The serial of the certificate the node serves on `endpoint`, read by
/// openssl (the independent TLS client; it sees the server's certificate
/// before the node asks for ours).
fn served_serial(endpoint: &str) -> Result<String> {
    let s = Command::new("openssl")
        .args(["s_client", "-connect", endpoint, "-tls1_3"])
        .stdin(std::process::Stdio::null())
        .output()?;
    let mut x = Command::new("openssl")
        .args(["x509", "-noout", "-serial"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()?;
    std::io::Write::write_all(x.stdin.as_mut().context("stdin")?, &s.stdout)?;
    let out = x.wait_with_output()?;
    let text = String::from_utf8_lossy(&out.stdout);
    text.trim()
        .strip_prefix("serial=")
        .map(str::to_string)
        .with_context(|| format!("no certificate from {endpoint}: {text}"))
}

#[test]
fn node_managed_through_its_api() -> Result<()> {
    require_tools(&["qemu-system-x86_64", "docker-registry", "mdir"])?;
    let v2 = release_dir("v2")?;
    ensure!(
        v2.join("oci/index.json").is_file(),
        "{} has no oci/ (ci/test builds it)",
        v2.display()
    );
    let work = tempfile::tempdir()?;
    let w = work.path();
    let port = free_port();
    let endpoint = format!("127.0.0.1:{port}");

    // The operator's side: secrets, the node's [api], three clients, and a
    // client of another CA.
    let secrets = w.join("secrets");
    cairn(&[&"gen", &"secrets", &"--out", &secrets])?;
    let api_toml = w.join("api.toml");
    cairn(&[
        &"gen",
        &"machine-api",
        &"--secrets",
        &secrets,
        &"--out",
        &api_toml,
    ])?;
    let client = |file: &str, role: &str, secrets: &Path| -> Result<PathBuf> {
        let out = w.join(file);
        cairn(&[
            &"gen",
            &"client",
            &"--secrets",
            &secrets,
            &"--role",
            &role,
            &"--name",
            &format!("e2e-{}", role.trim_start_matches("os:")),
            &"--endpoint",
            &endpoint,
            &"--out",
            &out,
        ])?;
        Ok(out)
    };
    let reader = client("reader.toml", "os:reader", &secrets)?;
    let operator = client("operator.toml", "os:operator", &secrets)?;
    let admin = client("admin.toml", "os:admin", &secrets)?;
    let other = w.join("other-ca");
    cairn(&[&"gen", &"secrets", &"--out", &other])?;
    let stranger = client("stranger.toml", "os:admin", &other)?;

    let mut reg = Registry::start();
    let pushed = Command::new(bin("cairn", "builder")?)
        .arg("push")
        .arg(&v2)
        .arg(format!("{}/cairn:2.0.0", reg.host()))
        .arg("--plain-http")
        .output()?;
    ensure!(
        pushed.status.success(),
        "cairn push: {}",
        String::from_utf8_lossy(&pushed.stderr)
    );

    let netdev = format!(
        "user,id=n0,restrict=on,hostfwd=tcp:127.0.0.1:{port}-:50000,guestfwd=tcp:10.0.2.100:5000-tcp:127.0.0.1:{}",
        reg.port
    );
    let extra = format!(
        "\n[network]\ndns = [\"10.0.2.3\"]\n\n{}",
        std::fs::read_to_string(&api_toml)?
    );
    let mut m = machine_with(
        "api",
        w,
        &["-netdev", &netdev, "-device", "virtio-net-pci,netdev=n0"],
        Some(&extra),
    )?;

    // ---- Boot 1: reads, refusals, config, a clean reboot.
    let mut b = m.boot()?;
    wait_all(
        &mut b,
        &[
            "cairn: boot ok slot=A version=1.0.0",
            "cairn: network up eth0",
        ],
    )?;
    let version = api_up(&reader, &b)?;
    ensure!(version.contains("1.0.0"), "version: {version}");

    let status = ok(&reader, &["--json", "status"])?;
    let s: serde_json::Value = serde_json::from_str(status.lines().next().unwrap_or("{}"))
        .with_context(|| format!("status --json: {status}"))?;
    let doc = &s["result"];
    ensure!(
        doc.to_string().contains("\"A\"") && doc.to_string().contains("1.0.0"),
        "status names slot A and 1.0.0: {doc}"
    );
    let sources = ok(&reader, &["logs"])?;
    ensure!(
        sources.contains(contract::control::INIT_SOURCE),
        "log sources: {sources}"
    );
    let init_log = ok(
        &reader,
        &["logs", contract::control::INIT_SOURCE, "--tail", "200"],
    )?;
    ensure!(
        init_log.contains("boot ok"),
        "init's log has `boot ok`:\n{init_log}"
    );
    let events = ok(&reader, &["events"])?;
    ensure!(events.contains("boot"), "events:\n{events}");
    ok(&reader, &["dmesg"])?;
    let health = ok(&reader, &["health"])?;
    ensure!(health.contains("least-privilege"), "health now: {health}");

    // Too weak a role: refused by the node, naming the role needed.
    let refused = ctl(&reader, &["reboot"])?;
    ensure!(
        refused.code == 1 && refused.err.contains("os:operator"),
        "a reader's reboot must be refused naming os:operator"
    );
    // Another CA: refused at the handshake (exit 3), the node untouched.
    let strange = ctl(&stranger, &["version"])?;
    ensure!(
        strange.code == 3 && strange.err.contains("handshake"),
        "a client of another CA must fail the TLS handshake"
    );

    // Config: an invalid one refused with its position, a valid one shown
    // as a diff, then stored for the next boot.
    let current = ok(&admin, &["config", "get"])?;
    ensure!(
        current.contains(contract::api::REDACTED) && !current.contains("PRIVATE KEY-----\nM"),
        "config get redacts the serving key:\n{current}"
    );
    let bad = w.join("bad.toml");
    std::fs::write(
        &bad,
        "hostname = \"n1\"\n[[health]]\nname = \"x\"\nexec = 42\n",
    )?;
    let c = ctl(&admin, &["config", "apply", bad.to_str().unwrap()])?;
    ensure!(
        c.code == 1 && c.err.contains("machine.toml:4"),
        "an invalid config is refused with its line"
    );
    let c = ctl(&operator, &["config", "apply", bad.to_str().unwrap()])?;
    ensure!(
        c.code == 1 && c.err.contains("os:admin"),
        "config apply needs os:admin"
    );
    // The config the node imported at first boot (machine_with wrote it;
    // it has the real key, not the redacted copy) plus one health check:
    // what an operator keeps in their repository and edits.
    let stored = std::fs::read_to_string(w.join("api-machine.toml"))?;
    let good = w.join("good.toml");
    std::fs::write(
        &good,
        format!(
            "{stored}\n[[health]]\nname = \"applied-by-api\"\nexec = \"/sbin/init\"\nargs = [\"--version\"]\ntimeout_s = 30\n"
        ),
    )?;
    let diff = ok(
        &admin,
        &["config", "apply", "--dry-run", good.to_str().unwrap()],
    )?;
    ensure!(
        diff.contains("+name = \"applied-by-api\""),
        "dry-run diff:\n{diff}"
    );
    ensure!(
        !ok(&reader, &["config", "get"])?.contains("applied-by-api"),
        "a dry run stores nothing"
    );
    ok(&admin, &["config", "apply", good.to_str().unwrap()])?;
    let applied = ok(&reader, &["events"])?;
    ensure!(
        applied.contains("config") && applied.contains("e2e-admin"),
        "the config event names the admin:\n{applied}"
    );

    // A reboot through the API is a clean one.
    ok(&operator, &["reboot"])?;
    b.expect("api: reboot requested by CN=e2e-operator", BOOT_TIMEOUT)?;
    b.expect("shutting down: stopping services", BOOT_TIMEOUT)?;
    let end = b.wait_exit(Duration::from_secs(120))?;
    ensure!(
        end == End::Reboot,
        "reboot through the API ended {end:?}\n{}",
        b.tail()
    );
    ensure!(
        !b.console().contains("remounting read-only"),
        "every mount was unmounted before the reboot:\n{}",
        b.tail()
    );

    // ---- Boot 2: the applied config, a refused second upgrade, the upgrade.
    let mut b = m.boot()?;
    wait_all(
        &mut b,
        &["cairn: boot ok slot=A version=1.0.0", "applied-by-api"],
    )?;
    api_up(&reader, &b)?;
    ensure!(
        !b.console().contains("recovering journal"),
        "STATE was cleanly unmounted:\n{}",
        b.tail()
    );
    let image = "10.0.2.100:5000/cairn:2.0.0";
    let first = Command::new(bin("cairnctl", "api")?)
        .arg("--config")
        .arg(&operator)
        .args(["upgrade", "--image", image, "--insecure"])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()?;
    // The first is pulling (tens of MiB through slirp): a second is refused.
    b.expect("requested by CN=e2e-operator", BOOT_TIMEOUT)?;
    let second = ctl(&operator, &["upgrade", "--image", image, "--insecure"])?;
    let first = first.wait_with_output()?;
    let first_out = String::from_utf8_lossy(&first.stdout);
    eprintln!(
        "first upgrade:\n{first_out}{}",
        String::from_utf8_lossy(&first.stderr)
    );
    ensure!(
        second.code == 1 && (second.err.contains("running") || second.err.contains("busy")),
        "a second upgrade while one runs is refused"
    );
    ensure!(first.status.success(), "the operator's upgrade succeeds");
    ensure!(
        first_out.contains("2.0.0") && first_out.lines().count() >= 3,
        "the upgrade streams its progress:\n{first_out}"
    );
    let end = b.wait_exit(Duration::from_secs(180))?;
    ensure!(
        end == End::Reboot,
        "after the upgrade the node reboots, ended {end:?}\n{}",
        b.tail()
    );

    // ---- Boot 3: 2.0.0, still managed; roll back.
    let mut b = m.boot()?;
    wait_all(&mut b, &["cairn: boot ok slot=B version=2.0.0"])?;
    let v = api_up(&reader, &b)?;
    ensure!(v.contains("2.0.0"), "version after the upgrade: {v}");
    ensure!(
        ctl(&reader, &["rollback"])?.code == 1,
        "a reader cannot roll back"
    );
    ok(&operator, &["rollback"])?;
    ok(&operator, &["reboot"])?;
    let end = b.wait_exit(Duration::from_secs(120))?;
    ensure!(end == End::Reboot, "reboot ended {end:?}\n{}", b.tail());

    // ---- Boot 4: 1.0.0 again.
    let mut b = m.boot()?;
    wait_all(&mut b, &["cairn: boot ok slot=A version=1.0.0"])?;
    let v = api_up(&reader, &b)?;
    ensure!(v.contains("1.0.0"), "version after the rollback: {v}");
    b.kill()?;
    reg.stop();

    // ---- A second node: upgrades from a bundle the client uploads.
    let tar = v2.join("update.tar");
    let tampered = w.join("tampered.tar");
    let mut bytes = std::fs::read(&tar)?;
    // A byte in the middle: inside a member the signed manifest lists, so
    // the upload is refused at its sha256, after all of it went through.
    let mid = bytes.len() / 2;
    bytes[mid] ^= 0xff;
    std::fs::write(&tampered, &bytes)?;
    drop(bytes);
    let netdev = format!("user,id=n0,restrict=on,hostfwd=tcp:127.0.0.1:{port}-:50000");
    let mut m = machine_with(
        "api-bundle",
        w,
        &["-netdev", &netdev, "-device", "virtio-net-pci,netdev=n0"],
        Some(&extra),
    )?;
    let mut b = m.boot()?;
    wait_all(&mut b, &["cairn: boot ok slot=A version=1.0.0"])?;
    api_up(&reader, &b)?;

    // Rotate the serving certificate: an operator may not; the admin's is
    // stored, cairnd restarts, the node serves the new one.
    let sec = secrets.to_str().context("path")?;
    let first_serial = served_serial(&endpoint)?;
    let refused = ctl(&operator, &["rotate-certs", "--secrets", sec])?;
    ensure!(
        refused.code == 1 && refused.err.contains("needs role os:admin"),
        "an operator cannot rotate certificates"
    );
    let out = ok(&admin, &["rotate-certs", "--secrets", sec])?;
    let serial = out
        .split("serial ")
        .nth(1)
        .and_then(|r| r.split_whitespace().next())
        .with_context(|| format!("no serial in: {out}"))?
        .to_string();
    ensure!(serial != first_serial, "a new serial");
    b.expect("api: API serving certificate rotated", BOOT_TIMEOUT)?;
    let deadline = Instant::now() + Duration::from_secs(60);
    while served_serial(&endpoint).ok().as_deref() != Some(serial.as_str()) {
        ensure!(
            Instant::now() < deadline,
            "the node still serves {first_serial}, not the rotated {serial}\n{}",
            b.tail()
        );
        std::thread::sleep(Duration::from_secs(1));
    }
    api_up(&reader, &b)?;

    let t = tampered.to_str().context("temp path")?;
    let refused = ctl(&operator, &["upgrade", "--bundle", t])?;
    ensure!(
        refused.code == 1 && refused.err.contains("sha256"),
        "a tampered bundle is refused at its digest (exit {}): {}{}",
        refused.code,
        refused.out,
        refused.err
    );
    let v = ok(&reader, &["version"])?;
    ensure!(
        v.contains("1.0.0") && !b.console().contains("rebooting into the upgrade"),
        "after a refused bundle the node runs 1.0.0 on: {v}"
    );
    let up = ok(
        &operator,
        &["upgrade", "--bundle", tar.to_str().context("path")?],
    )?;
    ensure!(
        up.contains("installed") && up.contains("2.0.0"),
        "the bundle upgrade streams progress and is installed:\n{up}"
    );
    let end = b.wait_exit(Duration::from_secs(180))?;
    ensure!(
        end == End::Reboot,
        "after the bundle upgrade the node reboots, ended {end:?}\n{}",
        b.tail()
    );
    let mut b = m.boot()?;
    wait_all(&mut b, &["cairn: boot ok slot=B version=2.0.0"])?;
    let v = api_up(&reader, &b)?;
    ensure!(v.contains("2.0.0"), "version after the bundle upgrade: {v}");
    ensure!(
        served_serial(&endpoint)? == serial,
        "the rotated certificate is stored: served after the reboot too"
    );
    b.kill()?;
    Ok(())
}
