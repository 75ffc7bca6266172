//! The configuration file: TOML text through `Config::parse` (deserialise, then `validate`).
//!
//! Properties beyond "no panic": a configuration that parses and validates serialises back to
//! TOML, that TOML parses and validates too, and serialising it again gives the same text (the
//! file `pantera` would write for it means the same thing).
#![no_main]

use std::path::Path;

use libfuzzer_sys::fuzz_target;
use pantera::config::Config;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else { return };
    let path = Path::new("fuzz.toml");
    let Ok(config) = Config::parse(path, text) else { return };
    let written = toml::to_string(&config).expect("a valid configuration serialises");
    let again = match Config::parse(path, &written) {
        Ok(again) => again,
        Err(e) => panic!("the serialised configuration does not parse: {e}\n{written}"),
    };
    let rewritten = toml::to_string(&again).expect("serialises");
    assert_eq!(written, rewritten, "serialising is not a fixed point");
});
