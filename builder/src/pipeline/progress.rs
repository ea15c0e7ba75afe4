//! One spinner per stage on a terminal, and one log line per stage always.

use std::time::{Duration, Instant};

use anyhow::Result;
use indicatif::{ProgressBar, ProgressStyle};

/// Shows one spinner per stage; quiet when stderr is not a terminal.
pub struct Progress {
    started: Instant,
}

impl Progress {
    pub fn new() -> Self {
        Progress {
            started: Instant::now(),
        }
    }

    pub fn step<T>(&self, what: &str, f: impl FnOnce() -> Result<T>) -> Result<T> {
        let pb = ProgressBar::new_spinner();
        pb.set_style(
            ProgressStyle::with_template("{spinner} [{elapsed:>4}] {msg}")
                .unwrap_or_else(|_| ProgressStyle::default_spinner()),
        );
        pb.set_message(what.to_string());
        pb.enable_steady_tick(Duration::from_millis(200));
        let r = f();
        pb.finish_and_clear();
        tracing::info!(
            "{what}: {} ({:.1}s total)",
            if r.is_ok() { "done" } else { "failed" },
            self.started.elapsed().as_secs_f64()
        );
        r
    }
}

impl Default for Progress {
    fn default() -> Self {
        Self::new()
    }
}
