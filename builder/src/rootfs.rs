//! The staged rootfs tree: init, the vendored tools, os-release and the
//! profile's files, and nothing else.

use std::fs;
use std::os::unix::fs::{symlink, PermissionsExt};
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};

use crate::profile::Profile;

/// Directories every cairn rootfs has (mount points and the layout init expects).
const DIRS: &[&str] = &[
    "dev",
    "proc",
    "sys",
    "run",
    "tmp",
    "var",
    "efi",
    "etc",
    "sbin",
    "system",
    "system/state",
    "usr",
    "usr/lib",
    "usr/share",
    "usr/share/cairn",
];

/// Subtrees of a package's output that belong in the rootfs.
const PKG_TREES: &[&str] = &["bin", "sbin", "etc", "lib", "usr"];

/// `/etc/os-release` (and the UKI's `.osrel`): systemd-boot sorts entries by
/// IMAGE_ID (else ID) then version, which is what makes the newest release
/// boot first: IMAGE_ID must therefore stay the same across releases (no
/// profile name in it), or an older release sorts first by name.
pub fn os_release(profile: &Profile) -> String {
    let v = &profile.version;
    format!(
        "NAME=\"{name}\"\nID={id}\nPRETTY_NAME=\"{name} {v}\"\nVERSION=\"{v}\"\nVERSION_ID={v}\nIMAGE_ID={id}\nIMAGE_VERSION={v}\n",
        name = profile.os_name,
        id = profile.os_name.to_lowercase(),
    )
}

pub struct Staged {
    pub dir: PathBuf,
    /// ELF executables in the tree: the whole userland, counted.
    pub binaries: Vec<PathBuf>,
}

/// Stages the rootfs for `profile` into `dir` (which must be empty).
/// `packages` maps each of the profile's rootfs packages to its built output.
pub fn stage(
    profile: &Profile,
    packages: &[(String, PathBuf)],
    trusted: &[signing::PublicKey],
    dir: &Path,
) -> Result<Staged> {
    for d in DIRS {
        fs::create_dir_all(dir.join(d))?;
    }
    // The keys this release trusts to sign the next one (contract::trust).
    let keys = dir.join(contract::trust::KEYS_DIR);
    fs::create_dir_all(&keys)?;
    for k in contract::trust::key_set(trusted.iter().cloned()) {
        put(&keys.join(contract::trust::key_file(&k.id())), &k.to_pem())?;
    }
    put(&dir.join("usr/lib/os-release"), &os_release(profile))?;
    symlink("../usr/lib/os-release", dir.join("etc/os-release"))?;
    // The root is read-only: init writes the resolver config on /run.
    symlink(
        format!("..{}", contract::machine::RESOLV_CONF),
        dir.join("etc/resolv.conf"),
    )?;
    put(&dir.join("etc/hostname"), "cairn\n")?;
    // An empty machine-id: a read-only root cannot get one later.
    put(&dir.join("etc/machine-id"), "")?;
    // nobody (65534) is what a [[service]] runs as unless it says otherwise
    // (contract::machine); cairnd has its own account (contract::api). No
    // account has a shell or a password.
    let (user, uid, gid) = (
        contract::api::USER_NAME,
        contract::api::UID,
        contract::api::GID,
    );
    put(
        &dir.join("etc/passwd"),
        &format!(
            "root:x:0:0:root:/:/sbin/nologin\n{user}:x:{uid}:{gid}:{user}:/:/sbin/nologin\nnobody:x:65534:65534:nobody:/:/sbin/nologin\n"
        ),
    )?;
    put(
        &dir.join("etc/group"),
        &format!("root:x:0:\n{user}:x:{gid}:\nnobody:x:65534:\n"),
    )?;

    for (name, out) in packages {
        if name == "init" {
            // One binary, two stages: /init in the initramfs, /sbin/init here.
            copy_file(&out.join("init"), &dir.join("sbin/init"), Some(0o755))?;
            continue;
        }
        let mut found = false;
        for t in PKG_TREES {
            let src = out.join(t);
            if src.is_dir() {
                copy_tree(&src, &dir.join(t))?;
                found = true;
            }
        }
        if !found {
            bail!(
                "package {name} ({}) has none of {PKG_TREES:?} to install into the rootfs",
                out.display()
            );
        }
    }

    for f in &profile.files {
        let rel = f.dst.strip_prefix("/").unwrap_or(&f.dst);
        let dst = dir.join(rel);
        if let Some(parent) = dst.parent() {
            fs::create_dir_all(parent)?;
        }
        let mode = f
            .mode
            .as_deref()
            .map(|m| u32::from_str_radix(m, 8))
            .transpose()
            .with_context(|| format!("mode of {}", f.dst.display()))?;
        copy_file(&f.src, &dst, mode).with_context(|| {
            format!(
                "profile {}: rootfs.files entry {}",
                profile.path.display(),
                f.src.display()
            )
        })?;
    }

    // Directories get their modes here, not from the builder's umask.
    fix_dir_modes(dir)?;
    fs::set_permissions(dir.join("tmp"), fs::Permissions::from_mode(0o1777))?;
    refuse_login_surface(dir, dir)?;
    let mut binaries = Vec::new();
    find_elf(dir, dir, &mut binaries)?;
    binaries.sort();
    Ok(Staged {
        dir: dir.to_path_buf(),
        binaries,
    })
}

/// A file we generate: mode 0644 whatever the umask.
fn put(path: &Path, text: &str) -> Result<()> {
    fs::write(path, text).with_context(|| format!("writing {}", path.display()))?;
    fs::set_permissions(path, fs::Permissions::from_mode(0o644))?;
    Ok(())
}

fn fix_dir_modes(dir: &Path) -> Result<()> {
    fs::set_permissions(dir, fs::Permissions::from_mode(0o755))?;
    for e in fs::read_dir(dir)? {
        let e = e?;
        if e.file_type()?.is_dir() {
            fix_dir_modes(&e.path())?;
        }
    }
    Ok(())
}

fn copy_file(src: &Path, dst: &Path, mode: Option<u32>) -> Result<()> {
    fs::copy(src, dst)
        .with_context(|| format!("copying {} to {}", src.display(), dst.display()))?;
    if let Some(m) = mode {
        fs::set_permissions(dst, fs::Permissions::from_mode(m))?;
    }
    Ok(())
}

fn copy_tree(src: &Path, dst: &Path) -> Result<()> {
    fs::create_dir_all(dst)?;
    let mut names: Vec<_> = fs::read_dir(src)?.collect::<Result<Vec<_>, _>>()?;
    names.sort_by_key(|e| e.file_name());
    for e in names {
        let (s, d) = (e.path(), dst.join(e.file_name()));
        let ft = e.file_type()?;
        if ft.is_dir() {
            copy_tree(&s, &d)?;
        } else if ft.is_symlink() {
            symlink(fs::read_link(&s)?, &d)?;
        } else {
            copy_file(&s, &d, None)?;
        }
    }
    Ok(())
}

/// Names that would give someone a way to log in or a shell to type into.
/// A cairn node is managed only through its API, so a package or a
/// profile file that brings one of these fails the build instead of
/// quietly widening every node built from it.
const LOGIN_SURFACE: &[&str] = &[
    "sh", "ash", "bash", "dash", "ksh", "mksh", "zsh", "csh", "tcsh", "fish", "busybox", "toybox",
    "login", "getty", "agetty", "mingetty", "sulogin", "su", "sudo", "doas", "sshd", "ssh",
    "dropbear", "telnetd", "rshd", "rlogind",
];

fn refuse_login_surface(root: &Path, dir: &Path) -> Result<()> {
    let mut entries = fs::read_dir(dir)?.collect::<Result<Vec<_>, _>>()?;
    entries.sort_by_key(|e| e.file_name());
    for e in entries {
        let name = e.file_name();
        if LOGIN_SURFACE.iter().any(|l| name == *l) {
            bail!(
                "rootfs: /{} is a shell or login program; cairn images have none \
                 (nodes are managed through the API only): remove it from the package \
                 or the profile's rootfs.files",
                e.path().strip_prefix(root)?.display()
            );
        }
        if e.file_type()?.is_dir() {
            refuse_login_surface(root, &e.path())?;
        }
    }
    Ok(())
}

fn find_elf(root: &Path, dir: &Path, out: &mut Vec<PathBuf>) -> Result<()> {
    for e in fs::read_dir(dir)? {
        let e = e?;
        let ft = e.file_type()?;
        if ft.is_dir() {
            find_elf(root, &e.path(), out)?;
        } else if ft.is_file() {
            let mut magic = [0u8; 4];
            use std::io::Read;
            let n = fs::File::open(e.path())?.read(&mut magic)?;
            if n == 4 && magic == *b"\x7fELF" {
                out.push(Path::new("/").join(e.path().strip_prefix(root)?));
            }
        }
    }
    Ok(())
}
