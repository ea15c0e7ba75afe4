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
use crate::routes::{route, Method};
use axum::body::Body;
use axum::extract::{Extension, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post, MethodRouter};
use axum::{Json, Router};
use serde::{Deserialize, Serialize};
use std::sync::Arc;
use std::time::Duration;

/// The largest request body (a machine config; bundles for upgrade will
/// get their own streaming route).
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

/// What a node operation can fail with.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NodeError {
    #[error("{0} is not implemented yet")]
    NotImplemented(&'static str),
    /// A config that does not parse or validate (HTTP 422).
    #[error("{field}: {reason}")]
    Invalid { field: String, reason: String },
    #[error("{0}")]
    Failed(String),
}

/// The node the API manages. Methods block (files, init); the server runs
/// them off the async workers. Tests implement it with a recording fake.
pub trait Node: Send + Sync + 'static {
    fn version(&self) -> Result<Version, NodeError>;
    /// The node status document (docs/updates.md, "Status on the node").
    fn status(&self) -> Result<serde_json::Value, NodeError>;
    fn reboot(&self) -> Result<(), NodeError>;
    fn shutdown(&self) -> Result<(), NodeError>;
    /// Makes the other slot boot next; answers what boots next.
    fn rollback(&self) -> Result<serde_json::Value, NodeError>;
    fn config_get(&self) -> Result<String, NodeError>;
    fn config_apply(&self, text: &str, dry_run: bool) -> Result<ApplyOutcome, NodeError>;
}

/// An error answer: status code and JSON body.
#[derive(Debug)]
pub enum ApiError {
    Refused(Refused),
    BadRequest(String),
    TooLarge,
    Node(NodeError),
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let (code, error, field) = match self {
            ApiError::Refused(r) => (StatusCode::FORBIDDEN, r.to_string(), None),
            ApiError::BadRequest(m) => (StatusCode::BAD_REQUEST, m, None),
            ApiError::TooLarge => (
                StatusCode::PAYLOAD_TOO_LARGE,
                format!("request body over the {MAX_BODY} byte limit"),
                None,
            ),
            ApiError::Node(e @ NodeError::NotImplemented(_)) => {
                (StatusCode::NOT_IMPLEMENTED, e.to_string(), None)
            }
            ApiError::Node(NodeError::Invalid { field, reason }) => (
                StatusCode::UNPROCESSABLE_ENTITY,
                format!("{field}: {reason}"),
                Some(field),
            ),
            ApiError::Node(NodeError::Failed(m)) => (StatusCode::INTERNAL_SERVER_ERROR, m, None),
        };
        (code, Json(ErrorBody { error, field })).into_response()
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
        return Err(ApiError::TooLarge);
    }
    match http_body_util::Limited::new(body, MAX_BODY).collect().await {
        Ok(c) => Ok(c.to_bytes()),
        Err(e) if e.is::<http_body_util::LengthLimitError>() => Err(ApiError::TooLarge),
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
        blocking(&n, move |n| match op {
            Operation::Reboot => n.reboot(),
            _ => n.shutdown(),
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
        blocking(&n, |n| n.rollback()).await
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
        blocking(&n, move |n| n.config_apply(&req.config, req.dry_run)).await
    };
    r.await.map(Json).into_response()
}

/// Operations of the issue not built yet: authorized like the others, then
/// answered 501, so the role matrix is enforced from the first slice.
fn not_yet<N: Node>(op: Operation) -> MethodRouter<Arc<N>> {
    let h = move |Extension(p): Peer_| async move {
        let r: Result<(), ApiError> = match check(&p, op) {
            Ok(()) => Err(ApiError::Node(NodeError::NotImplemented(op.as_str()))),
            Err(e) => Err(e),
        };
        r.into_response()
    };
    on(op, h)
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
        .route(p(ConfigGet), on(ConfigGet, config_get::<N>))
        .route(p(ConfigApply), on(ConfigApply, config_apply::<N>))
        .route(p(Logs), not_yet::<N>(Logs))
        .route(p(Dmesg), not_yet::<N>(Dmesg))
        .route(p(Events), not_yet::<N>(Events))
        .route(p(Health), not_yet::<N>(Health))
        .route(p(Upgrade), not_yet::<N>(Upgrade))
        .route(p(RotateCerts), not_yet::<N>(RotateCerts))
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
