//! `cairn run`: boots an output in QEMU + OVMF with its serial console on
//! the terminal, the way `mkosi qemu` does: a user sees a node boot in one
//! command. The machine is the one the e2e suite boots (the `vm` crate).
//!
//! The image the build produced is never changed unless `--write` says so:
//! by default QEMU writes to a throwaway overlay, so `out/` can still be
//! published (and stays bit-for-bit what the build made).

use std::io::{BufRead, BufReader, IsTerminal, Read, Write};
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use builder::exit::Invalid;

#[derive(clap::Args)]
pub struct RunArgs {
    /// What to boot: a disk image (raw, qcow2, vhd, vmdk), an installer ISO
    /// (booted with a blank disk to install onto), or an output directory
    /// (its disk.raw).
    #[arg(value_name = "IMAGE", default_value = "out/disk.raw")]
    image: PathBuf,
    /// Boot the image file itself and keep what the node writes to it
    /// (default: writes go to a temporary overlay; the file is untouched).
    #[arg(long)]
    write: bool,
    /// With an ISO: the disk to install onto (created blank if missing and
    /// kept afterwards; default: a temporary blank disk).
    #[arg(long, value_name = "PATH")]
    disk: Option<PathBuf>,
    /// Size of a blank disk created for an ISO (e.g. 4GiB, 8G).
    #[arg(long, value_name = "SIZE", default_value = "4GiB", value_parser = parse_size)]
    disk_size: u64,
    /// Turn Secure Boot on with this key set's PK, KEK and db enrolled
    /// (`cairn secureboot-keygen`; needs virt-fw-vars).
    #[arg(long, value_name = "DIR")]
    secure_boot_keys: Option<PathBuf>,
    /// Guest memory in MiB.
    #[arg(long, value_name = "MIB", default_value_t = 1024)]
    memory: u32,
    /// The guest's network: `user` (QEMU user networking, NAT to the
    /// host's), `restricted` (user networking that reaches nothing but the
    /// forwards) or `none`.
    #[arg(long, value_name = "MODE", default_value = "user", value_parser = ["user", "restricted", "none"])]
    net: String,
    /// Forward 127.0.0.1:HOST on this machine to the guest's port GUEST,
    /// e.g. `--forward 50000:50000` for the node API; repeatable.
    #[arg(long, value_name = "HOST:GUEST", value_parser = parse_forward)]
    forward: Vec<(u16, u16)>,
    /// End QEMU when the guest reboots (one run is one boot attempt).
    #[arg(long)]
    no_reboot: bool,
    /// Stop as soon as a console line contains TEXT and exit 0 (for CI and
    /// scripts: `--until "boot ok"`); exit 1 if QEMU ends or --timeout
    /// passes first.
    #[arg(long, value_name = "TEXT")]
    until: Option<String>,
    /// Give up after SECONDS (default: none; 900 with --until).
    #[arg(long, value_name = "SECONDS")]
    timeout: Option<u64>,
}

fn parse_size(s: &str) -> Result<u64, String> {
    builder::profile::Size::parse(s).map(|z| z.0)
}

fn parse_forward(s: &str) -> Result<(u16, u16), String> {
    let (h, g) = s
        .split_once(':')
        .ok_or_else(|| format!("`{s}`: expected HOST:GUEST ports, e.g. 50000:50000"))?;
    let port = |p: &str| {
        p.parse::<u16>()
            .ok()
            .filter(|p| *p > 0)
            .ok_or_else(|| format!("`{p}` is not a port (1-65535)"))
    };
    Ok((port(h)?, port(g)?))
}

/// What an image file is, told by its content (names lie).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Iso,
    /// A disk image in this QEMU format.
    Disk(&'static str),
}

/// Reads the magic numbers of the formats cairn writes.
pub fn kind(path: &Path) -> Result<Kind> {
    let mut f = std::fs::File::open(path).with_context(|| format!("opening {}", path.display()))?;
    let len = f.metadata()?.len();
    let mut head = vec![0u8; 0x8006];
    let n = read_up_to(&mut f, &mut head)?;
    let head = &head[..n];
    if head.starts_with(b"QFI\xfb") {
        return Ok(Kind::Disk("qcow2"));
    }
    if head.starts_with(b"KDMV") {
        return Ok(Kind::Disk("vmdk"));
    }
    if head.get(0x8001..0x8006) == Some(b"CD001") {
        return Ok(Kind::Iso);
    }
    // A fixed VHD is the raw disk with a 512-byte footer.
    if len >= 512 {
        use std::io::Seek;
        f.seek(std::io::SeekFrom::Start(len - 512))?;
        let mut foot = [0u8; 8];
        if read_up_to(&mut f, &mut foot)? == 8 && &foot == b"conectix" {
            return Ok(Kind::Disk("vpc"));
        }
    }
    if head.get(512..520) == Some(b"EFI PART") {
        return Ok(Kind::Disk("raw"));
    }
    Err(Invalid(format!(
        "{}: not an image cairn can boot (no GPT, ISO 9660, qcow2, VHD or VMDK signature)",
        path.display()
    ))
    .into())
}

fn read_up_to(r: &mut impl Read, buf: &mut [u8]) -> std::io::Result<usize> {
    let mut n = 0;
    while n < buf.len() {
        match r.read(&mut buf[n..])? {
            0 => break,
            k => n += k,
        }
    }
    Ok(n)
}

pub fn run(args: RunArgs) -> Result<()> {
    let image = if args.image.is_dir() {
        args.image.join("disk.raw")
    } else {
        args.image.clone()
    };
    if !image.exists() {
        return Err(Invalid(format!(
            "{}: no such image (build one with `cairn build`, or name an output: disk.raw, disk.qcow2, installer.iso, ...)",
            image.display()
        ))
        .into());
    }
    let kind = kind(&image)?;
    if args.disk.is_some() && kind != Kind::Iso {
        return Err(Invalid(
            "--disk is the disk an installer ISO installs onto: give an ISO".into(),
        )
        .into());
    }
    let work = tempfile::Builder::new()
        .prefix("cairn-run-")
        .tempdir()
        .context("creating a work directory")?;
    let vars = work.path().join("OVMF_VARS.fd");
    match &args.secure_boot_keys {
        Some(keys) => vm::enrolled_vars(keys, &vars)?,
        None => vm::blank_vars(&vars)?,
    }
    let mut machine = vm::Vm::new(&vars);
    machine.secure_boot = args.secure_boot_keys.is_some();
    machine.memory_mb = args.memory;
    machine.no_reboot = args.no_reboot;
    match kind {
        Kind::Iso => {
            // The target first: the firmware boots the ISO only while the
            // disk is blank, then the installed system, like a real machine
            // with its USB stick left in.
            let target = match &args.disk {
                Some(d) => d.clone(),
                None => work.path().join("target.raw"),
            };
            if !target.exists() {
                let f = std::fs::File::create(&target)
                    .with_context(|| format!("creating {}", target.display()))?;
                f.set_len(args.disk_size)
                    .with_context(|| format!("sizing {}", target.display()))?;
                eprintln!(
                    "cairn run: installing onto {} ({}, blank)",
                    target.display(),
                    human(args.disk_size)
                );
            }
            machine.disks.push(vm::Disk::virtio(&target));
            let mut iso = vm::Disk::cdrom(&image);
            iso.read_only = true;
            machine.disks.push(iso);
        }
        Kind::Disk(format) => {
            let mut d = vm::Disk::virtio(&image).format(format);
            d.snapshot = !args.write;
            machine.disks.push(d);
        }
    }
    machine.extra_args = net_args(&args.net, &args.forward);
    let tool_missing = |e: std::io::Error| {
        anyhow::Error::new(e).context(
            "starting qemu-system-x86_64: install QEMU and OVMF (Debian: apt install qemu-system-x86 ovmf)",
        )
    };
    eprintln!(
        "cairn run: {} ({}){}",
        image.display(),
        match kind {
            Kind::Iso => "installer ISO".to_string(),
            Kind::Disk(f) => format!("{f} disk"),
        },
        if args.write || kind == Kind::Iso {
            ""
        } else {
            ", writes discarded at exit (--write keeps them)"
        }
    );
    let interactive =
        args.until.is_none() && args.timeout.is_none() && std::io::stdin().is_terminal();
    let timeout = Duration::from_secs(args.timeout.unwrap_or(if args.until.is_some() {
        900
    } else {
        u64::MAX / 4
    }));
    let deadline = Instant::now() + timeout;
    if interactive {
        eprintln!("cairn run: serial console follows; Ctrl-A X quits QEMU");
    }
    let until = args.until.as_deref();
    if boot(&mut machine, interactive, until, deadline, &tool_missing)? == Ended::Met {
        return Ok(());
    }
    if kind == Kind::Iso {
        // Install mode powers off when it is done, as a real machine would
        // for its USB stick to be pulled: boot again from the disk alone
        // (same NVRAM), which is what the user wants to see next.
        machine.disks.retain(|d| d.attach != vm::Attach::Cdrom);
        eprintln!(
            "cairn run: the installer powered off; booting the installed disk (media removed)"
        );
        if boot(&mut machine, interactive, until, deadline, &tool_missing)? == Ended::Met {
            return Ok(());
        }
    }
    match until {
        Some(u) => Err(anyhow::anyhow!(
            "QEMU ended without a console line containing {u:?}"
        )),
        None => Ok(()),
    }
}

#[derive(Debug, PartialEq, Eq)]
enum Ended {
    /// The `--until` text showed up (QEMU was stopped).
    Met,
    /// The guest powered off (or rebooted with --no-reboot).
    Exited,
}

/// One QEMU run: on the terminal for a person, else watched line by line.
fn boot(
    machine: &mut vm::Vm,
    interactive: bool,
    until: Option<&str>,
    deadline: Instant,
    tool_missing: &dyn Fn(std::io::Error) -> anyhow::Error,
) -> Result<Ended> {
    machine.interactive = interactive;
    let mut cmd = machine.command();
    if interactive {
        let status = cmd.status().map_err(tool_missing)?;
        if !status.success() {
            bail!("QEMU failed ({status})");
        }
        return Ok(Ended::Exited);
    }
    watch(&mut cmd, until, deadline, tool_missing)
}

/// The NIC: virtio on QEMU user networking; host forwards bind 127.0.0.1
/// only, so nothing beyond this machine reaches the guest.
fn net_args(mode: &str, forwards: &[(u16, u16)]) -> Vec<String> {
    if mode == "none" {
        return Vec::new();
    }
    let mut netdev = "user,id=n0".to_string();
    if mode == "restricted" {
        netdev.push_str(",restrict=on");
    }
    for (h, g) in forwards {
        netdev.push_str(&format!(",hostfwd=tcp:127.0.0.1:{h}-:{g}"));
    }
    vec![
        "-netdev".into(),
        netdev,
        "-device".into(),
        "virtio-net-pci,netdev=n0".into(),
    ]
}

/// Runs QEMU with the console passed through line by line (escape
/// sequences dropped when stdout is not a terminal, so CI logs read
/// cleanly) until `until` shows up, QEMU ends, or `timeout` passes.
fn watch(
    cmd: &mut std::process::Command,
    until: Option<&str>,
    deadline: Instant,
    tool_missing: &dyn Fn(std::io::Error) -> anyhow::Error,
) -> Result<Ended> {
    cmd.stdin(Stdio::null()).stdout(Stdio::piped());
    let mut child = cmd.spawn().map_err(tool_missing)?;
    let out = child.stdout.take().expect("piped");
    let (tx, rx) = std::sync::mpsc::channel::<Vec<u8>>();
    std::thread::spawn(move || {
        let mut r = BufReader::new(out);
        loop {
            let mut line = Vec::new();
            match r.read_until(b'\n', &mut line) {
                Ok(0) | Err(_) => break,
                Ok(_) => {
                    if tx.send(line).is_err() {
                        break;
                    }
                }
            }
        }
    });
    let plain = !std::io::stdout().is_terminal();
    let started = Instant::now();
    let mut stdout = std::io::stdout().lock();
    let outcome = loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match rx.recv_timeout(left) {
            Ok(line) => {
                let text = String::from_utf8_lossy(&line);
                let shown: String = if plain {
                    strip_control(&text)
                } else {
                    text.clone().into_owned()
                };
                let _ = stdout.write_all(shown.as_bytes());
                if !shown.ends_with('\n') {
                    let _ = stdout.write_all(b"\n");
                }
                let _ = stdout.flush();
                if let Some(u) = until {
                    if text.contains(u) {
                        break Ok(Ended::Met);
                    }
                }
            }
            Err(std::sync::mpsc::RecvTimeoutError::Timeout) => {
                break Err(anyhow::anyhow!(
                    "timed out: no console line containing {:?} (--timeout)",
                    until.unwrap_or("")
                ));
            }
            Err(std::sync::mpsc::RecvTimeoutError::Disconnected) => {
                let status = child.wait()?;
                break if status.success() {
                    Ok(Ended::Exited)
                } else {
                    Err(anyhow::anyhow!("QEMU failed ({status})"))
                };
            }
        }
    };
    let _ = child.kill();
    let _ = child.wait();
    if matches!(outcome, Ok(Ended::Met)) {
        eprintln!(
            "cairn run: saw {:?} after {:.1} s; QEMU stopped",
            until.unwrap_or(""),
            started.elapsed().as_secs_f64()
        );
    }
    outcome
}

/// Firmware and kernels paint the console with escape sequences; a log
/// file wants the text.
fn strip_control(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut chars = s.chars().peekable();
    while let Some(c) = chars.next() {
        if c == '\x1b' {
            // CSI: ESC [ params final-byte
            if chars.peek() == Some(&'[') {
                chars.next();
                for d in chars.by_ref() {
                    if ('@'..='~').contains(&d) {
                        break;
                    }
                }
            } else {
                chars.next();
            }
            continue;
        }
        if !c.is_control() || c == '\n' || c == '\t' {
            out.push(c);
        }
    }
    out
}

fn human(bytes: u64) -> String {
    format!("{:.1} GiB", bytes as f64 / (1u64 << 30) as f64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn forwards_bind_loopback_only() {
        let a = net_args("restricted", &[(50000, 50000)]).join(" ");
        assert_eq!(
            a,
            "-netdev user,id=n0,restrict=on,hostfwd=tcp:127.0.0.1:50000-:50000 -device virtio-net-pci,netdev=n0"
        );
        assert!(net_args("none", &[]).is_empty());
        assert_eq!(parse_forward("1:2"), Ok((1, 2)));
        assert!(parse_forward("0:2").is_err());
        assert!(parse_forward("80").unwrap_err().contains("HOST:GUEST"));
    }

    #[test]
    fn escapes_are_dropped_for_logs() {
        assert_eq!(
            strip_control("\x1b[2J\x1b[01;01H\x1b[=3hBdsDxe: loading\r\n"),
            "BdsDxe: loading\n"
        );
    }

    #[test]
    fn image_kinds_come_from_content_not_names() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("disk.iso");
        let mut b = vec![0u8; 1 << 20];
        b[512..520].copy_from_slice(b"EFI PART");
        std::fs::write(&p, &b).unwrap();
        assert_eq!(kind(&p).unwrap(), Kind::Disk("raw"));
        b[0x8001..0x8006].copy_from_slice(b"CD001");
        std::fs::write(&p, &b).unwrap();
        assert_eq!(kind(&p).unwrap(), Kind::Iso);
        let n = b.len();
        b[n - 512..n - 504].copy_from_slice(b"conectix");
        b[0x8001..0x8006].copy_from_slice(b"\0\0\0\0\0");
        std::fs::write(&p, &b).unwrap();
        assert_eq!(kind(&p).unwrap(), Kind::Disk("vpc"));
        std::fs::write(&p, b"QFI\xfb\0\0\0\x03").unwrap();
        assert_eq!(kind(&p).unwrap(), Kind::Disk("qcow2"));
        std::fs::write(&p, b"hello").unwrap();
        let e = kind(&p).unwrap_err().to_string();
        assert!(e.contains("disk.iso") && e.contains("not an image"), "{e}");
    }
}
