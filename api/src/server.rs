//! The node API server: HTTP/1.1 + JSON over TLS 1.3 with a mandatory
//! client certificate.
//!
//! Why HTTP/JSON and not gRPC: the build needs no `protoc` (tonic-build
//! wants it, and the image build is pinned and offline), a request is one
//! `curl --cert` away when debugging, and the streams the issue asks for
//! (logs -f, events) are plain NDJSON bodies. The schema is the route table
//! in docs/api.md and [`crate::routes`].
//!
//! Trust: rustls's `WebPkiClientVerifier` requires a client certificate
//! chained to the API CA (expired, foreign or missing certificates fail
//! the handshake); the role then comes from that certificate's O values.
//! Every handler calls [`authorize`] before reading its body or touching the
//! node, so a refused call changes nothing and costs no upload.

use crate::pki::{cert_der_from_pem, key_der_from_pem, NodeSecrets, Peer, PkiError};
use crate::role::{authorize, Operation, Refused};
use crate::routes::{route, Method, BUNDLE_CONTENT_TYPE};
use axum::body::Body;
use axum::extract::{Extension, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post, MethodRouter};
use axum::{Json, Router};
use serde::{Deserialize, Serialize};
use std::sync::Arc;
use std::time::Duration;

/// The largest request body (a machine config; an upgrade names its image,
/// which init pulls from the registry itself).
pub const MAX_BODY: usize = 1024 * 1024;
/// A client that has not finished its handshake by then is dropped.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// `GET /v1/version`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Version {
    /// The OS name (`NAME` in os-release).
    pub os: String,
    /// The booted release (`VERSION_ID`).
    pub version: String,
    /// The version of cairnd itself.
    pub api: String,
}

/// `POST /v1/config/apply` request.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ApplyRequest {
    /// The whole machine config (TOML text).
    pub config: String,
    /// Validate and show the diff; store nothing.
    #[serde(default)]
    pub dry_run: bool,
}

/// `POST /v1/config/apply` answer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ApplyOutcome {
    pub dry_run: bool,
    /// Stored (false for a dry run).
    pub applied: bool,
    /// Unified-style line diff of the stored config against the new one.
    pub diff: String,
}

/// Every error answer's body.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ErrorBody {
    pub error: String,
    /// The config field at fault, for a refused config.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub field: Option<String>,
}

/// `POST /v1/certs/rotate` request: the new serving identity, made with
/// the API CA's key (which the node never holds) by `cairnctl rotate-certs`.
#[derive(Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RotateRequest {
    /// The certificate (PEM), signed by the API CA, for serverAuth.
    pub crt: String,
    /// Its private key (PEM, PKCS#8).
    pub key: String,
}

/// `POST /v1/upgrade` request.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UpgradeRequest {
    /// `REGISTRY/REPO:TAG`.
    pub image: String,
    /// The registry speaks plain HTTP (the manifest is verified anyway).
    #[serde(default)]
    pub insecure: bool,
}

/// What a node operation can fail with; each maps to one HTTP status.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NodeError {
    /// The input is wrong: a config that does not parse or validate, an
    /// image reference that is not one (422, with the config field).
    #[error("{}", invalid_message(field, reason))]
    Invalid {
        field: Option<String>,
        reason: String,
    },
    /// Something excluding it is running: a second upgrade (409).
    #[error("{0}")]
    Busy(String),
    /// What it names does not exist: a log source (404).
    #[error("{0}")]
    NotFound(String),
    /// init cannot be asked: its control socket is absent or refuses (503).
    #[error("{0}")]
    Unavailable(String),
    /// It ran and failed (500).
    #[error("{0}")]
    Failed(String),
}

/// The reason, led by the field unless the reason already names it.
fn invalid_message(field: &Option<String>, reason: &str) -> String {
    match field {
        Some(f) if !reason.contains(f.as_str()) => format!("{f}: {reason}"),
        _ => reason.to_string(),
    }
}

impl NodeError {
    pub fn status(&self) -> StatusCode {
        match self {
            NodeError::Invalid { .. } => StatusCode::UNPROCESSABLE_ENTITY,
            NodeError::Busy(_) => StatusCode::CONFLICT,
            NodeError::NotFound(_) => StatusCode::NOT_FOUND,
            NodeError::Unavailable(_) => StatusCode::SERVICE_UNAVAILABLE,
            NodeError::Failed(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    fn body(&self) -> ErrorBody {
        ErrorBody {
            error: self.to_string(),
            field: match self {
                NodeError::Invalid { field, .. } => field.clone(),
                _ => None,
            },
        }
    }
}

/// A stream of JSON lines from the node (logs, events, an upgrade's
/// progress). `items` blocks; the server reads it on a thread of its own
/// and calls `cancel` from another thread when the HTTP client goes away,
/// which must wake a blocked `items` (it closes the connection to init).
pub struct NodeStream {
    pub items: Box<dyn Iterator<Item = Result<serde_json::Value, NodeError>> + Send>,
    pub cancel: Box<dyn FnOnce() + Send>,
}

impl NodeStream {
    /// A stream with nothing to cancel (tests).
    pub fn of(
        items: impl Iterator<Item = Result<serde_json::Value, NodeError>> + Send + 'static,
    ) -> Self {
        NodeStream {
            items: Box::new(items),
            cancel: Box::new(|| ()),
        }
    }
}

/// The node the API manages. Methods block (files, init); the server runs
/// them off the async workers. `by` is the client certificate's subject,
/// which init logs with every change. Tests implement it with a recording
/// fake; cairnd with [`crate::node::InitNode`].
pub trait Node: Send + Sync + 'static {
    fn version(&self) -> Result<Version, NodeError>;
    /// The node status document (docs/updates.md, "Status on the node").
    fn status(&self) -> Result<serde_json::Value, NodeError>;
    /// The log sources that have lines.
    fn log_sources(&self) -> Result<Vec<String>, NodeError>;
    /// [`contract::control::LogLine`]s.
    fn logs(
        &self,
        source: &str,
        tail: Option<usize>,
        follow: bool,
    ) -> Result<NodeStream, NodeError>;
    /// [`contract::control::Event`]s.
    fn events(&self, follow: bool) -> Result<NodeStream, NodeError>;
    fn dmesg(&self) -> Result<String, NodeError>;
    /// Runs the health checks; answers their results.
    fn health(&self) -> Result<serde_json::Value, NodeError>;
    fn reboot(&self, by: &str) -> Result<(), NodeError>;
    fn shutdown(&self, by: &str) -> Result<(), NodeError>;
    /// Makes the other slot boot next; answers what boots next.
    fn rollback(&self, by: &str) -> Result<serde_json::Value, NodeError>;
    /// The upgrade's [`contract::control::Event`]s, then `{"result": ...}`
    /// (a failure is the stream's error).
    fn upgrade(&self, by: &str, image: &str, insecure: bool) -> Result<NodeStream, NodeError>;
    /// [`Node::upgrade`] from the bundle tar of `size` bytes that `body`
    /// reads as the client sends it (an error from `body`: the client
    /// went away, which must leave the old release booting).
    fn upgrade_bundle(
        &self,
        by: &str,
        size: u64,
        body: Box<dyn std::io::Read + Send>,
    ) -> Result<NodeStream, NodeError>;
    /// Replaces the API's serving certificate and key (checked first with
    /// [`check_rotation`]); answers the new certificate's serial and
    /// expiry. cairnd restarts to serve it.
    fn rotate_certs(&self, by: &str, crt: &str, key: &str) -> Result<serde_json::Value, NodeError>;
    /// The stored config, key redacted.
    fn config_get(&self) -> Result<String, NodeError>;
    fn config_apply(&self, by: &str, text: &str, dry_run: bool) -> Result<ApplyOutcome, NodeError>;
}

/// An error answer: status code and JSON body.
#[derive(Debug)]
pub enum ApiError {
    Refused(Refused),
    BadRequest(String),
    /// A body over the limit it carries.
    TooLarge(u64),
    Node(NodeError),
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let (code, body) = match self {
            ApiError::Refused(r) => (
                StatusCode::FORBIDDEN,
                ErrorBody {
                    error: r.to_string(),
                    field: None,
                },
            ),
            ApiError::BadRequest(m) => (
                StatusCode::BAD_REQUEST,
                ErrorBody {
                    error: m,
                    field: None,
                },
            ),
            ApiError::TooLarge(limit) => (
                StatusCode::PAYLOAD_TOO_LARGE,
                ErrorBody {
                    error: format!("request body over the {limit} byte limit"),
                    field: None,
                },
            ),
            ApiError::Node(e) => (e.status(), e.body()),
        };
        (code, Json(body)).into_response()
    }
}

type Peer_ = Extension<Arc<Peer>>;

/// Authorizes `op` for `peer`; a call that changes the node is logged with
/// the certificate's subject whether allowed or refused.
fn check(peer: &Peer, op: Operation) -> Result<(), ApiError> {
    match authorize(peer.role, op, &peer.subject) {
        Ok(()) => {
            if op.mutates() {
                tracing::info!(subject = %peer.subject, op = %op, "node API call");
            }
            Ok(())
        }
        Err(r) => {
            tracing::warn!(subject = %peer.subject, op = %op, "refused: {r}");
            Err(ApiError::Refused(r))
        }
    }
}

/// Runs a blocking node method off the async workers.
async fn blocking<N: Node, T: Send + 'static>(
    node: &Arc<N>,
    f: impl FnOnce(&N) -> Result<T, NodeError> + Send + 'static,
) -> Result<T, ApiError> {
    let node = node.clone();
    tokio::task::spawn_blocking(move || f(&node))
        .await
        .map_err(|e| ApiError::Node(NodeError::Failed(format!("node call panicked: {e}"))))?
        .map_err(ApiError::Node)
}

/// Reads at most [`MAX_BODY`] bytes of a body. A declared length over the
/// limit is refused before any byte is read: with `Expect: 100-continue`
/// (which our client sends) the upload never starts.
async fn read_body(
    headers: &axum::http::HeaderMap,
    body: Body,
) -> Result<axum::body::Bytes, ApiError> {
    use http_body_util::BodyExt;
    let declared = headers
        .get(axum::http::header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|n| n > MAX_BODY as u64) {
        return Err(ApiError::TooLarge(MAX_BODY as u64));
    }
    match http_body_util::Limited::new(body, MAX_BODY).collect().await {
        Ok(c) => Ok(c.to_bytes()),
        Err(e) if e.is::<http_body_util::LengthLimitError>() => {
            Err(ApiError::TooLarge(MAX_BODY as u64))
        }
        Err(e) => Err(ApiError::BadRequest(format!("reading the request: {e}"))),
    }
}

async fn version<N: Node>(State(n): State<Arc<N>>, Extension(p): Peer_) -> Response {
    let r = async {
        check(&p, Operation::Version)?;
        blocking(&n, |n| n.version()).await
    };
    r.await.map(Json).into_response()
}

async fn status<N: Node>(State(n): State<Arc<N>>, Extension(p): Peer_) -> Response {
    let r = async {
        check(&p, Operation::Status)?;
        blocking(&n, |n| n.status()).await
    };
    r.await.map(Json).into_response()
}

/// Reboot, shutdown: answer `{"ok": true}` once init has the request.
async fn power<N: Node>(n: Arc<N>, p: Arc<Peer>, op: Operation) -> Response {
    let r = async {
        check(&p, op)?;
        let by = p.subject.clone();
        blocking(&n, move |n| match op {
            Operation::Reboot => n.reboot(&by),
            _ => n.shutdown(&by),
        })
        .await
    };
    r.await
        .map(|()| Json(serde_json::json!({"ok": true})))
        .into_response()
}

async fn rollback<N: Node>(State(n): State<Arc<N>>, Extension(p): Peer_) -> Response {
    let r = async {
        check(&p, Operation::Rollback)?;
        let by = p.subject.clone();
        blocking(&n, move |n| n.rollback(&by)).await
    };
    r.await.map(Json).into_response()
}

async fn dmesg<N: Node>(State(n): State<Arc<N>>, Extension(p): Peer_) -> Response {
    let r = async {
        check(&p, Operation::Dmesg)?;
        blocking(&n, |n| n.dmesg()).await
    };
    r.await
        .map(|text| Json(serde_json::json!({ "dmesg": text })))
        .into_response()
}

async fn health<N: Node>(State(n): State<Arc<N>>, Extension(p): Peer_) -> Response {
    let r = async {
        check(&p, Operation::Health)?;
        blocking(&n, |n| n.health()).await
    };
    r.await.map(Json).into_response()
}

async fn config_get<N: Node>(State(n): State<Arc<N>>, Extension(p): Peer_) -> Response {
    let r = async {
        check(&p, Operation::ConfigGet)?;
        blocking(&n, |n| n.config_get()).await
    };
    r.await
        .map(|config| Json(serde_json::json!({ "config": config })))
        .into_response()
}

async fn config_apply<N: Node>(
    State(n): State<Arc<N>>,
    Extension(p): Peer_,
    headers: axum::http::HeaderMap,
    body: Body,
) -> Response {
    let r = async {
        check(&p, Operation::ConfigApply)?;
        let bytes = read_body(&headers, body).await?;
        let req: ApplyRequest = serde_json::from_slice(&bytes)
            .map_err(|e| ApiError::BadRequest(format!("malformed request: {e}")))?;
        let by = p.subject.clone();
        blocking(&n, move |n| n.config_apply(&by, &req.config, req.dry_run)).await
    };
    r.await.map(Json).into_response()
}

async fn rotate_certs<N: Node>(
    State(n): State<Arc<N>>,
    Extension(p): Peer_,
    headers: axum::http::HeaderMap,
    body: Body,
) -> Response {
    let r = async {
        check(&p, Operation::RotateCerts)?;
        let bytes = read_body(&headers, body).await?;
        let req: RotateRequest = serde_json::from_slice(&bytes)
            .map_err(|e| ApiError::BadRequest(format!("malformed request: {e}")))?;
        let by = p.subject.clone();
        blocking(&n, move |n| n.rotate_certs(&by, &req.crt, &req.key)).await
    };
    r.await.map(Json).into_response()
}

/// Checks a new serving identity against the API CA (`ca_pem`) before the
/// node takes it: `crt` chains to the CA, is valid now, is for serverAuth
/// and names a host (its first subjectAltName is what the chain is checked
/// for); `key` is its key. Answers `{"serial", "not_after"}` (the serial in
/// hex as `openssl x509 -serial` prints it). Refusals name the field.
pub fn check_rotation(ca_pem: &str, crt: &str, key: &str) -> Result<serde_json::Value, NodeError> {
    use rustls::client::danger::ServerCertVerifier;
    use x509_parser::extensions::GeneralName;
    let invalid = |field: &str, reason: String| NodeError::Invalid {
        field: Some(field.into()),
        reason: format!("{field}: {reason}"),
    };
    let cert = cert_der_from_pem(crt, "crt").map_err(|e| invalid("crt", e.to_string()))?;
    let key_der = key_der_from_pem(key, "key").map_err(|e| invalid("key", e.to_string()))?;
    let (_, x) = x509_parser::parse_x509_certificate(&cert)
        .map_err(|e| invalid("crt", format!("not an X.509 certificate: {e}")))?;
    let host = x
        .subject_alternative_name()
        .ok()
        .flatten()
        .and_then(|san| {
            san.value.general_names.iter().find_map(|g| match g {
                GeneralName::DNSName(d) => {
                    rustls_pki_types::ServerName::try_from(d.to_string()).ok()
                }
                GeneralName::IPAddress(b) => match b.len() {
                    4 => <[u8; 4]>::try_from(*b)
                        .ok()
                        .map(|a| std::net::IpAddr::from(a).into()),
                    16 => <[u8; 16]>::try_from(*b)
                        .ok()
                        .map(|a| std::net::IpAddr::from(a).into()),
                    _ => None,
                },
                _ => None,
            })
        })
        .ok_or_else(|| invalid("crt", "names no host (subjectAltName)".into()))?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut roots = rustls::RootCertStore::empty();
    roots
        .add(
            cert_der_from_pem(ca_pem, "API CA certificate")
                .map_err(|e| NodeError::Failed(e.to_string()))?,
        )
        .map_err(|e| NodeError::Failed(format!("the API CA certificate: {e}")))?;
    let verifier = rustls::client::WebPkiServerVerifier::builder_with_provider(
        Arc::new(roots),
        provider.clone(),
    )
    .build()
    .map_err(|e| NodeError::Failed(e.to_string()))?;
    verifier
        .verify_server_cert(&cert, &[], &host, &[], rustls_pki_types::UnixTime::now())
        .map_err(|e| {
            invalid(
                "crt",
                format!("not a serving certificate of this node's API CA: {e}"),
            )
        })?;
    let signer = provider
        .key_provider
        .load_private_key(key_der)
        .map_err(|e| invalid("key", e.to_string()))?;
    rustls::sign::CertifiedKey::new(vec![cert.clone()], signer)
        .keys_match()
        .map_err(|e| invalid("key", format!("is not the certificate's key: {e}")))?;
    let serial: String = x
        .tbs_certificate
        .raw_serial()
        .iter()
        .skip_while(|b| **b == 0)
        .map(|b| format!("{b:02X}"))
        .collect();
    Ok(serde_json::json!({
        "serial": serial,
        "not_after": x.validity().not_after.to_string(),
    }))
}

/// `GET /v1/logs` and `/v1/events` query parameters.
#[derive(Debug, Default, PartialEq, Eq)]
struct StreamQuery {
    source: Option<String>,
    tail: Option<usize>,
    follow: bool,
}

fn stream_query(uri: &axum::http::Uri, allowed: &[&str]) -> Result<StreamQuery, ApiError> {
    let mut q = StreamQuery::default();
    let bad = |m: String| ApiError::BadRequest(m);
    for (k, v) in form_urlencoded::parse(uri.query().unwrap_or("").as_bytes()) {
        if !allowed.contains(&k.as_ref()) {
            return Err(bad(format!(
                "unknown query parameter {k:?} (expected {})",
                allowed.join(", ")
            )));
        }
        match k.as_ref() {
            "source" => q.source = Some(v.into_owned()),
            "tail" => {
                q.tail = Some(
                    v.parse()
                        .map_err(|_| bad(format!("tail={v:?}: expected a number of lines")))?,
                )
            }
            _ => {
                q.follow = match v.as_ref() {
                    "" | "true" | "1" => true,
                    "false" | "0" => false,
                    _ => return Err(bad(format!("follow={v:?}: expected true or false"))),
                }
            }
        }
    }
    Ok(q)
}

async fn logs<N: Node>(
    State(n): State<Arc<N>>,
    Extension(p): Peer_,
    uri: axum::http::Uri,
) -> Response {
    let r = async {
        check(&p, Operation::Logs)?;
        let q = stream_query(&uri, &["source", "tail", "follow"])?;
        match q.source {
            None => {
                let sources = blocking(&n, |n| n.log_sources()).await?;
                Ok(Json(serde_json::json!({ "sources": sources })).into_response())
            }
            Some(source) => ndjson(&n, move |n| n.logs(&source, q.tail, q.follow)).await,
        }
    };
    r.await.into_response()
}

async fn events<N: Node>(
    State(n): State<Arc<N>>,
    Extension(p): Peer_,
    uri: axum::http::Uri,
) -> Response {
    let r = async {
        check(&p, Operation::Events)?;
        let q = stream_query(&uri, &["follow"])?;
        ndjson(&n, move |n| n.events(q.follow)).await
    };
    r.await.into_response()
}

async fn upgrade<N: Node>(
    State(n): State<Arc<N>>,
    Extension(p): Peer_,
    headers: axum::http::HeaderMap,
    body: Body,
) -> Response {
    let r = async {
        check(&p, Operation::Upgrade)?;
        let tar = headers
            .get(axum::http::header::CONTENT_TYPE)
            .is_some_and(|v| v.as_bytes() == BUNDLE_CONTENT_TYPE.as_bytes());
        if tar {
            return upgrade_bundle(&n, p.subject.clone(), &headers, body).await;
        }
        let bytes = read_body(&headers, body).await?;
        let req: UpgradeRequest = serde_json::from_slice(&bytes)
            .map_err(|e| ApiError::BadRequest(format!("malformed request: {e}")))?;
        let by = p.subject.clone();
        ndjson(&n, move |n| n.upgrade(&by, &req.image, req.insecure)).await
    };
    r.await.into_response()
}

/// An upgrade whose body is a bundle tar: its size must be declared
/// (init is told it before the first byte) and at most
/// [`contract::control::MAX_BUNDLE`]; the body is handed to the node as it
/// arrives, never held whole in memory.
async fn upgrade_bundle<N: Node>(
    n: &Arc<N>,
    by: String,
    headers: &axum::http::HeaderMap,
    body: Body,
) -> Result<Response, ApiError> {
    let size = headers
        .get(axum::http::header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok())
        .ok_or_else(|| {
            ApiError::BadRequest(
                "a bundle upload needs its Content-Length (init is told the size first)".into(),
            )
        })?;
    if size > contract::control::MAX_BUNDLE {
        return Err(ApiError::TooLarge(contract::control::MAX_BUNDLE));
    }
    let reader = BodyReader::spawn(body);
    ndjson(n, move |n| n.upgrade_bundle(&by, size, Box::new(reader))).await
}

/// A request body as a blocking reader, for the node's thread: a task
/// moves its frames through a small channel (so a slow disk slows the
/// client, memory stays flat). A body that breaks (the client went away)
/// is a read error.
struct BodyReader {
    rx: tokio::sync::mpsc::Receiver<Result<axum::body::Bytes, String>>,
    chunk: axum::body::Bytes,
}

impl BodyReader {
    fn spawn(body: Body) -> BodyReader {
        use http_body_util::BodyExt;
        let (tx, rx) = tokio::sync::mpsc::channel(16);
        tokio::spawn(async move {
            let mut body = body;
            while let Some(frame) = body.frame().await {
                let item = match frame {
                    Ok(f) => match f.into_data() {
                        Ok(d) => Ok(d),
                        Err(_) => continue, // trailers
                    },
                    Err(e) => Err(e.to_string()),
                };
                let failed = item.is_err();
                if tx.send(item).await.is_err() || failed {
                    return;
                }
            }
        });
        BodyReader {
            rx,
            chunk: axum::body::Bytes::new(),
        }
    }
}

impl std::io::Read for BodyReader {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        while self.chunk.is_empty() {
            match self.rx.blocking_recv() {
                Some(Ok(c)) => self.chunk = c,
                Some(Err(e)) => {
                    return Err(std::io::Error::new(
                        std::io::ErrorKind::ConnectionAborted,
                        format!("the client's upload broke: {e}"),
                    ))
                }
                None => return Ok(0),
            }
        }
        let n = buf.len().min(self.chunk.len());
        buf[..n].copy_from_slice(&self.chunk.split_to(n));
        Ok(n)
    }
}

/// How long a stream's answer waits for its first line: init refuses at
/// once (an unknown source, a second upgrade), and that refusal should be
/// the HTTP status; a stream with nothing to say yet starts anyway.
const FIRST_LINE_WAIT: Duration = Duration::from_secs(2);
/// Lines buffered between the reading thread and the HTTP connection.
const STREAM_BUFFER: usize = 64;

/// Answers a [`NodeStream`] as an NDJSON body: one JSON value per line; an
/// error after the first line ends the body with `{"error": ...}`.
async fn ndjson<N: Node>(
    node: &Arc<N>,
    open: impl FnOnce(&N) -> Result<NodeStream, NodeError> + Send + 'static,
) -> Result<Response, ApiError> {
    let NodeStream { items, cancel } = blocking(node, open).await?;
    let (tx, mut rx) = tokio::sync::mpsc::channel(STREAM_BUFFER);
    // A thread, not spawn_blocking: a follow lasts as long as the client
    // and would hold one of the few blocking workers all that time.
    let spawned = std::thread::Builder::new()
        .name("api-stream".into())
        .spawn(move || {
            for item in items {
                if tx.blocking_send(item).is_err() {
                    break; // The client went away.
                }
            }
        });
    if let Err(e) = spawned {
        cancel();
        return Err(ApiError::Node(NodeError::Failed(format!(
            "starting a stream: {e}"
        ))));
    }
    let mut body = Ndjson {
        first: None,
        rx: None,
        cancel: Some(cancel),
        over: false,
    };
    match tokio::time::timeout(FIRST_LINE_WAIT, rx.recv()).await {
        // Dropping `body` cancels: init's connection is closed.
        Ok(Some(Err(e))) => return Err(ApiError::Node(e)),
        Ok(Some(Ok(v))) => body.first = Some(v),
        Ok(None) => body.over = true,
        Err(_) => {}
    }
    body.rx = Some(rx);
    Ok((
        [(axum::http::header::CONTENT_TYPE, "application/x-ndjson")],
        Body::new(body),
    )
        .into_response())
}

/// The body of [`ndjson`]. Dropped (the stream ended, or hyper gave up on
/// a client that went away) it cancels the node stream.
struct Ndjson {
    first: Option<serde_json::Value>,
    rx: Option<tokio::sync::mpsc::Receiver<Result<serde_json::Value, NodeError>>>,
    cancel: Option<Box<dyn FnOnce() + Send>>,
    over: bool,
}

impl Drop for Ndjson {
    fn drop(&mut self) {
        if let Some(c) = self.cancel.take() {
            c();
        }
    }
}

fn json_line(v: &impl Serialize) -> axum::body::Bytes {
    let mut b = serde_json::to_vec(v)
        .unwrap_or_else(|e| format!("{{\"error\":\"encoding a line: {e}\"}}").into_bytes());
    b.push(b'\n');
    b.into()
}

impl hyper::body::Body for Ndjson {
    type Data = axum::body::Bytes;
    type Error = std::convert::Infallible;

    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<hyper::body::Frame<Self::Data>, Self::Error>>> {
        use std::task::Poll;
        let this = &mut *self;
        if this.over {
            return Poll::Ready(None);
        }
        if let Some(v) = this.first.take() {
            return Poll::Ready(Some(Ok(hyper::body::Frame::data(json_line(&v)))));
        }
        let Some(rx) = this.rx.as_mut() else {
            return Poll::Ready(None);
        };
        let line = match rx.poll_recv(cx) {
            Poll::Pending => return Poll::Pending,
            Poll::Ready(None) => {
                this.over = true;
                return Poll::Ready(None);
            }
            Poll::Ready(Some(Ok(v))) => json_line(&v),
            Poll::Ready(Some(Err(e))) => {
                this.over = true;
                json_line(&e.body())
            }
        };
        Poll::Ready(Some(Ok(hyper::body::Frame::data(line))))
    }

    fn is_end_stream(&self) -> bool {
        self.over
    }
}

fn on<N: Node, H, T>(op: Operation, h: H) -> MethodRouter<Arc<N>>
where
    H: axum::handler::Handler<T, Arc<N>>,
    T: 'static,
{
    match route(op).0 {
        Method::Get => get(h),
        Method::Post => post(h),
    }
}

/// The routes of [`crate::routes::route`], each with its handler. Every
/// request must carry an `Arc<Peer>` extension (set by [`serve`]).
pub fn router<N: Node>(node: Arc<N>) -> Router {
    use Operation::*;
    let p = |op| route(op).1;
    Router::new()
        .route(p(Version), on(Version, version::<N>))
        .route(p(Status), on(Status, status::<N>))
        .route(p(Logs), on(Logs, logs::<N>))
        .route(p(Events), on(Events, events::<N>))
        .route(p(Dmesg), on(Dmesg, dmesg::<N>))
        .route(p(Health), on(Health, health::<N>))
        .route(
            p(Reboot),
            on(Reboot, |State(n): State<Arc<N>>, Extension(p): Peer_| {
                power(n, p, Reboot)
            }),
        )
        .route(
            p(Shutdown),
            on(Shutdown, |State(n): State<Arc<N>>, Extension(p): Peer_| {
                power(n, p, Shutdown)
            }),
        )
        .route(p(Rollback), on(Rollback, rollback::<N>))
        .route(p(Upgrade), on(Upgrade, upgrade::<N>))
        .route(p(ConfigGet), on(ConfigGet, config_get::<N>))
        .route(p(ConfigApply), on(ConfigApply, config_apply::<N>))
        .route(p(RotateCerts), on(RotateCerts, rotate_certs::<N>))
        .fallback(|| async {
            (
                StatusCode::NOT_FOUND,
                Json(ErrorBody {
                    error: "no such API route".into(),
                    field: None,
                }),
            )
        })
        .with_state(node)
}

#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    #[error(transparent)]
    Pki(#[from] PkiError),
    #[error("TLS configuration: {0}")]
    Tls(String),
}

/// The rustls configuration: TLS 1.3 only, ring provider, a client
/// certificate chained to the API CA required.
pub fn tls_config(secrets: &NodeSecrets) -> Result<Arc<rustls::ServerConfig>, ServerError> {
    let tls = |e: &dyn std::fmt::Display| ServerError::Tls(e.to_string());
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut roots = rustls::RootCertStore::empty();
    roots
        .add(cert_der_from_pem(&secrets.ca_pem, "API CA certificate")?)
        .map_err(|e| tls(&e))?;
    let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(
        Arc::new(roots),
        provider.clone(),
    )
    .build()
    .map_err(|e| tls(&e))?;
    let cfg = rustls::ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(|e| tls(&e))?
        .with_client_cert_verifier(verifier)
        .with_single_cert(
            vec![cert_der_from_pem(
                &secrets.server.cert_pem,
                "server certificate",
            )?],
            key_der_from_pem(&secrets.server.key_pem, "server key")?,
        )
        .map_err(|e| tls(&e))?;
    Ok(Arc::new(cfg))
}

/// Accepts connections forever: TLS handshake (bounded in time), peer
/// identity from the verified certificate, then HTTP/1.1 on the router.
pub async fn serve<N: Node>(
    listener: tokio::net::TcpListener,
    tls: Arc<rustls::ServerConfig>,
    node: Arc<N>,
) {
    let acceptor = tokio_rustls::TlsAcceptor::from(tls);
    let app = router(node);
    loop {
        let (tcp, addr) = match listener.accept().await {
            Ok(c) => c,
            Err(e) => {
                // Out of descriptors, say: wait instead of spinning.
                tracing::warn!("accept: {e}");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let acceptor = acceptor.clone();
        let app = app.clone();
        tokio::spawn(async move {
            let stream = match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(tcp)).await {
                Ok(Ok(s)) => s,
                Ok(Err(e)) => {
                    tracing::info!(client = %addr, "TLS handshake refused: {e}");
                    return;
                }
                Err(_) => {
                    tracing::info!(client = %addr, "TLS handshake timed out");
                    return;
                }
            };
            // The verifier made a certificate mandatory; parse the leaf.
            let leaf = stream
                .get_ref()
                .1
                .peer_certificates()
                .and_then(|c| c.first());
            let peer = match leaf.map(|c| Peer::from_der(c)) {
                Some(Ok(p)) => Arc::new(p),
                Some(Err(e)) => {
                    tracing::info!(client = %addr, "{e}");
                    return;
                }
                None => return,
            };
            let svc = hyper::service::service_fn(
                move |mut req: hyper::Request<hyper::body::Incoming>| {
                    req.extensions_mut().insert(peer.clone());
                    let app = app.clone();
                    async move { tower::ServiceExt::oneshot(app, req).await }
                },
            );
            let conn = hyper::server::conn::http1::Builder::new()
                .timer(hyper_util::rt::TokioTimer::new())
                .header_read_timeout(Duration::from_secs(30))
                .serve_connection(hyper_util::rt::TokioIo::new(stream), svc);
            if let Err(e) = conn.await {
                tracing::debug!(client = %addr, "connection: {e}");
            }
        });
    }
}
