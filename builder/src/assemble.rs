//! Assembly: from a kernel, an initramfs and a rootfs tree to a verity-bound
//! rootfs image, a UKI and an installed disk. `cairn build` runs these after
//! building the inputs from pkgs; `cairn assemble` runs them on inputs the
//! user brings.

use std::fs;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use artifacts::fat::{self, FatFile, FatSource, FormatOptions};
use artifacts::gpt::{self, DiskLayout, DiskWriter, Guid};
use artifacts::squashfs::{write_squashfs_file, DirCache, SquashfsOptions};
use artifacts::tree::{Normalize, Tree};
use artifacts::uki::{Uki, UkiInputs};
use artifacts::verity::{self, VerityInfo};
use serde::{Deserialize, Serialize};

use crate::stage::{KeyBuilder, StageCache};

/// The slot content and what binds a UKI to it.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RootfsImage {
    /// squashfs + verity superblock + hash tree (docs/design.md "Slot content").
    pub image: PathBuf,
    pub root_hash: String,
    pub salt: String,
    pub data_blocks: u64,
    pub hash_offset: u64,
    pub image_size: u64,
    /// `cairn.rootfs=… cairn.verity=…`
    pub cmdline: String,
}

impl RootfsImage {
    fn from_info(image: PathBuf, info: &VerityInfo) -> Result<RootfsImage> {
        Ok(RootfsImage {
            image_size: fs::metadata(&image)?.len(),
            image,
            root_hash: info.root_hash_hex(),
            salt: info.salt_hex(),
            data_blocks: info.data_blocks,
            hash_offset: info.hash_offset,
            cmdline: info.cmdline(),
        })
    }

    pub fn root_hash_bytes(&self) -> Result<Vec<u8>> {
        hex::decode(&self.root_hash).context("root hash is not hex")
    }
}

const ROOTFS_META: &str = "rootfs.json";

/// Squashfs + dm-verity of `tree_dir`, cached under `key`.
pub fn rootfs_image(
    stages: &mut StageCache,
    key: &str,
    tree_dir: &Path,
    epoch: u64,
) -> Result<RootfsImage> {
    // Compressed blocks are content-addressed across builds: after one file
    // changes, only its blocks are compressed again.
    let blocks = DirCache::new(stages.dir().join("squashfs-blocks"));
    let dir = stages.run("rootfs-image", key, |out| {
        let tree = Tree::read(tree_dir, Normalize::root_owned(epoch))
            .with_context(|| format!("reading the staged rootfs {}", tree_dir.display()))?;
        let img = out.join("rootfs.img");
        let opts = SquashfsOptions {
            cache: Some(&blocks),
            ..SquashfsOptions::new(epoch)
        };
        write_squashfs_file(&tree, &img, &opts).context("writing the squashfs")?;
        // The salt is a function of the inputs (the stage key), never random.
        let info = verity::append(&img, format!("cairn-verity:{key}").as_bytes())
            .context("building the dm-verity hash tree")?;
        let meta = RootfsImage::from_info(img, &info)?;
        fs::write(out.join(ROOTFS_META), serde_json::to_vec_pretty(&meta)?)?;
        Ok(())
    })?;
    let mut meta: RootfsImage = serde_json::from_slice(&fs::read(dir.join(ROOTFS_META))?)?;
    meta.image = dir.join("rootfs.img");
    Ok(meta)
}

pub struct UkiSpec<'a> {
    pub stub: &'a Path,
    pub kernel: &'a Path,
    pub initrd: &'a Path,
    pub cmdline: String,
    pub osrel: String,
}

/// Builds (or reuses) a UKI; returns its path in the stage cache.
pub fn uki(stages: &mut StageCache, name: &str, spec: &UkiSpec) -> Result<PathBuf> {
    let mut k = KeyBuilder::new(name);
    k.file("stub", spec.stub)?
        .file("kernel", spec.kernel)?
        .file("initrd", spec.initrd)?
        .str("cmdline", &spec.cmdline)
        .str("osrel", &spec.osrel);
    let dir = stages.run(name, &k.finish(), |out| {
        Uki::build(
            &UkiInputs {
                stub: spec.stub,
                linux: spec.kernel,
                initrd: spec.initrd,
                cmdline: &spec.cmdline,
                osrel: &spec.osrel,
                uname: None,
                sbat: None,
            },
            &out.join("uki.efi"),
        )
        .context("assembling the UKI")?;
        Ok(())
    })?;
    Ok(dir.join("uki.efi"))
}

/// Partition sizes of an installed disk.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
pub struct DiskSizes {
    pub disk: u64,
    pub esp: u64,
    pub boot: u64,
    pub state: u64,
}

/// The UKI's file name on the ESP: systemd-boot sorts by version (from
/// `.osrel`), and `+3` gives the first boot three tries before fallback.
pub fn uki_entry_name(version: &str, tries: Option<u32>) -> String {
    match tries {
        Some(n) => format!("cairn-{version}+{n}.efi"),
        None => format!("cairn-{version}.efi"),
    }
}

pub const LOADER_CONF: &str = "timeout 0\n";

pub struct EspContent<'a> {
    pub systemd_boot: &'a Path,
    /// (file name under EFI/Linux, UKI path)
    pub ukis: Vec<(String, PathBuf)>,
    pub machine_config: Option<&'a Path>,
    pub loader_conf: &'a str,
}

impl EspContent<'_> {
    pub fn files(&self) -> Vec<FatFile> {
        let mut files = vec![
            FatFile {
                path: "EFI/BOOT/BOOTX64.EFI".into(),
                source: FatSource::Host(self.systemd_boot.to_path_buf()),
            },
            FatFile {
                path: "loader/loader.conf".into(),
                source: FatSource::Bytes(self.loader_conf.as_bytes().to_vec()),
            },
        ];
        for (name, path) in &self.ukis {
            files.push(FatFile {
                path: format!("EFI/Linux/{name}"),
                source: FatSource::Host(path.clone()),
            });
        }
        if let Some(cfg) = self.machine_config {
            files.push(FatFile {
                path: "cairn/machine.toml".into(),
                source: FatSource::Host(cfg.to_path_buf()),
            });
        }
        files
    }
}

/// Writes a complete installed disk: GPT, ESP, slot A with the rootfs, slot
/// B empty, STATE and EPHEMERAL left as holes for init to format.
pub fn installed_disk(
    out: &Path,
    sizes: DiskSizes,
    rootfs: &RootfsImage,
    esp: &EspContent,
    seed: &[u8],
    epoch: u64,
) -> Result<()> {
    let mut specs = gpt::cairn_specs(sizes.esp, sizes.boot, sizes.state);
    let slot_guid = Guid::from_root_hash(&rootfs.root_hash_bytes()?)?;
    for s in specs.iter_mut() {
        if s.name == gpt::BOOT_A {
            s.guid = Some(slot_guid);
        }
    }
    let layout = DiskLayout::new(sizes.disk, seed, &specs).context("laying out the disk")?;
    let esp_part = layout
        .partition(gpt::EFI)
        .context("layout has no EFI partition")?
        .clone();
    let slot = layout
        .partition(gpt::BOOT_A)
        .context("layout has no BOOT-A partition")?
        .clone();
    if rootfs.image_size > slot.size_bytes() {
        anyhow::bail!(
            "rootfs image {} ({} bytes) does not fit BOOT-A ({} bytes): raise disk.boot in the profile",
            rootfs.image.display(),
            rootfs.image_size,
            slot.size_bytes()
        );
    }
    let _ = fs::remove_file(out);
    let mut w = DiskWriter::create(out, layout).context("creating the disk image")?;
    let slot_index = w
        .layout()
        .partitions
        .iter()
        .position(|p| p.name == gpt::BOOT_A)
        .context("BOOT-A index")?;
    let img = fs::File::open(&rootfs.image)
        .with_context(|| format!("opening {}", rootfs.image.display()))?;
    w.write_partition(slot_index, std::io::BufReader::with_capacity(1 << 20, img))
        .context("writing slot A")?;
    fat::format(
        w.file(),
        esp_part.offset(),
        &FormatOptions {
            size: esp_part.size_bytes(),
            label: "EFI".into(),
            seed: seed.to_vec(),
            epoch,
        },
        &esp.files(),
    )
    .context("writing the ESP")?;
    w.finish().context("finishing the disk image")?;
    Ok(())
}
