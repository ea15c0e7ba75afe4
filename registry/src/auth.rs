//! Credentials and challenges.
//!
//! Credentials come from a docker `config.json` (`auths.{host}.auth`, base64
//! of `user:password`): a given path, else `$DOCKER_CONFIG/config.json`, else
//! `~/.docker/config.json`. Credential helpers are not run (init has nothing
//! to run them with). A registry asks for them with a `WWW-Authenticate`
//! challenge: `Basic realm=…` (send them with each request) or `Bearer
//! realm=…,service=…,scope=…` (trade them, or nothing, for a token at the
//! realm).

use std::collections::BTreeMap;
use std::io::Read;
use std::path::{Path, PathBuf};

use base64::Engine;
use serde::Deserialize;

use crate::error::{Error, Result};

/// A user name and password for one registry.
#[derive(Clone, PartialEq, Eq)]
pub struct Credentials {
    pub username: String,
    pub password: String,
}

impl std::fmt::Debug for Credentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never print the password.
        write!(f, "Credentials({})", self.username)
    }
}

impl Credentials {
    /// `Authorization: Basic …` value.
    pub fn basic_header(&self) -> String {
        let raw = format!("{}:{}", self.username, self.password);
        format!(
            "Basic {}",
            base64::engine::general_purpose::STANDARD.encode(raw)
        )
    }
}

#[derive(Deserialize)]
struct ConfigFile {
    #[serde(default)]
    auths: BTreeMap<String, AuthEntry>,
}

#[derive(Deserialize)]
struct AuthEntry {
    #[serde(default)]
    auth: Option<String>,
}

/// A docker `config.json`'s `auths`, decoded.
#[derive(Debug, Default, Clone)]
pub struct DockerConfig {
    pub path: Option<PathBuf>,
    auths: BTreeMap<String, Credentials>,
}

/// A config file is a few KiB; it is read whole, so bounded.
const MAX_CONFIG_BYTES: u64 = 1 << 20;

impl DockerConfig {
    /// The default location: `$DOCKER_CONFIG/config.json`, else
    /// `$HOME/.docker/config.json`.
    pub fn default_path() -> Option<PathBuf> {
        if let Some(d) = std::env::var_os("DOCKER_CONFIG") {
            return Some(PathBuf::from(d).join("config.json"));
        }
        std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".docker/config.json"))
    }

    /// Loads `path`, or the default location if `path` is `None` (a missing
    /// default file is no credentials; a missing given file is an error).
    pub fn load(path: Option<&Path>) -> Result<DockerConfig> {
        let (path, must_exist) = match path {
            Some(p) => (p.to_path_buf(), true),
            None => match Self::default_path() {
                Some(p) => (p, false),
                None => return Ok(DockerConfig::default()),
            },
        };
        let mut bytes = Vec::new();
        match std::fs::File::open(&path) {
            Ok(f) => f
                .take(MAX_CONFIG_BYTES + 1)
                .read_to_end(&mut bytes)
                .map_err(|source| Error::Local {
                    what: "reading credentials",
                    path: path.clone(),
                    source,
                })?,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound && !must_exist => {
                return Ok(DockerConfig::default())
            }
            Err(source) => {
                return Err(Error::Local {
                    what: "reading credentials",
                    path,
                    source,
                })
            }
        };
        if bytes.len() as u64 > MAX_CONFIG_BYTES {
            return Err(Error::Credentials {
                path,
                why: format!("over {MAX_CONFIG_BYTES} bytes"),
            });
        }
        Self::parse(&bytes, &path)
    }

    pub fn parse(bytes: &[u8], path: &Path) -> Result<DockerConfig> {
        let bad = |why: String| Error::Credentials {
            path: path.to_path_buf(),
            why,
        };
        let file: ConfigFile =
            serde_json::from_slice(bytes).map_err(|e| bad(format!("not a docker config: {e}")))?;
        let mut auths = BTreeMap::new();
        for (host, entry) in file.auths {
            let Some(b64) = entry.auth else { continue };
            let raw = base64::engine::general_purpose::STANDARD
                .decode(b64.trim())
                .map_err(|e| bad(format!("auths.{host}.auth is not base64: {e}")))?;
            let raw = String::from_utf8(raw)
                .map_err(|_| bad(format!("auths.{host}.auth is not UTF-8")))?;
            let (user, pass) = raw
                .split_once(':')
                .ok_or_else(|| bad(format!("auths.{host}.auth is not user:password")))?;
            auths.insert(
                normalize_host(&host).to_string(),
                Credentials {
                    username: user.to_string(),
                    password: pass.to_string(),
                },
            );
        }
        Ok(DockerConfig {
            path: Some(path.to_path_buf()),
            auths,
        })
    }

    /// Credentials for `host[:port]` (keys may be written with a scheme or a
    /// trailing path, as `docker login` does for some registries).
    pub fn credentials_for(&self, registry: &str) -> Option<&Credentials> {
        self.auths.get(normalize_host(registry))
    }
}

fn normalize_host(key: &str) -> &str {
    let k = key
        .strip_prefix("https://")
        .or_else(|| key.strip_prefix("http://"))
        .unwrap_or(key);
    k.split('/').next().unwrap_or(k)
}

/// A parsed `WWW-Authenticate` header.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Challenge {
    Basic,
    Bearer {
        realm: String,
        service: Option<String>,
        scope: Option<String>,
    },
}

impl Challenge {
    /// Parses `Basic realm="…"` or `Bearer realm="…",service="…",scope="…"`.
    /// Other schemes are `None`.
    pub fn parse(header: &str) -> Option<Challenge> {
        let header = header.trim();
        let (scheme, rest) = header.split_once(' ').unwrap_or((header, ""));
        if scheme.eq_ignore_ascii_case("basic") {
            return Some(Challenge::Basic);
        }
        if !scheme.eq_ignore_ascii_case("bearer") {
            return None;
        }
        let params = parse_params(rest);
        Some(Challenge::Bearer {
            realm: params.get("realm")?.clone(),
            service: params.get("service").cloned(),
            scope: params.get("scope").cloned(),
        })
    }
}

/// `key="value", key=token, …`; quoted values may hold commas (scopes do).
fn parse_params(s: &str) -> BTreeMap<String, String> {
    let mut out = BTreeMap::new();
    let mut chars = s.chars().peekable();
    loop {
        while chars.peek().is_some_and(|c| *c == ',' || c.is_whitespace()) {
            chars.next();
        }
        let key: String = chars.by_ref().take_while(|c| *c != '=').collect();
        if key.is_empty() {
            break;
        }
        let mut value = String::new();
        if chars.peek() == Some(&'"') {
            chars.next();
            while let Some(c) = chars.next() {
                match c {
                    '\\' => value.extend(chars.next()),
                    '"' => break,
                    c => value.push(c),
                }
            }
        } else {
            value = chars.by_ref().take_while(|c| *c != ',').collect();
        }
        out.insert(key.trim().to_ascii_lowercase(), value.trim().to_string());
    }
    out
}

/// A token endpoint's answer (docker uses `token`, OAuth2 `access_token`).
#[derive(Deserialize)]
pub(crate) struct TokenResponse {
    #[serde(default)]
    pub token: Option<String>,
    #[serde(default)]
    pub access_token: Option<String>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_challenges() {
        assert_eq!(
            Challenge::parse(r#"Basic realm="Registry Realm""#),
            Some(Challenge::Basic)
        );
        assert_eq!(
            Challenge::parse(
                r#"Bearer realm="https://auth.example/token",service="registry.example",scope="repository:cairn/os:pull,push""#
            ),
            Some(Challenge::Bearer {
                realm: "https://auth.example/token".into(),
                service: Some("registry.example".into()),
                scope: Some("repository:cairn/os:pull,push".into()),
            })
        );
        assert_eq!(Challenge::parse("Negotiate abc"), None);
        assert_eq!(Challenge::parse("Bearer service=x"), None);
    }

    #[test]
    fn reads_docker_config_auths() {
        let json =
            br#"{"auths":{"https://reg.example:5000/v1/":{"auth":"dXNlcjpwYTpzcw=="},"other":{}}}"#;
        let c = DockerConfig::parse(json, Path::new("config.json")).unwrap();
        let cred = c.credentials_for("reg.example:5000").unwrap();
        assert_eq!(
            (cred.username.as_str(), cred.password.as_str()),
            ("user", "pa:ss")
        );
        assert!(c.credentials_for("other.example").is_none());
        assert!(format!("{cred:?}").find("pa:ss").is_none());
        let bad = DockerConfig::parse(br#"{"auths":{"h":{"auth":"!!"}}}"#, Path::new("c.json"));
        assert!(bad
            .unwrap_err()
            .to_string()
            .contains("auths.h.auth is not base64"));
    }
}
