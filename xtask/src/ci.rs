//! `cargo xtask test`: build everything, run the host crates' tests with the
//! artifacts' paths, then clippy and rustfmt; a summary at the end.

use std::time::{Duration, Instant};

use anyhow::{bail, Result};

use crate::{
    build::{self, BuildOptions, EBPF_PACKAGE},
    cmd, workspace_root,
};

struct Step {
    name: &'static str,
    ok: bool,
    took: Duration,
}

fn timed(steps: &mut Vec<Step>, name: &'static str, f: impl FnOnce() -> Result<()>) -> bool {
    eprintln!("\n==> {name}");
    let start = Instant::now();
    let result = f();
    if let Err(err) = &result {
        eprintln!("xtask: {name}: {err:#}");
    }
    steps.push(Step {
        name,
        ok: result.is_ok(),
        took: start.elapsed(),
    });
    result.is_ok()
}

/// Runs the whole check; fails if any step failed.
pub fn run() -> Result<()> {
    let mut steps = Vec::new();
    let mut artifacts = None;
    let built = timed(
        &mut steps,
        "build (toolchain, eBPF programs, agent)",
        || {
            artifacts = Some(build::build_all(BuildOptions::default())?);
            Ok(())
        },
    );
    let packages = timed(
        &mut steps,
        "lab packages (nginx, keepalived, HAProxy...)",
        crate::lab::ensure_all_lab_programs,
    );
    if let (true, true, Some(a)) = (built, packages, &artifacts) {
        eprintln!("xtask: toolchain: {}", a.toolchain.describe());
        let xtask = std::env::current_exe()?;
        timed(&mut steps, "cargo test --workspace", || {
            cmd::run(
                cmd::cargo()
                    .current_dir(workspace_root())
                    .args([
                        "test",
                        "--workspace",
                        "--exclude",
                        EBPF_PACKAGE,
                        "--no-fail-fast",
                    ])
                    .env(build::ENV_EBPF_OBJECT, &a.lb_object)
                    .env(build::ENV_TRIVIAL_OBJECT, &a.trivial_object)
                    .env(build::ENV_PASS_OBJECT, &a.pass_object)
                    .env(build::ENV_AGENT_BIN, &a.agent)
                    .env(build::ENV_XTASK_BIN, &xtask),
            )
        });
    }
    timed(
        &mut steps,
        "cargo clippy --all-targets -- -D warnings",
        || {
            let mut clippy = cmd::cargo();
            clippy
                .current_dir(workspace_root())
                .args([
                    "clippy",
                    "--workspace",
                    "--exclude",
                    EBPF_PACKAGE,
                    "--all-targets",
                ])
                .args(["--", "-D", "warnings"]);
            if let Some(a) = &artifacts {
                // The input the test build saw, so the agent's build script
                // does not rerun (and the agent rebuild) between the two.
                clippy.env(build::ENV_EBPF_OBJECT, &a.lb_object);
            }
            cmd::run(&mut clippy)
        },
    );
    timed(&mut steps, "cargo fmt --all -- --check", || {
        cmd::run(
            cmd::cargo()
                .current_dir(workspace_root())
                .args(["fmt", "--all", "--", "--check"]),
        )
    });

    eprintln!("\nxtask test summary:");
    for step in &steps {
        let verdict = if step.ok { "ok" } else { "FAILED" };
        eprintln!(
            "  {verdict:<7} {:>6.1}s  {}",
            step.took.as_secs_f64(),
            step.name
        );
    }
    if !built {
        eprintln!("  (tests skipped: the build failed)");
    }
    let failed = steps.iter().filter(|s| !s.ok).count();
    if failed > 0 {
        bail!("{failed} step(s) failed");
    }
    eprintln!("xtask: all checks passed");
    Ok(())
}
