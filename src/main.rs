//! `pantera`: the secure ingress appliance.

use std::net::IpAddr;
use std::path::PathBuf;
use std::sync::atomic::AtomicBool;
use std::sync::Arc;

use anyhow::{Context, Result};
use clap::{Parser, Subcommand};
use pantera::config::Config;

#[derive(Debug, Parser)]
#[command(name = "pantera", version, about = "Secure ingress: XDP + AF_XDP + userspace TCP/IP + TLS + a durable ledger")]
struct Cli {
    #[command(subcommand)]
    command: Commands,
}

/// Where the configuration comes from, and the overrides of its common fields.
#[derive(Debug, clap::Args)]
struct ServeArgs {
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
}

impl ServeArgs {
    /// The configuration, overrides applied, validated once.
    fn config(&self) -> Result<Config> {
        let mut cfg = match &self.config {
            Some(path) => Config::load(path)?,
            None => Config::lab(&self.home),
        };
        let s = self;
        if let Some(v) = &s.app {
            cfg.service.app = v.clone();
        }
        if let Some(v) = &s.wal_dir {
            cfg.ledger.wal_dir = v.clone();
        }
        if let Some(v) = &s.interface {
            cfg.dataplane.interface = v.clone();
        }
        if let Some(v) = s.address {
            cfg.service.address = v;
        }
        if let Some(v) = s.management {
            cfg.management.listen = v;
        }
        if let Some(v) = &s.durability {
            cfg.ledger.durability = v.clone();
        }
        if let Some(v) = &s.xdp_mode {
            cfg.dataplane.xdp_mode = v.clone();
        }
        cfg.validate()?;
        Ok(cfg)
    }

    fn lab_home(&self) -> Option<&std::path::Path> {
        self.lab.then_some(self.home.as_path())
    }
}

#[derive(Debug, Subcommand)]
enum Commands {
    /// Serve the HTTPS ledger API on the configured NIC queues.
    Serve(ServeArgs),
    /// The kernel-path baseline for benchmarks: the same TLS, HTTP, API and ledger thread over
    /// kernel TCP sockets on `--listen` (no XDP, no AF_XDP).
    ServeKernel {
        #[command(flatten)]
        serve: ServeArgs,
        /// Kernel TCP address to listen on, e.g. 10.99.0.3:8443 in the lab.
        #[arg(long)]
        listen: std::net::SocketAddr,
    },
    /// Development certificates.
    Certs {
        #[command(subcommand)]
        command: CertsCommand,
    },
    /// Parse and validate a configuration file, then exit.
    CheckConfig { path: PathBuf },
    /// Copy the ledger (newest checkpoint, the WAL since it, every other file of the data
    /// directory) into an empty directory, consistent at one batch and verified by recovery,
    /// while the appliance serves or not (docs/operations.md, "Backup and restore").
    Backup {
        /// The ledger's data directory (`ledger.wal_dir`).
        #[arg(long, conflicts_with = "config", required_unless_present = "config")]
        data_dir: Option<PathBuf>,
        /// Take the data directory from this configuration file instead.
        #[arg(long)]
        config: Option<PathBuf>,
        /// Where to write the backup: a directory that does not exist or is empty.
        #[arg(long)]
        to: PathBuf,
    },
    /// Restore a backup into an empty data directory and verify it (the manifest's batch
    /// and state hash after recovery). Run it with the appliance stopped, then start
    /// `serve` on that directory.
    Restore {
        /// The backup directory (`pantera backup --to`).
        #[arg(long)]
        from: PathBuf,
        /// The data directory to create: must not exist or be empty.
        #[arg(long)]
        to: PathBuf,
    },
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
    // A panic on any thread aborts the process, in debug builds too (docs/operations.md).
    pantera::health::install_panic_hook();
    match Cli::parse().command {
        Commands::Serve(args) => pantera::serve::serve(&args.config()?, args.lab_home()),
        Commands::ServeKernel { serve, listen } => {
            let cfg = serve.config()?;
            if let Some(home) = serve.lab_home() {
                pantera::serve::ensure_lab_certificates(home, &cfg)?;
            }
            let stop = Arc::new(AtomicBool::new(false));
            for signal in [signal_hook::consts::SIGTERM, signal_hook::consts::SIGINT] {
                signal_hook::flag::register(signal, Arc::clone(&stop)).context("cannot install signal handlers")?;
            }
            pantera::baseline::serve_kernel(&cfg, listen, stop)
        }
        Commands::Certs { command: CertsCommand::Init { dir, service_ip, force } } => {
            let paths = tls_term::certs::init(&dir, service_ip, force)
                .with_context(|| format!("cannot write certificates to {}", dir.display()))?;
            println!("certificates in {}: {paths:?}", dir.display());
            Ok(())
        }
        Commands::Backup { data_dir, config, to } => {
            let data_dir = match (data_dir, config) {
                (Some(dir), _) => dir,
                (None, Some(path)) => Config::load(&path)?.ledger.wal_dir,
                (None, None) => anyhow::bail!("--data-dir or --config is required"),
            };
            pantera::backup::backup(&data_dir, &to).map(|_| ())
        }
        Commands::Restore { from, to } => pantera::backup::restore(&from, &to).map(|_| ()),
        Commands::CheckConfig { path } => {
            Config::load(&path)?;
            println!("{}: valid", path.display());
            Ok(())
        }
    }
}
