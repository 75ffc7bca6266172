//! `pantera`: the secure ingress appliance.

use std::net::IpAddr;
use std::path::PathBuf;
use std::sync::atomic::AtomicBool;
use std::sync::Arc;

use anyhow::{Context, Result};
use clap::{Parser, Subcommand};
use pantera::config::Config;

#[derive(Debug, Parser)]
#[command(name = "pantera", version = pantera::metric_families::VERSION, about = "Secure ingress: XDP + AF_XDP + userspace TCP/IP + TLS + a durable ledger")]
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
    /// State directory for --lab (certificates, and the data directory `data`, formatted
    /// on first use).
    #[arg(long, default_value = ".pantera")]
    home: PathBuf,
    /// Override `service.app`: ledger (HTTPS) or echo (TCP byte echo, for dataplane tests).
    #[arg(long)]
    app: Option<String>,
    /// Override `ledger.data_dir` (`--wal-dir`, its old name, is accepted).
    #[arg(long, alias = "wal-dir")]
    data_dir: Option<PathBuf>,
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
    /// Keep the books in a TigerBeetle cluster: `ledger.backend = "tigerbeetle"` with these
    /// `[ledger.tigerbeetle] addresses` (every replica, in replica order; the section's other
    /// keys keep their values, or their defaults). Needs a binary built with the `tigerbeetle`
    /// feature.
    #[arg(long, value_name = "ADDRESSES")]
    tigerbeetle: Option<String>,
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
        if let Some(v) = &s.data_dir {
            cfg.ledger.data_dir = v.clone();
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
        if let Some(v) = &s.tigerbeetle {
            cfg.ledger.backend = "tigerbeetle".to_owned();
            match cfg.ledger.tigerbeetle.as_mut() {
                Some(section) => section.addresses = v.clone(),
                None => cfg.ledger.tigerbeetle = Some(pantera::config::TigerBeetleSection::with_addresses(v)),
            }
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
    /// Check a configuration file as `serve` would (every field, the TLS files, the key against
    /// the certificate, the chain), print warnings, then exit: non-zero on an error.
    CheckConfig {
        path: PathBuf,
        /// Print the effective configuration (defaults filled in) as TOML.
        #[arg(long)]
        print: bool,
    },
    /// Copy the ledger (newest checkpoint, the WAL since it, every other file of the data
    /// directory) into an empty directory, consistent at one batch and verified by recovery,
    /// while the appliance serves or not (docs/operations.md, "Backup and restore").
    Backup {
        /// The ledger's data directory (`ledger.data_dir`).
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
    /// Create a data directory for the ledger (mode 0700) with its superblock (cluster id,
    /// a random ledger id, format version, creation time). Refuses a directory that holds
    /// anything. `serve` opens only a formatted directory of its cluster.
    Format(FormatArgs),
    /// Look inside a data directory, offline and read-only: the superblock, checkpoints,
    /// segments and clean-stop marker; every record (--records); one account or transfer as
    /// recovery would rebuild it (docs/operations.md, "Inspecting and verifying").
    Inspect(InspectArgs),
    /// Verify a data directory offline and read-only: every checksum, the parent chain, a full
    /// replay to the state hash, Σ debits = Σ credits (posted and pending) and every account's
    /// limits. Exits non-zero naming the first bad record.
    Verify {
        /// The data directory (a stopped ledger's, or a backup's).
        #[arg(long)]
        data_dir: PathBuf,
        /// Print the report as JSON.
        #[arg(long)]
        json: bool,
    },
    /// Offline tools for the write-ahead log (run them with the server stopped).
    Wal {
        #[command(subcommand)]
        command: WalCommand,
    },
}

/// The data directory and cluster, from a configuration file or given directly.
#[derive(Debug, clap::Args)]
struct FormatArgs {
    /// Take `ledger.data_dir` and `ledger.cluster_id` from this configuration file.
    #[arg(long, required_unless_present = "data_dir")]
    config: Option<PathBuf>,
    /// The directory to create (overrides the configuration's).
    #[arg(long)]
    data_dir: Option<PathBuf>,
    /// The cluster id (overrides the configuration's; default 0).
    #[arg(long)]
    cluster_id: Option<u128>,
}

#[derive(Debug, clap::Args)]
struct InspectArgs {
    /// The data directory (a stopped ledger's, or a backup's).
    #[arg(long)]
    data_dir: PathBuf,
    /// Every record: segment, offset, sequence, time, operations and event counts, status.
    #[arg(long, conflicts_with_all = ["account", "transfer"])]
    records: bool,
    /// One account by id, with TigerBeetle's field names.
    #[arg(long, conflicts_with = "transfer")]
    account: Option<u128>,
    /// One transfer by id, with TigerBeetle's field names.
    #[arg(long)]
    transfer: Option<u128>,
    /// Print JSON.
    #[arg(long)]
    json: bool,
}

impl InspectArgs {
    fn view(&self) -> pantera::inspect::View {
        use pantera::inspect::View;
        match (self.records, self.account, self.transfer) {
            (true, _, _) => View::Records,
            (_, Some(id), _) => View::Account(id),
            (_, _, Some(id)) => View::Transfer(id),
            _ => View::Summary,
        }
    }
}

#[derive(Debug, Subcommand)]
enum WalCommand {
    /// Report every damaged record and what start-up would do about it; with an action, let
    /// the operator truncate the log there, keeping every byte taken out in a file beside it
    /// (docs/operations.md, "Repairing a WAL").
    Repair(RepairArgs),
}

#[derive(Debug, clap::Args)]
struct RepairArgs {
    /// The data directory (stopped server).
    #[arg(long)]
    data_dir: PathBuf,
    /// Remove the record with this sequence (batch number) and every later one from the log.
    #[arg(long, conflicts_with_all = ["truncate_at_damage", "drop_clean_stop"])]
    truncate_at_record: Option<u64>,
    /// Remove the first record start-up refuses, and every later one, from the log.
    #[arg(long, conflicts_with = "drop_clean_stop")]
    truncate_at_damage: bool,
    /// Move a clean-stop marker that is itself damaged (or does not match the WAL) aside, so
    /// the next start recovers as after a crash.
    #[arg(long)]
    drop_clean_stop: bool,
}

fn format(args: &FormatArgs) -> Result<()> {
    let (mut data_dir, mut cluster_id) = (None, 0);
    if let Some(path) = &args.config {
        let cfg = Config::load(path)?;
        data_dir = Some(cfg.ledger.data_dir);
        cluster_id = cfg.ledger.cluster_id;
    }
    let data_dir = args.data_dir.clone().or(data_dir).context("no data directory: give --data-dir or --config")?;
    let cluster_id = args.cluster_id.unwrap_or(cluster_id);
    let superblock = ledger_svc::data_dir::format(&data_dir, cluster_id, ledger_svc::data_dir::random_ledger_id(), pantera::committer::now_ns())
        .with_context(|| format!("cannot format {}", data_dir.display()))?;
    println!(
        "formatted {} (mode 0700): cluster {}, ledger {:032x}, format version {}",
        data_dir.display(),
        superblock.cluster_id,
        superblock.ledger_id,
        superblock.format_version
    );
    Ok(())
}

fn wal_repair(args: &RepairArgs) -> Result<()> {
    use ledger_svc::repair;
    use ledger_svc::wal::Verdict;
    // Any cluster: repair is about the files, and the operator named the directory.
    let (mut storage, _) = ledger_svc::data_dir::open(&args.data_dir, None).context("--data-dir")?;
    let scan = repair::scan(&mut storage)?;
    let records = scan.records().count();
    println!(
        "{}: {} segments, {records} whole records, checkpoint at batch {}, clean-stop marker: {}",
        args.data_dir.display(),
        scan.segments.len(),
        scan.checkpoint_sequence,
        match &scan.clean_stop {
            None => "none (start-up recovers as after a crash)".to_owned(),
            Some(Ok(m)) => format!("batch {} (start-up refuses any damage)", m.sequence),
            Some(Err(why)) => format!("DAMAGED: it {why} (start-up refuses; see --drop-clean-stop)"),
        }
    );
    let findings = scan.findings();
    for f in &findings {
        let verdict = match f.verdict {
            Verdict::TornTail => "start-up cuts it as a torn tail (kept aside)".to_owned(),
            Verdict::Corrupt(why) => format!("start-up REFUSES: {why}"),
        };
        let sequence = f.sequence.map(|s| format!("record {s}")).unwrap_or_else(|| "a record".to_owned());
        println!("  {}/{} byte offset {}: {sequence}: {}; {verdict}", args.data_dir.display(), f.segment, f.offset, f.what);
    }
    if findings.is_empty() {
        println!("  no damaged record");
    }
    let plan = if let Some(sequence) = args.truncate_at_record {
        Some(scan.plan_at_record(sequence).with_context(|| format!("no record header carries sequence {sequence}"))?)
    } else if args.truncate_at_damage {
        Some(scan.plan_at_damage().context("nothing to truncate: start-up refuses no record")?)
    } else {
        None
    };
    if let Some(plan) = plan {
        println!(
            "truncating {} at byte offset {} and setting aside {} later segments: {} acknowledged batches after the checkpoint leave the ledger",
            plan.segment,
            plan.offset,
            plan.later_segments.len(),
            plan.records_lost
        );
        let kept = repair::truncate(&mut storage, &plan)?;
        for name in kept {
            println!("  kept {}", args.data_dir.join(name).display());
        }
    } else if args.drop_clean_stop {
        match repair::drop_clean_stop(&mut storage)? {
            Some(name) => println!("clean-stop marker moved to {}", args.data_dir.join(name).display()),
            None => println!("no clean-stop marker"),
        }
    } else if !findings.is_empty() || matches!(scan.clean_stop, Some(Err(_))) {
        println!("nothing changed: choose --truncate-at-damage, --truncate-at-record N or --drop-clean-stop, or restore a backup");
    }
    Ok(())
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
    // A panic on any thread aborts the process, in debug builds too (docs/operations.md).
    pantera::health::install_panic_hook();
    let cli = Cli::parse();
    // `serve` reads its configuration first, so the log starts as its `[log]` says; the other
    // subcommands log with the defaults (level info, text). `RUST_LOG` overrides the level.
    let serve_config = match &cli.command {
        Commands::Serve(args) | Commands::ServeKernel { serve: args, .. } => Some(args.config()),
        _ => None,
    };
    let log = match &serve_config {
        Some(Ok(cfg)) => cfg.log.clone(),
        _ => pantera::logging::LogSection::default(),
    };
    pantera::logging::init(&log)?;
    match cli.command {
        // A reload (SIGHUP) reads the configuration as the start did: file and overrides.
        Commands::Serve(args) => match pantera::serve::serve(&serve_config.expect("read above")?, args.lab_home(), &|| args.config(), args.config.as_deref())? {
            pantera::shutdown::Stopped::Clean => Ok(()),
            // Logged at error level by the stop; the status tells the service manager.
            pantera::shutdown::Stopped::HardStop => std::process::exit(pantera::shutdown::EXIT_HARD_STOP),
        },
        Commands::ServeKernel { serve, listen } => {
            let cfg = serve_config.expect("read above")?;
            if let Some(home) = serve.lab_home() {
                pantera::serve::ensure_lab_certificates(home, &cfg)?;
            }
            let stop = Arc::new(AtomicBool::new(false));
            for signal in [signal_hook::consts::SIGTERM, signal_hook::consts::SIGINT] {
                signal_hook::flag::register(signal, Arc::clone(&stop)).context("cannot install signal handlers")?;
            }
            pantera::baseline::serve_kernel(&cfg, serve.lab_home(), listen, stop)
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
                (None, Some(path)) => Config::load(&path)?.ledger.data_dir,
                (None, None) => anyhow::bail!("--data-dir or --config is required"),
            };
            pantera::backup::backup(&data_dir, &to).map(|_| ())
        }
        Commands::Restore { from, to } => pantera::backup::restore(&from, &to).map(|_| ()),
        Commands::CheckConfig { path, print } => {
            let config = Config::load(&path)?;
            let warnings = pantera::check::deep(&config, pantera::check::DataDir::Look, std::time::SystemTime::now())?;
            for warning in &warnings {
                eprintln!("warning: {warning}");
            }
            if print {
                // Paths only: the configuration never holds key material.
                print!("{}", toml::to_string_pretty(&config).context("cannot print the configuration")?);
            } else {
                println!("{}: valid ({} warnings)", path.display(), warnings.len());
            }
            Ok(())
        }
        Commands::Format(args) => format(&args),
        Commands::Wal { command: WalCommand::Repair(args) } => wal_repair(&args),
        Commands::Inspect(args) => pantera::inspect::inspect(&args.data_dir, args.view(), args.json),
        Commands::Verify { data_dir, json } => pantera::inspect::verify(&data_dir, json),
    }
}
