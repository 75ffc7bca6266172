//! Keyed initial sequence numbers (RFC 6528) and the keyed hash they and the SYN cookies use.
//!
//! smoltcp draws ISNs from a PRNG that one observed ISN lets an attacker follow; the patched
//! smoltcp (third_party/smoltcp/PANTERA.md) asks an [`IsnGenerator`] instead. Each stack
//! installs one whose answer is RFC 6528 §3's
//!
//! ```text
//! ISN = M + F(localip, localport, remoteip, remoteport, secretkey)
//! ```
//!
//! with `M` a clock ticking every 4 µs and `F` SipHash-2-4 keyed with the stack's secret (drawn
//! from the OS at every start, different on every queue). Successive connections of one
//! four-tuple still get increasing ISNs (the clock), while an observer of one connection learns
//! nothing about another's.
//!
//! A connection opened from a SYN cookie has the cookie as its ISN instead (cookie.rs).

use smoltcp::socket::tcp::{IsnGenerator, IsnRequest};
use smoltcp::wire::{IpAddress, IpEndpoint, TcpSeqNumber};

/// SipHash-2-4 (Aumasson and Bernstein, "SipHash: a fast short-input PRF", 2012) of `data`
/// under the 128-bit `key`: a keyed pseudorandom function for short inputs, the one RFC 6528
/// suggests a MAC-like function for and the one Linux uses for the same ISNs and cookies.
pub(crate) fn siphash24(key: [u64; 2], data: &[u8]) -> u64 {
    #[inline]
    fn round(v: &mut [u64; 4]) {
        v[0] = v[0].wrapping_add(v[1]);
        v[1] = v[1].rotate_left(13);
        v[1] ^= v[0];
        v[0] = v[0].rotate_left(32);
        v[2] = v[2].wrapping_add(v[3]);
        v[3] = v[3].rotate_left(16);
        v[3] ^= v[2];
        v[0] = v[0].wrapping_add(v[3]);
        v[3] = v[3].rotate_left(21);
        v[3] ^= v[0];
        v[2] = v[2].wrapping_add(v[1]);
        v[1] = v[1].rotate_left(17);
        v[1] ^= v[2];
        v[2] = v[2].rotate_left(32);
    }
    let mut v = [
        key[0] ^ 0x736f_6d65_7073_6575,
        key[1] ^ 0x646f_7261_6e64_6f6d,
        key[0] ^ 0x6c79_6765_6e65_7261,
        key[1] ^ 0x7465_6462_7974_6573,
    ];
    let mut chunks = data.chunks_exact(8);
    for chunk in &mut chunks {
        let m = u64::from_le_bytes(chunk.try_into().expect("chunks of 8"));
        v[3] ^= m;
        round(&mut v);
        round(&mut v);
        v[0] ^= m;
    }
    let rest = chunks.remainder();
    let mut last = [0u8; 8];
    last[..rest.len()].copy_from_slice(rest);
    last[7] = data.len() as u8;
    let m = u64::from_le_bytes(last);
    v[3] ^= m;
    round(&mut v);
    round(&mut v);
    v[0] ^= m;
    v[2] ^= 0xff;
    for _ in 0..4 {
        round(&mut v);
    }
    v[0] ^ v[1] ^ v[2] ^ v[3]
}

/// The 128-bit key of one stack, as two SipHash key words.
pub(crate) fn key_words(secret: [u8; 16]) -> [u64; 2] {
    [
        u64::from_le_bytes(secret[..8].try_into().expect("8 bytes")),
        u64::from_le_bytes(secret[8..].try_into().expect("8 bytes")),
    ]
}

/// Writes an endpoint as 6 bytes (address, port) for hashing; only IPv4 is configured.
pub(crate) fn endpoint_bytes(endpoint: IpEndpoint) -> [u8; 6] {
    let mut bytes = [0; 6];
    match endpoint.addr {
        IpAddress::Ipv4(addr) => bytes[..4].copy_from_slice(&addr.octets()),
    }
    bytes[4..].copy_from_slice(&endpoint.port.to_be_bytes());
    bytes
}

/// RFC 6528's ISN for a connection between `local` and `remote` at `micros` (µs since any
/// fixed origin): the 4 µs clock plus the keyed hash of the four-tuple.
pub(crate) fn rfc6528_isn(key: [u64; 2], local: IpEndpoint, remote: IpEndpoint, micros: i64) -> u32 {
    let mut tuple = [0u8; 12];
    tuple[..6].copy_from_slice(&endpoint_bytes(local));
    tuple[6..].copy_from_slice(&endpoint_bytes(remote));
    let clock = (micros / 4) as u32;
    clock.wrapping_add(siphash24(key, &tuple) as u32)
}

/// The generator installed on a stack's interface: RFC 6528 under `key`.
pub(crate) fn generator(key: [u64; 2]) -> IsnGenerator {
    Box::new(move |request: &IsnRequest| {
        let isn = rfc6528_isn(key, request.local, request.remote, request.timestamp.total_micros());
        TcpSeqNumber(isn as i32)
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use smoltcp::time::Instant;
    use std::net::Ipv4Addr;

    #[test]
    fn siphash24_matches_the_reference_vector() {
        // The paper's Appendix A: key 00..0f, message 00..0e.
        let key: [u8; 16] = std::array::from_fn(|i| i as u8);
        let message: Vec<u8> = (0..15).collect();
        assert_eq!(siphash24(key_words(key), &message), 0xa129_ca61_49be_45e5);
        // And the empty message (the reference implementation's vectors.h, first entry).
        assert_eq!(siphash24(key_words(key), &[]), 0x726f_db47_dd0e_0e31);
    }

    fn endpoint(last: u8, port: u16) -> IpEndpoint {
        IpEndpoint::new(IpAddress::Ipv4(Ipv4Addr::new(10, 99, 0, last)), port)
    }

    #[test]
    fn isns_follow_the_clock_per_tuple_and_differ_across_tuples_and_keys() {
        let key = [1, 2];
        let (local, remote) = (endpoint(2, 8443), endpoint(1, 40_000));
        let a = rfc6528_isn(key, local, remote, 1_000_000);
        let b = rfc6528_isn(key, local, remote, 1_000_400);
        assert_eq!(b.wrapping_sub(a), 100, "4 µs ticks");
        let other_port = rfc6528_isn(key, local, endpoint(1, 40_001), 1_000_000);
        let other_key = rfc6528_isn([1, 3], local, remote, 1_000_000);
        assert_ne!(a, other_port);
        assert_ne!(a, other_key);
        // Neighbouring ports give unrelated ISNs: no shared sequence to follow.
        let isns: Vec<u32> = (0..1000)
            .map(|port| rfc6528_isn(key, local, endpoint(1, 30_000 + port), 0))
            .collect();
        let steps: std::collections::HashSet<u32> =
            isns.windows(2).map(|w| w[1].wrapping_sub(w[0])).collect();
        assert!(steps.len() > 990, "steps between neighbours repeat: {}", steps.len());
    }

    #[test]
    fn the_generator_answers_rfc6528() {
        let mut generate = generator([7, 7]);
        let request = IsnRequest {
            local: endpoint(2, 8443),
            remote: endpoint(1, 40_000),
            timestamp: Instant::from_micros(4_000),
        };
        let keyed = rfc6528_isn([7, 7], request.local, request.remote, 4_000);
        assert_eq!(generate(&request), TcpSeqNumber(keyed as i32));
    }
}
