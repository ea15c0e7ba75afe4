//! cairnctl: the client of the node API (issue 14).

use api::client::{Client, ClientError};
use api::client_config::ClientConfig;
use api::role::Operation;
use clap::{Parser, Subcommand};
use std::path::PathBuf;
use std::process::ExitCode;

const EXIT_CODES: &str = "Exit codes:
  0  every node answered the call successfully
  1  a node refused the call (role too weak) or answered an error
  2  usage error, or the client config cannot be read
  3  a node could not be reached: connection or TLS handshake failure";

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
    /// Reboot the node (os:operator).
    Reboot,
    /// Power the node off (os:operator).
    Shutdown,
    /// Boot the previous release next (os:operator).
    Rollback,
    /// The machine config.
    #[command(subcommand)]
    Config(ConfigCommand),
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
    let (op, body) = match &cli.command {
        Command::Version => (Operation::Version, None),
        Command::Status => (Operation::Status, None),
        Command::Reboot => (Operation::Reboot, None),
        Command::Shutdown => (Operation::Shutdown, None),
        Command::Rollback => (Operation::Rollback, None),
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
    let mut code = 0u8;
    for node in &nodes {
        match client.call(node, op, body.as_ref()) {
            Ok(v) => print_ok(&cli, nodes.len() > 1, node, op, &v),
            Err(e) => {
                code = code.max(if e.unreachable() { 3 } else { 1 });
                print_err(&cli, node, &e);
            }
        }
    }
    ExitCode::from(code)
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
        _ => println!("{}", serde_json::to_string_pretty(v).unwrap_or_default()),
    }
}

fn print_err(cli: &Cli, node: &str, e: &ClientError) {
    if cli.json {
        let mut o = serde_json::json!({"node": node, "error": e.to_string()});
        if let ClientError::Node { field: Some(f), .. } = e {
            o["field"] = f.clone().into();
        }
        println!("{o}");
    } else {
        eprintln!("cairnctl: {e}");
    }
}
