//! Streaming verification as the installer uses it: read the payload, write
//! it to the target, and only then decide whether to activate it.

use signing::{hash_file, HashingReader, HashingWriter, Sha256Digest, StreamError};
use std::fs;
use std::io::{self, Read, Write};
use std::process::Command;

fn payload() -> Vec<u8> {
    (0..5_000_011u32)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
        .collect()
}

fn sha256sum(path: &std::path::Path) -> String {
    let out = Command::new("sha256sum")
        .arg(path)
        .output()
        .expect("sha256sum (coreutils) must be installed");
    assert!(out.status.success());
    String::from_utf8(out.stdout).unwrap()[..64].to_string()
}

#[test]
fn copy_through_reader_and_writer_matches_sha256sum() {
    let data = payload();
    let d = tempfile::tempdir().unwrap();
    let src = d.path().join("src.img");
    fs::write(&src, &data).unwrap();
    let want = Sha256Digest::from_hex(&sha256sum(&src)).unwrap();

    let mut r = HashingReader::new(fs::File::open(&src).unwrap());
    let dst = d.path().join("dst.img");
    let mut w = HashingWriter::new(fs::File::create(&dst).unwrap());
    io::copy(&mut r, &mut w).unwrap();
    r.expect(want, data.len() as u64).unwrap();
    w.expect(want, data.len() as u64).unwrap();
    assert_eq!(sha256sum(&dst), want.to_hex());
    assert_eq!(hash_file(&dst).unwrap(), (data.len() as u64, want));
}

/// Accepts at most 7 bytes per call, like a pipe or a slow device.
struct Trickle(Vec<u8>);

impl Write for Trickle {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = buf.len().min(7);
        self.0.extend_from_slice(&buf[..n]);
        Ok(n)
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

#[test]
fn short_writes_hash_only_accepted_bytes() {
    let data = &payload()[..10_000];
    let mut w = HashingWriter::new(Trickle(Vec::new()));
    let n = w.write(data).unwrap();
    assert_eq!(n, 7);
    assert_eq!(w.size(), 7);
    w.write_all(&data[7..]).unwrap();
    let out = w.expect(Sha256Digest::of(data), data.len() as u64).unwrap();
    assert_eq!(out.0, data);
}

#[test]
fn mismatch_names_the_numbers() {
    let data = payload();
    let want = Sha256Digest::of(&data);
    let mut corrupt = data.clone();
    corrupt[4_000_000] ^= 4;
    let mut r = HashingReader::new(&corrupt[..]);
    io::copy(&mut r, &mut io::sink()).unwrap();
    let err = r.expect(want, data.len() as u64).unwrap_err();
    assert!(matches!(
        err,
        StreamError::Hash {
            size: 5_000_011,
            ..
        }
    ));
    assert!(err.to_string().contains(&want.to_hex()), "{err}");

    // A stream cut short is a size mismatch, not a hash mismatch.
    let mut r = HashingReader::new(&data[..4096]);
    let mut buf = Vec::new();
    r.read_to_end(&mut buf).unwrap();
    let err = r.expect(want, data.len() as u64).unwrap_err();
    assert!(
        err.to_string().contains("expected 5000011 bytes, got 4096"),
        "{err}"
    );
}

#[test]
fn hash_file_errors_name_the_path() {
    let d = tempfile::tempdir().unwrap();
    let p = d.path().join("absent.img");
    let err = hash_file(&p).unwrap_err();
    assert!(err.to_string().contains("absent.img"), "{err}");
}
