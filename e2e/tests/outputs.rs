//! Every output of `cairn build` checked with the tool its users inspect it
//! with (no QEMU here; booting is in the other scenario files).

use std::path::Path;
use std::process::Command;

use anyhow::{ensure, Context, Result};
use e2e::*;

fn out() -> Result<std::path::PathBuf> {
    images_dir()
}

fn tool(cmd: &mut Command) -> Result<String> {
    run(cmd)
}

/// The message `manifest.json.sig` signs: signing/src/verify.rs's context
/// prefix, then the manifest's exact bytes. Spelled out here (not taken
/// from the crate) so the openssl check depends only on the format's docs.
const SIGNING_CONTEXT: &[u8] = b"cairn-manifest-v1\0";

/// The raw 64-byte signature and the key id from `manifest.json.sig`, read
/// with serde_json, not with the signing crate's parser.
fn signature_field(sig_file: &[u8]) -> Result<(Vec<u8>, String)> {
    let v: serde_json::Value = serde_json::from_slice(sig_file).context("manifest.json.sig")?;
    ensure!(v["algorithm"] == "ed25519", "signature file: {v}");
    let hex = v["signature"].as_str().context("signature field")?;
    ensure!(hex.len() == 128, "signature is {} hex digits", hex.len());
    let raw = (0..hex.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&hex[i..i + 2], 16))
        .collect::<Result<Vec<u8>, _>>()
        .context("signature hex")?;
    let key_id = v["key_id"].as_str().context("key_id field")?.to_string();
    Ok((raw, key_id))
}

/// `openssl pkeyutl -verify` of `manifest` against the raw `signature`, as
/// signing/src/verify.rs documents for checking a release by hand.
fn openssl_verifies(key: &Path, manifest: &[u8], signature: &[u8]) -> Result<bool> {
    let dir = tempfile::tempdir()?;
    let (msg, sig) = (dir.path().join("msg"), dir.path().join("sig.bin"));
    std::fs::write(&msg, [SIGNING_CONTEXT, manifest].concat())?;
    std::fs::write(&sig, signature)?;
    let o = Command::new("openssl")
        .args(["pkeyutl", "-verify", "-pubin", "-inkey"])
        .arg(key)
        .arg("-rawin")
        .arg("-in")
        .arg(&msg)
        .arg("-sigfile")
        .arg(&sig)
        .output()
        .context("running openssl")?;
    let said = String::from_utf8_lossy(&o.stdout);
    // Exit 0 and "Signature Verified Successfully"; a bad one exits 1 and
    // says "Signature Verification Failure". Anything else is a broken run.
    match (
        o.status.success(),
        said.contains("Signature Verified Successfully"),
    ) {
        (true, true) => Ok(true),
        (false, false) if said.contains("Signature Verification Failure") => Ok(false),
        _ => anyhow::bail!(
            "openssl pkeyutl -verify ({}): {said}{}",
            o.status,
            String::from_utf8_lossy(&o.stderr)
        ),
    }
}

#[test]
fn manifest_verifies_with_the_release_key() -> Result<()> {
    require_tools(&["openssl", "sha256sum"])?;
    let out = out()?;
    let key_path = release_pubkey()?;
    let key = signing::PublicKey::load(&key_path)?;
    let manifest = std::fs::read(out.join("manifest.json"))?;
    let sig_file = std::fs::read(out.join("manifest.json.sig"))?;

    // The signing crate's verifier: the signature, then every listed
    // artifact's size and sha256.
    let report = signing::verify_dir(&out, std::slice::from_ref(&key))
        .with_context(|| format!("verifying {} with {}", out.display(), key_path.display()))?;

    // openssl, independently, on the same bytes.
    let (signature, key_id) = signature_field(&sig_file)?;
    ensure!(
        key_id == key.id().to_string(),
        "manifest.json.sig names key {key_id}, the release key is {}",
        key.id()
    );
    ensure!(
        openssl_verifies(&key_path, &manifest, &signature)?,
        "openssl does not verify manifest.json.sig with {}",
        key_path.display()
    );

    // One flipped byte, of the manifest or of the signature, fails both.
    let mut bad_manifest = manifest.clone();
    bad_manifest[manifest.len() / 2] ^= 0x01;
    let mut bad_signature = signature.clone();
    bad_signature[5] ^= 0x01;
    ensure!(
        !openssl_verifies(&key_path, &bad_manifest, &signature)?
            && !openssl_verifies(&key_path, &manifest, &bad_signature)?,
        "openssl verified a flipped byte"
    );
    let bad_sig_file =
        String::from_utf8(sig_file.clone())?.replace(&hex_of(&signature), &hex_of(&bad_signature));
    for (m, s, what) in [
        (&bad_manifest[..], &sig_file[..], "manifest.json"),
        (&manifest[..], bad_sig_file.as_bytes(), "manifest.json.sig"),
    ] {
        match signing::verify_manifest(m, s, std::slice::from_ref(&key)) {
            Err(signing::VerifyError::BadSignature { .. }) => {}
            other => anyhow::bail!("a flipped byte in {what}: the verifier said {other:?}"),
        }
    }

    // Every artifact is listed, and sha256sum (the independent tool) agrees
    // with the verified manifest's hash.
    for name in [
        "uki.efi",
        "rootfs.squashfs",
        "rootfs.verity",
        "disk.raw",
        "installer.iso",
        "update.tar",
        "disk.qcow2",
        "disk.vhd",
        "disk.vmdk",
        "gce.tar.gz",
    ] {
        let listed = report
            .manifest
            .artifact(name)
            .with_context(|| format!("manifest.json does not list {name}"))?;
        let hash = sha256_file(&out.join(name))?;
        ensure!(
            listed.sha256 == hash,
            "manifest.json's hash for {name} is {}, sha256sum says {hash}",
            listed.sha256
        );
    }
    Ok(())
}

fn hex_of(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

#[test]
fn disk_raw_has_our_gpt_and_a_clean_esp() -> Result<()> {
    let out = out()?;
    let disk = out.join("disk.raw");
    let v = sgdisk_verify(&disk)?;
    ensure!(v.no_problems(), "sgdisk -v: {}", v.text);
    let parts = partitions(&disk)?;
    let names: Vec<&str> = parts.iter().map(|p| p.name.as_str()).collect();
    ensure!(
        names == ["EFI", "BOOT-A", "BOOT-B", "STATE", "EPHEMERAL"],
        "partitions: {names:?}"
    );
    // BOOT-A's PARTUUID is the contract's slot PARTUUID of the verity root
    // hash (sgdisk prints it upper case).
    let manifest = std::fs::read_to_string(out.join("manifest.json"))?;
    let root = manifest
        .split("\"verity_root_hash\": \"")
        .nth(1)
        .and_then(|r| r.get(..64))
        .context("verity_root_hash in manifest.json")?;
    let want = contract::disk::slot_partuuid_of_hex(root).context("verity_root_hash")?;
    let slot = parts[1].uuid.to_lowercase();
    ensure!(
        slot == want.to_string(),
        "BOOT-A PARTUUID {slot} is not the slot PARTUUID {want} of root hash {root}"
    );
    let esp = &parts[0];
    // fsck.fat exits 0 on some damage (a boot sector differing from its
    // backup): a fresh ESP must have nothing but the banner and summary.
    let fsck = fsck_fat_at(&disk, esp.offset, esp.size)?;
    ensure!(
        fsck.clean(),
        "fsck.fat -n on the ESP ({}):\n{}",
        fsck.status,
        fsck.text
    );
    let linux = esp_dir(&disk, "/EFI/Linux")?;
    ensure!(
        linux.contains("cairn-1.0.0+3.efi"),
        "ESP EFI/Linux: {linux}"
    );
    let loader = tool(
        Command::new("mtype")
            .env("MTOOLS_SKIP_CHECK", "1")
            .arg("-i")
            .arg(format!("{}@@{}", disk.display(), esp.offset))
            .arg("::/loader/loader.conf"),
    )?;
    ensure!(
        !loader.contains("default"),
        "loader.conf must have no default line (it disables fallback): {loader}"
    );
    Ok(())
}

#[test]
fn rootfs_squashfs_and_verity_check_out() -> Result<()> {
    let out = out()?;
    let list = tool(
        Command::new("unsquashfs")
            .arg("-lln")
            .arg(out.join("rootfs.squashfs")),
    )?;
    for p in [
        "/sbin/init",
        "/sbin/mke2fs",
        "/sbin/e2fsck",
        "/usr/bin/cairnd",
        "/usr/lib/os-release",
    ] {
        ensure!(list.contains(p), "rootfs lacks {p}:\n{list}");
    }
    // The whole userland, as unsquashfs sees it: every regular file with an
    // execute bit. No shell, no login, nothing but what cairn runs (Talos
    // counts 12 executables; the default cairn rootfs has these 5).
    let mut execs: Vec<&str> = list
        .lines()
        .filter(|l| l.starts_with('-') && l[..10].contains('x'))
        .filter_map(|l| l.split_whitespace().last())
        .map(|p| p.trim_start_matches("squashfs-root"))
        .collect();
    execs.sort();
    ensure!(
        execs
            == [
                "/sbin/e2fsck",
                "/sbin/init",
                "/sbin/mke2fs",
                "/sbin/tune2fs",
                "/usr/bin/cairnd"
            ],
        "rootfs executables: {execs:?}"
    );
    let manifest = std::fs::read_to_string(out.join("manifest.json"))?;
    let root = manifest
        .split("\"verity_root_hash\": \"")
        .nth(1)
        .and_then(|r| r.get(..64))
        .context("verity_root_hash")?;
    let v = Command::new("veritysetup")
        .arg("verify")
        .arg(out.join("rootfs.squashfs"))
        .arg(out.join("rootfs.verity"))
        .arg(root)
        .output()?;
    ensure!(
        v.status.success(),
        "veritysetup verify: {}",
        String::from_utf8_lossy(&v.stderr)
    );
    Ok(())
}

/// Trust on the node (contract::trust): the rootfs carries exactly the
/// release key's public half, named by its key id, for the node to verify
/// its next release with.
#[test]
fn rootfs_trusts_the_release_key() -> Result<()> {
    let out = out()?;
    let tmp = tempfile::tempdir()?;
    let dest = tmp.path().join("root");
    tool(
        Command::new("unsquashfs")
            .arg("-d")
            .arg(&dest)
            .arg(out.join("rootfs.squashfs"))
            .arg(contract::trust::KEYS_DIR),
    )?;
    let key = signing::PublicKey::load(&release_pubkey()?)?;
    let dir = dest.join(contract::trust::KEYS_DIR);
    let mut found = Vec::new();
    for e in std::fs::read_dir(&dir).with_context(|| format!("{}", dir.display()))? {
        let e = e?;
        found.push((
            e.file_name().to_string_lossy().into_owned(),
            std::fs::read_to_string(e.path())?,
        ));
    }
    ensure!(
        found == vec![(contract::trust::key_file(&key.id()), key.to_pem())],
        "rootfs {} must hold exactly the release key {}: {found:?}",
        contract::trust::KEYS_DIR,
        key.id()
    );
    Ok(())
}

#[test]
fn uki_sections() -> Result<()> {
    let out = out()?;
    let h = tool(Command::new("objdump").arg("-h").arg(out.join("uki.efi")))?;
    for s in [".osrel", ".cmdline", ".linux", ".initrd"] {
        ensure!(h.contains(s), "UKI lacks {s}:\n{h}");
    }
    let tmp = tempfile::tempdir()?;
    let cmd = tmp.path().join("cmdline");
    tool(
        Command::new("objcopy")
            .args(["-O", "binary", "--only-section=.cmdline"])
            .arg(out.join("uki.efi"))
            .arg(&cmd),
    )?;
    let cmdline = std::fs::read_to_string(&cmd)?;
    ensure!(
        cmdline.contains("cairn.rootfs=") && cmdline.contains("cairn.verity="),
        "UKI cmdline: {cmdline}"
    );
    Ok(())
}

#[test]
fn installer_iso_is_hybrid_and_bootable() -> Result<()> {
    let out = out()?;
    let iso = out.join("installer.iso");
    let r = tool(
        Command::new("xorriso")
            .args(["-indev"])
            .arg(&iso)
            .args(["-report_el_torito", "plain"]),
    )?;
    ensure!(r.contains("UEFI"), "El Torito report: {r}");
    let v = sgdisk_verify(&iso)?;
    ensure!(v.no_problems(), "sgdisk -v on the ISO: {}", v.text);
    Ok(())
}

fn same_as_raw(image: &Path, format: &str) -> Result<()> {
    let out = out()?;
    let c = tool(
        Command::new("qemu-img")
            .arg("compare")
            .args(["-f", format, "-F", "raw"])
            .arg(image)
            .arg(out.join("disk.raw")),
    )?;
    ensure!(c.contains("identical"), "qemu-img compare {format}: {c}");
    Ok(())
}

#[test]
fn cloud_images_match_the_raw_disk() -> Result<()> {
    let out = out()?;
    for (file, format) in [("disk.qcow2", "qcow2"), ("disk.vmdk", "vmdk")] {
        let c = tool(
            Command::new("qemu-img")
                .arg("check")
                .args(["-f", format])
                .arg(out.join(file)),
        )?;
        ensure!(c.contains("No errors"), "qemu-img check {file}: {c}");
        same_as_raw(&out.join(file), format)?;
    }
    let vmdk = tool(
        Command::new("qemu-img")
            .arg("info")
            .arg(out.join("disk.vmdk")),
    )?;
    ensure!(vmdk.contains("streamOptimized"), "{vmdk}");
    let vhd = out.join("disk.vhd");
    ensure!(
        std::fs::metadata(&vhd)?.len() % (1 << 20) == 512,
        "Azure VHD: size must be whole MiB + 512-byte footer"
    );
    same_as_raw(&vhd, "vpc")?;
    let t = tool(Command::new("tar").arg("-tzf").arg(out.join("gce.tar.gz")))?;
    ensure!(
        t.trim() == "disk.raw",
        "gce.tar.gz must hold exactly disk.raw: {t}"
    );
    Ok(())
}

#[test]
fn bundle_tar_and_oci_layout() -> Result<()> {
    let out = out()?;
    let t = tool(Command::new("tar").arg("-tf").arg(out.join("update.tar")))?;
    let names: Vec<&str> = t.lines().collect();
    ensure!(
        names.first() == Some(&"manifest.json") && names.contains(&"rootfs.img"),
        "update.tar: {names:?}"
    );
    let manifest = std::fs::read_to_string(out.join("manifest.json"))?;
    let version = manifest
        .split("\"os_version\": \"")
        .nth(1)
        .and_then(|r| r.split('"').next())
        .context("os_version")?;
    let raw = tool(
        Command::new("skopeo")
            .args(["inspect", "--raw"])
            .arg(format!("oci:{}:{version}", out.join("oci").display())),
    )?;
    ensure!(
        raw.contains("application/vnd.cairn.bundle.v1"),
        "skopeo inspect --raw: {raw}"
    );
    Ok(())
}

/// `cairn verify` of the upgrade bundle as users publish it (`update.tar`,
/// not a directory): accepted with the release's key, a copy with one
/// byte flipped in a member refused naming the file and the digest, and
/// `cairn-installer --version` answers (the first-hour issue's small ones).
#[test]
fn verify_takes_the_bundle_tar() -> Result<()> {
    let out = out()?;
    let cairn = repo_root().join("target/release/cairn");
    let key = release_pubkey()?;
    let tar = out.join("update.tar");
    let ok = tool(
        Command::new(&cairn)
            .arg("verify")
            .arg("--pubkey")
            .arg(&key)
            .arg(&tar),
    )?;
    ensure!(
        ok.starts_with("ok: cairn 1.0.0") && ok.contains("(bundle)"),
        "cairn verify update.tar: {ok}"
    );
    let work = tempfile::tempdir()?;
    let bad = work.path().join("update.tar");
    std::fs::copy(&tar, &bad)?;
    let len = std::fs::metadata(&bad)?.len();
    flip_byte(&bad, len / 2)?;
    let o = Command::new(&cairn)
        .arg("verify")
        .arg("--pubkey")
        .arg(&key)
        .arg(&bad)
        .output()?;
    let err = String::from_utf8_lossy(&o.stderr);
    ensure!(
        o.status.code() == Some(contract::exit::VERIFY as i32)
            && err.contains(&bad.display().to_string())
            && err.contains("sha256"),
        "a tampered update.tar is refused (exit 3) naming it and the digest: {:?} {err}",
        o.status.code()
    );
    let o = Command::new(&cairn)
        .arg("verify")
        .arg("--pubkey")
        .arg(&key)
        .arg(work.path().join("missing.tar"))
        .output()?;
    ensure!(
        o.status.code() == Some(contract::exit::IO as i32),
        "a bundle that cannot be read exits 4: {:?} {}",
        o.status.code(),
        String::from_utf8_lossy(&o.stderr)
    );
    let v = tool(Command::new(installer_bin()?).arg("--version"))?;
    ensure!(v.starts_with("cairn-installer "), "--version: {v}");
    Ok(())
}
