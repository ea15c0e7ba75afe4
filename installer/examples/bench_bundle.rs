//! bench_bundle OUT_DIR VERSION ROOTFS_MIB SLOT_MIB PUBKEY_OUT [TAR_OUT]
//!
//! Writes a signed release bundle for `ci/bench upgrade` without a kernel or
//! `cairn build`: the rootfs is a real squashfs (cairn's writer) of about
//! ROOTFS_MIB MiB of pseudo-random, incompressible files, with its dm-verity
//! tree appended; the UKI is systemd's stub around dummy kernel bytes. The
//! layout gives each BOOT slot SLOT_MIB MiB. The signing key comes from a
//! fixed seed (a benchmark key, never a release key); its public half goes
//! to PUBKEY_OUT. With TAR_OUT, the bundle is also archived there as
//! `cairn build` writes `update.tar` (manifest and signature first). Needs
//! systemd-boot-efi (the stub and systemd-bootx64.efi). With
//! `BENCH_OCI_OUT=DIR` in the environment, the bundle is also written there
//! as the release's OCI layout, as `cairn build` writes `oci/` (for
//! `cairn push`: `ci/bench netupgrade`).

use std::collections::BTreeMap;
use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use artifacts::squashfs::{write_squashfs_file, SquashfsOptions};
use artifacts::uki::{Uki, UkiInputs};
use artifacts::{Normalize, Tree};
use signing::{PrivateKey, ReleaseMeta};

const STUB: &str = "/usr/lib/systemd/boot/efi/linuxx64.efi.stub";
const SYSTEMD_BOOT: &str = "/usr/lib/systemd/boot/efi/systemd-bootx64.efi";
const EPOCH: u64 = 1_700_000_000;
const MIB: u64 = 1 << 20;
/// The test fixtures' ESP and STATE sizes: FAT32's minimum and then some.
const ESP_MIB: u64 = 36;
const STATE_MIB: u64 = 8;
const FILE_MIB: u64 = 8;

type Res<T> = Result<T, Box<dyn std::error::Error>>;

fn main() -> ExitCode {
    match run() {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("bench_bundle: {e}");
            ExitCode::FAILURE
        }
    }
}

fn run() -> Res<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    const USAGE: &str =
        "usage: bench_bundle OUT_DIR VERSION ROOTFS_MIB SLOT_MIB PUBKEY_OUT [TAR_OUT]";
    let (args, tar) = match args.len() {
        5 => (args, None),
        6 => (args[..5].to_vec(), Some(PathBuf::from(&args[5]))),
        _ => return Err(USAGE.into()),
    };
    let [out, version, rootfs_mib, slot_mib, pubkey] =
        <[String; 5]>::try_from(args).map_err(|_| USAGE)?;
    let rootfs_mib: u64 = rootfs_mib.parse().map_err(|_| "ROOTFS_MIB: a number")?;
    let slot_mib: u64 = slot_mib.parse().map_err(|_| "SLOT_MIB: a number")?;
    let out = PathBuf::from(out);
    fs::create_dir_all(&out)?;
    let key = PrivateKey::from_seed(&[0xbe; 32]);
    fs::write(&pubkey, key.public().to_pem())?;

    let scratch = tempfile::tempdir()?;
    let tree_dir = scratch.path().join("rootfs");
    fill_tree(&tree_dir, rootfs_mib * MIB, &version)?;
    let img = out.join("rootfs.img");
    let tree = Tree::read(&tree_dir, Normalize::root_owned(EPOCH))?;
    let mut opts = SquashfsOptions::new(EPOCH);
    // The content does not compress at any level: level 1 only makes the
    // setup quick, the image is the same size.
    opts.level = 1;
    write_squashfs_file(&tree, &img, &opts)?;
    fs::remove_dir_all(&tree_dir)?;
    let verity = artifacts::verity::append(&img, format!("bench-{version}").as_bytes())?;

    let linux = scratch.path().join("linux");
    let initrd = scratch.path().join("initrd");
    fs::write(&linux, format!("dummy kernel {version}"))?;
    fs::write(&initrd, b"dummy initrd")?;
    Uki::build(
        &UkiInputs {
            stub: Path::new(STUB),
            linux: &linux,
            initrd: &initrd,
            cmdline: &format!(
                "{} console=ttyS0 panic=-1",
                contract::slot::boot_params(&verity)
            ),
            osrel: &format!(
                "NAME=cairn\nID=cairn\nVERSION_ID={version}\nIMAGE_VERSION={version}\n"
            ),
            uname: None,
            sbat: None,
        },
        &out.join("uki.efi"),
    )?;
    fs::copy(SYSTEMD_BOOT, out.join("systemd-bootx64.efi"))?;
    fs::write(
        out.join("layout.json"),
        format!(
            r#"{{"esp":{},"boot":{},"state":{}}}"#,
            ESP_MIB * MIB,
            slot_mib * MIB,
            STATE_MIB * MIB
        ),
    )?;
    let meta = ReleaseMeta {
        os_name: "cairn".into(),
        os_version: version.parse()?,
        profile: "bench".into(),
        source_date_epoch: EPOCH,
        arch: "x86_64".into(),
        inputs: BTreeMap::new(),
        verity_root_hash: Some(verity.root_hash_hex()),
    };
    signing::sign_dir(
        &out,
        meta,
        &[
            "layout.json",
            "rootfs.img",
            "systemd-bootx64.efi",
            "uki.efi",
        ],
        &key,
    )?;
    if let Some(tar) = tar {
        let files: Vec<(&str, PathBuf)> = contract::bundle::FILES
            .iter()
            .map(|n| (*n, out.join(n)))
            .collect();
        let refs: Vec<(&str, &Path)> = files.iter().map(|(n, p)| (*n, p.as_path())).collect();
        let s = artifacts::bundle::write_tar(&tar, &refs, EPOCH)?;
        println!("{} {} bytes", tar.display(), s.size);
    }
    if let Some(oci) = std::env::var_os("BENCH_OCI_OUT") {
        let oci = PathBuf::from(oci);
        if oci.exists() {
            fs::remove_dir_all(&oci)?;
        }
        contract::bundle::oci::write_release_layout(
            &out,
            &oci,
            &version,
            &verity.root_hash_hex(),
            EPOCH,
        )?;
        println!("{} (OCI layout)", oci.display());
    }
    println!(
        "rootfs.img {} bytes, root hash {}",
        fs::metadata(&img)?.len(),
        verity.root_hash_hex()
    );
    Ok(())
}

/// `total` bytes in FILE_MIB files of splitmix64 output seeded by `seed`,
/// so two versions share no block and nothing compresses.
fn fill_tree(dir: &Path, total: u64, seed: &str) -> Res<()> {
    let mut state = seed
        .bytes()
        .fold(0x9e37_79b9_7f4a_7c15u64, |s, b| s.rotate_left(8) ^ b as u64);
    let mut next = || {
        state = state.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = state;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    };
    let data = dir.join("usr/lib/bench");
    fs::create_dir_all(&data)?;
    fs::write(
        dir.join("usr/lib/os-release"),
        format!("ID=cairn\nVERSION_ID={seed}\n"),
    )?;
    let mut buf = vec![0u8; MIB as usize];
    let mut left = total;
    let mut n = 0;
    while left > 0 {
        let mut f = std::io::BufWriter::new(fs::File::create(data.join(format!("blob-{n:04}")))?);
        for _ in 0..FILE_MIB.min(left.div_ceil(MIB)) {
            for w in buf.chunks_exact_mut(8) {
                w.copy_from_slice(&next().to_le_bytes());
            }
            let take = left.min(MIB) as usize;
            f.write_all(&buf[..take])?;
            left -= take as u64;
        }
        f.flush()?;
        n += 1;
    }
    Ok(())
}
