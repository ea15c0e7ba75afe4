//! Stage 2, the rootfs tree: the profile's packages and files staged as the
//! directory the squashfs is made from (what goes in: [`crate::rootfs`]).

use std::fs;
use std::path::PathBuf;

use anyhow::Result;

use super::packages::Packages;
use super::Run;
use crate::profile::Profile;
use crate::rootfs;
use crate::stage::KeyBuilder;

/// The staged tree and what later stages need to know of it.
pub(super) struct RootfsTree {
    /// The stage key: the next stage's key is made from it, so an unchanged
    /// tree is never read again.
    pub(super) key: String,
    pub(super) dir: PathBuf,
    /// `/etc/os-release`, also the UKI's `.osrel`.
    pub(super) osrel: String,
    /// ELF executables in the tree: the whole userland, counted.
    pub(super) binaries: Vec<String>,
}

/// Kept beside the tree in the stage cache: a cached tree still reports its
/// binaries without being walked again.
const BINARIES: &str = "binaries.txt";

pub(super) fn stage(
    run: &mut Run,
    profile: &Profile,
    packages: &Packages,
    trusted: &[signing::PublicKey],
) -> Result<RootfsTree> {
    let osrel = rootfs::os_release(profile);
    let tree_key = key(profile, &osrel, packages, trusted)?;
    let inputs: Vec<(String, PathBuf)> = profile
        .packages
        .iter()
        .map(|n| (n.clone(), packages.dir(n).to_path_buf()))
        .collect();
    let stages = &mut run.stages;
    let dir = run.progress.step("rootfs tree", || {
        stages.run("rootfs-tree", &tree_key, |out| {
            let staged = rootfs::stage(profile, &inputs, trusted, &out.join("tree"))?;
            let list: Vec<String> = staged
                .binaries
                .iter()
                .map(|b| b.display().to_string())
                .collect();
            fs::write(out.join(BINARIES), list.join("\n") + "\n")?;
            Ok(())
        })
    })?;
    let binaries = fs::read_to_string(dir.join(BINARIES))?
        .lines()
        .filter(|l| !l.is_empty())
        .map(String::from)
        .collect();
    Ok(RootfsTree {
        key: tree_key,
        dir: dir.join("tree"),
        osrel,
        binaries,
    })
}

/// What goes in is a function of the rootfs packages and the profile, so
/// that is the key: the kernel and the boot loader are not in the tree, and
/// a new kernel must not restage it.
fn key(
    profile: &Profile,
    osrel: &str,
    packages: &Packages,
    trusted: &[signing::PublicKey],
) -> Result<String> {
    let mut k = KeyBuilder::new("rootfs-tree");
    k.str("osrel", osrel);
    for t in trusted {
        k.str("trust", &t.to_pem());
    }
    for name in &profile.packages {
        k.str(name, packages.key(name));
    }
    for f in &profile.files {
        k.file(&f.dst.to_string_lossy(), &f.src)?
            .str("mode", f.mode.as_deref().unwrap_or(""));
    }
    Ok(k.finish())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pipeline::tests::profile;

    fn packages(kernel: &str) -> Packages {
        let keys = [("kernel", kernel), ("init", "i1"), ("e2fsprogs", "e1")];
        Packages {
            dirs: Default::default(),
            keys: keys
                .iter()
                .map(|(n, k)| (n.to_string(), k.to_string()))
                .collect(),
        }
    }

    #[test]
    fn tree_key_follows_rootfs_inputs_not_the_kernel() {
        let t = tempfile::tempdir().unwrap();
        let (p, motd) = profile(t.path(), &["init", "e2fsprogs"]);
        let osrel = rootfs::os_release(&p);
        let k1 = [signing::PrivateKey::from_seed(&[1; 32]).public()];
        let base = key(&p, &osrel, &packages("k1"), &k1).unwrap();
        assert_eq!(base, key(&p, &osrel, &packages("k2"), &k1).unwrap());

        let mut other_pkg = packages("k1");
        other_pkg.keys.insert("e2fsprogs".into(), "e2".into());
        assert_ne!(base, key(&p, &osrel, &other_pkg, &k1).unwrap());

        // A rotated trust set is a different rootfs.
        let k2 = [signing::PrivateKey::from_seed(&[2; 32]).public()];
        assert_ne!(base, key(&p, &osrel, &packages("k1"), &k2).unwrap());

        fs::write(&motd, "changed\n").unwrap();
        assert_ne!(base, key(&p, &osrel, &packages("k1"), &k1).unwrap());
    }
}
