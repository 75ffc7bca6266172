//! The userspace TCP/IP stack (stage [3] of docs/design.md): one smoltcp `Interface` over any
//! `smoltcp::phy::Device`, answering ARP and ICMP echo, and serving TCP on one port with a
//! pool of listening sockets and a fixed connection table.
//!
//! Sans-IO: the caller passes the device and the time into every call; nothing here does I/O,
//! reads a clock or draws randomness. The worker loop is:
//!
//! ```text
//! stack.announce(&mut device, now);               // once at start
//! loop {
//!     stack.poll(now, &mut device);                // bounded ingress, then egress
//!     stack.service(now, |event| ...);             // Opened / Closed, idle timeouts, re-arm
//!     for each open id: stack.recv(id, ..) / stack.send(id, ..)
//!     wait at most stack.poll_delay(now)
//! }
//! ```
//!
//! See docs/tcp.md for the listener pool, the bounds and what happens at capacity.
#![forbid(unsafe_code)]

mod arp;
pub mod config;
mod cookie;
pub mod frames;
mod isn;
mod neighbour;
mod probe;
mod ready;
pub mod sim;
pub mod sim_pair;
mod stack;

pub use arp::{write_gratuitous_arp, GRATUITOUS_ARP_FRAME_BYTES};
pub use config::{
    ConfigError, StackConfig, TCP_BUFFER_BYTES_DEFAULT, TCP_BUFFER_BYTES_MAX, TCP_BUFFER_BYTES_MIN,
};
pub use cookie::{SynCookieMode, MSS_TABLE, SLOT_SECS};
pub use neighbour::{NEIGHBOURS_MAX, NEIGHBOUR_LIFETIME, NEIGHBOUR_REFRESH};
pub use ready::{SlotSet, Timers};
pub use smoltcp;
pub use stack::{ConnError, ConnId, Event, Stack, StackCounters};
