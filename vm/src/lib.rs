//! The QEMU + OVMF machine cairn boots its outputs on.
//!
//! One command line for `cairn run` (a user watching a node boot) and for
//! the test harness (testkit, the e2e suite): the firmware, the disks and
//! how each is attached live here once, so what a user runs is what CI
//! proves.

use std::path::{Path, PathBuf};
use std::process::Command;

/// OVMF as Debian's `ovmf` package installs it (4 MiB flash layout).
pub const OVMF_CODE: &str = "/usr/share/OVMF/OVMF_CODE_4M.fd";
pub const OVMF_VARS: &str = "/usr/share/OVMF/OVMF_VARS_4M.fd";
/// The Secure Boot build (needs SMM, hence q35 with `smm=on`).
pub const OVMF_CODE_SECBOOT: &str = "/usr/share/OVMF/OVMF_CODE_4M.secboot.fd";

/// Owner GUID recorded with enrolled certificates (any fixed value).
const SB_OWNER: &str = "6b7f4e1a-3c2d-4f5e-9a8b-0c1d2e3f4a5b";

#[derive(Debug, thiserror::Error)]
pub enum VmError {
    #[error("{tool} is not installed ({package}): {source}")]
    Missing {
        tool: &'static str,
        package: &'static str,
        #[source]
        source: std::io::Error,
    },
    #[error("{tool} failed ({status}): {stderr}")]
    Failed {
        tool: &'static str,
        status: std::process::ExitStatus,
        stderr: String,
    },
    #[error("{path}: {what}")]
    Input { path: PathBuf, what: String },
}

/// How a disk image is attached.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Attach {
    /// virtio-blk, the usual VM disk.
    Virtio,
    /// IDE CD-ROM (El Torito boot).
    Cdrom,
    /// USB mass storage on an xHCI controller (a `dd`-written stick).
    Usb,
}

#[derive(Debug, Clone)]
pub struct Disk {
    pub path: PathBuf,
    /// QEMU's format name: raw, qcow2, vpc (VHD), vmdk.
    pub format: &'static str,
    pub attach: Attach,
    pub read_only: bool,
    /// Writes go to a temporary overlay QEMU throws away (`snapshot=on`):
    /// the image file is never changed.
    pub snapshot: bool,
}

impl Disk {
    pub fn virtio(path: impl Into<PathBuf>) -> Disk {
        Disk {
            path: path.into(),
            format: "raw",
            attach: Attach::Virtio,
            read_only: false,
            snapshot: false,
        }
    }
    pub fn format(mut self, f: &'static str) -> Disk {
        self.format = f;
        self
    }
    pub fn cdrom(path: impl Into<PathBuf>) -> Disk {
        Disk {
            path: path.into(),
            format: "raw",
            attach: Attach::Cdrom,
            read_only: true,
            snapshot: false,
        }
    }
    pub fn usb(path: impl Into<PathBuf>) -> Disk {
        Disk {
            path: path.into(),
            format: "raw",
            attach: Attach::Usb,
            read_only: false,
            snapshot: false,
        }
    }
}

/// QEMU's own kernel loader instead of firmware (`-kernel`, SeaBIOS): for
/// a boot no UEFI code may touch (OVMF repairs a torn GPT, for one).
#[derive(Debug, Clone)]
pub struct DirectKernel {
    pub kernel: PathBuf,
    pub initrd: PathBuf,
    pub append: String,
}

/// One machine's hardware. TCG only: KVM is not assumed (CI runners and
/// nested VMs rarely have it, and TCG boots the same everywhere).
#[derive(Debug, Clone)]
pub struct Vm {
    /// This machine's OVMF variable store (its NVRAM), written by QEMU.
    pub vars: PathBuf,
    pub secure_boot: bool,
    pub disks: Vec<Disk>,
    pub memory_mb: u32,
    pub direct_kernel: Option<DirectKernel>,
    /// A guest reboot ends QEMU (one process is one boot attempt).
    pub no_reboot: bool,
    /// The serial console on stdio with QEMU's monitor multiplexed in
    /// (Ctrl-A X quits, Ctrl-A C the monitor): for a person. Without it the
    /// serial console alone is on stdout, for a program reading it.
    pub interactive: bool,
    /// More QEMU arguments, e.g. a NIC.
    pub extra_args: Vec<String>,
}

impl Vm {
    pub fn new(vars: impl Into<PathBuf>) -> Vm {
        Vm {
            vars: vars.into(),
            secure_boot: false,
            disks: Vec::new(),
            memory_mb: 1024,
            direct_kernel: None,
            no_reboot: true,
            interactive: false,
            extra_args: Vec::new(),
        }
    }

    /// The QEMU command line of one run.
    pub fn command(&self) -> Command {
        let mut c = Command::new("qemu-system-x86_64");
        let machine = if self.secure_boot {
            "q35,smm=on,accel=tcg"
        } else {
            "q35,accel=tcg"
        };
        c.args(["-machine", machine, "-cpu", "max", "-m"])
            .arg(self.memory_mb.to_string())
            .args(["-smp", "1", "-nographic", "-nodefaults"]);
        if self.no_reboot {
            c.arg("-no-reboot");
        }
        if self.interactive {
            c.args(["-serial", "mon:stdio"]);
        } else {
            c.args(["-serial", "stdio", "-monitor", "none"]);
        }
        match &self.direct_kernel {
            Some(k) => {
                c.arg("-kernel").arg(&k.kernel);
                c.arg("-initrd").arg(&k.initrd);
                c.arg("-append").arg(&k.append);
            }
            None => self.firmware_args(&mut c),
        }
        self.disk_args(&mut c);
        c.args(&self.extra_args);
        c
    }

    fn firmware_args(&self, c: &mut Command) {
        let code = if self.secure_boot {
            OVMF_CODE_SECBOOT
        } else {
            OVMF_CODE
        };
        if self.secure_boot {
            c.args(["-global", "driver=cfi.pflash01,property=secure,value=on"]);
        }
        c.arg("-drive").arg(format!(
            "if=pflash,format=raw,unit=0,readonly=on,file={code}"
        ));
        c.arg("-drive").arg(format!(
            "if=pflash,format=raw,unit=1,file={}",
            self.vars.display()
        ));
    }

    fn disk_args(&self, c: &mut Command) {
        let mut usb = false;
        for (i, d) in self.disks.iter().enumerate() {
            // The firmware boots the disks in order; a direct kernel boot
            // takes boot index 0 for its own loader, so none is given.
            let boot = match self.direct_kernel {
                None => format!(",bootindex={i}"),
                Some(_) => String::new(),
            };
            let ro = if d.read_only { ",readonly=on" } else { "" };
            let snap = if d.snapshot { ",snapshot=on" } else { "" };
            let file = format!("file={},format={}{ro}{snap}", d.path.display(), d.format);
            match d.attach {
                Attach::Virtio => {
                    c.arg("-drive").arg(format!("if=none,id=d{i},{file}"));
                    c.arg("-device")
                        .arg(format!("virtio-blk-pci,drive=d{i}{boot}"));
                }
                Attach::Cdrom => {
                    c.arg("-drive")
                        .arg(format!("if=none,id=d{i},media=cdrom,{file}"));
                    c.arg("-device")
                        .arg(format!("ide-cd,drive=d{i},bus=ide.{i}{boot}"));
                }
                Attach::Usb => {
                    if !usb {
                        c.args(["-device", "qemu-xhci,id=xhci"]);
                        usb = true;
                    }
                    c.arg("-drive").arg(format!("if=none,id=d{i},{file}"));
                    c.arg("-device").arg(format!(
                        "usb-storage,bus=xhci.0,drive=d{i}{boot},removable=on"
                    ));
                }
            }
        }
    }
}

/// Copies OVMF's blank variable store to `out` (a machine's own NVRAM).
pub fn blank_vars(out: &Path) -> Result<(), VmError> {
    std::fs::copy(OVMF_VARS, out).map_err(|e| VmError::Missing {
        tool: "OVMF",
        package: "Debian package ovmf",
        source: e,
    })?;
    Ok(())
}

/// OVMF variables at `out` with `keys`' `PK.crt`, `KEK.crt` and `db.crt`
/// (`cairn secureboot-keygen`) enrolled and Secure Boot on, written by
/// virt-firmware's `virt-fw-vars` (an independent tool, not ours).
pub fn enrolled_vars(keys: &Path, out: &Path) -> Result<(), VmError> {
    for f in ["PK.crt", "KEK.crt", "db.crt"] {
        if !keys.join(f).is_file() {
            return Err(VmError::Input {
                path: keys.join(f),
                what: "missing: a Secure Boot key set has PK.crt, KEK.crt and db.crt (`cairn secureboot-keygen`)".into(),
            });
        }
    }
    let o = Command::new("virt-fw-vars")
        .args(["-i", OVMF_VARS, "-o"])
        .arg(out)
        .arg("--set-pk")
        .arg(SB_OWNER)
        .arg(keys.join("PK.crt"))
        .arg("--add-kek")
        .arg(SB_OWNER)
        .arg(keys.join("KEK.crt"))
        .arg("--add-db")
        .arg(SB_OWNER)
        .arg(keys.join("db.crt"))
        .arg("--sb")
        .output()
        .map_err(|e| VmError::Missing {
            tool: "virt-fw-vars",
            package: "Debian package python3-virt-firmware",
            source: e,
        })?;
    if !o.status.success() {
        return Err(VmError::Failed {
            tool: "virt-fw-vars",
            status: o.status,
            stderr: String::from_utf8_lossy(&o.stderr).trim().to_string(),
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(c: &Command) -> Vec<String> {
        c.get_args()
            .map(|a| a.to_string_lossy().into_owned())
            .collect()
    }

    #[test]
    fn a_snapshot_disk_is_never_written_and_boots_first() {
        let mut vm = Vm::new("/tmp/v.fd");
        let mut d = Disk::virtio("/x/disk.qcow2").format("qcow2");
        d.snapshot = true;
        vm.disks.push(d);
        vm.disks.push(Disk::cdrom("/x/i.iso"));
        let a = args(&vm.command()).join(" ");
        assert!(
            a.contains("-drive if=none,id=d0,file=/x/disk.qcow2,format=qcow2,snapshot=on"),
            "{a}"
        );
        assert!(a.contains("virtio-blk-pci,drive=d0,bootindex=0"), "{a}");
        assert!(
            a.contains("media=cdrom,file=/x/i.iso,format=raw,readonly=on"),
            "{a}"
        );
        assert!(a.contains("ide-cd,drive=d1,bus=ide.1,bootindex=1"), "{a}");
        assert!(a.contains("-no-reboot"), "{a}");
        assert!(a.contains("-serial stdio -monitor none"), "{a}");
    }

    #[test]
    fn secure_boot_takes_the_smm_firmware_and_a_person_gets_the_monitor() {
        let mut vm = Vm::new("/tmp/v.fd");
        vm.secure_boot = true;
        vm.interactive = true;
        vm.no_reboot = false;
        let a = args(&vm.command()).join(" ");
        assert!(a.contains("q35,smm=on,accel=tcg"), "{a}");
        assert!(a.contains(OVMF_CODE_SECBOOT), "{a}");
        assert!(a.contains("-serial mon:stdio"), "{a}");
        assert!(!a.contains("-no-reboot"), "{a}");
    }

    #[test]
    fn a_key_set_without_its_certificates_is_named() {
        let d = std::env::temp_dir().join("cairn-vm-no-keys");
        let e = enrolled_vars(&d, &d.join("v.fd")).unwrap_err().to_string();
        assert!(
            e.contains("PK.crt") && e.contains("secureboot-keygen"),
            "{e}"
        );
    }
}
