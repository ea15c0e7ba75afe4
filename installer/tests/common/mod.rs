//! Test fixtures: small signed bundles with a real verity tree and a real
//! UKI (systemd's stub with dummy kernel bytes), and sparse disk images.
#![allow(dead_code)]

pub mod cuts;
pub mod edk2;
pub mod firmware;
pub mod loopdev;
pub mod oracle;

use std::collections::BTreeMap;
use std::fs;
use std::path::{Path, PathBuf};

use artifacts::pe::PeLayout;
use artifacts::uki::{Uki, UkiInputs};
use sha2::{Digest, Sha256};
use signing::{PrivateKey, ReleaseMeta};

pub const STUB: &str = "/usr/lib/systemd/boot/efi/linuxx64.efi.stub";
pub const SYSTEMD_BOOT: &str = "/usr/lib/systemd/boot/efi/systemd-bootx64.efi";
pub const MIB: u64 = 1 << 20;
/// EFI 36 + 2 x 8 + STATE 8 + EPHEMERAL >= 64, plus the GPT margins.
pub const DISK_SIZE: u64 = 160 * MIB;
pub const EPOCH: u64 = 1_700_000_000;

pub fn key() -> PrivateKey {
    PrivateKey::from_seed(&[7u8; 32])
}

pub fn other_key() -> PrivateKey {
    PrivateKey::from_seed(&[9u8; 32])
}

pub struct Fixture {
    pub dir: tempfile::TempDir,
}

impl Fixture {
    pub fn new() -> Fixture {
        Fixture {
            dir: tempfile::tempdir().expect("tempdir"),
        }
    }

    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    /// The trusted key as a PEM file.
    pub fn pubkey(&self) -> PathBuf {
        let p = self.path("trusted.pub");
        fs::write(&p, key().public().to_pem()).unwrap();
        p
    }

    /// A sparse image of `size` bytes.
    pub fn image(&self, name: &str, size: u64) -> PathBuf {
        let p = self.path(name);
        let f = fs::File::create(&p).unwrap();
        f.set_len(size).unwrap();
        p
    }
}

/// What a test bundle contains, for checks.
pub struct BundleInfo {
    pub dir: PathBuf,
    pub version: String,
    pub root_hash: String,
    pub rootfs_sha256: [u8; 32],
    pub rootfs_len: u64,
}

pub struct BundleOpts {
    pub version: String,
    /// Content seed: different seeds give different rootfs and root hash.
    pub seed: String,
    pub rootfs_len: usize,
    pub layout: String,
    pub key: PrivateKey,
    /// Overwrite the UKI's PE machine type (other-architecture bundles).
    pub uki_machine: Option<u16>,
    /// Appended to the host's systemd-boot: a loader that differs from
    /// other bundles' (as a rebuilt or re-signed one would) and still
    /// passes the PE checks.
    pub loader_tail: Vec<u8>,
    /// Authenticode-sign the loader (after the tail) with this db key.
    pub loader_signer: Option<&'static signing::secureboot::SecureBootKey>,
    /// Kernel parameters after the verity ones. `gpt` as installed images
    /// carry it (builder's INSTALLED_PARAMS): Linux then reads the backup
    /// GPT when the primary is torn.
    pub cmdline_extra: String,
}

impl BundleOpts {
    pub fn new(version: &str) -> BundleOpts {
        BundleOpts {
            version: version.into(),
            seed: format!("rootfs-{version}"),
            rootfs_len: 40_000,
            layout: format!(
                r#"{{"esp":{},"boot":{},"state":{}}}"#,
                36 * MIB,
                8 * MIB,
                8 * MIB
            ),
            key: key(),
            uki_machine: None,
            loader_tail: Vec::new(),
            loader_signer: None,
            cmdline_extra: "console=ttyS0 panic=-1 gpt".into(),
        }
    }
}

pub fn bundle(at: &Path, version: &str) -> BundleInfo {
    make_bundle(at, &BundleOpts::new(version))
}

pub fn make_bundle(at: &Path, o: &BundleOpts) -> BundleInfo {
    fs::create_dir_all(at).unwrap();
    // Fake squashfs: deterministic bytes from the seed.
    let mut data = Vec::with_capacity(o.rootfs_len);
    let mut block = Sha256::digest(o.seed.as_bytes());
    while data.len() < o.rootfs_len {
        data.extend_from_slice(&block);
        block = Sha256::digest(block);
    }
    data.truncate(o.rootfs_len);
    let padded = (o.rootfs_len as u64).div_ceil(4096) * 4096;
    data.resize(padded as usize, 0);
    let rootfs = at.join("rootfs.img");
    let mut f = fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(true)
        .open(&rootfs)
        .unwrap();
    use std::io::Write;
    f.write_all(&data).unwrap();
    let info = artifacts::verity::build(&data[..], padded, &mut f, padded, o.seed.as_bytes())
        .expect("verity");
    drop(f);
    let rootfs_bytes = fs::read(&rootfs).unwrap();

    let scratch = tempfile::tempdir().unwrap();
    let linux = scratch.path().join("linux");
    let initrd = scratch.path().join("initrd");
    fs::write(&linux, format!("dummy kernel {}", o.version)).unwrap();
    fs::write(&initrd, b"dummy initrd").unwrap();
    let cmdline = format!("{} {}", contract::slot::boot_params(&info), o.cmdline_extra);
    let osrel = format!(
        "NAME=cairn\nID=cairn\nVERSION_ID={v}\nIMAGE_VERSION={v}\n",
        v = o.version
    );
    let uki = at.join("uki.efi");
    Uki::build(
        &UkiInputs {
            stub: Path::new(STUB),
            linux: &linux,
            initrd: &initrd,
            cmdline: &cmdline,
            osrel: &osrel,
            uname: None,
            sbat: None,
        },
        &uki,
    )
    .expect("building the test UKI needs systemd-boot-efi's stub");
    if let Some(m) = o.uki_machine {
        let mut b = fs::read(&uki).unwrap();
        let at = PeLayout::parse(&uki, &b).unwrap().machine_offset();
        b[at..at + 2].copy_from_slice(&m.to_le_bytes());
        fs::write(&uki, b).unwrap();
    }
    let mut loader = fs::read(SYSTEMD_BOOT).expect("systemd-boot-efi installed");
    loader.extend_from_slice(&o.loader_tail);
    if let Some(k) = o.loader_signer {
        loader = signing::authenticode::sign_image(Path::new(SYSTEMD_BOOT), &loader, k).unwrap();
    }
    fs::write(at.join("systemd-bootx64.efi"), loader).unwrap();
    fs::write(at.join("layout.json"), &o.layout).unwrap();
    let meta = ReleaseMeta {
        os_name: "cairn".into(),
        os_version: o.version.parse().unwrap(),
        profile: "test".into(),
        source_date_epoch: EPOCH,
        arch: "x86_64".into(),
        inputs: BTreeMap::new(),
        verity_root_hash: Some(info.root_hash_hex()),
    };
    signing::sign_dir(
        at,
        meta,
        &[
            "layout.json",
            "rootfs.img",
            "systemd-bootx64.efi",
            "uki.efi",
        ],
        &o.key,
    )
    .expect("signing the test bundle");
    BundleInfo {
        dir: at.to_path_buf(),
        version: o.version.clone(),
        root_hash: info.root_hash_hex(),
        rootfs_sha256: Sha256::digest(&rootfs_bytes).into(),
        rootfs_len: rootfs_bytes.len() as u64,
    }
}

/// A bundle whose systemd-boot has `tail` appended.
pub fn bundle_with_loader(at: &Path, version: &str, tail: &[u8]) -> BundleInfo {
    let mut o = BundleOpts::new(version);
    o.loader_tail = tail.to_vec();
    make_bundle(at, &o)
}

/// The ESP's `EFI/BOOT/BOOTX64.EFI`, read without writing anything (not
/// even FSInfo, as `with_esp` would).
pub fn esp_loader(img: &Path) -> Vec<u8> {
    let mut f = fs::File::open(img).unwrap();
    let disk = artifacts::gpt::read_disk(&mut f).unwrap();
    let esp = disk.layout.partition("EFI").unwrap().clone();
    artifacts::fat::Fat32::open(&mut f, esp.offset(), esp.size_bytes())
        .unwrap()
        .read_file(installer::bootmodel::LOADER)
        .unwrap()
}

/// A bundle's systemd-boot.
pub fn bundle_loader(b: &BundleInfo) -> Vec<u8> {
    fs::read(b.dir.join("systemd-bootx64.efi")).unwrap()
}

/// sha256sum's digest of a whole file (hex). The standard tool, and fast
/// where a debug-build hasher over a 160 MiB image is not.
pub fn sha256_file(p: &Path) -> String {
    let out = tool("sha256sum", &[p.to_str().unwrap()]);
    assert!(out.status.success());
    String::from_utf8_lossy(&out.stdout)[..64].to_string()
}

pub fn run(cmd: &mut std::process::Command) -> std::process::Output {
    let out = cmd
        .output()
        .unwrap_or_else(|e| panic!("running {cmd:?}: {e}"));
    out
}

/// Runs an external tool; a missing tool is a failure (CI installs it).
pub fn tool(name: &str, args: &[&str]) -> std::process::Output {
    std::process::Command::new(name)
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("{name} is required for this test: {e}"))
}

/// How a cut write behaves.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Cut {
    /// The write never reaches the disk.
    Drop,
    /// The first half of the write reaches the disk.
    Torn,
    /// The write is dropped and so is every write since the last flush (a
    /// volatile disk cache lost with the power): only barriers count.
    LoseUnflushed,
    /// Only this write fails (an I/O error); the disk keeps working.
    FailOne,
}

/// A disk image that loses power at write number `cut_at` (1-based): that
/// write is dropped or torn, and every operation after it fails.
pub struct FaultDisk {
    pub file: fs::File,
    pub writes: usize,
    pub cut_at: Option<usize>,
    pub mode: Cut,
    pub dead: bool,
    /// (offset, previous bytes) of writes since the last flush.
    undo: Vec<(u64, Vec<u8>)>,
}

impl FaultDisk {
    pub fn new(path: &Path, cut_at: Option<usize>, mode: Cut) -> FaultDisk {
        FaultDisk {
            file: fs::OpenOptions::new()
                .read(true)
                .write(true)
                .open(path)
                .unwrap(),
            writes: 0,
            cut_at,
            mode,
            dead: false,
            undo: Vec::new(),
        }
    }

    fn check(&self) -> std::io::Result<()> {
        if self.dead {
            Err(std::io::Error::other("power lost (injected)"))
        } else {
            Ok(())
        }
    }
}

impl std::io::Read for FaultDisk {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        self.check()?;
        self.file.read(buf)
    }
}

impl std::io::Write for FaultDisk {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.check()?;
        self.writes += 1;
        if self.cut_at == Some(self.writes) {
            self.dead = self.mode != Cut::FailOne;
            match self.mode {
                Cut::Drop | Cut::FailOne => {}
                Cut::Torn => self.file.write_all(&buf[..buf.len() / 2])?,
                Cut::LoseUnflushed => {
                    use std::os::unix::fs::FileExt;
                    for (off, old) in self.undo.drain(..).rev() {
                        self.file.write_all_at(&old, off)?;
                    }
                }
            }
            return Err(std::io::Error::other("power lost (injected)"));
        }
        if self.mode == Cut::LoseUnflushed {
            use std::io::Seek;
            use std::os::unix::fs::FileExt;
            let off = self.file.stream_position()?;
            let mut old = vec![0u8; buf.len()];
            let n = self.file.read_at(&mut old, off)?;
            old.truncate(n);
            self.undo.push((off, old));
        }
        self.file.write(buf)
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.check()?;
        self.undo.clear();
        Ok(())
    }
}

impl std::io::Seek for FaultDisk {
    fn seek(&mut self, pos: std::io::SeekFrom) -> std::io::Result<u64> {
        self.check()?;
        self.file.seek(pos)
    }
}

/// Copies `from` to `to` keeping holes (SEEK_DATA/SEEK_HOLE), so copying a
/// mostly empty image costs what it holds.
pub fn sparse_copy(from: &Path, to: &Path) {
    use std::io::{Read, Seek, SeekFrom, Write};
    use std::os::unix::io::AsRawFd;
    let mut src = fs::File::open(from).unwrap();
    let len = src.metadata().unwrap().len();
    let mut dst = fs::File::create(to).unwrap();
    dst.set_len(len).unwrap();
    let fd = src.as_raw_fd();
    let mut pos: i64 = 0;
    let mut buf = vec![0u8; 1 << 20];
    while (pos as u64) < len {
        let data = unsafe { libc::lseek(fd, pos, libc::SEEK_DATA) };
        if data < 0 {
            break;
        }
        let hole = unsafe { libc::lseek(fd, data, libc::SEEK_HOLE) };
        let end = if hole < 0 { len as i64 } else { hole };
        src.seek(SeekFrom::Start(data as u64)).unwrap();
        dst.seek(SeekFrom::Start(data as u64)).unwrap();
        let mut left = (end - data) as usize;
        while left > 0 {
            let n = left.min(buf.len());
            src.read_exact(&mut buf[..n]).unwrap();
            dst.write_all(&buf[..n]).unwrap();
            left -= n;
        }
        pos = end;
    }
}

/// Follows the boot chain on an image the way the machine would: GPT ->
/// ESP -> systemd-boot's choice -> its cmdline root hash -> the slot with
/// that PARTUUID -> the slot's data against the release's rootfs hash.
/// Returns the version that boots, or why nothing does.
pub fn booted_version(img: &Path, releases: &[&BundleInfo]) -> Result<String, String> {
    use artifacts::gpt::{self, Guid};
    use installer::bootmodel::BootModel;
    let mut f = fs::File::open(img).map_err(|e| e.to_string())?;
    let disk = gpt::read_disk(&mut f).map_err(|e| format!("GPT: {e}"))?;
    let esp = disk
        .layout
        .partition(contract::disk::EFI)
        .ok_or("no EFI partition")?
        .clone();
    let mut vol = artifacts::fat::Fat32::open(&mut f, esp.offset(), esp.size_bytes())
        .map_err(|e| format!("ESP: {e}"))?;
    let model = BootModel::read(&mut vol).map_err(|e| format!("boot model: {e}"))?;
    let e = model.selected().ok_or("no boot entry")?;
    let root = e.root_hash.clone().ok_or("entry without cairn.rootfs")?;
    let guid = Guid::from_root_hash(&hex::decode(&root).unwrap()).unwrap();
    let slot = disk
        .layout
        .partitions
        .iter()
        .find(|p| p.guid == guid)
        .ok_or_else(|| {
            format!(
                "{} boots root {root}, no partition has that PARTUUID",
                e.file
            )
        })?;
    release_in_slot(&mut f, slot.offset(), &slot.name, e, &root, releases)
        .map(|r| r.version.clone())
}

/// The known release whose root hash `e` boots, checked against the bytes
/// of the slot at `offset` (named `slot` in messages) and the entry's own
/// version.
pub fn release_in_slot<'r>(
    f: &mut fs::File,
    offset: u64,
    slot: &str,
    e: &installer::bootmodel::Entry,
    root: &str,
    releases: &[&'r BundleInfo],
) -> Result<&'r BundleInfo, String> {
    use std::io::{Read, Seek, SeekFrom};
    let rel = *releases
        .iter()
        .find(|r| r.root_hash == root)
        .ok_or_else(|| format!("root hash {root} is no known release"))?;
    let mut data = vec![0u8; rel.rootfs_len as usize];
    f.seek(SeekFrom::Start(offset)).unwrap();
    f.read_exact(&mut data).unwrap();
    if <[u8; 32]>::from(Sha256::digest(&data)) != rel.rootfs_sha256 {
        return Err(format!(
            "{} selects {} in {slot}, whose data does not match the release",
            e.file, rel.version
        ));
    }
    if e.version.as_deref() != Some(rel.version.as_str()) {
        return Err(format!(
            "{} has version {:?}, root hash of {}",
            e.file, e.version, rel.version
        ));
    }
    Ok(rel)
}

/// sha256 of a byte range of a file.
pub fn range_sha256(p: &Path, offset: u64, len: u64) -> [u8; 32] {
    use std::io::{Read, Seek, SeekFrom};
    let mut f = fs::File::open(p).unwrap();
    f.seek(SeekFrom::Start(offset)).unwrap();
    let mut h = Sha256::new();
    let mut left = len;
    let mut buf = vec![0u8; 1 << 20];
    while left > 0 {
        let n = left.min(buf.len() as u64) as usize;
        f.read_exact(&mut buf[..n]).unwrap();
        h.update(&buf[..n]);
        left -= n as u64;
    }
    h.finalize().into()
}

pub fn install_opts(disk: &Path, bundle: &Path) -> installer::install::InstallOptions {
    installer::install::InstallOptions {
        disk: disk.to_path_buf(),
        bundle: bundle.to_path_buf(),
        trusted: vec![key().public()],
        // Hermetic: never the host's own boot partition variable.
        loader_device_var: Some(PathBuf::from("/nonexistent/LoaderDevicePartUUID")),
        ..Default::default()
    }
}

/// Opens the ESP of an installed image for a test's own renames.
pub fn with_esp<T>(
    img: &Path,
    f: impl FnOnce(&mut artifacts::fat::Fat32<&mut fs::File>) -> T,
) -> T {
    let mut file = fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(img)
        .unwrap();
    let disk = artifacts::gpt::read_disk(&mut file).unwrap();
    let esp = disk.layout.partition("EFI").unwrap().clone();
    let mut vol = artifacts::fat::Fat32::open(&mut file, esp.offset(), esp.size_bytes()).unwrap();
    let r = f(&mut vol);
    vol.flush().unwrap();
    r
}

/// One power-on as systemd-boot 252 does it: pick the entry, count the try
/// by renaming. Returns the file name chosen (before the rename).
pub fn boot_attempt(img: &Path) -> String {
    with_esp(img, |vol| {
        let model = installer::bootmodel::BootModel::read(vol).unwrap();
        let chosen = model.selected().expect("an entry").file.clone();
        if let Some((from, to)) = model.boot_rename() {
            vol.rename(&format!("EFI/Linux/{from}"), &to).unwrap();
        }
        chosen
    })
}

/// What userspace does after a good boot: drop the counter.
pub fn bless(img: &Path, version: &str) {
    with_esp(img, |vol| {
        let model = installer::bootmodel::BootModel::read(vol).unwrap();
        let e = model
            .entries
            .iter()
            .find(|e| e.version.as_deref() == Some(version))
            .expect("entry to bless");
        if e.counter.is_some() {
            vol.rename(&format!("EFI/Linux/{}", e.file), &format!("{}.efi", e.base))
                .unwrap();
        }
    })
}

pub fn entry_files(img: &Path) -> Vec<String> {
    with_esp(img, |vol| {
        installer::bootmodel::BootModel::read(vol)
            .unwrap()
            .entries
            .iter()
            .map(|e| e.file.clone())
            .collect()
    })
}

pub fn upgrade_opts(disk: &Path, bundle: &Path) -> installer::upgrade::UpgradeOptions {
    installer::upgrade::UpgradeOptions {
        disk: disk.to_path_buf(),
        bundle: bundle.to_path_buf(),
        trusted: vec![key().public()],
        ..Default::default()
    }
}

/// The bundle as `cairn build` archives it (artifacts::bundle::write_tar).
pub fn bundle_tar(b: &BundleInfo, out: &Path) {
    let paths: Vec<(String, PathBuf)> = contract::bundle::FILES
        .iter()
        .map(|n| (n.to_string(), b.dir.join(n)))
        .collect();
    let files: Vec<(&str, &Path)> = paths
        .iter()
        .map(|(n, p)| (n.as_str(), p.as_path()))
        .collect();
    artifacts::bundle::write_tar(out, &files, EPOCH).expect("writing the bundle tar");
}
