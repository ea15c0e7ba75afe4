//! The package engine against small fake recipes in temp repositories.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use builder::pkgs::{PkgError, Pkgs};
use sha2::{Digest, Sha256};

struct Repo {
    _dir: tempfile::TempDir,
    root: PathBuf,
    counts: PathBuf,
}

impl Repo {
    fn new() -> Repo {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("repo");
        let counts = dir.path().join("counts");
        fs::create_dir_all(root.join("pkgs")).unwrap();
        fs::create_dir_all(&counts).unwrap();
        Repo {
            _dir: dir,
            root,
            counts,
        }
    }

    /// A package whose script counts its runs in `counts/NAME`, then `body`.
    fn add(&self, name: &str, recipe_extra: &str, body: &str) {
        let d = self.root.join("pkgs").join(name);
        fs::create_dir_all(&d).unwrap();
        fs::write(
            d.join("recipe.toml"),
            format!("name = \"{name}\"\nversion = \"1.0\"\n{recipe_extra}\n"),
        )
        .unwrap();
        fs::write(
            d.join("build.sh"),
            format!(
                "set -eu\necho run >> {}/{name}\n{body}\n",
                self.counts.display()
            ),
        )
        .unwrap();
    }

    /// Like `add` without the run counter (whose path differs per repo).
    fn add_raw(&self, name: &str, recipe_extra: &str, body: &str) {
        self.add(name, recipe_extra, "");
        fs::write(
            self.root.join("pkgs").join(name).join("build.sh"),
            format!("set -eu\n{body}\n"),
        )
        .unwrap();
    }

    fn count(&self, name: &str) -> usize {
        fs::read_to_string(self.counts.join(name))
            .map(|s| s.lines().count())
            .unwrap_or(0)
    }

    fn pkgs(&self, cache: &Path) -> Pkgs {
        Pkgs::load(&self.root)
            .unwrap()
            .with_cache(cache.to_path_buf())
            .with_epoch(1_700_000_000)
            .with_jobs(2)
    }
}

fn sha256_hex(b: &[u8]) -> String {
    hex::encode(Sha256::digest(b))
}

/// The sorted names in directory `p`, which must exist: a missing one (a
/// path typo, or a layout change) must not read as "empty".
fn dir_names(p: &Path) -> Vec<String> {
    let mut v: Vec<String> = fs::read_dir(p)
        .unwrap_or_else(|e| panic!("listing {}: {e}", p.display()))
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    v.sort();
    v
}

/// a <- b (b depends on a), c unrelated; a also has a `path` source.
fn chain(repo: &Repo) {
    fs::create_dir_all(repo.root.join("data")).unwrap();
    fs::write(repo.root.join("data/input.txt"), "one\n").unwrap();
    repo.add(
        "a",
        "outputs = [\"a.txt\"]\n[[source]]\nname = \"data\"\nkind = \"path\"\nspec = \"data\"",
        "cat $CAIRN_SRC/data/input.txt > $CAIRN_OUT/a.txt\necho a >> $CAIRN_OUT/a.txt",
    );
    repo.add(
        "b",
        "depends = [\"a\"]\noutputs = [\"b.txt\"]",
        "cat $CAIRN_DEP_A/a.txt > $CAIRN_OUT/b.txt\necho b >> $CAIRN_OUT/b.txt",
    );
    repo.add("c", "outputs = [\"c.txt\"]", "echo c > $CAIRN_OUT/c.txt");
}

#[test]
fn cache_hits_and_rebuilds_exactly_the_dependents() {
    let repo = Repo::new();
    chain(&repo);
    let cache = tempfile::tempdir().unwrap();
    let p = repo.pkgs(cache.path());
    let b = p.build("b").unwrap();
    p.build("c").unwrap();
    assert_eq!(fs::read_to_string(b.join("b.txt")).unwrap(), "one\na\nb\n");
    assert_eq!(
        (repo.count("a"), repo.count("b"), repo.count("c")),
        (1, 1, 1)
    );
    let keys = |p: &Pkgs| -> Vec<String> { ["a", "b", "c"].map(|n| p.key(n).unwrap()).to_vec() };
    let k1 = keys(&p);

    // Nothing changed: a fresh load answers from the cache (no script ran;
    // how fast is for a benchmark, not a wall-clock limit here).
    let p = repo.pkgs(cache.path());
    assert_eq!(p.build("b").unwrap(), b);
    p.build("c").unwrap();
    assert_eq!(
        (repo.count("a"), repo.count("b"), repo.count("c")),
        (1, 1, 1)
    );
    assert_eq!(keys(&p), k1);

    // One line more in a's script: a and b rebuild, c does not.
    let script = repo.root.join("pkgs/a/build.sh");
    let mut s = fs::read_to_string(&script).unwrap();
    s.push_str("true\n");
    fs::write(&script, s).unwrap();
    let p = repo.pkgs(cache.path());
    p.build("b").unwrap();
    p.build("c").unwrap();
    assert_eq!(
        (repo.count("a"), repo.count("b"), repo.count("c")),
        (2, 2, 1)
    );
    let k2 = keys(&p);
    assert!(k2[0] != k1[0] && k2[1] != k1[1] && k2[2] == k1[2]);

    // A `path` source's content changes: same again, and the new content is used.
    fs::write(repo.root.join("data/input.txt"), "two\n").unwrap();
    let p = repo.pkgs(cache.path());
    let b3 = p.build("b").unwrap();
    p.build("c").unwrap();
    assert_eq!(
        (repo.count("a"), repo.count("b"), repo.count("c")),
        (3, 3, 1)
    );
    assert_eq!(fs::read_to_string(b3.join("b.txt")).unwrap(), "two\na\nb\n");
    let k3 = keys(&p);
    assert!(k3[0] != k2[0] && k3[1] != k2[1] && k3[2] == k1[2]);

    // Building only c touches nothing else; the list reports all cached.
    let status = p.list();
    assert!(status.iter().all(|s| s.cached), "{status:?}");
    assert!(dir_names(&cache.path().join("tmp")).is_empty());
}

#[test]
fn two_caches_give_identical_outputs_and_keys() {
    let mk = || {
        let repo = Repo::new();
        repo.add_raw(
            "env",
            "outputs = [\"env.txt\"]\n[env]\nEXTRA = \"x y\"",
            // Paths differ between the runs; names, fixed values and layout must not.
            "env | cut -d= -f1 | sort > $CAIRN_OUT/env.txt\n\
             echo $SOURCE_DATE_EPOCH $TZ $LC_ALL $PATH \"$EXTRA\" $CAIRN_JOBS >> $CAIRN_OUT/env.txt\n\
             for d in $CAIRN_OUT $HOME $CAIRN_SRC .; do (cd $d && ls -A); done >> $CAIRN_OUT/env.txt",
        );
        repo
    };
    let (r1, r2) = (mk(), mk());
    let (c1, c2) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let o1 = r1.pkgs(c1.path()).build("env").unwrap();
    let o2 = r2.pkgs(c2.path()).build("env").unwrap();
    let t1 = fs::read_to_string(o1.join("env.txt")).unwrap();
    assert_eq!(t1, fs::read_to_string(o2.join("env.txt")).unwrap());
    let vars: Vec<&str> = t1.lines().take_while(|l| !l.contains(' ')).collect();
    for v in [
        "CAIRN_JOBS",
        "CAIRN_OUT",
        "CAIRN_REPO",
        "CAIRN_SRC",
        "EXTRA",
        "HOME",
        "LC_ALL",
        "PATH",
        "SOURCE_DATE_EPOCH",
        "TZ",
    ] {
        assert!(vars.contains(&v), "{v} missing from {vars:?}");
    }
    // Only what bash itself adds (PWD, SHLVL, _) beyond the fixed list.
    for v in &vars {
        assert!(
            v.starts_with("CAIRN_")
                || [
                    "EXTRA",
                    "HOME",
                    "LC_ALL",
                    "PATH",
                    "SOURCE_DATE_EPOCH",
                    "TZ",
                    "PWD",
                    "OLDPWD",
                    "SHLVL",
                    "_"
                ]
                .contains(v),
            "unexpected variable {v}"
        );
    }
    assert!(t1.contains(
        "1700000000 UTC C /usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin x y 2"
    ));
    // Same recipe bytes, different repo locations: same key.
    assert_eq!(
        o1.file_name().unwrap(),
        o2.file_name().unwrap(),
        "cache key depends on where the repo or cache lives"
    );
}

#[test]
fn epoch_is_part_of_the_key() {
    let repo = Repo::new();
    repo.add("x", "", "true");
    let c = tempfile::tempdir().unwrap();
    let k1 = repo.pkgs(c.path()).key("x").unwrap();
    let k2 = repo.pkgs(c.path()).with_epoch(1).key("x").unwrap();
    assert_ne!(k1, k2);
}

fn url_repo(payload: &Path, sha: &str) -> Repo {
    let repo = Repo::new();
    repo.add(
        "u",
        &format!(
            "outputs = [\"hello\"]\n[[source]]\nname = \"t\"\nkind = \"url\"\nspec = \"file://{}\"\nsha256 = \"{sha}\"",
            payload.display()
        ),
        "cp $CAIRN_SRC/t/dir/hello $CAIRN_OUT/hello",
    );
    repo
}

/// A .tar.gz made with GNU tar (the standard tool), holding dir/hello.
fn make_tarball(dir: &Path) -> PathBuf {
    fs::create_dir_all(dir.join("content/dir")).unwrap();
    fs::write(dir.join("content/dir/hello"), "hello from a tarball\n").unwrap();
    let tgz = dir.join("payload.tar.gz");
    let st = Command::new("tar")
        .arg("-czf")
        .arg(&tgz)
        .arg("-C")
        .arg(dir.join("content"))
        .arg("dir")
        .status()
        .expect("tar must be installed");
    assert!(st.success());
    tgz
}

#[test]
fn url_source_is_verified_unpacked_and_cached_by_hash() {
    let d = tempfile::tempdir().unwrap();
    let tgz = make_tarball(d.path());
    let sha = sha256_hex(&fs::read(&tgz).unwrap());
    let repo = url_repo(&tgz, &sha);
    let c = tempfile::tempdir().unwrap();
    let out = repo.pkgs(c.path()).build("u").unwrap();
    assert_eq!(
        fs::read_to_string(out.join("hello")).unwrap(),
        "hello from a tarball\n"
    );
    assert_eq!(
        dir_names(&c.path().join("downloads").join(&sha)),
        ["payload.tar.gz"]
    );
    // The pinned file is reused from the download cache even when the origin is gone.
    fs::remove_file(&tgz).unwrap();
    fs::remove_dir_all(c.path().join("pkgs")).unwrap();
    repo.pkgs(c.path()).build("u").unwrap();
}

#[test]
fn tampered_source_is_refused_with_both_hashes_and_nothing_kept() {
    let d = tempfile::tempdir().unwrap();
    let tgz = make_tarball(d.path());
    let mut bytes = fs::read(&tgz).unwrap();
    let good = sha256_hex(&bytes);
    let n = bytes.len();
    bytes[n - 5] ^= 0x01;
    fs::write(&tgz, &bytes).unwrap();
    let bad = sha256_hex(&bytes);
    let repo = url_repo(&tgz, &good);
    let c = tempfile::tempdir().unwrap();
    let err = repo.pkgs(c.path()).build("u").unwrap_err();
    assert!(matches!(err, PkgError::HashMismatch { .. }), "{err:?}");
    let msg = err.to_string();
    assert!(msg.contains(&good) && msg.contains(&bad), "{msg}");
    assert!(msg.contains("payload.tar.gz"), "{msg}");
    assert_eq!(repo.count("u"), 0, "the script ran on a tampered source");
    for sub in ["downloads", "pkgs", "tmp"] {
        assert!(dir_names(&c.path().join(sub)).is_empty(), "{sub} not empty");
    }
    // `cairn pkg fetch` reports the same.
    let err = repo.pkgs(c.path()).fetch("u").unwrap_err().to_string();
    assert!(err.contains(&bad), "{err}");
}

#[test]
fn failed_build_leaves_no_entry_and_shows_the_log_tail() {
    let repo = Repo::new();
    repo.add(
        "f",
        "outputs = [\"x\"]",
        "echo partial > $CAIRN_OUT/x\necho 'compiler says: boom' >&2\nexit 3",
    );
    repo.add(
        "k",
        "outputs = [\"x\"]",
        "echo partial > $CAIRN_OUT/x\nkill -9 $$",
    );
    repo.add(
        "m",
        "outputs = [\"x\", \"sub/y\"]",
        "echo partial > $CAIRN_OUT/x",
    );
    let c = tempfile::tempdir().unwrap();
    let p = repo.pkgs(c.path());
    let err = p.build("f").unwrap_err();
    let msg = err.to_string();
    assert!(
        msg.contains("compiler says: boom") && msg.contains("exit status: 3"),
        "{msg}"
    );
    let PkgError::BuildFailed { log, .. } = &err else {
        panic!("{err:?}")
    };
    assert!(fs::read_to_string(log).unwrap().contains("boom"));
    let err = p.build("k").unwrap_err().to_string();
    assert!(err.contains("signal: 9"), "{err}");
    let err = p.build("m").unwrap_err();
    assert!(
        matches!(&err, PkgError::MissingOutput { output, .. } if output == "sub/y"),
        "{err:?}"
    );
    assert!(dir_names(&c.path().join("pkgs")).is_empty());
    assert!(dir_names(&c.path().join("tmp")).is_empty());
    for n in ["f", "k", "m"] {
        assert!(!p.is_cached(n).unwrap());
    }
}

#[test]
fn killed_cairn_leaves_only_a_partial_that_the_next_run_removes() {
    let repo = Repo::new();
    let marker = repo.counts.join("slow-marker");
    fs::write(&marker, "").unwrap();
    repo.add(
        "slow",
        "outputs = [\"x\"]",
        &format!(
            "echo $$ > {}/pid\necho started > $CAIRN_OUT/x\nwhile [ -e {} ]; do sleep 0.1; done",
            repo.counts.display(),
            marker.display()
        ),
    );
    let c = tempfile::tempdir().unwrap();
    let mut child = Command::new(env!("CARGO_BIN_EXE_cairn"))
        .args(["pkg", "build", "slow", "--repo"])
        .arg(&repo.root)
        .arg("--cache")
        .arg(c.path())
        .spawn()
        .unwrap();
    let tmp = c.path().join("tmp");
    let t = Instant::now();
    // tmp/ itself appears once cairn takes the cache; the bounds below are
    // liveness limits (a hang fails), far above any real wait.
    while !(tmp.is_dir() && dir_names(&tmp).iter().any(|n| n.ends_with(".partial"))) {
        assert!(t.elapsed() < Duration::from_secs(30), "build never started");
        std::thread::sleep(Duration::from_millis(50));
    }
    while repo.count("slow") == 0 {
        assert!(t.elapsed() < Duration::from_secs(30), "script never ran");
        std::thread::sleep(Duration::from_millis(50));
    }
    child.kill().unwrap();
    child.wait().unwrap();
    // The orphaned script was killed with cairn (it would otherwise run on).
    let pid = fs::read_to_string(repo.counts.join("pid")).unwrap();
    let proc_dir = PathBuf::from(format!("/proc/{}", pid.trim()));
    let t = Instant::now();
    // Gone, or a zombie when nothing reaps orphans in this container.
    let alive = || {
        fs::read_to_string(proc_dir.join("stat")).is_ok_and(|st| {
            st.rsplit(')')
                .next()
                .is_some_and(|r| !r.trim_start().starts_with('Z'))
        })
    };
    while alive() {
        assert!(
            t.elapsed() < Duration::from_secs(5),
            "script outlived cairn"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    assert!(dir_names(&c.path().join("pkgs")).is_empty());
    let p = repo.pkgs(c.path());
    assert!(!p.is_cached("slow").unwrap());
    fs::remove_file(&marker).unwrap();
    let out = p.build("slow").unwrap();
    assert!(out.join("x").is_file());
    assert!(dir_names(&tmp).is_empty(), "{:?}", dir_names(&tmp));
    assert_eq!(repo.count("slow"), 2);
}

#[test]
fn missing_host_packages_name_the_apt_get_line() {
    let repo = Repo::new();
    repo.add(
        "h",
        "host_packages = [\"bash\", \"cairn-no-such-package\"]",
        "true",
    );
    repo.add("top", "depends = [\"h\"]", "true");
    let c = tempfile::tempdir().unwrap();
    let err = repo.pkgs(c.path()).build("top").unwrap_err().to_string();
    assert!(
        err.contains("apt-get install -y cairn-no-such-package"),
        "{err}"
    );
    assert!(!err.contains("-y bash"), "{err}");
    // A version pin that the installed package does not meet is missing too.
    repo.add("h", "host_packages = [\"bash=0.0-cairn\"]", "true");
    let err = repo.pkgs(c.path()).build("top").unwrap_err().to_string();
    assert!(err.contains("apt-get install -y bash=0.0-cairn"), "{err}");
    assert_eq!(repo.count("h"), 0);
}

#[test]
fn host_package_versions_and_toolchain_output_enter_the_key() {
    let repo = Repo::new();
    repo.add(
        "t",
        "host_packages = [\"bash\"]\ntoolchain = [\"echo v1\"]",
        "true",
    );
    let c = tempfile::tempdir().unwrap();
    let k1 = repo.pkgs(c.path()).key("t").unwrap();
    repo.add(
        "t",
        "host_packages = [\"bash\"]\ntoolchain = [\"echo v2\"]",
        "true",
    );
    let k2 = repo.pkgs(c.path()).key("t").unwrap();
    assert_ne!(k1, k2);
    repo.add("t", "toolchain = [\"exit 4\"]", "true");
    let err = repo.pkgs(c.path()).key("t").unwrap_err().to_string();
    assert!(
        err.contains("exit 4") && err.contains("exit status: 4"),
        "{err}"
    );
}

fn load_err(recipe_extra: &str) -> String {
    let repo = Repo::new();
    repo.add("bad", recipe_extra, "true");
    match Pkgs::load(&repo.root) {
        Ok(_) => panic!("recipe accepted: {recipe_extra}"),
        Err(e) => e.to_string(),
    }
}

#[test]
fn bad_recipes_are_refused_with_the_reason() {
    let sha = "0".repeat(64);
    let cases = [
        ("outptus = []", "unknown field"),
        ("outputs = [\"../x\"]", "without `..`"),
        ("outputs = [\"/etc/x\"]", "must be relative"),
        ("[env]\nPATH = \"/evil\"", "cannot be overridden"),
        ("[env]\nCAIRN_OUT = \"/evil\"", "cannot be overridden"),
        (
            "depends = [\"nope\"]",
            "unknown package `nope` (needed by `bad`)",
        ),
        ("depends = [\"bad\"]", "cycle: bad -> bad"),
        (
            "[[source]]\nname = \"s\"\nkind = \"url\"\nspec = \"http://x/y.tar\"\nsha256 = \"SHA\"",
            "must be https://",
        ),
        (
            "[[source]]\nname = \"s\"\nkind = \"url\"\nspec = \"https://x/y.tar\"\nsha256 = \"abc\"",
            "not 64 lowercase hex",
        ),
        (
            "[[source]]\nname = \"s\"\nkind = \"path\"\nspec = \"../outside\"",
            "without `..`",
        ),
        (
            "[[source]]\nname = \"s\"\nkind = \"deb\"\nspec = \"p\"\nsha256 = \"SHA\"",
            "must be `package=version`",
        ),
        (
            "[[source]]\nname = \"s\"\nkind = \"path\"\nspec = \"x\"\nfilename = \"x\"",
            "does not apply to kind `path`",
        ),
        (
            "[[source]]\nname = \"s\"\nkind = \"git\"\nspec = \"x\"",
            "unknown kind `git`",
        ),
        (
            "[[source]]\nname = \"s\"\nkind = \"deb\"\nspec = \"p=1\"",
            "needs `sha256`",
        ),
        (
            "[[source]]\nname = \"s\"\nkind = \"deb\"\nspec = \"p=1\"\nsha256 = \"SHA\"\nunpack = \"zip\"",
            "unpack",
        ),
        ("[[source]]\nname = \"s\"\nkind = \"path\"", "missing field `spec`"),
    ];
    for (extra, want) in cases {
        let err = load_err(&extra.replace("SHA", &sha));
        assert!(err.contains(want), "{extra}: {err}");
        assert!(
            err.contains("recipe.toml") || want.contains("package") || want.contains("cycle"),
            "{err}"
        );
    }
}

#[test]
fn recipe_name_must_match_its_directory() {
    let repo = Repo::new();
    repo.add("one", "", "true");
    fs::rename(repo.root.join("pkgs/one"), repo.root.join("pkgs/two")).unwrap();
    let err = Pkgs::load(&repo.root).err().unwrap().to_string();
    assert!(err.contains("differs from its directory `two`"), "{err}");
}

#[test]
fn pinned_path_source_is_checked() {
    let repo = Repo::new();
    fs::write(repo.root.join("f.txt"), "content\n").unwrap();
    let good = sha256_hex(b"content\n");
    repo.add(
        "p",
        &format!(
            "[[source]]\nname = \"f\"\nkind = \"path\"\nspec = \"f.txt\"\nsha256 = \"{good}\""
        ),
        "cmp $CAIRN_SRC/f/f.txt $CAIRN_REPO/f.txt",
    );
    let c = tempfile::tempdir().unwrap();
    repo.pkgs(c.path()).build("p").unwrap();
    fs::write(repo.root.join("f.txt"), "Content\n").unwrap();
    let err = repo.pkgs(c.path()).build("p").unwrap_err().to_string();
    assert!(
        err.contains(&good) && err.contains(&sha256_hex(b"Content\n")),
        "{err}"
    );
}

#[test]
fn cli_list_and_build() {
    let repo = Repo::new();
    chain(&repo);
    let c = tempfile::tempdir().unwrap();
    let cairn = |args: &[&str]| {
        let out = Command::new(env!("CARGO_BIN_EXE_cairn"))
            .arg("pkg")
            .args(args)
            .arg("--repo")
            .arg(&repo.root)
            .env("CAIRN_CACHE", c.path())
            .env_remove("SOURCE_DATE_EPOCH")
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).unwrap()
    };
    let list = cairn(&["list"]);
    assert_eq!(list.lines().count(), 3, "{list}");
    assert!(list.lines().all(|l| l.ends_with(" -")), "{list}");
    let out = cairn(&["build", "b"]);
    assert!(Path::new(out.trim()).join("b.txt").is_file(), "{out}");
    let list = cairn(&["list"]);
    let key_a = Pkgs::load(&repo.root)
        .unwrap()
        .with_epoch(0)
        .key("a")
        .unwrap();
    assert!(
        list.contains(&format!(
            "a                1.0                      {} cached",
            &key_a[..12]
        )),
        "{list}"
    );
    assert!(
        list.lines()
            .any(|l| l.starts_with("c ") && l.ends_with(" -")),
        "{list}"
    );
    // The same as JSON, full keys.
    let json: serde_json::Value = serde_json::from_str(&cairn(&["list", "--json"])).unwrap();
    let a = json
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["name"] == "a")
        .unwrap();
    assert_eq!(a["key"], key_a.as_str());
    assert_eq!(a["cached"], true);
    // With a profile, its SOURCE_DATE_EPOCH is the default: the keys are
    // the ones `cairn build` of that profile uses.
    let profile = Path::new(env!("CARGO_MANIFEST_DIR")).join("../profiles/default.toml");
    let epoch = builder::profile::Profile::load(&profile)
        .unwrap()
        .source_date_epoch;
    assert_ne!(epoch, 0);
    let key_p = Pkgs::load(&repo.root)
        .unwrap()
        .with_epoch(epoch)
        .key("a")
        .unwrap();
    let list = cairn(&["list", "--profile", profile.to_str().unwrap()]);
    assert!(list.contains(&key_p[..12]), "{list}");
    let list = cairn(&["list", "--source-date-epoch", &epoch.to_string()]);
    assert!(list.contains(&key_p[..12]), "{list}");
}

#[test]
fn path_sources_copy_directories_and_extract_tarballs() {
    let repo = Repo::new();
    let tgz = make_tarball(&repo.root.join("vendor"));
    assert!(tgz.starts_with(&repo.root));
    fs::create_dir_all(repo.root.join("conf/sub")).unwrap();
    fs::write(repo.root.join("conf/sub/a.cfg"), "A\n").unwrap();
    std::os::unix::fs::symlink("sub/a.cfg", repo.root.join("conf/link")).unwrap();
    repo.add_raw(
        "p",
        "outputs = [\"r\"]\n\
         [[source]]\nname = \"t\"\nkind = \"path\"\nspec = \"vendor/payload.tar.gz\"\n\
         [[source]]\nname = \"raw\"\nkind = \"path\"\nspec = \"vendor/payload.tar.gz\"\nunpack = false\n\
         [[source]]\nname = \"conf\"\nkind = \"path\"\nspec = \"conf\"",
        "{ cat $CAIRN_SRC/t/dir/hello; ls $CAIRN_SRC/raw; readlink $CAIRN_SRC/conf/link; cat $CAIRN_SRC/conf/link; } > $CAIRN_OUT/r",
    );
    let c = tempfile::tempdir().unwrap();
    let out = repo.pkgs(c.path()).build("p").unwrap();
    assert_eq!(
        fs::read_to_string(out.join("r")).unwrap(),
        "hello from a tarball\npayload.tar.gz\nsub/a.cfg\nA\n"
    );
    // A symlink's target is part of the directory's content hash.
    let k1 = repo.pkgs(c.path()).key("p").unwrap();
    fs::remove_file(repo.root.join("conf/link")).unwrap();
    std::os::unix::fs::symlink("sub/../sub/a.cfg", repo.root.join("conf/link")).unwrap();
    assert_ne!(repo.pkgs(c.path()).key("p").unwrap(), k1);
}

#[test]
fn a_path_source_changed_during_the_build_is_not_cached() {
    let repo = Repo::new();
    fs::create_dir_all(repo.root.join("live")).unwrap();
    fs::write(repo.root.join("live/main.c"), "int main;\n").unwrap();
    // The script reads the working tree, as init's does, and something
    // (here the script itself, standing in for an editor) changes it meanwhile.
    repo.add_raw(
        "w",
        "outputs = [\"r\"]\n[[source]]\nname = \"live\"\nkind = \"path\"\nspec = \"live\"\nunpack = false",
        "cp $CAIRN_REPO/live/main.c $CAIRN_OUT/r\necho '// edited' >> $CAIRN_REPO/live/main.c",
    );
    let c = tempfile::tempdir().unwrap();
    let p = repo.pkgs(c.path());
    let err = p.build("w").unwrap_err();
    assert!(
        matches!(&err, PkgError::SourceChangedDuringBuild { path, .. } if path == "live"),
        "{err:?}"
    );
    let msg = err.to_string();
    assert!(
        msg.contains("live changed while it was being built"),
        "{msg}"
    );
    assert!(dir_names(&c.path().join("pkgs")).is_empty());
    assert!(dir_names(&c.path().join("tmp")).is_empty());
    // With the tree still, the next run builds and caches under the new key.
    fs::write(
        repo.root.join("pkgs/w/build.sh"),
        "set -eu\ncp $CAIRN_REPO/live/main.c $CAIRN_OUT/r\n",
    )
    .unwrap();
    let p = repo.pkgs(c.path());
    let out = p.build("w").unwrap();
    assert_eq!(
        fs::read_to_string(out.join("r")).unwrap(),
        "int main;\n// edited\n"
    );
    assert!(p.is_cached("w").unwrap());
}

/// A site's own recipes beside its profile join the repository's: their
/// path sources are the site's files, they may depend on the repository's
/// packages, they may not take a repository package's name, and the
/// checkout (the directory with `init`) is found over the nearer site.
#[test]
fn local_recipes_join_the_repository_and_cannot_replace_its_own() {
    let repo = Repo::new();
    repo.add_raw("base", "outputs = [\"b\"]", "echo base > $CAIRN_OUT/b");
    repo.add_raw("init", "outputs = [\"i\"]", "echo i > $CAIRN_OUT/i");
    let site = Repo::new();
    fs::write(site.root.join("site.conf"), "region = eu-1\n").unwrap();
    site.add_raw(
        "site-config",
        "depends = [\"base\"]\noutputs = [\"s\"]\n\
         [[source]]\nname = \"conf\"\nkind = \"path\"\nspec = \"site.conf\"\nunpack = false",
        "cat $CAIRN_SRC/conf/site.conf $CAIRN_DEP_BASE/b > $CAIRN_OUT/s",
    );
    let c = tempfile::tempdir().unwrap();
    let pkgs = repo.pkgs(c.path()).with_local(&site.root).unwrap();
    let out = pkgs.build("site-config").unwrap();
    assert_eq!(
        fs::read_to_string(out.join("s")).unwrap(),
        "region = eu-1\nbase\n"
    );
    // Its key follows the site's file.
    let k1 = pkgs.key("site-config").unwrap();
    fs::write(site.root.join("site.conf"), "region = eu-2\n").unwrap();
    let again = repo.pkgs(c.path()).with_local(&site.root).unwrap();
    assert_ne!(again.key("site-config").unwrap(), k1);
    // Adding the same site twice is one site.
    assert!(again.with_local(&site.root).is_ok());

    // A local `base` would swap the repository's: refused, both named.
    let rogue = Repo::new();
    rogue.add_raw("base", "outputs = [\"b\"]", "echo evil > $CAIRN_OUT/b");
    let e = repo
        .pkgs(c.path())
        .with_local(&rogue.root)
        .err()
        .expect("refused")
        .to_string();
    assert!(
        e.contains("cannot replace the repository's `base`")
            && e.contains(
                &rogue
                    .root
                    .join("pkgs/base/recipe.toml")
                    .display()
                    .to_string()
            ),
        "{e}"
    );

    // find_repo: a profile in a site directory nested in the checkout
    // still finds the checkout (it has `init`), not the site.
    let nested = repo.root.join("sites/edge");
    fs::create_dir_all(nested.join("pkgs/x")).unwrap();
    fs::write(
        nested.join("pkgs/x/recipe.toml"),
        "name = \"x\"\nversion = \"1\"\n",
    )
    .unwrap();
    let found = Pkgs::find_repo(&[nested.join("edge.toml")]).unwrap();
    assert_eq!(found, repo.root);
}
