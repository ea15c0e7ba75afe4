//! `REGISTRY/REPO:TAG` and `REGISTRY/REPO@sha256:HEX`, with an optional
//! `http://` or `https://` in front. The registry part is mandatory: there
//! is no default registry, so a typo cannot send a pull to some other host.

use crate::error::{Error, Result};

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reference {
    /// `host[:port]` as given.
    pub registry: String,
    /// The URL said `http://`: plain HTTP was asked for.
    pub plain_http: bool,
    pub repo: String,
    /// A tag or `sha256:<hex>`.
    pub reference: String,
}

impl Reference {
    pub fn parse(s: &str) -> Result<Reference> {
        let bad = |why: &str| Error::BadReference {
            reference: s.to_string(),
            why: why.to_string(),
        };
        let (plain_http, rest) = if let Some(r) = s.strip_prefix("http://") {
            (true, r)
        } else if let Some(r) = s.strip_prefix("https://") {
            (false, r)
        } else {
            (false, s)
        };
        let (registry, path) = rest
            .split_once('/')
            .ok_or_else(|| bad("no registry host: REGISTRY/REPO is required"))?;
        if registry.is_empty()
            || !(registry.contains('.') || registry.contains(':') || registry == "localhost")
        {
            return Err(bad(
                "the first component must be a registry host (with a dot or a port, or localhost)",
            ));
        }
        let (repo, reference) = if let Some((repo, digest)) = path.split_once('@') {
            let hex = digest
                .strip_prefix("sha256:")
                .ok_or_else(|| bad("only sha256 digests are supported"))?;
            if hex.len() != 64
                || !hex
                    .bytes()
                    .all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase())
            {
                return Err(bad("a digest is sha256: and 64 lowercase hex digits"));
            }
            (repo, digest.to_string())
        } else {
            // A colon after the last slash separates the tag.
            let slash = path.rfind('/').map_or(0, |i| i + 1);
            let (repo, tag) = match path[slash..].rfind(':') {
                Some(i) => (&path[..slash + i], &path[slash + i + 1..]),
                None => return Err(bad("no tag: add :TAG or @sha256:HEX")),
            };
            if tag.is_empty()
                || tag.len() > 128
                || !tag.bytes().enumerate().all(|(i, b)| {
                    b.is_ascii_alphanumeric() || b == b'_' || (i > 0 && (b == b'.' || b == b'-'))
                })
            {
                return Err(bad("a tag is [A-Za-z0-9_][A-Za-z0-9._-]{0,127}"));
            }
            (repo, tag.to_string())
        };
        let component_ok = |c: &str| {
            !c.is_empty()
                && c.bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"._-".contains(&b))
                && c.as_bytes()[0].is_ascii_alphanumeric()
                && c.as_bytes()[c.len() - 1].is_ascii_alphanumeric()
        };
        if repo.is_empty() || !repo.split('/').all(component_ok) {
            return Err(bad(
                "a repository is lowercase [a-z0-9._-] components joined by /",
            ));
        }
        Ok(Reference {
            registry: registry.to_string(),
            plain_http,
            repo: repo.to_string(),
            reference,
        })
    }

    /// Whether the reference is a digest rather than a tag.
    pub fn is_digest(&self) -> bool {
        self.reference.starts_with("sha256:")
    }
}

impl std::fmt::Display for Reference {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let sep = if self.is_digest() { '@' } else { ':' };
        write!(f, "{}/{}{sep}{}", self.registry, self.repo, self.reference)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_tags_digests_and_schemes() {
        let r = Reference::parse("127.0.0.1:5000/cairn/os:1.0.0").unwrap();
        assert_eq!(
            (
                r.registry.as_str(),
                r.repo.as_str(),
                r.reference.as_str(),
                r.plain_http
            ),
            ("127.0.0.1:5000", "cairn/os", "1.0.0", false)
        );
        let d = format!("sha256:{}", "a".repeat(64));
        let r = Reference::parse(&format!("http://localhost/cairn@{d}")).unwrap();
        assert!(r.plain_http && r.is_digest());
        assert_eq!(r.to_string(), format!("localhost/cairn@{d}"));
    }

    #[test]
    fn refuses_what_is_not_a_reference() {
        for s in [
            "cairn:1.0.0",
            "example.com/cairn",
            "example.com/Cairn:1",
            "example.com/cairn:",
            "example.com/cairn@sha256:abc",
            "example.com/cairn:-x",
        ] {
            assert!(Reference::parse(s).is_err(), "{s}");
        }
    }
}
