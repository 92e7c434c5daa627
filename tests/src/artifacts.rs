//! Where the build put the eBPF objects and the agent, and whether this run
//! may use them (root is needed to load programs and create namespaces).

use std::path::PathBuf;

fn workspace_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("tests crate lives in the workspace")
        .to_path_buf()
}

/// Returns the artifact named by `env_var`, or the default path. When the
/// variable is set (as `cargo xtask test` does) a missing file is a failure;
/// otherwise a missing file means "not built", and the caller skips.
fn artifact(env_var: &str, default: &str) -> Option<PathBuf> {
    match std::env::var_os(env_var) {
        Some(path) => {
            let path = PathBuf::from(path);
            assert!(path.exists(), "{env_var}={} does not exist", path.display());
            Some(path)
        }
        None => {
            let path = workspace_root().join(default);
            path.exists().then_some(path)
        }
    }
}

pub fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions.
    unsafe { libc::geteuid() == 0 }
}

/// The balancer's eBPF object, or `None` (with a printed reason) when this
/// run cannot use it.
pub fn lb_object() -> Option<PathBuf> {
    privileged_artifact(
        "LB_EBPF_OBJECT",
        "target/bpf/bpfel-unknown-none/release/lb-ebpf",
    )
}

/// The trivial MAC-swap reference program.
pub fn trivial_object() -> Option<PathBuf> {
    privileged_artifact(
        "LB_TRIVIAL_OBJECT",
        "target/bpf/bpfel-unknown-none/release/lb-trivial",
    )
}

/// The XDP_PASS program the lab puts on veth peers in native mode.
pub fn pass_object() -> Option<PathBuf> {
    privileged_artifact(
        "LB_PASS_OBJECT",
        "target/bpf/bpfel-unknown-none/release/lb-pass",
    )
}

/// The release agent binary.
pub fn agent_binary() -> Option<PathBuf> {
    privileged_artifact("LB_AGENT_BIN", "target/release/lb-agent")
}

/// The xtask binary (the lab's UDP responder and client).
pub fn xtask_binary() -> Option<PathBuf> {
    privileged_artifact("LB_XTASK_BIN", "target/debug/xtask")
}

fn privileged_artifact(env_var: &str, default: &str) -> Option<PathBuf> {
    if !is_root() {
        eprintln!("SKIP: needs root (BPF and network namespaces); run `cargo xtask test` as root");
        return None;
    }
    let found = artifact(env_var, default);
    if found.is_none() {
        eprintln!("SKIP: {default} not built; run `cargo xtask test` (or `cargo xtask build`)");
    }
    found
}
