//! The package layer: declarative recipes under `pkgs/`, pinned sources, and
//! a content-addressed build cache (see `pkgs/README.md` for the format).

pub mod build;
pub mod cache;
pub mod cli;
pub mod error;
pub mod fetch;
pub mod hash;
pub mod host;
pub mod recipe;
pub mod unpack;

use std::collections::{BTreeMap, HashMap};
use std::fs;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use sha2::{Digest, Sha256};

pub use cache::{default_cache_dir, Cache};
use error::io_err;
pub use error::PkgError;
pub use recipe::{Recipe, Source, SourceKind, Unpack};

/// One package as loaded from `pkgs/NAME/`.
#[derive(Debug, Clone)]
pub struct Package {
    pub recipe: Recipe,
    pub dir: PathBuf,
    /// What its `path` sources are relative to: the repository for
    /// cairn's own recipes, the site directory for a local one.
    pub root: PathBuf,
    recipe_bytes: Vec<u8>,
    script_bytes: Vec<u8>,
}

/// What `cairn pkg list` shows for one package.
#[derive(Debug)]
pub struct PkgStatus {
    pub name: String,
    pub version: String,
    pub key: Result<String, PkgError>,
    pub cached: bool,
}

pub struct Pkgs {
    repo: PathBuf,
    packages: BTreeMap<String, Package>,
    cache: Cache,
    epoch: u64,
    jobs: u32,
    keys: Mutex<HashMap<String, String>>,
    /// Per package, the content hash of each `path` source as its key saw it.
    path_hashes: Mutex<HashMap<String, Vec<(String, String)>>>,
}

impl Pkgs {
    /// Loads every `pkgs/*/recipe.toml` under `repo_root` and checks the
    /// dependency graph. The cache defaults to `default_cache_dir()`,
    /// SOURCE_DATE_EPOCH to 0, jobs to the available parallelism.
    /// The repository a build uses when none is given: the nearest
    /// directory above one of `files` (a profile's `extends` chain, most
    /// derived first) holding `pkgs/*/recipe.toml`; else the current
    /// directory if it holds them. So `cairn build --profile
    /// ~/site/edge.toml` works from anywhere when edge.toml extends a
    /// checkout's profile.
    ///
    /// A directory whose `pkgs/` holds cairn's own `init` recipe wins over a
    /// nearer one with recipes of a user's own (those are [`Pkgs::with_local`]'s).
    pub fn find_repo(files: &[PathBuf]) -> Option<PathBuf> {
        let find = |is: &dyn Fn(&Path) -> bool| {
            files
                .iter()
                .flat_map(|f| f.ancestors().skip(1))
                .find(|d| is(d))
                .map(Path::to_path_buf)
                .or_else(|| std::env::current_dir().ok().filter(|d| is(d)))
        };
        find(&|d| d.join("pkgs/init/recipe.toml").is_file()).or_else(|| find(&has_recipes))
    }

    /// Adds the recipes under `site/pkgs/` (a user's own packages, beside
    /// their profile) to the repository's. Their `path` sources are
    /// relative to `site`. A local recipe may not take the name of one of
    /// the repository's: a site cannot silently swap cairn's kernel or init.
    pub fn with_local(mut self, site: &Path) -> Result<Pkgs, PkgError> {
        let site = &fs::canonicalize(site).map_err(io_err(site))?;
        if *site == self.repo || !has_recipes(site) {
            return Ok(self);
        }
        for (name, pkg) in load_dir(site)? {
            if let Some(own) = self.packages.get(&name) {
                if own.dir == pkg.dir {
                    continue; // this site was already added
                }
                return Err(PkgError::Recipe {
                    path: pkg.dir.join("recipe.toml"),
                    message: format!(
                        "a local recipe cannot replace the repository's `{name}` ({}): rename it",
                        own.dir.display()
                    ),
                });
            }
            self.packages.insert(name, pkg);
        }
        for name in self.packages.keys() {
            self.check_graph(name, &mut Vec::new())?;
        }
        Ok(self)
    }

    pub fn load(repo_root: &Path) -> Result<Pkgs, PkgError> {
        // Scripts run in another cwd: every path handed to them is absolute.
        let repo_root = &fs::canonicalize(repo_root).map_err(io_err(repo_root))?;
        let packages = load_dir(repo_root)?;
        let jobs = std::thread::available_parallelism()
            .map(|n| n.get() as u32)
            .unwrap_or(1);
        let pkgs = Pkgs {
            repo: repo_root.to_path_buf(),
            packages,
            cache: Cache::new(default_cache_dir()),
            epoch: 0,
            jobs,
            keys: Mutex::new(HashMap::new()),
            path_hashes: Mutex::new(HashMap::new()),
        };
        for name in pkgs.packages.keys() {
            pkgs.check_graph(name, &mut Vec::new())?;
        }
        Ok(pkgs)
    }

    pub fn with_cache(mut self, dir: PathBuf) -> Pkgs {
        self.cache = Cache::new(dir);
        self.keys.lock().unwrap_or_else(|p| p.into_inner()).clear();
        self
    }

    /// SOURCE_DATE_EPOCH for every build; part of every cache key.
    pub fn with_epoch(mut self, epoch: u64) -> Pkgs {
        self.epoch = epoch;
        self.keys.lock().unwrap_or_else(|p| p.into_inner()).clear();
        self
    }

    /// CAIRN_JOBS; not part of the key (scripts must not let it change output).
    pub fn with_jobs(mut self, jobs: u32) -> Pkgs {
        self.jobs = jobs.max(1);
        self
    }

    pub fn cache(&self) -> &Cache {
        &self.cache
    }

    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.packages.keys().map(|s| s.as_str())
    }

    pub fn package(&self, name: &str) -> Result<&Package, PkgError> {
        self.packages
            .get(name)
            .ok_or_else(|| PkgError::UnknownPackage {
                name: name.into(),
                context: None,
            })
    }

    fn check_graph(&self, name: &str, path: &mut Vec<String>) -> Result<(), PkgError> {
        if let Some(i) = path.iter().position(|p| p == name) {
            let mut cycle = path[i..].to_vec();
            cycle.push(name.into());
            return Err(PkgError::Cycle { cycle });
        }
        let pkg = self
            .packages
            .get(name)
            .ok_or_else(|| PkgError::UnknownPackage {
                name: name.into(),
                context: path.last().cloned(),
            })?;
        path.push(name.into());
        for d in &pkg.recipe.depends {
            self.check_graph(d, path)?;
        }
        path.pop();
        Ok(())
    }

    /// `name` and everything it depends on, dependencies first, each once.
    pub fn closure(&self, name: &str) -> Result<Vec<String>, PkgError> {
        fn visit(p: &Pkgs, n: &str, out: &mut Vec<String>) -> Result<(), PkgError> {
            if out.iter().any(|o| o == n) {
                return Ok(());
            }
            for d in &p.package(n)?.recipe.depends {
                visit(p, d, out)?;
            }
            out.push(n.into());
            Ok(())
        }
        let mut out = Vec::new();
        visit(self, name, &mut out)?;
        Ok(out)
    }

    /// Fails with the `apt-get install` line if any package in the closure
    /// of `name` declares host packages that are not installed.
    pub fn check_host_packages(&self, name: &str) -> Result<(), PkgError> {
        let mut wanted: Vec<String> = Vec::new();
        let mut who: Vec<String> = Vec::new();
        for n in self.closure(name)? {
            let hp = &self.package(&n)?.recipe.host_packages;
            if !hp.is_empty() {
                who.push(n.clone());
            }
            wanted.extend(hp.iter().cloned());
        }
        wanted.sort();
        wanted.dedup();
        let missing: Vec<String> = host::check_specs(&wanted)?
            .into_iter()
            .filter(|(_, _, ok)| !ok)
            .map(|(spec, _, _)| spec)
            .collect();
        if missing.is_empty() {
            Ok(())
        } else {
            Err(PkgError::HostPackages {
                packages: who,
                missing,
            })
        }
    }

    /// The cache key of `name` (hex sha256). Cheap: hashes recipe, script
    /// and `path` sources, never the fetched files (pinned by hash already).
    pub fn key(&self, name: &str) -> Result<String, PkgError> {
        if let Some(k) = self
            .keys
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(name)
        {
            return Ok(k.clone());
        }
        let pkg = self.package(name)?;
        let r = &pkg.recipe;
        let mut h = Sha256::new();
        let mut field = |b: &[u8]| {
            h.update((b.len() as u64).to_le_bytes());
            h.update(b);
        };
        field(b"cairn-pkg-key-v1");
        field(name.as_bytes());
        field(&pkg.recipe_bytes);
        field(&pkg.script_bytes);
        field(self.epoch.to_string().as_bytes());
        let mut paths = Vec::new();
        for s in &r.sources {
            field(s.name.as_bytes());
            match &s.kind {
                SourceKind::Deb { sha256, .. } | SourceKind::Url { sha256, .. } => {
                    field(sha256.as_bytes())
                }
                SourceKind::DebSrc { sha256, files, .. } => {
                    field(sha256.as_bytes());
                    for (f, fh) in files {
                        field(f.as_bytes());
                        field(fh.as_bytes());
                    }
                }
                SourceKind::Path { path, .. } => {
                    let h = hash::path_hash(&pkg.root.join(path))?;
                    field(h.as_bytes());
                    paths.push((path.clone(), h));
                }
            }
        }
        let mut deps = r.depends.clone();
        deps.sort();
        deps.dedup();
        for d in &deps {
            field(d.as_bytes());
            field(self.key(d)?.as_bytes());
        }
        if !r.host_packages.is_empty() {
            let status = host::check_specs(&r.host_packages)?;
            let missing: Vec<String> = status
                .iter()
                .filter(|(_, _, ok)| !ok)
                .map(|(spec, _, _)| spec.clone())
                .collect();
            if !missing.is_empty() {
                return Err(PkgError::HostPackages {
                    packages: vec![name.into()],
                    missing,
                });
            }
            for (spec, have, _) in status {
                field(format!("{spec} {}", have.unwrap_or_default()).as_bytes());
            }
        }
        for c in &r.toolchain {
            field(c.as_bytes());
            field(host::toolchain_identity(name, c)?.as_bytes());
        }
        let key = hex::encode(h.finalize());
        self.keys
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(name.into(), key.clone());
        self.path_hashes
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(name.into(), paths);
        Ok(key)
    }

    /// A `path` source is read from the working tree while the build runs
    /// (init's script compiles the repository in place): if one changed
    /// since the key was taken, the output may hold the new state under the
    /// old key, so the build is refused instead of cached.
    fn check_path_sources_unchanged(&self, name: &str) -> Result<(), PkgError> {
        let seen = self
            .path_hashes
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(name)
            .cloned()
            .unwrap_or_default();
        let root = &self.packages[name].root;
        for (path, before) in seen {
            let now = hash::path_hash(&root.join(&path))?;
            if now != before {
                return Err(PkgError::SourceChangedDuringBuild {
                    package: name.into(),
                    path,
                    before,
                    now,
                });
            }
        }
        Ok(())
    }

    pub fn is_cached(&self, name: &str) -> Result<bool, PkgError> {
        Ok(self.cache.is_cached(&self.key(name)?))
    }

    pub fn list(&self) -> Vec<PkgStatus> {
        self.packages
            .values()
            .map(|p| {
                let key = self.key(&p.recipe.name);
                let cached = key.as_ref().is_ok_and(|k| self.cache.is_cached(k));
                PkgStatus {
                    name: p.recipe.name.clone(),
                    version: p.recipe.version.clone(),
                    key,
                    cached,
                }
            })
            .collect()
    }

    /// Fetches and verifies the sources of `name` into the download cache.
    pub fn fetch(&self, name: &str) -> Result<(), PkgError> {
        let pkg = self.package(name)?;
        let _lock = self.cache.lock()?;
        for s in &pkg.recipe.sources {
            if !matches!(s.kind, SourceKind::Path { .. }) {
                fetch::fetch(&self.cache, name, s)?;
            }
        }
        Ok(())
    }

    /// Builds `name` (and its dependencies) unless cached; returns the
    /// output directory `<cache>/pkgs/<key>`.
    pub fn build(&self, name: &str) -> Result<PathBuf, PkgError> {
        self.package(name)?;
        // Cheap path first: a cached result needs no lock and no fetch.
        let key = self.key(name)?;
        if self.cache.is_cached(&key) {
            tracing::debug!(package = name, key = %key, "cached");
            return Ok(self.cache.entry(&key));
        }
        self.check_host_packages(name)?;
        let _lock = self.cache.lock()?;
        let mut outs: BTreeMap<String, PathBuf> = BTreeMap::new();
        for n in self.closure(name)? {
            let out = self.build_one(&n, &outs)?;
            outs.insert(n, out);
        }
        Ok(outs.remove(name).unwrap_or_else(|| self.cache.entry(&key)))
    }

    /// Builds one package whose dependencies are in `outs`; lock held.
    fn build_one(&self, name: &str, outs: &BTreeMap<String, PathBuf>) -> Result<PathBuf, PkgError> {
        let key = self.key(name)?;
        let entry = self.cache.entry(&key);
        if entry.is_dir() {
            return Ok(entry);
        }
        let pkg = self.package(name)?;
        let r = &pkg.recipe;
        tracing::info!(package = name, key = %&key[..12], "building");
        let work = self.cache.temp_dir(&format!("work-{name}-"))?;
        let src = work.path().join("src");
        let home = work.path().join("home");
        let wd = work.path().join("build");
        for d in [&src, &home, &wd] {
            fs::create_dir(d).map_err(io_err(d))?;
        }
        for s in &r.sources {
            self.stage_source(name, s, &src.join(&s.name))?;
        }
        // A random suffix: a script orphaned by a killed cairn may still be
        // writing into its own partial; it must never share one with us.
        let tmp = self.cache.tmp();
        let partial = tempfile::Builder::new()
            .prefix(&format!("{key}."))
            .suffix(".partial")
            .tempdir_in(&tmp)
            .map_err(io_err(&tmp))?
            .keep();
        let deps: BTreeMap<String, PathBuf> = r
            .depends
            .iter()
            .map(|d| (d.clone(), outs.get(d).cloned().unwrap_or_default()))
            .collect();
        let log = self.cache.log(name, &key);
        let inv = build::Invocation {
            package: name,
            script: &pkg.dir.join(&r.script),
            workdir: &wd,
            home: &home,
            src: &src,
            out: &partial,
            repo: &self.repo,
            deps: &deps,
            jobs: self.jobs,
            epoch: self.epoch,
            extra_env: &r.env,
            log: &log,
        };
        let result = build::run_script(&inv).and_then(|()| {
            self.check_path_sources_unchanged(name)?;
            for o in &r.outputs {
                if fs::symlink_metadata(partial.join(o)).is_err() {
                    return Err(PkgError::MissingOutput {
                        package: name.into(),
                        output: o.clone(),
                    });
                }
            }
            cache::commit_dir(&partial, &entry)
        });
        if let Err(e) = result {
            cache::make_writable(&partial);
            let _ = fs::remove_dir_all(&partial);
            return Err(e);
        }
        cache::make_writable(work.path());
        drop(work);
        tracing::info!(package = name, out = %entry.display(), "built");
        Ok(entry)
    }

    /// Puts the verified, unpacked content of `s` at `dest`.
    fn stage_source(&self, package: &str, s: &Source, dest: &Path) -> Result<(), PkgError> {
        fs::create_dir(dest).map_err(io_err(dest))?;
        let bad_unpack = || PkgError::Recipe {
            path: self.packages[package].dir.join("recipe.toml"),
            message: format!(
                "source `{}`: unpack {:?} does not apply to its kind",
                s.name, s.unpack
            ),
        };
        if let SourceKind::Path { path, sha256 } = &s.kind {
            let abs = self.packages[package].root.join(path);
            if let Some(exp) = sha256 {
                let actual = hash::path_hash(&abs)?;
                if *exp != actual {
                    return Err(PkgError::HashMismatch {
                        package: package.into(),
                        source_name: s.name.clone(),
                        file: path.clone(),
                        expected: exp.clone(),
                        actual,
                    });
                }
            }
            let is_file = fs::symlink_metadata(&abs).map_err(io_err(&abs))?.is_file();
            let tarball = unpack::Compression::from_name(&path.to_string()).is_some();
            return match (s.unpack, is_file) {
                (Unpack::Tar, true) => unpack::unpack_tar(&abs, dest),
                (Unpack::Auto, true) if tarball => unpack::unpack_tar(&abs, dest),
                (Unpack::Auto | Unpack::None, true) => {
                    copy_tree(&abs, &dest.join(abs.file_name().unwrap_or_default()))
                }
                (Unpack::Auto | Unpack::None, false) => copy_dir_contents(&abs, dest),
                _ => Err(bad_unpack()),
            };
        }
        let fetched = fetch::fetch(&self.cache, package, s)?;
        if let (SourceKind::DebSrc { .. }, Unpack::Auto) = (&s.kind, s.unpack) {
            let dsc = fetched
                .files
                .iter()
                .find(|f| f.extension().is_some_and(|e| e == "dsc"))
                .ok_or_else(bad_unpack)?;
            return dpkg_source_extract(package, &s.name, dsc, dest);
        }
        let is_deb = matches!(s.kind, SourceKind::Deb { .. });
        let is_dsc = matches!(s.kind, SourceKind::DebSrc { .. });
        for f in &fetched.files {
            let fname = f.file_name().unwrap_or_default();
            let tarball = unpack::Compression::from_name(&fname.to_string_lossy()).is_some();
            match s.unpack {
                Unpack::Deb if !is_dsc => unpack::unpack_deb(f, dest)?,
                Unpack::Auto if is_deb => unpack::unpack_deb(f, dest)?,
                Unpack::Tar if !is_dsc && !is_deb => unpack::unpack_tar(f, dest)?,
                Unpack::Auto if tarball && !is_dsc => unpack::unpack_tar(f, dest)?,
                Unpack::Auto | Unpack::None => copy_tree(f, &dest.join(fname))?,
                _ => return Err(bad_unpack()),
            }
        }
        Ok(())
    }
}

/// `dpkg-source -x`: applies the Debian patches and checks again every file
/// the .dsc lists (fetch checked them already; the .dsc itself is pinned, so
/// its unverifiable signature only earns a warning in the log).
fn dpkg_source_extract(
    package: &str,
    source: &str,
    dsc: &Path,
    dest: &Path,
) -> Result<(), PkgError> {
    fs::remove_dir(dest).map_err(io_err(dest))?;
    let out = std::process::Command::new("dpkg-source")
        .args(["--no-copy", "-x"])
        .arg(dsc)
        .arg(dest)
        .env("LC_ALL", "C")
        .output()
        .map_err(|e| PkgError::Fetch {
            package: package.into(),
            source_name: source.into(),
            message: format!("running dpkg-source (package dpkg-dev): {e}"),
        })?;
    if out.status.success() {
        Ok(())
    } else {
        Err(PkgError::Unpack {
            archive: dsc.to_path_buf(),
            message: format!(
                "dpkg-source -x {}: {}",
                out.status,
                String::from_utf8_lossy(&out.stderr).trim()
            ),
        })
    }
}

/// Copies a file, symlink or directory (recursively), keeping permission bits
/// and never following symlinks.
fn copy_tree(from: &Path, to: &Path) -> Result<(), PkgError> {
    let meta = fs::symlink_metadata(from).map_err(io_err(from))?;
    let ft = meta.file_type();
    if ft.is_symlink() {
        let t = fs::read_link(from).map_err(io_err(from))?;
        std::os::unix::fs::symlink(t, to).map_err(io_err(to))
    } else if ft.is_dir() {
        fs::create_dir(to).map_err(io_err(to))?;
        copy_dir_contents(from, to)?;
        fs::set_permissions(to, meta.permissions()).map_err(io_err(to))
    } else {
        fs::copy(from, to).map_err(io_err(to))?;
        fs::set_permissions(to, meta.permissions()).map_err(io_err(to))
    }
}

fn copy_dir_contents(from: &Path, to: &Path) -> Result<(), PkgError> {
    for e in fs::read_dir(from).map_err(io_err(from))? {
        let e = e.map_err(io_err(from))?;
        copy_tree(&e.path(), &to.join(e.file_name()))?;
    }
    Ok(())
}

/// `root/pkgs/` holds at least one recipe.
fn has_recipes(root: &Path) -> bool {
    fs::read_dir(root.join("pkgs"))
        .map(|rd| rd.flatten().any(|e| e.path().join("recipe.toml").is_file()))
        .unwrap_or(false)
}

/// Every `root/pkgs/*/recipe.toml`, by name, `root` absolute.
fn load_dir(root: &Path) -> Result<BTreeMap<String, Package>, PkgError> {
    let pkgs_dir = root.join("pkgs");
    let mut names: Vec<String> = Vec::new();
    for e in fs::read_dir(&pkgs_dir).map_err(io_err(&pkgs_dir))? {
        let e = e.map_err(io_err(&pkgs_dir))?;
        if e.path().join("recipe.toml").is_file() {
            names.push(e.file_name().to_string_lossy().into_owned());
        }
    }
    names.sort();
    let mut packages = BTreeMap::new();
    for n in names {
        let dir = pkgs_dir.join(&n);
        let rp = dir.join("recipe.toml");
        let recipe = Recipe::load(&rp, &n)?;
        let recipe_bytes = fs::read(&rp).map_err(io_err(&rp))?;
        let sp = dir.join(&recipe.script);
        let script_bytes = fs::read(&sp).map_err(io_err(&sp))?;
        packages.insert(
            n,
            Package {
                recipe,
                dir,
                root: root.to_path_buf(),
                recipe_bytes,
                script_bytes,
            },
        );
    }
    Ok(packages)
}
