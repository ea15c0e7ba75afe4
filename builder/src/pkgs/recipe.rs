//! `pkgs/NAME/recipe.toml`: parsing and the checks that keep a recipe from
//! naming files outside the repository or clobbering the fixed build env.

use std::collections::BTreeMap;
use std::path::{Component, Path, PathBuf};

use serde::Deserialize;

use super::error::{io_err, PkgError};

/// Environment names the engine sets itself; a recipe may not override them.
pub const RESERVED_ENV: &[&str] = &[
    "CAIRN_SRC",
    "CAIRN_OUT",
    "CAIRN_REPO",
    "CAIRN_JOBS",
    "SOURCE_DATE_EPOCH",
    "TZ",
    "LC_ALL",
    "PATH",
    "HOME",
];

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Recipe {
    pub name: String,
    pub version: String,
    #[serde(default = "default_script")]
    pub script: String,
    #[serde(default)]
    pub depends: Vec<String>,
    #[serde(default)]
    pub host_packages: Vec<String>,
    /// Commands whose output identifies the toolchain (e.g. `cc --version`).
    #[serde(default)]
    pub toolchain: Vec<String>,
    #[serde(default)]
    pub env: BTreeMap<String, String>,
    #[serde(default)]
    pub outputs: Vec<String>,
    #[serde(default, rename = "source")]
    raw_sources: Vec<RawSource>,
    #[serde(skip)]
    pub sources: Vec<Source>,
}

/// What TOML gives us; checked per kind into `Source` (serde's `flatten`
/// cannot be combined with `deny_unknown_fields`, and typos must fail).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawSource {
    name: String,
    kind: String,
    /// `package=version` (deb, deb-src), the URL (url), the repo path (path).
    spec: String,
    sha256: Option<String>,
    files: Option<BTreeMap<String, String>>,
    suite: Option<String>,
    filename: Option<String>,
    #[serde(default)]
    unpack: UnpackField,
}

/// `unpack = true|false` (auto / none) or a named mode.
#[derive(Debug, Clone, Copy, Deserialize)]
#[serde(untagged)]
enum UnpackField {
    Bool(bool),
    Mode(Unpack),
}

impl Default for UnpackField {
    fn default() -> Self {
        UnpackField::Bool(true)
    }
}

impl RawSource {
    fn into_source(self) -> Result<Source, String> {
        let RawSource {
            name,
            kind,
            spec,
            sha256,
            files,
            suite,
            filename,
            unpack,
        } = self;
        let unpack = match unpack {
            UnpackField::Bool(true) => Unpack::Auto,
            UnpackField::Bool(false) => Unpack::None,
            UnpackField::Mode(m) => m,
        };
        let allowed: &[&str] = match kind.as_str() {
            "deb" => &[],
            "deb-src" => &["files", "suite"],
            "url" => &["filename"],
            "path" => &[],
            other => return Err(format!("unknown kind `{other}` (deb, deb-src, url, path)")),
        };
        let present = [
            ("files", files.is_some()),
            ("suite", suite.is_some()),
            ("filename", filename.is_some()),
        ];
        for (field, is) in present {
            if is && !allowed.contains(&field) {
                return Err(format!("field `{field}` does not apply to kind `{kind}`"));
            }
        }
        let need_sha = || {
            sha256
                .clone()
                .ok_or_else(|| format!("kind `{kind}` needs `sha256`"))
        };
        let split = || -> Result<(String, String), String> {
            match spec.split_once('=') {
                Some((p, v)) if !p.is_empty() && !v.is_empty() => Ok((p.into(), v.into())),
                _ => Err(format!("spec `{spec}` must be `package=version`")),
            }
        };
        let kind = match kind.as_str() {
            "deb" => {
                let (package, version) = split()?;
                SourceKind::Deb {
                    package,
                    version,
                    sha256: need_sha()?,
                }
            }
            "deb-src" => {
                let (package, version) = split()?;
                SourceKind::DebSrc {
                    package,
                    version,
                    sha256: need_sha()?,
                    files: files.unwrap_or_default(),
                    suite: suite.unwrap_or_else(|| "bookworm".into()),
                }
            }
            "url" => SourceKind::Url {
                url: spec,
                sha256: need_sha()?,
                filename,
            },
            _ => SourceKind::Path { path: spec, sha256 },
        };
        Ok(Source { name, kind, unpack })
    }
}

fn default_script() -> String {
    "build.sh".into()
}

#[derive(Debug, Clone)]
pub struct Source {
    pub name: String,
    pub kind: SourceKind,
    pub unpack: Unpack,
}

#[derive(Debug, Clone)]
pub enum SourceKind {
    /// A Debian binary package, `apt-get download package=version`.
    Deb {
        package: String,
        version: String,
        sha256: String,
    },
    /// A Debian source package; `sha256` pins the .dsc, which pins every
    /// other file by its Checksums-Sha256; `files` may pin them again.
    DebSrc {
        package: String,
        version: String,
        sha256: String,
        files: BTreeMap<String, String>,
        suite: String,
    },
    /// An https:// URL (file:// is accepted so tests can serve local files).
    Url {
        url: String,
        sha256: String,
        filename: Option<String>,
    },
    /// A file or directory in the repository, relative to its root.
    Path {
        path: String,
        sha256: Option<String>,
    },
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Unpack {
    /// deb: extract data.tar.*; a file named like a tarball: extract it;
    /// anything else: place as is.
    #[default]
    Auto,
    None,
    Deb,
    Tar,
}

impl Recipe {
    pub fn load(path: &Path, dir_name: &str) -> Result<Recipe, PkgError> {
        let text = std::fs::read_to_string(path).map_err(io_err(path))?;
        let bad = |message: String| PkgError::Recipe {
            path: path.to_path_buf(),
            message,
        };
        let mut r: Recipe = toml::from_str(&text).map_err(|e| bad(e.to_string()))?;
        for raw in std::mem::take(&mut r.raw_sources) {
            let n = raw.name.clone();
            r.sources.push(
                raw.into_source()
                    .map_err(|m| bad(format!("source `{n}`: {m}")))?,
            );
        }
        if r.name != dir_name {
            return Err(bad(format!(
                "name `{}` differs from its directory `{dir_name}`",
                r.name
            )));
        }
        check_name(&r.name).map_err(&bad)?;
        for d in &r.depends {
            check_name(d).map_err(|m| bad(format!("depends: {m}")))?;
        }
        relative_inside(&r.script).map_err(|m| bad(format!("script: {m}")))?;
        for o in &r.outputs {
            relative_inside(o).map_err(|m| bad(format!("outputs: {m}")))?;
        }
        for k in r.env.keys() {
            if RESERVED_ENV.contains(&k.as_str()) || k.starts_with("CAIRN_") {
                return Err(bad(format!(
                    "env: `{k}` is set by the build engine and cannot be overridden"
                )));
            }
            if k.is_empty() || k.contains('=') || k.contains('\0') {
                return Err(bad(format!("env: invalid variable name `{k}`")));
            }
        }
        let mut seen = std::collections::BTreeSet::new();
        for s in &r.sources {
            check_name(&s.name).map_err(|m| bad(format!("source: {m}")))?;
            if !seen.insert(s.name.clone()) {
                return Err(bad(format!("source `{}` declared twice", s.name)));
            }
            let ctx = |m: String| bad(format!("source `{}`: {m}", s.name));
            match &s.kind {
                SourceKind::Deb { sha256, .. } => check_sha(sha256).map_err(ctx)?,
                SourceKind::DebSrc { sha256, files, .. } => {
                    check_sha(sha256).map_err(ctx)?;
                    for (f, h) in files {
                        plain_file_name(f).map_err(ctx)?;
                        check_sha(h).map_err(ctx)?;
                    }
                }
                SourceKind::Url {
                    url,
                    sha256,
                    filename,
                } => {
                    check_sha(sha256).map_err(ctx)?;
                    if !(url.starts_with("https://") || url.starts_with("file://")) {
                        return Err(ctx(format!("url `{url}` must be https:// (or file://)")));
                    }
                    let name = filename.clone().unwrap_or_else(|| url_file_name(url));
                    plain_file_name(&name).map_err(ctx)?;
                }
                SourceKind::Path { path: p, sha256 } => {
                    relative_inside(p).map_err(ctx)?;
                    if let Some(h) = sha256 {
                        check_sha(h).map_err(ctx)?;
                    }
                }
            }
        }
        Ok(r)
    }
}

/// The last path segment of a URL, without query or fragment.
pub fn url_file_name(url: &str) -> String {
    let path = url.split(['?', '#']).next().unwrap_or(url);
    path.rsplit('/').next().unwrap_or("").to_string()
}

fn check_name(n: &str) -> Result<(), String> {
    let ok = !n.is_empty()
        && n.len() <= 64
        && n.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'_')
        && !n.starts_with('-');
    if ok {
        Ok(())
    } else {
        Err(format!(
            "`{n}` is not a valid name (lowercase letters, digits, `-`, `_`)"
        ))
    }
}

fn check_sha(h: &str) -> Result<(), String> {
    if h.len() == 64
        && h.bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
    {
        Ok(())
    } else {
        Err(format!(
            "sha256 `{h}` is not 64 lowercase hex digits ({} chars)",
            h.len()
        ))
    }
}

fn plain_file_name(f: &str) -> Result<(), String> {
    if f.is_empty() || f == "." || f == ".." || f.contains('/') || f.contains('\0') {
        Err(format!("`{f}` is not a plain file name"))
    } else {
        Ok(())
    }
}

/// A relative path that cannot leave the directory it is joined to.
pub fn relative_inside(p: &str) -> Result<PathBuf, String> {
    let path = Path::new(p);
    if p.is_empty() {
        return Err("empty path".into());
    }
    for c in path.components() {
        match c {
            Component::Normal(_) | Component::CurDir => {}
            _ => return Err(format!("`{p}` must be relative and without `..`")),
        }
    }
    Ok(path.to_path_buf())
}
