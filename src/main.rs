//! The pantera appliance binary.
fn main() {}
