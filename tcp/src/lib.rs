//! The userspace TCP/IP stack (smoltcp Interface): ARP, ICMP echo, TCP listener pool, connection table
#![forbid(unsafe_code)]
