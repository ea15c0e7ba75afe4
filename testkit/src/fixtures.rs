//! What the loader boot tests boot: a pinned Debian kernel, a marker
//! initramfs whose /init prints [`MARKER`] and powers off, and an ESP disk
//! made with the standard tools (mkfs.fat, mtools, sgdisk).

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{ensure, Context, Result};

use crate::{run, run_bytes, run_with_stdin, sha256_file};

pub const STUB: &str = "/usr/lib/systemd/boot/efi/linuxx64.efi.stub";
pub const SYSTEMD_BOOT: &str = "/usr/lib/systemd/boot/efi/systemd-bootx64.efi";

const KERNEL_DEB: &str = "linux-image-6.1.0-56-amd64_6.1.192-2_amd64.deb";
const KERNEL_PKG: &str = "linux-image-6.1.0-56-amd64=6.1.192-2";
const KERNEL_DEB_SHA256: &str = "a86e2049672f52354c4536a089203b6c82639420424d31c91cf31a181fd4d8f1";

/// What the marker initramfs prints before it powers off.
pub const MARKER: &str = "CAIRN-UKI-BOOT-OK";

fn cache_dir() -> Result<PathBuf> {
    let home = std::env::var_os("HOME").context("HOME is not set")?;
    let d = PathBuf::from(home).join(".cache/cairn-test");
    fs::create_dir_all(&d).with_context(|| format!("creating {}", d.display()))?;
    Ok(d)
}

/// The pinned Debian kernel's vmlinuz, its .deb downloaded once into the
/// cache and checked against its pinned sha256.
pub fn debian_kernel(work: &Path) -> Result<PathBuf> {
    let cache = cache_dir()?;
    let deb = cache.join(KERNEL_DEB);
    if !deb.exists() {
        run(Command::new("apt-get")
            .args([
                "download",
                "-q=2",
                "-o",
                "APT::Sandbox::User=root",
                KERNEL_PKG,
            ])
            .current_dir(&cache))?;
    }
    let got = sha256_file(&deb)?;
    ensure!(
        got == KERNEL_DEB_SHA256,
        "{} has sha256 {got}, pinned {KERNEL_DEB_SHA256}",
        deb.display()
    );
    let x = work.join("kdeb");
    fs::create_dir_all(&x)?;
    let tar = run_bytes(Command::new("dpkg-deb").arg("--fsys-tarfile").arg(&deb))?;
    run_with_stdin(
        Command::new("tar")
            .arg("-C")
            .arg(&x)
            .args(["-x", "--wildcards", "./boot/vmlinuz-*"]),
        &tar,
    )?;
    let first = fs::read_dir(x.join("boot"))?
        .next()
        .with_context(|| format!("{} holds no boot/vmlinuz-*", deb.display()))??;
    Ok(first.path())
}

/// A newc initramfs whose /init (static musl C) prints [`MARKER`] and
/// powers off.
pub fn marker_initramfs(work: &Path) -> Result<PathBuf> {
    let root = work.join("initramfs");
    fs::create_dir_all(root.join("dev"))?;
    let src = work.join("init.c");
    fs::write(
        &src,
        format!(
            r#"#include <fcntl.h>
#include <string.h>
#include <unistd.h>
#include <sys/reboot.h>
int main(void) {{
    const char *m = "\n{MARKER}\n";
    int fd = open("/dev/console", O_WRONLY);
    if (fd < 0) fd = 1;
    write(fd, m, strlen(m));
    fsync(fd);
    sync();
    reboot(RB_POWER_OFF);
    for (;;) pause();
}}
"#
        ),
    )?;
    run(Command::new("musl-gcc")
        .args(["-static", "-Os", "-o"])
        .arg(root.join("init"))
        .arg(&src))?;
    let cpio = work.join("initrd.cpio");
    let out = fs::File::create(&cpio)?;
    run_with_stdin(
        Command::new("cpio")
            .args(["-o", "-H", "newc", "-R", "0:0", "--quiet"])
            .current_dir(&root)
            .stdout(out),
        b"dev\ninit\n",
    )?;
    Ok(cpio)
}

/// A GPT disk with one 64 MiB ESP holding `files` as (source, ESP path).
/// `loader/loader.conf` ("timeout 0") is always added.
pub fn esp_disk(work: &Path, files: &[(&Path, &str)]) -> Result<PathBuf> {
    let esp = work.join("esp.img");
    let _ = fs::remove_file(&esp);
    run(Command::new("mkfs.fat")
        .args(["-F", "32", "-n", "EFI", "-C"])
        .arg(&esp)
        .arg("65536"))?;
    run(Command::new("mmd").arg("-i").arg(&esp).args([
        "::/EFI",
        "::/EFI/BOOT",
        "::/EFI/Linux",
        "::/loader",
    ]))?;
    let loader = work.join("loader.conf");
    fs::write(&loader, "timeout 0\n")?;
    let mut all: Vec<(&Path, String)> = vec![(&loader, "::/loader/loader.conf".into())];
    all.extend(files.iter().map(|(p, d)| (*p, format!("::/{d}"))));
    for (src, dest) in all {
        run(Command::new("mcopy").arg("-i").arg(&esp).arg(src).arg(dest))?;
    }
    let disk = work.join("disk.img");
    let _ = fs::remove_file(&disk);
    let f = fs::File::create(&disk)?;
    f.set_len((1 + 64 + 1) << 20)?;
    drop(f);
    run(Command::new("sgdisk")
        .args(["-n", "1:2048:+64M", "-t", "1:ef00"])
        .arg(&disk))?;
    run(Command::new("dd")
        .arg(format!("if={}", esp.display()))
        .arg(format!("of={}", disk.display()))
        .args(["bs=1M", "seek=1", "conv=notrunc", "status=none"]))?;
    Ok(disk)
}
