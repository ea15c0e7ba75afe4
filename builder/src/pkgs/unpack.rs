//! Safe extraction of tarballs and of the data member of Debian packages.
//!
//! Nothing an archive says may write outside the target: absolute paths and
//! `..` components are refused, extraction never walks through a symlink,
//! hard links must name a regular file already inside, and once everything is
//! written every symlink is resolved within the tree and refused if it would
//! point outside it (checked on the final tree, since a later entry can change
//! what an earlier link resolves to).

use std::ffi::OsString;
use std::fs;
use std::io::{self, Read};
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::os::unix::fs::PermissionsExt;
use std::path::{Component, Path, PathBuf};

use super::error::PkgError;

const AR_MAGIC: &[u8] = b"!<arch>\n";
const AR_HEADER: usize = 60;

/// One member of an `ar` archive (what a .deb is).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ArMember {
    pub name: String,
    /// Offset of the member's data in the archive.
    pub offset: u64,
    pub size: u64,
}

/// Lists the members of a System V / GNU `ar` archive.
pub fn ar_members(archive: &Path) -> Result<Vec<ArMember>, PkgError> {
    let data = fs::read(archive).map_err(|e| unpack_err(archive, format!("reading: {e}")))?;
    parse_ar(&data).map_err(|m| unpack_err(archive, m))
}

fn parse_ar(data: &[u8]) -> Result<Vec<ArMember>, String> {
    if !data.starts_with(AR_MAGIC) {
        return Err("not an ar archive (no `!<arch>` magic at offset 0)".into());
    }
    let mut pos = AR_MAGIC.len();
    let mut out = Vec::new();
    while pos < data.len() {
        if data.len() - pos < AR_HEADER {
            return Err(format!(
                "truncated ar header at offset {pos}: {} bytes left, need {AR_HEADER}",
                data.len() - pos
            ));
        }
        let h = &data[pos..pos + AR_HEADER];
        if &h[58..60] != b"`\n" {
            return Err(format!("bad ar header terminator at offset {}", pos + 58));
        }
        let raw_name = String::from_utf8_lossy(&h[0..16]).trim_end().to_string();
        // GNU ar ends names with `/`; BSD long names are not used by dpkg.
        let name = raw_name.strip_suffix('/').unwrap_or(&raw_name).to_string();
        let size_text = String::from_utf8_lossy(&h[48..58]).trim().to_string();
        let size: u64 = size_text.parse().map_err(|_| {
            format!("ar member `{name}` at offset {pos}: size field `{size_text}` is not a number")
        })?;
        let start = pos + AR_HEADER;
        let end = (start as u64)
            .checked_add(size)
            .filter(|&e| e <= data.len() as u64)
            .ok_or_else(|| {
                format!(
                    "ar member `{name}` at offset {pos}: size {size} runs past the end of the archive ({} bytes)",
                    data.len()
                )
            })? as usize;
        out.push(ArMember {
            name,
            offset: start as u64,
            size,
        });
        // Members are padded to an even offset.
        pos = end + (end % 2);
    }
    Ok(out)
}

fn unpack_err(archive: &Path, message: String) -> PkgError {
    PkgError::Unpack {
        archive: archive.to_path_buf(),
        message,
    }
}

/// Extracts the `data.tar[.xz|.zst|.gz]` member of a .deb into `target`.
pub fn unpack_deb(deb: &Path, target: &Path) -> Result<(), PkgError> {
    let members = ar_members(deb)?;
    if members.first().map(|m| m.name.as_str()) != Some("debian-binary") {
        return Err(unpack_err(
            deb,
            "not a Debian package: first ar member is not `debian-binary`".into(),
        ));
    }
    let data = members
        .iter()
        .find(|m| m.name.starts_with("data.tar"))
        .ok_or_else(|| unpack_err(deb, "no data.tar.* member".into()))?;
    let mut f = fs::File::open(deb).map_err(|e| unpack_err(deb, e.to_string()))?;
    io::Seek::seek(&mut f, io::SeekFrom::Start(data.offset))
        .map_err(|e| unpack_err(deb, e.to_string()))?;
    let reader = f.take(data.size);
    let label = deb.join(&data.name);
    let compression = Compression::from_name(&data.name)
        .ok_or_else(|| unpack_err(deb, format!("unsupported member `{}`", data.name)))?;
    unpack_tar_stream(
        compression.reader(Box::new(reader), &label)?,
        target,
        &label,
    )
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Compression {
    None,
    Gzip,
    Xz,
    Zstd,
}

impl Compression {
    /// Compression of a tarball judged by its name; `None` if it is no tarball.
    pub fn from_name(name: &str) -> Option<Compression> {
        let n = name.to_ascii_lowercase();
        if n.ends_with(".tar") {
            Some(Compression::None)
        } else if n.ends_with(".tar.gz") || n.ends_with(".tgz") {
            Some(Compression::Gzip)
        } else if n.ends_with(".tar.xz") || n.ends_with(".txz") {
            Some(Compression::Xz)
        } else if n.ends_with(".tar.zst") || n.ends_with(".tzst") {
            Some(Compression::Zstd)
        } else {
            None
        }
    }

    fn reader<'a>(
        self,
        r: Box<dyn Read + 'a>,
        label: &Path,
    ) -> Result<Box<dyn Read + 'a>, PkgError> {
        Ok(match self {
            Compression::None => r,
            Compression::Gzip => Box::new(flate2::read::GzDecoder::new(r)),
            Compression::Xz => Box::new(xz2::read::XzDecoder::new(r)),
            Compression::Zstd => Box::new(
                zstd::stream::read::Decoder::new(r)
                    .map_err(|e| unpack_err(label, format!("zstd: {e}")))?,
            ),
        })
    }
}

/// Extracts a (possibly compressed, judged by file name) tarball into `target`.
pub fn unpack_tar(archive: &Path, target: &Path) -> Result<(), PkgError> {
    let name = archive
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let c = Compression::from_name(&name).ok_or_else(|| {
        unpack_err(
            archive,
            "not a tarball name (.tar, .tar.gz, .tar.xz, .tar.zst)".into(),
        )
    })?;
    let f = fs::File::open(archive).map_err(|e| unpack_err(archive, e.to_string()))?;
    unpack_tar_stream(c.reader(Box::new(f), archive)?, target, archive)
}

/// Extracts an uncompressed tar stream into `target` (created if missing).
pub fn unpack_tar_stream(
    r: Box<dyn Read + '_>,
    target: &Path,
    label: &Path,
) -> Result<(), PkgError> {
    fs::create_dir_all(target)
        .map_err(|e| unpack_err(label, format!("{}: {e}", target.display())))?;
    let mut ar = tar::Archive::new(r);
    let entries = ar
        .entries()
        .map_err(|e| unpack_err(label, format!("reading tar: {e}")))?;
    for entry in entries {
        let mut entry = entry.map_err(|e| unpack_err(label, format!("reading tar: {e}")))?;
        let raw = entry.path_bytes().into_owned();
        let shown = String::from_utf8_lossy(&raw).into_owned();
        let bad = |m: String| unpack_err(label, format!("entry `{shown}`: {m}"));
        let rel = safe_relative(&raw).map_err(bad)?;
        let ty = entry.header().entry_type();
        if rel.as_os_str().is_empty() {
            // `./` itself: the target exists already.
            continue;
        }
        let dest = target.join(&rel);
        check_no_symlink_parents(target, &rel).map_err(bad)?;
        let mode = entry.header().mode().unwrap_or(0o644) & 0o777;
        use tar::EntryType as T;
        match ty {
            T::Directory => {
                match fs::symlink_metadata(&dest) {
                    Ok(m) if m.is_dir() => {}
                    Ok(_) => {
                        return Err(bad(
                            "a directory would replace an existing non-directory".into()
                        ))
                    }
                    Err(_) => fs::create_dir(&dest).map_err(|e| bad(e.to_string()))?,
                }
                fs::set_permissions(&dest, fs::Permissions::from_mode(mode | 0o700))
                    .map_err(|e| bad(e.to_string()))?;
            }
            T::Regular | T::Continuous => {
                remove_existing(&dest).map_err(&bad)?;
                let mut out = fs::File::create(&dest).map_err(|e| bad(e.to_string()))?;
                io::copy(&mut entry, &mut out).map_err(|e| bad(e.to_string()))?;
                fs::set_permissions(&dest, fs::Permissions::from_mode(mode))
                    .map_err(|e| bad(e.to_string()))?;
            }
            T::Symlink => {
                let link = entry
                    .link_name_bytes()
                    .ok_or_else(|| bad("symlink without a target".into()))?
                    .into_owned();
                if link.first() == Some(&b'/') {
                    return Err(bad(format!(
                        "symlink to absolute path `{}` escapes the target",
                        String::from_utf8_lossy(&link)
                    )));
                }
                remove_existing(&dest).map_err(&bad)?;
                std::os::unix::fs::symlink(OsString::from_vec(link), &dest)
                    .map_err(|e| bad(e.to_string()))?;
            }
            T::Link => {
                let link = entry
                    .link_name_bytes()
                    .ok_or_else(|| bad("hard link without a target".into()))?
                    .into_owned();
                let shown_link = String::from_utf8_lossy(&link).into_owned();
                let link_rel = safe_relative(&link)
                    .map_err(|m| bad(format!("hard link target `{shown_link}`: {m}")))?;
                check_no_symlink_parents(target, &link_rel)
                    .map_err(|m| bad(format!("hard link target `{shown_link}`: {m}")))?;
                let src = target.join(&link_rel);
                match fs::symlink_metadata(&src) {
                    Ok(m) if m.is_file() => {}
                    _ => {
                        return Err(bad(format!(
                        "hard link target `{shown_link}` is not a regular file already extracted"
                    )))
                    }
                }
                remove_existing(&dest).map_err(&bad)?;
                fs::hard_link(&src, &dest).map_err(|e| bad(e.to_string()))?;
            }
            T::XGlobalHeader | T::XHeader | T::GNULongName | T::GNULongLink => {}
            other => {
                tracing::warn!(archive = %label.display(), entry = %shown, "skipping tar entry of type {other:?}");
            }
        }
    }
    check_symlinks(target, target, Path::new("")).map_err(|m| unpack_err(label, m))?;
    Ok(())
}

/// The entry path as a relative path with no `..`, no root, no `.` parts.
fn safe_relative(raw: &[u8]) -> Result<PathBuf, String> {
    if raw.first() == Some(&b'/') {
        return Err("absolute path refused".into());
    }
    if raw.contains(&0) {
        return Err("NUL in path".into());
    }
    let p = Path::new(std::ffi::OsStr::from_bytes(raw));
    let mut out = PathBuf::new();
    for c in p.components() {
        match c {
            Component::Normal(n) => out.push(n),
            Component::CurDir => {}
            Component::ParentDir => return Err("`..` component refused".into()),
            Component::RootDir | Component::Prefix(_) => return Err("absolute path refused".into()),
        }
    }
    Ok(out)
}

/// Refuses writing through a symlink: every existing parent must be a real dir.
fn check_no_symlink_parents(target: &Path, rel: &Path) -> Result<(), String> {
    let mut cur = target.to_path_buf();
    let comps: Vec<_> = rel.components().collect();
    for c in &comps[..comps.len().saturating_sub(1)] {
        cur.push(c);
        match fs::symlink_metadata(&cur) {
            Ok(m) if m.file_type().is_symlink() => {
                return Err(format!(
                    "parent `{}` is a symlink; extraction does not follow links",
                    cur.strip_prefix(target).unwrap_or(&cur).display()
                ))
            }
            Ok(m) if !m.is_dir() => {
                return Err(format!(
                    "parent `{}` is not a directory",
                    cur.strip_prefix(target).unwrap_or(&cur).display()
                ))
            }
            Ok(_) => {}
            // Tarballs may omit directory entries.
            Err(_) => fs::create_dir(&cur).map_err(|e| format!("{}: {e}", cur.display()))?,
        }
    }
    Ok(())
}

fn remove_existing(dest: &Path) -> Result<(), String> {
    match fs::symlink_metadata(dest) {
        Ok(m) if m.is_dir() => Err("a file would replace an existing directory".into()),
        Ok(_) => fs::remove_file(dest).map_err(|e| e.to_string()),
        Err(_) => Ok(()),
    }
}

/// Every symlink below `dir` must resolve (following links inside the tree)
/// to a location inside `root`.
fn check_symlinks(root: &Path, dir: &Path, rel: &Path) -> Result<(), String> {
    let rd = fs::read_dir(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    for e in rd {
        let e = e.map_err(|e| format!("{}: {e}", dir.display()))?;
        let ft = e.file_type().map_err(|e| e.to_string())?;
        let child_rel = rel.join(e.file_name());
        if ft.is_symlink() {
            let parent: Vec<OsString> = rel.iter().map(|s| s.to_os_string()).collect();
            let target = fs::read_link(e.path()).map_err(|e| e.to_string())?;
            resolve_inside(root, parent, &target, 0).map_err(|m| {
                format!(
                    "symlink `{}` -> `{}` escapes the target: {m}",
                    child_rel.display(),
                    target.display()
                )
            })?;
        } else if ft.is_dir() {
            check_symlinks(root, &e.path(), &child_rel)?;
        }
    }
    Ok(())
}

/// Resolves `target` relative to the directory `stack` (components below the
/// root), following symlinks inside the tree; errors if it would leave it.
fn resolve_inside(
    root: &Path,
    mut stack: Vec<OsString>,
    target: &Path,
    depth: u32,
) -> Result<Vec<OsString>, String> {
    if depth > 40 {
        return Err("too many levels of symlinks".into());
    }
    for c in target.components() {
        match c {
            Component::RootDir | Component::Prefix(_) => return Err("absolute target".into()),
            Component::CurDir => {}
            Component::ParentDir => {
                if stack.pop().is_none() {
                    return Err("`..` climbs above the target root".into());
                }
            }
            Component::Normal(n) => {
                let mut p = root.to_path_buf();
                p.extend(&stack);
                p.push(n);
                match fs::symlink_metadata(&p) {
                    Ok(m) if m.file_type().is_symlink() => {
                        let t = fs::read_link(&p).map_err(|e| e.to_string())?;
                        stack = resolve_inside(root, stack, &t, depth + 1)?;
                    }
                    _ => stack.push(n.to_os_string()),
                }
            }
        }
    }
    Ok(stack)
}
