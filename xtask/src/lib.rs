//! The project's tasks as a library: toolchain bootstrap and builds
//! (`build`, `toolchain`), the namespace lab (`lab`, used by the `tests`
//! crate), the demo, the full check (`ci`), the benchmarks (`bench`,
//! `connrate`, `failover_bench`, `profile`), the lab's UDP tools (`udp`), the
//! failover probe (`probe`) and keep-alive holder (`hold`).
//! `main.rs` only parses the command line.

pub mod apt;
pub mod bench;
pub mod build;
pub mod ci;
pub mod cmd;
pub mod connrate;
pub mod demo;
pub mod failover_bench;
pub mod hold;
pub mod install;
pub mod lab;
pub mod probe;
pub mod profile;
pub mod toolchain;
pub mod udp;
pub mod vagrant;

use std::path::{Path, PathBuf};

pub use build::{
    agent_binary_path, build_all, ebpf_object_path, xtask_binary, Artifacts, BuildOptions,
};
pub use lab::{Lab, LabGuard, LabOptions, Node};
pub use toolchain::Toolchain;

/// The workspace root (xtask's parent directory).
pub fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .map(Path::to_path_buf)
        .unwrap_or_else(|| PathBuf::from("."))
}
