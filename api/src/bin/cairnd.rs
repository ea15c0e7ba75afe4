//! cairnd: the node API (issue 14). Serves the API over mutual TLS from the
//! identity in `--secrets` (ca.crt, server.crt, server.key).

use api::control::Control;
use api::node::InitNode;
use api::pki::NodeSecrets;
use clap::Parser;
use std::path::PathBuf;
use std::sync::Arc;

/// The cairn node API: HTTP/JSON over TLS 1.3, client certificates required.
#[derive(Parser)]
#[command(name = "cairnd", version)]
struct Args {
    /// Address to listen on.
    #[arg(long, default_value = "0.0.0.0:50000")]
    listen: String,
    /// Directory with ca.crt, server.crt and server.key (ca.key is not needed).
    #[arg(long)]
    secrets: PathBuf,
    #[arg(long, default_value = "/etc/os-release", hide = true)]
    os_release: PathBuf,
    #[arg(long, default_value = contract::machine::NODE_STATUS, hide = true)]
    status: PathBuf,
    /// init's control socket: everything but version and status is asked
    /// of init there.
    #[arg(long, default_value = contract::control::SOCKET, hide = true)]
    control: PathBuf,
}

fn main() -> std::process::ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        // Colours only on a terminal: on the node this goes to the console log.
        .with_ansi(
            std::io::IsTerminal::is_terminal(&std::io::stderr())
                && std::env::var_os("NO_COLOR").is_none_or(|v| v.is_empty()),
        )
        .init();
    let args = Args::parse();
    match run(args) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("cairnd: {e}");
            std::process::ExitCode::FAILURE
        }
    }
}

/// After a rotation: exit (cleanly) a moment after the answer left, so
/// init restarts cairnd and it loads the new identity from `--secrets`.
fn restart_soon() {
    let _ = std::thread::Builder::new()
        .name("restart".into())
        .spawn(|| {
            std::thread::sleep(std::time::Duration::from_secs(1));
            tracing::info!("restarting to serve the rotated certificate");
            std::process::exit(0);
        });
}

fn run(args: Args) -> Result<(), Box<dyn std::error::Error>> {
    let secrets = NodeSecrets::load(&args.secrets)?;
    let tls = api::server::tls_config(&secrets)?;
    let node = Arc::new(InitNode {
        os_release: args.os_release,
        status: args.status,
        control: Control::new(args.control),
        api_ca: secrets.ca_pem.clone(),
        after_rotate: restart_soon,
    });
    // Two workers: the API is light and shares the node with its services.
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .max_blocking_threads(4)
        .enable_all()
        .build()?;
    rt.block_on(async move {
        let listener = tokio::net::TcpListener::bind(&args.listen)
            .await
            .map_err(|e| format!("listening on {}: {e}", args.listen))?;
        // Tests pass 127.0.0.1:0 and read the port from this line.
        tracing::info!("cairnd listening on {}", listener.local_addr()?);
        api::server::serve(listener, tls, node).await;
        Ok(())
    })
}
