//! The same install on a block device (a loop device) as on an image file.
//! Needs root and loop devices (`losetup`).

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;

use common::*;
use installer::install::install;
use installer::Error;

struct Loop(PathBuf);

impl Loop {
    fn attach(img: &Path) -> Loop {
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

#[test]
fn install_on_a_loop_device_equals_install_on_the_image() {
    let fx = Fixture::new();
    let b = bundle(&fx.path("b"), "1.0.0");
    let backing = fx.image("backing.img", DISK_SIZE);
    let plain = fx.image("plain.img", DISK_SIZE);
    {
        let dev = Loop::attach(&backing);
        // The loop device's own backing file is the media: refused.
        let mut o = install_opts(&dev.0, &b.dir);
        o.media = vec![backing.clone()];
        match install(&o) {
            Err(Error::IsInstallMedia { .. }) => {}
            other => panic!("unexpected {other:?}"),
        }
        {
            // While something holds the device exclusively (as a mount or a
            // dm/md holder does), install refuses it.
            use std::os::unix::fs::OpenOptionsExt;
            let _held = std::fs::OpenOptions::new()
                .read(true)
                .custom_flags(libc::O_EXCL)
                .open(&dev.0)
                .unwrap();
            match install(&install_opts(&dev.0, &b.dir)) {
                Err(e) => assert!(e.to_string().contains("in use"), "{e}"),
                Ok(_) => panic!("installed onto a held device"),
            }
        }
        install(&install_opts(&dev.0, &b.dir)).expect("install on the loop device");
        let s = installer::status::status(&dev.0).unwrap();
        assert_eq!(s.disk_size, DISK_SIZE);
        assert_eq!(s.next_boot.unwrap().file, "cairn-1.0.0+3.efi");
    }
    install(&install_opts(&plain, &b.dir)).unwrap();
    assert_eq!(sha256_file(&backing), sha256_file(&plain));
    assert_eq!(booted_version(&backing, &[&b]), Ok("1.0.0".into()));
}
