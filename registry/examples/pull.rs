//! `cargo run -p registry --release --example pull -- [--plain-http] REF DIR KEY.pub...`:
//! the library's pull on its own (what `cairn pull` does), for measuring
//! throughput and memory without the rest of the builder.

use std::path::{Path, PathBuf};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_ansi(false)
        .init();
    let mut args: Vec<String> = std::env::args().skip(1).collect();
    let plain_http = args.first().is_some_and(|a| a == "--plain-http");
    if plain_http {
        args.remove(0);
    }
    let [reference, dir, keys @ ..] = args.as_slice() else {
        return Err("usage: pull [--plain-http] REF DIR KEY.pub...".into());
    };
    let r = registry::Reference::parse(reference)?;
    let trusted = keys
        .iter()
        .map(|k| signing::PublicKey::load(Path::new(k)))
        .collect::<Result<Vec<_>, _>>()?;
    let opts = registry::ClientOptions {
        plain_http,
        ..Default::default()
    };
    let client = registry::Client::for_reference(&r, &opts)?;
    let release = registry::fetch_verified_manifest(&client, &r, &trusted)?;
    let bytes = release.pull_to_dir(&PathBuf::from(dir))?;
    println!("{} {}: {bytes} bytes verified", r, release.version());
    Ok(())
}
