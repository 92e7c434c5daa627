//! `cargo xtask bench`: the XDP program's cost per packet against the
//! trivial reference program (BPF_PROG_TEST_RUN, `xdp-bench`), then
//! end-to-end HTTP throughput with wrk through the balancer against wrk
//! straight to a backend, the connection rate against HAProxy
//! (`connrate`), the agent's reads of a large flow table (`table`), the
//! agent of an HA pair at 10k-1M live flows (`scale`) and failover (the
//! outage, the established connections that survive, the sync's lag and
//! cost: `failover_bench`), all in the same run on the same machine.

use std::{
    process::Command,
    time::{Duration, Instant},
};

use anyhow::{bail, Context as _, Result};

use crate::{
    apt,
    build::{
        self, BuildOptions, ENV_AGENT_BIN, ENV_EBPF_OBJECT, ENV_PASS_OBJECT, ENV_TRIVIAL_OBJECT,
        ENV_XTASK_BIN,
    },
    cmd,
    lab::{Lab, LabOptions, LbSetup, Node, XdpMode},
    workspace_root,
};

/// The lab prefix of the `lab` and `connrate` sections unless `--prefix`.
pub const DEFAULT_PREFIX: &str = "bench";
const WRK_SECONDS: u32 = 5;
const WRK_CONNECTIONS: u32 = 32;
/// wrk's own per-request timeout.
const WRK_TIMEOUT: &str = "2s";
/// How long past its `-d` a wrk run may take before it is killed.
const WRK_GRACE_SECONDS: u32 = 20;
/// The VIP as the benchmark's URL.
pub const VIP_URL: &str = "http://10.100.0.100/";

/// What the benchmark runs (`cargo xtask bench [--only S] [--xdp M,...]
/// [--prefix P]`).
#[derive(Debug, Clone)]
pub struct BenchOptions {
    /// One section of `SECTIONS`, or all of them.
    pub only: Option<String>,
    /// XDP modes of the lab sections (`lab`, `connrate`); empty: both.
    pub xdp: Vec<XdpMode>,
    /// Lab prefix of the lab sections.
    pub prefix: String,
    /// Run the per-packet section under `perf` and show where the
    /// program's time goes (`profile`).
    pub profile: bool,
}

impl Default for BenchOptions {
    fn default() -> Self {
        Self {
            only: None,
            xdp: Vec::new(),
            prefix: DEFAULT_PREFIX.to_owned(),
            profile: false,
        }
    }
}

impl BenchOptions {
    /// The XDP modes to measure, generic first.
    pub fn xdp_modes(&self) -> Vec<XdpMode> {
        let mut modes = if self.xdp.is_empty() {
            vec![XdpMode::Generic, XdpMode::Native]
        } else {
            self.xdp.clone()
        };
        modes.sort_by_key(|m| *m != XdpMode::Generic);
        modes.dedup();
        modes
    }
}

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

/// The socket errors wrk counts (its "Socket errors:" line; all zero when
/// it prints none).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SocketErrors {
    pub connect: u64,
    pub read: u64,
    pub write: u64,
    pub timeout: u64,
}

impl SocketErrors {
    pub fn total(&self) -> u64 {
        self.connect + self.read + self.write + self.timeout
    }
}

impl std::fmt::Display for SocketErrors {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{}/{}/{}/{}",
            self.connect, self.read, self.write, self.timeout
        )
    }
}

/// wrk's "Socket errors: connect N, read N, write N, timeout N" line;
/// `None` if a line of that name does not parse.
pub fn parse_wrk_socket_errors(output: &str) -> Option<SocketErrors> {
    let Some(line) = output
        .lines()
        .find_map(|l| l.trim().strip_prefix("Socket errors:"))
    else {
        return Some(SocketErrors::default());
    };
    let mut errors = SocketErrors::default();
    for part in line.split(',') {
        let mut words = part.split_whitespace();
        let (Some(name), Some(count), None) = (words.next(), words.next(), words.next()) else {
            return None;
        };
        let count: u64 = count.parse().ok()?;
        match name {
            "connect" => errors.connect = count,
            "read" => errors.read = count,
            "write" => errors.write = count,
            "timeout" => errors.timeout = count,
            _ => return None,
        }
    }
    Some(errors)
}

/// wrk's "Non-2xx or 3xx responses: N" (0 when it prints none).
pub fn parse_wrk_non_2xx(output: &str) -> u64 {
    output
        .lines()
        .find_map(|l| l.trim().strip_prefix("Non-2xx or 3xx responses:"))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0)
}

/// What one wrk run reported.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct WrkResult {
    pub rate: f64,
    pub errors: SocketErrors,
    pub non_2xx: u64,
}

/// `wrk -t2 -c32 -d<seconds>s --timeout 2s [-H 'Connection: close'] <url>`
/// from `from`, killed if it overruns by `WRK_GRACE_SECONDS`.
pub fn wrk_run(lab: &Lab, from: Node, url: &str, close: bool, seconds: u32) -> Result<WrkResult> {
    wrk_with(lab, from, url, close, seconds, WRK_CONNECTIONS)
}

/// `wrk_run` with `connections` concurrent connections.
pub fn wrk_with(
    lab: &Lab,
    from: Node,
    url: &str,
    close: bool,
    seconds: u32,
    connections: u32,
) -> Result<WrkResult> {
    let limit = format!("{}s", seconds + WRK_GRACE_SECONDS);
    let duration = format!("{seconds}s");
    let connections = connections.to_string();
    let mut args = vec![
        "timeout",
        "--signal=KILL",
        &limit,
        "wrk",
        "-t",
        "2",
        "-c",
        &connections,
        "-d",
        &duration,
        "--timeout",
        WRK_TIMEOUT,
    ];
    if close {
        args.extend(["-H", "Connection: close"]);
    }
    args.push(url);
    let out = lab.exec_ok(from, &args)?;
    let rate =
        parse_wrk_rate(&out).with_context(|| format!("no Requests/sec in wrk output:\n{out}"))?;
    let errors = parse_wrk_socket_errors(&out)
        .with_context(|| format!("wrk's socket errors line does not parse:\n{out}"))?;
    Ok(WrkResult {
        rate,
        errors,
        non_2xx: parse_wrk_non_2xx(&out),
    })
}

fn wrk(lab: &Lab, from: Node, url: &str, close: bool) -> Result<f64> {
    wrk_run(lab, from, url, close, WRK_SECONDS).map(|r| r.rate)
}

/// The wrk command line the benchmark runs, for headings.
pub fn wrk_description(close: bool) -> String {
    let close = if close { " -H 'Connection: close'" } else { "" };
    format!("wrk -t2 -c{WRK_CONNECTIONS}{close} --timeout {WRK_TIMEOUT}")
}

/// Parts of the benchmark `--only` can pick.
pub const SECTIONS: [&str; 7] = [
    "packet", "table", "scale", "lab", "connrate", "failover", "soak",
];

/// `model name` of the first CPU in /proc/cpuinfo.
pub fn cpu_model() -> String {
    std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|t| {
            t.lines()
                .find(|l| l.starts_with("model name"))
                .map(|l| l.split(':').nth(1).unwrap_or("").trim().to_string())
        })
        .unwrap_or_else(|| "unknown CPU".into())
}

/// CPU model, CPU count and kernel release, on one line.
pub fn machine() -> String {
    let kernel = cmd::stdout_of(Command::new("uname").arg("-r")).unwrap_or_default();
    format!(
        "{}, {} CPUs, kernel {}",
        cpu_model(),
        std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(0),
        kernel.trim()
    )
}

/// Runs the benchmark, or only the section `options.only` names (see
/// `SECTIONS`).
pub fn run(options: &BenchOptions) -> Result<()> {
    let only = options.only.as_deref();
    if let Some(section) = only.filter(|s| !SECTIONS.contains(s)) {
        bail!("no benchmark section `{section}` (choose from {SECTIONS:?})");
    }
    crate::lab::validate_prefix(&options.prefix)?;
    let wanted = |section: &str| only.is_none_or(|o| o == section);
    if options.profile && !wanted("packet") {
        bail!("--profile applies to the packet section; use it with `--only packet` or without `--only`");
    }
    if wanted("connrate") {
        // Checked before any section runs: connrate's labs add a suffix.
        for balancer in crate::connrate::turn_order(&options.xdp_modes()) {
            crate::lab::validate_prefix(&crate::connrate::lab_prefix(&options.prefix, balancer))?;
        }
    }
    heading("Build");
    let artifacts = build::build_all(BuildOptions::default())?;
    heading("Machine");
    println!("  {}", machine());

    if wanted("packet") {
        heading("Per packet (BPF_PROG_TEST_RUN)");
        if options.profile {
            crate::profile::packet(bench_command(&artifacts, "xdp-bench", &[])?)?;
        } else {
            bench_binary(&artifacts, "xdp-bench", &[])?;
        }
    }
    if wanted("table") {
        heading("Flow table at scale (the agent's expiry pass and census)");
        bench_binary(&artifacts, "flow-table-bench", &[])?;
    }
    if wanted("scale") {
        heading("The agent of the HA pair at 10k, 100k and 1M live flows (VRRP, reads, CPU)");
        cmd::catch_interrupts();
        bench_binary(&artifacts, "scale-bench", &[&options.prefix])?;
    }
    if wanted("lab") {
        for (i, mode) in options.xdp_modes().into_iter().enumerate() {
            lab_figures(&artifacts, &options.prefix, mode, i == 0)?;
        }
    }
    if wanted("connrate") {
        crate::connrate::run(&artifacts, &options.prefix, &options.xdp_modes())?;
    }
    if wanted("failover") {
        failover(&artifacts)?;
    } else if wanted("soak") {
        heading("Failover: a saturated pair at 20 ms adverts");
        cmd::catch_interrupts();
        crate::lab::ensure_all_lab_programs()?;
        crate::failover_bench::soak::run(&artifacts.agent)?;
    }
    Ok(())
}

/// Builds one of the tests crate's benchmark binaries and returns the
/// command that runs it with `args` and the artifacts' paths.
fn bench_command(artifacts: &build::Artifacts, name: &str, args: &[&str]) -> Result<Command> {
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
                name,
            ])
            .env(ENV_EBPF_OBJECT, &artifacts.lb_object),
    )?;
    let mut bench = Command::new(build::target_dir().join("release").join(name));
    bench
        .args(args)
        .env(ENV_EBPF_OBJECT, &artifacts.lb_object)
        .env(ENV_TRIVIAL_OBJECT, &artifacts.trivial_object)
        .env(ENV_PASS_OBJECT, &artifacts.pass_object)
        .env(ENV_AGENT_BIN, &artifacts.agent)
        .env(ENV_XTASK_BIN, std::env::current_exe()?);
    Ok(bench)
}

/// Builds and runs one of the tests crate's benchmark binaries with
/// `args`.
fn bench_binary(artifacts: &build::Artifacts, name: &str, args: &[&str]) -> Result<()> {
    let mut bench = bench_command(artifacts, name, args)?;
    let status = bench
        .status()
        .with_context(|| format!("running {}", cmd::describe(&bench)))?;
    if !status.success() {
        bail!("{name} failed ({status})");
    }
    Ok(())
}

/// The lab of the lab sections: one LB (the figures are about the data
/// path, not the election) with the agent attaching XDP in `mode`.
pub fn bench_lab_options(artifacts: &build::Artifacts, prefix: &str, mode: XdpMode) -> LabOptions {
    LabOptions {
        agent_bin: Some(artifacts.agent.clone()),
        lbs: LbSetup::SingleAgent,
        xdp: mode,
        pass_object: Some(artifacts.pass_object.clone()),
        ..LabOptions::with_prefix(prefix)
    }
}

fn lab_figures(
    artifacts: &build::Artifacts,
    prefix: &str,
    mode: XdpMode,
    with_health: bool,
) -> Result<()> {
    apt::ensure_programs(&[("wrk", "wrk"), ("curl", "curl")], "for the benchmark")?;
    heading(&format!(
        "End to end in lab `{prefix}` ({mode} XDP on veth)"
    ));
    cmd::catch_interrupts();
    std::env::set_var(ENV_AGENT_BIN, &artifacts.agent);
    let lab = Lab::up_guarded(&bench_lab_options(artifacts, prefix, mode))?;
    std::thread::sleep(Duration::from_millis(500));
    if with_health {
        // Health figures first, on an idle lab: the wrk runs leave many
        // closing flows holding NAT ports for a while.
        heading("Health checks: detection, recovery, fast fail (www: http check every 1 s, rise 2, fall 2, timeout 0.5 s)");
        health_figures(&lab)?;
        std::thread::sleep(Duration::from_secs(3));
    }

    heading(&format!(
        "Throughput ({mode} XDP): wrk, {WRK_CONNECTIONS} connections, {WRK_SECONDS} s each"
    ));
    let backend = format!(
        "http://{}/",
        Node::Web1.private_address().context("web1 address")?
    );
    let mut rows = Vec::new();
    for (label, close) in [("keep-alive", false), ("new connection per request", true)] {
        let through = wrk(&lab, Node::Client, VIP_URL, close)?;
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

fn failover(artifacts: &build::Artifacts) -> Result<()> {
    heading("Failover: the agent pair vs the keepalived + HAProxy pair");
    println!("\n--- Opening a flow with flow sync on and off (BPF_PROG_TEST_RUN)");
    bench_binary(artifacts, "xdp-bench", &["sync"])?;
    cmd::catch_interrupts();
    crate::lab::ensure_all_lab_programs()?;
    crate::failover_bench::run(&artifacts.agent)
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
            VIP_URL,
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

    #[test]
    fn wrk_socket_errors_are_parsed() {
        let out = "Running 10s test @ http://10.100.0.100/\n  2 threads and 32 connections\n  \
                   4021 requests in 10.02s, 1.01MB read\n  \
                   Socket errors: connect 3, read 1207, write 5, timeout 96\n  \
                   Non-2xx or 3xx responses: 2\nRequests/sec:    401.30\n";
        assert_eq!(
            parse_wrk_socket_errors(out),
            Some(SocketErrors {
                connect: 3,
                read: 1207,
                write: 5,
                timeout: 96
            })
        );
        assert_eq!(parse_wrk_non_2xx(out), 2);
        assert_eq!(parse_wrk_socket_errors(out).unwrap().total(), 1311);
        assert_eq!(
            parse_wrk_socket_errors(out).unwrap().to_string(),
            "3/1207/5/96"
        );
        // wrk prints no such line when there were none.
        let clean = "Running 10s test\nRequests/sec:  12345.67\n";
        assert_eq!(
            parse_wrk_socket_errors(clean),
            Some(SocketErrors::default())
        );
        assert_eq!(parse_wrk_non_2xx(clean), 0);
        for broken in [
            "Socket errors: connect x, read 0, write 0, timeout 0",
            "Socket errors: connect 1, reads 0, write 0, timeout 0",
            "Socket errors: connect 1 read 0",
        ] {
            assert_eq!(parse_wrk_socket_errors(broken), None, "{broken}");
        }
    }

    #[test]
    fn xdp_modes_default_to_both_generic_first() {
        let mut options = BenchOptions::default();
        assert_eq!(options.xdp_modes(), [XdpMode::Generic, XdpMode::Native]);
        options.xdp = vec![XdpMode::Native, XdpMode::Generic, XdpMode::Native];
        assert_eq!(options.xdp_modes(), [XdpMode::Generic, XdpMode::Native]);
        options.xdp = vec![XdpMode::Native];
        assert_eq!(options.xdp_modes(), [XdpMode::Native]);
    }
}
