//! Opening a bundle trusts nothing before the signature (issue 12, finding
//! 2): the manifest and its signature come first, bounded, and are verified
//! before any other member is read; then only the listed artifacts, each of
//! its signed size, hashed while it is unpacked. Every refusal names the
//! member and leaves the temporary directory empty.
//!
//! The refusals run `cairn-installer upgrade` with its own TMPDIR, so what
//! it leaves behind (or writes while it runs) can be looked at. The disk
//! does not exist: everything here must be decided before it is opened.

mod common;

use std::fs;
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use common::*;

const GIB: u64 = 1 << 30;

/// A tar built member by member: headers by the `tar` crate, the data and
/// padding written here, so a header may claim a size its data does not
/// have, or a name `tar::Builder` would refuse.
#[derive(Default)]
struct Tar {
    bytes: Vec<u8>,
}

impl Tar {
    fn header(name: &[u8], kind: tar::EntryType, size: u64) -> tar::Header {
        let mut h = tar::Header::new_ustar();
        h.as_ustar_mut().unwrap().name[..name.len()].copy_from_slice(name);
        h.set_entry_type(kind);
        h.set_size(size);
        h.set_mode(0o644);
        h.set_mtime(EPOCH);
        h.set_cksum();
        h
    }

    /// A member whose header says `size` and whose data is `data`.
    fn raw(&mut self, h: &tar::Header, data: &[u8]) -> &mut Self {
        self.bytes.extend_from_slice(h.as_bytes());
        self.bytes.extend_from_slice(data);
        self.bytes.resize(self.bytes.len().next_multiple_of(512), 0);
        self
    }

    fn file(&mut self, name: &str, data: &[u8]) -> &mut Self {
        let h = Self::header(name.as_bytes(), tar::EntryType::Regular, data.len() as u64);
        self.raw(&h, data)
    }

    /// `name` from the bundle directory.
    fn from(&mut self, b: &BundleInfo, name: &str) -> &mut Self {
        self.file(name, &fs::read(b.dir.join(name)).unwrap())
    }

    fn end(mut self) -> Vec<u8> {
        self.bytes.extend_from_slice(&[0; 1024]);
        self.bytes
    }
}

/// A tar of `b`'s files `names`, in that order.
fn tar_of(b: &BundleInfo, names: &[&str]) -> Tar {
    let mut t = Tar::default();
    for n in names {
        t.from(b, n);
    }
    t
}

/// The members of a good bundle in the writer's order.
fn good(b: &BundleInfo) -> Tar {
    tar_of(b, &contract::bundle::FILES)
}

/// A tar whose leading manifest and signature are `b`'s, then `rest`.
fn signed_then(b: &BundleInfo, rest: &[&str]) -> Tar {
    let names: Vec<&str> = ["manifest.json", "manifest.json.sig"]
        .iter()
        .chain(rest)
        .copied()
        .collect();
    tar_of(b, &names)
}

struct Run {
    /// The bundle path as given.
    bundle: PathBuf,
    ok: bool,
    stderr: String,
    /// What the installer left in its TMPDIR.
    left: Vec<String>,
}

fn tmpdir(fx: &Fixture) -> PathBuf {
    let t = fx.path("tmp");
    fs::create_dir_all(&t).unwrap();
    t
}

fn entries(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> = fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    v.sort();
    v
}

fn installer(fx: &Fixture, bundle: &Path) -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_cairn-installer"));
    c.args(["upgrade", "--disk"])
        .arg(fx.path("no-such-disk.img"))
        .arg("--bundle")
        .arg(bundle)
        .arg("--pubkey")
        .arg(fx.pubkey())
        .env("TMPDIR", tmpdir(fx));
    c
}

fn done(fx: &Fixture, bundle: &Path, out: Output) -> Run {
    Run {
        bundle: bundle.to_path_buf(),
        ok: out.status.success(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        left: entries(&tmpdir(fx)),
    }
}

/// `cairn-installer upgrade` of a tar with these bytes.
fn open_tar(fx: &Fixture, bytes: &[u8]) -> Run {
    let p = fx.path("update.tar");
    fs::write(&p, bytes).unwrap();
    done(fx, &p, run(&mut installer(fx, &p)))
}

/// Asserts a refusal that names `member` and `why`, with nothing left in
/// TMPDIR.
fn refused(r: &Run, member: &str, why: &str) {
    assert!(!r.ok, "accepted: {}", r.stderr);
    assert!(
        r.stderr.contains(member) && r.stderr.contains(why),
        "the refusal should name {member:?} and say {why:?}: {}",
        r.stderr
    );
    // The bundle's own error (Error::Bundle / Error::Verify), not the
    // missing disk's after the bundle was accepted.
    assert!(
        r.stderr
            .contains(&format!("bundle {}:", r.bundle.display())),
        "not refused as a bundle: {}",
        r.stderr
    );
    assert!(r.left.is_empty(), "left in TMPDIR: {:?}", r.left);
}

struct Fed {
    run: Run,
    /// Bytes the installer took out of the pipe (plus what the pipe buffer
    /// held when it stopped: at most 1 MiB).
    consumed: u64,
    /// Whether anything appeared in TMPDIR while the bundle was read.
    unpacked: bool,
}

/// Feeds `prefix` and then `zeros` zero bytes to `cairn-installer upgrade`
/// through a FIFO, counting what it reads: a member it never reads cannot
/// have been unpacked, whatever its header claims.
fn feed(fx: &Fixture, prefix: Vec<u8>, zeros: u64) -> Fed {
    let fifo = fx.path("update.tar");
    assert!(tool("mkfifo", &[fifo.to_str().unwrap()]).status.success());
    let tmp = tmpdir(fx);
    let unpacked = Arc::new(AtomicBool::new(false));
    let writer = {
        let (fifo, unpacked) = (fifo.clone(), unpacked.clone());
        std::thread::spawn(move || {
            // Blocks until the installer opens the FIFO.
            let mut f = fs::OpenOptions::new().write(true).open(&fifo).unwrap();
            let mut sent = 0u64;
            let chunk = vec![0u8; 64 << 10];
            let mut left = zeros;
            let mut next: &[u8] = &prefix;
            loop {
                if next.is_empty() {
                    if left == 0 {
                        break;
                    }
                    next = &chunk[..chunk.len().min(left as usize)];
                    left -= next.len() as u64;
                }
                // EPIPE: the installer closed the bundle (Rust ignores
                // SIGPIPE, so it arrives as an error).
                match f.write(next) {
                    Ok(n) => {
                        sent += n as u64;
                        next = &next[n..];
                    }
                    Err(_) => break,
                }
                if !entries(&tmp).is_empty() {
                    unpacked.store(true, Ordering::SeqCst);
                }
            }
            sent
        })
    };
    let child = installer(fx, &fifo)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let out = child.wait_with_output().unwrap();
    // Had the installer never opened the FIFO, this open unblocks the
    // writer; the count then still tells.
    let unblock = fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NONBLOCK)
        .open(&fifo);
    drop(unblock);
    let consumed = writer.join().unwrap();
    Fed {
        run: done(fx, &fifo, out),
        consumed,
        unpacked: unpacked.load(Ordering::SeqCst),
    }
}

/// An unsigned bundle (its manifest edited after signing) whose rootfs.img
/// header claims 4 GiB: refused after the signature, with the 4 GiB member
/// never read and nothing unpacked. Fed through a FIFO holding 64 MiB of
/// that member, so the unfixed installer's unpacking shows as bytes read.
#[test]
fn finding_2_unsigned_bundle_not_unpacked() {
    let fx = Fixture::new();
    let b = bundle(&fx.path("b"), "2.0.0");
    let mut manifest = fs::read(b.dir.join("manifest.json")).unwrap();
    let at = manifest.len() / 2;
    manifest[at] ^= 0x20;
    let mut t = Tar::default();
    t.file("manifest.json", &manifest)
        .from(&b, "manifest.json.sig");
    let h = Tar::header(b"rootfs.img", tar::EntryType::Regular, 4 * GIB);
    t.raw(&h, &[]);
    let prefix = t.bytes.clone();
    let fed = feed(&fx, prefix.clone(), 64 * MIB);
    let r = &fed.run;
    assert!(!r.ok, "accepted an unsigned bundle: {}", r.stderr);
    assert!(
        fed.consumed < prefix.len() as u64 + 2 * MIB,
        "the installer read {} bytes of an unsigned bundle whose manifest and signature end at byte {}",
        fed.consumed,
        prefix.len()
    );
    assert!(!fed.unpacked, "something was unpacked into TMPDIR");
    assert!(
        r.stderr.contains("does not match manifest.json"),
        "the refusal should be the signature's: {}",
        r.stderr
    );
    assert!(r.left.is_empty(), "left in TMPDIR: {:?}", r.left);

    // The same as a sparse 4 GiB file: refused the same way, TMPDIR
    // untouched.
    let fx = Fixture::new();
    let p = fx.path("update.tar");
    let mut f = fs::File::create(&p).unwrap();
    f.write_all(&prefix).unwrap();
    f.set_len(prefix.len() as u64 + 4 * GIB + 1024).unwrap();
    let r = done(&fx, &p, run(&mut installer(&fx, &p)));
    refused(&r, "manifest.json", "does not match");
}

/// A 2 MiB manifest (or signature) is refused by its size, unread, from a
/// tar and from a directory.
#[test]
fn finding_2_manifest_bounded() {
    let fx = Fixture::new();
    let b = bundle(&fx.path("b"), "2.0.0");
    let big = vec![b' '; 2 << 20];
    let mut t = Tar::default();
    t.file("manifest.json", &big).from(&b, "manifest.json.sig");
    refused(&open_tar(&fx, &t.end()), "manifest.json", "2097152 bytes");
    let mut t = Tar::default();
    t.from(&b, "manifest.json").file("manifest.json.sig", &big);
    refused(
        &open_tar(&fx, &t.end()),
        "manifest.json.sig",
        "2097152 bytes",
    );

    for name in ["manifest.json", "manifest.json.sig"] {
        let d = bundle(&fx.path(&format!("dir-{name}")), "2.0.0");
        fs::write(d.dir.join(name), &big).unwrap();
        let r = done(&fx, &d.dir, run(&mut installer(&fx, &d.dir)));
        refused(&r, name, "2097152 bytes");
    }
}

/// A tar in another order is refused by position. (The writer's order, as
/// `cairn build` uses it, is accepted: see the last test.)
#[test]
fn finding_2_manifest_and_signature_come_first() {
    let fx = Fixture::new();
    let b = bundle(&fx.path("b"), "2.0.0");
    let t = tar_of(&b, &["uki.efi", "manifest.json", "manifest.json.sig"]);
    refused(
        &open_tar(&fx, &t.end()),
        "first member is \"uki.efi\"",
        "expected \"manifest.json\"",
    );
    let mut t = tar_of(&b, &["manifest.json", "uki.efi", "manifest.json.sig"]);
    t.from(&b, "rootfs.img")
        .from(&b, "systemd-bootx64.efi")
        .from(&b, "layout.json");
    refused(
        &open_tar(&fx, &t.end()),
        "second member is \"uki.efi\"",
        "expected \"manifest.json.sig\"",
    );
    let t = tar_of(&b, &["manifest.json"]);
    refused(&open_tar(&fx, &t.end()), "manifest.json.sig", "ends");
}

/// A member whose header is larger or smaller than its signed size is
/// refused from the header: its data is never read (a 4 GiB claim fed
/// through a FIFO is not consumed).
#[test]
fn finding_2_member_of_other_than_its_signed_size() {
    let fx = Fixture::new();
    let b = bundle(&fx.path("b"), "2.0.0");
    let rootfs = fs::read(b.dir.join("rootfs.img")).unwrap();
    for size in [rootfs.len() as u64 + 512, rootfs.len() as u64 - 1] {
        let fx = Fixture::new();
        let mut t = signed_then(&b, &["uki.efi"]);
        let h = Tar::header(b"rootfs.img", tar::EntryType::Regular, size);
        let data = &rootfs[..rootfs.len().min(size as usize)];
        t.raw(&h, data)
            .from(&b, "systemd-bootx64.efi")
            .from(&b, "layout.json");
        refused(
            &open_tar(&fx, &t.end()),
            "rootfs.img",
            &format!(
                "is {size} bytes, the signed manifest lists {}",
                rootfs.len()
            ),
        );
    }
    let fx = Fixture::new();
    let mut t = signed_then(&b, &["uki.efi"]);
    t.raw(
        &Tar::header(b"rootfs.img", tar::EntryType::Regular, 4 * GIB),
        &[],
    );
    let before = t.bytes.len() as u64;
    let fed = feed(&fx, t.bytes, 64 * MIB);
    refused(&fed.run, "rootfs.img", "signed manifest lists");
    assert!(
        fed.consumed < before + 2 * MIB,
        "read {} bytes; the oversized header ends at {before}",
        fed.consumed
    );
}

/// A signed size with other bytes: found by the hash taken while unpacking.
#[test]
fn finding_2_member_hashed_while_unpacked() {
    let fx = Fixture::new();
    let b = bundle(&fx.path("b"), "2.0.0");
    let mut rootfs = fs::read(b.dir.join("rootfs.img")).unwrap();
    rootfs[1000] ^= 1;
    let mut t = signed_then(&b, &["uki.efi"]);
    t.file("rootfs.img", &rootfs)
        .from(&b, "systemd-bootx64.efi")
        .from(&b, "layout.json");
    refused(&open_tar(&fx, &t.end()), "rootfs.img", "sha256");
}

#[test]
fn finding_2_member_listed_twice() {
    let fx = Fixture::new();
    let b = bundle(&fx.path("b"), "2.0.0");
    let mut t = good(&b);
    t.from(&b, "uki.efi");
    refused(&open_tar(&fx, &t.end()), "uki.efi", "duplicates");
    // The manifest again after the verified one.
    let mut t = good(&b);
    t.from(&b, "manifest.json");
    refused(&open_tar(&fx, &t.end()), "\"manifest.json\"", "duplicates");
}

#[test]
fn finding_2_unlisted_member() {
    let fx = Fixture::new();
    let b = bundle(&fx.path("b"), "2.0.0");
    let mut t = good(&b);
    t.file("evil.sh", b"#!/bin/sh\n");
    refused(
        &open_tar(&fx, &t.end()),
        "evil.sh",
        "not one of the allowed",
    );
}

#[test]
fn finding_2_missing_member() {
    let fx = Fixture::new();
    let b = bundle(&fx.path("b"), "2.0.0");
    let t = signed_then(&b, &["uki.efi", "rootfs.img", "systemd-bootx64.efi"]).end();
    refused(&open_tar(&fx, &t), "layout.json", "does not hold");
}

#[test]
fn finding_2_non_regular_members() {
    use tar::EntryType;
    let fx = Fixture::new();
    let b = bundle(&fx.path("b"), "2.0.0");
    let target = fx.path("outside");
    fs::write(&target, b"target").unwrap();
    for (kind, what) in [
        (EntryType::Symlink, "symbolic link"),
        (EntryType::Link, "hard link"),
        (EntryType::Char, "character device"),
        (EntryType::Block, "block device"),
        (EntryType::Directory, "directory"),
        (EntryType::Fifo, "FIFO"),
    ] {
        let mut t = signed_then(&b, &[]);
        let mut h = Tar::header(b"uki.efi", kind, 0);
        h.set_link_name(&target).unwrap();
        h.set_cksum();
        t.raw(&h, &[]);
        for n in [
            "uki.efi",
            "rootfs.img",
            "systemd-bootx64.efi",
            "layout.json",
        ] {
            t.from(&b, n);
        }
        refused(&open_tar(&fx, &t.end()), "uki.efi", what);
    }
    // A directory member of any name.
    let mut t = signed_then(&b, &[]);
    t.raw(&Tar::header(b"sub/", EntryType::Directory, 0), &[]);
    refused(&open_tar(&fx, &t.end()), "sub", "directory");
}

#[test]
fn finding_2_path_traversal() {
    let fx = Fixture::new();
    let b = bundle(&fx.path("b"), "2.0.0");
    let uki = fs::read(b.dir.join("uki.efi")).unwrap();
    for name in ["../uki.efi", "/tmp/uki.efi", "x/../uki.efi", "./uki.efi"] {
        let mut t = signed_then(&b, &[]);
        let h = Tar::header(name.as_bytes(), tar::EntryType::Regular, uki.len() as u64);
        t.raw(&h, &uki);
        refused(&open_tar(&fx, &t.end()), name, "");
    }
    assert!(!fx.path("uki.efi").exists());
}

/// The bundle as the writer archives it for `cairn build` (manifest and
/// signature first) opens: the refusal is the missing disk's, after it, and
/// the unpacked files are gone with the process.
#[test]
fn finding_2_written_tar_opens_and_cleans_up() {
    let fx = Fixture::new();
    let b = bundle(&fx.path("b"), "2.0.0");
    let p = fx.path("update.tar");
    bundle_tar(&b, &p);
    let r = done(&fx, &p, run(&mut installer(&fx, &p)));
    assert!(
        r.stderr.contains("no-such-disk") && !r.stderr.contains("bundle "),
        "{}",
        r.stderr
    );
    assert!(r.left.is_empty(), "left in TMPDIR: {:?}", r.left);
    // And the same members in the same order, built here, too.
    let r = open_tar(&fx, &good(&b).end());
    assert!(!r.stderr.contains("bundle "), "{}", r.stderr);
}
