//! Ethernet frames into the userspace TCP/IP stack's receive path (ARP, ICMP, TCP, the SYN
//! cookie gate), with the application side echoing what it reads.
//!
//! The input format, the harness and the properties beyond "no panic" are `tcp::frames`
//! (shared with the regression tests of its findings): every `Opened` is followed by exactly
//! one `Closed`, the readiness sets miss no slot with work, the connection count stays within
//! the table, and every frame the stack sends parses as Ethernet.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Err(violation) = tcp::frames::replay(data) {
        panic!("after frame record {}: {}", violation.record, violation.what);
    }
});
