//! Cloud image writers checked with qemu-img (qcow2, vpc, vmdk), GNU tar and
//! an independent footer checksum; every writer also gets reproducibility
//! and bad-input tests.

use std::fs;
use std::os::unix::fs::{FileExt, MetadataExt};
use std::path::{Path, PathBuf};
use std::process::Command;

use artifacts::cloud::qcow2::{Qcow2Compression, Qcow2Options};
use artifacts::cloud::{gce, qcow2, vhd, vmdk, CloudError, RawImage};
use sha2::{Digest, Sha256};

const MIB: u64 = 1 << 20;
/// Deliberately not a multiple of the 64 KiB cluster/grain or of 1 MiB, so
/// partial last chunks and VHD padding are exercised.
const RAW_SIZE: u64 = 96 * MIB + 37 * 512;
const EPOCH: u64 = 1_700_000_000;

fn run(cmd: &str, args: &[&str]) -> String {
    let out = Command::new(cmd)
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("{cmd} must be installed (ci/deps): {e}"));
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "{cmd} {args:?} failed:\n{text}");
    text
}

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

/// Incompressible but reproducible bytes.
fn noise(label: &str, len: usize) -> Vec<u8> {
    let mut out = Vec::with_capacity(len + 32);
    let mut i = 0u64;
    while out.len() < len {
        let mut h = Sha256::new();
        h.update(label.as_bytes());
        h.update(i.to_le_bytes());
        out.extend_from_slice(&h.finalize());
        i += 1;
    }
    out.truncate(len);
    out
}

/// A sparse GPT disk with data at the start, middle and end, a run of
/// explicitly written zeros (data extent, zero content), and a compressible
/// text region.
fn make_raw(dir: &Path) -> PathBuf {
    let path = dir.join("disk.img");
    let f = fs::File::create(&path).unwrap();
    f.set_len(RAW_SIZE).unwrap();
    f.write_all_at(&noise("start", 300 << 10), MIB).unwrap();
    f.write_all_at(&vec![0u8; 2 << 20], 10 * MIB).unwrap();
    f.write_all_at(&noise("middle", 700 << 10), 48 * MIB + 4096)
        .unwrap();
    let text = "cairn cloud image test line\n".repeat(20_000);
    f.write_all_at(text.as_bytes(), 60 * MIB).unwrap();
    f.write_all_at(&noise("end", 100 << 10), RAW_SIZE - (200 << 10))
        .unwrap();
    drop(f);
    run(
        "sgdisk",
        &[
            "-o",
            "-n",
            "1:2048:+20M",
            "-t",
            "1:ef00",
            "-n",
            "2:0:0",
            // sgdisk picks random GUIDs unless told.
            "-U",
            "8c9d1e6a-2f6b-4b8e-9a51-0c3a6f1d2e01",
            "-u",
            "1:8c9d1e6a-2f6b-4b8e-9a51-0c3a6f1d2e02",
            "-u",
            "2:8c9d1e6a-2f6b-4b8e-9a51-0c3a6f1d2e03",
            s(&path),
        ],
    );
    path
}

fn sha(path: &Path) -> String {
    hex::encode(Sha256::digest(fs::read(path).unwrap()))
}

fn allocated(path: &Path) -> u64 {
    fs::metadata(path).unwrap().blocks() * 512
}

fn assert_bad_inputs(convert: impl Fn(&Path, &Path) -> Result<(), CloudError>) {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("out");

    let missing = dir.path().join("missing.img");
    let err = convert(&missing, &out).unwrap_err();
    assert!(matches!(err, CloudError::Open { .. }), "{err:?}");
    assert!(err.to_string().contains("missing.img"), "{err}");

    let empty = dir.path().join("empty.img");
    fs::write(&empty, b"").unwrap();
    let err = convert(&empty, &out).unwrap_err();
    assert!(matches!(err, CloudError::EmptyInput { .. }), "{err:?}");
    assert!(err.to_string().contains("empty.img"), "{err}");

    let odd = dir.path().join("odd.img");
    fs::write(&odd, vec![1u8; 1000]).unwrap();
    let err = convert(&odd, &out).unwrap_err();
    assert!(
        matches!(err, CloudError::UnalignedSize { size: 1000, .. }),
        "{err:?}"
    );
    let msg = err.to_string();
    assert!(msg.contains("odd.img") && msg.contains("1000"), "{msg}");
}

fn assert_reproducible(ext: &str, convert: impl Fn(&Path, &Path)) {
    let a = tempfile::tempdir().unwrap();
    let b = tempfile::tempdir().unwrap();
    let (ra, rb) = (make_raw(a.path()), make_raw(b.path()));
    let (oa, ob) = (a.path().join(ext), b.path().join(ext));
    convert(&ra, &oa);
    convert(&rb, &ob);
    let (x, y) = (fs::read(&oa).unwrap(), fs::read(&ob).unwrap());
    assert!(!x.is_empty());
    assert!(x == y, "{ext}: two runs differ");
}

#[test]
fn raw_reader_finds_data_extents() {
    let dir = tempfile::tempdir().unwrap();
    let raw = make_raw(dir.path());
    let img = RawImage::open(&raw).unwrap();
    let extents = img.data_extents().unwrap();
    let data: u64 = extents.iter().map(|(a, b)| b - a).sum();
    assert!(extents.len() >= 4, "{extents:?}");
    assert!(data < RAW_SIZE / 4, "{data} bytes of data in {extents:?}");
    // The 2 MiB of written zeros is data to the filesystem but no chunk.
    let mut chunks = Vec::new();
    img.for_each_chunk(MIB, |off, c| {
        assert_eq!(c.len() as u64, MIB);
        chunks.push(off);
        Ok(())
    })
    .unwrap();
    assert!(!chunks.contains(&(10 * MIB)) && !chunks.contains(&(11 * MIB)));
    for bad in [0, 1000] {
        let err = img.for_each_chunk(bad, |_, _| Ok(())).unwrap_err();
        assert!(matches!(err, CloudError::BadChunkSize { chunk_size } if chunk_size == bad));
    }
    assert!(chunks.contains(&0) && chunks.contains(&(48 * MIB)) && chunks.contains(&(96 * MIB)));
}

// ---------------------------------------------------------------- qcow2

fn qcow2_checked(cluster_size: u64, compression: Qcow2Compression) -> qcow2::Qcow2Summary {
    let dir = tempfile::tempdir().unwrap();
    let raw = make_raw(dir.path());
    let out = dir.path().join("disk.qcow2");
    let opts = Qcow2Options {
        cluster_size,
        compression,
    };
    let sum = qcow2::convert(&raw, &out, &opts).unwrap();
    assert_eq!(sum.virtual_size, RAW_SIZE);
    assert_eq!(fs::metadata(&out).unwrap().len(), sum.file_size);

    run("qemu-img", &["check", "-f", "qcow2", s(&out)]);
    let cmp = run(
        "qemu-img",
        &["compare", "-f", "raw", "-F", "qcow2", s(&raw), s(&out)],
    );
    assert!(cmp.contains("Images are identical"), "{cmp}");
    let info = run(
        "qemu-img",
        &["info", "--output=json", "-f", "qcow2", s(&out)],
    );
    let info: serde_json::Value = serde_json::from_str(&info).unwrap();
    assert_eq!(info["format"], "qcow2");
    assert_eq!(info["virtual-size"], RAW_SIZE);
    assert_eq!(info["cluster-size"], cluster_size);
    // compat 1.1 is how qemu names qcow2 version 3.
    assert_eq!(info["format-specific"]["data"]["compat"], "1.1");
    assert_eq!(info["format-specific"]["data"]["refcount-bits"], 16);
    let ctype = match compression {
        Qcow2Compression::None => "zlib", // qemu's name for "no type byte"
        Qcow2Compression::Zstd { .. } => "zstd",
    };
    assert_eq!(info["format-specific"]["data"]["compression-type"], ctype);
    // About 2.1 MiB of non-zero data in a 96 MiB disk.
    assert!(sum.file_size < 4 * MIB, "{sum:?}");
    sum
}

#[test]
fn qcow2_passes_qemu_img() {
    qcow2_checked(65536, Qcow2Compression::None);
}

#[test]
fn qcow2_small_clusters_need_many_tables() {
    // 512-byte clusters: 64 entries per L2 table and 256 refcounts per
    // block, so the data spans dozens of L2 tables and refcount blocks.
    qcow2_checked(512, Qcow2Compression::None);
}

#[test]
fn qcow2_zstd_clusters_pass_qemu_img_and_shrink() {
    let plain = qcow2_checked(65536, Qcow2Compression::None);
    let packed = qcow2_checked(65536, Qcow2Compression::Zstd { level: 3 });
    // The text region and GPT compress; the noise is stored as is.
    assert!(
        packed.file_size < plain.file_size,
        "{plain:?} vs {packed:?}"
    );
    // Small clusters put several compressed clusters in one host cluster.
    qcow2_checked(512, Qcow2Compression::Zstd { level: 3 });
}

#[test]
fn qcow2_reproducible() {
    assert_reproducible("disk.qcow2", |raw, out| {
        qcow2::convert(raw, out, &Qcow2Options::default()).unwrap();
    });
    assert_reproducible("disk.qcow2", |raw, out| {
        let opts = Qcow2Options {
            compression: Qcow2Compression::Zstd { level: 19 },
            ..Default::default()
        };
        qcow2::convert(raw, out, &opts).unwrap();
    });
}

#[test]
fn qcow2_bad_input() {
    assert_bad_inputs(|raw, out| qcow2::convert(raw, out, &Default::default()).map(|_| ()));
    let dir = tempfile::tempdir().unwrap();
    let raw = make_raw(dir.path());
    for cluster_size in [0, 256, 65535, 4 << 20] {
        let err = qcow2::convert(
            &raw,
            &dir.path().join("x"),
            &Qcow2Options {
                cluster_size,
                ..Default::default()
            },
        )
        .unwrap_err();
        assert!(
            matches!(err, CloudError::BadClusterSize { cluster_size: c } if c == cluster_size),
            "{err:?}"
        );
    }
    let opts = Qcow2Options {
        compression: Qcow2Compression::Zstd { level: 0 },
        ..Default::default()
    };
    let err = qcow2::convert(&raw, &dir.path().join("x"), &opts).unwrap_err();
    assert!(
        matches!(err, CloudError::BadCompressionLevel { level: 0 }),
        "{err:?}"
    );
}

// ---------------------------------------------------------------- VHD

/// The footer checksum recomputed here from the spec, not via the library.
fn footer_checksum_ok(footer: &[u8]) -> bool {
    let mut sum = 0u32;
    for (i, &b) in footer.iter().enumerate() {
        if !(64..68).contains(&i) {
            sum = sum.wrapping_add(b as u32);
        }
    }
    u32::from_be_bytes(footer[64..68].try_into().unwrap()) == !sum
}

#[test]
fn vhd_passes_qemu_img() {
    let dir = tempfile::tempdir().unwrap();
    let raw = make_raw(dir.path());
    let out = dir.path().join("disk.vhd");
    let sum = vhd::convert(&raw, &out, EPOCH, b"seed").unwrap();
    let padded = 97 * MIB;
    assert_eq!(sum.virtual_size, padded);
    let len = fs::metadata(&out).unwrap().len();
    assert_eq!(len, padded + 512);
    assert_eq!(len % MIB, 512);
    // Holes stay holes: only the data and the footer take space.
    assert!(allocated(&out) < 8 * MIB, "{} allocated", allocated(&out));

    let info = run("qemu-img", &["info", "--output=json", "-f", "vpc", s(&out)]);
    let info: serde_json::Value = serde_json::from_str(&info).unwrap();
    assert_eq!(info["virtual-size"], padded);
    // compare reads the raw's missing tail as zeros and accepts the padding
    // only because it is zero.
    let cmp = run(
        "qemu-img",
        &["compare", "-f", "vpc", "-F", "raw", s(&out), s(&raw)],
    );
    assert!(cmp.contains("Images are identical"), "{cmp}");

    let bytes = fs::read(&out).unwrap();
    let footer = &bytes[bytes.len() - 512..];
    assert!(footer_checksum_ok(footer));
    assert_eq!(&footer[0..8], b"conectix");
    assert_eq!(u32::from_be_bytes(footer[8..12].try_into().unwrap()), 2);
    assert_eq!(
        u32::from_be_bytes(footer[12..16].try_into().unwrap()),
        0x0001_0000
    );
    assert_eq!(&footer[16..24], &[0xff; 8]);
    assert_eq!(
        u32::from_be_bytes(footer[24..28].try_into().unwrap()) as u64,
        EPOCH - 946_684_800
    );
    assert_eq!(
        u64::from_be_bytes(footer[40..48].try_into().unwrap()),
        padded
    );
    assert_eq!(
        u64::from_be_bytes(footer[48..56].try_into().unwrap()),
        padded
    );
    assert_eq!(u32::from_be_bytes(footer[60..64].try_into().unwrap()), 2);
    assert_eq!(&footer[68..84], &sum.unique_id);
    // Data outside the footer is the raw image, byte for byte.
    assert_eq!(&bytes[..RAW_SIZE as usize], &fs::read(&raw).unwrap()[..]);

    // qemu-img (without force_size) grows a fixed VHD to its CHS geometry
    // by the spec's algorithm; ours must give the same CHS for that size.
    let reference = dir.path().join("ref.vhd");
    run(
        "qemu-img",
        &[
            "create",
            "-q",
            "-f",
            "vpc",
            "-o",
            "subformat=fixed",
            s(&reference),
            &padded.to_string(),
        ],
    );
    let r = fs::read(&reference).unwrap();
    let rf = &r[r.len() - 512..];
    let ref_size = u64::from_be_bytes(rf[48..56].try_into().unwrap());
    let (c, h, sp) = vhd::chs(ref_size / 512);
    let ours = [(c >> 8) as u8, c as u8, h, sp];
    assert_eq!(
        &ours,
        &rf[56..60],
        "CHS for {ref_size} bytes differs from qemu-img"
    );
    assert_eq!(&footer[56..60], &[3, 205, 12, 17]);
}

#[test]
fn vhd_seed_changes_only_the_unique_id() {
    let dir = tempfile::tempdir().unwrap();
    let raw = make_raw(dir.path());
    let (a, b) = (dir.path().join("a.vhd"), dir.path().join("b.vhd"));
    let sa = vhd::convert(&raw, &a, EPOCH, b"one").unwrap();
    let sb = vhd::convert(&raw, &b, EPOCH, b"two").unwrap();
    assert_ne!(sa.unique_id, sb.unique_id);
    let (x, y) = (fs::read(&a).unwrap(), fs::read(&b).unwrap());
    let differing: Vec<usize> = (0..x.len()).filter(|&i| x[i] != y[i]).collect();
    let footer = x.len() - 512;
    assert!(differing
        .iter()
        .all(|&i| (footer + 64..footer + 84).contains(&i)));
}

#[test]
fn vhd_reproducible() {
    assert_reproducible("disk.vhd", |raw, out| {
        vhd::convert(raw, out, EPOCH, b"seed").unwrap();
    });
}

#[test]
fn vhd_bad_input() {
    assert_bad_inputs(|raw, out| vhd::convert(raw, out, EPOCH, b"seed").map(|_| ()));
    let dir = tempfile::tempdir().unwrap();
    let raw = make_raw(dir.path());
    let err = vhd::convert(&raw, &dir.path().join("x.vhd"), 946_684_799, b"s").unwrap_err();
    assert!(matches!(err, CloudError::EpochOutOfRange { .. }), "{err:?}");
}

// ---------------------------------------------------------------- VMDK

#[test]
fn vmdk_passes_qemu_img() {
    let dir = tempfile::tempdir().unwrap();
    let raw = make_raw(dir.path());
    let out = dir.path().join("disk.vmdk");
    let sum = vmdk::convert(&raw, &out, b"seed").unwrap();
    assert_eq!(sum.capacity_sectors * 512, RAW_SIZE);

    run("qemu-img", &["check", "-f", "vmdk", s(&out)]);
    let cmp = run(
        "qemu-img",
        &["compare", "-f", "raw", "-F", "vmdk", s(&raw), s(&out)],
    );
    assert!(cmp.contains("Images are identical"), "{cmp}");
    let info = run("qemu-img", &["info", "-f", "vmdk", s(&out)]);
    assert!(info.contains("create type: streamOptimized"), "{info}");
    assert!(info.contains(&format!("({RAW_SIZE} bytes)")), "{info}");
    let text = fs::read(&out).unwrap();
    let desc = String::from_utf8_lossy(&text[512..512 + 20 * 512]);
    assert!(desc.contains(&format!("CID={:08x}", sum.cid)), "{desc}");
    // The noise does not compress; text and GPT do, and zeros are absent.
    assert!(sum.file_size < 2 * MIB, "{sum:?}");
}

#[test]
fn vmdk_writes_every_grain_table() {
    // 200 MiB with data only in the first and last grain table's range
    // (32 MiB each), so the four tables between hold no grains.
    let dir = tempfile::tempdir().unwrap();
    let raw = dir.path().join("gappy.img");
    let size = 200 * MIB;
    let f = fs::File::create(&raw).unwrap();
    f.set_len(size).unwrap();
    f.write_all_at(&noise("a", 4096), 0).unwrap();
    f.write_all_at(&noise("b", 4096), size - 4096).unwrap();
    drop(f);
    let out = dir.path().join("gappy.vmdk");
    let sum = vmdk::convert(&raw, &out, b"seed").unwrap();
    assert_eq!(sum.grains, 2);
    run("qemu-img", &["check", "-f", "vmdk", s(&out)]);
    let cmp = run(
        "qemu-img",
        &["compare", "-f", "raw", "-F", "vmdk", s(&raw), s(&out)],
    );
    assert!(cmp.contains("Images are identical"), "{cmp}");

    // Footer (second-to-last sector) -> grain directory -> tables, each
    // table behind a grain-table marker (type 1, 4 sectors).
    let b = fs::read(&out).unwrap();
    let le64 = |o: usize| u64::from_le_bytes(b[o..o + 8].try_into().unwrap());
    let le32 = |o: usize| u32::from_le_bytes(b[o..o + 4].try_into().unwrap());
    let footer = b.len() - 1024;
    assert_eq!(&b[footer..footer + 4], b"KDMV");
    assert_eq!(le32(footer - 512 + 12), 3, "footer marker type");
    assert_eq!(le32(b.len() - 512 + 12), 0, "end-of-stream marker");
    assert_eq!(le64(56), u64::MAX, "header gdOffset must be GD_AT_END");
    let gd = le64(footer + 56) as usize * 512;
    assert_eq!(le32(gd - 512 + 12), 2, "grain directory marker type");
    let tables: Vec<usize> = (0..7).map(|i| le32(gd + 4 * i) as usize * 512).collect();
    assert!(tables.iter().all(|&t| t != 0), "{tables:?}");
    for &t in &tables {
        assert_eq!(le32(t - 512 + 12), 1, "grain table marker type");
        assert_eq!(le64(t - 512), 4, "grain table marker size");
    }
}

#[test]
fn vmdk_seed_sets_cid() {
    assert_ne!(vmdk::cid(b"one"), vmdk::cid(b"two"));
    assert_eq!(vmdk::cid(b"one"), vmdk::cid(b"one"));
}

#[test]
fn vmdk_reproducible() {
    assert_reproducible("disk.vmdk", |raw, out| {
        vmdk::convert(raw, out, b"seed").unwrap();
    });
}

#[test]
fn vmdk_bad_input() {
    assert_bad_inputs(|raw, out| vmdk::convert(raw, out, b"seed").map(|_| ()));
}

// ---------------------------------------------------------------- GCE

/// Python's tarfile as a second, independent reader: member names, real
/// size, whether it is sparse, and the sha256 of the member's content.
fn python_tar(path: &Path) -> String {
    run(
        "python3",
        &[
            "-c",
            "import tarfile, hashlib, sys\n\
             t = tarfile.open(sys.argv[1])\n\
             m = t.getmembers()\n\
             h = hashlib.sha256()\n\
             f = t.extractfile(m[0])\n\
             for b in iter(lambda: f.read(1 << 20), b''): h.update(b)\n\
             print([x.name for x in m], m[0].size, m[0].issparse(), h.hexdigest())",
            s(path),
        ],
    )
}

type GceConvert = fn(&Path, &Path, u64) -> Result<gce::GceSummary, CloudError>;

fn gce_checked(raw: &Path, size: u64, convert: GceConvert) -> gce::GceSummary {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("image.tar.gz");
    let sum = convert(raw, &out, EPOCH).unwrap();
    assert_eq!(sum.tar_size % 10240, 0);
    assert_eq!(fs::metadata(&out).unwrap().len(), sum.file_size);

    let listing = run("tar", &["--numeric-owner", "-tvzf", s(&out)]);
    let lines: Vec<&str> = listing.lines().collect();
    assert_eq!(lines.len(), 1, "{listing}");
    let fields: Vec<&str> = lines[0].split_whitespace().collect();
    assert_eq!(fields[0], "-rw-r--r--");
    assert_eq!(fields[1], "0/0");
    assert_eq!(fields[2], size.to_string());
    assert_eq!(*fields.last().unwrap(), "disk.raw");

    let x = dir.path().join("x");
    fs::create_dir(&x).unwrap();
    run("tar", &["-xzf", s(&out), "-C", s(&x)]);
    let extracted = x.join("disk.raw");
    assert_eq!(fs::metadata(&extracted).unwrap().len(), size);
    assert_eq!(sha(&extracted), sha(raw));
    assert_eq!(fs::metadata(&extracted).unwrap().mtime() as u64, EPOCH);
    let py = python_tar(&out);
    assert!(py.starts_with(&format!("['disk.raw'] {size} ")), "{py}");
    assert!(py.trim_end().ends_with(&sha(raw)), "{py}");

    // gzip header: no mtime, no FNAME flag, Unix OS byte.
    let gz = fs::read(&out).unwrap();
    assert_eq!(&gz[0..3], &[0x1f, 0x8b, 8]);
    assert_eq!(gz[3] & 0x08, 0, "FNAME set");
    assert_eq!(&gz[4..8], &[0; 4]);
    assert_eq!(gz[9], 3);
    run("gzip", &["-t", s(&out)]);
    sum
}

#[test]
fn gce_sparse_tarball_holds_exactly_disk_raw() {
    let dir = tempfile::tempdir().unwrap();
    let raw = make_raw(dir.path());
    let sum = gce_checked(&raw, RAW_SIZE, gce::convert);
    // Only the non-zero chunks are in the tar (about 2 MiB).
    assert!(sum.tar_size < 4 * MIB, "{sum:?}");
}

#[test]
fn gce_plain_tarball_holds_exactly_disk_raw() {
    let dir = tempfile::tempdir().unwrap();
    let raw = make_raw(dir.path());
    let sum = gce_checked(&raw, RAW_SIZE, gce::convert_plain);
    assert!(sum.tar_size > RAW_SIZE, "{sum:?}");
}

#[test]
fn gce_sparse_map_spans_extension_blocks() {
    // 64 islands: 4 in the header, 21 per extension block, so three
    // extension blocks; the file also ends in a hole.
    let dir = tempfile::tempdir().unwrap();
    let raw = dir.path().join("islands.img");
    let size = 65 * MIB;
    let f = fs::File::create(&raw).unwrap();
    f.set_len(size).unwrap();
    for i in 0..64 {
        f.write_all_at(&noise(&format!("island{i}"), 3000), i * MIB + 4096)
            .unwrap();
    }
    drop(f);
    gce_checked(&raw, size, gce::convert);
}

#[test]
fn gce_headers_for_large_disks_use_base256() {
    let size = 10u64 << 30;
    let h = artifacts::tar::gnu_file_header("disk.raw", size, EPOCH).unwrap();
    assert_eq!(h[124], 0x80);
    assert_eq!(u64::from_be_bytes(h[128..136].try_into().unwrap()), size);
    assert!(artifacts::tar::gnu_file_header(&"x".repeat(101), 1, 0).is_none());
    assert!(artifacts::tar::gnu_sparse_headers(&"x".repeat(101), 1, &[], 0).is_none());

    // A sparse entry whose only data sits past 8 GiB: both GNU tar and
    // Python must read the real size and the map back.
    let dir = tempfile::tempdir().unwrap();
    let t = dir.path().join("h.tar");
    let mut bytes =
        artifacts::tar::gnu_sparse_headers("disk.raw", size, &[(9 << 30, 512)], EPOCH).unwrap();
    bytes.extend_from_slice(&[7u8; 512]);
    bytes.resize(bytes.len() + 1024, 0);
    fs::write(&t, &bytes).unwrap();
    let listing = run("tar", &["-tvf", s(&t)]);
    assert!(listing.contains(&size.to_string()), "{listing}");
    let py = run(
        "python3",
        &[
            "-c",
            "import tarfile, sys\nm = tarfile.open(sys.argv[1]).getmembers()[0]\nprint(m.size, m.sparse)",
            s(&t),
        ],
    );
    // Python lists the header's unused slots as (0, 0) too.
    let map = format!("{size} [({}, 512), ({size}, 0)", 9u64 << 30);
    assert!(py.starts_with(&map), "{py}");
    let x = dir.path().join("x");
    fs::create_dir(&x).unwrap();
    run("tar", &["-xf", s(&t), "-C", s(&x)]);
    let f = fs::File::open(x.join("disk.raw")).unwrap();
    assert_eq!(f.metadata().unwrap().len(), size);
    let mut sector = [1u8; 512];
    f.read_exact_at(&mut sector, 9 << 30).unwrap();
    assert_eq!(sector, [7u8; 512]);
    f.read_exact_at(&mut sector, 0).unwrap();
    assert_eq!(sector, [0u8; 512]);
}

#[test]
fn gce_reproducible() {
    assert_reproducible("image.tar.gz", |raw, out| {
        gce::convert(raw, out, EPOCH).unwrap();
    });
    assert_reproducible("image.tar.gz", |raw, out| {
        gce::convert_plain(raw, out, EPOCH).unwrap();
    });
}

#[test]
fn gce_bad_input() {
    assert_bad_inputs(|raw, out| gce::convert(raw, out, EPOCH).map(|_| ()));
    assert_bad_inputs(|raw, out| gce::convert_plain(raw, out, EPOCH).map(|_| ()));
}

#[test]
fn output_in_missing_directory_names_the_path() {
    let dir = tempfile::tempdir().unwrap();
    let raw = make_raw(dir.path());
    let out = dir.path().join("nope").join("disk.qcow2");
    let err = qcow2::convert(&raw, &out, &Default::default()).unwrap_err();
    assert!(matches!(err, CloudError::Create { .. }), "{err:?}");
    assert!(err.to_string().contains("nope"), "{err}");
}
