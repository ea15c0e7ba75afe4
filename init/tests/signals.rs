//! PID 1's event wait: the handled signals are blocked and collected with
//! sigtimedwait, including SIGCHLD from exiting children, and the wait is
//! bounded. Runs without the test harness so no other thread can take the
//! process-directed signals.

use cairn_init::sys::{block_signals, wait_signal};
use std::time::{Duration, Instant};

fn main() {
    block_signals();

    // nothing pending: returns after the timeout, not before, and by itself
    // (the upper bound is loose: a loaded CI machine may be slow to wake it)
    let t = Instant::now();
    assert_eq!(wait_signal(Duration::from_millis(300)), None);
    let e = t.elapsed();
    assert!(
        e >= Duration::from_millis(290) && e < Duration::from_secs(20),
        "{e:?}"
    );

    // a child's exit wakes the loop with SIGCHLD (the child still needs reaping)
    let mut child = std::process::Command::new("/bin/true").spawn().unwrap();
    assert_eq!(wait_signal(Duration::from_secs(5)), Some(libc::SIGCHLD));
    assert!(child.wait().unwrap().success());

    // the shutdown signals queue while blocked instead of killing the process
    for sig in [libc::SIGTERM, libc::SIGINT, libc::SIGUSR2] {
        // SAFETY: sending a blocked signal to ourselves.
        assert_eq!(unsafe { libc::kill(libc::getpid(), sig) }, 0);
        assert_eq!(wait_signal(Duration::from_secs(5)), Some(sig));
    }

    // std passes the blocked mask on to children: a plain Command child
    // ignores SIGTERM...
    let mut c = std::process::Command::new("/bin/sleep")
        .arg("30")
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_millis(100));
    // SAFETY: signalling our own child.
    unsafe { libc::kill(c.id() as i32, libc::SIGTERM) };
    std::thread::sleep(Duration::from_millis(300));
    assert!(
        c.try_wait().unwrap().is_none(),
        "blocked SIGTERM should not kill it"
    );
    c.kill().unwrap();
    c.wait().unwrap();
    // ...while init's commands start with a clean mask and can be stopped.
    let mut c = cairn_init::sys::command("/bin/sleep")
        .arg("30")
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_millis(100));
    // SAFETY: signalling our own child.
    unsafe { libc::kill(c.id() as i32, libc::SIGTERM) };
    let st = c.wait().unwrap();
    assert_eq!(
        std::os::unix::process::ExitStatusExt::signal(&st),
        Some(libc::SIGTERM)
    );

    // and so are services: stop_all's SIGTERM ends them without the KILL fallback
    use cairn_init::supervisor::{Backoff, Event, Exit, Supervisor};
    use contract::machine::{Restart, Service};
    let console: cairn_init::supervisor::Console =
        std::sync::Arc::new(std::sync::Mutex::new(std::io::sink()));
    let svc = Service {
        name: "s".into(),
        exec: "/bin/sleep".into(),
        args: vec!["30".into()],
        restart: Restart::Always,
        user: contract::machine::NOBODY,
        group: contract::machine::NOBODY,
        capabilities: vec![],
    };
    let mut sup = Supervisor::new(vec![svc], Backoff::default(), console);
    sup.start_all(Instant::now());
    std::thread::sleep(Duration::from_millis(100));
    let ev = sup.stop_all(Duration::from_secs(3));
    assert!(
        ev.iter().any(|e| matches!(
            e,
            Event::Exited {
                exit: Exit::Signal(libc::SIGTERM),
                ..
            }
        )),
        "{ev:?}"
    );
    println!("signals: ok");
}
