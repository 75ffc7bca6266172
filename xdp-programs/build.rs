//! Compiles `src/steer.bpf.c` with `clang -target bpf` into `$OUT_DIR/steer.bpf.o`.
use std::{env, path::PathBuf, process::Command};

fn main() {
    let out = PathBuf::from(env::var_os("OUT_DIR").expect("OUT_DIR is set by cargo"));
    let src = PathBuf::from("src/steer.bpf.c");
    println!("cargo:rerun-if-changed={}", src.display());
    let clang = env::var("CLANG").unwrap_or_else(|_| "clang".to_owned());
    let status = Command::new(&clang)
        .args(["-O2", "-g", "-Wall", "-Werror", "-target", "bpf", "-c"])
        .arg(&src)
        .arg("-o")
        .arg(out.join("steer.bpf.o"))
        .status()
        .unwrap_or_else(|e| panic!("cannot run {clang} (install it with `cargo xtask deps`): {e}"));
    assert!(status.success(), "{clang} failed to compile {}", src.display());
}
