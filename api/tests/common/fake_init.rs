//! A fake init: a thread serving contract::control on a Unix socket in a
//! temp dir. A script turns each request into steps (replies, pauses, or
//! holding the connection open as a follower); requests are recorded, and
//! the test can push replies to the held connections.

use contract::control::{ErrorKind, Event, EventKind, LogLine, Reply, Request};
use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

pub enum Step {
    Send(Reply),
    Sleep(u64),
    /// Keep the connection open (following) until the client hangs up or
    /// [`FakeInit::release`]; [`FakeInit::push`] writes to it.
    Hold,
    /// Read the request's body (`UpgradeBundle`'s `size` bytes, or less if
    /// the connection ends first) into [`FakeInit::bodies`].
    ReadBody,
}

type Script = dyn Fn(&Request) -> Vec<Step> + Send + Sync;

#[derive(Default)]
struct Shared {
    requests: Mutex<Vec<Request>>,
    bodies: Mutex<Vec<Vec<u8>>>,
    held: Mutex<Vec<(u64, UnixStream)>>,
    hangups: AtomicUsize,
    ids: AtomicU64,
}

pub struct FakeInit {
    pub dir: tempfile::TempDir,
    pub path: PathBuf,
    shared: Arc<Shared>,
}

impl FakeInit {
    pub fn start(script: impl Fn(&Request) -> Vec<Step> + Send + Sync + 'static) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("control.sock");
        let listener = UnixListener::bind(&path).unwrap();
        let shared = Arc::new(Shared::default());
        let script: Arc<Script> = Arc::new(script);
        let sh = shared.clone();
        std::thread::spawn(move || {
            for conn in listener.incoming() {
                let Ok(conn) = conn else { return };
                let (sh, script) = (sh.clone(), script.clone());
                std::thread::spawn(move || serve(conn, &sh, &*script));
            }
        });
        FakeInit { dir, path, shared }
    }

    pub fn requests(&self) -> Vec<Request> {
        self.shared.requests.lock().unwrap().clone()
    }

    /// The bodies read by [`Step::ReadBody`].
    pub fn bodies(&self) -> Vec<Vec<u8>> {
        self.shared.bodies.lock().unwrap().clone()
    }

    /// Writes `r` to every held connection.
    pub fn push(&self, r: &Reply) {
        for (_, s) in self.shared.held.lock().unwrap().iter_mut() {
            let _ = s.write_all(r.line().as_bytes());
        }
    }

    pub fn held(&self) -> usize {
        self.shared.held.lock().unwrap().len()
    }

    /// Held connections the client closed.
    pub fn hangups(&self) -> usize {
        self.shared.hangups.load(Ordering::SeqCst)
    }

    /// Closes the held connections from init's side.
    pub fn release(&self) {
        for (_, s) in self.shared.held.lock().unwrap().iter() {
            let _ = s.shutdown(std::net::Shutdown::Both);
        }
    }

    /// Waits (up to 10 s) for `cond`.
    pub fn wait(&self, what: &str, cond: impl Fn(&FakeInit) -> bool) {
        let t = Instant::now();
        while !cond(self) {
            assert!(t.elapsed() < Duration::from_secs(10), "timed out: {what}");
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

fn serve(conn: UnixStream, sh: &Shared, script: &Script) {
    let mut reader = BufReader::new(conn.try_clone().unwrap());
    let mut line = String::new();
    if reader.read_line(&mut line).unwrap_or(0) == 0 {
        return;
    }
    let mut w = conn;
    let req: Request = match serde_json::from_str(&line) {
        Ok(r) => r,
        Err(e) => {
            let _ = w.write_all(
                Reply::refused(ErrorKind::Invalid, e.to_string())
                    .line()
                    .as_bytes(),
            );
            return;
        }
    };
    sh.requests.lock().unwrap().push(req.clone());
    for step in script(&req) {
        match step {
            Step::Send(r) => {
                if w.write_all(r.line().as_bytes()).is_err() {
                    return;
                }
            }
            Step::Sleep(ms) => std::thread::sleep(Duration::from_millis(ms)),
            Step::ReadBody => {
                let size = match &req {
                    Request::UpgradeBundle { size, .. } => *size,
                    _ => 0,
                };
                let mut body = Vec::new();
                let _ = (&mut reader).take(size).read_to_end(&mut body);
                sh.bodies.lock().unwrap().push(body);
            }
            Step::Hold => {
                let id = sh.ids.fetch_add(1, Ordering::SeqCst);
                sh.held.lock().unwrap().push((id, w.try_clone().unwrap()));
                // The client sends nothing more: a read ends at its hang-up
                // (or at release()).
                let mut buf = [0u8; 64];
                while matches!(reader.read(&mut buf), Ok(n) if n > 0) {}
                sh.held.lock().unwrap().retain(|(i, _)| *i != id);
                sh.hangups.fetch_add(1, Ordering::SeqCst);
                return;
            }
        }
    }
}

pub fn log(source: &str, seq: u64, text: &str) -> Reply {
    Reply::Log(LogLine {
        source: source.into(),
        seq,
        ms: seq * 10,
        stream: "out".into(),
        text: text.into(),
    })
}

pub fn event(seq: u64, kind: EventKind, message: &str) -> Reply {
    Reply::Event(Event {
        seq,
        ms: seq * 10,
        kind,
        by: None,
        message: message.into(),
    })
}

pub fn done(result: serde_json::Value) -> Reply {
    Reply::Done { result }
}

/// Rotations the real node reported done (its `after_rotate`).
pub static ROTATED: AtomicUsize = AtomicUsize::new(0);

fn rotated() {
    ROTATED.fetch_add(1, Ordering::SeqCst);
}

/// The real node (os-release and status in the fake's dir) over `init`,
/// trusting `api_ca` for rotated certificates.
pub fn node(init: &FakeInit, api_ca: &str) -> api::node::InitNode {
    let d = init.dir.path();
    std::fs::write(d.join("os-release"), "NAME=\"cairn\"\nVERSION_ID=1.0.0\n").unwrap();
    std::fs::write(d.join("status.json"), r#"{"booted":"1.0.0"}"#).unwrap();
    api::node::InitNode {
        os_release: d.join("os-release"),
        status: d.join("status.json"),
        control: api::control::Control::new(&init.path),
        api_ca: api_ca.to_string(),
        after_rotate: rotated,
    }
}
