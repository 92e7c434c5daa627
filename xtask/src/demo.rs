//! `cargo xtask demo`: the lab with prefix `demo`, a tour of what the load
//! balancer does (spreading, SNAT, UDP, adding and draining a backend, stats,
//! pinned maps), then tear-down, also on error or Ctrl-C.

use std::{
    collections::BTreeMap,
    net::SocketAddrV4,
    path::Path,
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result};

use crate::{
    build::{self, BuildOptions},
    cmd,
    lab::{Lab, LabOptions, Node, BPFFS, HTTP_PORT, UDP_PORT, VIP},
};

const PREFIX: &str = "demo";
const STEPS: u32 = 11;
const REQUESTS: u32 = 20;
const UDP_QUERIES: u32 = 6;
/// Attempts to get the long download onto web3 (round robin over three).
const DRAIN_ATTEMPTS: u32 = 12;

fn heading(n: u32, title: &str) {
    eprintln!("\n=== [{n}/{STEPS}] {title}");
}

fn indent(text: &str) {
    for line in text.lines() {
        eprintln!("    {line}");
    }
}

/// Expectations that did not hold (the demo goes on and reports them).
#[derive(Default)]
struct Findings(Vec<String>);

impl Findings {
    fn expect(&mut self, ok: bool, what: &str) {
        if ok {
            eprintln!("  ok: {what}");
        } else {
            eprintln!("  UNEXPECTED: not {what}");
            self.0.push(what.to_owned());
        }
    }
}

pub fn run() -> Result<()> {
    cmd::catch_interrupts();
    heading(1, "Toolchain and build");
    let artifacts = build::build_all(BuildOptions::default())?;
    eprintln!("  toolchain: {}", artifacts.toolchain.describe());
    eprintln!("  agent:     {}", artifacts.agent.display());
    cmd::check_interrupted()?;

    heading(2, &format!("Lab up (prefix {PREFIX})"));
    let options = LabOptions {
        agent_bin: Some(artifacts.agent.clone()),
        ..LabOptions::with_prefix(PREFIX)
    };
    let lab = Lab::up_guarded(&options)?;
    let result = tour(&lab);
    eprintln!("\n=== Lab down (prefix {PREFIX})");
    drop(lab);
    eprintln!("  removed namespaces, processes, pins and /run/lb-lab/{PREFIX}");
    let findings = result?;
    if !findings.0.is_empty() {
        anyhow::bail!("the demo saw unexpected results: {}", findings.0.join("; "));
    }
    eprintln!("\nxtask: demo finished");
    Ok(())
}

fn tour(lab: &Lab) -> Result<Findings> {
    let mut findings = Findings::default();
    let url = format!("http://{VIP}/");
    let client = lab.ns(Node::Client);
    let lb1 = lab.instance(Node::Lb1);

    heading(
        3,
        &format!("{REQUESTS} HTTP requests to {url} from {client}"),
    );
    eprintln!("  $ ip netns exec {client} curl -s --max-time 2 {url}   (x{REQUESTS})");
    let counts = http_round(lab, &url)?;
    show_counts(&counts);
    findings.expect(
        counts.get("web1") > Some(&0) && counts.get("web2") > Some(&0),
        "both web1 and web2 answered",
    );
    findings.expect(
        counts.keys().all(|k| k == "web1" || k == "web2"),
        "only web1 and web2 answered",
    );

    heading(
        4,
        "Web servers see the load balancer's SNAT addresses (access logs)",
    );
    let pool: Vec<String> = Node::Lb1
        .snat_pool()
        .iter()
        .map(|a| a.to_string())
        .collect();
    for node in [Node::Web1, Node::Web2] {
        let log = lab.access_log_path(node);
        // Client requests only: both nodes' health checks (`/health`, from
        // each node's own address, lb2's outside lb1's pool) interleave.
        eprintln!("  $ grep 'GET / ' {} | tail -n 3", log.display());
        let requests: Vec<String> = cmd::tail(&log, 200)
            .lines()
            .filter(|l| l.contains("\"GET / "))
            .map(str::to_owned)
            .collect();
        let tail = requests[requests.len().saturating_sub(3)..].join("\n");
        indent(&tail);
        findings.expect(
            !tail.is_empty()
                && tail
                    .lines()
                    .all(|l| pool.iter().any(|a| l.starts_with(&format!("{a} ")))),
            &format!(
                "{node}'s requests came from lb1's SNAT pool ({})",
                pool.join(", ")
            ),
        );
    }

    heading(5, &format!("{UDP_QUERIES} UDP queries to {VIP}:{UDP_PORT}"));
    eprintln!(
        "  $ ip netns exec {client} xtask udp-query --to {VIP}:{UDP_PORT} --timeout 1s --count {UDP_QUERIES}"
    );
    let replies = lab.udp_query(
        Node::Client,
        SocketAddrV4::new(VIP, UDP_PORT),
        UDP_QUERIES,
        Duration::from_secs(1),
    )?;
    for (i, reply) in replies.iter().enumerate() {
        eprintln!("    query {i}: {}", reply.as_deref().unwrap_or("no reply"));
    }
    let answered = |name: &str| replies.iter().any(|r| r.as_deref() == Some(name));
    findings.expect(
        answered("web1") && answered("web2"),
        "web1 and web2 both answered UDP",
    );
    cmd::check_interrupted()?;

    heading(6, "Add web3 to www, then another round");
    let web3 = format!(
        "{}:{HTTP_PORT}",
        Node::Web3
            .private_address()
            .map(|a| a.to_string())
            .unwrap_or_default()
    );
    let added = agent(lab, &["backends", "add", "--service", "www", &web3])?;
    findings.expect(added, "`backends add` succeeded");
    let counts = http_round(lab, &url)?;
    show_counts(&counts);
    findings.expect(counts.get("web3") > Some(&0), "web3 got requests");

    heading(
        7,
        "Drain web3: a long download keeps going, new requests skip web3",
    );
    let download = start_download_on_web3(lab)?;
    findings.expect(download.is_some(), "a download of /slow landed on web3");
    let removed = agent(lab, &["backends", "remove", "--service", "www", &web3])?;
    findings.expect(removed, "`backends remove` succeeded");
    if let Some(mut download) = download {
        let before = download.received();
        sleep_checked(Duration::from_secs(3))?;
        let after = download.received();
        eprintln!("  download from web3 after removal: {before} -> {after} bytes in 3 s");
        findings.expect(
            after > before && download.running(),
            "the download continued",
        );
        let counts = http_round(lab, &url)?;
        show_counts(&counts);
        findings.expect(!counts.contains_key("web3"), "new requests skipped web3");
        // nginx's rate limit sends in bursts: give the next one time to land.
        sleep_checked(Duration::from_secs(2))?;
        let later = download.received();
        eprintln!("  download still receiving: {later} bytes (stopping it now)");
        findings.expect(later > after, "the download was still receiving");
    }

    heading(8, &format!("lb-agent --instance {lb1} stats"));
    agent(lab, &["stats"])?;

    heading(
        9,
        &format!("bpftool map dump pinned {BPFFS}/{lb1}/services"),
    );
    let pinned = lab.pin_dir(Node::Lb1).join("services");
    let out = cmd::output(
        Command::new("bpftool")
            .args(["map", "dump", "pinned"])
            .arg(&pinned),
    )?;
    indent(&String::from_utf8_lossy(&out.stdout));
    indent(&String::from_utf8_lossy(&out.stderr));
    findings.expect(
        out.status.success(),
        "the services map is pinned and readable",
    );

    heading(
        10,
        "Failover: kill -9 the master's agent, traffic goes on through lb2",
    );
    failover(lab, &mut findings)?;

    heading(11, "Status");
    indent(&lab.status());
    Ok(findings)
}

/// `lb-agent status` of `node`, shown.
fn show_status(lab: &Lab, node: Node) -> Result<String> {
    let out = lab.agent_cli(node, &["status"])?;
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    eprintln!(
        "  $ ip netns exec {} lb-agent --instance {} status",
        lab.ns(node),
        lab.instance(node)
    );
    indent(text.lines().take(5).collect::<Vec<_>>().join("\n").as_str());
    Ok(text)
}

fn failover(lab: &Lab, findings: &mut Findings) -> Result<()> {
    show_status(lab, Node::Lb1)?;
    show_status(lab, Node::Lb2)?;
    eprintln!("  $ kill -9 <agent of lb1>   (its XDP program keeps forwarding meanwhile)");
    lab.kill_agent(Node::Lb1, libc::SIGKILL)?;
    let started = std::time::Instant::now();
    let (mut ok, mut failed) = (0u32, 0u32);
    let mut master_after = None;
    // At most ~8 s of requests, one every 200 ms.
    for _ in 0..40 {
        match lab.http_get(Node::Client, &format!("http://{VIP}/")) {
            Ok(_) => ok += 1,
            Err(_) => failed += 1,
        }
        if master_after.is_none() {
            let status = lab.agent_cli(Node::Lb2, &["status"])?;
            if String::from_utf8_lossy(&status.stdout).contains("vrrp: MASTER") {
                master_after = Some(started.elapsed());
                eprintln!(
                    "  lb2 became MASTER {:.1} s after the kill (master-down interval 3.6 s)",
                    started.elapsed().as_secs_f64()
                );
            }
        }
        if master_after.is_some_and(|t| started.elapsed() > t + Duration::from_secs(1)) {
            break;
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    eprintln!("  requests during the failover: {ok} answered, {failed} failed");
    findings.expect(master_after.is_some(), "lb2 took over");
    findings.expect(failed == 0, "no request failed during the failover");
    show_status(lab, Node::Lb2)?;
    eprintln!("  restarting lb1's agent: it still has the VIP, resumes as master, lb2 steps back");
    lab.start_agent(Node::Lb1)?;
    let back = cmd::wait_until(Duration::from_secs(10), || {
        lab.vip_holder() == Some(Node::Lb1)
    });
    findings.expect(back, "lb1 is master again and the only VIP holder");
    show_status(lab, Node::Lb1)?;
    let answered = lab
        .http_get(Node::Client, &format!("http://{VIP}/"))
        .is_ok();
    findings.expect(answered, "traffic flows through lb1 again");
    Ok(())
}

/// Runs the agent CLI against lb1, showing the command and its output.
fn agent(lab: &Lab, args: &[&str]) -> Result<bool> {
    eprintln!(
        "  $ ip netns exec {} lb-agent --instance {} {}",
        lab.ns(Node::Lb1),
        lab.instance(Node::Lb1),
        args.join(" ")
    );
    let out = lab.agent_cli(Node::Lb1, args)?;
    indent(&String::from_utf8_lossy(&out.stdout));
    indent(&String::from_utf8_lossy(&out.stderr));
    Ok(out.status.success())
}

/// `REQUESTS` sequential requests from the client; answers per body.
fn http_round(lab: &Lab, url: &str) -> Result<BTreeMap<String, u32>> {
    let mut counts = BTreeMap::new();
    for _ in 0..REQUESTS {
        cmd::check_interrupted()?;
        let out = lab.exec(Node::Client, &["curl", "-s", "--max-time", "2", url])?;
        let body = String::from_utf8_lossy(&out.stdout).trim().to_owned();
        let key = if out.status.success() && !body.is_empty() {
            body
        } else {
            "(no answer)".to_owned()
        };
        *counts.entry(key).or_insert(0) += 1;
    }
    Ok(counts)
}

fn show_counts(counts: &BTreeMap<String, u32>) {
    let line: Vec<String> = counts.iter().map(|(k, v)| format!("{k}: {v}")).collect();
    eprintln!("  answers: {}", line.join(", "));
}

fn sleep_checked(total: Duration) -> Result<()> {
    let end = Instant::now() + total;
    while Instant::now() < end {
        cmd::check_interrupted()?;
        std::thread::sleep(Duration::from_millis(100));
    }
    Ok(())
}

/// A background `curl` of /slow from the client, stopped on drop.
struct Download {
    child: Child,
    body: std::path::PathBuf,
}

impl Download {
    fn received(&self) -> u64 {
        std::fs::metadata(&self.body).map(|m| m.len()).unwrap_or(0)
    }

    fn running(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }
}

impl Drop for Download {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Starts downloads of /slow until one is served by web3 (per its
/// `X-Backend` header); at most `DRAIN_ATTEMPTS` tries, 3 s each.
fn start_download_on_web3(lab: &Lab) -> Result<Option<Download>> {
    let url = format!("http://{VIP}/slow");
    let headers = lab.run_dir().join("slow.headers");
    let body = lab.run_dir().join("slow.body");
    eprintln!(
        "  $ ip netns exec {} curl -s --max-time 120 -D {} -o {} {url} &   (until X-Backend: web3)",
        lab.ns(Node::Client),
        headers.display(),
        body.display()
    );
    for attempt in 1..=DRAIN_ATTEMPTS {
        cmd::check_interrupted()?;
        let _ = std::fs::remove_file(&headers);
        let _ = std::fs::remove_file(&body);
        let child = Command::new("ip")
            .args([
                "netns",
                "exec",
                &lab.ns(Node::Client),
                "curl",
                "-s",
                "--max-time",
                "120",
            ])
            .arg("-D")
            .arg(&headers)
            .arg("-o")
            .arg(&body)
            .arg(&url)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .context("starting curl")?;
        let mut download = Download {
            child,
            body: body.clone(),
        };
        let mut backend = None;
        cmd::wait_until(Duration::from_secs(3), || {
            backend = backend_of(&headers);
            backend.is_some() || !download.running()
        });
        let name = backend.unwrap_or_else(|| "nobody (no response headers)".to_owned());
        eprintln!("  attempt {attempt}: served by {name}");
        if name == "web3" {
            return Ok(Some(download));
        }
    }
    Ok(None)
}

/// The `X-Backend` header in a curl `-D` dump.
fn backend_of(headers: &Path) -> Option<String> {
    let text = std::fs::read_to_string(headers).ok()?;
    text.lines().find_map(|line| {
        let (name, value) = line.split_once(':')?;
        name.eq_ignore_ascii_case("x-backend")
            .then(|| value.trim().to_owned())
    })
}
