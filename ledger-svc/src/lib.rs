//! Double-entry ledger with TigerBeetle's semantics, its write-ahead log and the HTTP/JSON API (sans-IO)
#![forbid(unsafe_code)]

pub mod model;
pub use model::*;

pub mod codec;
pub mod state_machine;
pub use state_machine::{IdHashKey, QueryPage, StateMachine};
pub mod storage;
pub use storage::{FileStorage, FileSync, SimStorage, Storage, StorageError};
pub mod wal;
pub mod data_dir;
pub mod repair;
pub mod checkpoint;
pub mod ledger;
pub mod backup;
pub mod verify;
pub use ledger::{Durability, Ledger, LedgerConfig, LedgerError, RecoveryReport, SyncJob};
pub mod http;
pub mod api;
pub mod connection;
pub mod committer;
pub mod sim;
pub mod sim_audit;
pub mod sim_workload;
