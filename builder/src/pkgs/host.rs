//! What the host contributes to a build: Debian packages a recipe needs
//! installed, and the toolchain identity that goes into the cache key.

use std::collections::BTreeMap;
use std::process::Command;

use super::error::PkgError;

/// Installed versions of `packages` (`None` when not installed), one
/// `dpkg-query` call for all of them.
pub fn installed_versions(
    packages: &[String],
) -> Result<BTreeMap<String, Option<String>>, PkgError> {
    let mut out: BTreeMap<String, Option<String>> =
        packages.iter().map(|p| (p.clone(), None)).collect();
    if packages.is_empty() {
        return Ok(out);
    }
    // dpkg-query exits 1 when some name is unknown but still lists the rest.
    let res = Command::new("dpkg-query")
        .args(["-W", "-f=${Package} ${db:Status-Abbrev} ${Version}\\n"])
        .args(packages)
        .output()
        .map_err(|e| PkgError::Toolchain {
            package: packages.join(","),
            command: "dpkg-query".into(),
            message: e.to_string(),
        })?;
    for line in String::from_utf8_lossy(&res.stdout).lines() {
        let mut it = line.split_whitespace();
        let (Some(name), Some(status), Some(version)) = (it.next(), it.next(), it.next()) else {
            continue;
        };
        // `ii` = desired install, installed; anything else is not usable.
        let name = name.split(':').next().unwrap_or(name);
        if status == "ii" {
            if let Some(slot) = out.get_mut(name) {
                *slot = Some(version.to_string());
            }
        }
    }
    Ok(out)
}

/// Runs one toolchain identity command (`sh -c`, fixed env) and returns its
/// output, which the cache key includes verbatim.
pub fn toolchain_identity(package: &str, command: &str) -> Result<String, PkgError> {
    let fail = |message: String| PkgError::Toolchain {
        package: package.into(),
        command: command.into(),
        message,
    };
    let out = Command::new("sh")
        .arg("-c")
        .arg(command)
        .env_clear()
        .env("PATH", super::build::FIXED_PATH)
        .env("LC_ALL", "C")
        .env("TZ", "UTC")
        .output()
        .map_err(|e| fail(e.to_string()))?;
    if !out.status.success() {
        return Err(fail(format!(
            "{}: {}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        )));
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// For each `package` or `package=version` spec: the installed version, and
/// whether it satisfies the spec (installed, and equal to the pin if any).
pub fn check_specs(specs: &[String]) -> Result<Vec<(String, Option<String>, bool)>, PkgError> {
    let names: Vec<String> = specs
        .iter()
        .map(|s| s.split_once('=').map_or(s.as_str(), |(n, _)| n).to_string())
        .collect();
    let installed = installed_versions(&names)?;
    Ok(specs
        .iter()
        .zip(&names)
        .map(|(spec, name)| {
            let have = installed.get(name).cloned().flatten();
            let ok = match (spec.split_once('='), &have) {
                (_, None) => false,
                (None, Some(_)) => true,
                (Some((_, want)), Some(v)) => want == v,
            };
            (spec.clone(), have, ok)
        })
        .collect())
}
