//! `cairn profile show`: the resolved profile, each value with the file it
//! comes from (or the command line), so a user sees what an `extends`
//! chain and its list rules made before anything is built.

use std::collections::BTreeMap;
use std::fmt::Write;
use std::path::PathBuf;

use super::{Keyed, List, Op, Profile, ProfileFile};

/// Where each value of a chain comes from: the most derived file that sets
/// it (a scalar) or adds it (a list item, keyed `LIST/KEY`). `chain` is
/// most derived first.
pub(super) fn origins(chain: &[(PathBuf, ProfileFile)]) -> BTreeMap<String, String> {
    let mut o = BTreeMap::new();
    for (path, f) in chain.iter().rev() {
        let from = path.display().to_string();
        let mut set = |key: &str, is: bool| {
            if is {
                o.insert(key.to_string(), from.clone());
            }
        };
        set("name", f.name.is_some());
        if let Some(os) = &f.os {
            set("os.name", os.name.is_some());
            set("os.version", os.version.is_some());
            set("os.source_date_epoch", os.source_date_epoch.is_some());
        }
        if let Some(d) = &f.disk {
            set("disk.size", d.size.is_some());
            set("disk.esp", d.esp.is_some());
            set("disk.boot", d.boot.is_some());
            set("disk.state", d.state.is_some());
        }
        if let Some(s) = &f.secure_boot {
            set("secure_boot.keys", s.keys.is_some());
        }
        if let Some(s) = &f.signing {
            set("signing.key", s.key.is_some());
        }
        let r = f.rootfs.as_ref();
        items(&mut o, "outputs", f.outputs.as_ref(), &from);
        items(
            &mut o,
            "kernel.cmdline",
            f.kernel.as_ref().and_then(|k| k.cmdline.as_ref()),
            &from,
        );
        items(
            &mut o,
            "rootfs.packages",
            r.and_then(|r| r.packages.as_ref()),
            &from,
        );
        items(
            &mut o,
            "rootfs.files",
            r.and_then(|r| r.files.as_ref()),
            &from,
        );
        items(
            &mut o,
            "signing.trust",
            f.signing.as_ref().and_then(|s| s.trust.as_ref()),
            &from,
        );
    }
    o
}

fn items<T: Keyed>(o: &mut BTreeMap<String, String>, list: &str, l: Option<&List<T>>, from: &str) {
    for op in l.map(|l| l.0.as_slice()).unwrap_or_default() {
        if let Op::Add(t) = op {
            o.insert(format!("{list}/{}", t.key()), from.to_string());
        }
    }
}

impl Profile {
    fn from(&self, key: &str) -> &str {
        self.origins.get(key).map_or("default", String::as_str)
    }

    /// The resolved profile as TOML, each value commented with its origin.
    pub fn show(&self) -> String {
        let mut s = String::new();
        let chain: Vec<String> = self.chain.iter().map(|p| p.display().to_string()).collect();
        let _ = writeln!(s, "# {}", chain.join("\n#   extends "));
        let q = |v: &str| toml::Value::String(v.to_string()).to_string();
        let line = |s: &mut String, k: &str, v: String, key: &str| {
            let _ = writeln!(s, "{k} = {v}  # {}", self.from(key));
        };
        line(&mut s, "name", q(&self.name), "name");
        let _ = writeln!(s, "outputs = [");
        for o in &self.outputs {
            let k = o.key();
            let _ = writeln!(s, "  {},  # {}", q(&k), self.from(&format!("outputs/{k}")));
        }
        let _ = writeln!(s, "]\n\n[os]");
        line(&mut s, "name", q(&self.os_name), "os.name");
        line(
            &mut s,
            "version",
            q(&self.version.to_string()),
            "os.version",
        );
        line(
            &mut s,
            "source_date_epoch",
            self.source_date_epoch.to_string(),
            "os.source_date_epoch",
        );
        let _ = writeln!(s, "\n[kernel]\ncmdline = [");
        for c in &self.cmdline {
            let from = match self.origins.get(&format!("kernel.cmdline/{c}")) {
                Some(f) => f.as_str(),
                None if c.starts_with("lockdown=") => "added by cairn (lockdown policy)",
                None => "default",
            };
            let _ = writeln!(s, "  {},  # {from}", q(c));
        }
        let _ = writeln!(s, "]");
        let _ = writeln!(s, "\n[rootfs]\npackages = [");
        for p in &self.packages {
            let _ = writeln!(
                s,
                "  {},  # {}",
                q(p),
                self.from(&format!("rootfs.packages/{p}"))
            );
        }
        let _ = writeln!(s, "]\nfiles = [");
        for f in &self.files {
            let mode = f.mode.as_deref().map(|m| format!(", mode = {}", q(m)));
            let _ = writeln!(
                s,
                "  {{ src = {}, dst = {}{} }},  # {}",
                q(&f.src.display().to_string()),
                q(&f.dst.display().to_string()),
                mode.unwrap_or_default(),
                self.from(&format!("rootfs.files/{}", f.dst.display()))
            );
        }
        let _ = writeln!(s, "]\n\n[disk]");
        for (k, v) in [
            ("size", self.disk.total),
            ("esp", self.disk.esp),
            ("boot", self.disk.boot),
            ("state", self.disk.state),
        ] {
            line(&mut s, k, q(&v.to_string()), &format!("disk.{k}"));
        }
        let _ = writeln!(s, "\n[secure_boot]");
        match &self.secure_boot {
            Some(k) => {
                let _ = writeln!(s, "enabled = true");
                line(
                    &mut s,
                    "keys",
                    q(&k.display().to_string()),
                    "secure_boot.keys",
                );
            }
            None => {
                let _ = writeln!(s, "enabled = false");
            }
        }
        if let Some(k) = &self.signing_key {
            let _ = writeln!(s, "\n[signing]");
            line(&mut s, "key", q(&k.display().to_string()), "signing.key");
        }
        s
    }
}

#[cfg(test)]
mod tests {
    use super::super::{Overrides, Profile};

    #[test]
    fn show_is_toml_with_each_value_from_its_file() {
        let d = tempfile::tempdir().unwrap();
        let default =
            std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../profiles/default.toml");
        let p = d.path().join("edge.toml");
        std::fs::write(
            &p,
            format!(
                "extends = {default:?}\nname = \"edge\"\n[rootfs]\npackages = [\"!cairnd\", \"mytool\"]\n"
            ),
        )
        .unwrap();
        let o = Overrides {
            kernel_args: vec!["quiet".into()],
            ..Default::default()
        };
        let text = Profile::load_overridden(&p, &o).unwrap().show();
        let t: toml::Table = toml::from_str(&text).unwrap();
        assert_eq!(t["name"].as_str(), Some("edge"));
        let pk: Vec<&str> = t["rootfs"]["packages"]
            .as_array()
            .unwrap()
            .iter()
            .filter_map(|v| v.as_str())
            .collect();
        assert_eq!(pk, ["init", "e2fsprogs", "mytool"]);
        let from = |needle: &str| {
            text.lines()
                .find(|l| l.contains(needle))
                .unwrap_or_else(|| panic!("{needle}: {text}"))
                .rsplit("# ")
                .next()
                .unwrap()
                .to_string()
        };
        assert_eq!(from("\"mytool\""), p.display().to_string());
        assert!(from("\"init\"").ends_with("profiles/default.toml"));
        assert_eq!(from("\"quiet\""), "command line (--kernel-arg)");
        assert_eq!(from("lockdown="), "added by cairn (lockdown policy)");
        assert!(from("name = \"edge\"").ends_with("edge.toml"));
    }
}
