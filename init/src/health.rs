//! Health checks gate blessing: each configured check must exit 0 within
//! its `timeout_s`, retried while it fails. Services keep being supervised
//! meanwhile (`tick` reaps and restarts).

use crate::supervisor::{Exit, Supervisor};
use contract::machine::Health;
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
                            crate::say!("health check {} passed (attempt {attempts})", h.name);
                            break;
                        }
                        Some(x) => x.to_string(),
                        None => "still running at the deadline".into(),
                    }
                }
            };
            if Instant::now() + retry >= deadline {
                return Err(format!(
                    "health check {} did not pass within {} s ({attempts} attempts, last: {last})",
                    h.name, h.timeout_s
                ));
            }
            let resume = Instant::now() + retry;
            while Instant::now() < resume {
                tick(sup, Duration::from_millis(20));
            }
        }
    }
    Ok(())
}
