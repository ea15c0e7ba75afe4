//! Console and kernel-log output with a `cairn:` prefix and the monotonic
//! time. Before the PID-1 sinks are opened (tests, `--version`) it writes to
//! stderr.

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::os::fd::AsRawFd;
use std::os::unix::fs::OpenOptionsExt;
use std::sync::{Arc, Mutex};

struct Sinks {
    console: Option<File>,
    /// Every active console, once [`every_console`] opened them; then
    /// lines go here instead of to `console`.
    consoles: Vec<File>,
    kmsg: Option<File>,
}

static SINKS: Mutex<Sinks> = Mutex::new(Sinks {
    console: None,
    consoles: Vec::new(),
    kmsg: None,
});

/// The kernel's active consoles: `/sys/class/tty/console/active` lists
/// them (`tty0 ttyS0`), while /dev/console is only the last `console=`.
const ACTIVE_CONSOLES: &str = "/sys/class/tty/console/active";

/// Device nodes of the consoles named in `active` (the content of
/// [`ACTIVE_CONSOLES`]), in the kernel's order, each once.
fn console_nodes(active: &str) -> Vec<String> {
    let mut out: Vec<String> = Vec::new();
    for name in active.split_whitespace() {
        // A name is a plain device name; never follow one out of /dev.
        if name.contains('/') || name.starts_with('.') {
            continue;
        }
        let node = format!("/dev/{name}");
        if !out.contains(&node) {
            out.push(node);
        }
    }
    out
}

/// Sends every following line to each active console rather than to
/// /dev/console alone, so a monitor on tty0 shows what the serial line
/// shows (install mode: whoever watches the screen must see the install).
/// Keeps /dev/console if none of them opens.
pub fn every_console() {
    let active = std::fs::read_to_string(ACTIVE_CONSOLES).unwrap_or_default();
    let mut files = Vec::new();
    for node in console_nodes(&active) {
        // O_NONBLOCK only for the open, which would otherwise wait for a
        // serial line's carrier; writes then block as /dev/console's do,
        // so no line is dropped when the line is slow.
        let f = OpenOptions::new()
            .write(true)
            .custom_flags(libc::O_NOCTTY | libc::O_NONBLOCK)
            .open(&node);
        if let Ok(f) = f {
            // SAFETY: fcntl on a descriptor we own; clears O_NONBLOCK.
            unsafe {
                let fl = libc::fcntl(f.as_raw_fd(), libc::F_GETFL);
                if fl >= 0 {
                    libc::fcntl(f.as_raw_fd(), libc::F_SETFL, fl & !libc::O_NONBLOCK);
                }
            }
            files.push(f);
        }
    }
    if !files.is_empty() {
        let mut s = SINKS.lock().unwrap_or_else(|e| e.into_inner());
        s.consoles = files;
    }
}

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
    if !s.consoles.is_empty() {
        for c in s.consoles.iter_mut() {
            let _ = c.write_all(text.as_bytes());
        }
    } else {
        match s.console.as_mut() {
            Some(c) => {
                let _ = c.write_all(text.as_bytes());
            }
            None => {
                let _ = std::io::stderr().write_all(text.as_bytes());
            }
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

#[cfg(test)]
mod tests {
    #[test]
    fn every_active_console_once_never_outside_dev() {
        assert_eq!(
            super::console_nodes("tty0 ttyS0\n"),
            ["/dev/tty0", "/dev/ttyS0"]
        );
        assert_eq!(
            super::console_nodes("ttyS0 ttyS0 ../sda x/y"),
            ["/dev/ttyS0"]
        );
        assert!(super::console_nodes("").is_empty());
    }
}
