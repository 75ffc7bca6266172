//! The ledger on a TigerBeetle cluster (docs/cluster.md).
//!
//! With `ledger.backend = "tigerbeetle"` the appliance keeps no write-ahead log of its own: the
//! books live in a TigerBeetle cluster (Viewstamped Replication over 1–6 replicas), and the
//! appliance is a stateless gateway in front of it. This crate holds what that needs:
//!
//! - [`wire`]: TigerBeetle 0.16's request and reply bodies to and from the ledger's model
//!   (pure, always compiled);
//! - `client` (feature `tigerbeetle`): TigerBeetle's own client library, driven with tags and a
//!   completion channel instead of async;
//! - [`guard`]: the requests that would stop a TigerBeetle 0.16.78 cluster, found before they
//!   are sent (pure, always compiled);
//! - [`local`]: a cluster on loopback for tests and benchmarks, removed when dropped;
//! - [`oracle`]: the differential oracle, one seeded workload run against the embedded ledger
//!   and a TigerBeetle cluster with every answer compared.
//!
//! The client library is C built with zig from the pinned crate's vendored source, so it sits
//! behind the `tigerbeetle` feature: a plain `cargo build` needs no zig.

pub mod wire;

pub mod guard;

pub mod local;

pub mod pins;

pub mod oracle;

#[cfg(feature = "tigerbeetle")]
pub mod client;

/// Why the cluster could not answer.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ClusterError {
    /// tb_client refused to start a session (bad address list, out of memory, ...).
    #[error("cannot start a TigerBeetle client session: {0}")]
    Connect(String),
    /// tb_client gave the packet back without a reply (evicted session, release mismatch, ...).
    #[error("the TigerBeetle client gave the request back: {0}")]
    Packet(String),
    /// No reply within the caller's deadline: the cluster is slow, partitioned or down.
    #[error("no reply from the TigerBeetle cluster within {0:?}")]
    Deadline(std::time::Duration),
    /// A reply whose bytes break the protocol.
    #[error(transparent)]
    Wire(#[from] wire::WireError),
}
