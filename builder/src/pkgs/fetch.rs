//! Fetching sources into the download cache, verified by sha256 before
//! anything else sees them.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

use super::cache::{commit_dir, Cache};
use super::error::{io_err, PkgError};
use super::hash::sha256_file;
use super::recipe::{url_file_name, Source, SourceKind};

/// Files of one fetched source, all verified, in the download cache.
#[derive(Debug, Clone)]
pub struct Fetched {
    pub files: Vec<PathBuf>,
}

/// Fetches `src` unless the download cache has it. `package` names errors.
/// The caller holds the cache lock. `path` sources are not fetched.
pub fn fetch(cache: &Cache, package: &str, src: &Source) -> Result<Fetched, PkgError> {
    let fail = |message: String| PkgError::Fetch {
        package: package.into(),
        source_name: src.name.clone(),
        message,
    };
    // (file name, expected sha256) of every file the source consists of.
    let wanted: Vec<(Option<String>, String)> = match &src.kind {
        SourceKind::Deb { sha256, .. } => vec![(None, sha256.clone())],
        SourceKind::Url {
            url,
            sha256,
            filename,
        } => vec![(
            Some(filename.clone().unwrap_or_else(|| url_file_name(url))),
            sha256.clone(),
        )],
        SourceKind::DebSrc { sha256, files, .. } => {
            let mut v = vec![(None, sha256.clone())];
            v.extend(files.iter().map(|(f, h)| (Some(f.clone()), h.clone())));
            v
        }
        SourceKind::Path { .. } => return Err(fail("path sources are not fetched".into())),
    };
    if let Some(files) = cached(cache, &wanted) {
        return Ok(Fetched { files });
    }
    let work = cache.temp_dir("fetch-")?;
    let dir = work.path();
    match &src.kind {
        SourceKind::Deb {
            package: p,
            version,
            ..
        } => {
            run(Command::new("apt-get")
                .arg("download")
                .arg(format!("{p}={version}"))
                .current_dir(dir))
            .map_err(&fail)?;
        }
        SourceKind::Url { url, .. } => {
            let name = wanted[0].0.clone().unwrap_or_default();
            let dest = dir.join(&name);
            if let Some(local) = url.strip_prefix("file://") {
                fs::copy(local, &dest).map_err(|e| fail(format!("copying {local}: {e}")))?;
            } else {
                run(Command::new("curl")
                    .args(["-fsSL", "--proto", "=https", "--retry", "3", "-o"])
                    .arg(&dest)
                    .arg(url))
                .map_err(&fail)?;
            }
        }
        SourceKind::DebSrc {
            package: p,
            version,
            suite,
            ..
        } => fetch_deb_src(cache, dir, p, version, suite).map_err(&fail)?,
        SourceKind::Path { .. } => unreachable!("rejected above"),
    }
    // Every downloaded file must be pinned, and every pin matched.
    let mut names: Vec<String> = fs::read_dir(dir)
        .map_err(io_err(dir))?
        .map(|e| e.map(|e| e.file_name().to_string_lossy().into_owned()))
        .collect::<Result<_, _>>()
        .map_err(io_err(dir))?;
    names.sort();
    let is_dsc = matches!(src.kind, SourceKind::DebSrc { .. });
    let mut verified: Vec<(String, String)> = Vec::new();
    let mut problem: Option<PkgError> = None;
    for n in &names {
        let path = dir.join(n);
        let actual = sha256_file(&path)?;
        let expected = wanted.iter().find(|(f, _)| match f {
            Some(f) => f == n,
            // The unnamed pin is the .deb (only file) or the .dsc.
            None => !is_dsc || n.ends_with(".dsc"),
        });
        match expected {
            Some((_, exp)) if *exp == actual => verified.push((n.clone(), actual)),
            Some((_, exp)) => {
                problem.get_or_insert(PkgError::HashMismatch {
                    package: package.into(),
                    source_name: src.name.clone(),
                    file: n.clone(),
                    expected: exp.clone(),
                    actual,
                });
            }
            None => {
                problem.get_or_insert(fail(format!(
                    "downloaded `{n}` (sha256 {actual}) is not pinned in the recipe"
                )));
            }
        }
    }
    if let Some(e) = problem {
        // `work` drops here: nothing of a bad download is kept.
        return Err(e);
    }
    if verified.len() != wanted.len() {
        return Err(fail(format!(
            "expected {} file(s), got {}: {}",
            wanted.len(),
            verified.len(),
            names.join(", ")
        )));
    }
    let mut files = Vec::new();
    for (n, sha) in verified {
        let dest = cache.download_dir(&sha);
        if !dest.is_dir() {
            let one = cache.temp_dir("dl-")?;
            fs::rename(dir.join(&n), one.path().join(&n)).map_err(io_err(one.path()))?;
            let kept = one.keep();
            commit_dir(&kept, &dest)?;
        }
        files.push(dest.join(&n));
    }
    Ok(Fetched { files })
}

/// All files already in the download cache, or `None`.
fn cached(cache: &Cache, wanted: &[(Option<String>, String)]) -> Option<Vec<PathBuf>> {
    let mut out = Vec::new();
    for (_, sha) in wanted {
        let d = cache.download_dir(sha);
        let mut it = fs::read_dir(&d).ok()?;
        let e = it.next()?.ok()?;
        out.push(e.path());
    }
    Some(out)
}

fn run(cmd: &mut Command) -> Result<(), String> {
    let shown = format!("{cmd:?}");
    let out = cmd.output().map_err(|e| format!("running {shown}: {e}"))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!(
            "{shown} {}: {}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        ))
    }
}

/// `apt-get source --download-only` through a private sources list and
/// lists dir, so the machine's apt configuration is never touched.
fn fetch_deb_src(
    cache: &Cache,
    dir: &Path,
    package: &str,
    version: &str,
    suite: &str,
) -> Result<(), String> {
    let apt = cache.root.join("apt").join(suite);
    let lists = apt.join("lists");
    fs::create_dir_all(lists.join("partial")).map_err(|e| format!("{}: {e}", lists.display()))?;
    fs::create_dir_all(apt.join("cache")).map_err(|e| e.to_string())?;
    let sources = apt.join("sources.list");
    fs::write(
        &sources,
        format!("deb-src http://deb.debian.org/debian {suite} main\n"),
    )
    .map_err(|e| format!("{}: {e}", sources.display()))?;
    let opts = [
        format!("-oDir::Etc::SourceList={}", sources.display()),
        "-oDir::Etc::SourceParts=/dev/null".into(),
        format!("-oDir::State::Lists={}", lists.display()),
        format!("-oDir::Cache={}", apt.join("cache").display()),
    ];
    let have_lists = fs::read_dir(&lists)
        .map(|rd| {
            rd.flatten()
                .any(|e| e.file_name().to_string_lossy().ends_with("Sources"))
        })
        .unwrap_or(false);
    if !have_lists {
        run(Command::new("apt-get").args(&opts).args(["-q", "update"]))?;
    }
    let spec = format!("{package}={version}");
    let get = |opts: &[String]| {
        run(Command::new("apt-get")
            .args(opts)
            .args(["-q", "source", "--download-only"])
            .arg(&spec)
            .current_dir(dir))
    };
    if get(&opts).is_err() {
        // Stale lists (the version moved on in the index): refresh once.
        run(Command::new("apt-get").args(&opts).args(["-q", "update"]))?;
        get(&opts)?;
    }
    Ok(())
}
