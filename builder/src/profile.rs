//! Image profiles: declarative TOML describing what goes into an image.
//!
//! A profile may `extends` another; each file is parsed on its own against a
//! schema where every field is optional and unknown keys are rejected, so an
//! error always names the file, line and key it comes from. The chain is then
//! merged (the extending file's scalars win, tables merge field by field,
//! lists extend: [`List`]) and the result checked for required fields.

use std::fmt;
use std::path::{Path, PathBuf};

use serde::de::{self, Deserializer};
use serde::Deserialize;

mod show;

#[derive(Debug, thiserror::Error)]
pub enum ProfileError {
    #[error("reading profile {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path}:{line}:{column}: {message}")]
    Parse {
        path: PathBuf,
        line: usize,
        column: usize,
        message: String,
    },
    /// A `cairn build` flag that overrides the profile.
    #[error("{flag}: {message}")]
    Flag { flag: &'static str, message: String },
    #[error("{path}: profile chain extends itself ({chain})")]
    Cycle { path: PathBuf, chain: String },
    #[error("{path}: required key `{key}` is not set (nor by any profile it extends)")]
    Missing { path: PathBuf, key: &'static str },
    #[error("{path}: `{key}`: {message}")]
    Invalid {
        path: PathBuf,
        key: &'static str,
        message: String,
    },
}

/// A size in bytes, written in TOML as an integer or a string like `"512MiB"`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct Size(pub u64);

impl Size {
    pub fn parse(s: &str) -> Result<Size, String> {
        let s = s.trim();
        let split = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
        let (num, unit) = s.split_at(split);
        let n: u64 = num
            .parse()
            .map_err(|_| format!("`{s}` is not a size (expected e.g. 512MiB or 2GiB)"))?;
        let mult: u64 = match unit.trim() {
            "" | "B" => 1,
            "KiB" | "K" => 1 << 10,
            "MiB" | "M" => 1 << 20,
            "GiB" | "G" => 1 << 30,
            "TiB" | "T" => 1 << 40,
            other => {
                return Err(format!(
                    "unknown size unit `{other}` in `{s}` (use KiB, MiB, GiB, TiB)"
                ))
            }
        };
        n.checked_mul(mult)
            .map(Size)
            .ok_or_else(|| format!("size `{s}` overflows"))
    }
}

impl fmt::Display for Size {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let n = self.0;
        for (unit, m) in [("GiB", 1u64 << 30), ("MiB", 1 << 20), ("KiB", 1 << 10)] {
            if n >= m && n.is_multiple_of(m) {
                return write!(f, "{}{unit}", n / m);
            }
        }
        write!(f, "{n}B")
    }
}

impl<'de> Deserialize<'de> for Size {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Size, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Raw {
            Int(u64),
            Str(String),
        }
        match Raw::deserialize(d)? {
            Raw::Int(n) => Ok(Size(n)),
            Raw::Str(s) => Size::parse(&s).map_err(de::Error::custom),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Output {
    /// `disk.raw`: a complete installed disk, slot A.
    Raw,
    /// `installer.iso`: hybrid ISO that runs the installer.
    Iso,
    Qcow2,
    Vhd,
    Vmdk,
    /// `gce.tar.gz` holding `disk.raw`.
    Gce,
    /// `update.tar`: the upgrade bundle.
    Bundle,
    /// `oci/`: the bundle as an OCI image layout.
    Oci,
}

/// One extra file placed into the rootfs.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ExtraFile {
    /// Host path, relative to the profile file's directory.
    pub src: PathBuf,
    /// Absolute path inside the image.
    pub dst: PathBuf,
    /// Octal permission bits as a string, e.g. "0644".
    #[serde(default)]
    pub mode: Option<String>,
}

/// How a value set by an extending profile combines with the one it
/// inherits: scalars are replaced, lists ([`List`]) extend.
trait Layer: Sized {
    fn layer(base: Option<Self>, over: Option<Self>) -> Option<Self> {
        over.or(base)
    }
}

impl Layer for String {}
impl Layer for u64 {}
impl Layer for bool {}
impl Layer for PathBuf {}
impl Layer for Size {}
impl<T> Layer for toml::Spanned<T> {}

/// One step of a list field as a profile writes it.
#[derive(Debug, Clone)]
enum Op<T> {
    /// `{ replace = [...] }` starts from nothing.
    Clear,
    /// An item: appended, or, when an item with its key is there already,
    /// put in its place (a file for the same `dst`).
    Add(T),
    /// `"!KEY"`: removes the inherited item with that key.
    Remove(String),
}

/// A list field (outputs, kernel.cmdline, rootfs.packages, rootfs.files,
/// signing.trust). An array **extends** what the profiles it extends set;
/// `"!ITEM"` in it removes an inherited item (for files, `"!DST"`); an
/// inline table `{ replace = [...] }` replaces the inherited list whole.
/// Kept as the steps of every file in the chain, base first, and applied
/// once the chain is merged ([`List::resolve`]).
#[derive(Debug, Clone)]
struct List<T>(Vec<Op<T>>);

impl<T> Layer for List<T> {
    fn layer(base: Option<Self>, over: Option<Self>) -> Option<Self> {
        match (base, over) {
            (Some(mut b), Some(o)) => {
                b.0.extend(o.0);
                Some(b)
            }
            (b, o) => o.or(b),
        }
    }
}

/// What identifies a list item: what `"!KEY"` names and what a later item
/// with the same key replaces.
trait Keyed: Sized {
    fn key(&self) -> String;
    /// An item as written (a string, or a table for files): `!KEY` is a
    /// removal.
    fn item<'de, D: Deserializer<'de>>(d: D) -> Result<Op<Self>, D::Error>;
}

/// A string item: `"!KEY"` removes, anything else is the item itself.
fn string_item<T, E: de::Error>(s: String) -> Result<Op<T>, E>
where
    T: de::DeserializeOwned,
{
    match s.strip_prefix('!') {
        Some("") => Err(E::custom("`!` names nothing to remove")),
        Some(k) => Ok(Op::Remove(k.to_string())),
        None => T::deserialize(de::value::StringDeserializer::<E>::new(s)).map(Op::Add),
    }
}

impl Keyed for String {
    fn key(&self) -> String {
        self.clone()
    }
    fn item<'de, D: Deserializer<'de>>(d: D) -> Result<Op<Self>, D::Error> {
        string_item(String::deserialize(d)?)
    }
}

impl Keyed for PathBuf {
    fn key(&self) -> String {
        self.display().to_string()
    }
    fn item<'de, D: Deserializer<'de>>(d: D) -> Result<Op<Self>, D::Error> {
        string_item(String::deserialize(d)?)
    }
}

impl Keyed for Output {
    fn key(&self) -> String {
        format!("{self:?}").to_lowercase()
    }
    fn item<'de, D: Deserializer<'de>>(d: D) -> Result<Op<Self>, D::Error> {
        string_item(String::deserialize(d)?)
    }
}

impl Keyed for ExtraFile {
    fn key(&self) -> String {
        self.dst.display().to_string()
    }
    /// A table is a file; a string `"!DST"` removes the inherited one.
    fn item<'de, D: Deserializer<'de>>(d: D) -> Result<Op<Self>, D::Error> {
        struct V;
        impl<'de> de::Visitor<'de> for V {
            type Value = Op<ExtraFile>;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a file table { src, dst, mode } or \"!DST\" to remove one")
            }
            fn visit_str<E: de::Error>(self, s: &str) -> Result<Self::Value, E> {
                match s.strip_prefix('!') {
                    Some(k) if !k.is_empty() => Ok(Op::Remove(k.to_string())),
                    _ => Err(E::custom(format!(
                        "`{s}`: a file is a table {{ src, dst, mode }}; \"!DST\" removes an inherited one"
                    ))),
                }
            }
            fn visit_map<A: de::MapAccess<'de>>(self, m: A) -> Result<Self::Value, A::Error> {
                ExtraFile::deserialize(de::value::MapAccessDeserializer::new(m)).map(Op::Add)
            }
        }
        d.deserialize_any(V)
    }
}

struct ItemOf<T>(Op<T>);

impl<'de, T: Keyed> Deserialize<'de> for ItemOf<T> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        T::item(d).map(ItemOf)
    }
}

impl<'de, T: Keyed + Deserialize<'de>> Deserialize<'de> for List<T> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V<T>(std::marker::PhantomData<T>);
        impl<'de, T: Keyed + Deserialize<'de>> de::Visitor<'de> for V<T> {
            type Value = List<T>;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("an array (extends the inherited list) or { replace = [...] }")
            }
            fn visit_seq<A: de::SeqAccess<'de>>(self, mut s: A) -> Result<List<T>, A::Error> {
                let mut ops = Vec::new();
                while let Some(ItemOf(op)) = s.next_element::<ItemOf<T>>()? {
                    ops.push(op);
                }
                Ok(List(ops))
            }
            fn visit_map<A: de::MapAccess<'de>>(self, mut m: A) -> Result<List<T>, A::Error> {
                let mut ops = vec![Op::Clear];
                let mut seen = false;
                while let Some(k) = m.next_key::<String>()? {
                    if k != "replace" || seen {
                        return Err(de::Error::custom(format!(
                            "unknown key `{k}`: a list is an array, or {{ replace = [...] }}"
                        )));
                    }
                    seen = true;
                    ops.extend(m.next_value::<Vec<T>>()?.into_iter().map(Op::Add));
                }
                if !seen {
                    return Err(de::Error::custom("{ replace = [...] } needs `replace`"));
                }
                Ok(List(ops))
            }
        }
        d.deserialize_any(V(std::marker::PhantomData))
    }
}

impl<T: Keyed> List<T> {
    /// The list the chain's steps make, or why a removal cannot apply.
    fn resolve(self) -> Result<Vec<T>, String> {
        let mut out: Vec<T> = Vec::new();
        for op in self.0 {
            match op {
                Op::Clear => out.clear(),
                Op::Add(t) => match out.iter().position(|o| o.key() == t.key()) {
                    Some(i) => out[i] = t,
                    None => out.push(t),
                },
                Op::Remove(k) => match out.iter().position(|o| o.key() == k) {
                    Some(i) => {
                        out.remove(i);
                    }
                    None => {
                        return Err(format!(
                            "`!{k}` removes {k}, which is not in the list it extends"
                        ))
                    }
                },
            }
        }
        Ok(out)
    }

    fn paths_from(self, dir: &Path, f: impl Fn(T, &Path) -> T) -> Self {
        List(
            self.0
                .into_iter()
                .map(|op| match op {
                    Op::Add(t) => Op::Add(f(t, dir)),
                    other => other,
                })
                .collect(),
        )
    }
}

macro_rules! partial {
    ($(#[$m:meta])* $name:ident { $($field:ident : $ty:ty),* $(,)? }) => {
        $(#[$m])*
        #[derive(Debug, Clone, Default, Deserialize)]
        #[serde(deny_unknown_fields)]
        struct $name { $($field: Option<$ty>),* }
        impl $name {
            /// Scalars set in `over` win; lists extend ([`List`]).
            fn merge(self, over: Self) -> Self {
                Self { $($field: Layer::layer(self.$field, over.$field)),* }
            }
        }
    };
}

partial!(OsPart {
    name: String,
    version: toml::Spanned<String>,
    source_date_epoch: u64,
});
partial!(KernelPart {
    cmdline: List<String>,
});
partial!(RootfsPart {
    packages: List<String>,
    files: List<ExtraFile>,
});
partial!(DiskPart {
    size: Size,
    esp: Size,
    boot: Size,
    state: Size,
});
partial!(SecureBootPart {
    enabled: bool,
    keys: PathBuf,
});
// `trust`: public keys the release trusts to sign its successors (written
// into the rootfs, contract::trust); unset: the release key's own.
partial!(SigningPart {
    key: PathBuf,
    trust: List<PathBuf>,
});

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct ProfileFile {
    extends: Option<PathBuf>,
    name: Option<String>,
    outputs: Option<List<Output>>,
    os: Option<OsPart>,
    kernel: Option<KernelPart>,
    rootfs: Option<RootfsPart>,
    disk: Option<DiskPart>,
    secure_boot: Option<SecureBootPart>,
    signing: Option<SigningPart>,
}

fn merge_opt<T>(base: Option<T>, over: Option<T>, f: impl FnOnce(T, T) -> T) -> Option<T> {
    match (base, over) {
        (Some(b), Some(o)) => Some(f(b, o)),
        (b, o) => o.or(b),
    }
}

impl ProfileFile {
    fn merge(self, over: ProfileFile) -> ProfileFile {
        ProfileFile {
            extends: None,
            name: over.name.or(self.name),
            outputs: Layer::layer(self.outputs, over.outputs),
            os: merge_opt(self.os, over.os, OsPart::merge),
            kernel: merge_opt(self.kernel, over.kernel, KernelPart::merge),
            rootfs: merge_opt(self.rootfs, over.rootfs, RootfsPart::merge),
            disk: merge_opt(self.disk, over.disk, DiskPart::merge),
            secure_boot: merge_opt(self.secure_boot, over.secure_boot, SecureBootPart::merge),
            signing: merge_opt(self.signing, over.signing, SigningPart::merge),
        }
    }
}

/// Settings from `cairn build`'s command line, over the profile's.
#[derive(Debug, Clone, Default)]
pub struct Overrides {
    /// `--secure-boot-keys`: sign for Secure Boot with this key set.
    pub secure_boot_keys: Option<PathBuf>,
    /// `--version`: `os.version`.
    pub version: Option<String>,
    /// `--output`: replaces `outputs`.
    pub outputs: Option<Vec<Output>>,
    /// `--kernel-arg`: appended to `kernel.cmdline`.
    pub kernel_args: Vec<String>,
}

impl Output {
    /// An output's name as profiles and `--output` write it (`raw`, `iso`, ...).
    pub fn parse(s: &str) -> Result<Output, String> {
        Output::deserialize(de::value::StrDeserializer::<de::value::Error>::new(s)).map_err(|_| {
            format!("unknown output `{s}` (one of raw, iso, qcow2, vhd, vmdk, gce, bundle, oci)")
        })
    }
}

/// A fully resolved profile.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Profile {
    /// The file this profile was loaded from (the most derived one).
    pub path: PathBuf,
    /// Every file of the `extends` chain, most derived first.
    pub chain: Vec<PathBuf>,
    /// Where each value comes from (`cairn profile show`): the most derived
    /// file that sets it, or `command line`; list items keyed `LIST/KEY`.
    pub origins: std::collections::BTreeMap<String, String>,
    pub name: String,
    pub outputs: Vec<Output>,
    pub os_name: String,
    pub version: semver_lite::Version,
    pub source_date_epoch: u64,
    pub cmdline: Vec<String>,
    pub packages: Vec<String>,
    /// Extra files with `src` resolved against the directory of the profile that named them.
    pub files: Vec<ExtraFile>,
    pub disk: DiskSizes,
    pub secure_boot: Option<PathBuf>,
    pub signing_key: Option<PathBuf>,
    /// `signing.trust`: the keys this release trusts to sign the next one;
    /// empty means the release key's public half.
    pub trust: Vec<PathBuf>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DiskSizes {
    pub total: Size,
    pub esp: Size,
    /// Each of BOOT-A and BOOT-B.
    pub boot: Size,
    pub state: Size,
}

/// Minimal semantic version (MAJOR.MINOR.PATCH[-PRE]) for profile validation;
/// ordering of releases is the signing crate's job.
pub mod semver_lite {
    use std::fmt;

    #[derive(Debug, Clone, PartialEq, Eq)]
    pub struct Version(pub String);

    impl Version {
        /// MAJOR.MINOR.PATCH[-PRE] as semver.org has it (no leading zeros),
        /// without build metadata: a `+` in the UKI's name reads as
        /// systemd-boot's boot counter, so the installer would refuse the
        /// release after it was built.
        pub fn parse(s: &str) -> Result<Version, String> {
            let v = semver::Version::parse(s).map_err(|e| {
                format!("`{s}` is not a semantic version MAJOR.MINOR.PATCH[-PRE]: {e}")
            })?;
            if !v.build.is_empty() {
                return Err(format!(
                    "`{s}` has build metadata (`+{}`): a `+` in the UKI's file name reads as systemd-boot's boot counter; use a pre-release (`-{}`) or drop it",
                    v.build, v.build
                ));
            }
            Ok(Version(s.to_string()))
        }
    }

    impl fmt::Display for Version {
        fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str(&self.0)
        }
    }
}

fn parse_file(path: &Path) -> Result<(ProfileFile, String), ProfileError> {
    let text = std::fs::read_to_string(path).map_err(|source| ProfileError::Read {
        path: path.to_path_buf(),
        source,
    })?;
    let file = toml::from_str::<ProfileFile>(&text).map_err(|e| {
        let (line, column) = e.span().map(|s| line_col(&text, s.start)).unwrap_or((0, 0));
        ProfileError::Parse {
            path: path.to_path_buf(),
            line,
            column,
            message: e.message().to_string(),
        }
    })?;
    Ok((file, text))
}

/// What one file gets wrong on its own, found before anything is merged
/// or built, at its line and column: a version that is not one, a file
/// `src` that does not exist.
fn check_file(path: &Path, text: &str, f: &ProfileFile, dir: &Path) -> Result<(), ProfileError> {
    let at = |offset: usize, message: String| {
        let (line, column) = line_col(text, offset);
        ProfileError::Parse {
            path: path.to_path_buf(),
            line,
            column,
            message,
        }
    };
    if let Some(v) = f.os.as_ref().and_then(|o| o.version.as_ref()) {
        semver_lite::Version::parse(v.get_ref())
            .map_err(|m| at(v.span().start, format!("os.version: {m}")))?;
    }
    let files = f.rootfs.as_ref().and_then(|r| r.files.as_ref());
    for op in files.map(|l| l.0.as_slice()).unwrap_or_default() {
        if let Op::Add(file) = op {
            if !dir.join(&file.src).is_file() {
                let src = file.src.display().to_string();
                return Err(at(
                    find_quoted(text, &src).unwrap_or(0),
                    format!(
                        "rootfs.files: src `{src}` is not a file (looked for {})",
                        dir.join(&file.src).display()
                    ),
                ));
            }
        }
    }
    Ok(())
}

/// Where `"item"` (or `'item'`) is written in `text`: the position an error
/// about a list item points at (list items carry no span of their own).
fn find_quoted(text: &str, item: &str) -> Option<usize> {
    [format!("\"{item}\""), format!("'{item}'")]
        .iter()
        .filter_map(|q| text.find(q.as_str()))
        .min()
}

fn line_col(text: &str, offset: usize) -> (usize, usize) {
    let before = &text[..offset.min(text.len())];
    let line = before.matches('\n').count() + 1;
    let column = before.rsplit('\n').next().map_or(0, |l| l.chars().count()) + 1;
    (line, column)
}

impl Profile {
    pub fn load(path: &Path) -> Result<Profile, ProfileError> {
        Self::load_with(path, None)
    }

    /// Loads `path`; `secure_boot_keys` (from the command line) turns Secure
    /// Boot signing on with that key set whatever the profile says.
    pub fn load_with(
        path: &Path,
        secure_boot_keys: Option<&Path>,
    ) -> Result<Profile, ProfileError> {
        Self::load_overridden(
            path,
            &Overrides {
                secure_boot_keys: secure_boot_keys.map(Path::to_path_buf),
                ..Default::default()
            },
        )
    }

    /// Loads `path` with the command line's settings on top, as if one more
    /// profile extended it (CI stamps the version from a tag).
    pub fn load_overridden(path: &Path, o: &Overrides) -> Result<Profile, ProfileError> {
        let secure_boot_keys = o.secure_boot_keys.as_deref();
        let chain = read_chain(path)?;
        Self::from_chain(path, chain, secure_boot_keys, o)
    }

    /// The files of `path`'s `extends` chain, most derived first, each
    /// parsed and checked on its own but not merged: enough to find where
    /// a profile lives (its repository) without what the command line adds.
    pub fn chain_files(path: &Path) -> Result<Vec<PathBuf>, ProfileError> {
        Ok(read_chain(path)?.into_iter().map(|(p, _)| p).collect())
    }
}

/// Reads and checks every file of `path`'s `extends` chain, most derived
/// first, with relative paths made absolute against the file naming them.
fn read_chain(path: &Path) -> Result<Vec<(PathBuf, ProfileFile)>, ProfileError> {
    {
        let mut chain: Vec<(PathBuf, ProfileFile)> = Vec::new();
        let mut next = Some(path.to_path_buf());
        while let Some(p) = next {
            let canon = p.canonicalize().map_err(|source| ProfileError::Read {
                path: p.clone(),
                source,
            })?;
            if chain.iter().any(|(c, _)| *c == canon) {
                let names: Vec<String> =
                    chain.iter().map(|(c, _)| c.display().to_string()).collect();
                return Err(ProfileError::Cycle {
                    path: path.to_path_buf(),
                    chain: names.join(" -> "),
                });
            }
            let (mut file, text) = parse_file(&canon)?;
            let dir = canon.parent().unwrap_or(Path::new("/")).to_path_buf();
            check_file(&canon, &text, &file, &dir)?;
            next = file.extends.as_ref().map(|e| dir.join(e));
            if let Some(rootfs) = file.rootfs.as_mut() {
                rootfs.files = rootfs.files.take().map(|l| {
                    l.paths_from(&dir, |mut f: ExtraFile, d| {
                        f.src = d.join(&f.src);
                        f
                    })
                });
            }
            if let Some(sb) = file.secure_boot.as_mut() {
                sb.keys = sb.keys.take().map(|k| dir.join(k));
            }
            if let Some(s) = file.signing.as_mut() {
                s.key = s.key.take().map(|k| dir.join(k));
                s.trust = s.trust.take().map(|t| {
                    let List(ops) = t.paths_from(&dir, |k: PathBuf, d| d.join(k));
                    // `"!KEY"` names a key the way the profile wrote it.
                    List(
                        ops.into_iter()
                            .map(|op| match op {
                                Op::Remove(k) => Op::Remove(dir.join(k).display().to_string()),
                                other => other,
                            })
                            .collect(),
                    )
                });
            }
            chain.push((canon, file));
        }
        Ok(chain)
    }
}

impl Profile {
    fn from_chain(
        path: &Path,
        chain: Vec<(PathBuf, ProfileFile)>,
        secure_boot_keys: Option<&Path>,
        o: &Overrides,
    ) -> Result<Profile, ProfileError> {
        let files: Vec<PathBuf> = chain.iter().map(|(p, _)| p.clone()).collect();
        let mut origins = show::origins(&chain);
        let mut merged = chain
            .into_iter()
            .rev()
            .map(|(_, f)| f)
            .reduce(ProfileFile::merge)
            .unwrap_or_default();
        if let Some(keys) = secure_boot_keys {
            merged.secure_boot = Some(SecureBootPart {
                enabled: Some(true),
                keys: Some(keys.to_path_buf()),
            });
        }
        let flag = |flag, message| ProfileError::Flag { flag, message };
        if let Some(v) = &o.version {
            semver_lite::Version::parse(v).map_err(|m| flag("--version", m))?;
            origins.insert("os.version".into(), "command line (--version)".into());
            merged.os.get_or_insert_with(Default::default).version =
                Some(toml::Spanned::new(0..0, v.clone()));
        }
        if let Some(outs) = &o.outputs {
            if outs.is_empty() {
                return Err(flag("--output", "names no output".into()));
            }
            let mut ops = vec![Op::Clear];
            ops.extend(outs.iter().copied().map(Op::Add));
            for o in outs {
                origins.insert(
                    format!("outputs/{}", o.key()),
                    "command line (--output)".into(),
                );
            }
            merged.outputs = Some(List(ops));
        }
        if !o.kernel_args.is_empty() {
            let kernel = merged.kernel.get_or_insert_with(Default::default);
            let extra = List(o.kernel_args.iter().cloned().map(Op::Add).collect());
            for a in &o.kernel_args {
                origins.insert(
                    format!("kernel.cmdline/{a}"),
                    "command line (--kernel-arg)".into(),
                );
            }
            kernel.cmdline = Layer::layer(kernel.cmdline.take(), Some(extra));
        }
        let mut p = Self::resolve(path, merged)?;
        p.chain = files;
        p.origins = origins;
        Ok(p)
    }

    /// `FILE:LINE:COLUMN` where the most derived profile of the chain that
    /// writes `"item"` does: for errors about a list item found later (an
    /// unknown package), pointing at the line to fix.
    pub fn locate(&self, item: &str) -> String {
        for p in &self.chain {
            if let Ok(text) = std::fs::read_to_string(p) {
                if let Some(at) = find_quoted(&text, item) {
                    let (line, column) = line_col(&text, at);
                    return format!("{}:{line}:{column}", p.display());
                }
            }
        }
        self.path.display().to_string()
    }

    fn resolve(path: &Path, f: ProfileFile) -> Result<Profile, ProfileError> {
        let missing = |key| ProfileError::Missing {
            path: path.to_path_buf(),
            key,
        };
        let invalid = |key, message: String| ProfileError::Invalid {
            path: path.to_path_buf(),
            key,
            message,
        };
        let os = f.os.unwrap_or_default();
        let kernel = f.kernel.unwrap_or_default();
        let rootfs = f.rootfs.unwrap_or_default();
        fn list<T: Keyed>(
            l: Option<List<T>>,
            key: &'static str,
            invalid: &impl Fn(&'static str, String) -> ProfileError,
        ) -> Result<Option<Vec<T>>, ProfileError> {
            l.map(|l| l.resolve().map_err(|m| invalid(key, m)))
                .transpose()
        }
        let files = list(rootfs.files, "rootfs.files", &invalid)?;
        let packages = list(rootfs.packages, "rootfs.packages", &invalid)?;
        let cmdline = list(kernel.cmdline, "kernel.cmdline", &invalid)?;
        let outputs = list(f.outputs, "outputs", &invalid)?;
        let trust = list(
            f.signing.as_ref().and_then(|s| s.trust.clone()),
            "signing.trust",
            &invalid,
        )?;
        let disk = f.disk.unwrap_or_default();
        let version = os
            .version
            .map(toml::Spanned::into_inner)
            .ok_or_else(|| missing("os.version"))?;
        let version =
            semver_lite::Version::parse(&version).map_err(|m| invalid("os.version", m))?;
        let sizes = DiskSizes {
            total: disk.size.ok_or_else(|| missing("disk.size"))?,
            esp: disk.esp.ok_or_else(|| missing("disk.esp"))?,
            boot: disk.boot.ok_or_else(|| missing("disk.boot"))?,
            state: disk.state.ok_or_else(|| missing("disk.state"))?,
        };
        let fixed = sizes.esp.0 + 2 * sizes.boot.0 + sizes.state.0;
        // 1 MiB alignment and GPT headers at both ends, plus at least 64 MiB of EPHEMERAL.
        let needed = fixed + (66 << 20);
        if sizes.total.0 < needed {
            return Err(invalid(
                "disk.size",
                format!(
                    "{} is too small: EFI {} + 2 x BOOT {} + STATE {} + EPHEMERAL (64MiB min) + GPT needs {}",
                    sizes.total, sizes.esp, sizes.boot, sizes.state, Size(needed)
                ),
            ));
        }
        for file in files.iter().flatten() {
            if !file.dst.is_absolute() {
                return Err(invalid(
                    "rootfs.files",
                    format!("dst `{}` must be an absolute path", file.dst.display()),
                ));
            }
            if let Some(m) = &file.mode {
                u32::from_str_radix(m, 8)
                    .ok()
                    .filter(|m| *m <= 0o7777)
                    .ok_or_else(|| {
                        invalid(
                            "rootfs.files",
                            format!("mode `{m}` is not octal permission bits"),
                        )
                    })?;
            }
        }
        let secure_boot = match f.secure_boot {
            Some(SecureBootPart {
                enabled: Some(true),
                keys,
            }) => Some(keys.ok_or_else(|| {
                invalid(
                    "secure_boot.keys",
                    "Secure Boot is enabled but no key set is given: set it, or pass \
                     `cairn build --secure-boot-keys DIR`"
                        .into(),
                )
            })?),
            _ => None,
        };
        // Every UKI runs locked down: the profile may choose the level, not
        // turn it off (contract::cmdline::lockdown).
        let mut cmdline = cmdline.unwrap_or_default();
        if let Some(p) = contract::cmdline::lockdown(&cmdline.join(" "), secure_boot.is_some())
            .map_err(|e| invalid("kernel.cmdline", e.to_string()))?
        {
            cmdline.push(p);
        }
        let mut outputs = outputs.ok_or_else(|| missing("outputs"))?;
        outputs.sort();
        outputs.dedup();
        Ok(Profile {
            path: path.to_path_buf(),
            chain: Vec::new(),
            origins: Default::default(),
            name: f.name.ok_or_else(|| missing("name"))?,
            outputs,
            os_name: os.name.ok_or_else(|| missing("os.name"))?,
            version,
            source_date_epoch: os
                .source_date_epoch
                .ok_or_else(|| missing("os.source_date_epoch"))?,
            cmdline,
            packages: packages.unwrap_or_default(),
            files: files.unwrap_or_default(),
            disk: sizes,
            secure_boot,
            signing_key: f.signing.as_ref().and_then(|s| s.key.clone()),
            trust: trust.unwrap_or_default(),
        })
    }

    /// `SOURCE_DATE_EPOCH` from the environment wins over the profile's, as
    /// reproducible-builds.org specifies.
    pub fn epoch(&self) -> u64 {
        std::env::var("SOURCE_DATE_EPOCH")
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(self.source_date_epoch)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write(dir: &Path, name: &str, text: &str) -> PathBuf {
        let p = dir.join(name);
        std::fs::write(&p, text).unwrap();
        p
    }

    const BASE: &str = r#"
name = "default"
# (the tests below count lines of this text)
outputs = ["raw", "iso"]
[os]
name = "cairn"
version = "1.0.0"
source_date_epoch = 1735689600
[kernel]
cmdline = ["console=ttyS0"]
[disk]
size = "2GiB"
esp = "128MiB"
boot = "256MiB"
state = "64MiB"
"#;

    #[test]
    fn shipped_profiles_load() {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../profiles");
        for name in ["default", "aws", "gcp", "azure", "vmware"] {
            let p = Profile::load(&dir.join(format!("{name}.toml"))).unwrap();
            assert_eq!(p.name, name);
        }
    }

    /// Each shipped profile keeps default.toml's KSPP parameters (its
    /// `kernel.cmdline` extends the inherited list; a `!` could drop one).
    #[test]
    fn shipped_profiles_carry_the_hardening_parameters() {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../profiles");
        let keys = Path::new("/keys/sb");
        let kspp = [
            "init_on_alloc=1",
            "init_on_free=1",
            "slab_nomerge",
            "page_alloc.shuffle=1",
            "randomize_kstack_offset=on",
            "vsyscall=none",
            "pti=on",
            "oops=panic",
            "intel_iommu=on",
            "iommu.strict=1",
            "iommu.passthrough=0",
        ];
        for (name, lockdown) in [
            ("default", "lockdown=integrity"),
            ("aws", "lockdown=integrity"),
            ("gcp", "lockdown=integrity"),
            ("azure", "lockdown=integrity"),
            ("vmware", "lockdown=integrity"),
            ("test/v2", "lockdown=integrity"),
            ("test/v3", "lockdown=integrity"),
            ("test/secureboot", "lockdown=confidentiality"),
        ] {
            let p = Profile::load_with(
                &dir.join(format!("{name}.toml")),
                name.ends_with("secureboot").then_some(keys),
            )
            .unwrap();
            for k in kspp {
                assert!(p.cmdline.iter().any(|w| w == k), "{name}: no {k}");
            }
            let l: Vec<_> = p
                .cmdline
                .iter()
                .filter(|w| w.starts_with("lockdown="))
                .collect();
            assert_eq!(l, [lockdown], "{name}");
        }
    }

    #[test]
    fn lockdown_none_is_refused_and_a_given_level_kept() {
        let d = tempfile::tempdir().unwrap();
        let none = BASE.replace(
            "[\"console=ttyS0\"]",
            "[\"console=ttyS0\", \"lockdown=none\"]",
        );
        let p = write(d.path(), "p.toml", &none);
        let e = Profile::load(&p).unwrap_err().to_string();
        assert!(e.contains("`kernel.cmdline`: lockdown=none: "), "{e}");
        let given = BASE.replace(
            "[\"console=ttyS0\"]",
            "[\"console=ttyS0\", \"lockdown=confidentiality\"]",
        );
        let p = write(d.path(), "p.toml", &given);
        assert_eq!(
            Profile::load(&p).unwrap().cmdline,
            ["console=ttyS0", "lockdown=confidentiality"]
        );
        let p = write(d.path(), "p.toml", BASE);
        let sb = Profile::load_with(&p, Some(Path::new("/k"))).unwrap();
        assert_eq!(sb.cmdline, ["console=ttyS0", "lockdown=confidentiality"]);
    }

    #[test]
    fn secure_boot_profile_needs_a_key_set() {
        let p = Path::new(env!("CARGO_MANIFEST_DIR")).join("../profiles/test/secureboot.toml");
        let err = Profile::load(&p).unwrap_err().to_string();
        assert!(
            err.contains("secureboot.toml")
                && err.contains("secure_boot.keys")
                && err.contains("--secure-boot-keys"),
            "{err}"
        );
        let keys = Path::new("/keys/sb");
        let prof = Profile::load_with(&p, Some(keys)).unwrap();
        assert_eq!(prof.secure_boot.as_deref(), Some(keys));
        // The command line also turns signing on for a profile without it.
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../profiles");
        let plain = Profile::load_with(&dir.join("default.toml"), Some(keys)).unwrap();
        assert_eq!(plain.secure_boot.as_deref(), Some(keys));
        assert_eq!(
            Profile::load(&dir.join("default.toml"))
                .unwrap()
                .secure_boot,
            None
        );
    }

    #[test]
    fn extends_merges_tables_field_by_field() {
        let d = tempfile::tempdir().unwrap();
        write(d.path(), "base.toml", BASE);
        let p = write(
            d.path(),
            "aws.toml",
            "extends = \"base.toml\"\nname = \"aws\"\n[disk]\nsize = \"4GiB\"\n",
        );
        let p = Profile::load(&p).unwrap();
        assert_eq!(p.name, "aws");
        assert_eq!(p.name, "aws");
        assert_eq!(p.disk.total, Size(4 << 30));
        assert_eq!(p.disk.esp, Size(128 << 20));
        assert_eq!(p.version.to_string(), "1.0.0");
    }

    /// The first-hour footgun: a profile that adds a package or a file
    /// keeps what it extends (init, machine.toml); `!` removes, `replace`
    /// replaces, a file for the same `dst` takes the inherited one's place.
    #[test]
    fn lists_extend_and_say_how_to_remove_or_replace() {
        let d = tempfile::tempdir().unwrap();
        let base = format!(
            "{BASE}[rootfs]\npackages = [\"init\", \"e2fsprogs\"]\nfiles = [{{ src = \"m.toml\", dst = \"/etc/m.toml\" }}]\n"
        );
        write(d.path(), "base.toml", &base);
        for f in ["m.toml", "t", "n", "m2"] {
            write(d.path(), f, "x");
        }
        let child = |name: &str, text: &str| {
            let p = write(
                d.path(),
                name,
                &format!("extends = \"base.toml\"\nname = \"c\"\n{text}"),
            );
            Profile::load(&p)
        };
        let p = child(
            "add.toml",
            "[rootfs]\npackages = [\"mytool\", \"init\"]\nfiles = [{ src = \"t\", dst = \"/usr/bin/t\" }]\n",
        )
        .unwrap();
        assert_eq!(p.packages, ["init", "e2fsprogs", "mytool"]);
        let dsts: Vec<_> = p
            .files
            .iter()
            .map(|f| f.dst.display().to_string())
            .collect();
        assert_eq!(dsts, ["/etc/m.toml", "/usr/bin/t"]);
        assert_eq!(
            p.files[1].src,
            d.path().join("t"),
            "src from the naming file"
        );

        let p = child(
            "rm.toml",
            "outputs = [\"!iso\", \"qcow2\"]\n[kernel]\ncmdline = [\"!console=ttyS0\", \"console=ttyS1\"]\n[rootfs]\npackages = [\"!init\"]\nfiles = [\"!/etc/m.toml\", { src = \"n\", dst = \"/etc/n\" }]\n",
        )
        .unwrap();
        assert_eq!(p.packages, ["e2fsprogs"]);
        assert_eq!(p.outputs, [Output::Raw, Output::Qcow2]);
        assert_eq!(p.cmdline[0], "console=ttyS1");
        assert_eq!(p.files.len(), 1);

        let p = child(
            "re.toml",
            "outputs = { replace = [\"vhd\"] }\n[rootfs]\npackages = { replace = [\"x\"] }\nfiles = [{ src = \"m2\", dst = \"/etc/m.toml\", mode = \"0600\" }]\n",
        )
        .unwrap();
        assert_eq!(p.outputs, [Output::Vhd]);
        assert_eq!(p.packages, ["x"]);
        assert_eq!(p.files.len(), 1, "same dst: replaced in place");
        assert_eq!(p.files[0].src, d.path().join("m2"));

        // Removing what is not inherited is a mistake (a typo), named.
        let e = child("typo.toml", "[rootfs]\npackages = [\"!int\"]\n")
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("typo.toml") && e.contains("rootfs.packages") && e.contains("`!int`"),
            "{e}"
        );
        // A malformed list is a parse error at its line.
        let e = child("bad.toml", "[rootfs]\npackages = { only = [\"x\"] }\n")
            .unwrap_err()
            .to_string();
        assert!(e.contains("bad.toml:4:") && e.contains("replace"), "{e}");
        let e = child("bad2.toml", "[rootfs]\nfiles = [\"/etc/x\"]\n")
            .unwrap_err()
            .to_string();
        assert!(e.contains("bad2.toml:4:") && e.contains("!DST"), "{e}");
    }

    /// Errors a new user meets first, found at load with their position.
    #[test]
    fn bad_versions_and_missing_files_point_at_their_line() {
        let d = tempfile::tempdir().unwrap();
        write(d.path(), "base.toml", BASE);
        for (v, says) in [
            ("01.0.0", "leading zero"),
            ("1.0.0+build.7", "build metadata"),
            ("1.0", "semantic version"),
        ] {
            let p = write(
                d.path(),
                "v.toml",
                &format!("extends = \"base.toml\"\n\n[os]\nversion = \"{v}\"\n"),
            );
            let e = Profile::load(&p).unwrap_err().to_string();
            assert!(e.contains("v.toml:4:11: os.version:"), "{v}: {e}");
            assert!(e.contains(says), "{v}: {e}");
        }
        // The base's own bad version is named in the base, not the child.
        let base = write(
            d.path(),
            "b2.toml",
            &BASE.replace("\"1.0.0\"", "\"1.0.0+x\""),
        );
        let e = Profile::load(&base).unwrap_err().to_string();
        assert!(e.contains("b2.toml:7:"), "{e}");

        let p = write(
            d.path(),
            "f.toml",
            "extends = \"base.toml\"\n[rootfs]\nfiles = [\n  { src = \"nope/motd\", dst = \"/etc/motd\" },\n]\n",
        );
        let e = Profile::load(&p).unwrap_err().to_string();
        assert!(
            e.contains("f.toml:4:11: rootfs.files: src `nope/motd`"),
            "{e}"
        );
        std::fs::create_dir(d.path().join("nope")).unwrap();
        std::fs::write(d.path().join("nope/motd"), "hi").unwrap();
        let p = Profile::load(&p).unwrap();
        assert_eq!(p.chain.len(), 2);
        // An item named later (an unknown package) is located in the file
        // of the chain that writes it.
        let p = write(
            d.path(),
            "k.toml",
            "extends = \"f.toml\"\n[rootfs]\npackages = [\"mytool\"]\n",
        );
        let p = Profile::load(&p).unwrap();
        assert!(
            p.locate("mytool").ends_with("k.toml:3:13"),
            "{}",
            p.locate("mytool")
        );
    }

    /// `cairn build --version/--output/--kernel-arg` over a profile, as
    /// one more profile would: checked the same way.
    #[test]
    fn command_line_overrides() {
        let d = tempfile::tempdir().unwrap();
        let p = write(d.path(), "base.toml", BASE);
        let o = Overrides {
            version: Some("2.3.4-rc.1".into()),
            outputs: Some(vec![Output::Bundle, Output::Raw]),
            kernel_args: vec!["quiet".into()],
            ..Default::default()
        };
        let pr = Profile::load_overridden(&p, &o).unwrap();
        assert_eq!(pr.version.to_string(), "2.3.4-rc.1");
        assert_eq!(pr.outputs, [Output::Raw, Output::Bundle]);
        assert_eq!(pr.cmdline, ["console=ttyS0", "quiet", "lockdown=integrity"]);
        for (o, says) in [
            (
                Overrides {
                    version: Some("1.0.0+ci.5".into()),
                    ..Default::default()
                },
                "--version: `1.0.0+ci.5` has build metadata",
            ),
            (
                Overrides {
                    kernel_args: vec!["lockdown=none".into()],
                    ..Default::default()
                },
                "kernel.cmdline",
            ),
            (
                Overrides {
                    outputs: Some(vec![]),
                    ..Default::default()
                },
                "--output: names no output",
            ),
        ] {
            let e = Profile::load_overridden(&p, &o).unwrap_err().to_string();
            assert!(e.contains(says), "{e}");
        }
        assert_eq!(Output::parse("qcow2"), Ok(Output::Qcow2));
        assert!(Output::parse("floppy").unwrap_err().contains("floppy"));
    }

    #[test]
    fn shipped_test_and_platform_profiles_resolve_as_meant() {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../profiles");
        let v3 = Profile::load(&dir.join("test/v3.toml")).unwrap();
        assert_eq!(v3.packages, ["e2fsprogs"], "v3 has no init");
        assert_eq!(v3.outputs, [Output::Bundle, Output::Oci]);
        let def = Profile::load(&dir.join("default.toml")).unwrap();
        let gcp = Profile::load(&dir.join("gcp.toml")).unwrap();
        assert!(!gcp.cmdline.iter().any(|c| c == "console=tty0"));
        assert!(gcp.cmdline.iter().any(|c| c == "console=ttyS0,38400n8"));
        assert_eq!(gcp.packages, def.packages);
        assert_eq!(gcp.files, def.files);
    }

    #[test]
    fn unknown_key_names_file_line_and_key() {
        let d = tempfile::tempdir().unwrap();
        let p = write(d.path(), "bad.toml", &format!("{BASE}[disk2]\nsize = 1\n"));
        let e = Profile::load(&p).unwrap_err().to_string();
        assert!(e.contains("bad.toml:16:"), "{e}");
        assert!(e.contains("disk2"), "{e}");
    }

    #[test]
    fn wrong_type_names_line() {
        let d = tempfile::tempdir().unwrap();
        let text = BASE.replace(
            "source_date_epoch = 1735689600",
            "source_date_epoch = \"soon\"",
        );
        let p = write(d.path(), "bad.toml", &text);
        let e = Profile::load(&p).unwrap_err().to_string();
        assert!(e.contains("bad.toml:8:"), "{e}");
    }

    #[test]
    fn too_small_disk_says_how_much() {
        let d = tempfile::tempdir().unwrap();
        let p = write(d.path(), "p.toml", &BASE.replace("\"2GiB\"", "\"512MiB\""));
        let e = Profile::load(&p).unwrap_err().to_string();
        assert!(e.contains("disk.size") && e.contains("needs 770MiB"), "{e}");
    }

    #[test]
    fn cycle_is_an_error() {
        let d = tempfile::tempdir().unwrap();
        write(d.path(), "a.toml", "extends = \"b.toml\"");
        let b = write(d.path(), "b.toml", "extends = \"a.toml\"");
        assert!(matches!(Profile::load(&b), Err(ProfileError::Cycle { .. })));
    }

    #[test]
    fn bad_version_and_size() {
        let d = tempfile::tempdir().unwrap();
        let p = write(d.path(), "p.toml", &BASE.replace("\"1.0.0\"", "\"1.0\""));
        assert!(Profile::load(&p)
            .unwrap_err()
            .to_string()
            .contains("os.version"));
        assert_eq!(Size::parse("3MiB"), Ok(Size(3 << 20)));
        assert!(Size::parse("3 parsecs").is_err());
    }
}
