//! The initramfs: init as `/init`, the few nodes it needs before it mounts
//! anything, and for installer media the install payload.

use std::fs;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use artifacts::cpio::{self, Content, Extra, ExtraKind};
use artifacts::tree::{Normalize, Tree};

use crate::stage::{KeyBuilder, StageCache};

/// An initramfs of `init` as `/init` plus `extras` (install payload).
pub fn initramfs(
    stages: &mut StageCache,
    name: &str,
    init: &Path,
    extras: &[Extra],
    epoch: u64,
) -> Result<PathBuf> {
    let mut k = KeyBuilder::new(name);
    k.file("init", init)?.str("epoch", &epoch.to_string());
    for e in extras {
        k.str("extra", &format!("{e:?}"));
        if let ExtraKind::File(Content::Path(p)) = &e.kind {
            k.str("extra-size", &fs::metadata(p)?.len().to_string());
        }
    }
    let dir = stages.run(name, &k.finish(), |out| {
        let empty = out.join("empty");
        fs::create_dir(&empty)?;
        // The archive's root entry: its mode must not come from the umask.
        {
            use std::os::unix::fs::PermissionsExt;
            fs::set_permissions(&empty, fs::Permissions::from_mode(0o755))?;
        }
        let tree = Tree::read(&empty, Normalize::root_owned(epoch))?;
        let mut all = vec![
            Extra::file("init", 0o755, Content::Path(init.to_path_buf())),
            Extra {
                path: "dev/console".into(),
                mode: 0o600,
                kind: ExtraKind::CharDev { major: 5, minor: 1 },
            },
        ];
        // /tmp: the installer's scratch space in install mode.
        for (d, mode) in [
            ("dev", 0o755),
            ("proc", 0o755),
            ("sys", 0o755),
            ("run", 0o755),
            ("newroot", 0o755),
            ("tmp", 0o1777),
        ] {
            all.push(Extra {
                path: d.into(),
                mode,
                kind: ExtraKind::Dir,
            });
        }
        all.extend_from_slice(extras);
        let f = fs::File::create(out.join("initramfs.cpio.zst"))?;
        cpio::write_initramfs(&tree, &all, epoch, std::io::BufWriter::new(f))
            .context("writing the initramfs")?;
        fs::remove_dir(&empty)?;
        Ok(())
    })?;
    Ok(dir.join("initramfs.cpio.zst"))
}
