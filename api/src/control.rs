//! cairnd's side of init's control socket ([`contract::control`]): one
//! connection per request, one [`Request`] JSON line out, [`Reply`] lines
//! back. cairnd is unprivileged; everything it cannot do itself (power,
//! rollback, upgrade, the stored config, logs, events, dmesg, health) is a
//! request to init.

use crate::server::NodeError;
use contract::control::{ErrorKind, Reply, Request};
use std::io::{BufRead, BufReader, Read, Write};
use std::net::Shutdown;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// The longest reply line read: a config or dmesg fits many times; a
/// runaway line from a broken init does not fill cairnd's memory.
const MAX_REPLY: u64 = 4 * contract::control::MAX_REQUEST as u64;
/// How long a request that does not stream may take (health checks run
/// their commands): past it init is taken to be stuck.
const CALL_TIMEOUT: Duration = Duration::from_secs(300);

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ControlError {
    /// Nobody listens: init is not running its control server (yet), or
    /// cairnd runs outside a node.
    #[error("init's control socket {path} cannot be reached: {reason}")]
    Unavailable { path: String, reason: String },
    /// init refused or failed the request.
    #[error("{message}")]
    Refused {
        kind: ErrorKind,
        message: String,
        field: Option<String>,
    },
    /// The conversation broke: a reply that is not one, or init hung up
    /// before its answer.
    #[error("init's control socket: {0}")]
    Protocol(String),
}

impl From<ControlError> for NodeError {
    fn from(e: ControlError) -> NodeError {
        match e {
            e @ ControlError::Unavailable { .. } => NodeError::Unavailable(e.to_string()),
            ControlError::Refused {
                kind,
                message,
                field,
            } => match kind {
                ErrorKind::Invalid => NodeError::Invalid {
                    field,
                    reason: message,
                },
                ErrorKind::Busy => NodeError::Busy(message),
                ErrorKind::NotFound => NodeError::NotFound(message),
                ErrorKind::Failed => NodeError::Failed(message),
            },
            e @ ControlError::Protocol(_) => NodeError::Failed(e.to_string()),
        }
    }
}

/// Where init's control socket is.
#[derive(Debug, Clone)]
pub struct Control {
    path: PathBuf,
}

impl Control {
    pub fn new(path: impl Into<PathBuf>) -> Self {
        Control { path: path.into() }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Connects and sends `req`; the replies are read from the answer.
    pub fn open(&self, req: &Request) -> Result<Replies, ControlError> {
        let unavailable = |e: std::io::Error| ControlError::Unavailable {
            path: self.path.display().to_string(),
            reason: e.to_string(),
        };
        let mut sock = UnixStream::connect(&self.path).map_err(unavailable)?;
        let mut line = serde_json::to_string(req)
            .map_err(|e| ControlError::Protocol(format!("encoding the request: {e}")))?;
        line.push('\n');
        sock.write_all(line.as_bytes()).map_err(unavailable)?;
        let closer = sock.try_clone().map_err(unavailable)?;
        Ok(Replies {
            reader: BufReader::new(sock),
            closer: Closer(closer),
            over: false,
        })
    }

    /// [`Control::open`] for a request with a body
    /// ([`Request::UpgradeBundle`]): `body` is copied to init on a thread
    /// of its own while the replies are read. A body that fails (the HTTP
    /// client went away) shuts the connection's write side, so init sees a
    /// short upload and refuses it; init hanging up ends the copy.
    pub fn open_with_body(
        &self,
        req: &Request,
        mut body: Box<dyn Read + Send>,
    ) -> Result<Replies, ControlError> {
        let replies = self.open(req)?;
        let mut to_init = replies
            .reader
            .get_ref()
            .try_clone()
            .map_err(|e| ControlError::Protocol(format!("the body's connection: {e}")))?;
        std::thread::Builder::new()
            .name("api-upload".into())
            .spawn(move || {
                if let Err(e) = std::io::copy(&mut body, &mut to_init) {
                    tracing::warn!("upload to init stopped: {e}");
                    let _ = to_init.shutdown(Shutdown::Write);
                }
            })
            .map_err(|e| ControlError::Protocol(format!("no thread for the upload: {e}")))?;
        Ok(replies)
    }

    /// A request answered by one `Done` (any `Log`/`Event` before it is
    /// skipped): its result.
    pub fn call(&self, req: &Request) -> Result<serde_json::Value, ControlError> {
        let replies = self.open(req)?;
        replies
            .reader
            .get_ref()
            .set_read_timeout(Some(CALL_TIMEOUT))
            .map_err(|e| ControlError::Protocol(e.to_string()))?;
        for r in replies {
            if let Reply::Done { result } = r? {
                return Ok(result);
            }
        }
        Err(ControlError::Protocol(
            "init hung up without an answer".into(),
        ))
    }
}

/// Shuts the connection down from another thread: a reader blocked on it
/// wakes up, and init sees the hang-up (and stops following).
#[derive(Debug)]
pub struct Closer(UnixStream);

impl Closer {
    pub fn close(&self) {
        let _ = self.0.shutdown(Shutdown::Both);
    }
}

/// The replies to one request, read as they arrive (blocking). Ends after
/// `Done` (yielded) or `Error` (yielded as `Err`); a connection that ends
/// before either yields a [`ControlError::Protocol`] once.
#[derive(Debug)]
pub struct Replies {
    reader: BufReader<UnixStream>,
    closer: Closer,
    over: bool,
}

impl Replies {
    /// A handle that ends this conversation from another thread.
    pub fn closer(&self) -> Result<Closer, ControlError> {
        self.closer
            .0
            .try_clone()
            .map(Closer)
            .map_err(|e| ControlError::Protocol(e.to_string()))
    }
}

impl Iterator for Replies {
    type Item = Result<Reply, ControlError>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.over {
            return None;
        }
        let mut line = String::new();
        let read = (&mut self.reader).take(MAX_REPLY).read_line(&mut line);
        let r = match read {
            Ok(0) => Err(ControlError::Protocol(
                "init closed the connection before its answer".into(),
            )),
            Ok(_) if !line.ends_with('\n') => Err(ControlError::Protocol(format!(
                "a reply line over {MAX_REPLY} bytes"
            ))),
            Ok(_) => match serde_json::from_str::<Reply>(&line) {
                Ok(Reply::Error { error, kind, field }) => Err(ControlError::Refused {
                    kind,
                    message: error,
                    field,
                }),
                Ok(r) => Ok(r),
                Err(e) => Err(ControlError::Protocol(format!("not a reply: {e}"))),
            },
            Err(e) => Err(ControlError::Protocol(format!("reading: {e}"))),
        };
        self.over = !matches!(r, Ok(Reply::Log(_) | Reply::Event(_)));
        Some(r)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::net::UnixListener;

    fn serve_once(lines: &'static str) -> (tempfile::TempDir, Control) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("c.sock");
        let l = UnixListener::bind(&path).unwrap();
        std::thread::spawn(move || {
            let (mut s, _) = l.accept().unwrap();
            let mut req = String::new();
            BufReader::new(s.try_clone().unwrap())
                .read_line(&mut req)
                .unwrap();
            s.write_all(lines.as_bytes()).unwrap();
        });
        (dir, Control::new(path))
    }

    #[test]
    fn error_kinds_map_to_node_errors() {
        let (_d, c) = serve_once(
            "{\"reply\":\"error\",\"error\":\"bad\",\"kind\":\"invalid\",\"field\":\"hostname\"}\n",
        );
        let e: NodeError = c.call(&Request::ConfigGet).unwrap_err().into();
        assert_eq!(
            e,
            NodeError::Invalid {
                field: Some("hostname".into()),
                reason: "bad".into()
            }
        );
        let (_d, c) =
            serve_once("{\"reply\":\"error\",\"error\":\"upgrading\",\"kind\":\"busy\"}\n");
        let e: NodeError = c.call(&Request::Dmesg).unwrap_err().into();
        assert_eq!(e, NodeError::Busy("upgrading".into()));
    }

    #[test]
    fn missing_socket_and_early_hang_up() {
        let c = Control::new("/nonexistent/control.sock");
        let e = c.call(&Request::Dmesg).unwrap_err();
        assert!(
            e.to_string()
                .starts_with("init's control socket /nonexistent/control.sock cannot be reached"),
            "{e}"
        );
        assert!(matches!(NodeError::from(e), NodeError::Unavailable(_)));
        let (_d, c) = serve_once("{\"reply\":\"log\",\"source\":\"a\",\"seq\":1,\"ms\":0,\"stream\":\"out\",\"text\":\"x\"}\n");
        let e = c.call(&Request::Dmesg).unwrap_err();
        assert!(e.to_string().contains("before its answer"), "{e}");
    }
}
