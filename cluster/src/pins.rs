//! The pinned TigerBeetle release and how its replicas are started: one list for the test
//! clusters (`local::LocalCluster`) and `cargo xtask tigerbeetle up`, which includes this file
//! (xtask stays std-only and cannot depend on this crate). Replicas of one cluster must agree
//! on the request size, and the lab's and the tests' clients see the same kind of cluster.

/// The release every part of the cluster backend is pinned to (docs/cluster.md "Versions").
pub const RELEASE: &str = "0.16.78";

/// Where `cargo xtask tigerbeetle build` installs the server, relative to the workspace.
pub const SERVER_PATH: &str = "target/tigerbeetle/bin/tigerbeetle-0.16.78";

/// Options of every `tigerbeetle start`, besides the addresses and the data file:
/// - `--development`: no direct I/O required (the lab's disks and tmpfs lack it) and small
///   caches;
/// - `--limit-request=1MiB`: `--development` would cut requests to 32 KiB (254 transfers), but
///   the appliance's batches reach 8189 events (1 MiB), TigerBeetle's full size;
/// - `--memory-lsm-manifest=16MiB`: the manifest's node pool is 128 MiB by default; 16 MiB
///   (1024 nodes) is plenty for test and lab data and saves ~115 MiB of RSS per replica;
/// - `--experimental`: the two `--limit`/`--memory` flags above require it.
pub const START_OPTIONS: &[&str] =
    &["--development", "--experimental", "--limit-request=1MiB", "--memory-lsm-manifest=16MiB"];
