#![allow(dead_code)] // each test file uses a part of it
//! A repository of tiny fake recipes (the real kernel takes minutes) and
//! the build options for it, shared by the pipeline tests.

use std::fs;
use std::path::Path;

use builder::pipeline::BuildOptions;

pub fn recipe(repo: &Path, name: &str, outputs: &[&str], script: &str) {
    let d = repo.join("pkgs").join(name);
    fs::create_dir_all(&d).unwrap();
    let outs: Vec<String> = outputs.iter().map(|o| format!("\"{o}\"")).collect();
    fs::write(
        d.join("recipe.toml"),
        format!(
            "name = \"{name}\"\nversion = \"1\"\noutputs = [{}]\n",
            outs.join(", ")
        ),
    )
    .unwrap();
    fs::write(
        d.join("build.sh"),
        format!("#!/bin/bash\nset -euo pipefail\n{script}\n"),
    )
    .unwrap();
}

pub fn fake_repo(repo: &Path) {
    recipe(
        repo,
        "kernel",
        &["bzImage", "config"],
        "printf 'not a kernel %s' \"$SOURCE_DATE_EPOCH\" > \"$CAIRN_OUT/bzImage\"; : > \"$CAIRN_OUT/config\"",
    );
    recipe(
        repo,
        "systemd-boot",
        &["systemd-bootx64.efi", "linuxx64.efi.stub"],
        "cp /usr/lib/systemd/boot/efi/systemd-bootx64.efi /usr/lib/systemd/boot/efi/linuxx64.efi.stub \"$CAIRN_OUT/\"",
    );
    recipe(repo, "init", &["init"], "cp /bin/true \"$CAIRN_OUT/init\"");
    recipe(
        repo,
        "e2fsprogs",
        &["sbin/mke2fs", "sbin/e2fsck"],
        "mkdir -p \"$CAIRN_OUT/sbin\"; cp /sbin/mke2fs /sbin/e2fsck \"$CAIRN_OUT/sbin/\"",
    );
    fs::create_dir_all(repo.join("profiles/files")).unwrap();
    fs::write(repo.join("profiles/files/motd"), "hello\n").unwrap();
    fs::write(
        repo.join("profiles/p.toml"),
        r#"name = "p"
outputs = ["raw", "bundle", "qcow2"]
[os]
name = "cairn"
version = "1.2.3"
source_date_epoch = 1735689600
[kernel]
cmdline = ["console=ttyS0"]
[rootfs]
packages = ["init", "e2fsprogs"]
files = [{ src = "files/motd", dst = "/etc/motd", mode = "0644" }]
[disk]
size = "512MiB"
esp = "64MiB"
boot = "64MiB"
state = "32MiB"
"#,
    )
    .unwrap();
}

pub fn options(repo: &Path, cache: &Path, out: &Path, key: Option<&Path>) -> BuildOptions {
    BuildOptions {
        profile: repo.join("profiles/p.toml"),
        out: out.to_path_buf(),
        key: key.map(Path::to_path_buf),
        cache: Some(cache.to_path_buf()),
        stage_cache: None,
        repo: repo.to_path_buf(),
        secure_boot_keys: None,
        version: None,
        outputs: None,
        kernel_args: Vec::new(),
    }
}
