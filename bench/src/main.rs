//! Pantera benchmarks.
#![forbid(unsafe_code)]
fn main() {}
