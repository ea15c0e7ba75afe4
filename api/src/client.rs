//! A blocking client of the node API: the same `ureq` (rustls, ring) the
//! registry client uses, with the client certificate of a client config.
//! Errors name the endpoint and say where the call failed: the TLS
//! handshake (wrong CA, expired or missing certificate), the role, the
//! node, or the transport.

use crate::client_config::ClientConfig;
use crate::pki::PkiError;
use crate::role::Operation;
use crate::routes::{route, Method};
use crate::server::ErrorBody;
use std::path::{Path, PathBuf};
use std::time::Duration;
use ureq::tls::{Certificate, ClientCert, PrivateKey, RootCerts, TlsConfig};

#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("client config: {0}")]
    Credentials(#[from] PkiError),
    /// The TLS handshake failed: the node's certificate is not from the
    /// config's CA, or the node refused ours (another CA, expired, none).
    #[error("{endpoint}: TLS handshake failed: {reason}")]
    Handshake { endpoint: String, reason: String },
    /// HTTP 403: the certificate's role is too weak; the message names the
    /// role needed.
    #[error("{endpoint}: refused: {message}")]
    Refused { endpoint: String, message: String },
    /// Any other error answer from the node.
    #[error("{endpoint}: {status}: {message}")]
    Node {
        endpoint: String,
        status: u16,
        message: String,
        field: Option<String>,
    },
    #[error("{endpoint}: cannot connect: {reason}")]
    Transport { endpoint: String, reason: String },
    /// A stream (logs, events, upgrade) ended with the node's error line.
    #[error("{endpoint}: {message}")]
    StreamFailed {
        endpoint: String,
        message: String,
        field: Option<String>,
    },
    /// The connection broke in the middle of a stream: the node went away
    /// (rebooted, say).
    #[error("{endpoint}: connection lost: {reason}")]
    Lost { endpoint: String, reason: String },
    /// The bundle to upload cannot be read.
    #[error("bundle {}: {reason}", path.display())]
    Bundle { path: PathBuf, reason: String },
}

impl ClientError {
    /// Whether the node was never reached (transport or TLS): cairnctl's
    /// exit code 3 rather than 1.
    pub fn unreachable(&self) -> bool {
        matches!(
            self,
            ClientError::Handshake { .. }
                | ClientError::Transport { .. }
                | ClientError::Lost { .. }
                | ClientError::Credentials(_)
        )
    }
}

pub struct Client {
    agent: ureq::Agent,
}

impl Client {
    /// A client with the config's CA and certificate.
    pub fn new(config: &ClientConfig) -> Result<Self, ClientError> {
        Self::with_identity(&config.ca, Some((&config.crt, &config.key)))
    }

    /// A client trusting `ca_pem`, presenting `identity` (certificate and
    /// key PEM) if given. Without one the node refuses the handshake; tests
    /// use that.
    pub fn with_identity(
        ca_pem: &str,
        identity: Option<(&str, &str)>,
    ) -> Result<Self, ClientError> {
        let pem = |what: &str, expected| PkiError::Pem {
            what: what.to_string(),
            expected,
        };
        let ca = Certificate::from_pem(ca_pem.as_bytes()).map_err(|_| pem("ca", "certificate"))?;
        let mut tls = TlsConfig::builder().root_certs(RootCerts::new_with_certs(&[ca]));
        if let Some((crt, key)) = identity {
            let crt =
                Certificate::from_pem(crt.as_bytes()).map_err(|_| pem("crt", "certificate"))?;
            let key =
                PrivateKey::from_pem(key.as_bytes()).map_err(|_| pem("key", "private key"))?;
            tls = tls.client_cert(Some(ClientCert::new_with_certs(&[crt], key)));
        }
        let agent = ureq::Agent::config_builder()
            .tls_config(tls.build())
            .http_status_as_error(false)
            .timeout_connect(Some(Duration::from_secs(10)))
            .timeout_global(Some(Duration::from_secs(120)))
            .build()
            .new_agent();
        Ok(Client { agent })
    }

    /// Calls `op` on `endpoint` (`HOST:PORT`) with an optional JSON body;
    /// answers the JSON of a 2xx.
    pub fn call(
        &self,
        endpoint: &str,
        op: Operation,
        body: Option<&serde_json::Value>,
    ) -> Result<serde_json::Value, ClientError> {
        self.call_with(endpoint, op, &[], body)
    }

    /// [`Client::call`] with query parameters.
    pub fn call_with(
        &self,
        endpoint: &str,
        op: Operation,
        query: &[(&str, String)],
        body: Option<&serde_json::Value>,
    ) -> Result<serde_json::Value, ClientError> {
        let mut resp = self.send(endpoint, op, query, body.map(Payload::Json), false)?;
        let status = resp.status().as_u16();
        let text = resp
            .body_mut()
            .read_to_string()
            .map_err(|e| classify(endpoint, e))?;
        serde_json::from_str(&text).map_err(|e| ClientError::Node {
            endpoint: endpoint.to_string(),
            status,
            message: format!("answer is not JSON: {e}"),
            field: None,
        })
    }

    /// Calls a streaming operation (logs with a source, events, upgrade):
    /// its NDJSON lines as they arrive. No overall timeout: a follow lasts
    /// until the caller stops reading or the node goes away.
    pub fn stream(
        &self,
        endpoint: &str,
        op: Operation,
        query: &[(&str, String)],
        body: Option<&serde_json::Value>,
    ) -> Result<Lines, ClientError> {
        let resp = self.send(endpoint, op, query, body.map(Payload::Json), true)?;
        Ok(Lines {
            reader: std::io::BufReader::new(resp.into_body().into_reader()),
            endpoint: endpoint.to_string(),
            over: false,
        })
    }

    /// Uploads the bundle tar at `tar` for `upgrade` (docs/api.md): the
    /// node verifies it against the keys its running release trusts. The
    /// answer streams like a registry upgrade's.
    pub fn upgrade_bundle(&self, endpoint: &str, tar: &Path) -> Result<Lines, ClientError> {
        let resp = self.send(
            endpoint,
            Operation::Upgrade,
            &[],
            Some(Payload::Tar(tar)),
            true,
        )?;
        Ok(Lines {
            reader: std::io::BufReader::new(resp.into_body().into_reader()),
            endpoint: endpoint.to_string(),
            over: false,
        })
    }

    /// Sends the request; a non-2xx answer becomes the error it says.
    fn send(
        &self,
        endpoint: &str,
        op: Operation,
        query: &[(&str, String)],
        body: Option<Payload<'_>>,
        streaming: bool,
    ) -> Result<ureq::http::Response<ureq::Body>, ClientError> {
        let (method, path) = route(op);
        let url = format!("https://{endpoint}{path}");
        let result = match method {
            Method::Get => {
                let mut r = self.agent.get(&url);
                for (k, v) in query {
                    r = r.query(*k, v);
                }
                if streaming {
                    r = r.config().timeout_global(None).build();
                }
                r.call()
            }
            Method::Post => {
                let mut r = self.agent.post(&url);
                for (k, v) in query {
                    r = r.query(*k, v);
                }
                if streaming {
                    r = r.config().timeout_global(None).build();
                }
                match body {
                    // Expect: 100-continue lets the node refuse (403, 413)
                    // before the body is sent; otherwise a refusal
                    // mid-upload would reach us as a broken pipe instead of
                    // the node's answer.
                    Some(Payload::Json(b)) => r.header("expect", "100-continue").send_json(b),
                    Some(Payload::Tar(p)) => {
                        let file = std::fs::File::open(p).map_err(|e| ClientError::Bundle {
                            path: p.to_path_buf(),
                            reason: e.to_string(),
                        })?;
                        let size = file
                            .metadata()
                            .map_err(|e| ClientError::Bundle {
                                path: p.to_path_buf(),
                                reason: e.to_string(),
                            })?
                            .len();
                        r.header("expect", "100-continue")
                            .header("content-type", crate::routes::BUNDLE_CONTENT_TYPE)
                            .header("content-length", size.to_string())
                            .send(ureq::SendBody::from_owned_reader(file))
                    }
                    None => r.send_empty(),
                }
            }
        };
        let mut resp = result.map_err(|e| classify(endpoint, e))?;
        let status = resp.status().as_u16();
        if (200..300).contains(&status) {
            return Ok(resp);
        }
        let text = resp
            .body_mut()
            .read_to_string()
            .map_err(|e| classify(endpoint, e))?;
        let (message, field) = match serde_json::from_str::<ErrorBody>(&text) {
            Ok(b) => (b.error, b.field),
            Err(_) => (text.trim().to_string(), None),
        };
        if status == 403 {
            return Err(ClientError::Refused {
                endpoint: endpoint.to_string(),
                message,
            });
        }
        Err(ClientError::Node {
            endpoint: endpoint.to_string(),
            status,
            message,
            field,
        })
    }
}

/// A request body: JSON, or a bundle tar streamed from a file.
#[derive(Debug, Clone, Copy)]
enum Payload<'a> {
    Json(&'a serde_json::Value),
    Tar(&'a Path),
}

/// The lines of a stream. An `{"error": ...}` line (the node's failure)
/// is yielded as [`ClientError::StreamFailed`] and ends it.
pub struct Lines {
    reader: std::io::BufReader<ureq::BodyReader<'static>>,
    endpoint: String,
    over: bool,
}

impl std::fmt::Debug for Lines {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Lines")
            .field("endpoint", &self.endpoint)
            .finish_non_exhaustive()
    }
}

impl Iterator for Lines {
    type Item = Result<serde_json::Value, ClientError>;

    fn next(&mut self) -> Option<Self::Item> {
        use std::io::BufRead;
        if self.over {
            return None;
        }
        let mut line = String::new();
        let r = match self.reader.read_line(&mut line) {
            Ok(0) => {
                self.over = true;
                return None;
            }
            Ok(_) => match serde_json::from_str::<serde_json::Value>(&line) {
                Ok(v) if v.get("error").is_some() => {
                    let b: ErrorBody = serde_json::from_value(v).unwrap_or(ErrorBody {
                        error: line.trim().to_string(),
                        field: None,
                    });
                    Err(ClientError::StreamFailed {
                        endpoint: self.endpoint.clone(),
                        message: b.error,
                        field: b.field,
                    })
                }
                Ok(v) => Ok(v),
                Err(e) => Err(ClientError::StreamFailed {
                    endpoint: self.endpoint.clone(),
                    message: format!("a stream line is not JSON: {e}"),
                    field: None,
                }),
            },
            Err(e) => Err(ClientError::Lost {
                endpoint: self.endpoint.clone(),
                reason: e.to_string(),
            }),
        };
        self.over = r.is_err();
        Some(r)
    }
}

/// Sorts a ureq error into handshake or transport. rustls errors (alerts
/// from the node, an untrusted node certificate) reach us either directly
/// or inside an io::Error. In TLS 1.3 the node's verdict on our certificate
/// arrives after our side of the handshake, as an alert on the first read.
fn classify(endpoint: &str, e: ureq::Error) -> ClientError {
    let endpoint = endpoint.to_string();
    let tls_reason = match &e {
        ureq::Error::Rustls(r) => Some(r.to_string()),
        ureq::Error::Tls(m) => Some(m.to_string()),
        ureq::Error::Io(io) => io
            .get_ref()
            .and_then(|i| i.downcast_ref::<rustls::Error>())
            .map(|r| r.to_string()),
        _ => None,
    };
    match tls_reason {
        Some(reason) => ClientError::Handshake { endpoint, reason },
        None => ClientError::Transport {
            endpoint,
            reason: e.to_string(),
        },
    }
}
