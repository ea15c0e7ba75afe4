//! `cairn push` / `cairn pull` against a real registry (Debian's
//! `docker-registry`, distribution 2.8) started per test on a free loopback
//! port with its own storage directory, and `skopeo` as the independent
//! client. The release is the default image's (`$CAIRN_E2E_OUT`, else
//! `<repo>/out`, as `cairn build` left it; its key `$CAIRN_E2E_PUBKEY`, else
//! the development key), re-signed or re-annotated here where a test needs
//! a bad one.

use std::collections::BTreeMap;
use std::fs;
use std::io::{Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use contract::bundle::{self as names, oci};

// ---------------------------------------------------------------- fixtures

fn release_out() -> PathBuf {
    let out = std::env::var_os("CAIRN_E2E_OUT")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("../out"));
    assert!(
        out.join("oci/index.json").is_file(),
        "{} has no oci/index.json: run `cairn build --out out` first, or set CAIRN_E2E_OUT",
        out.display()
    );
    out
}

fn release_pubkey() -> PathBuf {
    let p = std::env::var_os("CAIRN_E2E_PUBKEY")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            PathBuf::from(std::env::var_os("HOME").expect("HOME"))
                .join(".local/share/cairn/dev-signing.key.pub")
        });
    assert!(
        p.is_file(),
        "{} is missing (set CAIRN_E2E_PUBKEY)",
        p.display()
    );
    p
}

/// The layers of `layout`'s one image manifest: title -> (digest hex, path).
fn layout_files(layout: &Path) -> BTreeMap<String, (String, PathBuf)> {
    let (_, image) = registry::push::read_layout_manifest(layout).unwrap();
    image
        .layers
        .iter()
        .map(|l| {
            let hex = l.digest["sha256:".len()..].to_string();
            let path = layout.join("blobs/sha256").join(&hex);
            (l.annotations[oci::ANNOTATION_TITLE].clone(), (hex, path))
        })
        .collect()
}

/// The bundle files of the real release, copied out of its OCI layout.
fn bundle_copy(dir: &Path) {
    fs::create_dir_all(dir).unwrap();
    for (name, (_, path)) in layout_files(&release_out().join("oci")) {
        fs::copy(path, dir.join(name)).unwrap();
    }
}

fn real_manifest() -> signing::Manifest {
    let out = release_out().join("oci");
    let files = layout_files(&out);
    let read = |n: &str| fs::read(&files[n].1).unwrap();
    let key = signing::PublicKey::load(&release_pubkey()).unwrap();
    signing::verify_manifest(&read(names::MANIFEST), &read(names::SIGNATURE), &[key]).unwrap()
}

/// The real release's bundle re-signed with a fresh key, as an OCI layout
/// (written the way `cairn build` writes one).
/// Returns the layout and the new key's public half (a PEM file).
fn resigned_layout(tmp: &Path) -> (PathBuf, PathBuf) {
    let bundle = tmp.join("resigned-bundle");
    bundle_copy(&bundle);
    let m = real_manifest();
    let meta = signing::ReleaseMeta {
        os_name: m.os_name.clone(),
        os_version: m.os_version.clone(),
        profile: m.profile.clone(),
        source_date_epoch: m.source_date_epoch,
        arch: m.arch.clone(),
        inputs: m.inputs.clone(),
        verity_root_hash: m.verity_root_hash.clone(),
    };
    let key = signing::PrivateKey::generate().unwrap();
    signing::sign_dir(&bundle, meta, &names::REQUIRED, &key).unwrap();
    let public = tmp.join("new.pub");
    fs::write(&public, key.public().to_pem()).unwrap();
    let layout = tmp.join("resigned-oci");
    builder::release::oci_layout(
        &bundle,
        &layout,
        &m.os_version.to_string(),
        m.verity_root_hash.as_deref().unwrap(),
        m.source_date_epoch,
    )
    .unwrap();
    (layout, public)
}

// ---------------------------------------------------------------- registry

use registry::testing::{free_port, Registry};

// ---------------------------------------------------------------- running

fn cairn(args: &[&str], env: &[(&str, &Path)]) -> Output {
    let mut c = Command::new(env!("CARGO_BIN_EXE_cairn"));
    c.args(args)
        .env("RUST_BACKTRACE", "0")
        .env("NO_COLOR", "1")
        // No credentials but the ones a test gives.
        .env("DOCKER_CONFIG", "/nonexistent/cairn-test");
    for (k, v) in env {
        c.env(k, v);
    }
    c.output().expect("running cairn")
}

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

fn text(o: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

fn ok(o: Output) -> String {
    let t = text(&o);
    assert!(o.status.success(), "cairn failed: {t}");
    t
}

fn failed(o: Output) -> String {
    let t = text(&o);
    assert!(!o.status.success(), "cairn should have failed: {t}");
    eprintln!("(expected) {t}");
    t
}

fn push(layout: &Path, reference: &str, extra: &[&str]) -> Output {
    let mut args = vec!["push", s(layout), reference, "--plain-http"];
    args.extend_from_slice(extra);
    cairn(&args, &[])
}

fn pull(reference: &str, dir: &Path, extra: &[&str]) -> Output {
    let key = release_pubkey();
    let mut args = vec!["pull", reference, s(dir), "--key", s(&key), "--plain-http"];
    args.extend_from_slice(extra);
    cairn(&args, &[])
}

fn skopeo(args: &[&str]) -> String {
    let o = Command::new("skopeo").args(args).output().expect("skopeo");
    assert!(o.status.success(), "skopeo {args:?}: {}", text(&o));
    String::from_utf8_lossy(&o.stdout).into_owned()
}

/// Every bundle file in `dir` is byte-identical to the release's, and the
/// installer's own bundle reader accepts the directory.
fn assert_is_the_release(dir: &Path) {
    for (name, (_, path)) in layout_files(&release_out().join("oci")) {
        assert_eq!(
            fs::read(dir.join(&name)).unwrap(),
            fs::read(path).unwrap(),
            "{name} differs"
        );
    }
    let key = signing::PublicKey::load(&release_pubkey()).unwrap();
    let bundle = installer::verify::open_verified(dir, &[key]).expect("installer accepts DIR");
    assert_eq!(bundle.version(), real_manifest().os_version.to_string());
}

fn dir_names(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> = fs::read_dir(dir)
        .map(|it| {
            it.map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default();
    v.sort();
    v
}

// ---------------------------------------------------------------- tests

#[test]
fn push_is_read_by_skopeo_and_pull_round_trips() {
    let reg = Registry::start();
    let out = release_out();
    let reference = format!("{}/cairn:1.0.0", reg.host());
    let t = ok(push(&out, &reference, &[]));
    assert!(t.contains("7 blobs uploaded"), "{t}");

    // skopeo, the independent client, reads what we pushed.
    let raw = skopeo(&[
        "inspect",
        "--tls-verify=false",
        "--raw",
        &format!("docker://{reference}"),
    ]);
    let v: serde_json::Value = serde_json::from_str(&raw).unwrap();
    assert_eq!(v["artifactType"], oci::ARTIFACT_TYPE);
    assert_eq!(v["mediaType"], oci::MANIFEST_MEDIA_TYPE);
    let layers: Vec<(String, String)> = v["layers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|l| {
            (
                l["annotations"][oci::ANNOTATION_TITLE]
                    .as_str()
                    .unwrap()
                    .to_string(),
                l["mediaType"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    let want: Vec<(String, String)> = names::FILES
        .iter()
        .map(|n| (n.to_string(), oci::media_type(n).unwrap().to_string()))
        .collect();
    assert_eq!(layers, want);
    // The registry holds the layout's manifest byte for byte.
    let (local, _) = registry::push::read_layout_manifest(&out.join("oci")).unwrap();
    assert_eq!(raw.as_bytes(), local.as_slice());
    // skopeo's non-raw inspect reads the tag list (it refuses to decode an
    // artifact's empty config as an image config in 1.9, so only --raw and
    // the tag listing are asserted).
    let tags = skopeo(&[
        "list-tags",
        "--tls-verify=false",
        &format!("docker://{}/cairn", reg.host()),
    ]);
    assert!(tags.contains("\"1.0.0\""), "{tags}");

    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("pulled");
    let t = ok(pull(&reference, &dir, &[]));
    assert!(t.contains("signed manifest verified"), "{t}");
    assert_is_the_release(&dir);
    assert_eq!(
        dir_names(&dir),
        [
            "layout.json",
            "manifest.json",
            "manifest.json.sig",
            "rootfs.img",
            "systemd-bootx64.efi",
            "uki.efi"
        ]
    );

    // A second push finds every blob there and uploads none.
    let t = ok(push(&out, &reference, &[]));
    assert!(
        t.contains("0 blobs uploaded (0 bytes), 7 already present"),
        "{t}"
    );
}

#[test]
fn pull_reads_what_skopeo_copied_from_the_layout() {
    let reg = Registry::start();
    let out = release_out();
    let reference = format!("{}/cairn:copied", reg.host());
    skopeo(&[
        "copy",
        "--dest-tls-verify=false",
        &format!("oci:{}:1.0.0", out.join("oci").display()),
        &format!("docker://{reference}"),
    ]);
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("pulled");
    ok(pull(&reference, &dir, &[]));
    assert_is_the_release(&dir);
    // skopeo kept the layout's manifest byte for byte, so its digest is the
    // layout's: pull by that digest too.
    let raw = skopeo(&[
        "inspect",
        "--tls-verify=false",
        "--raw",
        &format!("docker://{reference}"),
    ]);
    let (local, _) = registry::push::read_layout_manifest(&out.join("oci")).unwrap();
    assert_eq!(raw.as_bytes(), local.as_slice());
    let d = format!("sha256:{}", sha256_hex(&local));
    let dir2 = tmp.path().join("by-digest");
    ok(pull(&format!("{}/cairn@{d}", reg.host()), &dir2, &[]));
    assert_is_the_release(&dir2);
}

fn sha256_hex(b: &[u8]) -> String {
    use sha2::Digest;
    hex::encode(sha2::Sha256::digest(b))
}

#[test]
fn unreachable_registry_and_unknown_tag_are_named() {
    let tmp = tempfile::tempdir().unwrap();
    let port = free_port();
    let t = failed(pull(
        &format!("127.0.0.1:{port}/cairn:1.0.0"),
        &tmp.path().join("d"),
        &[],
    ));
    assert!(
        t.contains(&format!("registry 127.0.0.1:{port} is unreachable")),
        "{t}"
    );

    let reg = Registry::start();
    let t = failed(pull(
        &format!("{}/cairn:9.9.9", reg.host()),
        &tmp.path().join("d"),
        &[],
    ));
    assert!(
        t.contains(&format!(
            "registry {}: manifest 9.9.9 in cairn: not found (HTTP 404)",
            reg.host()
        )),
        "{t}"
    );
    assert!(!tmp.path().join("d").exists());
}

#[test]
fn htpasswd_registry_refuses_missing_and_wrong_credentials_and_takes_right_ones() {
    let reg = Registry::start_with(Some(("cairn", "s3cret")), None);
    let out = release_out();
    let reference = format!("{}/cairn:1.0.0", reg.host());
    let tmp = tempfile::tempdir().unwrap();

    let t = failed(push(&out, &reference, &[]));
    assert!(
        t.contains(&format!("registry {}: blob sha256:", reg.host()))
            && t.contains("in cairn: access denied (HTTP 401)")
            && t.contains(&format!("no credentials for {}", reg.host())),
        "{t}"
    );

    let config = |name: &str, user: &str, pass: &str| {
        let dir = tmp.path().join(name);
        fs::create_dir_all(&dir).unwrap();
        use base64::Engine;
        let auth = base64::engine::general_purpose::STANDARD.encode(format!("{user}:{pass}"));
        fs::write(
            dir.join("config.json"),
            format!(r#"{{"auths":{{"{}":{{"auth":"{auth}"}}}}}}"#, reg.host()),
        )
        .unwrap();
        dir
    };
    let wrong = config("wrong", "cairn", "guess");
    let t = failed(push(
        &out,
        &reference,
        &["--docker-config", s(&wrong.join("config.json"))],
    ));
    assert!(
        t.contains("access denied (HTTP 401)")
            && t.contains("credentials of user \"cairn\" refused"),
        "{t}"
    );

    // Right credentials, from $DOCKER_CONFIG for the push (in 1 MiB chunks:
    // PATCHes carry the auth too) and from --docker-config for the pull.
    let right = config("right", "cairn", "s3cret");
    let key = release_pubkey();
    let t = ok(cairn(
        &[
            "push",
            s(&out),
            &reference,
            "--plain-http",
            "--chunk-mib",
            "1",
        ],
        &[("DOCKER_CONFIG", &right)],
    ));
    assert!(t.contains("7 blobs uploaded"), "{t}");
    assert!(reg.log().contains("\"PATCH /v2/cairn/blobs/uploads/"));
    let dir = tmp.path().join("pulled");
    let t = failed(pull(&reference, &dir, &[]));
    assert!(
        t.contains("manifest 1.0.0 in cairn: access denied (HTTP 401)"),
        "{t}"
    );
    ok(cairn(
        &[
            "pull",
            &reference,
            s(&dir),
            "--key",
            s(&key),
            "--plain-http",
            "--docker-config",
            s(&right.join("config.json")),
        ],
        &[],
    ));
    assert_is_the_release(&dir);
}

#[test]
fn blob_tampered_in_registry_storage_is_refused_and_nothing_lands() {
    let reg = Registry::start();
    let out = release_out();
    let reference = format!("{}/cairn:1.0.0", reg.host());
    ok(push(&out, &reference, &[]));
    let files = layout_files(&out.join("oci"));
    let rootfs_hex = &files[names::ROOTFS].0;
    let data = reg.blob_data(rootfs_hex);
    let mut bytes = fs::read(&data).unwrap();
    let mid = bytes.len() / 2;
    bytes[mid] ^= 0xff;
    fs::write(&data, &bytes).unwrap();

    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("pulled");
    let t = failed(pull(&reference, &dir, &[]));
    assert!(
        t.contains(&format!(
            "registry {}: blob sha256:{rootfs_hex} in cairn: digest mismatch",
            reg.host()
        )),
        "{t}"
    );
    // Nothing renamed into DIR and no partial file left.
    assert_eq!(dir_names(&dir), Vec::<String>::new(), "{t}");
}

#[test]
fn manifest_signed_by_an_unknown_key_is_refused_before_any_artifact_blob() {
    let reg = Registry::start();
    let tmp = tempfile::tempdir().unwrap();
    let (layout, new_pub) = resigned_layout(tmp.path());
    let reference = format!("{}/cairn:1.0.0", reg.host());
    ok(push(&layout, &reference, &[]));
    let files = layout_files(&layout);

    let dir = tmp.path().join("pulled");
    let t = failed(pull(&reference, &dir, &[]));
    assert!(
        t.contains(&format!(
            "registry {}: release 1.0.0 in cairn: signed bundle manifest refused",
            reg.host()
        )) && t.contains("which is not trusted"),
        "{t}"
    );
    // The access log: the manifest and its signature were fetched, no
    // artifact blob was.
    for (name, (hex, _)) in &files {
        let want = usize::from(name == names::MANIFEST || name == names::SIGNATURE);
        assert_eq!(reg.blob_gets(hex), want, "{name}: {}", reg.log());
    }
    assert!(!dir.exists());

    // Control: the same log shows artifact GETs once the key is trusted.
    ok(cairn(
        &[
            "pull",
            &reference,
            s(&dir),
            "--key",
            s(&new_pub),
            "--plain-http",
        ],
        &[],
    ));
    for (name, (hex, _)) in &files {
        let want = if name == names::MANIFEST || name == names::SIGNATURE {
            2
        } else {
            1
        };
        assert_eq!(reg.blob_gets(hex), want, "{name}");
    }
}

#[test]
fn annotation_disagreeing_with_the_signed_manifest_is_refused() {
    let reg = Registry::start();
    let tmp = tempfile::tempdir().unwrap();
    let bundle = tmp.path().join("bundle");
    bundle_copy(&bundle);
    let m = real_manifest();
    let layout = tmp.path().join("oci");
    let paths: Vec<(String, PathBuf)> = names::FILES
        .iter()
        .map(|n| (n.to_string(), bundle.join(n)))
        .collect();
    let files: Vec<(&str, &Path, &str)> = paths
        .iter()
        .map(|(n, p)| (n.as_str(), p.as_path(), oci::media_type(n).unwrap()))
        .collect();
    let annotations = BTreeMap::from([
        (oci::ANNOTATION_VERSION.to_string(), "9.9.9".to_string()),
        (
            oci::ANNOTATION_ROOT_HASH.to_string(),
            m.verity_root_hash.clone().unwrap(),
        ),
    ]);
    artifacts::oci::write_layout(
        &layout,
        "9.9.9",
        oci::ARTIFACT_TYPE,
        &files,
        &annotations,
        m.source_date_epoch,
    )
    .unwrap();
    let reference = format!("{}/cairn:9.9.9", reg.host());
    ok(push(&layout, &reference, &[]));
    let dir = tmp.path().join("pulled");
    let t = failed(pull(&reference, &dir, &[]));
    assert!(
        t.contains(&format!(
            "annotation {} is \"9.9.9\" but the signed manifest says \"{}\"",
            oci::ANNOTATION_VERSION,
            m.os_version
        )),
        "{t}"
    );
    assert!(!dir.exists());
}

/// A loopback TCP proxy to `upstream` that, once it has passed `budget`
/// response bytes after a request line containing `cut`, closes the
/// connection, or with `stall` keeps it open and silent (a network that
/// stopped).
struct CuttingProxy {
    port: u16,
    stop: Arc<AtomicBool>,
}

impl CuttingProxy {
    fn start(upstream: u16, cut: String, budget: usize, stall: bool) -> CuttingProxy {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let stop = Arc::new(AtomicBool::new(false));
        let stop2 = stop.clone();
        std::thread::spawn(move || {
            for client in listener.incoming() {
                if stop2.load(Ordering::SeqCst) {
                    break;
                }
                let Ok(client) = client else { continue };
                let server = TcpStream::connect(("127.0.0.1", upstream)).unwrap();
                let armed = Arc::new(AtomicBool::new(false));
                let (mut c_in, mut s_out) =
                    (client.try_clone().unwrap(), server.try_clone().unwrap());
                let (armed_w, cut) = (armed.clone(), cut.clone());
                std::thread::spawn(move || {
                    let mut buf = [0u8; 16384];
                    while let Ok(n) = c_in.read(&mut buf) {
                        if n == 0 {
                            break;
                        }
                        if String::from_utf8_lossy(&buf[..n]).contains(&cut) {
                            armed_w.store(true, Ordering::SeqCst);
                        }
                        if s_out.write_all(&buf[..n]).is_err() {
                            break;
                        }
                    }
                    let _ = s_out.shutdown(Shutdown::Write);
                });
                let (mut s_in, mut c_out) = (server, client);
                std::thread::spawn(move || {
                    let mut buf = [0u8; 16384];
                    let mut passed = 0usize;
                    while let Ok(n) = s_in.read(&mut buf) {
                        if n == 0 {
                            break;
                        }
                        let mut n = n;
                        if armed.load(Ordering::SeqCst) {
                            n = n.min(budget - passed);
                            passed += n;
                        }
                        if c_out.write_all(&buf[..n]).is_err() {
                            break;
                        }
                        if armed.load(Ordering::SeqCst) && passed >= budget {
                            if stall {
                                std::thread::sleep(Duration::from_secs(30));
                            }
                            break;
                        }
                    }
                    let _ = c_out.shutdown(Shutdown::Both);
                    let _ = s_in.shutdown(Shutdown::Both);
                });
            }
        });
        CuttingProxy { port, stop }
    }
}

impl Drop for CuttingProxy {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        // Wake the accept loop so it sees `stop`.
        let _ = TcpStream::connect(("127.0.0.1", self.port));
    }
}

#[test]
fn truncated_stream_is_refused_and_nothing_lands() {
    let reg = Registry::start();
    let out = release_out();
    ok(push(&out, &format!("{}/cairn:1.0.0", reg.host()), &[]));
    let files = layout_files(&out.join("oci"));
    let (rootfs_hex, rootfs_path) = &files[names::ROOTFS];
    let size = fs::metadata(rootfs_path).unwrap().len();
    let proxy = CuttingProxy::start(
        reg.port,
        format!("GET /v2/cairn/blobs/sha256:{rootfs_hex}"),
        64 << 10,
        false,
    );
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("pulled");
    let t = failed(pull(
        &format!("127.0.0.1:{}/cairn:1.0.0", proxy.port),
        &dir,
        &[],
    ));
    assert!(
        t.contains(&format!(
            "registry 127.0.0.1:{}: blob sha256:{rootfs_hex} in cairn: truncated stream: ended after",
        proxy.port)) && t.contains(&format!("of {size} bytes")),
        "{t}"
    );
    assert_eq!(dir_names(&dir), Vec::<String>::new(), "{t}");
}

fn openssl(dir: &Path, args: &[&str]) {
    let o = Command::new("openssl")
        .args(args)
        .current_dir(dir)
        .output()
        .expect("openssl");
    assert!(o.status.success(), "openssl {args:?}: {}", text(&o));
}

/// A test CA (`ca.pem`) and a leaf for 127.0.0.1 it signed.
fn test_ca(dir: &Path) {
    let ec = [
        "-newkey",
        "ec",
        "-pkeyopt",
        "ec_paramgen_curve:prime256v1",
        "-nodes",
    ];
    let mut ca = vec!["req", "-x509", "-days", "2", "-subj", "/CN=cairn test CA"];
    ca.extend(ec);
    ca.extend(["-keyout", "ca.key", "-out", "ca.pem"]);
    openssl(dir, &ca);
    let mut csr = vec!["req", "-subj", "/CN=127.0.0.1"];
    csr.extend(ec);
    csr.extend(["-keyout", "leaf.key", "-out", "leaf.csr"]);
    openssl(dir, &csr);
    fs::write(
        dir.join("leaf.ext"),
        "subjectAltName=IP:127.0.0.1\nbasicConstraints=CA:FALSE\nextendedKeyUsage=serverAuth\n",
    )
    .unwrap();
    openssl(
        dir,
        &[
            "x509",
            "-req",
            "-in",
            "leaf.csr",
            "-CA",
            "ca.pem",
            "-CAkey",
            "ca.key",
            "-CAcreateserial",
            "-days",
            "2",
            "-extfile",
            "leaf.ext",
            "-out",
            "leaf.pem",
        ],
    );
}

#[test]
fn https_registry_is_trusted_through_the_given_ca_only() {
    let tmp = tempfile::tempdir().unwrap();
    test_ca(tmp.path());
    let reg = Registry::start_with(None, Some(tmp.path()));
    let out = release_out();
    let reference = format!("{}/cairn:1.0.0", reg.host());
    let ca = tmp.path().join("ca.pem");
    let key = release_pubkey();

    // Without the CA (system roots only) the certificate is refused.
    let t = failed(cairn(&["push", s(&out), &reference], &[]));
    assert!(
        t.contains(&format!("registry {}:", reg.host())) && t.contains("UnknownIssuer"),
        "{t}"
    );
    ok(cairn(
        &["push", s(&out), &reference, "--ca-file", s(&ca)],
        &[],
    ));
    let dir = tmp.path().join("pulled");
    ok(cairn(
        &[
            "pull",
            &reference,
            s(&dir),
            "--key",
            s(&key),
            "--ca-file",
            s(&ca),
        ],
        &[],
    ));
    assert_is_the_release(&dir);
    // Plain HTTP is only spoken when asked, and then not to a TLS port.
    let t = failed(pull(&reference, &tmp.path().join("plain"), &[]));
    assert!(t.contains(&format!("registry {}", reg.host())), "{t}");
}

#[test]
fn stalled_stream_times_out_and_nothing_lands() {
    let reg = Registry::start();
    let out = release_out();
    ok(push(&out, &format!("{}/cairn:1.0.0", reg.host()), &[]));
    let files = layout_files(&out.join("oci"));
    let rootfs_hex = &files[names::ROOTFS].0;
    let proxy = CuttingProxy::start(
        reg.port,
        format!("GET /v2/cairn/blobs/sha256:{rootfs_hex}"),
        64 << 10,
        true,
    );
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("pulled");
    let started = Instant::now();
    let t = failed(pull(
        &format!("127.0.0.1:{}/cairn:1.0.0", proxy.port),
        &dir,
        &["--io-timeout", "2"],
    ));
    let took = started.elapsed();
    assert!(
        t.contains(&format!(
            "registry 127.0.0.1:{}: blob sha256:{rootfs_hex} in cairn: truncated stream: ended after",
            proxy.port
        )) && t.to_lowercase().contains("time"),
        "{t}"
    );
    assert!(took < Duration::from_secs(20), "{took:?}");
    assert_eq!(dir_names(&dir), Vec::<String>::new(), "{t}");
}

#[test]
fn oversized_bundle_manifest_is_refused_unread() {
    let reg = Registry::start();
    let tmp = tempfile::tempdir().unwrap();
    let bundle = tmp.path().join("bundle");
    bundle_copy(&bundle);
    // 2 MiB where the signed manifest belongs: never read, so never parsed.
    fs::write(bundle.join(names::MANIFEST), vec![b' '; 2 << 20]).unwrap();
    let layout = tmp.path().join("oci");
    builder::release::oci_layout(&bundle, &layout, "1.0.0", &"0".repeat(64), 0).unwrap();
    let reference = format!("{}/cairn:1.0.0", reg.host());
    ok(push(&layout, &reference, &[]));
    let big = &layout_files(&layout)[names::MANIFEST].0;
    let t = failed(pull(&reference, &tmp.path().join("pulled"), &[]));
    assert!(
        t.contains(&format!(
            "registry {}: manifest.json (blob sha256:{big}) in cairn: manifest too large: {} bytes, over the limit of {}; refused unread",
            reg.host(),
            2 << 20,
            names::MAX_MANIFEST_BYTES
        )),
        "{t}"
    );
    assert_eq!(reg.blob_gets(big), 0);
}
