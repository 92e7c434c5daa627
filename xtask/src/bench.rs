//! `cargo xtask bench`: the XDP program's cost per packet against the
//! trivial reference program (BPF_PROG_TEST_RUN, `xdp-bench`), then
//! end-to-end HTTP throughput with wrk through the balancer against wrk
//! straight to a backend, all in the same run on the same machine.

use std::{
    process::Command,
    time::{Duration, Instant},
};

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

/// Parts of the benchmark `--only` can pick.
pub const SECTIONS: [&str; 3] = ["packet", "lab", "failover"];

/// Runs the benchmark, or only the section `only` names (see `SECTIONS`).
pub fn run(only: Option<&str>) -> Result<()> {
    if let Some(section) = only.filter(|s| !SECTIONS.contains(s)) {
        bail!("no benchmark section `{section}` (choose from {SECTIONS:?})");
    }
    let wanted = |section: &str| only.is_none_or(|o| o == section);
    heading("Build");
    let artifacts = build::build_all(BuildOptions::default())?;
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

    if wanted("packet") {
        packet_figures(&artifacts)?;
    }
    if wanted("lab") {
        lab_figures(&artifacts)?;
    }
    if wanted("failover") {
        failover(&artifacts.agent)?;
    }
    Ok(())
}

fn packet_figures(artifacts: &build::Artifacts) -> Result<()> {
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

    Ok(())
}

fn lab_figures(artifacts: &build::Artifacts) -> Result<()> {
    apt::ensure_programs(&[("wrk", "wrk"), ("curl", "curl")], "for the benchmark")?;
    heading(&format!(
        "End to end in lab `{PREFIX}` (generic XDP on veth)"
    ));
    cmd::catch_interrupts();
    let options = LabOptions {
        agent_bin: Some(artifacts.agent.clone()),
        // One LB: the figures are about the data path, not the election.
        ha: false,
        ..LabOptions::with_prefix(PREFIX)
    };
    std::env::set_var(ENV_AGENT_BIN, &artifacts.agent);
    let lab = Lab::up_guarded(&options)?;
    std::thread::sleep(Duration::from_millis(500));
    // Health figures first, on an idle lab: the wrk runs leave many closing
    // flows holding NAT ports for a while.
    heading("Health checks: detection, recovery, fast fail (www: http check every 1 s, rise 2, fall 2, timeout 0.5 s)");
    health_figures(&lab)?;
    std::thread::sleep(Duration::from_secs(3));

    heading(&format!(
        "Throughput: wrk, {WRK_CONNECTIONS} connections, {WRK_SECONDS} s each"
    ));
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

fn failover(agent: &std::path::Path) -> Result<()> {
    heading("Failover: outage when the master fails, agent pair vs keepalived + HAProxy pair");
    cmd::catch_interrupts();
    crate::lab::ensure_all_lab_programs()?;
    crate::failover_bench::run(agent)
}

/// One request through the VIP: which backend answered (None = failed)
/// and how long curl took.
fn one_request(lab: &Lab) -> Result<(Option<String>, Duration)> {
    let started = Instant::now();
    let out = lab.exec(
        Node::Client,
        &[
            "curl",
            "-s",
            "--connect-timeout",
            "2",
            "--max-time",
            "2",
            "http://10.100.0.100/",
        ],
    )?;
    let took = started.elapsed();
    let body = String::from_utf8_lossy(&out.stdout).trim().to_string();
    Ok((
        (out.status.success() && !body.is_empty()).then_some(body),
        took,
    ))
}

/// Requests every 50 ms until `done` says stop (at most `limit`); returns
/// the time since `from` of the last request for which `mark` held.
fn watch(
    lab: &Lab,
    from: Instant,
    limit: Duration,
    mut mark: impl FnMut(&Option<String>) -> bool,
    mut done: impl FnMut(&Option<String>, Duration) -> bool,
) -> Result<Option<Duration>> {
    let mut last = None;
    while from.elapsed() < limit {
        let (answer, _) = one_request(lab)?;
        if mark(&answer) {
            last = Some(from.elapsed());
        }
        if done(&answer, from.elapsed()) {
            break;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    Ok(last)
}

fn health_figures(lab: &Lab) -> Result<()> {
    let window = Duration::from_millis(2 * 1000 + 500);
    // Detection: nginx on web1 stops; requests that still go there fail.
    let stopped = Instant::now();
    lab.stop_nginx(Node::Web1)?;
    let last_failure = watch(
        lab,
        stopped,
        Duration::from_secs(10),
        |answer| answer.is_none(),
        |_, elapsed| elapsed > window + Duration::from_secs(3),
    )?;
    match last_failure {
        Some(t) => println!(
            "  detection: last connection sent to the stopped web1 {:.2} s after the stop (window fall x interval + timeout = {:.1} s)",
            t.as_secs_f64(),
            window.as_secs_f64()
        ),
        None => println!("  detection: no request failed after the stop (window {:.1} s)", window.as_secs_f64()),
    }
    // Recovery: nginx on web1 starts; the first request web1 answers.
    let started = Instant::now();
    lab.start_nginx(Node::Web1)?;
    let mut back = None;
    watch(
        lab,
        started,
        Duration::from_secs(10),
        |_| false,
        |answer, elapsed| {
            if answer.as_deref() == Some("web1") {
                back = Some(elapsed);
                true
            } else {
                false
            }
        },
    )?;
    match back {
        Some(t) => println!(
            "  recovery: web1 answered again {:.2} s after nginx started (window rise x interval = 2 s)",
            t.as_secs_f64()
        ),
        None => println!("  recovery: web1 did not answer within 10 s"),
    }
    // Fast fail: with no backend up, a connect is answered with RST.
    lab.stop_nginx(Node::Web1)?;
    lab.stop_nginx(Node::Web2)?;
    std::thread::sleep(window + Duration::from_secs(2));
    let mut times: Vec<Duration> = Vec::new();
    for _ in 0..20 {
        let (answer, took) = one_request(lab)?;
        if answer.is_none() {
            times.push(took);
        }
    }
    times.sort();
    if let Some(median) = times.get(times.len() / 2) {
        println!(
            "  fast fail: with no backend up a client's connect fails in {:.1} ms (median of {}, curl process included) instead of waiting for its connect timeout (2 s here, about 2 min with Linux defaults)",
            median.as_secs_f64() * 1000.0,
            times.len()
        );
    }
    lab.start_nginx(Node::Web1)?;
    lab.start_nginx(Node::Web2)?;
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
