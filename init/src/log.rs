//! Console and kernel-log output with a `cairn:` prefix and the monotonic
//! time. Before the PID-1 sinks are opened (tests, `--version`) it writes to
//! stderr.

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::sync::{Arc, Mutex};

struct Sinks {
    console: Option<File>,
    kmsg: Option<File>,
}

static SINKS: Mutex<Sinks> = Mutex::new(Sinks {
    console: None,
    kmsg: None,
});

/// Opens /dev/console and /dev/kmsg (after /dev is mounted).
pub fn open_pid1() {
    let mut s = SINKS.lock().unwrap_or_else(|e| e.into_inner());
    s.console = OpenOptions::new().write(true).open("/dev/console").ok();
    s.kmsg = OpenOptions::new().write(true).open("/dev/kmsg").ok();
}

pub fn line(msg: &str) {
    // Into the ring first: its lock is never held while writing a sink.
    crate::ring::RING.push_line(
        contract::control::INIT_SOURCE,
        contract::control::INIT_SOURCE,
        msg,
    );
    let t = crate::sys::monotonic();
    let text = format!(
        "[{:5}.{:06}] cairn: {msg}\n",
        t.as_secs(),
        t.subsec_micros()
    );
    let mut s = SINKS.lock().unwrap_or_else(|e| e.into_inner());
    match s.console.as_mut() {
        Some(c) => {
            let _ = c.write_all(text.as_bytes());
        }
        None => {
            let _ = std::io::stderr().write_all(text.as_bytes());
        }
    }
    if let Some(k) = s.kmsg.as_mut() {
        // Debug level: the kernel copies lower levels to the console, which
        // would print every line twice at the default console log level.
        let _ = k.write_all(format!("<7>cairn: {msg}\n").as_bytes());
    }
}

#[macro_export]
macro_rules! say {
    ($($t:tt)*) => { $crate::log::line(&format!($($t)*)) };
}

/// The console as a writer for service output.
pub fn console_writer() -> Arc<Mutex<dyn Write + Send>> {
    let f = OpenOptions::new().write(true).open("/dev/console");
    match f {
        Ok(f) => Arc::new(Mutex::new(f)),
        Err(_) => Arc::new(Mutex::new(std::io::stderr())),
    }
}
