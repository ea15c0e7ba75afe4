//! The node as cairnd manages it: version and status are files anyone may
//! read (os-release, the status document init writes); everything else is
//! a request to init over its control socket ([`crate::control`]).

use crate::control::Control;
use crate::server::{ApplyOutcome, Node, NodeError, NodeStream, Version};
use contract::control::{Reply, Request};
use serde_json::Value;
use std::path::PathBuf;

pub struct InitNode {
    /// `/etc/os-release`.
    pub os_release: PathBuf,
    /// [`contract::machine::NODE_STATUS`].
    pub status: PathBuf,
    pub control: Control,
    /// The API CA's certificate (PEM): a rotated serving certificate must
    /// chain to it.
    pub api_ca: String,
    /// Called once a rotation is stored, after the answer is on its way:
    /// cairnd exits so init restarts it with the new identity (tests pass
    /// a function that records it).
    pub after_rotate: fn(),
}

fn read(p: &std::path::Path) -> Result<String, NodeError> {
    std::fs::read_to_string(p).map_err(|e| NodeError::Failed(format!("{}: {e}", p.display())))
}

fn unexpected(what: &str, v: &Value) -> NodeError {
    NodeError::Failed(format!(
        "init answered {what} with an unexpected result: {v}"
    ))
}

/// A string result, or `{KEY: string}`: init's results as docs/api.md
/// gives them, accepting the wrapped form too.
fn text_result(what: &str, key: &str, v: Value) -> Result<String, NodeError> {
    match v {
        Value::String(s) => Ok(s),
        Value::Object(ref o) => match o.get(key) {
            Some(Value::String(s)) => Ok(s.clone()),
            _ => Err(unexpected(what, &v)),
        },
        // dmesg as lines.
        Value::Array(ref a) if a.iter().all(Value::is_string) => Ok(a
            .iter()
            .filter_map(Value::as_str)
            .map(|l| format!("{l}\n"))
            .collect()),
        _ => Err(unexpected(what, &v)),
    }
}

impl InitNode {
    fn call(&self, req: Request) -> Result<Value, NodeError> {
        Ok(self.control.call(&req)?)
    }

    /// Streams the `Log`/`Event` lines of `req`; with `upgrade`, the final
    /// `Done` becomes a `{"result": ...}` line (logs and events just end).
    fn stream(&self, req: Request, upgrade: bool) -> Result<NodeStream, NodeError> {
        Self::lines(self.control.open(&req)?, upgrade)
    }

    fn lines(replies: crate::control::Replies, upgrade: bool) -> Result<NodeStream, NodeError> {
        let closer = replies.closer()?;
        let items = replies.filter_map(move |r| match r {
            Ok(Reply::Log(l)) => Some(serde_json::to_value(l).map_err(json_err)),
            Ok(Reply::Event(e)) => Some(serde_json::to_value(e).map_err(json_err)),
            Ok(Reply::Done { result }) => {
                upgrade.then(|| Ok(serde_json::json!({ "result": result })))
            }
            Ok(Reply::Error { error, .. }) => Some(Err(NodeError::Failed(error))),
            Err(e) => Some(Err(NodeError::from(e))),
        });
        Ok(NodeStream {
            items: Box::new(items),
            cancel: Box::new(move || closer.close()),
        })
    }
}

fn json_err(e: serde_json::Error) -> NodeError {
    NodeError::Failed(format!("encoding a line: {e}"))
}

impl Node for InitNode {
    fn version(&self) -> Result<Version, NodeError> {
        let osrel = read(&self.os_release)?;
        let field = |k| installer::bootmodel::osrel_field(&osrel, k).unwrap_or_default();
        Ok(Version {
            os: field("NAME"),
            version: field("VERSION_ID"),
            api: env!("CARGO_PKG_VERSION").to_string(),
        })
    }

    fn status(&self) -> Result<Value, NodeError> {
        serde_json::from_str(&read(&self.status)?)
            .map_err(|e| NodeError::Failed(format!("{}: {e}", self.status.display())))
    }

    fn log_sources(&self) -> Result<Vec<String>, NodeError> {
        let v = self.call(Request::LogSources)?;
        let list = match &v {
            Value::Object(o) => o.get("sources").cloned().unwrap_or(Value::Null),
            other => other.clone(),
        };
        serde_json::from_value(list).map_err(|_| unexpected("log_sources", &v))
    }

    fn logs(
        &self,
        source: &str,
        tail: Option<usize>,
        follow: bool,
    ) -> Result<NodeStream, NodeError> {
        self.stream(
            Request::Logs {
                source: source.to_string(),
                follow,
                tail,
            },
            false,
        )
    }

    fn events(&self, follow: bool) -> Result<NodeStream, NodeError> {
        self.stream(Request::Events { follow }, false)
    }

    fn dmesg(&self) -> Result<String, NodeError> {
        text_result("dmesg", "dmesg", self.call(Request::Dmesg)?)
    }

    fn health(&self) -> Result<Value, NodeError> {
        self.call(Request::Health)
    }

    fn reboot(&self, by: &str) -> Result<(), NodeError> {
        self.call(Request::Reboot { by: by.into() }).map(drop)
    }

    fn shutdown(&self, by: &str) -> Result<(), NodeError> {
        self.call(Request::Shutdown { by: by.into() }).map(drop)
    }

    fn rollback(&self, by: &str) -> Result<Value, NodeError> {
        self.call(Request::Rollback { by: by.into() })
    }

    fn upgrade(&self, by: &str, image: &str, insecure: bool) -> Result<NodeStream, NodeError> {
        self.stream(
            Request::Upgrade {
                by: by.into(),
                image: image.into(),
                insecure,
            },
            true,
        )
    }

    fn upgrade_bundle(
        &self,
        by: &str,
        size: u64,
        body: Box<dyn std::io::Read + Send>,
    ) -> Result<NodeStream, NodeError> {
        let req = Request::UpgradeBundle {
            by: by.into(),
            size,
        };
        Self::lines(self.control.open_with_body(&req, body)?, true)
    }

    fn rotate_certs(&self, by: &str, crt: &str, key: &str) -> Result<Value, NodeError> {
        let cert = crate::server::check_rotation(&self.api_ca, crt, key)?;
        self.call(Request::RotateCerts {
            by: by.into(),
            crt: crt.into(),
            key: key.into(),
        })?;
        (self.after_rotate)();
        let mut v = cert;
        v["rotated"] = Value::Bool(true);
        Ok(v)
    }

    fn config_get(&self) -> Result<String, NodeError> {
        text_result("config_get", "config", self.call(Request::ConfigGet)?)
    }

    fn config_apply(&self, by: &str, text: &str, dry_run: bool) -> Result<ApplyOutcome, NodeError> {
        let v = self.call(Request::ConfigApply {
            by: by.into(),
            config: text.into(),
            dry_run,
        })?;
        serde_json::from_value(v.clone()).map_err(|_| unexpected("config_apply", &v))
    }
}
