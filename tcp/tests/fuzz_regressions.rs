//! Inputs the `tcp_frames` fuzz target found (docs/fuzzing.md), replayed through the same
//! harness (`tcp::frames::replay`), which checks the same properties.

/// A SYN whose handshake does not complete, then 67.8 s with no poll: the embryonic
/// connection is aborted at its handshake timeout, and its RST waits for the neighbour, whose
/// cache entry expired meanwhile. A later frame from the same client revived the expired entry
/// inside smoltcp (no fill the stack could see), so the waiting socket had work the readiness
/// sets did not cover. Fixed in the smoltcp patch (third_party/smoltcp/PANTERA.md, section 4:
/// an expired entry is never revived by a passing frame).
#[test]
fn readiness_after_a_handshake_timeout_abort() {
    let input = include_bytes!("fuzz_inputs/readiness-handshake-timeout");
    assert_eq!(tcp::frames::replay(input), Ok(()));
}
