//! Building the eBPF objects and the agent, and where they land.

use std::{
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{bail, Context as _, Result};

use crate::{cmd, toolchain::Toolchain, workspace_root};

/// The BPF target triple.
pub const BPF_TARGET: &str = "bpfel-unknown-none";
/// The eBPF crate and its programs (cargo bins): the balancer, the
/// benchmark's references, and the XDP_PASS program the lab puts on veth
/// peers in native mode.
pub const EBPF_PACKAGE: &str = "lb-ebpf";
pub const LB_PROGRAM: &str = "lb-ebpf";
pub const TRIVIAL_PROGRAM: &str = "lb-trivial";
pub const PASS_PROGRAM: &str = "lb-pass";
const EBPF_PROGRAMS: [&str; 3] = [LB_PROGRAM, TRIVIAL_PROGRAM, PASS_PROGRAM];
/// Environment variables through which the built artifacts are handed to
/// the agent's build script and to the tests.
pub const ENV_EBPF_OBJECT: &str = "LB_EBPF_OBJECT";
pub const ENV_TRIVIAL_OBJECT: &str = "LB_TRIVIAL_OBJECT";
pub const ENV_PASS_OBJECT: &str = "LB_PASS_OBJECT";
pub const ENV_AGENT_BIN: &str = "LB_AGENT_BIN";
pub const ENV_XTASK_BIN: &str = "LB_XTASK_BIN";

/// What `build` should produce.
#[derive(Debug, Clone, Copy, Default)]
pub struct BuildOptions {
    /// Build the agent with the dev profile (target/debug). The eBPF
    /// objects are always optimized: the verifier rejects unoptimized code.
    pub debug: bool,
}

/// Paths of everything `build` produced.
#[derive(Debug, Clone)]
pub struct Artifacts {
    pub toolchain: Toolchain,
    pub lb_object: PathBuf,
    pub trivial_object: PathBuf,
    pub pass_object: PathBuf,
    pub agent: PathBuf,
}

/// The host target directory: `$CARGO_TARGET_DIR` or `<workspace>/target`.
pub fn target_dir() -> PathBuf {
    match std::env::var_os("CARGO_TARGET_DIR") {
        Some(dir) => workspace_root().join(dir),
        None => workspace_root().join("target"),
    }
}

/// The eBPF build's own target directory (another compiler, other flags).
pub fn bpf_target_dir() -> PathBuf {
    target_dir().join("bpf")
}

/// Where the eBPF program `name` (one of `EBPF_PROGRAMS`) lands.
pub fn ebpf_object_path(name: &str) -> PathBuf {
    bpf_target_dir().join(BPF_TARGET).join("release").join(name)
}

/// Where the agent binary lands (release unless `debug`).
pub fn agent_binary_path(debug: bool) -> PathBuf {
    target_dir()
        .join(if debug { "debug" } else { "release" })
        .join("lb-agent")
}

/// Bootstraps the toolchain, then builds the eBPF objects and the agent.
pub fn build_all(options: BuildOptions) -> Result<Artifacts> {
    let toolchain = Toolchain::ensure()?;
    build_ebpf(&toolchain)?;
    let lb_object = ebpf_object_path(LB_PROGRAM);
    let agent = build_agent(&lb_object, options.debug)?;
    Ok(Artifacts {
        toolchain,
        trivial_object: ebpf_object_path(TRIVIAL_PROGRAM),
        pass_object: ebpf_object_path(PASS_PROGRAM),
        lb_object,
        agent,
    })
}

/// `cargo build --release --target bpfel-unknown-none -Z build-std=core -p lb-ebpf`
/// with the toolchain's compiler and linker, then checks that the balancer's
/// maps carry BTF.
pub fn build_ebpf(toolchain: &Toolchain) -> Result<()> {
    eprintln!(
        "xtask: building eBPF programs ({})...",
        EBPF_PROGRAMS.join(", ")
    );
    let mut cargo = toolchain.cargo();
    cargo
        .current_dir(workspace_root())
        .args(["build", "--release", "--target", BPF_TARGET])
        .args(["-Z", "build-std=core", "-p", EBPF_PACKAGE, "--bins"])
        .env("CARGO_TARGET_DIR", bpf_target_dir())
        .env_remove("RUSTFLAGS")
        .env("CARGO_ENCODED_RUSTFLAGS", ebpf_rustflags());
    cmd::run(&mut cargo).context("building the eBPF programs failed")?;
    for name in EBPF_PROGRAMS {
        let object = ebpf_object_path(name);
        if !object.exists() {
            bail!("the eBPF build left no {}", object.display());
        }
    }
    check_map_btf(&ebpf_object_path(LB_PROGRAM))
}

/// Full debuginfo so that bpf-linker can emit BTF (`--btf`), which BTF map
/// definitions need (aya-build passes the same two); aya-ebpf's build script
/// adds the `bpf_target_arch` cfg. Two more for speed, measured with
/// `cargo xtask bench`: BPF ISA v3 (32-bit ALU and jumps; kernel 5.1, below
/// what the program needs anyway) saves spills and zero-extensions, and
/// letting LLVM expand memset/memmove inline stops it from calling byte
/// loops in subprograms for every struct padding and MAC copy (bpf-linker's
/// default in-order memcpy expansion turns those into libcalls).
fn ebpf_rustflags() -> String {
    [
        "-C",
        "debuginfo=2",
        "-C",
        "link-arg=--btf",
        "-C",
        "target-cpu=v3",
        "-C",
        "link-arg=--disable-expand-memcpy-in-order",
    ]
    .join("\x1f")
}

/// Fails unless `bpftool btf dump file <object>` shows a `.maps` section
/// (maps defined with BTF). Skipped when bpftool is missing.
fn check_map_btf(object: &Path) -> Result<()> {
    let Some(bpftool) = cmd::which("bpftool") else {
        return Ok(());
    };
    let dump = cmd::stdout_of(
        Command::new(bpftool)
            .args(["btf", "dump", "file"])
            .arg(object),
    )
    .with_context(|| format!("{} has no readable BTF", object.display()))?;
    if !dump.contains("DATASEC '.maps'") {
        bail!(
            "{} has BTF but no `.maps` section: map definitions lack BTF (check the eBPF \
             RUSTFLAGS: -C debuginfo=2 -C link-arg=--btf)",
            object.display()
        );
    }
    Ok(())
}

/// `cargo build [--release] -p lb-agent`, embedding `lb_object`; returns the
/// binary's path.
pub fn build_agent(lb_object: &Path, debug: bool) -> Result<PathBuf> {
    eprintln!(
        "xtask: building lb-agent (embeds {})...",
        lb_object.display()
    );
    let mut cargo = cmd::cargo();
    cargo
        .current_dir(workspace_root())
        .args(["build", "-p", "lb-agent"])
        .env(ENV_EBPF_OBJECT, lb_object);
    if !debug {
        cargo.arg("--release");
    }
    cmd::run(&mut cargo).context("building lb-agent failed")?;
    let agent = agent_binary_path(debug);
    if !agent.exists() {
        bail!("the agent build left no {}", agent.display());
    }
    Ok(agent)
}

/// The xtask binary (it also serves as the lab's UDP responder and UDP
/// client): `$LB_XTASK_BIN` (set by `cargo xtask test`), this process if it
/// is xtask, or `target/debug/xtask` (there after any `cargo xtask` run).
/// Not built here: from inside `cargo test` a nested cargo would wait for
/// the outer one's lock.
pub fn xtask_binary() -> Result<PathBuf> {
    if let Some(path) = std::env::var_os(ENV_XTASK_BIN) {
        return Ok(PathBuf::from(path));
    }
    if let Ok(exe) = std::env::current_exe() {
        if exe.file_name().is_some_and(|n| n == "xtask") {
            return Ok(exe);
        }
    }
    let path = target_dir().join("debug/xtask");
    if !path.exists() {
        bail!(
            "no xtask binary at {} (the lab's UDP responder): run `cargo build -p xtask`, or \
             run the tests with `cargo xtask test`",
            path.display()
        );
    }
    Ok(path)
}

/// The lab's XDP_PASS program: `$LB_PASS_OBJECT` (set by `cargo xtask
/// test`) or where `build_ebpf` puts it.
pub fn pass_object() -> PathBuf {
    std::env::var_os(ENV_PASS_OBJECT)
        .map(PathBuf::from)
        .unwrap_or_else(|| ebpf_object_path(PASS_PROGRAM))
}
