//! Loop devices for tests that need a real block device (root and
//! `losetup`): a whole disk, or one with its partitions as devices, and
//! `O_EXCL` holds standing in for mounts and dm-verity.

use std::path::{Path, PathBuf};
use std::process::Command;

use super::tool;

pub struct Loop(pub PathBuf);

impl Loop {
    pub fn attach(img: &Path) -> Loop {
        let out = tool("losetup", &["-f", "--show", img.to_str().unwrap()]);
        assert!(
            out.status.success(),
            "losetup (root and loop devices are required): {}",
            String::from_utf8_lossy(&out.stderr)
        );
        Loop(PathBuf::from(String::from_utf8_lossy(&out.stdout).trim()))
    }
}

impl Drop for Loop {
    fn drop(&mut self) {
        let _ = Command::new("losetup").arg("-d").arg(&self.0).status();
    }
}

/// The loop device with its partitions as block devices (`losetup -P`,
/// then `partx -a` where the scan did not run: some containers skip it).
pub fn attach_partitioned(img: &Path) -> Loop {
    let out = tool("losetup", &["-f", "--show", "-P", img.to_str().unwrap()]);
    assert!(
        out.status.success(),
        "losetup -P: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let dev = Loop(PathBuf::from(String::from_utf8_lossy(&out.stdout).trim()));
    let first = PathBuf::from(format!("{}p1", dev.0.display()));
    if !first.exists() {
        let out = tool("partx", &["-a", dev.0.to_str().unwrap()]);
        assert!(
            first.exists(),
            "{} has no partition devices after partx -a: {}",
            dev.0.display(),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    dev
}

/// Held `O_EXCL`, as dm-verity holds the running slot and a mount holds
/// STATE and EPHEMERAL on a running node.
pub fn hold(dev: &Loop, number: u32) -> std::fs::File {
    use std::os::unix::fs::OpenOptionsExt;
    let p = format!("{}p{number}", dev.0.display());
    std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_EXCL)
        .open(&p)
        .unwrap_or_else(|e| panic!("holding {p}: {e}"))
}

pub fn partition(img: &Path, name: &str) -> artifacts::gpt::Partition {
    let mut f = std::fs::File::open(img).unwrap();
    artifacts::gpt::read_disk(&mut f)
        .unwrap()
        .layout
        .partition(name)
        .unwrap_or_else(|| panic!("no {name} on {}", img.display()))
        .clone()
}
