//! `cargo xtask bench --only connrate`: new connections per second through
//! the XDP balancer against HAProxy in TCP mode on the same LB node, in the
//! same run on the same machine. Three rounds of wrk with `Connection:
//! close` one after another show whether a rate holds once closed
//! connections pile up (NAT ports held by closing flows, TIME_WAIT
//! sockets on the backends); keep-alive rounds are compared by their
//! median: on a small VM where wrk, nginx and the balancer share the
//! CPUs, one 10 s keep-alive round of the same build varies by ±10%,
//! more than the margin the goal asks for.
//!
//! Every balancer has a lab of its own, with its own web servers, and all
//! the labs are up together, so that the balancers can take turns round
//! by round: the VM's speed drifts over minutes, and rounds a minute
//! apart compared one balancer's luck with another's. HAProxy's lab has
//! no agent, so only HAProxy ever handles the VIP there.
//!
//! The client reuses its own TIME_WAIT ports (`tcp_tw_reuse = 1`) in every
//! lab. HAProxy's FIN reaches wrk after the response, so wrk often closes
//! first and the client keeps the TIME_WAIT; one client address then runs
//! out of ports at about 28,000 / 60 s = 470 connections/s, a limit of the
//! lab's single client and not of HAProxy (through the XDP balancer nginx
//! closes first, so the backends keep them).

use std::{collections::BTreeMap, fmt, time::Duration};

use anyhow::{bail, Context as _, Result};

use crate::{
    apt,
    bench::{self, WrkResult, VIP_URL},
    build::Artifacts,
    cmd,
    lab::{Lab, LabGuard, LabOptions, LbSetup, Node, XdpMode},
};

/// Close-mode rounds per balancer, one after another.
pub const ROUNDS: usize = 3;
pub const ROUND_SECONDS: u32 = 10;
/// Keep-alive rounds per balancer, after the close rounds.
pub const KEEP_ALIVE_ROUNDS: usize = 3;
/// web1's counters: connections it put in TIME_WAIT (the kernel counts
/// them as it arms the 60 s timer), and segments a TIME_WAIT socket
/// rejected by PAWS (an older timestamp on a reused address and port).
pub const NSTAT_COUNTERS: [&str; 2] = ["TcpExtTW", "TcpExtPAWSTimewait"];
/// The client's SYN retransmissions: a SYN that a backend's TIME_WAIT
/// socket turned away is sent again after the 1 s initial RTO, which is
/// what drags a close-mode rate down.
pub const CLIENT_COUNTER: &str = "TcpExtTCPSynRetrans";
/// The agent's reason for SYNs dropped because no NAT port was free.
pub const PORT_EXHAUSTED: &str = "drop_port_exhausted";
/// The goals the numbers are held against (reported, never enforced).
pub const GOAL_CLOSE_RATIO: f64 = 1.5;
pub const GOAL_ROUND3_SHARE: f64 = 0.8;
pub const GOAL_KEEP_ALIVE_RATIO: f64 = 1.5;
/// How long a fresh lab may take to serve through the VIP from both backends.
const SERVING_TIMEOUT: Duration = Duration::from_secs(15);

/// What handles the VIP on lb1.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Balancer {
    Xdp(XdpMode),
    Haproxy,
}

impl fmt::Display for Balancer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Balancer::Xdp(mode) => write!(f, "XDP {mode}"),
            Balancer::Haproxy => f.write_str("HAProxy"),
        }
    }
}

/// web1's TIME_WAIT counters and the client's SYN retransmissions,
/// absolute or as a delta.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Counters {
    pub tw: u64,
    pub paws: u64,
    pub syn_retrans: u64,
}

impl Counters {
    fn since(self, before: Counters) -> Counters {
        Counters {
            tw: self.tw.saturating_sub(before.tw),
            paws: self.paws.saturating_sub(before.paws),
            syn_retrans: self.syn_retrans.saturating_sub(before.syn_retrans),
        }
    }

    fn add(self, other: Counters) -> Counters {
        Counters {
            tw: self.tw + other.tw,
            paws: self.paws + other.paws,
            syn_retrans: self.syn_retrans + other.syn_retrans,
        }
    }
}

/// One wrk round and what the counters did during it.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Round {
    pub wrk: WrkResult,
    pub counters: Counters,
    /// The agent's `drop_port_exhausted` during the round (none for HAProxy).
    pub port_exhausted: Option<u64>,
}

/// One balancer's rounds.
#[derive(Debug, Clone, PartialEq)]
pub struct Phase {
    pub balancer: Balancer,
    pub close: Vec<Round>,
    pub keep_alive: Vec<Round>,
}

impl Phase {
    /// The last close round's rate as a share of the first's.
    pub fn last_over_first(&self) -> f64 {
        match (self.close.first(), self.close.last()) {
            (Some(first), Some(last)) => last.wrk.rate / first.wrk.rate.max(1.0),
            _ => 0.0,
        }
    }

    /// The median keep-alive rate (of an even count, the mean of the two
    /// middle ones).
    pub fn keep_alive_median(&self) -> f64 {
        let mut rates: Vec<f64> = self.keep_alive.iter().map(|r| r.wrk.rate).collect();
        rates.sort_by(f64::total_cmp);
        match rates.len() {
            0 => 0.0,
            n if n % 2 == 1 => rates[n / 2],
            n => (rates[n / 2 - 1] + rates[n / 2]) / 2.0,
        }
    }

    /// The keep-alive median as a multiple of `reference`'s.
    pub fn keep_alive_over(&self, reference: &Phase) -> f64 {
        self.keep_alive_median() / reference.keep_alive_median().max(1.0)
    }

    fn rounds(&self) -> impl Iterator<Item = (String, &Round)> {
        let close = self
            .close
            .iter()
            .enumerate()
            .map(|(i, r)| (format!("close {}", i + 1), r));
        let keep_alive = self
            .keep_alive
            .iter()
            .enumerate()
            .map(|(i, r)| (format!("keep-alive {}", i + 1), r));
        close.chain(keep_alive)
    }

    fn counters_total(&self) -> Counters {
        self.rounds()
            .fold(Counters::default(), |sum, (_, r)| sum.add(r.counters))
    }

    fn port_exhausted_total(&self) -> Option<u64> {
        self.rounds().map(|(_, r)| r.port_exhausted).sum()
    }
}

/// A goal and whether the figures meet it.
#[derive(Debug, Clone, PartialEq)]
pub struct Goal {
    pub text: String,
    pub holds: bool,
}

/// The goals for one XDP phase against HAProxy's: close mode ≥ 1.5×
/// HAProxy in every round, the third close round ≥ 80% of the first,
/// keep-alive (the rounds' medians) ≥ 1.5× HAProxy.
pub fn goals(xdp: &Phase, haproxy: &Phase) -> Vec<Goal> {
    let ratios: Vec<f64> = xdp
        .close
        .iter()
        .zip(&haproxy.close)
        .map(|(x, h)| x.wrk.rate / h.wrk.rate.max(1.0))
        .collect();
    let shown: Vec<String> = ratios.iter().map(|r| format!("{r:.2}")).collect();
    let share = xdp.last_over_first();
    let keep_alive = xdp.keep_alive_over(haproxy);
    let who = xdp.balancer;
    vec![
        Goal {
            text: format!(
                "{who}: close mode >= {GOAL_CLOSE_RATIO}x HAProxy in every round ({})",
                shown.join(", ")
            ),
            holds: !ratios.is_empty() && ratios.iter().all(|&r| r >= GOAL_CLOSE_RATIO),
        },
        Goal {
            text: format!(
                "{who}: round {ROUNDS} >= {:.0}% of round 1 ({:.0}%)",
                GOAL_ROUND3_SHARE * 100.0,
                share * 100.0
            ),
            holds: share >= GOAL_ROUND3_SHARE,
        },
        Goal {
            text: format!(
                "{who}: keep-alive median >= {GOAL_KEEP_ALIVE_RATIO}x HAProxy's ({keep_alive:.2})"
            ),
            holds: keep_alive >= GOAL_KEEP_ALIVE_RATIO,
        },
    ]
}

/// `nstat` output as counter → value (`#` lines skipped).
pub fn parse_nstat(output: &str) -> BTreeMap<String, u64> {
    output
        .lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| {
            let mut fields = l.split_whitespace();
            let name = fields.next()?;
            let value = fields.next()?.parse().ok()?;
            Some((name.to_owned(), value))
        })
        .collect()
}

/// The packet count of `reason` in `lb-agent stats` output; the agent only
/// lists reasons that counted something, so a missing one is 0.
pub fn parse_reason_count(stats: &str, reason: &str) -> Result<u64> {
    match stats.lines().find_map(|l| {
        let mut fields = l.split_whitespace();
        (fields.next() == Some(reason)).then(|| fields.next())
    }) {
        None => Ok(0),
        Some(count) => count
            .and_then(|c| c.parse().ok())
            .with_context(|| format!("`{reason}` has no packet count in:\n{stats}")),
    }
}

/// `counters` of `node` now, absolute (`nstat -asz`: its history file,
/// which every namespace shares, is neither read nor written).
fn nstat(lab: &Lab, node: Node, counters: &[&str]) -> Result<Vec<u64>> {
    let mut args = vec!["nstat", "-asz"];
    args.extend(counters);
    let values = parse_nstat(&lab.exec_ok(node, &args)?);
    counters
        .iter()
        .map(|&name| {
            values
                .get(name)
                .copied()
                .with_context(|| format!("nstat in {node} shows no {name}"))
        })
        .collect()
}

fn counters(lab: &Lab) -> Result<Counters> {
    let web1 = nstat(lab, Node::Web1, &NSTAT_COUNTERS)?;
    let client = nstat(lab, Node::Client, &[CLIENT_COUNTER])?;
    Ok(Counters {
        tw: web1[0],
        paws: web1[1],
        syn_retrans: client[0],
    })
}

fn port_exhausted(lab: &Lab) -> Result<u64> {
    let out = lab.agent_cli(Node::Lb1, &["stats"])?;
    if !out.status.success() {
        bail!(
            "lb-agent stats failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    parse_reason_count(&String::from_utf8_lossy(&out.stdout), PORT_EXHAUSTED)
}

/// Waits until both web servers have answered through the VIP.
fn wait_serving(lab: &Lab) -> Result<()> {
    let mut seen = std::collections::BTreeSet::new();
    let serving = cmd::wait_until(SERVING_TIMEOUT, || {
        if let Ok(body) = lab.http_get(Node::Client, VIP_URL) {
            seen.insert(body.trim().to_owned());
        }
        seen.contains("web1") && seen.contains("web2")
    });
    if !serving {
        bail!("the VIP did not serve from web1 and web2 within {SERVING_TIMEOUT:?} (saw {seen:?})");
    }
    Ok(())
}

/// The client's `net.ipv4.tcp_tw_reuse` in this section (see the module
/// comment).
const CLIENT_TW_REUSE: &str = "net.ipv4.tcp_tw_reuse=1";

/// One balancer's lab, up for the whole section, and the counters its
/// next round is measured from.
struct Contender {
    balancer: Balancer,
    lab: LabGuard,
    before: Counters,
    /// The agent's `drop_port_exhausted` so far (XDP only).
    exhausted: Option<u64>,
}

impl Contender {
    /// A fresh lab serving the VIP through `balancer`, with the lab prefix
    /// `prefix`.
    fn up(artifacts: &Artifacts, prefix: &str, balancer: Balancer) -> Result<Contender> {
        let lab = match balancer {
            Balancer::Xdp(mode) => {
                Lab::up_guarded(&bench::bench_lab_options(artifacts, prefix, mode))?
            }
            Balancer::Haproxy => {
                let options = LabOptions {
                    lbs: LbSetup::NoAgent,
                    ..LabOptions::with_prefix(prefix)
                };
                let lab = Lab::up_guarded(&options)?;
                lab.start_haproxy(Node::Lb1)?;
                lab
            }
        };
        wait_serving(&lab)?;
        lab.exec_ok(Node::Client, &["sysctl", "-qw", CLIENT_TW_REUSE])?;
        let before = counters(&lab)?;
        let exhausted = match balancer {
            Balancer::Xdp(_) => Some(port_exhausted(&lab)?),
            Balancer::Haproxy => None,
        };
        Ok(Contender {
            balancer,
            lab,
            before,
            exhausted,
        })
    }

    /// One wrk round through this lab's VIP and what the counters did.
    fn round(&mut self, close: bool) -> Result<Round> {
        let lab = &self.lab;
        let wrk = bench::wrk_run(lab, Node::Client, VIP_URL, close, ROUND_SECONDS)?;
        let now = counters(lab)?;
        let delta = now.since(self.before);
        self.before = now;
        let port_exhausted = match self.exhausted {
            Some(before) => {
                let now = port_exhausted(lab)?;
                self.exhausted = Some(now);
                Some(now.saturating_sub(before))
            }
            None => None,
        };
        eprintln!(
            "xtask: {} {}: {:.0} req/s, socket errors {}",
            self.balancer,
            if close { "close" } else { "keep-alive" },
            wrk.rate,
            wrk.errors
        );
        Ok(Round {
            wrk,
            counters: delta,
            port_exhausted,
        })
    }
}

/// The lab prefix of `balancer`'s lab: every balancer has its own lab,
/// all up at once.
pub fn lab_prefix(prefix: &str, balancer: Balancer) -> String {
    let tag = match balancer {
        Balancer::Xdp(XdpMode::Generic) => "g",
        Balancer::Xdp(XdpMode::Native) => "n",
        Balancer::Haproxy => "h",
    };
    format!("{prefix}-{tag}")
}

/// The order the balancers take their turns in: HAProxy right after the
/// first XDP mode, so that every XDP round runs right before or after a
/// HAProxy round.
pub fn turn_order(modes: &[XdpMode]) -> Vec<Balancer> {
    let mut order: Vec<Balancer> = modes.iter().map(|&m| Balancer::Xdp(m)).collect();
    order.insert(order.len().min(1), Balancer::Haproxy);
    order
}

/// Every balancer's rounds, in turns: round 1 of every balancer, then
/// round 2, and so on, keep-alive first on the fresh labs, then close.
/// This VM's speed drifts by 20% and more over minutes (the host's other
/// guests), so rounds compared with each other must run within seconds of
/// each other, not a minute apart. Each balancer's close rounds still
/// follow one another with nothing of its own in between: its backends
/// keep their TIME_WAIT sockets (60 s) and its pool keeps cycling (a
/// backend's sources come round in about half a minute at these rates),
/// so round 3 still reuses sources inside the backends' TIME_WAIT, which
/// is what the rounds are there to show; the only difference is that the
/// balancer's closing flows (10 s) may end while the others take their
/// turns.
fn measure_all(artifacts: &Artifacts, prefix: &str, modes: &[XdpMode]) -> Result<Vec<Phase>> {
    let mut contenders = Vec::new();
    for balancer in turn_order(modes) {
        contenders.push(Contender::up(
            artifacts,
            &lab_prefix(prefix, balancer),
            balancer,
        )?);
        cmd::check_interrupted()?;
    }
    let mut phases: Vec<Phase> = contenders
        .iter()
        .map(|c| Phase {
            balancer: c.balancer,
            close: Vec::with_capacity(ROUNDS),
            keep_alive: Vec::with_capacity(KEEP_ALIVE_ROUNDS),
        })
        .collect();
    let turns =
        std::iter::repeat_n(false, KEEP_ALIVE_ROUNDS).chain(std::iter::repeat_n(true, ROUNDS));
    for close in turns {
        for (contender, phase) in contenders.iter_mut().zip(&mut phases) {
            let round = contender.round(close)?;
            if close {
                phase.close.push(round);
            } else {
                phase.keep_alive.push(round);
            }
            cmd::check_interrupted()?;
        }
    }
    Ok(phases)
}

/// Right-aligned columns after a left-aligned first one.
fn table(headers: &[String], rows: &[Vec<String>]) -> String {
    let columns = headers.len();
    let width = |c: usize| {
        rows.iter()
            .filter_map(|r| r.get(c))
            .chain(std::iter::once(&headers[c]))
            .map(|s| s.chars().count())
            .max()
            .unwrap_or(0)
    };
    let widths: Vec<usize> = (0..columns).map(width).collect();
    let line = |cells: &[String]| {
        let mut out = String::from(" ");
        for (c, cell) in cells.iter().enumerate() {
            if c == 0 {
                out.push_str(&format!(" {cell:<w$}", w = widths[c]));
            } else {
                out.push_str(&format!("  {cell:>w$}", w = widths[c]));
            }
        }
        out.push('\n');
        out
    };
    let mut out = line(headers);
    for row in rows {
        out.push_str(&line(row));
    }
    out
}

/// The comparison table: per round each balancer's req/s and socket
/// errors, each XDP mode's ratio to HAProxy, and round 3 / round 1.
pub fn rate_table(phases: &[Phase]) -> String {
    let haproxy = phases.iter().find(|p| p.balancer == Balancer::Haproxy);
    let xdp: Vec<&Phase> = phases
        .iter()
        .filter(|p| p.balancer != Balancer::Haproxy)
        .collect();
    let mut headers = vec!["round".to_owned()];
    for p in phases {
        headers.push(format!("{} req/s", p.balancer));
        headers.push("errors c/r/w/t".to_owned());
    }
    if haproxy.is_some() {
        for p in &xdp {
            headers.push(format!("{} / HAProxy", p.balancer));
        }
    }
    let labels: Vec<String> = phases
        .first()
        .map(|p| p.rounds().map(|(label, _)| label).collect())
        .unwrap_or_default();
    let mut rows = Vec::new();
    for (i, label) in labels.iter().enumerate() {
        let round = |p: &Phase| p.rounds().nth(i).map(|(_, r)| *r).unwrap_or_default();
        let mut row = vec![label.clone()];
        for p in phases {
            let r = round(p);
            row.push(format!("{:.0}", r.wrk.rate));
            row.push(r.wrk.errors.to_string());
        }
        if let Some(h) = haproxy {
            for p in &xdp {
                row.push(format!(
                    "{:.2}",
                    round(p).wrk.rate / round(h).wrk.rate.max(1.0)
                ));
            }
        }
        rows.push(row);
    }
    let mut row = vec!["keep-alive median".to_owned()];
    for p in phases {
        row.push(format!("{:.0}", p.keep_alive_median()));
        row.push(String::new());
    }
    if let Some(h) = haproxy {
        for p in &xdp {
            row.push(format!("{:.2}", p.keep_alive_over(h)));
        }
    }
    rows.push(row);
    let mut row = vec![format!("round {ROUNDS} / round 1")];
    for p in phases {
        row.push(format!("{:.2}", p.last_over_first()));
        row.push(String::new());
    }
    rows.push(row);
    table(&headers, &rows)
}

/// web1's TIME_WAIT counters, the client's SYN retransmissions and the
/// agent's port exhaustion per round.
pub fn counter_table(phases: &[Phase]) -> String {
    let headers: Vec<String> = [
        "balancer, round",
        NSTAT_COUNTERS[0],
        NSTAT_COUNTERS[1],
        CLIENT_COUNTER,
        PORT_EXHAUSTED,
        "non-2xx",
    ]
    .map(String::from)
    .to_vec();
    let exhausted = |e: Option<u64>| e.map_or_else(|| "-".to_owned(), |n| n.to_string());
    let mut rows = Vec::new();
    for p in phases {
        for (label, r) in p.rounds() {
            rows.push(vec![
                format!("{}, {label}", p.balancer),
                r.counters.tw.to_string(),
                r.counters.paws.to_string(),
                r.counters.syn_retrans.to_string(),
                exhausted(r.port_exhausted),
                r.wrk.non_2xx.to_string(),
            ]);
        }
        let total = p.counters_total();
        rows.push(vec![
            format!("{}, phase total", p.balancer),
            total.tw.to_string(),
            total.paws.to_string(),
            total.syn_retrans.to_string(),
            exhausted(p.port_exhausted_total()),
            p.rounds()
                .map(|(_, r)| r.wrk.non_2xx)
                .sum::<u64>()
                .to_string(),
        ]);
    }
    table(&headers, &rows)
}

fn haproxy_version() -> String {
    cmd::stdout_of(std::process::Command::new("haproxy").arg("-v"))
        .ok()
        .and_then(|v| v.lines().next().map(str::to_owned))
        .unwrap_or_else(|| "HAProxy (version unknown)".to_owned())
}

/// Runs the section: each XDP mode in `modes`, then HAProxy, then the
/// tables and the goals.
pub fn run(artifacts: &Artifacts, prefix: &str, modes: &[XdpMode]) -> Result<()> {
    apt::ensure_programs(
        &[("wrk", "wrk"), ("curl", "curl"), ("nstat", "iproute2")],
        "for the benchmark",
    )?;
    crate::lab::ensure_classic_programs()?;
    cmd::catch_interrupts();
    println!(
        "\n=== Connection rate in labs `{prefix}-*`, the balancers taking turns round by round: {KEEP_ALIVE_ROUNDS} rounds of {ROUND_SECONDS} s with keep-alive, then {ROUNDS} of {} to the VIP",
        bench::wrk_description(true)
    );
    println!("  {}", bench::machine());
    println!(
        "  XDP: the agent on lb1 (no HA); HAProxy: {} in TCP mode on lb1 (the lab's classic haproxy.cfg, no agent); backends web1 + web2; each balancer in a lab of its own, all up at once",
        haproxy_version()
    );
    println!(
        "  client: {CLIENT_TW_REUSE} (one client address with TIME_WAIT ports would cap HAProxy at ~470 connections/s)"
    );
    let phases = measure_all(artifacts, prefix, modes)?;

    println!("\n  Requests/s and wrk's socket errors (connect/read/write/timeout):");
    print!("{}", rate_table(&phases));
    println!("\n  Deltas per round: web1's {} and {} (nstat), the client's {CLIENT_COUNTER}, the agent's {PORT_EXHAUSTED}, wrk's non-2xx responses:", NSTAT_COUNTERS[0], NSTAT_COUNTERS[1]);
    print!("{}", counter_table(&phases));
    let Some(haproxy) = phases.iter().find(|p| p.balancer == Balancer::Haproxy) else {
        return Ok(());
    };
    println!("\n  Goals (reported, not enforced):");
    for xdp in phases.iter().filter(|p| p.balancer != Balancer::Haproxy) {
        for goal in goals(xdp, haproxy) {
            let verdict = if goal.holds { "MET   " } else { "MISSED" };
            println!("    {verdict} {}", goal.text);
        }
    }
    println!(
        "    (HAProxy: round {ROUNDS} is {:.0}% of round 1)",
        haproxy.last_over_first() * 100.0
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn phase(
        balancer: Balancer,
        close: [f64; ROUNDS],
        keep_alive: [f64; KEEP_ALIVE_ROUNDS],
    ) -> Phase {
        let round = |rate| Round {
            wrk: WrkResult {
                rate,
                ..WrkResult::default()
            },
            counters: Counters {
                tw: 10,
                paws: 1,
                syn_retrans: 3,
            },
            port_exhausted: (balancer != Balancer::Haproxy).then_some(2),
        };
        Phase {
            balancer,
            close: close.iter().map(|&r| round(r)).collect(),
            keep_alive: keep_alive.iter().map(|&r| round(r)).collect(),
        }
    }

    #[test]
    fn goals_follow_the_figures() {
        let haproxy = phase(
            Balancer::Haproxy,
            [2000.0, 2000.0, 1900.0],
            [12000.0, 10000.0, 9000.0],
        );
        let collapsing = phase(
            Balancer::Xdp(XdpMode::Generic),
            [4300.0, 900.0, 100.0],
            [16000.0, 30000.0, 14000.0],
        );
        let holds: Vec<bool> = goals(&collapsing, &haproxy)
            .iter()
            .map(|g| g.holds)
            .collect();
        assert_eq!(holds, [false, false, true]);
        let steady = phase(
            Balancer::Xdp(XdpMode::Native),
            [4300.0, 4200.0, 4000.0],
            [15000.0, 15000.0, 15000.0],
        );
        let met = goals(&steady, &haproxy);
        assert!(met.iter().all(|g| g.holds), "{met:?}");
        assert!(met[0].text.contains("2.15, 2.10, 2.11"), "{}", met[0].text);
        assert!(met[1].text.contains("(93%)"), "{}", met[1].text);
        assert!(met[2].text.starts_with("XDP native: keep-alive median"));
        // One lucky round does not carry the goal: the median is 1.40x,
        // although the mean (1.60x) and the best round (2.00x) pass.
        let lucky = phase(
            Balancer::Xdp(XdpMode::Generic),
            [4300.0, 4200.0, 4000.0],
            [20000.0, 14000.0, 14000.0],
        );
        let keep_alive = &goals(&lucky, &haproxy)[2];
        assert!(!keep_alive.holds, "{keep_alive:?}");
        assert!(keep_alive.text.contains("(1.40)"), "{}", keep_alive.text);
    }

    #[test]
    fn haproxy_takes_its_turn_next_to_each_xdp_mode() {
        let generic = Balancer::Xdp(XdpMode::Generic);
        let native = Balancer::Xdp(XdpMode::Native);
        assert_eq!(
            turn_order(&[XdpMode::Generic, XdpMode::Native]),
            [generic, Balancer::Haproxy, native]
        );
        assert_eq!(turn_order(&[XdpMode::Native]), [native, Balancer::Haproxy]);
        assert_eq!(turn_order(&[]), [Balancer::Haproxy]);
        assert_eq!(lab_prefix("bench", native), "bench-n");
    }

    #[test]
    fn nstat_output_is_parsed() {
        let out = "#kernel\nTcpExtTW                        31234              0.0\nTcpExtPAWSTimewait              7                  0.0\n";
        let counters = parse_nstat(out);
        assert_eq!(counters.get("TcpExtTW"), Some(&31234));
        assert_eq!(counters.get("TcpExtPAWSTimewait"), Some(&7));
        assert_eq!(counters.len(), 2);
        let before = Counters {
            tw: 100,
            paws: 3,
            syn_retrans: 9,
        };
        let after = Counters {
            tw: 150,
            paws: 3,
            syn_retrans: 20,
        };
        assert_eq!(
            after.since(before),
            Counters {
                tw: 50,
                paws: 0,
                syn_retrans: 11
            }
        );
    }

    #[test]
    fn reason_counts_come_from_the_stats_table() {
        let stats = "REASON                PACKETS\nforwarded_to_backend  24\ndrop_port_exhausted   1234\n\nflow table: 4 live of 65536 entries\n";
        assert_eq!(parse_reason_count(stats, PORT_EXHAUSTED).unwrap(), 1234);
        assert_eq!(
            parse_reason_count(
                "REASON  PACKETS\nforwarded_to_backend  24\n",
                PORT_EXHAUSTED
            )
            .unwrap(),
            0
        );
        assert!(parse_reason_count("drop_port_exhausted many\n", PORT_EXHAUSTED).is_err());
    }

    #[test]
    fn tables_show_every_round_and_ratio() {
        let phases = [
            phase(
                Balancer::Xdp(XdpMode::Generic),
                [4300.0, 900.0, 100.0],
                [16000.0, 17000.0, 12000.0],
            ),
            phase(
                Balancer::Haproxy,
                [2000.0, 2000.0, 2000.0],
                [8000.0, 8000.0, 9000.0],
            ),
        ];
        let rates = rate_table(&phases);
        let lines: Vec<&str> = rates.lines().collect();
        assert_eq!(lines.len(), 1 + ROUNDS + KEEP_ALIVE_ROUNDS + 2, "{rates}");
        assert!(
            lines[0].contains("XDP generic req/s") && lines[0].contains("XDP generic / HAProxy")
        );
        assert!(
            lines[1].trim_start().starts_with("close 1") && lines[1].ends_with("2.15"),
            "{rates}"
        );
        assert!(
            lines[4].trim_start().starts_with("keep-alive 1") && lines[4].ends_with("2.00"),
            "{rates}"
        );
        // Medians 16000 and 8000.
        assert!(
            lines[7].trim_start().starts_with("keep-alive median")
                && lines[7].contains("16000")
                && lines[7].ends_with("2.00"),
            "{rates}"
        );
        assert!(
            lines[8].contains("0.02") && lines[8].contains("1.00"),
            "{rates}"
        );
        let counters = counter_table(&phases);
        assert!(counters.contains("XDP generic, phase total"), "{counters}");
        let row = |label: &str| -> Vec<String> {
            let line = counters
                .lines()
                .find(|l| l.trim_start().starts_with(label))
                .unwrap_or_else(|| panic!("no {label} in\n{counters}"));
            line[line.find(label).unwrap() + label.len()..]
                .split_whitespace()
                .map(String::from)
                .collect()
        };
        // Six rounds of 10 TIME_WAIT entries, 1 PAWS reject, 3 SYN
        // retransmissions and 2 port drops.
        assert_eq!(
            row("XDP generic, phase total"),
            ["60", "6", "18", "12", "0"]
        );
        // HAProxy has no agent to count port drops.
        assert_eq!(row("HAProxy, close 2"), ["10", "1", "3", "-", "0"]);
    }
}
