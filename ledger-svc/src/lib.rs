//! Double-entry ledger with TigerBeetle's semantics, its write-ahead log and the HTTP/JSON API (sans-IO)
#![forbid(unsafe_code)]

pub mod model;
pub use model::*;
pub mod http;
