//! A failback fails no new connection: lb1 carries 200 keep-alive
//! connections and 10,000 UDP flows (all synced to lb2) while a client
//! opens a new HTTP connection every 25 ms; lb1 fails (graceful stop,
//! kill -9 of its agent, node loss), lb2 takes over, lb1 comes back,
//! resyncs and takes the VIP back. The flows lb1 opened come back to it
//! from lb2 holding sources of its own port slice: none of them may be
//! handed out again or cost a new connection its source.

use std::time::{Duration, Instant};

use integration_tests::e2e::*;
use xtask::{
    hold::Held,
    lab::{ClientTool, Lab, Node, HTTP_PORT, UDP_PORT, VIP},
    probe::{self, Sample},
};

const KEEP_ALIVE: usize = 200;
const UDP_FLOWS: u64 = 10_000;
/// New connections every 25 ms (40/s), each failed after 900 ms: a SYN the
/// balancer drops is sent again only after 1 s, so no drop goes unseen.
const PROBE_EVERY: Duration = Duration::from_millis(25);
const PROBE_TIMEOUT: Duration = Duration::from_millis(900);
const PROBING: Duration = Duration::from_secs(50);
/// How long lb1 stays away.
const AWAY: Duration = Duration::from_secs(5);
/// Probes started this close to a move of the VIP may meet it in flight.
const HANDOVER: Duration = Duration::from_millis(1500);

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Failure {
    Graceful,
    Kill9,
    NodeLost,
}

fn sync_count(lab: &Lab, node: Node, field: &str) -> u64 {
    status_field(lab, node, "sync")[field].as_u64().unwrap_or(0)
}

fn reason(lab: &Lab, node: Node, name: &str) -> u64 {
    status_field(lab, node, "reasons")
        .as_array()
        .and_then(|all| all.iter().find(|r| r["reason"] == name))
        .and_then(|r| r["packets"].as_u64())
        .unwrap_or(0)
}

/// Waits for `condition`; the time it first held.
fn when(limit: Duration, mut condition: impl FnMut() -> bool) -> Option<Instant> {
    let deadline = Instant::now() + limit;
    while Instant::now() < deadline {
        if condition() {
            return Some(Instant::now());
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    None
}

fn fail_lb1(lab: &Lab, failure: Failure) {
    match failure {
        Failure::Graceful => lab.stop_agent(Node::Lb1).expect("SIGTERM lb1's agent"),
        Failure::Kill9 => lab
            .kill_agent(Node::Lb1, libc::SIGKILL)
            .expect("kill -9 lb1's agent"),
        Failure::NodeLost => lab.lose_node(Node::Lb1).expect("lb1's node lost"),
    }
}

fn bring_back_lb1(lab: &Lab, failure: Failure) {
    if failure == Failure::NodeLost {
        lab.set_links(Node::Lb1, true).expect("lb1's links up");
    }
    lab.start_agent(Node::Lb1).expect("lb1's agent back");
}

/// Probe samples as offsets from `start`, outside both handovers.
fn failed_outside(samples: &[Sample], start: Instant, moves: &[(Instant, Instant)]) -> Vec<f64> {
    samples
        .iter()
        .filter(|sample| !sample.ok)
        .filter(|sample| {
            let at = start + sample.started;
            !moves
                .iter()
                .any(|(from, to)| at + HANDOVER >= *from && at <= *to + HANDOVER)
        })
        .map(|sample| sample.started.as_secs_f64())
        .collect()
}

fn failback(prefix: &str, failure: Failure) {
    let Some(lab) = lab_ha(prefix) else { return };
    assert!(
        wait_for(Duration::from_secs(10), || status_field(
            &lab,
            Node::Lb2,
            "sync"
        )["state"]
            == "in-sync"),
        "lb2 in sync before the test"
    );
    let installed_before = sync_count(&lab, Node::Lb2, "installed");
    let http = format!("{VIP}:{HTTP_PORT}");
    let udp = format!("{VIP}:{UDP_PORT}");
    let hold_for = format!("{}s", PROBING.as_secs() + 15);
    let holder = ClientTool::start(
        &lab,
        "hold",
        &[
            "--target",
            &http,
            "--connections",
            &KEEP_ALIVE.to_string(),
            "--duration",
            &hold_for,
        ],
    );
    let flood = ClientTool::start(
        &lab,
        "udp-flood",
        &["--to", &udp, "--rate", "5000", "--duration", "2s"],
    );
    flood.lines().expect("the UDP flows");
    assert!(
        wait_for(Duration::from_secs(15), || sync_count(
            &lab,
            Node::Lb2,
            "installed"
        ) >= installed_before
            + UDP_FLOWS
            + KEEP_ALIVE as u64),
        "lb2 holds lb1's flows: {}",
        status_field(&lab, Node::Lb2, "sync")
    );

    let started = Instant::now();
    let prober = ClientTool::probe(&lab, &http, PROBE_EVERY, PROBING, PROBE_TIMEOUT);
    std::thread::sleep(Duration::from_secs(3));
    let failed_at = Instant::now();
    fail_lb1(&lab, failure);
    // (After kill -9 lb1's addresses stay where they were: lb2 being
    // master is the takeover.)
    let taken_over = when(Duration::from_secs(10), || {
        vrrp_state(&lab, Node::Lb2) == "MASTER"
    })
    .expect("lb2 takes over");
    std::thread::sleep(AWAY);
    bring_back_lb1(&lab, failure);
    let back = when(Duration::from_secs(30), || {
        lab.vip_holder() == Some(Node::Lb1)
    })
    .expect("lb1 takes the VIP back once in sync");
    assert!(
        started + PROBING > back + Duration::from_secs(20),
        "the probes go on for 20 s after the failback"
    );

    let samples = probe::samples(&prober.lines().expect("the probes"));
    let failed = failed_outside(&samples, started, &[(failed_at, taken_over), (back, back)]);
    assert!(
        failed.is_empty(),
        "{failure:?}: {} of {} new connections failed outside the handovers \
         (lb1 failed at {:.1} s, lb2 took over at {:.1} s, lb1 back at {:.1} s): at {failed:?} s",
        failed.len(),
        samples.len(),
        (failed_at - started).as_secs_f64(),
        (taken_over - started).as_secs_f64(),
        (back - started).as_secs_f64(),
    );
    for node in [Node::Lb1, Node::Lb2] {
        assert_eq!(
            reason(&lab, node, "drop_port_exhausted"),
            0,
            "{failure:?}: no new flow on {node:?} went without a NAT source"
        );
        assert_eq!(
            status_field(&lab, node, "nat_source_push_failures"),
            0,
            "{failure:?}: no NAT source of {node:?} was lost to its pool"
        );
    }
    let held: Vec<Held> = holder
        .lines()
        .expect("the keep-alive connections")
        .iter()
        .filter_map(|line| Held::parse(line))
        .collect();
    assert_eq!(
        held.len(),
        KEEP_ALIVE,
        "every keep-alive connection reported"
    );
    let broken: Vec<&Held> = held.iter().filter(|h| !h.survived()).collect();
    assert!(
        broken.is_empty(),
        "{failure:?}: {} keep-alive connections failed, the first: {:?}",
        broken.len(),
        broken.first()
    );
}

#[test]
fn a_failback_after_a_graceful_restart_fails_no_new_connection() {
    failback("fbstop", Failure::Graceful);
}

#[test]
fn a_failback_after_kill_9_and_restart_fails_no_new_connection() {
    failback("fbkill", Failure::Kill9);
}

#[test]
fn a_failback_after_the_node_returns_fails_no_new_connection() {
    failback("fbnode", Failure::NodeLost);
}
