//! A server on 127.0.0.1:0 backed by a fake node that records its calls,
//! or by the real node over a fake init ([`fake_init`]).
#![allow(dead_code)]

pub mod fake_init;

use api::pki::{self, Identity, NodeSecrets, Validity};
use api::server::{ApplyOutcome, Node, NodeError, NodeStream, Version};
use std::sync::{Arc, Mutex};

#[derive(Default)]
pub struct FakeNode {
    pub calls: Mutex<Vec<String>>,
}

impl FakeNode {
    fn record(&self, c: &str) {
        self.calls.lock().unwrap().push(c.to_string());
    }
    pub fn calls(&self) -> Vec<String> {
        self.calls.lock().unwrap().clone()
    }
}

impl Node for FakeNode {
    fn version(&self) -> Result<Version, NodeError> {
        self.record("version");
        Ok(Version {
            os: "cairn".into(),
            version: "1.0.0".into(),
            api: "test".into(),
        })
    }
    fn status(&self) -> Result<serde_json::Value, NodeError> {
        self.record("status");
        Ok(serde_json::json!({"booted": "1.0.0"}))
    }
    fn log_sources(&self) -> Result<Vec<String>, NodeError> {
        self.record("logs");
        Ok(vec!["init".into()])
    }
    fn logs(&self, _: &str, _: Option<usize>, _: bool) -> Result<NodeStream, NodeError> {
        self.record("logs");
        Ok(NodeStream::of(std::iter::empty()))
    }
    fn events(&self, _: bool) -> Result<NodeStream, NodeError> {
        self.record("events");
        Ok(NodeStream::of(std::iter::empty()))
    }
    fn dmesg(&self) -> Result<String, NodeError> {
        self.record("dmesg");
        Ok("[0.0] Linux\n".into())
    }
    fn health(&self) -> Result<serde_json::Value, NodeError> {
        self.record("health");
        Ok(serde_json::json!({"ok": true}))
    }
    fn reboot(&self, by: &str) -> Result<(), NodeError> {
        self.record(&format!("reboot {by}"));
        Ok(())
    }
    fn shutdown(&self, by: &str) -> Result<(), NodeError> {
        self.record(&format!("shutdown {by}"));
        Ok(())
    }
    fn rollback(&self, by: &str) -> Result<serde_json::Value, NodeError> {
        self.record(&format!("rollback {by}"));
        Ok(serde_json::json!({"next": "0.9.0"}))
    }
    fn upgrade(&self, by: &str, image: &str, _: bool) -> Result<NodeStream, NodeError> {
        self.record(&format!("upgrade {by} {image}"));
        Ok(NodeStream::of(std::iter::once(Ok(
            serde_json::json!({"result": null}),
        ))))
    }
    fn upgrade_bundle(
        &self,
        by: &str,
        size: u64,
        mut body: Box<dyn std::io::Read + Send>,
    ) -> Result<NodeStream, NodeError> {
        let mut got = Vec::new();
        body.read_to_end(&mut got)
            .map_err(|e| NodeError::Failed(e.to_string()))?;
        self.record(&format!("upgrade_bundle {by} {size} {}", got.len()));
        Ok(NodeStream::of(std::iter::once(Ok(
            serde_json::json!({"result": null}),
        ))))
    }
    fn rotate_certs(&self, by: &str, _: &str, _: &str) -> Result<serde_json::Value, NodeError> {
        self.record(&format!("rotate_certs {by}"));
        Ok(serde_json::json!({"rotated": true}))
    }
    fn config_get(&self) -> Result<String, NodeError> {
        self.record("config_get");
        Ok("hostname = \"n1\"\n".into())
    }
    fn config_apply(
        &self,
        _by: &str,
        text: &str,
        dry_run: bool,
    ) -> Result<ApplyOutcome, NodeError> {
        self.record("config_apply");
        if text.contains("invalid") {
            return Err(NodeError::Invalid {
                field: Some("services[0].exec".into()),
                reason: "must be an absolute path".into(),
            });
        }
        Ok(ApplyOutcome {
            dry_run,
            applied: !dry_run,
            diff: format!("+{text}"),
        })
    }
}

pub struct Pki {
    pub ca: Identity,
    pub server: Identity,
}

impl Pki {
    pub fn new() -> Self {
        let ca = pki::generate_ca("test CA", Validity::days_from_now(1)).unwrap();
        let server =
            pki::issue_server(&ca, &["127.0.0.1".into()], Validity::days_from_now(1)).unwrap();
        Pki { ca, server }
    }
    pub fn client(&self, name: &str, org: Option<&str>) -> Identity {
        pki::issue_client_with_org(&self.ca, name, org, Validity::days_from_now(1)).unwrap()
    }
}

/// Starts the API on 127.0.0.1:0 in a thread of its own; answers the
/// address. The server lives until the test process ends.
pub fn start<N: Node>(pki: &Pki, node: Arc<N>) -> String {
    let tls = api::server::tls_config(&NodeSecrets {
        ca_pem: pki.ca.cert_pem.clone(),
        server: pki.server.clone(),
    })
    .unwrap();
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    listener.set_nonblocking(true).unwrap();
    std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async move {
            let l = tokio::net::TcpListener::from_std(listener).unwrap();
            api::server::serve(l, tls, node).await
        });
    });
    addr
}

pub fn client(pki: &Pki, id: &Identity) -> api::client::Client {
    api::client::Client::with_identity(&pki.ca.cert_pem, Some((&id.cert_pem, &id.key_pem))).unwrap()
}
