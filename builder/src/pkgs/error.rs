use std::path::PathBuf;

#[derive(Debug, thiserror::Error)]
pub enum PkgError {
    #[error(
        "package `{package}`: {path} changed while it was being built (content hash {before} \
         when the build started, {now} after): nothing was cached; build again"
    )]
    SourceChangedDuringBuild {
        package: String,
        path: String,
        before: String,
        now: String,
    },
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{path}: invalid recipe: {message}")]
    Recipe { path: PathBuf, message: String },
    #[error("unknown package `{name}`{}", context.as_ref().map(|c| format!(" (needed by `{c}`)")).unwrap_or_default())]
    UnknownPackage {
        name: String,
        context: Option<String>,
    },
    #[error("dependency cycle: {}", cycle.join(" -> "))]
    Cycle { cycle: Vec<String> },
    #[error(
        "package `{package}` source `{source_name}` ({file}): sha256 mismatch: recipe pins {expected}, \
         fetched file has {actual}; the file was deleted"
    )]
    HashMismatch {
        package: String,
        source_name: String,
        file: String,
        expected: String,
        actual: String,
    },
    #[error("package `{package}` source `{source_name}`: fetch failed: {message}")]
    Fetch {
        package: String,
        source_name: String,
        message: String,
    },
    #[error("{archive}: {message}")]
    Unpack { archive: PathBuf, message: String },
    #[error(
        "missing Debian build prerequisites for {}: run\n  apt-get install -y {}",
        packages.join(", "),
        missing.join(" ")
    )]
    HostPackages {
        packages: Vec<String>,
        missing: Vec<String>,
    },
    #[error("package `{package}`: toolchain command `{command}` failed: {message}")]
    Toolchain {
        package: String,
        command: String,
        message: String,
    },
    #[error("package `{package}`: build script {status}; log: {log}\n--- last lines ---\n{tail}")]
    BuildFailed {
        package: String,
        status: String,
        log: PathBuf,
        tail: String,
    },
    #[error(
        "package `{package}`: declared output `{output}` missing from CAIRN_OUT after the build"
    )]
    MissingOutput { package: String, output: String },
}

pub(crate) fn io_err(path: impl Into<PathBuf>) -> impl FnOnce(std::io::Error) -> PkgError {
    let path = path.into();
    move |source| PkgError::Io { path, source }
}
