//! Helpers of the end-to-end tests: a guarded lab per test, the agent's
//! CLI, HTTP rounds through the VIP, long downloads, bounded waits.

use std::{
    collections::BTreeMap,
    process::Command,
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc,
    },
    thread::JoinHandle,
    time::Duration,
};

pub use xtask::lab::Download;
use xtask::lab::{Lab, LabGuard, LabOptions, LbSetup, Node, Provider, VrrpVersion, XdpMode};

use crate::artifacts;

pub const VIP_URL: &str = "http://10.100.0.100/";

/// A lab with one LB (lb1 holds the VIP statically, no VRRP).
pub fn lab(prefix: &str) -> Option<LabGuard> {
    lab_with(prefix, |o| o.lbs = LbSetup::SingleAgent)
}

/// A lab with one LB whose agent attaches XDP in native (driver) mode.
pub fn lab_native(prefix: &str) -> Option<LabGuard> {
    let pass = artifacts::pass_object()?;
    lab_with(prefix, |o| {
        o.lbs = LbSetup::SingleAgent;
        o.xdp = XdpMode::Native;
        o.pass_object = Some(pass);
    })
}

/// The HA lab: agents on lb1 and lb2 elect the VIP's holder with VRRP.
pub fn lab_ha(prefix: &str) -> Option<LabGuard> {
    lab_with(prefix, |_| {})
}

/// The HA lab with VRRPv3 at `advert_int`.
pub fn lab_ha_v3(prefix: &str, advert_int: Duration) -> Option<LabGuard> {
    lab_with(prefix, |o| {
        o.vrrp = VrrpVersion::V3;
        o.advert_int = advert_int;
    })
}

/// The HA lab where `classic` nodes run keepalived + HAProxy (the classic
/// pair) instead of the agent, with VRRP `version` at `advert_int`.
pub fn lab_mixed(
    prefix: &str,
    classic: &[Node],
    version: VrrpVersion,
    advert_int: Duration,
) -> Option<LabGuard> {
    lab_with(prefix, |o| {
        o.vrrp = version;
        o.advert_int = advert_int;
        o.classic = classic.to_vec();
    })
}

/// The HA lab with the `digitalocean` provider: the stand-in API in the
/// client namespace (`do_mock`, the `do-api-mock` binary the test got
/// from cargo) moves the reserved IP's route.
pub fn lab_digitalocean(prefix: &str, do_mock: &str) -> Option<LabGuard> {
    lab_with(prefix, |o| {
        o.provider = Provider::Digitalocean;
        o.do_mock_bin = Some(do_mock.into());
    })
}

/// A guarded lab with the built artifacts and HA by default, as `adjust`
/// changes it; `None` (skip) when this run cannot use the artifacts.
fn lab_with(prefix: &str, adjust: impl FnOnce(&mut LabOptions)) -> Option<LabGuard> {
    let mut options = LabOptions {
        agent_bin: Some(artifacts::agent_binary()?),
        xtask_bin: Some(artifacts::xtask_binary()?),
        lbs: LbSetup::HaPair,
        ..LabOptions::with_prefix(prefix)
    };
    adjust(&mut options);
    Some(Lab::up_guarded(&options).unwrap_or_else(|e| panic!("lab {prefix} up: {e:#}")))
}

/// A top-level field of `node`'s `lb-agent status --json` (`Null` when
/// the agent does not answer).
pub fn status_field(lab: &Lab, node: Node, field: &str) -> serde_json::Value {
    lab.status_json(node)[field].clone()
}

/// A field of the `vrrp` object of `node`'s `lb-agent status --json`
/// (`Null` when the agent does not answer).
pub fn vrrp_field(lab: &Lab, node: Node, field: &str) -> serde_json::Value {
    status_field(lab, node, "vrrp")[field].clone()
}

/// The VRRP state `node`'s agent reports (`MASTER`, `BACKUP`, ...).
pub fn vrrp_state(lab: &Lab, node: Node) -> String {
    vrrp_field(lab, node, "state")
        .as_str()
        .unwrap_or("")
        .to_string()
}

pub fn agent(lab: &Lab, args: &[&str]) -> String {
    let out = lab
        .agent_cli(Node::Lb1, args)
        .unwrap_or_else(|e| panic!("lb-agent {args:?}: {e:#}"));
    assert!(
        out.status.success(),
        "lb-agent {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// The client addresses in `web`'s nginx access log (`$remote_addr` first).
pub fn access_log_clients(lab: &Lab, web: Node) -> std::collections::BTreeSet<String> {
    access_log(lab, web)
        .lines()
        .filter_map(|l| l.split_whitespace().next())
        .map(str::to_owned)
        .collect()
}

/// nginx's access log on `web`.
pub fn access_log(lab: &Lab, web: Node) -> String {
    let path = lab.access_log_path(web);
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("access log {}: {e}", path.display()))
}

/// Lb1's SNAT pool as strings, as access logs show them.
pub fn lb1_snat_pool() -> Vec<String> {
    Node::Lb1
        .snat_pool()
        .iter()
        .map(|a| a.to_string())
        .collect()
}

/// `count` sequential requests to the VIP; answers by body (or "error").
pub fn http_round(lab: &Lab, count: usize) -> BTreeMap<String, usize> {
    let mut counts = BTreeMap::new();
    for _ in 0..count {
        let answer = lab
            .http_get(Node::Client, VIP_URL)
            .map(|body| body.trim().to_string())
            .unwrap_or_else(|e| format!("error: {e:#}"));
        *counts.entry(answer).or_insert(0) += 1;
    }
    counts
}

/// Starts downloads until one lands on `backend` (bounded).
pub fn download_on(lab: &Lab, backend: &str) -> Download {
    for attempt in 0..12 {
        let download =
            Download::start(lab, &format!("dl-{backend}-{attempt}")).expect("start a download");
        if download.backend().as_deref() == Some(backend) {
            return download;
        }
    }
    panic!("no download landed on {backend} in 12 attempts");
}

/// Polls `condition` until it holds or `limit` passes; whether it held.
pub fn wait_for(limit: Duration, condition: impl FnMut() -> bool) -> bool {
    xtask::cmd::wait_until(limit, condition)
}

/// Waits up to `limit` for `needle` in `node`'s agent log; the log as it
/// then is, as the error, when it does not come.
pub fn wait_for_agent_log(
    lab: &Lab,
    node: Node,
    needle: &str,
    limit: Duration,
) -> Result<(), String> {
    let path = lab.agent_log_path(node);
    let read = || std::fs::read_to_string(&path).unwrap_or_default();
    if wait_for(limit, || read().contains(needle)) {
        Ok(())
    } else {
        Err(read())
    }
}

/// `backends list --service S --json` as JSON values.
pub fn backends_json(lab: &Lab, service: &str) -> Vec<serde_json::Value> {
    let text = agent(lab, &["backends", "list", "--service", service, "--json"]);
    match serde_json::from_str(&text) {
        Ok(serde_json::Value::Array(list)) => list,
        other => panic!("backends list --json is not a JSON array ({other:?}):\n{text}"),
    }
}

/// One field of `backend` ("10.200.0.21:80") in `backends list --json`.
pub fn backend_field(lab: &Lab, service: &str, backend: &str, field: &str) -> serde_json::Value {
    let list = backends_json(lab, service);
    list.iter()
        .find(|b| format!("{}:{}", b["address"].as_str().unwrap_or(""), b["port"]) == backend)
        .map(|b| b[field].clone())
        .unwrap_or_else(|| panic!("{backend} not in backends of {service}: {list:?}"))
}

/// The health state of `backend`: "up", "down" or "unchecked".
pub fn health_of(lab: &Lab, service: &str, backend: &str) -> String {
    backend_field(lab, service, backend, "health")
        .as_str()
        .unwrap_or_default()
        .to_string()
}

/// What a client loop saw: answers by body, and the failures.
#[derive(Debug, Default)]
pub struct LoopResult {
    pub answers: BTreeMap<String, usize>,
    pub failed: Vec<String>,
}

impl LoopResult {
    pub fn ok(&self) -> usize {
        self.answers.values().sum()
    }
}

/// A bounded client: a request through the VIP every `every` (at most
/// `max`) from the client namespace, until `stop`.
pub struct ClientLoop {
    stop: Arc<AtomicBool>,
    thread: JoinHandle<LoopResult>,
}

impl ClientLoop {
    pub fn start(lab: &Lab, every: Duration, max: usize) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let client = lab.ns(Node::Client);
        let flag = stop.clone();
        let thread = std::thread::spawn(move || {
            let mut result = LoopResult::default();
            for _ in 0..max {
                if flag.load(Ordering::Relaxed) {
                    break;
                }
                let out = Command::new("ip")
                    .args([
                        "netns",
                        "exec",
                        &client,
                        "curl",
                        "-sS",
                        "--max-time",
                        "2",
                        VIP_URL,
                    ])
                    .output()
                    .expect("curl");
                if out.status.success() {
                    let body = String::from_utf8_lossy(&out.stdout).trim().to_string();
                    *result.answers.entry(body).or_insert(0) += 1;
                } else {
                    result
                        .failed
                        .push(String::from_utf8_lossy(&out.stderr).into_owned());
                }
                std::thread::sleep(every);
            }
            result
        });
        Self { stop, thread }
    }

    /// Stops the loop and returns what it saw.
    pub fn finish(self) -> LoopResult {
        self.stop.store(true, Ordering::Relaxed);
        self.thread.join().expect("client loop")
    }
}
