//! `cargo xtask bench`: the XDP program's cost per packet against the
//! trivial reference program (BPF_PROG_TEST_RUN, `xdp-bench`), then
//! end-to-end HTTP throughput with wrk through the balancer against wrk
//! straight to a backend, all in the same run on the same machine.

use std::{process::Command, time::Duration};

use anyhow::{bail, Context as _, Result};

use crate::{
    apt,
    build::{self, BuildOptions, ENV_AGENT_BIN, ENV_EBPF_OBJECT, ENV_TRIVIAL_OBJECT},
    cmd,
    lab::{Lab, LabOptions, Node},
    workspace_root,
};

const PREFIX: &str = "bench";
const WRK_SECONDS: u32 = 5;
const WRK_CONNECTIONS: u32 = 32;

fn heading(title: &str) {
    println!("\n=== {title}");
}

/// Requests/s from wrk's output ("Requests/sec:  12345.67").
pub fn parse_wrk_rate(output: &str) -> Option<f64> {
    output
        .lines()
        .find_map(|l| l.trim().strip_prefix("Requests/sec:"))
        .and_then(|v| v.trim().parse().ok())
}

fn wrk(lab: &Lab, from: Node, url: &str, close: bool) -> Result<f64> {
    let seconds = format!("{WRK_SECONDS}s");
    let connections = WRK_CONNECTIONS.to_string();
    let mut args = vec![
        "wrk",
        "-t",
        "2",
        "-c",
        &connections,
        "-d",
        &seconds,
        "--timeout",
        "2s",
    ];
    if close {
        args.extend(["-H", "Connection: close"]);
    }
    args.push(url);
    let out = lab.exec_ok(from, &args)?;
    parse_wrk_rate(&out).with_context(|| format!("no Requests/sec in wrk output:\n{out}"))
}

pub fn run() -> Result<()> {
    heading("Build");
    let artifacts = build::build_all(BuildOptions::default())?;
    apt::ensure_programs(&[("wrk", "wrk"), ("curl", "curl")], "for the benchmark")?;
    cmd::run(
        Command::new(env!("CARGO"))
            .current_dir(workspace_root())
            .args([
                "build",
                "--release",
                "-q",
                "-p",
                "integration-tests",
                "--bin",
                "xdp-bench",
            ])
            .env(ENV_EBPF_OBJECT, &artifacts.lb_object),
    )?;

    heading("Machine");
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|t| {
            t.lines()
                .find(|l| l.starts_with("model name"))
                .map(|l| l.split(':').nth(1).unwrap_or("").trim().to_string())
        })
        .unwrap_or_else(|| "unknown CPU".into());
    let kernel = cmd::stdout_of(Command::new("uname").arg("-r")).unwrap_or_default();
    println!(
        "  {cpu}, {} CPUs, kernel {}",
        std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(0),
        kernel.trim()
    );

    heading("Per packet (BPF_PROG_TEST_RUN)");
    let bench = build::target_dir().join("release/xdp-bench");
    let status = Command::new(&bench)
        .env(ENV_EBPF_OBJECT, &artifacts.lb_object)
        .env(ENV_TRIVIAL_OBJECT, &artifacts.trivial_object)
        .status()
        .with_context(|| format!("running {}", bench.display()))?;
    if !status.success() {
        bail!("xdp-bench failed ({status})");
    }

    heading(&format!(
        "End to end: wrk, {WRK_CONNECTIONS} connections, {WRK_SECONDS} s each (lab `{PREFIX}`, generic XDP on veth)"
    ));
    cmd::catch_interrupts();
    let options = LabOptions {
        agent_bin: Some(artifacts.agent.clone()),
        ..LabOptions::with_prefix(PREFIX)
    };
    std::env::set_var(ENV_AGENT_BIN, &artifacts.agent);
    let lab = Lab::up_guarded(&options)?;
    std::thread::sleep(Duration::from_millis(500));
    let backend = format!(
        "http://{}/",
        Node::Web1.private_address().context("web1 address")?
    );
    let mut rows = Vec::new();
    for (label, close) in [("keep-alive", false), ("new connection per request", true)] {
        let through = wrk(&lab, Node::Client, "http://10.100.0.100/", close)?;
        let direct = wrk(&lab, Node::Lb1, &backend, close)?;
        rows.push((label, through, direct));
    }
    println!(
        "  {:<28} {:>16} {:>16} {:>8}",
        "requests", "via XDP LB req/s", "direct req/s", "ratio"
    );
    for (label, through, direct) in rows {
        println!(
            "  {:<28} {:>16.0} {:>16.0} {:>8.2}",
            label,
            through,
            direct,
            through / direct.max(1.0)
        );
    }
    println!("  (via LB: client -> VIP -> web1+web2; direct: lb1 -> web1, one nginx)");
    let stats = lab.agent_cli(Node::Lb1, &["stats"])?;
    println!("{}", String::from_utf8_lossy(&stats.stdout));
    drop(lab);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wrk_rate_is_parsed() {
        let out = "Running 5s test\n  2 threads\nRequests/sec:  12345.67\nTransfer/sec: 1MB\n";
        assert_eq!(parse_wrk_rate(out), Some(12345.67));
        assert_eq!(parse_wrk_rate("nothing"), None);
    }
}
