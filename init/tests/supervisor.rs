//! The supervisor against real child processes (`/bin/sh -c ...`).
//! Every test reaps with waitpid(-1), so they run one at a time.

use cairn_init::supervisor::{Backoff, Console, Event, Exit, Supervisor};
use contract::machine::{Restart, Service, NOBODY};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

static SERIAL: Mutex<()> = Mutex::new(());

fn serial() -> MutexGuard<'static, ()> {
    SERIAL.lock().unwrap_or_else(|e| e.into_inner())
}

fn sh(name: &str, script: &str, restart: Restart) -> Service {
    Service {
        name: name.into(),
        exec: "/bin/sh".into(),
        args: vec!["-c".into(), script.into()],
        restart,
        user: NOBODY,
        group: NOBODY,
        capabilities: vec![],
    }
}

fn fast() -> Backoff {
    Backoff {
        base: Duration::from_millis(100),
        cap: Duration::from_millis(400),
        stable: Duration::from_secs(60),
    }
}

struct Buf(Arc<Mutex<Vec<u8>>>);
impl std::io::Write for Buf {
    fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(b);
        Ok(b.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

fn console() -> (Console, Arc<Mutex<Vec<u8>>>) {
    let v = Arc::new(Mutex::new(Vec::new()));
    (Arc::new(Mutex::new(Buf(v.clone()))), v)
}

/// The PID-1 loop in miniature, polling instead of waiting for SIGCHLD.
fn run_for(s: &mut Supervisor, d: Duration, events: &mut Vec<(Instant, Event)>) {
    let end = Instant::now() + d;
    while Instant::now() < end {
        let now = Instant::now();
        for e in s.reap(now).into_iter().chain(s.start_due(now)) {
            events.push((now, e));
        }
        std::thread::sleep(Duration::from_millis(5));
    }
}

fn text(v: &Arc<Mutex<Vec<u8>>>) -> String {
    String::from_utf8_lossy(&v.lock().unwrap()).into_owned()
}

#[test]
fn failing_service_restarts_with_growing_capped_backoff() {
    let _g = serial();
    let (con, out) = console();
    let mut s = Supervisor::new(
        vec![sh("flaky", "echo attempt; exit 3", Restart::OnFailure)],
        fast(),
        con,
    );
    let mut ev: Vec<_> = s
        .start_all(Instant::now())
        .into_iter()
        .map(|e| (Instant::now(), e))
        .collect();
    run_for(&mut s, Duration::from_millis(1900), &mut ev);
    let starts: Vec<Instant> = ev
        .iter()
        .filter(|(_, e)| matches!(e, Event::Started { .. }))
        .map(|(t, _)| *t)
        .collect();
    let delays: Vec<Duration> = ev
        .iter()
        .filter_map(|(_, e)| match e {
            Event::Exited {
                exit, restart_in, ..
            } => {
                assert_eq!(*exit, Exit::Code(3));
                *restart_in
            }
            _ => None,
        })
        .collect();
    // 100, 200, 400, 400 ... ms: doubling, then capped
    assert!(delays.len() >= 4, "{delays:?}");
    assert_eq!(
        &delays[..4],
        [100, 200, 400, 400].map(Duration::from_millis)
    );
    // and the restarts really waited that long
    for (i, w) in starts.windows(2).enumerate() {
        assert!(
            w[1] - w[0] >= delays[i],
            "restart {i} came after {:?}",
            w[1] - w[0]
        );
    }
    assert_eq!(s.starts("flaky") as usize, starts.len());
    assert!(
        starts.len() >= 4 && starts.len() <= 7,
        "{} starts",
        starts.len()
    );
    let o = text(&out);
    assert!(o.contains("flaky: attempt\n"), "{o}");
    assert!(
        o.contains("cairn: flaky ended (exit code 3); restarting in 200 ms"),
        "{o}"
    );
}

#[test]
fn restart_policies_on_clean_exit() {
    let _g = serial();
    let (con, _out) = console();
    let mut s = Supervisor::new(
        vec![
            sh("once", "exit 0", Restart::OnFailure),
            sh("never", "exit 1", Restart::Never),
            sh("always", "exit 0", Restart::Always),
        ],
        fast(),
        con,
    );
    let mut ev = Vec::new();
    s.start_all(Instant::now());
    run_for(&mut s, Duration::from_millis(500), &mut ev);
    assert_eq!(s.starts("once"), 1);
    assert_eq!(s.last_exit("once"), Some(Exit::Code(0)));
    assert_eq!(s.starts("never"), 1);
    assert_eq!(s.last_exit("never"), Some(Exit::Code(1)));
    assert!(
        s.starts("always") >= 2,
        "always restarted {} times",
        s.starts("always")
    );
}

#[test]
fn missing_executable_is_a_failure_not_a_crash() {
    let _g = serial();
    let (con, out) = console();
    let svc = Service {
        name: "ghost".into(),
        exec: "/nonexistent/bin".into(),
        args: vec![],
        restart: Restart::OnFailure,
        user: NOBODY,
        group: NOBODY,
        capabilities: vec![],
    };
    let mut s = Supervisor::new(vec![svc], fast(), con);
    let ev = s.start_all(Instant::now());
    assert!(
        matches!(
            &ev[..],
            [Event::Exited {
                exit: Exit::SpawnFailed,
                restart_in: Some(_),
                ..
            }]
        ),
        "{ev:?}"
    );
    assert!(text(&out).contains("starting ghost (/nonexistent/bin)"));
}

#[test]
fn orphans_are_reaped() {
    let _g = serial();
    // Make this test process inherit orphans, as PID 1 does.
    // SAFETY: prctl with integer arguments.
    assert_eq!(
        unsafe { libc::prctl(libc::PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) },
        0
    );
    let (con, out) = console();
    let mut s = Supervisor::new(
        vec![sh(
            "parent",
            "sleep 0.3 </dev/null >/dev/null 2>&1 & echo $!; exit 0",
            Restart::Never,
        )],
        fast(),
        con,
    );
    let mut ev = Vec::new();
    s.start_all(Instant::now());
    run_for(&mut s, Duration::from_millis(1200), &mut ev);
    let o = text(&out);
    let orphan: i32 = o
        .lines()
        .find_map(|l| l.strip_prefix("parent: "))
        .and_then(|p| p.trim().parse().ok())
        .unwrap_or_else(|| panic!("no pid printed: {o}"));
    assert!(
        ev.iter().any(|(_, e)| *e
            == Event::Orphan {
                pid: orphan,
                exit: Exit::Code(0)
            }),
        "orphan {orphan} not reaped: {ev:?}"
    );
    // nothing left to reap: no zombies
    // SAFETY: plain waitpid.
    let r = unsafe { libc::waitpid(-1, std::ptr::null_mut(), libc::WNOHANG) };
    assert_eq!(r, -1);
    assert!(!std::path::Path::new(&format!("/proc/{orphan}")).exists());
}

#[test]
fn stop_terms_then_kills() {
    let _g = serial();
    let (con, out) = console();
    let mut s = Supervisor::new(
        vec![
            sh("polite", "exec sleep 30", Restart::Always),
            sh("stubborn", "trap '' TERM; exec sleep 30", Restart::Always),
        ],
        fast(),
        con,
    );
    s.start_all(Instant::now());
    std::thread::sleep(Duration::from_millis(200));
    let t = Instant::now();
    let ev = s.stop_all(Duration::from_millis(500));
    let took = t.elapsed();
    // The grace period is waited out; the upper bound only has to stay
    // well under the services' 30 s sleep (they were killed, not waited
    // for) and loose enough for a loaded CI machine.
    assert!(
        took >= Duration::from_millis(500) && took < Duration::from_secs(20),
        "{took:?}"
    );
    let exit = |n: &str| {
        ev.iter().find_map(|e| match e {
            Event::Exited {
                name,
                exit,
                restart_in,
            } if name == n => {
                assert_eq!(*restart_in, None);
                Some(*exit)
            }
            _ => None,
        })
    };
    assert_eq!(exit("polite"), Some(Exit::Signal(libc::SIGTERM)));
    assert_eq!(exit("stubborn"), Some(Exit::Signal(libc::SIGKILL)));
    assert_eq!(s.pid("polite"), None);
    assert!(text(&out).contains("stubborn did not stop within 500 ms; killing"));
}

#[test]
fn health_checks_pass_when_service_is_ready_and_time_out_otherwise() {
    use cairn_init::health::run_checks;
    use contract::machine::Health;
    let _g = serial();
    // Services see a read-only root and run as nobody: the marker goes
    // on a separate, world-writable tmpfs.
    let dir = tempfile::tempdir_in("/dev/shm").unwrap();
    std::fs::set_permissions(
        dir.path(),
        std::os::unix::fs::PermissionsExt::from_mode(0o777),
    )
    .unwrap();
    let ready = dir.path().join("ready");
    let (con, _out) = console();
    let mut s = Supervisor::new(
        vec![sh(
            "svc",
            &format!("sleep 0.5; touch {}; exec sleep 30", ready.display()),
            Restart::Always,
        )],
        fast(),
        con,
    );
    s.start_all(Instant::now());
    let check = |name: &str, script: String, timeout_s| Health {
        name: name.into(),
        exec: "/bin/sh".into(),
        args: vec!["-c".into(), script],
        timeout_s,
        user: NOBODY,
        group: NOBODY,
        capabilities: vec![],
    };
    let t = Instant::now();
    run_checks(
        &mut s,
        &[check("ready", format!("test -e {}", ready.display()), 5)],
        Duration::from_millis(100),
    )
    .unwrap();
    assert!(
        t.elapsed() >= Duration::from_millis(400),
        "passed before the service was ready"
    );

    let e = run_checks(
        &mut s,
        // retry leaves the last attempt ~500 ms to run, even on a busy machine
        &[check("never", "exit 7".into(), 2)],
        Duration::from_millis(500),
    )
    .unwrap_err();
    assert!(
        e.starts_with("health check never did not pass within 2 s"),
        "{e}"
    );
    assert!(e.ends_with("last: exit code 7)"), "{e}");

    let t = Instant::now();
    let e = run_checks(
        &mut s,
        &[check("hang", "exec sleep 30".into(), 1)],
        Duration::from_millis(200),
    )
    .unwrap_err();
    assert!(e.contains("still running at the deadline"), "{e}");
    // Under the hung check's 30 s sleep: the deadline ended the wait.
    assert!(t.elapsed() < Duration::from_secs(20), "{:?}", t.elapsed());
    s.stop_all(Duration::from_millis(500));
}

/// What the control socket serves: a service's stdout and stderr as lines
/// of its own source, its start and exit as service events.
#[test]
fn output_and_lifecycle_reach_the_ring() {
    use cairn_init::ring::RING;
    use contract::control::EventKind;
    let _g = serial();
    let (con, _out) = console();
    let mut s = Supervisor::new(
        vec![sh("ringer", "echo to-out; echo to-err >&2", Restart::Never)],
        fast(),
        con,
    );
    s.start_all(Instant::now());
    let mut ev = Vec::new();
    let t = Instant::now();
    while RING.tail("ringer", None).map_or(0, |l| l.len()) < 2 || s.pid("ringer").is_some() {
        assert!(
            t.elapsed() < Duration::from_secs(10),
            "no output in the ring"
        );
        run_for(&mut s, Duration::from_millis(20), &mut ev);
    }
    let lines = RING.tail("ringer", None).unwrap();
    let mut got: Vec<_> = lines
        .iter()
        .map(|l| (l.stream.as_str(), l.text.as_str()))
        .collect();
    got.sort();
    assert_eq!(got, [("err", "to-err"), ("out", "to-out")]);
    let events: Vec<_> = RING
        .events()
        .into_iter()
        .filter(|e| e.kind == EventKind::Service && e.message.contains("ringer"))
        .map(|e| e.message)
        .collect();
    assert!(events[0].starts_with("started ringer"), "{events:?}");
    assert!(
        events
            .iter()
            .any(|m| m.contains("ringer ended (exit code 0)")),
        "{events:?}"
    );
}

/// The control socket's `health`: each check once, now, off the main loop,
/// a hung one killed at its timeout.
#[test]
fn health_now_runs_each_check_once() {
    use cairn_init::health::run_now;
    use contract::machine::Health;
    let _g = serial();
    let (con, _out) = console();
    let check = |name: &str, script: &str, timeout_s| Health {
        name: name.into(),
        exec: "/bin/sh".into(),
        args: vec!["-c".into(), script.into()],
        timeout_s,
        user: NOBODY,
        group: NOBODY,
        capabilities: vec![],
    };
    let t = Instant::now();
    let r = run_now(
        &[
            check("ok", "exit 0", 5),
            check("bad", "exit 4", 5),
            check("hung", "exec sleep 30", 1),
        ],
        &con,
    );
    assert!(t.elapsed() < Duration::from_secs(10));
    let got: Vec<_> = r.iter().map(|c| (c.name.as_str(), c.ok)).collect();
    assert_eq!(got, [("ok", true), ("bad", false), ("hung", false)]);
    assert_eq!(r[1].detail, "exit code 4");
    assert!(r[2].detail.contains("killed"), "{}", r[2].detail);
}
