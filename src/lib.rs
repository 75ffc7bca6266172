//! The pantera appliance: configuration, the per-queue workers, the ledger thread, the
//! management listener, and the lab helpers. The binary (`main.rs`) is a thin CLI over this.

pub mod audit;
pub mod backup;
pub mod baseline;
pub mod check;
pub mod cluster_backend;
pub mod committer;
pub mod config;
pub mod crl;
#[cfg(feature = "fault-injection")]
pub mod fault;
pub mod handshake;
pub mod health;
pub mod inspect;
pub mod lab;
pub mod lab_client;
pub mod lab_flood;
pub mod logging;
pub mod metric_families;
pub mod metrics;
pub mod reload;
pub mod sandbox;
pub mod notify;
pub mod serve;
pub mod shutdown;
#[cfg(feature = "sim")]
pub mod sim;
pub mod startup;
pub mod worker;
