//! `cairn gen`: the node API's secrets and client configs (issue 14). The
//! logic is in the api crate; this only parses arguments.

use anyhow::Context;
use clap::Subcommand;
use std::path::PathBuf;

#[derive(Subcommand)]
pub enum GenCommand {
    /// Make the machine API CA and the node's serving identity in DIR:
    /// ca.crt, ca.key (0600, keep it off the node), server.crt, server.key
    /// (0600). Existing files are never overwritten.
    Secrets {
        #[arg(long)]
        out: PathBuf,
        /// IP address or DNS name the node is reached at (repeatable);
        /// default 127.0.0.1 and localhost.
        #[arg(long = "san")]
        sans: Vec<String>,
    },
    /// Write the `[api]` table of a machine config (0600) with the node's
    /// identity from --secrets (ca.crt, server.crt, server.key; not
    /// ca.key): append it to the machine config given at install.
    MachineApi {
        #[arg(long)]
        secrets: PathBuf,
        /// ADDRESS:PORT cairnd listens on (default 0.0.0.0:50000).
        #[arg(long)]
        listen: Option<String>,
        #[arg(long)]
        out: PathBuf,
    },
    /// Sign a client certificate with the CA in --secrets and write a
    /// client config for cairnctl (0600).
    Client {
        #[arg(long)]
        secrets: PathBuf,
        /// os:reader, os:operator or os:admin.
        #[arg(long)]
        role: api::role::Role,
        /// The certificate's CN, shown in the node's logs.
        #[arg(long)]
        name: String,
        /// HOST:PORT of a node (repeatable).
        #[arg(long = "endpoint")]
        endpoints: Vec<String>,
        /// Days the certificate is valid.
        #[arg(long, default_value_t = api::gen::CLIENT_DAYS)]
        days: i64,
        #[arg(long)]
        out: PathBuf,
    },
}

pub fn run(cmd: GenCommand) -> anyhow::Result<()> {
    match cmd {
        GenCommand::Secrets { out, sans } => {
            api::gen::secrets(&out, &sans).context("cairn gen secrets")?;
            eprintln!(
                "wrote {}/{{ca.crt,ca.key,server.crt,server.key}}",
                out.display()
            );
        }
        GenCommand::MachineApi {
            secrets,
            listen,
            out,
        } => {
            api::gen::machine_api(&secrets, listen.as_deref(), &out)
                .context("cairn gen machine-api")?;
            eprintln!("wrote {} ([api] with the node's identity)", out.display());
        }
        GenCommand::Client {
            secrets,
            role,
            name,
            endpoints,
            days,
            out,
        } => {
            api::gen::client(&secrets, role, &name, &endpoints, days, &out)
                .context("cairn gen client")?;
            eprintln!("wrote {} (CN={name}, {role})", out.display());
        }
    }
    Ok(())
}
