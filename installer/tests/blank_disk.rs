//! Issue 12, finding 1: whole-disk data without a partition table must not
//! be overwritten without `--wipe`. libblkid (`blkid -p`) is the independent
//! oracle: on every image the real tools make, whatever blkid finds must be
//! refused, and the refusal must name it; `--wipe` then installs and leaves
//! nothing for blkid to find but the new GPT. A zeroed disk, and one with
//! data only between its first and last MiB, install without `--wipe`.

mod common;

use std::fs;
use std::path::Path;
use std::process::Command;

use common::made::{iso, s, sfdisk_dos, sh, squashfs};
use common::*;
use installer::install::install;
use installer::Error;

/// A whole-disk image and how it was made; `Err` is why this machine cannot
/// make it (printed, never silent).
type Maker = fn(&Path, &Path) -> Result<(), String>;

struct Case {
    name: &'static str,
    size: u64,
    make: Maker,
    /// What our refusal must say when blkid finds nothing (our rule is
    /// stricter than blkid's: unrecognised data near either end is refused).
    /// `None`: the disk is blank and installs without --wipe.
    ours: Option<&'static str>,
}

/// Garbage that no probe recognises, placed by the three garbage cases.
const GARBAGE: &[u8] = b"\xa5 not a filesystem \x5a";
/// Where the middle-garbage case puts its bytes: past the first MiB, before
/// the last, and clear of the LUKS2 and btrfs backup locations.
const MIDDLE: u64 = 80 * MIB + 12_345;
const HEAD_GARBAGE: u64 = 300_000;

fn cases() -> Vec<Case> {
    let c = |name, make: Maker, ours| Case {
        name,
        size: DISK_SIZE,
        make,
        ours,
    };
    vec![
        c("zeroed", |_, _| Ok(()), None),
        c("luks1", |i, k| luks(i, k, "luks1"), None),
        c("luks2", |i, k| luks(i, k, "luks2"), None),
        // mkfs.xfs refuses filesystems under 300 MB.
        Case {
            size: 320 * MIB,
            ..c("xfs", |i, _| sh("mkfs.xfs", &["-q", "-f", s(i)]), None)
        },
        c("btrfs", |i, _| sh("mkfs.btrfs", &["-q", "-f", s(i)]), None),
        c("swap", |i, _| sh("mkswap", &["-q", s(i)]), None),
        c("ext4", |i, _| sh("mkfs.ext4", &["-q", "-F", s(i)]), None),
        c("vfat", |i, _| sh("mkfs.vfat", &["-F", "32", s(i)]), None),
        c("lvm2-pv", |i, _| pvcreate(i), None),
        c("md-0.90", |i, _| md(i, "0.90"), None),
        c("md-1.0", |i, _| md(i, "1.0"), None),
        c("md-1.1", |i, _| md(i, "1.1"), None),
        c("md-1.2", |i, _| md(i, "1.2"), None),
        c("bcache", |i, _| sh("make-bcache", &["-B", s(i)]), None),
        c("gpt", |i, _| sh("sgdisk", &["-o", s(i)]), None),
        c("mbr", |i, _| sfdisk_dos(i), None),
        c("iso9660", |i, _| iso(i), None),
        c("squashfs", |i, _| squashfs(i), None),
        c(
            "garbage-in-the-first-MiB",
            |i, _| poke(i, HEAD_GARBAGE),
            Some("unrecognised non-zero data at offset 300000"),
        ),
        c(
            "garbage-in-the-last-MiB",
            |i, _| poke(i, DISK_SIZE - 4096),
            Some("unrecognised non-zero data at offset 167768064"),
        ),
        // The rule reads the first and last MiB only: data in between is
        // not looked at, so this disk counts as blank (docs/installer.md).
        c("garbage-in-the-middle-only", |i, _| poke(i, MIDDLE), None),
    ]
}

fn luks(img: &Path, key: &Path, kind: &str) -> Result<(), String> {
    // Cheap key derivation: the test is about the header, not its strength.
    let pbkdf: &[&str] = if kind == "luks1" {
        &["--pbkdf", "pbkdf2", "--pbkdf-force-iterations", "1000"]
    } else {
        &[
            "--pbkdf",
            "argon2id",
            "--pbkdf-memory",
            "32",
            "--pbkdf-parallel",
            "1",
            "--pbkdf-force-iterations",
            "4",
        ]
    };
    let mut args = vec!["luksFormat", "--batch-mode", "--type", kind];
    args.extend(["--key-file", s(key)]);
    args.extend(pbkdf);
    args.push(s(img));
    sh("cryptsetup", &args)
}

/// A loop device over an image, detached on drop.
struct Loop(String);

impl Loop {
    fn attach(img: &Path) -> Result<Loop, String> {
        let out = Command::new("losetup")
            .args(["-f", "--show", s(img)])
            .output()
            .map_err(|e| format!("losetup: {e}"))?;
        if !out.status.success() {
            return Err(format!(
                "losetup -f --show: {}",
                String::from_utf8_lossy(&out.stderr)
            ));
        }
        Ok(Loop(
            String::from_utf8_lossy(&out.stdout).trim().to_string(),
        ))
    }
}

impl Drop for Loop {
    fn drop(&mut self) {
        let _ = Command::new("losetup").args(["-d", &self.0]).status();
    }
}

/// pvcreate refuses regular files: it runs on a loop device, with LVM told
/// not to ask udev (there may be none) and not to keep a devices file.
fn pvcreate(img: &Path) -> Result<(), String> {
    let dev = Loop::attach(img)?;
    sh(
        "pvcreate",
        &[
            "-q",
            "-y",
            "--config",
            "devices { obtain_device_list_from_udev=0 use_devicesfile=0 }",
            &dev.0,
        ],
    )
}

/// mdadm writes its superblock only through the kernel's md driver, on a
/// block device: a degraded RAID1 over a loop device, then stopped.
fn md(img: &Path, metadata: &str) -> Result<(), String> {
    if !Path::new("/proc/mdstat").exists() {
        return Err(
            "this kernel has no md driver (/proc/mdstat is missing), so mdadm --create \
                    cannot run here; the md superblocks are unit-tested in installer/src/probe.rs"
                .into(),
        );
    }
    let dev = Loop::attach(img)?;
    let array = format!("/dev/md/cairn-blank-disk-{}", std::process::id());
    sh(
        "mdadm",
        &[
            "--create",
            &array,
            "--run",
            "--level=1",
            "--raid-devices=2",
            &format!("--metadata={metadata}"),
            &dev.0,
            "missing",
        ],
    )?;
    sh("mdadm", &["--stop", &array])
}

fn poke(img: &Path, at: u64) -> Result<(), String> {
    use std::os::unix::fs::FileExt;
    let f = fs::OpenOptions::new().write(true).open(img).unwrap();
    f.write_all_at(GARBAGE, at).map_err(|e| e.to_string())
}

/// What the image holds, cheaply: its allocated extents (SEEK_DATA /
/// SEEK_HOLE) and the sha256 of their bytes. Any write changes one or the
/// other (a write into a hole allocates), and the tool-made images are
/// mostly holes, so this is a full check at a fraction of hashing them.
fn fingerprint(img: &Path) -> (Vec<(u64, u64)>, [u8; 32]) {
    use sha2::{Digest, Sha256};
    use std::os::unix::fs::FileExt;
    use std::os::unix::io::AsRawFd;
    let f = fs::File::open(img).unwrap();
    let len = f.metadata().unwrap().len() as i64;
    let (mut extents, mut h, mut pos) = (Vec::new(), Sha256::new(), 0i64);
    while pos < len {
        // SAFETY: lseek on an open descriptor; errors are negative returns.
        let data = unsafe { libc::lseek(f.as_raw_fd(), pos, libc::SEEK_DATA) };
        if data < 0 {
            break;
        }
        let end = unsafe { libc::lseek(f.as_raw_fd(), data, libc::SEEK_HOLE) };
        let mut buf = vec![0u8; (end - data) as usize];
        f.read_exact_at(&mut buf, data as u64).unwrap();
        h.update(&buf);
        extents.push((data as u64, end as u64));
        pos = end;
    }
    (extents, h.finalize().into())
}

/// `blkid -p -o export`: the (key, value) pairs that say something is there
/// (TYPE, PTTYPE) plus VERSION, which tells LUKS1 from LUKS2.
fn blkid(img: &Path) -> Vec<(String, String)> {
    let out = Command::new("blkid")
        .args(["-p", "-o", "export", s(img)])
        .output()
        .expect("blkid (util-linux) is required");
    // Exit 2: nothing found. Anything else but 0 is a failure of the oracle.
    let code = out.status.code();
    assert!(
        code == Some(0) || code == Some(2),
        "blkid -p {}: {:?} {}",
        img.display(),
        code,
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| l.split_once('='))
        .filter(|(k, _)| matches!(*k, "TYPE" | "PTTYPE" | "VERSION"))
        .map(|(k, v)| (k.to_string(), v.replace('\\', "")))
        .collect()
}

/// The words our refusal must contain for what blkid found.
fn kinds_for(found: &[(String, String)]) -> Vec<String> {
    let version = found
        .iter()
        .find(|(k, _)| k == "VERSION")
        .map(|(_, v)| v.as_str());
    found
        .iter()
        .filter(|(k, _)| k != "VERSION")
        .map(|(k, v)| {
            match (k.as_str(), v.as_str()) {
                ("TYPE", "crypto_LUKS") => format!("LUKS{}", version.unwrap_or("")),
                ("TYPE", "LVM2_member") => "LVM2".into(),
                ("TYPE", "xfs") => "XFS".into(),
                ("TYPE", "btrfs") => "btrfs".into(),
                ("TYPE", "swap") => "swap".into(),
                ("TYPE", "ext2" | "ext3" | "ext4") => "ext2/3/4".into(),
                ("TYPE", "vfat") => "FAT".into(),
                ("TYPE", "linux_raid_member") => format!("md {}", version.unwrap_or("")),
                ("TYPE", "zfs_member") => "ZFS".into(),
                ("TYPE", "bcache") => "bcache".into(),
                ("TYPE", "iso9660") => "ISO 9660".into(),
                ("TYPE", "squashfs") => "squashfs".into(),
                ("PTTYPE", "gpt") => "GPT".into(),
                ("PTTYPE", "dos") => "MBR".into(),
                _ => panic!("blkid found {k}={v}: teach this test (and the probe) its name"),
            }
            .trim()
            .to_string()
        })
        .collect()
}

/// The binary on the LVM image: refused without --wipe (naming the label),
/// and with `--wipe --dry-run` a plan that lists it and the wipe step.
fn cli_refuses_then_plans_the_wipe(fx: &Fixture, img: &Path, bundle: &Path) {
    let run = |extra: &[&str]| {
        let out = Command::new(env!("CARGO_BIN_EXE_cairn-installer"))
            .args(["install", "--disk", s(img), "--bundle", s(bundle)])
            .args(["--pubkey", s(&fx.pubkey())])
            .args(extra)
            .output()
            .unwrap();
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        println!("cairn-installer install {extra:?}:\n{text}");
        (out.status.success(), text)
    };
    let (ok, text) = run(&[]);
    assert!(
        !ok && text.contains("is not empty: an LVM2 label (LABELONE) at offset 512"),
        "{text}"
    );
    let (ok, text) = run(&["--wipe", "--dry-run"]);
    assert!(ok, "{text}");
    assert!(text.contains("destroys: an LVM2 label (LABELONE) at offset 512; an LVM2 physical volume (LVM2 001) at offset 536"), "{text}");
    assert!(text.contains("0. zero bytes 0..1048576 (--wipe)"), "{text}");
    assert!(text.contains("dry run: nothing written"), "{text}");
}

#[test]
fn finding_1_whole_disk_data_refused_without_wipe() {
    let fx = Fixture::new();
    let b = bundle(&fx.path("b"), "1.0.0");
    // The bundle is also the install media's payload: keys/*.pub beside it.
    add_payload_keys(&b);
    let key = fx.path("luks.key");
    fs::write(&key, [b'k'; 32]).unwrap();
    let mut wrong = Vec::new();
    let mut checked = Vec::new();
    for case in cases() {
        let img = fx.image(&format!("{}.img", case.name), case.size);
        if let Err(why) = (case.make)(&img, &key) {
            if case.name.starts_with("md-") && why.contains("no md driver") {
                println!("SKIP {}: {why}", case.name);
                continue;
            }
            panic!("making {}: {why}", case.name);
        }
        let found = blkid(&img);
        let mut want = kinds_for(&found);
        want.extend(case.ours.map(String::from));
        checked.push(format!("{} (blkid: {found:?})", case.name));
        let before = fingerprint(&img);
        let opts = install_opts(&img, &b.dir);
        match (install(&opts), want.is_empty()) {
            (Err(Error::NotEmpty { found: ours, .. }), false) => {
                let missing: Vec<_> = want.iter().filter(|w| !ours.contains(*w)).collect();
                if !missing.is_empty() {
                    wrong.push(format!(
                        "{}: refused, but the refusal does not name {missing:?}: {ours}",
                        case.name
                    ));
                }
                // Install mode (the media's entry point, never a wipe)
                // refuses the same way.
                match installer::install::install_payload(&b.dir, &img, false) {
                    Err(Error::NotEmpty { found, .. }) if found == ours => {}
                    r => wrong.push(format!("{}: install mode gave {r:?}", case.name)),
                }
                if case.name == "lvm2-pv" {
                    cli_refuses_then_plans_the_wipe(&fx, &img, &b.dir);
                }
                assert_eq!(fingerprint(&img), before, "{}: a refusal wrote", case.name);
                let mut o = opts.clone();
                o.wipe = true;
                if let Err(e) = install(&o) {
                    wrong.push(format!("{}: --wipe did not install: {e}", case.name));
                    continue;
                }
            }
            (Ok(_), true) => {}
            (Ok(_), false) => {
                wrong.push(format!(
                    "{}: INSTALLED WITHOUT --wipe over {want:?} (blkid {found:?})",
                    case.name
                ));
                continue;
            }
            (Err(e), _) => {
                wrong.push(format!("{}: unexpected error: {e}", case.name));
                continue;
            }
        }
        assert_eq!(
            booted_version(&img, &[&b]),
            Ok("1.0.0".into()),
            "{}",
            case.name
        );
        // What the install leaves: the new GPT and nothing of the old data
        // that blkid (and so udev, LVM, mdadm auto-assembly) could act on.
        let after = blkid(&img);
        if after != [("PTTYPE".to_string(), "gpt".to_string())] {
            wrong.push(format!(
                "{}: after the install blkid finds {after:?}, not only the new GPT",
                case.name
            ));
        }
    }
    println!("checked: {checked:#?}");
    assert!(wrong.is_empty(), "{}", wrong.join("\n"));
}
