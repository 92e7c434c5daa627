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
    lab::{Lab, LabOptions, Node, HTTP_PORT, UDP_PORT, VIP},
};

const PREFIX: &str = "demo";
/// Build, lab up, then the tour's nine.
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
    let mut tour = Tour {
        lab,
        findings: Findings::default(),
        step: 2,
    };
    tour.http_spread()?;
    tour.snat_sources();
    tour.udp_spread()?;
    let web3 = tour.add_web3()?;
    tour.drain(&web3)?;
    tour.agent_stats()?;
    tour.pinned_services()?;
    tour.failover()?;
    tour.heading("Status");
    indent(&lab.status());
    Ok(tour.findings)
}

/// The demo's steps after the lab is up, numbered as they run.
struct Tour<'a> {
    lab: &'a Lab,
    findings: Findings,
    step: u32,
}

impl Tour<'_> {
    fn heading(&mut self, title: &str) {
        self.step += 1;
        heading(self.step, title);
    }

    fn http_spread(&mut self) -> Result<()> {
        let client = self.lab.ns(Node::Client);
        self.heading(&format!(
            "{REQUESTS} HTTP requests to {} from {client}",
            url("/")
        ));
        eprintln!(
            "  $ ip netns exec {client} curl -s --max-time 2 {}   (x{REQUESTS})",
            url("/")
        );
        let counts = http_round(self.lab)?;
        show_counts(&counts);
        self.findings.expect(
            counts.get("web1") > Some(&0) && counts.get("web2") > Some(&0),
            "both web1 and web2 answered",
        );
        self.findings.expect(
            counts.keys().all(|k| k == "web1" || k == "web2"),
            "only web1 and web2 answered",
        );
        Ok(())
    }

    fn snat_sources(&mut self) {
        self.heading("Web servers see the load balancer's SNAT addresses (access logs)");
        // The HA pair's floating SNAT address, or lb1's own pool without HA.
        let pool: Vec<String> = self
            .lab
            .default_agent_model(Node::Lb1)
            .map(|model| model.snat_addresses())
            .unwrap_or_else(|_| Node::Lb1.snat_pool())
            .iter()
            .map(|a| a.to_string())
            .collect();
        for node in [Node::Web1, Node::Web2] {
            let log = self.lab.access_log_path(node);
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
            let from_pool = |l: &str| pool.iter().any(|a| l.starts_with(&format!("{a} ")));
            self.findings.expect(
                !tail.is_empty() && tail.lines().all(from_pool),
                &format!(
                    "{node}'s requests came from lb1's SNAT addresses ({})",
                    pool.join(", ")
                ),
            );
        }
    }

    fn udp_spread(&mut self) -> Result<()> {
        let client = self.lab.ns(Node::Client);
        self.heading(&format!("{UDP_QUERIES} UDP queries to {VIP}:{UDP_PORT}"));
        eprintln!(
            "  $ ip netns exec {client} xtask udp-query --to {VIP}:{UDP_PORT} --timeout 1s --count {UDP_QUERIES}"
        );
        let replies = self.lab.udp_query(
            Node::Client,
            SocketAddrV4::new(VIP, UDP_PORT),
            UDP_QUERIES,
            Duration::from_secs(1),
        )?;
        for (i, reply) in replies.iter().enumerate() {
            eprintln!("    query {i}: {}", reply.as_deref().unwrap_or("no reply"));
        }
        let answered = |name: &str| replies.iter().any(|r| r.as_deref() == Some(name));
        self.findings.expect(
            answered("web1") && answered("web2"),
            "web1 and web2 both answered UDP",
        );
        cmd::check_interrupted()
    }

    /// Adds web3 to `www`; returns its backend address.
    fn add_web3(&mut self) -> Result<String> {
        self.heading("Add web3 to www, then another round");
        let web3 = Node::Web3
            .private_address()
            .map(|a| format!("{a}:{HTTP_PORT}"))
            .context("web3's address")?;
        let added = agent(self.lab, &["backends", "add", "--service", "www", &web3])?;
        self.findings.expect(added, "`backends add` succeeded");
        let counts = http_round(self.lab)?;
        show_counts(&counts);
        self.findings
            .expect(counts.get("web3") > Some(&0), "web3 got requests");
        Ok(web3)
    }

    /// Removes `web3` while a long download from it runs: the download
    /// goes on, new requests skip web3.
    fn drain(&mut self, web3: &str) -> Result<()> {
        self.heading("Drain web3: a long download keeps going, new requests skip web3");
        let download = start_download_on_web3(self.lab)?;
        self.findings
            .expect(download.is_some(), "a download of /slow landed on web3");
        let removed = agent(self.lab, &["backends", "remove", "--service", "www", web3])?;
        self.findings.expect(removed, "`backends remove` succeeded");
        let Some(mut download) = download else {
            return Ok(());
        };
        let before = download.received();
        sleep_checked(Duration::from_secs(3))?;
        let after = download.received();
        eprintln!("  download from web3 after removal: {before} -> {after} bytes in 3 s");
        self.findings.expect(
            after > before && download.running(),
            "the download continued",
        );
        let counts = http_round(self.lab)?;
        show_counts(&counts);
        self.findings
            .expect(!counts.contains_key("web3"), "new requests skipped web3");
        // nginx's rate limit sends in bursts: give the next one time to land.
        sleep_checked(Duration::from_secs(2))?;
        let later = download.received();
        eprintln!("  download still receiving: {later} bytes (stopping it now)");
        self.findings
            .expect(later > after, "the download was still receiving");
        Ok(())
    }

    fn agent_stats(&mut self) -> Result<()> {
        self.heading(&format!(
            "lb-agent --instance {} stats",
            self.lab.instance(Node::Lb1)
        ));
        agent(self.lab, &["stats"]).map(drop)
    }

    fn pinned_services(&mut self) -> Result<()> {
        let pinned = self.lab.pin_dir(Node::Lb1).join("services");
        self.heading(&format!("bpftool map dump pinned {}", pinned.display()));
        let out = cmd::output(
            Command::new("bpftool")
                .args(["map", "dump", "pinned"])
                .arg(&pinned),
        )?;
        indent(&String::from_utf8_lossy(&out.stdout));
        indent(&String::from_utf8_lossy(&out.stderr));
        self.findings.expect(
            out.status.success(),
            "the services map is pinned and readable",
        );
        Ok(())
    }

    /// kill -9 of the master's agent: lb2 takes over without a failed
    /// request; lb1's restarted agent takes the VIP back.
    fn failover(&mut self) -> Result<()> {
        self.heading("Failover: kill -9 the master's agent, traffic goes on through lb2");
        let lab = self.lab;
        show_status(lab, Node::Lb1)?;
        show_status(lab, Node::Lb2)?;
        eprintln!("  $ kill -9 <agent of lb1>   (its XDP program keeps forwarding meanwhile)");
        lab.kill_agent(Node::Lb1, libc::SIGKILL)?;
        let (took_over, failed) = requests_during_takeover(lab)?;
        self.findings.expect(took_over, "lb2 took over");
        self.findings
            .expect(failed == 0, "no request failed during the failover");
        show_status(lab, Node::Lb2)?;
        eprintln!(
            "  restarting lb1's agent: it still has the VIP, resumes as master, lb2 steps back"
        );
        lab.start_agent(Node::Lb1)?;
        let back = cmd::wait_until(Duration::from_secs(10), || {
            lab.vip_holder() == Some(Node::Lb1)
        });
        self.findings
            .expect(back, "lb1 is master again and the only VIP holder");
        show_status(lab, Node::Lb1)?;
        let answered = lab.http_get(Node::Client, &url("/")).is_ok();
        self.findings
            .expect(answered, "traffic flows through lb1 again");
        Ok(())
    }
}

/// `http://<VIP><path>`.
fn url(path: &str) -> String {
    format!("http://{VIP}{path}")
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

/// Requests through the VIP while lb2 takes over from lb1's dead agent,
/// until a second after lb2 reports MASTER (at most ~8 s, one every
/// 200 ms). Returns whether lb2 took over and how many requests failed.
fn requests_during_takeover(lab: &Lab) -> Result<(bool, u32)> {
    let started = Instant::now();
    let (mut ok, mut failed) = (0u32, 0u32);
    let mut master_after = None;
    for _ in 0..40 {
        match lab.http_get(Node::Client, &url("/")) {
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
    Ok((master_after.is_some(), failed))
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

/// `REQUESTS` sequential requests from the client to the VIP; answers per
/// body.
fn http_round(lab: &Lab) -> Result<BTreeMap<String, u32>> {
    let url = url("/");
    let mut counts = BTreeMap::new();
    for _ in 0..REQUESTS {
        cmd::check_interrupted()?;
        let out = lab.exec(Node::Client, &["curl", "-s", "--max-time", "2", &url])?;
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
    let url = url("/slow");
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
