//! Health checks gate blessing: each configured check must exit 0 within
//! its `timeout_s`, retried while it fails. Services keep being supervised
//! meanwhile (`tick` reaps and restarts).

use crate::supervisor::{Console, Exit, Supervisor};
use contract::control::EventKind;
use contract::machine::Health;
use serde::Serialize;
use std::time::{Duration, Instant};

pub const RETRY: Duration = Duration::from_secs(1);

fn tick(sup: &mut Supervisor, pause: Duration) {
    let now = Instant::now();
    sup.reap(now);
    sup.start_due(now);
    std::thread::sleep(pause);
}

/// Runs the checks in order; `Err` names the check that did not pass.
pub fn run_checks(sup: &mut Supervisor, checks: &[Health], retry: Duration) -> Result<(), String> {
    for h in checks {
        let deadline = Instant::now() + Duration::from_secs(h.timeout_s as u64);
        let mut attempts = 0u32;
        loop {
            attempts += 1;
            let spawned = crate::privs::Privileges::of_health(h)
                .map_err(|e| std::io::Error::other(format!("capabilities: {e}")))
                .and_then(|p| {
                    sup.spawn_oneshot(&format!("health/{}", h.name), &h.exec, &h.args, p)
                });
            let last = match spawned {
                Err(e) => format!("cannot start {}: {e}", h.exec),
                Ok(pid) => {
                    let exit = loop {
                        if let Some(x) = sup.take_oneshot(pid) {
                            break Some(x);
                        }
                        if Instant::now() >= deadline {
                            sup.kill_oneshot(pid);
                            let until = Instant::now() + Duration::from_secs(2);
                            while sup.take_oneshot(pid).is_none() && Instant::now() < until {
                                tick(sup, Duration::from_millis(10));
                            }
                            break None;
                        }
                        tick(sup, Duration::from_millis(20));
                    };
                    match exit {
                        Some(Exit::Code(0)) => {
                            let msg =
                                format!("health check {} passed (attempt {attempts})", h.name);
                            crate::say!("{msg}");
                            crate::ring::event(EventKind::Health, None, msg);
                            break;
                        }
                        Some(x) => x.to_string(),
                        None => "still running at the deadline".into(),
                    }
                }
            };
            if Instant::now() + retry >= deadline {
                let msg = format!(
                    "health check {} did not pass within {} s ({attempts} attempts, last: {last})",
                    h.name, h.timeout_s
                );
                crate::ring::event(EventKind::Health, None, msg.clone());
                return Err(msg);
            }
            let resume = Instant::now() + retry;
            while Instant::now() < resume {
                tick(sup, Duration::from_millis(20));
            }
        }
    }
    Ok(())
}

/// One check's result, as the control socket's `health` answers it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct CheckResult {
    pub name: String,
    pub ok: bool,
    pub detail: String,
}

/// Runs each check once now (the node API's `health`), confined as at
/// boot, each within its `timeout_s`; no retries: the answer is the
/// node's state at this moment. An event per check. Called off the main
/// loop: the one-shot registry hands each exit to this thread whoever
/// reaps it.
pub fn run_now(checks: &[Health], console: &Console) -> Vec<CheckResult> {
    checks
        .iter()
        .map(|h| {
            let (ok, detail) = match once(h, console) {
                Ok(()) => (true, "exit code 0".to_string()),
                Err(e) => (false, e),
            };
            let msg = format!(
                "health check {} {}: {detail}",
                h.name,
                if ok { "passed" } else { "failed" }
            );
            crate::ring::event(EventKind::Health, None, msg);
            CheckResult {
                name: h.name.clone(),
                ok,
                detail,
            }
        })
        .collect()
}

fn once(h: &Health, console: &Console) -> Result<(), String> {
    let p = crate::privs::Privileges::of_health(h).map_err(|e| format!("capabilities: {e}"))?;
    let pid = crate::supervisor::start_oneshot(
        &format!("health/{}", h.name),
        &h.exec,
        &h.args,
        p,
        console,
    )
    .map_err(|e| format!("cannot start {}: {e}", h.exec))?;
    let deadline = Instant::now() + Duration::from_secs(h.timeout_s as u64);
    loop {
        if let Some(x) = crate::supervisor::take_oneshot(pid) {
            return if x.success() {
                Ok(())
            } else {
                Err(x.to_string())
            };
        }
        if Instant::now() >= deadline {
            crate::supervisor::kill_oneshot(pid);
            let until = Instant::now() + Duration::from_secs(2);
            while crate::supervisor::take_oneshot(pid).is_none() && Instant::now() < until {
                std::thread::sleep(Duration::from_millis(10));
            }
            return Err(format!("still running after {} s; killed", h.timeout_s));
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}
