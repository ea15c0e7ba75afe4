//! Boot-test kit shared by the UKI and Secure Boot tests: a pinned Debian
//! kernel, a marker initramfs, an ESP disk made with the standard tools
//! (mkfs.fat, mtools, sgdisk) and a QEMU/OVMF runner.
#![allow(dead_code)] // each test binary uses a different subset

use std::fs;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use sha2::{Digest, Sha256};

pub const STUB: &str = "/usr/lib/systemd/boot/efi/linuxx64.efi.stub";
pub const SYSTEMD_BOOT: &str = "/usr/lib/systemd/boot/efi/systemd-bootx64.efi";
pub const OVMF_CODE: &str = "/usr/share/OVMF/OVMF_CODE_4M.fd";
pub const OVMF_CODE_SECBOOT: &str = "/usr/share/OVMF/OVMF_CODE_4M.secboot.fd";
pub const OVMF_VARS: &str = "/usr/share/OVMF/OVMF_VARS_4M.fd";

const KERNEL_DEB: &str = "linux-image-6.1.0-56-amd64_6.1.192-2_amd64.deb";
const KERNEL_PKG: &str = "linux-image-6.1.0-56-amd64=6.1.192-2";
const KERNEL_DEB_SHA256: &str = "a86e2049672f52354c4536a089203b6c82639420424d31c91cf31a181fd4d8f1";

pub const MARKER: &str = "CAIRN-UKI-BOOT-OK";

pub fn run(cmd: &mut Command) -> Vec<u8> {
    let out = cmd
        .output()
        .unwrap_or_else(|e| panic!("cannot run {cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?} failed: {}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    out.stdout
}

fn run_with_stdin(cmd: &mut Command, input: &[u8]) {
    let mut child = cmd
        .stdin(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("cannot run {cmd:?}: {e}"));
    child.stdin.take().unwrap().write_all(input).unwrap();
    let st = child.wait().unwrap();
    assert!(st.success(), "{cmd:?} failed: {st}");
}

fn cache_dir() -> PathBuf {
    let home = std::env::var_os("HOME").expect("HOME");
    let d = PathBuf::from(home).join(".cache/cairn-test");
    fs::create_dir_all(&d).unwrap();
    d
}

fn sha256_hex(p: &Path) -> String {
    Sha256::digest(fs::read(p).unwrap())
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// The pinned Debian kernel's vmlinuz, its .deb downloaded once into the cache.
pub fn debian_kernel(work: &Path) -> PathBuf {
    let cache = cache_dir();
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
            .current_dir(&cache));
    }
    assert_eq!(sha256_hex(&deb), KERNEL_DEB_SHA256, "{}", deb.display());
    let x = work.join("kdeb");
    fs::create_dir_all(&x).unwrap();
    let tar = run(Command::new("dpkg-deb").arg("--fsys-tarfile").arg(&deb));
    run_with_stdin(
        Command::new("tar")
            .arg("-C")
            .arg(&x)
            .args(["-x", "--wildcards", "./boot/vmlinuz-*"]),
        &tar,
    );
    fs::read_dir(x.join("boot"))
        .unwrap()
        .next()
        .unwrap()
        .unwrap()
        .path()
}

/// A newc initramfs whose /init (static musl C) prints MARKER and powers off.
pub fn marker_initramfs(work: &Path) -> PathBuf {
    let root = work.join("initramfs");
    fs::create_dir_all(root.join("dev")).unwrap();
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
    )
    .unwrap();
    run(Command::new("musl-gcc")
        .args(["-static", "-Os", "-o"])
        .arg(root.join("init"))
        .arg(&src));
    let cpio = work.join("initrd.cpio");
    let out = fs::File::create(&cpio).unwrap();
    run_with_stdin(
        Command::new("cpio")
            .args(["-o", "-H", "newc", "-R", "0:0", "--quiet"])
            .current_dir(&root)
            .stdout(out),
        b"dev\ninit\n",
    );
    cpio
}

/// A GPT disk with one 64 MiB ESP holding `files` as (source, ESP path).
/// `loader/loader.conf` ("timeout 0") is always added.
pub fn esp_disk(work: &Path, files: &[(&Path, &str)]) -> PathBuf {
    let esp = work.join("esp.img");
    let _ = fs::remove_file(&esp);
    run(Command::new("mkfs.fat")
        .args(["-F", "32", "-n", "EFI", "-C"])
        .arg(&esp)
        .arg("65536"));
    run(Command::new("mmd").arg("-i").arg(&esp).args([
        "::/EFI",
        "::/EFI/BOOT",
        "::/EFI/Linux",
        "::/loader",
    ]));
    let loader = work.join("loader.conf");
    fs::write(&loader, "timeout 0\n").unwrap();
    let mut all: Vec<(&Path, String)> = vec![(&loader, "::/loader/loader.conf".into())];
    all.extend(files.iter().map(|(p, d)| (*p, format!("::/{d}"))));
    for (src, dest) in all {
        run(Command::new("mcopy").arg("-i").arg(&esp).arg(src).arg(dest));
    }
    let disk = work.join("disk.img");
    let _ = fs::remove_file(&disk);
    let f = fs::File::create(&disk).unwrap();
    f.set_len((1 + 64 + 1) << 20).unwrap();
    drop(f);
    run(Command::new("sgdisk")
        .args(["-n", "1:2048:+64M", "-t", "1:ef00"])
        .arg(&disk));
    run(Command::new("dd")
        .arg(format!("if={}", esp.display()))
        .arg(format!("of={}", disk.display()))
        .args(["bs=1M", "seek=1", "conv=notrunc", "status=none"]));
    disk
}

pub fn tail(text: &str, n: usize) -> String {
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

pub struct BootRun {
    pub console: String,
    pub seconds: f64,
    pub exited: bool,
}

/// Boots `disk` under OVMF (TCG) until QEMU exits, `stop` returns true for
/// the console text so far, or `timeout` passes.
pub fn boot(
    work: &Path,
    disk: &Path,
    code: &str,
    vars: &Path,
    secure: bool,
    timeout: Duration,
    stop: impl Fn(&str) -> bool,
) -> BootRun {
    let log = work.join("console.log");
    let _ = fs::remove_file(&log);
    let started = Instant::now();
    let mut cmd = Command::new("qemu-system-x86_64");
    if secure {
        cmd.args(["-machine", "q35,smm=on"])
            .args(["-global", "driver=cfi.pflash01,property=secure,value=on"]);
    } else {
        cmd.args(["-machine", "q35"]);
    }
    let mut qemu = cmd
        .args(["-m", "512", "-nographic", "-no-reboot", "-monitor", "none"])
        .arg("-nodefaults")
        .arg("-drive")
        .arg(format!(
            "if=pflash,format=raw,unit=0,readonly=on,file={code}"
        ))
        .arg("-drive")
        .arg(format!(
            "if=pflash,format=raw,unit=1,file={}",
            vars.display()
        ))
        .arg("-drive")
        .arg(format!("if=virtio,format=raw,file={}", disk.display()))
        .arg("-serial")
        .arg(format!("file:{}", log.display()))
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("qemu-system-x86_64");
    let mut exited = false;
    while started.elapsed() < timeout {
        if qemu.try_wait().unwrap().is_some() {
            exited = true;
            break;
        }
        let text = String::from_utf8_lossy(&fs::read(&log).unwrap_or_default()).into_owned();
        if stop(&text) {
            break;
        }
        std::thread::sleep(Duration::from_millis(500));
    }
    // Reap in every path; kill is a harmless error if it already powered off.
    let _ = qemu.kill();
    let _ = qemu.wait();
    let mut err = String::new();
    if let Some(mut e) = qemu.stderr.take() {
        let _ = e.read_to_string(&mut err);
    }
    let mut console = String::from_utf8_lossy(&fs::read(&log).unwrap_or_default()).into_owned();
    if !err.is_empty() {
        console.push_str("\n[qemu stderr] ");
        console.push_str(&err);
    }
    BootRun {
        console,
        seconds: started.elapsed().as_secs_f64(),
        exited,
    }
}
