//! Deterministic mutation fuzzer for the manifest parser and the signature
//! check. Runs on stable (no libFuzzer), so CI can run it as a plain example:
//!
//! ```text
//! cargo run -p signing --release --example fuzz -- --seconds 45
//! ```
//!
//! Options: `--seconds N` (default 30), `--iterations N` (stop earlier),
//! `--seed N` (default 1). The input sequence depends only on the seed; the
//! time limit only decides how far along it gets.
//!
//! Properties checked on every mutated (manifest, signature) pair:
//! - no parser panics (manifest, unsigned draft, signature file);
//! - a manifest that parses re-serializes to exactly its input (canonical);
//! - `verify_manifest` accepts only the untouched pair.
//!
//! On a violation the offending input is printed as hex and the exit status
//! is 1.

use signing::{sign_manifest, verify_manifest, Artifact, Manifest, PrivateKey, ReleaseMeta};
use signing::{PublicKey, SignatureFile};
use std::collections::BTreeMap;
use std::panic;
use std::process::exit;
use std::time::{Duration, Instant};

/// splitmix64: tiny, seedable, good enough to drive mutations.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }
    fn below(&mut self, n: usize) -> usize {
        if n == 0 {
            0
        } else {
            (self.next() % n as u64) as usize
        }
    }
}

/// Tokens that steer mutations toward JSON and hex edge cases.
const TOKENS: &[&[u8]] = &[
    b"\"",
    b"{",
    b"}",
    b"[",
    b"]",
    b",",
    b":",
    b"null",
    b"true",
    b"-1",
    b"0",
    b"18446744073709551616",
    b"1e309",
    b"\\u0000",
    b"\\ud800",
    b"\xff",
    b"\n",
    b"  ",
    b"\"format\": 2",
    b"\"key_id\": \"\"",
    b"0.0.0-",
    b"+build",
    b"..",
    b"/",
    b"\"name\": \"manifest.json\"",
    b"ffffffffffffffffffffffffffffffff",
];

fn mutate(rng: &mut Rng, input: &[u8]) -> Vec<u8> {
    let mut v = input.to_vec();
    for _ in 0..1 + rng.below(4) {
        let len = v.len();
        match rng.below(8) {
            0 if len > 0 => {
                let i = rng.below(len);
                v[i] ^= 1 << rng.below(8);
            }
            1 if len > 0 => {
                let i = rng.below(len);
                v[i] = rng.next() as u8;
            }
            2 => {
                let i = rng.below(len + 1);
                v.insert(i, rng.next() as u8);
            }
            3 if len > 0 => {
                let i = rng.below(len);
                let n = 1 + rng.below((len - i).min(16));
                v.drain(i..i + n);
            }
            4 => v.truncate(rng.below(len + 1)),
            5 if len > 0 => {
                let i = rng.below(len);
                let n = 1 + rng.below((len - i).min(64));
                let chunk = v[i..i + n].to_vec();
                let at = rng.below(v.len() + 1);
                v.splice(at..at, chunk);
            }
            6 => {
                let t = TOKENS[rng.below(TOKENS.len())];
                let i = rng.below(len + 1);
                v.splice(i..i, t.iter().copied());
            }
            _ if len > 0 => {
                // Overwrite a span with a token: keeps the length roughly stable.
                let t = TOKENS[rng.below(TOKENS.len())];
                let i = rng.below(len);
                let end = (i + t.len()).min(len);
                v.splice(i..end, t.iter().copied());
            }
            _ => v.push(rng.next() as u8),
        }
    }
    v
}

fn seed_release() -> (Vec<u8>, Vec<u8>, PrivateKey) {
    let key = PrivateKey::from_seed(&[0x42; 32]);
    let mut inputs = BTreeMap::new();
    inputs.insert("linux".to_string(), "sha256:4d415b3d".to_string());
    inputs.insert("pkg/musl".to_string(), "cache:1f".to_string());
    let meta = ReleaseMeta {
        os_name: "cairn".into(),
        os_version: "1.2.3-rc.1+b7".parse().unwrap(),
        profile: "qemu".into(),
        source_date_epoch: 1_700_000_000,
        arch: "x86_64".into(),
        inputs,
        verity_root_hash: Some("ab".repeat(32)),
    };
    let mut m = Manifest {
        format: signing::manifest::FORMAT_VERSION,
        os_name: meta.os_name,
        os_version: meta.os_version,
        profile: meta.profile,
        source_date_epoch: meta.source_date_epoch,
        arch: meta.arch,
        artifacts: vec![
            Artifact {
                name: "rootfs.img".into(),
                size: 123_456_789,
                sha256: "01".repeat(32),
            },
            Artifact {
                name: "uki.efi".into(),
                size: 4096,
                sha256: "fe".repeat(32),
            },
        ],
        inputs: meta.inputs,
        verity_root_hash: meta.verity_root_hash,
        key_id: String::new(),
    };
    let (mb, sb) = sign_manifest(&mut m, &key).expect("seed manifest signs");
    (mb, sb, key)
}

fn fail(what: &str, m: &[u8], s: &[u8]) -> ! {
    eprintln!("FUZZ FAILURE: {what}");
    eprintln!("manifest hex: {}", hex::encode(m));
    eprintln!("signature hex: {}", hex::encode(s));
    exit(1);
}

fn arg(args: &[String], name: &str) -> Option<u64> {
    let i = args.iter().position(|a| a == name)?;
    let v = args.get(i + 1).unwrap_or_else(|| {
        eprintln!("{name} needs a value");
        exit(2)
    });
    Some(v.parse().unwrap_or_else(|_| {
        eprintln!("{name}: {v:?} is not a number");
        exit(2)
    }))
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let seconds = arg(&args, "--seconds").unwrap_or(30);
    let max_iter = arg(&args, "--iterations").unwrap_or(u64::MAX);
    let mut rng = Rng(arg(&args, "--seed").unwrap_or(1));

    let (m0, s0, key) = seed_release();
    let other = PrivateKey::from_seed(&[0x17; 32]).public();
    let trusted: Vec<PublicKey> = vec![other, key.public()];
    if verify_manifest(&m0, &s0, &trusted).is_err() {
        fail("seed pair does not verify", &m0, &s0);
    }
    // Keep panics quiet: a panic is reported with its input below.
    panic::set_hook(Box::new(|_| {}));

    let deadline = Instant::now() + Duration::from_secs(seconds);
    let (mut iters, mut parsed, mut sig_parsed) = (0u64, 0u64, 0u64);
    while iters < max_iter && (iters % 256 != 0 || Instant::now() < deadline) {
        iters += 1;
        let (m, s) = match rng.below(3) {
            0 => (mutate(&mut rng, &m0), s0.clone()),
            1 => (m0.clone(), mutate(&mut rng, &s0)),
            _ => (mutate(&mut rng, &m0), mutate(&mut rng, &s0)),
        };
        let result = panic::catch_unwind(|| {
            let p = Manifest::parse(&m).ok();
            let _ = ReleaseMeta::parse_draft(&m);
            let sp = SignatureFile::parse(&s).is_ok();
            let v = verify_manifest(&m, &s, &trusted).is_ok();
            (p, sp, v)
        });
        let Ok((p, sp, v)) = result else {
            fail("panic", &m, &s);
        };
        if let Some(p) = p {
            parsed += 1;
            if p.to_canonical_bytes() != m {
                fail("parsed manifest is not canonical", &m, &s);
            }
        }
        sig_parsed += sp as u64;
        if v && (m != m0 || s != s0) {
            fail("mutated input verified", &m, &s);
        }
    }
    println!(
        "fuzz ok: {iters} inputs, {parsed} manifests and {sig_parsed} signature files parsed, none accepted after mutation"
    );
}
