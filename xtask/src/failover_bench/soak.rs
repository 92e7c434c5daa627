//! A pair under full load must not fail over by itself: with VRRPv3 adverts
//! every 20 ms the backup declares the master dead after about 70 ms
//! without an advert, so a master whose VRRP thread waits for a CPU loses
//! mastership for nothing. The soak saturates both LB nodes (two bounded
//! busy loops in each namespace, on a machine of two CPUs, and a bounded
//! new-flow load through the VIP) and counts VRRP transitions and the
//! timers each node's VRRP thread met late.

use std::time::{Duration, Instant};

use anyhow::{Context as _, Result};

use crate::lab::{ClientTool, Lab, LabOptions, Node, VrrpVersion, UDP_PORT, VIP};

const PREFIX: &str = "bsoak";
/// The advert interval the soak holds the pair to.
pub const ADVERT_INT: Duration = Duration::from_millis(20);
/// The benchmark's soak.
const BENCH_SOAK: Duration = Duration::from_secs(600);
/// New UDP flows per second through the VIP during the soak.
const NEW_FLOWS_PER_SECOND: &str = "10000";

/// What a soak saw.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Soak {
    pub took: Duration,
    /// VRRP transitions of lb1 and lb2 during the soak.
    pub transitions: (u64, u64),
    /// Timers each node's VRRP thread met more than half an interval late.
    pub missed_deadlines: (u64, u64),
}

fn vrrp_count(lab: &Lab, node: Node, field: &str) -> u64 {
    lab.status_json(node)["vrrp"][field].as_u64().unwrap_or(0)
}

fn counts(lab: &Lab, field: &str) -> (u64, u64) {
    (
        vrrp_count(lab, Node::Lb1, field),
        vrrp_count(lab, Node::Lb2, field),
    )
}

/// New UDP flows through the VIP for `duration`, in floods of at most a
/// minute (`xtask udp-flood`'s bound).
fn flood(lab: &Lab, duration: Duration) -> Result<()> {
    let udp = format!("{VIP}:{UDP_PORT}");
    let started = Instant::now();
    while let Some(left) = duration.checked_sub(started.elapsed()) {
        let chunk = left.min(Duration::from_secs(60));
        if chunk < Duration::from_secs(1) {
            break;
        }
        let flood_for = format!("{}ms", chunk.as_millis());
        ClientTool::start(
            lab,
            "udp-flood",
            &[
                "--to",
                &udp,
                "--rate",
                NEW_FLOWS_PER_SECOND,
                "--duration",
                &flood_for,
            ],
        )
        .lines()?;
    }
    Ok(())
}

/// Saturates the pair of `lab` for `duration` and reports what changed.
pub fn saturate(lab: &Lab, duration: Duration) -> Result<Soak> {
    let transitions = counts(lab, "transitions");
    let missed = counts(lab, "missed_deadlines");
    let started = Instant::now();
    let seconds = duration.as_secs().max(1).to_string();
    let mut busy = Vec::new();
    for node in [Node::Lb1, Node::Lb1, Node::Lb2, Node::Lb2] {
        busy.push(
            lab.nsenter(node)
                .args(["timeout", &seconds, "sh", "-c", "while :; do :; done"])
                .spawn()
                .context("starting a busy loop")?,
        );
    }
    let flooded = flood(lab, duration);
    for mut child in busy {
        let _ = child.wait();
    }
    flooded?;
    let since = |before: (u64, u64), after: (u64, u64)| {
        (
            after.0.saturating_sub(before.0),
            after.1.saturating_sub(before.1),
        )
    };
    Ok(Soak {
        took: started.elapsed(),
        transitions: since(transitions, counts(lab, "transitions")),
        missed_deadlines: since(missed, counts(lab, "missed_deadlines")),
    })
}

/// The benchmark's ten-minute soak of the agent pair at 20 ms adverts.
pub fn run(agent_bin: &std::path::Path) -> Result<()> {
    let options = LabOptions {
        vrrp: VrrpVersion::V3,
        advert_int: ADVERT_INT,
        ..super::pair_options(agent_bin, super::Pair::Agent, PREFIX)
    };
    let lab = Lab::up_guarded(&options)?;
    // lb2 has heard the master and settled as backup.
    std::thread::sleep(Duration::from_secs(2));
    eprintln!(
        "xtask: failover: soak of {} s at {} ms adverts...",
        BENCH_SOAK.as_secs(),
        ADVERT_INT.as_millis()
    );
    let soak = saturate(&lab, BENCH_SOAK)?;
    println!(
        "  {:<22} {:<12} {:>9} {:>18} {:>22}",
        "pair", "VRRP", "soak", "transitions", "missed deadlines"
    );
    println!(
        "  {:<22} {:<12} {:>7} s {:>9} / {:<6} {:>12} / {:<6}",
        super::Pair::Agent.label(),
        "v3 20 ms",
        soak.took.as_secs(),
        soak.transitions.0,
        soak.transitions.1,
        soak.missed_deadlines.0,
        soak.missed_deadlines.1
    );
    println!(
        "  (both LB nodes saturated: two busy loops in each namespace, {NEW_FLOWS_PER_SECOND} new UDP flows/s through the VIP; lb1 / lb2)"
    );
    Ok(())
}
