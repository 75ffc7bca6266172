//! `pantera`: the secure ingress appliance.

use std::net::IpAddr;
use std::path::PathBuf;

use anyhow::{Context, Result};
use clap::{Parser, Subcommand};
use pantera::config::Config;

#[derive(Debug, Parser)]
#[command(name = "pantera", version, about = "Secure ingress: XDP + AF_XDP + userspace TCP/IP + TLS + a durable ledger")]
struct Cli {
    #[command(subcommand)]
    command: Commands,
}

#[derive(Debug, Subcommand)]
enum Commands {
    /// Serve the HTTPS ledger API on the configured NIC queues.
    Serve {
        /// Serve on the lab (pantera0, 10.99.0.2:8443, mTLS with the dev CA under --home).
        #[arg(long, conflicts_with = "config")]
        lab: bool,
        /// The configuration file (TOML), see docs/operations.md.
        #[arg(long, required_unless_present = "lab")]
        config: Option<PathBuf>,
        /// State directory for --lab (certificates and WAL).
        #[arg(long, default_value = ".pantera")]
        home: PathBuf,
        /// Override `service.app`: ledger (HTTPS) or echo (TCP byte echo, for dataplane tests).
        #[arg(long)]
        app: Option<String>,
        /// Override `ledger.wal_dir`.
        #[arg(long)]
        wal_dir: Option<PathBuf>,
        /// Override `dataplane.interface`.
        #[arg(long)]
        interface: Option<String>,
        /// Override `service.address`.
        #[arg(long)]
        address: Option<std::net::Ipv4Addr>,
        /// Override `management.listen`.
        #[arg(long)]
        management: Option<std::net::SocketAddr>,
        /// Override `ledger.durability` (fsync | none; none is for benchmarks only).
        #[arg(long)]
        durability: Option<String>,
        /// Override `dataplane.xdp_mode` (auto | native | generic).
        #[arg(long)]
        xdp_mode: Option<String>,
    },
    /// Development certificates.
    Certs {
        #[command(subcommand)]
        command: CertsCommand,
    },
    /// Parse and validate a configuration file, then exit.
    CheckConfig { path: PathBuf },
}

#[derive(Debug, Subcommand)]
enum CertsCommand {
    /// Write a dev CA, a server certificate and the `client` (write) and `reader` (read)
    /// client certificates. Existing files are kept unless --force.
    Init {
        #[arg(long, default_value = ".pantera/tls")]
        dir: PathBuf,
        /// The address the server certificate is issued for.
        #[arg(long, default_value = "10.99.0.2")]
        service_ip: IpAddr,
        #[arg(long)]
        force: bool,
    },
}

fn main() -> Result<()> {
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("info")).init();
    match Cli::parse().command {
        Commands::Serve { lab, config, home, app, wal_dir, interface, address, management, durability, xdp_mode } => {
            let mut cfg = match (&config, lab) {
                (Some(path), _) => Config::load(path)?,
                (None, _) => Config::lab(&home),
            };
            if let Some(v) = app {
                cfg.service.app = v;
            }
            if let Some(v) = wal_dir {
                cfg.ledger.wal_dir = v;
            }
            if let Some(v) = interface {
                cfg.dataplane.interface = v;
            }
            if let Some(v) = address {
                cfg.service.address = v;
            }
            if let Some(v) = management {
                cfg.management.listen = v;
            }
            if let Some(v) = durability {
                cfg.ledger.durability = v;
            }
            if let Some(v) = xdp_mode {
                cfg.dataplane.xdp_mode = v;
            }
            cfg.validate()?;
            pantera::serve::serve(&cfg, lab.then_some(home.as_path()))
        }
        Commands::Certs { command: CertsCommand::Init { dir, service_ip, force } } => {
            let paths = tls_term::certs::init(&dir, service_ip, force)
                .with_context(|| format!("cannot write certificates to {}", dir.display()))?;
            println!("certificates in {}: {paths:?}", dir.display());
            Ok(())
        }
        Commands::CheckConfig { path } => {
            Config::load(&path)?;
            println!("{}: valid", path.display());
            Ok(())
        }
    }
}
