//! The distribution-spec HTTP client: one registry, blocking, with the
//! challenge/response auth flow and status mapping every call shares.

use std::io::Read;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use sha2::{Digest, Sha256};
use ureq::http::{self, Response};
use ureq::tls::{Certificate, RootCerts, TlsConfig};
use ureq::SendBody;

use crate::auth::{Challenge, Credentials, DockerConfig, TokenResponse};
use crate::blob::{BlobId, BlobReader};
use crate::error::{Error, Result};
use crate::reference::Reference;

/// Where the system's CA bundle usually is (`SSL_CERT_FILE` first).
const SYSTEM_CA_FILES: &[&str] = &[
    "/etc/ssl/certs/ca-certificates.crt",
    "/etc/pki/tls/certs/ca-bundle.crt",
    "/etc/ssl/cert.pem",
];

/// Error bodies and token answers are read at most this far.
const MAX_SMALL_BODY: u64 = 1 << 20;

#[derive(Debug, Clone, Default)]
pub struct ClientOptions {
    /// Talk plain HTTP (also implied by an `http://` reference).
    pub plain_http: bool,
    /// PEM CA certificates to trust instead of the system's.
    pub ca_file: Option<PathBuf>,
    /// A docker `config.json`; `None` looks in the default places.
    pub docker_config: Option<PathBuf>,
    /// Explicit credentials (override the config file's).
    pub credentials: Option<Credentials>,
    /// Longest wait for any one read or write of a connection, and for a
    /// response to start (default [`DEFAULT_IO_TIMEOUT`]): a network that
    /// stops mid-transfer, or a peer that takes a request and never answers
    /// (a registry gone behind a proxy or port forward), is an error after
    /// this long, not a hang.
    pub io_timeout: Option<Duration>,
}

pub const DEFAULT_IO_TIMEOUT: Duration = Duration::from_secs(60);

/// Which repository and object a request is about (for errors).
#[derive(Clone, Copy)]
pub(crate) struct Target<'a> {
    pub repo: &'a str,
    pub what: &'a str,
}

pub(crate) enum Body<'a> {
    Empty,
    Bytes(&'a [u8]),
    /// A streamed body of a known length. It cannot be sent twice, so the
    /// auth handshake must have happened on an earlier request.
    Reader(&'a mut dyn Read, u64),
}

/// A client for one registry. Cheap to clone (shared connection pool and
/// token).
#[derive(Clone)]
pub struct Client {
    inner: Arc<Inner>,
}

struct Inner {
    agent: ureq::Agent,
    /// `http[s]://host[:port]`
    base: String,
    /// `host:port`, for errors.
    peer: String,
    registry: String,
    credentials: Option<Credentials>,
    config_path: Option<PathBuf>,
    /// The `Authorization` value that last worked (a basic header or a token).
    auth: Mutex<Option<String>>,
}

/// A manifest as fetched: its exact bytes, the type the registry gave it and
/// its computed digest.
#[derive(Debug, Clone)]
pub struct FetchedManifest {
    pub bytes: Vec<u8>,
    pub content_type: Option<String>,
    /// `sha256:<hex>` of `bytes`.
    pub digest: String,
}

/// How a blob is uploaded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Upload {
    /// One PUT with the whole blob.
    Monolithic,
    /// PATCHes of this many bytes, then a closing PUT.
    Chunked(u64),
}

pub(crate) fn sha256_digest(bytes: &[u8]) -> String {
    format!("sha256:{}", hex::encode(Sha256::digest(bytes)))
}

/// Percent-encodes a query value (RFC 3986 unreserved characters pass).
fn query_escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

fn load_roots(path: &std::path::Path) -> Result<Vec<Certificate<'static>>> {
    let bad = |why: String| Error::Ca {
        path: path.to_path_buf(),
        why,
    };
    let pem = std::fs::read(path).map_err(|e| bad(e.to_string()))?;
    let mut certs = Vec::new();
    for item in ureq::tls::parse_pem(&pem) {
        if let ureq::tls::PemItem::Certificate(c) = item.map_err(|e| bad(e.to_string()))? {
            certs.push(c);
        }
    }
    if certs.is_empty() {
        return Err(bad("no PEM certificate in it".into()));
    }
    Ok(certs)
}

impl Client {
    /// A client for the registry a reference names.
    pub fn for_reference(r: &Reference, opts: &ClientOptions) -> Result<Client> {
        let mut opts = opts.clone();
        opts.plain_http |= r.plain_http;
        Client::new(&r.registry, &opts)
    }

    /// A client for `host[:port]`.
    pub fn new(registry: &str, opts: &ClientOptions) -> Result<Client> {
        let (scheme, default_port) = if opts.plain_http {
            ("http", 80)
        } else {
            ("https", 443)
        };
        let peer = if registry
            .rsplit_once(':')
            .is_some_and(|(_, p)| p.parse::<u16>().is_ok())
        {
            registry.to_string()
        } else {
            format!("{registry}:{default_port}")
        };
        let config = DockerConfig::load(opts.docker_config.as_deref())?;
        let credentials = opts
            .credentials
            .clone()
            .or_else(|| config.credentials_for(registry).cloned());
        let mut tls = TlsConfig::builder();
        if !opts.plain_http {
            let ca = match &opts.ca_file {
                Some(p) => p.clone(),
                None => std::env::var_os("SSL_CERT_FILE")
                    .map(PathBuf::from)
                    .or_else(|| {
                        SYSTEM_CA_FILES
                            .iter()
                            .map(PathBuf::from)
                            .find(|p| p.is_file())
                    })
                    .ok_or_else(|| Error::Ca {
                        path: SYSTEM_CA_FILES[0].into(),
                        why: "no system CA bundle found; give a CA file".into(),
                    })?,
            };
            tls = tls.root_certs(RootCerts::Specific(Arc::new(load_roots(&ca)?)));
        }
        let io_timeout = opts.io_timeout.unwrap_or(DEFAULT_IO_TIMEOUT);
        let agent: ureq::Agent = ureq::Agent::config_builder()
            .http_status_as_error(false)
            .https_only(!opts.plain_http)
            .timeout_connect(Some(Duration::from_secs(30)))
            .timeout_recv_response(Some(io_timeout))
            .timeout_per_read(Some(io_timeout))
            .timeout_per_write(Some(io_timeout))
            .user_agent(concat!("cairn-registry/", env!("CARGO_PKG_VERSION")))
            .tls_config(tls.build())
            .build()
            .into();
        Ok(Client {
            inner: Arc::new(Inner {
                agent,
                base: format!("{scheme}://{registry}"),
                peer,
                registry: registry.to_string(),
                credentials,
                config_path: opts.docker_config.clone().or(config.path),
                auth: Mutex::new(None),
            }),
        })
    }

    /// `host:port` of the registry.
    pub fn peer(&self) -> &str {
        &self.inner.peer
    }

    fn url(&self, path: &str) -> String {
        format!("{}{path}", self.inner.base)
    }

    fn auth_value(&self) -> Option<String> {
        self.inner.auth.lock().map(|a| a.clone()).unwrap_or(None)
    }

    fn set_auth(&self, v: String) {
        if let Ok(mut a) = self.inner.auth.lock() {
            *a = Some(v);
        }
    }

    fn send_error(&self, t: Target, e: ureq::Error) -> Error {
        use std::io::ErrorKind as K;
        let unreachable = match &e {
            ureq::Error::ConnectionFailed | ureq::Error::HostNotFound => true,
            ureq::Error::Io(io) => matches!(
                io.kind(),
                K::ConnectionRefused | K::ConnectionReset | K::NotFound | K::TimedOut
            ),
            ureq::Error::Timeout(_) => true,
            _ => false,
        };
        if unreachable {
            Error::Unreachable {
                peer: self.inner.peer.clone(),
                source: Box::new(e),
            }
        } else {
            Error::Transport {
                peer: self.inner.peer.clone(),
                repo: t.repo.to_string(),
                what: t.what.to_string(),
                source: Box::new(e),
            }
        }
    }

    /// One request, with the auth handshake: on a 401 with a challenge it
    /// authenticates and retries once (not for streamed bodies).
    pub(crate) fn request(
        &self,
        method: &str,
        url: &str,
        t: Target,
        headers: &[(&str, String)],
        mut body: Body,
        actions: &str,
    ) -> Result<Response<ureq::Body>> {
        for attempt in 0..2 {
            let mut b = http::Request::builder().method(method).uri(url);
            for (k, v) in headers {
                b = b.header(*k, v.as_str());
            }
            if let Some(a) = self.auth_value() {
                b = b.header("Authorization", a);
            }
            let streamed = matches!(body, Body::Reader(..));
            let sent = match &mut body {
                Body::Empty => b.body(()).map(|r| self.inner.agent.run(r)),
                Body::Bytes(x) => b.body(*x).map(|r| self.inner.agent.run(r)),
                Body::Reader(r, len) => b
                    .header("Content-Length", len.to_string())
                    .body(SendBody::from_reader(*r))
                    .map(|r| self.inner.agent.run(r)),
            };
            let resp = sent
                .map_err(|e| Error::BadReference {
                    reference: url.to_string(),
                    why: format!("not a valid request: {e}"),
                })?
                .map_err(|e| self.send_error(t, e))?;
            if resp.status() == 401 && attempt == 0 && !streamed {
                let challenge = resp
                    .headers()
                    .get("www-authenticate")
                    .and_then(|v| v.to_str().ok())
                    .and_then(Challenge::parse);
                if let Some(c) = challenge {
                    self.authenticate(c, t, actions)?;
                    continue;
                }
            }
            return Ok(resp);
        }
        unreachable!("the second attempt always returns")
    }

    fn authenticate(&self, c: Challenge, t: Target, actions: &str) -> Result<()> {
        let creds = self.inner.credentials.as_ref();
        match c {
            Challenge::Basic => {
                let creds = creds.ok_or_else(|| self.denied(t, 401, String::new()))?;
                self.set_auth(creds.basic_header());
                Ok(())
            }
            Challenge::Bearer {
                realm,
                service,
                scope,
            } => {
                let scope = scope.unwrap_or_else(|| format!("repository:{}:{actions}", t.repo));
                let mut url = realm.clone();
                url.push(if url.contains('?') { '&' } else { '?' });
                if let Some(s) = &service {
                    url.push_str(&format!("service={}&", query_escape(s)));
                }
                url.push_str(&format!("scope={}", query_escape(&scope)));
                let auth_err = |why: String| Error::Auth {
                    peer: self.inner.peer.clone(),
                    repo: t.repo.to_string(),
                    what: t.what.to_string(),
                    why,
                };
                let mut req = http::Request::builder().method("GET").uri(&url);
                if let Some(c) = creds {
                    req = req.header("Authorization", c.basic_header());
                }
                let req = req
                    .body(())
                    .map_err(|e| auth_err(format!("token realm {realm:?}: {e}")))?;
                let resp = self
                    .inner
                    .agent
                    .run(req)
                    .map_err(|e| auth_err(format!("token realm {realm}: {e}")))?;
                let status = resp.status().as_u16();
                if status == 401 || status == 403 {
                    return Err(self.denied(t, status, format!(" by token realm {realm}")));
                }
                if status != 200 {
                    return Err(auth_err(format!(
                        "token realm {realm} answered HTTP {status}"
                    )));
                }
                let body =
                    read_small(resp).map_err(|e| auth_err(format!("token realm {realm}: {e}")))?;
                let tok: TokenResponse = serde_json::from_slice(&body).map_err(|e| {
                    auth_err(format!("token realm {realm}: not a token answer: {e}"))
                })?;
                let token = tok.token.or(tok.access_token).ok_or_else(|| {
                    auth_err(format!("token realm {realm}: no token in the answer"))
                })?;
                self.set_auth(format!("Bearer {token}"));
                Ok(())
            }
        }
    }

    fn denied(&self, t: Target, status: u16, extra: String) -> Error {
        let who = match (&self.inner.credentials, &self.inner.config_path) {
            (Some(c), _) => format!("; credentials of user {:?} refused", c.username),
            (None, Some(p)) => format!(
                "; no credentials for {} in {}",
                self.inner.registry,
                p.display()
            ),
            (None, None) => format!("; no credentials for {}", self.inner.registry),
        };
        Error::Denied {
            peer: self.inner.peer.clone(),
            repo: t.repo.to_string(),
            what: t.what.to_string(),
            status,
            detail: format!("{extra}{who}"),
        }
    }

    /// Maps a non-success answer to its error (with the registry's message).
    pub(crate) fn check(
        &self,
        resp: Response<ureq::Body>,
        t: Target,
        ok: &[u16],
    ) -> Result<Response<ureq::Body>> {
        let status = resp.status().as_u16();
        if ok.contains(&status) {
            return Ok(resp);
        }
        let detail = read_small(resp)
            .ok()
            .map(|b| String::from_utf8_lossy(&b).trim().to_string())
            .filter(|s| !s.is_empty())
            .map(|s| format!(": {}", s.chars().take(300).collect::<String>()))
            .unwrap_or_default();
        let (peer, repo, what) = (
            self.inner.peer.clone(),
            t.repo.to_string(),
            t.what.to_string(),
        );
        Err(match status {
            404 => Error::NotFound {
                peer,
                repo,
                what,
                detail,
            },
            401 | 403 => self.denied(t, status, detail),
            _ => Error::Status {
                peer,
                repo,
                what,
                status,
                detail,
            },
        })
    }

    /// GETs a manifest (bounded to `limit`) by tag or digest.
    pub fn get_manifest(
        &self,
        repo: &str,
        reference: &str,
        accept: &[&str],
        limit: u64,
    ) -> Result<FetchedManifest> {
        let what = format!("manifest {reference}");
        let t = Target { repo, what: &what };
        let url = self.url(&format!("/v2/{repo}/manifests/{reference}"));
        let resp = self.request(
            "GET",
            &url,
            t,
            &[("Accept", accept.join(", "))],
            Body::Empty,
            "pull",
        )?;
        let resp = self.check(resp, t, &[200])?;
        let too_large = |size: String| Error::TooLarge {
            peer: self.inner.peer.clone(),
            repo: repo.to_string(),
            what: what.clone(),
            size,
            limit,
        };
        let header = |name: &str| {
            resp.headers()
                .get(name)
                .and_then(|v| v.to_str().ok())
                .map(str::to_string)
        };
        let content_type = header("content-type");
        let header_digest = header("docker-content-digest");
        if let Some(len) = header("content-length").and_then(|l| l.parse::<u64>().ok()) {
            if len > limit {
                return Err(too_large(len.to_string()));
            }
        }
        let mut bytes = Vec::new();
        resp.into_body()
            .into_reader()
            .take(limit + 1)
            .read_to_end(&mut bytes)
            .map_err(|e| Error::Transport {
                peer: self.inner.peer.clone(),
                repo: repo.to_string(),
                what: what.clone(),
                source: Box::new(ureq::Error::Io(e)),
            })?;
        if bytes.len() as u64 > limit {
            return Err(too_large(format!("more than {limit}")));
        }
        let digest = sha256_digest(&bytes);
        let bad = |why: String| Error::BadImage {
            peer: self.inner.peer.clone(),
            repo: repo.to_string(),
            reference: reference.to_string(),
            why,
        };
        if reference.starts_with("sha256:") && digest != reference {
            return Err(bad(format!("digest mismatch: the bytes hash to {digest}")));
        }
        if let Some(h) = header_digest {
            if h.starts_with("sha256:") && h != digest {
                return Err(bad(format!(
                    "digest mismatch: the registry says {h}, the bytes hash to {digest}"
                )));
            }
        }
        Ok(FetchedManifest {
            bytes,
            content_type,
            digest,
        })
    }

    /// HEAD a blob: its size if the registry has it.
    pub fn blob_exists(&self, repo: &str, digest: &str) -> Result<Option<u64>> {
        let what = format!("blob {digest}");
        let t = Target { repo, what: &what };
        let url = self.url(&format!("/v2/{repo}/blobs/{digest}"));
        let resp = self.request("HEAD", &url, t, &[], Body::Empty, "pull,push")?;
        if resp.status() == 404 {
            return Ok(None);
        }
        let resp = self.check(resp, t, &[200])?;
        Ok(resp
            .headers()
            .get("content-length")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse().ok()))
    }

    /// GETs a blob as a verified stream of exactly `size` bytes hashing to
    /// `digest` (see [`BlobReader`]).
    pub fn get_blob(
        &self,
        repo: &str,
        digest: &str,
        size: u64,
        label: &str,
    ) -> Result<BlobReader<ureq::BodyReader<'static>>> {
        let what = format!("blob {digest}");
        let t = Target { repo, what: &what };
        let url = self.url(&format!("/v2/{repo}/blobs/{digest}"));
        let resp = self.request("GET", &url, t, &[], Body::Empty, "pull")?;
        let resp = self.check(resp, t, &[200])?;
        let announced = resp
            .headers()
            .get("content-length")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<u64>().ok());
        if let Some(n) = announced.filter(|n| *n != size) {
            return Err(Error::SizeMismatch {
                peer: self.inner.peer.clone(),
                repo: repo.to_string(),
                digest: digest.to_string(),
                expected: size,
                actual: format!("{n} (Content-Length; refused unread)"),
            });
        }
        Ok(BlobReader::new(
            resp.into_body().into_reader(),
            BlobId {
                peer: self.inner.peer.clone(),
                repo: repo.to_string(),
                digest: digest.to_string(),
                size,
                label: label.to_string(),
            },
        ))
    }

    /// GETs a small blob whole: refused unread when `size` is over `limit`.
    pub fn get_blob_bounded(
        &self,
        repo: &str,
        digest: &str,
        size: u64,
        limit: u64,
        label: &str,
    ) -> Result<Vec<u8>> {
        if size > limit {
            return Err(Error::TooLarge {
                peer: self.inner.peer.clone(),
                repo: repo.to_string(),
                what: format!("{label} (blob {digest})"),
                size: size.to_string(),
                limit,
            });
        }
        let mut r = self.get_blob(repo, digest, size, label)?;
        let mut out = Vec::with_capacity(size as usize);
        r.read_to_end(&mut out)
            .map_err(|e| Error::from_io(e, "reading blob", label))?;
        Ok(out)
    }

    fn location(&self, resp: &Response<ureq::Body>, t: Target) -> Result<String> {
        let loc = resp
            .headers()
            .get("location")
            .and_then(|v| v.to_str().ok())
            .ok_or_else(|| Error::Status {
                peer: self.inner.peer.clone(),
                repo: t.repo.to_string(),
                what: t.what.to_string(),
                status: resp.status().as_u16(),
                detail: ": upload answer has no Location".into(),
            })?;
        Ok(
            if loc.starts_with("http://") || loc.starts_with("https://") {
                loc.to_string()
            } else {
                self.url(loc)
            },
        )
    }

    /// Uploads a blob of `size` bytes from `data` (POST, then one PUT or
    /// PATCHes and a closing PUT with `?digest=`). The registry checks the
    /// digest before it commits the blob.
    pub fn upload_blob(
        &self,
        repo: &str,
        digest: &str,
        size: u64,
        data: &mut dyn Read,
        mode: Upload,
    ) -> Result<()> {
        let what = format!("blob {digest}");
        let t = Target { repo, what: &what };
        let url = self.url(&format!("/v2/{repo}/blobs/uploads/"));
        let resp = self.request("POST", &url, t, &[], Body::Empty, "pull,push")?;
        let resp = self.check(resp, t, &[202])?;
        let mut loc = self.location(&resp, t)?;
        let octets = ("Content-Type", "application/octet-stream".to_string());
        let with_digest = |loc: &str| {
            let sep = if loc.contains('?') { '&' } else { '?' };
            format!("{loc}{sep}digest={}", query_escape(digest))
        };
        match mode {
            Upload::Monolithic => {
                let resp = self.request(
                    "PUT",
                    &with_digest(&loc),
                    t,
                    &[octets],
                    Body::Reader(data, size),
                    "pull,push",
                )?;
                self.check(resp, t, &[201])?;
            }
            Upload::Chunked(chunk) => {
                let chunk = chunk.max(1);
                let mut sent = 0u64;
                while sent < size {
                    let n = chunk.min(size - sent);
                    let mut part = (&mut *data).take(n);
                    let range = format!("{}-{}", sent, sent + n - 1);
                    let resp = self.request(
                        "PATCH",
                        &loc,
                        t,
                        &[octets.clone(), ("Content-Range", range)],
                        Body::Reader(&mut part, n),
                        "pull,push",
                    )?;
                    let resp = self.check(resp, t, &[202])?;
                    loc = self.location(&resp, t)?;
                    sent += n;
                    tracing::debug!("{what}: {sent} of {size} bytes uploaded");
                }
                let resp =
                    self.request("PUT", &with_digest(&loc), t, &[], Body::Empty, "pull,push")?;
                self.check(resp, t, &[201])?;
            }
        }
        Ok(())
    }

    /// PUTs a manifest under `reference` (a tag); returns the digest the
    /// registry gives it, checked against the bytes'.
    pub fn put_manifest(
        &self,
        repo: &str,
        reference: &str,
        media_type: &str,
        bytes: &[u8],
    ) -> Result<String> {
        let what = format!("manifest {reference}");
        let t = Target { repo, what: &what };
        let url = self.url(&format!("/v2/{repo}/manifests/{reference}"));
        let resp = self.request(
            "PUT",
            &url,
            t,
            &[("Content-Type", media_type.to_string())],
            Body::Bytes(bytes),
            "pull,push",
        )?;
        let resp = self.check(resp, t, &[201])?;
        let digest = sha256_digest(bytes);
        if let Some(h) = resp
            .headers()
            .get("docker-content-digest")
            .and_then(|v| v.to_str().ok())
        {
            if h != digest {
                return Err(Error::BadImage {
                    peer: self.inner.peer.clone(),
                    repo: repo.to_string(),
                    reference: reference.to_string(),
                    why: format!("the registry stored it as {h}, the bytes hash to {digest}"),
                });
            }
        }
        Ok(digest)
    }
}

fn read_small(resp: Response<ureq::Body>) -> std::io::Result<Vec<u8>> {
    let mut out = Vec::new();
    resp.into_body()
        .into_reader()
        .take(MAX_SMALL_BODY)
        .read_to_end(&mut out)?;
    Ok(out)
}
