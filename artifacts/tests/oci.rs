//! The OCI image layout writer, checked with skopeo (`inspect --raw`,
//! `copy oci:… dir:…`), sha256sum and date(1).

use std::collections::BTreeMap;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

use artifacts::oci::{self, OciError};

const EPOCH: u64 = 1_700_000_000;
const TAG: &str = "cairn-1.2.3";
/// The caller's types (the golden bytes below are cairn's bundle).
const ART: &str = "application/vnd.cairn.bundle.v1";
const MEDIA_MANIFEST: &str = "application/vnd.cairn.manifest.v1+json";
const MEDIA_SIGNATURE: &str = "application/vnd.cairn.manifest.signature.v1";
const MEDIA_UKI: &str = "application/vnd.cairn.uki.v1";
const MEDIA_ROOTFS: &str = "application/vnd.cairn.rootfs.v1";
const MEDIA_BOOTLOADER: &str = "application/vnd.cairn.bootloader.v1";
const MEDIA_LAYOUT: &str = "application/vnd.cairn.layout.v1+json";

fn files() -> Vec<(&'static str, &'static str, usize)> {
    vec![
        ("manifest.json", MEDIA_MANIFEST, 300),
        ("manifest.json.sig", MEDIA_SIGNATURE, 64),
        ("uki.efi", MEDIA_UKI, 70_000),
        ("rootfs.img", MEDIA_ROOTFS, 3 * 1024 * 1024 + 17),
        ("systemd-bootx64.efi", MEDIA_BOOTLOADER, 0),
        ("layout.json", MEDIA_LAYOUT, 100),
    ]
}

fn content(i: usize, len: usize) -> Vec<u8> {
    (0..len)
        .map(|j| (j * 13 + i * 101 + j / 509) as u8)
        .collect()
}

struct Staged {
    list: Vec<(String, PathBuf, String)>,
}

impl Staged {
    fn new(dir: &Path) -> Staged {
        fs::create_dir_all(dir).unwrap();
        let list = files()
            .into_iter()
            .enumerate()
            .map(|(i, (n, m, len))| {
                let p = dir.join(format!("in-{n}"));
                fs::write(&p, content(i, len)).unwrap();
                (n.to_string(), p, m.to_string())
            })
            .collect();
        Staged { list }
    }
    fn refs(&self) -> Vec<(&str, &Path, &str)> {
        self.list
            .iter()
            .map(|(n, p, m)| (n.as_str(), p.as_path(), m.as_str()))
            .collect()
    }
}

fn annotations() -> BTreeMap<String, String> {
    BTreeMap::from([
        (
            "org.opencontainers.image.version".to_string(),
            "1.2.3".to_string(),
        ),
        ("dev.cairn.rootfs.roothash".to_string(), "ab".repeat(32)),
    ])
}

fn run(cmd: &mut Command) -> Vec<u8> {
    let out = cmd
        .output()
        .unwrap_or_else(|e| panic!("running {cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    out.stdout
}

fn sha256_hex(bytes: &[u8]) -> String {
    let mut c = Command::new("sha256sum")
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    std::io::Write::write_all(&mut c.stdin.take().unwrap(), bytes).unwrap();
    let out = c.wait_with_output().unwrap();
    String::from_utf8(out.stdout).unwrap()[..64].to_string()
}

fn write(dir: &Path) -> (PathBuf, Staged, oci::OciSummary) {
    let staged = Staged::new(&dir.join("in"));
    let out = dir.join("layout");
    let s = oci::write_layout(&out, TAG, ART, &staged.refs(), &annotations(), EPOCH).unwrap();
    (out, staged, s)
}

fn oci_ref(dir: &Path, tag: &str) -> String {
    format!("oci:{}:{tag}", dir.display())
}

#[test]
fn skopeo_inspect_returns_our_manifest() {
    let t = tempfile::tempdir().unwrap();
    let (dir, staged, summary) = write(t.path());
    let raw = run(Command::new("skopeo").args(["inspect", "--raw", &oci_ref(&dir, TAG)]));
    assert_eq!(
        format!("sha256:{}", sha256_hex(&raw)),
        summary.manifest_digest
    );
    assert_eq!(raw.len() as u64, summary.manifest_size);
    let text = String::from_utf8(raw.clone()).unwrap();
    assert!(
        text.starts_with(
            r#"{"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json","artifactType":"application/vnd.cairn.bundle.v1","config":{"mediaType":"application/vnd.oci.empty.v1+json","digest":"sha256:44136fa355b3678a1146ad16f7e8649e94fb4fc21fe77e8310c060f61caaff8a","size":2},"layers":[{"mediaType":"application/vnd.cairn.manifest.v1+json","digest":"sha256:"#
        ),
        "{text}"
    );
    assert!(
        !text.contains('\n') && !text.contains(": "),
        "compact: {text}"
    );

    let m: serde_json::Value = serde_json::from_slice(&raw).unwrap();
    let layers = m["layers"].as_array().unwrap();
    assert_eq!(layers.len(), staged.list.len());
    for (l, (name, path, media)) in layers.iter().zip(&staged.list) {
        let bytes = fs::read(path).unwrap();
        assert_eq!(l["mediaType"], media.as_str());
        assert_eq!(l["digest"], format!("sha256:{}", sha256_hex(&bytes)));
        assert_eq!(l["size"], bytes.len() as u64);
        assert_eq!(l["annotations"][oci::ANNOTATION_TITLE], name.as_str());
    }
    let date =
        run(Command::new("date").args(["-u", "-d", &format!("@{EPOCH}"), "+%Y-%m-%dT%H:%M:%SZ"]));
    let a = &m["annotations"];
    assert_eq!(
        a[oci::ANNOTATION_CREATED],
        String::from_utf8(date).unwrap().trim()
    );
    assert_eq!(a["org.opencontainers.image.version"], "1.2.3");
    assert_eq!(a["dev.cairn.rootfs.roothash"], "ab".repeat(32));
    assert_eq!(a.as_object().unwrap().len(), 3);

    // Another tag is not there.
    let out = Command::new("skopeo")
        .args(["inspect", "--raw", &oci_ref(&dir, "other")])
        .output()
        .unwrap();
    assert!(!out.status.success());
}

#[test]
fn layout_files_are_well_formed() {
    let t = tempfile::tempdir().unwrap();
    let (dir, _, summary) = write(t.path());
    assert_eq!(
        fs::read_to_string(dir.join("oci-layout")).unwrap(),
        r#"{"imageLayoutVersion":"1.0.0"}"#
    );
    let index = fs::read_to_string(dir.join("index.json")).unwrap();
    assert_eq!(
        index,
        format!(
            r#"{{"schemaVersion":2,"mediaType":"application/vnd.oci.image.index.v1+json","manifests":[{{"mediaType":"application/vnd.oci.image.manifest.v1+json","artifactType":"application/vnd.cairn.bundle.v1","digest":"{}","size":{},"annotations":{{"org.opencontainers.image.ref.name":"{TAG}"}}}}]}}"#,
            summary.manifest_digest, summary.manifest_size
        )
    );
    let mut top: Vec<String> = fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    top.sort();
    assert_eq!(top, ["blobs", "index.json", "oci-layout"]);
    // Every blob is named by its content hash; nothing temporary is left.
    let mut blobs = 0;
    for e in fs::read_dir(dir.join("blobs/sha256")).unwrap() {
        let e = e.unwrap();
        let name = e.file_name().into_string().unwrap();
        assert_eq!(sha256_hex(&fs::read(e.path()).unwrap()), name);
        blobs += 1;
    }
    // 6 layers + empty config + manifest
    assert_eq!(blobs, 8);
}

#[test]
fn skopeo_copies_to_dir_with_right_digests() {
    let t = tempfile::tempdir().unwrap();
    let (dir, staged, summary) = write(t.path());
    let out = t.path().join("copied");
    run(Command::new("skopeo").args([
        "copy",
        "--quiet",
        &oci_ref(&dir, TAG),
        &format!("dir:{}", out.display()),
    ]));
    let manifest = fs::read(out.join("manifest.json")).unwrap();
    assert_eq!(
        format!("sha256:{}", sha256_hex(&manifest)),
        summary.manifest_digest
    );
    for (i, (l, (name, path, _))) in summary.layers.iter().zip(&staged.list).enumerate() {
        let hex = l.digest.strip_prefix("sha256:").unwrap();
        let copied = fs::read(out.join(hex)).unwrap_or_else(|e| panic!("{name}: blob {hex}: {e}"));
        assert_eq!(sha256_hex(&copied), hex, "{name}");
        assert_eq!(copied, fs::read(path).unwrap(), "{name}");
        assert_eq!(copied, content(i, files()[i].2), "{name}");
    }
}

fn tree(dir: &Path) -> BTreeMap<PathBuf, Vec<u8>> {
    let mut m = BTreeMap::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in fs::read_dir(&d).unwrap() {
            let p = e.unwrap().path();
            if p.is_dir() {
                stack.push(p);
            } else {
                m.insert(
                    p.strip_prefix(dir).unwrap().to_path_buf(),
                    fs::read(&p).unwrap(),
                );
            }
        }
    }
    m
}

#[test]
fn reproducible_across_directories() {
    let a = tempfile::tempdir().unwrap();
    let b = tempfile::tempdir().unwrap();
    let (da, _, sa) = write(&a.path().join("x"));
    let (db, _, sb) = write(&b.path().join("y/z"));
    assert_eq!(sa, sb);
    let (ta, tb) = (tree(&da), tree(&db));
    assert_eq!(ta.len(), 10);
    assert_eq!(ta, tb);
    // The epoch reaches the manifest.
    let staged = Staged::new(&a.path().join("in2"));
    let s = oci::write_layout(
        &a.path().join("l2"),
        TAG,
        ART,
        &staged.refs(),
        &annotations(),
        EPOCH + 1,
    )
    .unwrap();
    assert_ne!(s.manifest_digest, sa.manifest_digest);
}

#[test]
fn rfc3339_matches_date() {
    for epoch in [
        0,
        951_782_400,
        1_709_164_799,
        4_102_444_800,
        253_402_300_799,
    ] {
        let date = run(Command::new("date").args([
            "-u",
            "-d",
            &format!("@{epoch}"),
            "+%Y-%m-%dT%H:%M:%SZ",
        ]));
        assert_eq!(
            oci::rfc3339(epoch).unwrap(),
            String::from_utf8(date).unwrap().trim(),
            "{epoch}"
        );
    }
    assert!(matches!(
        oci::rfc3339(253_402_300_800),
        Err(OciError::EpochOutOfRange { .. })
    ));
}

#[test]
fn tag_grammar() {
    for good in [
        "1.2.3",
        "cairn-1.2.3",
        "v1_rc1",
        "a--b",
        "reg.example/cairn:1.2",
        "a@b+c",
        "A9",
    ] {
        oci::check_ref_name(good).unwrap_or_else(|e| panic!("{good}: {e}"));
    }
    for bad in [
        "", "-a", "a-", "a/", "/a", "a//b", "a b", "a---b", "a..b", "ä", "a\nb", "a:", "latest!",
    ] {
        let e = oci::check_ref_name(bad).unwrap_err();
        assert!(
            matches!(&e, OciError::BadTag { tag, .. } if tag == bad),
            "{bad:?}: {e}"
        );
    }
}

#[test]
fn refuses_bad_input() {
    let t = tempfile::tempdir().unwrap();
    let staged = Staged::new(&t.path().join("in"));
    let ann = annotations();
    let out = t.path().join("l");

    let e = oci::write_layout(&out, "bad tag", ART, &staged.refs(), &ann, EPOCH).unwrap_err();
    assert!(matches!(e, OciError::BadTag { .. }), "{e}");
    assert!(!out.exists(), "nothing written for a bad tag");

    let missing = t.path().join("missing");
    let mut files = staged.refs();
    files[3].1 = &missing;
    let e = oci::write_layout(&out, TAG, ART, &files, &ann, EPOCH).unwrap_err();
    assert!(
        matches!(&e, OciError::Read { path, .. } if *path == missing),
        "{e}"
    );
    assert!(
        !out.join("index.json").exists(),
        "no index for an incomplete layout"
    );

    let out2 = t.path().join("l2");
    let mut files = staged.refs();
    files[1].2 = "not a media type";
    let e = oci::write_layout(&out2, TAG, ART, &files, &ann, EPOCH).unwrap_err();
    assert!(
        matches!(&e, OciError::BadMediaType { name, .. } if name == "manifest.json.sig"),
        "{e}"
    );

    let mut files = staged.refs();
    files[2].0 = "manifest.json";
    let e = oci::write_layout(&out2, TAG, ART, &files, &ann, EPOCH).unwrap_err();
    assert!(matches!(e, OciError::DuplicateName { .. }), "{e}");

    let mut files = staged.refs();
    files[2].0 = "../uki.efi";
    let e = oci::write_layout(&out2, TAG, ART, &files, &ann, EPOCH).unwrap_err();
    assert!(matches!(e, OciError::BadName { .. }), "{e}");

    let mut files = staged.refs();
    files[2].1 = t.path();
    let e = oci::write_layout(&out2, TAG, ART, &files, &ann, EPOCH).unwrap_err();
    assert!(matches!(e, OciError::NotAFile { .. }), "{e}");

    let mut bad_ann = ann.clone();
    bad_ann.insert(oci::ANNOTATION_CREATED.to_string(), "yesterday".to_string());
    let e = oci::write_layout(
        &t.path().join("l3"),
        TAG,
        ART,
        &staged.refs(),
        &bad_ann,
        EPOCH,
    )
    .unwrap_err();
    assert!(matches!(e, OciError::BadAnnotation { .. }), "{e}");

    // A used directory is refused rather than mixed with stale blobs.
    let used = t.path().join("used");
    oci::write_layout(&used, TAG, ART, &staged.refs(), &ann, EPOCH).unwrap();
    let e = oci::write_layout(&used, TAG, ART, &staged.refs(), &ann, EPOCH).unwrap_err();
    assert!(matches!(e, OciError::NotEmpty { .. }), "{e}");
}

#[test]
fn tag_errors_name_the_character() {
    let e = oci::check_ref_name("v1/ä").unwrap_err().to_string();
    assert!(e.contains("'ä' at byte 3"), "{e}");
    let e = oci::check_ref_name("v1 x").unwrap_err().to_string();
    assert!(e.contains("' ' at byte 2"), "{e}");
}
