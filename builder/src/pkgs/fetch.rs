//! Fetching sources into the download cache, verified by sha256 before
//! anything else sees them.

use std::collections::BTreeMap;
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
    // The download cache is keyed by the one pin every kind has: the .deb,
    // the file, or the .dsc (whose directory also holds the files it lists).
    let (pin, url_name) = match &src.kind {
        SourceKind::Deb { sha256, .. } | SourceKind::DebSrc { sha256, .. } => (sha256, None),
        SourceKind::Url {
            url,
            sha256,
            filename,
        } => (
            sha256,
            Some(filename.clone().unwrap_or_else(|| url_file_name(url))),
        ),
        SourceKind::Path { .. } => return Err(fail("path sources are not fetched".into())),
    };
    let cached_dir = cache.download_dir(pin);
    if cached_dir.is_dir() {
        return Ok(Fetched {
            files: sorted_files(&cached_dir)?,
        });
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
            let name = url_name.clone().unwrap_or_default();
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
    let names: Vec<String> = sorted_files(dir)?
        .iter()
        .map(|p| {
            p.file_name()
                .unwrap_or_default()
                .to_string_lossy()
                .into_owned()
        })
        .collect();
    let mismatch = |file: &str, expected: &str, actual: String| PkgError::HashMismatch {
        package: package.into(),
        source_name: src.name.clone(),
        file: file.into(),
        expected: expected.into(),
        actual,
    };
    // `work` drops on every early return: nothing of a bad download is kept.
    let pins: BTreeMap<String, String> = match &src.kind {
        SourceKind::DebSrc { files, .. } => {
            let dscs: Vec<&String> = names.iter().filter(|n| n.ends_with(".dsc")).collect();
            let [dsc] = dscs.as_slice() else {
                return Err(fail(format!(
                    "expected one .dsc, got: {}",
                    names.join(", ")
                )));
            };
            let dsc_path = dir.join(dsc);
            let actual = sha256_file(&dsc_path)?;
            if actual != *pin {
                return Err(mismatch(dsc, pin, actual));
            }
            let text = fs::read_to_string(&dsc_path).map_err(io_err(&dsc_path))?;
            let mut pins = dsc_checksums(&text);
            for (f, h) in files {
                match pins.get(f) {
                    Some(listed) if listed != h => {
                        return Err(fail(format!(
                            "recipe pins {f} to {h} but the pinned .dsc lists {listed}"
                        )))
                    }
                    Some(_) => {}
                    None => return Err(fail(format!("{f} is pinned but not listed in {dsc}"))),
                }
            }
            pins.insert((*dsc).clone(), pin.clone());
            pins.extend(files.clone());
            pins
        }
        SourceKind::Deb { .. } => {
            let [one] = names.as_slice() else {
                return Err(fail(format!(
                    "apt-get download left {} files: {}",
                    names.len(),
                    names.join(", ")
                )));
            };
            BTreeMap::from([(one.clone(), pin.clone())])
        }
        _ => BTreeMap::from([(url_name.unwrap_or_default(), pin.clone())]),
    };
    for n in &names {
        let actual = sha256_file(&dir.join(n))?;
        match pins.get(n) {
            Some(exp) if *exp == actual => {}
            Some(exp) => return Err(mismatch(n, exp, actual)),
            None => {
                return Err(fail(format!(
                    "downloaded `{n}` (sha256 {actual}) is not pinned"
                )))
            }
        }
    }
    for p in pins.keys() {
        if !names.contains(p) {
            return Err(fail(format!("pinned file `{p}` was not downloaded")));
        }
    }
    let kept = work.keep();
    commit_dir(&kept, &cached_dir)?;
    Ok(Fetched {
        files: sorted_files(&cached_dir)?,
    })
}

fn sorted_files(dir: &Path) -> Result<Vec<PathBuf>, PkgError> {
    let mut v: Vec<PathBuf> = fs::read_dir(dir)
        .map_err(io_err(dir))?
        .map(|e| e.map(|e| e.path()))
        .collect::<Result<_, _>>()
        .map_err(io_err(dir))?;
    v.sort();
    Ok(v)
}

/// File name -> sha256 from a .dsc's `Checksums-Sha256:` field.
pub fn dsc_checksums(dsc: &str) -> BTreeMap<String, String> {
    let mut out = BTreeMap::new();
    let mut inside = false;
    for line in dsc.lines() {
        if line.starts_with("Checksums-Sha256:") {
            inside = true;
            continue;
        }
        if inside {
            if !line.starts_with(' ') {
                inside = false;
                continue;
            }
            let f: Vec<&str> = line.split_whitespace().collect();
            if let [sha, _size, name] = f.as_slice() {
                out.insert((*name).to_string(), sha.to_ascii_lowercase());
            }
        }
    }
    out
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

#[cfg(test)]
mod tests {
    use super::dsc_checksums;

    #[test]
    fn dsc_checksums_reads_only_the_sha256_field() {
        let dsc = "Format: 3.0 (quilt)\nSource: x\nChecksums-Sha1:\n aaaa 1 x.orig.tar.gz\n\
                   Checksums-Sha256:\n BBBB 10 x_1.orig.tar.gz\n cccc 20 x_1-1.debian.tar.xz\n\
                   Files:\n dddd 10 x_1.orig.tar.gz\n";
        let m = dsc_checksums(dsc);
        assert_eq!(m.len(), 2);
        assert_eq!(m["x_1.orig.tar.gz"], "bbbb");
        assert_eq!(m["x_1-1.debian.tar.xz"], "cccc");
    }
}
