//! The HA lab with lb1's flow table full of live flows (filled through its
//! pinned map; no traffic could open a million connections here): what
//! the agent's VRRP, its reads and its CPU use do then. Shared by the scale
//! test (behaviour only) and `scale-bench` (the figures).

use std::{
    fmt,
    time::{Duration, Instant},
};

use lb_agent::control::{
    client,
    protocol::{Reply, Request, Response},
};
use lb_agent::dataplane::maps::monotonic_ns;
use lb_config::MaxFlows;
use xtask::lab::{Lab, LabGuard, Node};

use crate::{
    e2e::{lab_ha, vrrp_field, vrrp_state, wait_for},
    table::FlowFiller,
};

/// lb1's flow table: the default capacity the issue measured at.
pub const MAX_FLOWS: u32 = lb_common::DEFAULT_MAX_FLOWS;
/// The agent's expiry pass: its interval and the entries it reads.
const EXPIRY_INTERVAL: Duration = lb_agent::daemon::HOUSEKEEPING_INTERVAL;
const SWEEP_SLICE: u32 = lb_agent::dataplane::maps::SWEEP_SLICE as u32;
/// How long one read may take before it counts as unanswered.
const READ_TIMEOUT: Duration = Duration::from_secs(10);

/// The HA lab with lb1's agent at `MAX_FLOWS`, master again, and a filler
/// of its flow table.
pub struct ScaleLab {
    filler: FlowFiller,
    filled: u32,
    runtime: tokio::runtime::Runtime,
    pub lab: LabGuard,
}

/// What one observation window saw.
#[derive(Debug, Default)]
pub struct Observation {
    pub window: Duration,
    /// Times of `stats` and `status` requests on lb1's control socket.
    pub stats_ms: Vec<f64>,
    pub status_ms: Vec<f64>,
    /// Reads that failed or timed out.
    pub failed: Vec<String>,
    /// lb1's agent: CPU time over the window per wall-clock time, in % of
    /// one core; the VRRP thread's share of it.
    pub agent_cpu: f64,
    pub vrrp_thread_cpu: f64,
    /// Live flows lb1 reported last.
    pub flows: u64,
    /// States of lb1 and lb2 other than MASTER / BACKUP seen while
    /// sampling.
    pub wrong_states: Vec<String>,
}

/// `p`-th quantile (0..=1) of `values` (sorted here).
fn quantile(values: &[f64], p: f64) -> f64 {
    let mut sorted = values.to_vec();
    sorted.sort_by(f64::total_cmp);
    match sorted.len() {
        0 => f64::NAN,
        n => sorted[((n - 1) as f64 * p).round() as usize],
    }
}

impl Observation {
    pub fn stats_median(&self) -> f64 {
        quantile(&self.stats_ms, 0.5)
    }
    pub fn stats_max(&self) -> f64 {
        quantile(&self.stats_ms, 1.0)
    }
    pub fn status_median(&self) -> f64 {
        quantile(&self.status_ms, 0.5)
    }
    pub fn status_max(&self) -> f64 {
        quantile(&self.status_ms, 1.0)
    }
}

impl fmt::Display for Observation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} flows over {:.0} s: stats {:.1} ms median, {:.1} ms max ({} reads); \
             status {:.1} ms median, {:.1} ms max; agent CPU {:.1}% of a core \
             (VRRP thread {:.2}%); {} failed reads",
            self.flows,
            self.window.as_secs_f64(),
            self.stats_median(),
            self.stats_max(),
            self.stats_ms.len(),
            self.status_median(),
            self.status_max(),
            self.agent_cpu,
            self.vrrp_thread_cpu,
            self.failed.len()
        )
    }
}

/// CPU time (user + system) of a `/proc/.../stat` line, in seconds.
fn cpu_seconds(stat: &str) -> Option<f64> {
    // Fields after the command name in parentheses (which may hold spaces):
    // state is field 3, utime 14 and stime 15.
    let rest = stat.rsplit_once(')')?.1;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let ticks: u64 = fields.get(11)?.parse::<u64>().ok()? + fields.get(12)?.parse::<u64>().ok()?;
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1);
    Some(ticks as f64 / hz as f64)
}

/// CPU seconds of process `pid` and of its thread named `thread`.
fn agent_cpu(pid: u32, thread: &str) -> (f64, f64) {
    let process = std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|s| cpu_seconds(&s))
        .unwrap_or(0.0);
    let tasks = std::fs::read_dir(format!("/proc/{pid}/task"))
        .into_iter()
        .flatten();
    let named = tasks
        .flatten()
        .filter(|t| {
            std::fs::read_to_string(t.path().join("comm")).is_ok_and(|c| c.trim() == thread)
        })
        .filter_map(|t| std::fs::read_to_string(t.path().join("stat")).ok())
        .filter_map(|s| cpu_seconds(&s))
        .sum();
    (process, named)
}

impl ScaleLab {
    /// The HA lab `prefix`, lb1's agent restarted with `conntrack.max_flows
    /// = MAX_FLOWS`, lb1 master and lb2 backup again; `None` (skip) when
    /// this run cannot use the artifacts.
    pub fn up(prefix: &str) -> Option<Self> {
        let lab = lab_ha(prefix)?;
        let mut model = lab.default_agent_model(Node::Lb1).expect("lb1's model");
        model.conntrack.max_flows = MaxFlows::new(MAX_FLOWS).expect("MAX_FLOWS is in bounds");
        // A table of another size needs a restart (and new maps).
        lab.stop_agent(Node::Lb1).expect("stop lb1's agent");
        lab.start_agent_with_model(Node::Lb1, &model)
            .expect("lb1's agent with the large table");
        let settled = |lab: &Lab| {
            vrrp_state(lab, Node::Lb1) == "MASTER" && vrrp_state(lab, Node::Lb2) == "BACKUP"
        };
        assert!(
            wait_for(Duration::from_secs(15), || settled(&lab)),
            "lb1 takes the VIP back: lb1 {}, lb2 {}",
            vrrp_state(&lab, Node::Lb1),
            vrrp_state(&lab, Node::Lb2)
        );
        let filler = FlowFiller::open(&lab.pin_dir(Node::Lb1)).expect("lb1's flow table");
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime");
        Some(Self {
            filler,
            filled: 0,
            runtime,
            lab,
        })
    }

    /// Fills lb1's table with live flows (established, seen now) up to
    /// `count`; how long the inserts took.
    pub fn fill_to(&mut self, count: u32) -> Duration {
        let started = Instant::now();
        let now = monotonic_ns();
        while self.filled < count {
            self.filler.insert_flow(self.filled, now);
            self.filled += 1;
        }
        started.elapsed()
    }

    /// One control request to `node`'s agent: its reply and how long it
    /// took.
    pub fn request(&self, node: Node, request: &Request) -> (Result<Reply, String>, Duration) {
        let path = self.lab.socket_path(node);
        let instance = self.lab.instance(node);
        let started = Instant::now();
        let answer = self
            .runtime
            .block_on(client::call(&path, &instance, request, READ_TIMEOUT));
        let took = started.elapsed();
        let reply = match answer {
            Ok(Response::Ok(reply)) => Ok(reply),
            Ok(Response::Error { message }) => Err(message),
            Err(error) => Err(error.to_string()),
        };
        (reply, took)
    }

    /// Live flows in lb1's `stats` (0 when it does not answer).
    pub fn flows(&self) -> u64 {
        match self.request(Node::Lb1, &Request::Stats).0 {
            Ok(Reply::Stats(stats)) => stats.flows,
            _ => 0,
        }
    }

    /// Waits (at most `limit`) until lb1 counts at least `count` live
    /// flows: a large table's census is the last complete sweep's, which
    /// takes several expiry passes.
    pub fn wait_for_census(&self, count: u64, limit: Duration) -> bool {
        wait_for(limit, || self.flows() >= count)
    }

    /// After a fill to `count`: times the first `stats` (until an expiry
    /// sweep has seen the whole grown table, a census walks all of it),
    /// then waits out two whole sweeps (one expiry pass of `SWEEP_SLICE`
    /// entries every 2 s), so that what follows is the steady state.
    pub fn settle(&self, count: u32) -> Duration {
        let (_, cold) = self.request(Node::Lb1, &Request::Stats);
        let passes = count.div_ceil(SWEEP_SLICE).max(1);
        std::thread::sleep(EXPIRY_INTERVAL * 2 * passes + EXPIRY_INTERVAL);
        cold
    }

    /// Both nodes' VRRP transition counters.
    pub fn transitions(&self) -> [u64; 2] {
        [Node::Lb1, Node::Lb2].map(|node| {
            vrrp_field(&self.lab, node, "transitions")
                .as_u64()
                .unwrap_or(u64::MAX)
        })
    }

    /// Watches for `window`: a `stats` and a `status` of lb1 every
    /// `every`, both nodes' states, and lb1's agent's CPU use.
    pub fn observe(&self, window: Duration, every: Duration) -> Observation {
        let pid = self.lab.agent_pid(Node::Lb1).expect("lb1's agent runs");
        let mut seen = Observation::default();
        let (cpu_before, vrrp_before) = agent_cpu(pid, lb_agent::vrrp::instance::THREAD_NAME);
        let started = Instant::now();
        // A benchmark run stops at Ctrl-C (and its lab goes with it).
        while started.elapsed() < window && !xtask::cmd::interrupted() {
            let tick = Instant::now();
            self.sample(&mut seen);
            std::thread::sleep(every.saturating_sub(tick.elapsed()));
        }
        seen.window = started.elapsed();
        let (cpu_after, vrrp_after) = agent_cpu(pid, lb_agent::vrrp::instance::THREAD_NAME);
        let wall = seen.window.as_secs_f64();
        seen.agent_cpu = (cpu_after - cpu_before) / wall * 100.0;
        seen.vrrp_thread_cpu = (vrrp_after - vrrp_before) / wall * 100.0;
        seen
    }

    fn sample(&self, seen: &mut Observation) {
        match self.request(Node::Lb1, &Request::Stats) {
            (Ok(Reply::Stats(stats)), took) => {
                seen.stats_ms.push(took.as_secs_f64() * 1e3);
                seen.flows = stats.flows;
            }
            (other, _) => seen.failed.push(format!("stats: {other:?}")),
        }
        for node in [Node::Lb1, Node::Lb2] {
            let want = if node == Node::Lb1 {
                "MASTER"
            } else {
                "BACKUP"
            };
            match self.request(node, &Request::Status) {
                (Ok(Reply::Status(status)), took) => {
                    if node == Node::Lb1 {
                        seen.status_ms.push(took.as_secs_f64() * 1e3);
                    }
                    let state = status.vrrp.map(|v| v.state.as_str()).unwrap_or_default();
                    if state != want {
                        seen.wrong_states.push(format!("{node} {state}"));
                    }
                }
                (other, _) => seen.failed.push(format!("status of {node}: {other:?}")),
            }
        }
    }
}
