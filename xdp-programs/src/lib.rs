//! The XDP steering program, compiled at build time and embedded as an ELF object.

/// The compiled `steer.bpf.c` object, ready for libbpf.
pub const STEER_BPF_OBJECT: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/steer.bpf.o"));

/// The program's C source, for the test that keeps `dataplane::SteerCounter` identical to its
/// `enum steer_counter`.
pub const STEER_BPF_SOURCE: &str = include_str!("steer.bpf.c");
