//! cairnctl: the client of the node API (issue 14).

use api::client::{Client, ClientError};
use api::client_config::ClientConfig;
use api::role::Operation;
use clap::{Parser, Subcommand};
use std::path::PathBuf;
use std::process::ExitCode;

const EXIT_CODES: &str = "Exit codes:
  0  every node answered the call successfully (a stream ended normally)
  1  a node refused the call (role too weak) or answered an error, or a
     stream ended with the node's error (a failed upgrade)
  2  usage error, or the client config cannot be read
  3  a node could not be reached: connection or TLS handshake failure, or
     the connection was lost during a stream";

/// Manage cairn nodes through their API (mutual TLS; the role is in the
/// client certificate of the config).
#[derive(Parser)]
#[command(name = "cairnctl", version, after_help = EXIT_CODES)]
struct Cli {
    /// Client config written by `cairn gen client`.
    #[arg(long, env = "CAIRNCONFIG")]
    config: PathBuf,
    /// Nodes to call (HOST:PORT, comma-separated), instead of the config's
    /// endpoints.
    #[arg(long, value_delimiter = ',')]
    nodes: Vec<String>,
    /// One JSON object per node and line: {"node":..., "result":...} or
    /// {"node":..., "error":...}.
    #[arg(long)]
    json: bool,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// OS name and release the node booted.
    Version,
    /// The node's status document (slots, releases, health, network, ...).
    Status,
    /// Log lines of SOURCE; without SOURCE, the sources that have lines.
    Logs {
        source: Option<String>,
        /// Keep printing new lines until interrupted or the node goes away.
        #[arg(short, long)]
        follow: bool,
        /// Only the last N kept lines (then new ones with -f).
        #[arg(long, value_name = "N")]
        tail: Option<usize>,
    },
    /// The node's events (boot, services, health, upgrades, config, power).
    Events {
        /// Keep printing new events until interrupted or the node goes away.
        #[arg(short, long)]
        follow: bool,
    },
    /// The kernel log.
    Dmesg,
    /// Run the node's health checks now.
    Health,
    /// Reboot the node (os:operator).
    Reboot,
    /// Power the node off (os:operator).
    Shutdown,
    /// Boot the previous release next (os:operator).
    Rollback,
    /// Pull a release from a registry, verify it, write it to the other
    /// slot and reboot into it (os:operator); prints progress as it comes.
    Upgrade {
        /// REGISTRY/REPO:TAG.
        #[arg(long, required_unless_present = "bundle", conflicts_with = "bundle")]
        image: Option<String>,
        /// Upload this bundle (`update.tar` from `cairn build`) instead:
        /// the node verifies it against the keys its release trusts.
        #[arg(long, value_name = "TAR")]
        bundle: Option<PathBuf>,
        /// The registry speaks plain HTTP (the release is verified anyway).
        #[arg(long, conflicts_with = "bundle")]
        insecure: bool,
    },
    /// The machine config.
    #[command(subcommand)]
    Config(ConfigCommand),
    /// Give each node a new serving certificate from the API CA (os:admin):
    /// issued here with the CA key of --secrets (which never leaves this
    /// machine), checked and stored by the node, served once cairnd
    /// restarts a second later. The CA, and so every client config, stays.
    RotateCerts {
        /// The directory `cairn gen secrets` wrote (ca.crt, ca.key).
        #[arg(long)]
        secrets: PathBuf,
        /// Names the certificate is for (IP or DNS, repeatable); default:
        /// 127.0.0.1, localhost and the host of the node's endpoint.
        #[arg(long = "san", value_name = "NAME")]
        sans: Vec<String>,
        /// Days the new certificate is valid.
        #[arg(long, default_value_t = 365)]
        days: i64,
    },
}

#[derive(Subcommand)]
enum ConfigCommand {
    /// Print the node's stored machine config.
    Get,
    /// Validate and store a machine config (os:admin).
    Apply {
        file: PathBuf,
        /// Validate and show the diff only.
        #[arg(long)]
        dry_run: bool,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let config = match ClientConfig::load(&cli.config) {
        Ok(c) => c,
        Err(e) => return fail(2, &e.to_string()),
    };
    let nodes = if cli.nodes.is_empty() {
        config.endpoints.clone()
    } else {
        cli.nodes.clone()
    };
    if nodes.is_empty() {
        return fail(
            2,
            "no nodes: give --nodes or add endpoints to the client config",
        );
    }
    if let Command::RotateCerts {
        secrets,
        sans,
        days,
    } = &cli.command
    {
        return rotate_certs(&cli, &config, &nodes, secrets, sans, *days);
    }
    let mut query: Vec<(&str, String)> = Vec::new();
    let mut streaming = false;
    let (op, body) = match &cli.command {
        Command::Version => (Operation::Version, None),
        Command::Status => (Operation::Status, None),
        Command::Logs {
            source,
            follow,
            tail,
        } => {
            if let Some(s) = source {
                streaming = true;
                query.push(("source", s.clone()));
                query.push(("follow", follow.to_string()));
                if let Some(n) = tail {
                    query.push(("tail", n.to_string()));
                }
            } else if *follow || tail.is_some() {
                return fail(2, "logs: -f and --tail need a SOURCE");
            }
            (Operation::Logs, None)
        }
        Command::Events { follow } => {
            streaming = true;
            query.push(("follow", follow.to_string()));
            (Operation::Events, None)
        }
        Command::Dmesg => (Operation::Dmesg, None),
        Command::Health => (Operation::Health, None),
        Command::Reboot => (Operation::Reboot, None),
        Command::Shutdown => (Operation::Shutdown, None),
        Command::Rollback => (Operation::Rollback, None),
        Command::Upgrade {
            image,
            bundle,
            insecure,
        } => {
            streaming = true;
            match (image, bundle) {
                (Some(image), _) => (
                    Operation::Upgrade,
                    Some(serde_json::json!({"image": image, "insecure": insecure})),
                ),
                (None, Some(tar)) => {
                    // Refused here rather than mid-upload.
                    if let Err(e) = std::fs::File::open(tar).and_then(|f| f.metadata()) {
                        return fail(2, &format!("bundle {}: {e}", tar.display()));
                    }
                    (Operation::Upgrade, None)
                }
                (None, None) => return fail(2, "upgrade: give --image or --bundle"),
            }
        }
        Command::RotateCerts { .. } => unreachable!("handled above"),
        Command::Config(ConfigCommand::Get) => (Operation::ConfigGet, None),
        Command::Config(ConfigCommand::Apply { file, dry_run }) => {
            match std::fs::read_to_string(file) {
                Ok(text) => (
                    Operation::ConfigApply,
                    Some(serde_json::json!({"config": text, "dry_run": dry_run})),
                ),
                Err(e) => return fail(2, &format!("{}: {e}", file.display())),
            }
        }
    };
    let client = match Client::new(&config) {
        Ok(c) => c,
        Err(e) => return fail(2, &e.to_string()),
    };
    let several = nodes.len() > 1;
    if streaming {
        // One thread per node: follows run side by side until interrupted.
        let code = std::thread::scope(|s| {
            let handles: Vec<_> = nodes
                .iter()
                .map(|node| {
                    let (cli, client, query, body) = (&cli, &client, &query, &body);
                    s.spawn(move || stream(cli, client, several, node, op, query, body.as_ref()))
                })
                .collect();
            handles
                .into_iter()
                .map(|h| h.join().unwrap_or(1))
                .max()
                .unwrap_or(0)
        });
        return ExitCode::from(code);
    }
    let mut code = 0u8;
    for node in &nodes {
        match client.call_with(node, op, &query, body.as_ref()) {
            Ok(v) => print_ok(&cli, several, node, op, &v),
            Err(e) => {
                code = code.max(exit_code(&e));
                print_err(&cli, node, &e);
            }
        }
    }
    ExitCode::from(code)
}

/// `rotate-certs`: one new identity per node (its endpoint's host among
/// the names), sent with the admin's config.
fn rotate_certs(
    cli: &Cli,
    config: &ClientConfig,
    nodes: &[String],
    secrets: &std::path::Path,
    sans: &[String],
    days: i64,
) -> ExitCode {
    use api::pki;
    let s = match pki::Secrets::load(secrets) {
        Ok(s) => s,
        Err(e) => return fail(2, &e.to_string()),
    };
    if let Err(e) = pki::check_sans(sans) {
        return fail(2, &e.to_string());
    }
    if days < 1 {
        return fail(2, "--days must be at least 1");
    }
    let client = match Client::new(config) {
        Ok(c) => c,
        Err(e) => return fail(2, &e.to_string()),
    };
    let mut code = 0u8;
    for node in nodes {
        let names: Vec<String> = if sans.is_empty() {
            let host = node
                .rsplit_once(':')
                .map_or(node.as_str(), |(h, _)| h)
                .trim_start_matches('[')
                .trim_end_matches(']');
            let mut n: Vec<String> = pki::DEFAULT_SANS.iter().map(|s| s.to_string()).collect();
            if !n.iter().any(|s| s == host) && pki::check_sans(&[host.to_string()]).is_ok() {
                n.push(host.to_string());
            }
            n
        } else {
            sans.to_vec()
        };
        let id = match pki::issue_server(&s.ca, &names, pki::Validity::days_from_now(days)) {
            Ok(id) => id,
            Err(e) => return fail(2, &e.to_string()),
        };
        let body = serde_json::json!({"crt": id.cert_pem, "key": id.key_pem});
        match client.call(node, Operation::RotateCerts, Some(&body)) {
            Ok(v) if cli.json => println!("{}", serde_json::json!({"node": node, "result": v})),
            Ok(v) => println!(
                "{node}: rotated: serving certificate serial {} for {} valid until {} (cairnd restarts to serve it)",
                v["serial"].as_str().unwrap_or("?"),
                names.join(", "),
                v["not_after"].as_str().unwrap_or("?")
            ),
            Err(e) => {
                code = code.max(exit_code(&e));
                print_err(cli, node, &e);
            }
        }
    }
    ExitCode::from(code)
}

fn exit_code(e: &ClientError) -> u8 {
    if e.unreachable() {
        3
    } else {
        1
    }
}

/// Prints one node's stream as it arrives; answers its exit code.
fn stream(
    cli: &Cli,
    client: &Client,
    several: bool,
    node: &str,
    op: Operation,
    query: &[(&str, String)],
    body: Option<&serde_json::Value>,
) -> u8 {
    let bundle = match &cli.command {
        Command::Upgrade {
            bundle: Some(tar), ..
        } => Some(tar),
        _ => None,
    };
    let opened = match bundle {
        Some(tar) => client.upgrade_bundle(node, tar),
        None => client.stream(node, op, query, body),
    };
    let lines = match opened {
        Ok(l) => l,
        Err(e) => {
            print_err(cli, node, &e);
            return exit_code(&e);
        }
    };
    let prefix = if several {
        format!("{node} ")
    } else {
        String::new()
    };
    for line in lines {
        let v = match line {
            Ok(v) => v,
            Err(e) => {
                print_err(cli, node, &e);
                return exit_code(&e);
            }
        };
        if cli.json {
            let o = match v {
                serde_json::Value::Object(mut o) => {
                    o.insert("node".into(), node.into());
                    serde_json::Value::Object(o)
                }
                other => serde_json::json!({"node": node, "line": other}),
            };
            println!("{o}");
            continue;
        }
        let s = |k: &str| v[k].as_str().unwrap_or_default().to_string();
        if let Some(r) = v.get("result") {
            // An upgrade's end: init reboots into the new release.
            match r {
                serde_json::Value::Null => println!("{prefix}{op}: done"),
                serde_json::Value::String(m) => println!("{prefix}{op}: done: {m}"),
                // An upgrade attempt (contract::update::Attempt): installed
                // (the node reboots into it) or up to date (nothing to do).
                other if other.get("outcome").is_some() => println!(
                    "{prefix}{op}: {}: {}",
                    other["outcome"].as_str().unwrap_or_default(),
                    other["detail"].as_str().unwrap_or_default()
                ),
                other => println!("{prefix}{op}: done: {other}"),
            }
        } else if v.get("kind").is_some() {
            let by = v["by"]
                .as_str()
                .map(|b| format!(" (by {b})"))
                .unwrap_or_default();
            println!("{prefix}{} {}: {}{by}", v["seq"], s("kind"), s("message"));
        } else if v.get("source").is_some() {
            println!("{prefix}{}: {}", s("source"), s("text"));
        } else {
            println!("{prefix}{v}");
        }
    }
    0
}

fn fail(code: u8, msg: &str) -> ExitCode {
    eprintln!("cairnctl: {msg}");
    ExitCode::from(code)
}

fn print_ok(cli: &Cli, several: bool, node: &str, op: Operation, v: &serde_json::Value) {
    if cli.json {
        println!("{}", serde_json::json!({"node": node, "result": v}));
        return;
    }
    if several {
        println!("== {node}");
    }
    let s = |k: &str| v[k].as_str().unwrap_or_default().to_string();
    match op {
        Operation::Version => println!("{} {} (cairnd {})", s("os"), s("version"), s("api")),
        Operation::ConfigGet => print!("{}", s("config")),
        Operation::ConfigApply => {
            print!("{}", s("diff"));
            if v["applied"].as_bool() == Some(true) {
                println!("applied");
            } else {
                println!("dry run: valid, nothing stored");
            }
        }
        Operation::Reboot | Operation::Shutdown => println!("{op}: requested"),
        Operation::Logs => {
            for src in v["sources"].as_array().into_iter().flatten() {
                println!("{}", src.as_str().unwrap_or_default());
            }
        }
        Operation::Dmesg => print!("{}", s("dmesg")),
        _ => println!("{}", serde_json::to_string_pretty(v).unwrap_or_default()),
    }
}

fn print_err(cli: &Cli, node: &str, e: &ClientError) {
    if cli.json {
        let mut o = serde_json::json!({"node": node, "error": e.to_string()});
        if let ClientError::Node { field: Some(f), .. }
        | ClientError::StreamFailed { field: Some(f), .. } = e
        {
            o["field"] = f.clone().into();
        }
        println!("{o}");
    } else if let ClientError::Node { field: Some(f), .. }
    | ClientError::StreamFailed { field: Some(f), .. } = e
    {
        // The position of a refused config's error (`machine.toml:L:C`).
        eprintln!("cairnctl: {e} (at {f})");
    } else {
        eprintln!("cairnctl: {e}");
    }
}
