//! The XDP steering program, compiled at build time and embedded as an ELF object.

/// The compiled `steer.bpf.c` object, ready for libbpf.
pub const STEER_BPF_OBJECT: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/steer.bpf.o"));
