//! Embeds the XDP object into the agent so `lb-agent` is a single binary.
//! `cargo xtask build` builds the object first and passes its path in
//! `LB_EBPF_OBJECT`; a plain `cargo build` embeds whatever object an earlier
//! xtask build left, or none (the agent then says how to build it).

use std::path::PathBuf;

fn main() {
    println!("cargo:rerun-if-env-changed=LB_EBPF_OBJECT");
    let manifest = PathBuf::from(
        std::env::var_os("CARGO_MANIFEST_DIR").expect("cargo sets CARGO_MANIFEST_DIR"),
    );
    let source = std::env::var_os("LB_EBPF_OBJECT")
        .map(PathBuf::from)
        .unwrap_or_else(|| manifest.join("../target/bpf/bpfel-unknown-none/release/lb-ebpf"));
    let out =
        PathBuf::from(std::env::var_os("OUT_DIR").expect("cargo sets OUT_DIR")).join("lb-ebpf.o");
    println!("cargo:rerun-if-changed={}", source.display());
    match std::fs::read(&source) {
        Ok(bytes) => std::fs::write(&out, bytes).expect("write embedded object"),
        Err(_) => {
            println!(
                "cargo:warning=no XDP object at {}; lb-agent will refuse to run. Build with `cargo xtask build`",
                source.display()
            );
            std::fs::write(&out, []).expect("write empty object");
        }
    }
    println!("cargo:rustc-env=LB_EBPF_OBJECT_EMBED={}", out.display());
}
