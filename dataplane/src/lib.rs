//! Pantera's dataplane (docs/design.md stages [1] and [2]): the XDP steering program's loader and
//! maps, one AF_XDP socket with its own UMEM per NIC queue, and the smoltcp `Device` over the
//! socket's rings.
//!
//! Typical use, on the main thread:
//! ```no_run
//! # use dataplane::*;
//! let mut steering = Steering::attach(&SteerConfig {
//!     ifname: "pantera0".into(),
//!     service_ipv4: "10.99.0.2".parse().unwrap(),
//!     service_port: 8443,
//!     mode: XdpMode::Auto,
//!     edge: EdgeConfig::default(),
//! })?;
//! let mut ports = Vec::new();
//! for queue_id in 0..interface_queues("pantera0")? {
//!     let port = XskPort::open("pantera0", queue_id, &XskConfig::default())?;
//!     steering.register(queue_id, &port)?;
//!     ports.push(port); // then move each into its worker thread
//! }
//! # Ok::<(), DataplaneError>(())
//! ```
//!
//! All `unsafe` code is in the private `sys` module.
#![deny(unsafe_code)]

mod error;
mod iface;
mod loader;
mod port;
#[allow(unsafe_code)]
mod sys;

pub use error::DataplaneError;
pub use iface::{interface_index, interface_mac, interface_mtu, interface_queues};
pub use loader::{
    attached_program_id, detach_leftover, xdp_action, EdgeConfig, Ipv4Cidr, SteerConfig, SteerCounter, SteerProgram,
    LoadedSteering, Steering, SynBucket, XdpMode, EDGE_CIDRS_MAX, SYN_BURST_PER_SOURCE_MAX, SYN_RATE_PER_SOURCE_MAX, SYN_SOURCES_MAX,
    SYN_SOURCES_MIN, XSKS_MAX,
};
pub use port::{XskConfig, XskPort, XskRxToken, XskStats, XskTxToken, ETHERNET_HEADER_BYTES};

#[cfg(test)]
mod tests {
    /// The worker threads take their port by value.
    #[test]
    fn port_is_send() {
        fn assert_send<T: Send>() {}
        assert_send::<super::XskPort>();
    }
}
