//! Operating errors of the dataplane (docs/style.md, kind 4): each names the call or step, the
//! interface, and the underlying error, so an operator can act on the message alone.

use std::io;

#[derive(Debug, thiserror::Error)]
pub enum DataplaneError {
    /// A configuration value out of its bounds, with the field named.
    #[error("invalid dataplane configuration: {0}")]
    Config(String),

    /// The interface does not exist or its sysfs description is unreadable or malformed.
    #[error("interface {ifname}: {detail}")]
    Interface { ifname: String, detail: String },

    /// A system call failed.
    #[error("{call} on {ifname}: {source}")]
    Syscall {
        call: &'static str,
        ifname: String,
        #[source]
        source: io::Error,
    },

    /// Opening, loading or using the BPF object failed.
    #[error("BPF {context}: {source}")]
    Bpf {
        context: String,
        #[source]
        source: libbpf_rs::Error,
    },

    /// The XDP program could not be attached in the requested mode.
    #[error("attaching XDP to {ifname} in {mode} mode: {source}")]
    Attach {
        ifname: String,
        mode: &'static str,
        #[source]
        source: io::Error,
    },

    /// An XDP program held by a bpf_link (of a live process) occupies the interface.
    #[error(
        "{ifname} already runs XDP program id {prog_id} through a bpf_link of a live process \
         (another pantera?); refusing to replace it"
    )]
    Busy { ifname: String, prog_id: u32 },

    /// Another AF_XDP socket still holds the queue (EBUSY on bind). The kernel releases the
    /// socket of a killed process asynchronously, so a restart right after SIGKILL can see it.
    #[error("AF_XDP socket on {ifname} queue {queue_id}: the queue is held by another AF_XDP socket")]
    QueueBusy { ifname: String, queue_id: u32 },
    /// Creating the UMEM or binding the AF_XDP socket failed.
    #[error("AF_XDP socket on {ifname} queue {queue_id}: {what}: {detail}")]
    Socket { ifname: String, queue_id: u32, what: &'static str, detail: String },
}
