//! Compiles `src/steer.bpf.c` with `clang -target bpf` into `$OUT_DIR/steer.bpf.o`.
use std::{env, path::PathBuf, process::Command};

fn main() {
    let out = PathBuf::from(env::var_os("OUT_DIR").expect("OUT_DIR is set by cargo"));
    let src = PathBuf::from("src/steer.bpf.c");
    println!("cargo:rerun-if-changed={}", src.display());
    let clang = env::var("CLANG").unwrap_or_else(|_| "clang".to_owned());
    let mut command = Command::new(&clang);
    command.args(["-O2", "-g", "-Wall", "-Werror", "-target", "bpf", "-c"]);
    // `-target bpf` has no multiarch include path, yet <linux/types.h> includes <asm/types.h>,
    // which Debian keeps under the host's multiarch directory.
    for dir in ["/usr/include/x86_64-linux-gnu", "/usr/include/aarch64-linux-gnu"] {
        if std::path::Path::new(dir).join("asm/types.h").exists() {
            command.arg(format!("-I{dir}"));
            break;
        }
    }
    let status = command
        .arg(&src)
        .arg("-o")
        .arg(out.join("steer.bpf.o"))
        .status()
        .unwrap_or_else(|e| panic!("cannot run {clang} (install it with `cargo xtask deps`): {e}"));
    assert!(status.success(), "{clang} failed to compile {}", src.display());
}
