//! The outage a client sees when the master fails, for the agent pair and
//! for the classic keepalived + HAProxy pair in the same lab in the same
//! run, with VRRPv2 at 1 s and VRRPv3 at 100 ms and 20 ms.
//!
//! A probe opens a new HTTP connection to the VIP every 10 ms (`probe`).
//! Two ways the master fails: its processes are killed with SIGKILL (the
//! agent; keepalived and HAProxy), or the whole node is lost (the same, and
//! its links go down, as when a machine dies).

use std::{net::SocketAddrV4, time::Duration};

use anyhow::Result;

use super::{fail_master, pair_options, ClientTool, Failure, Pair};
use crate::{
    lab::{Lab, LabOptions, Node, VrrpVersion, HTTP_PORT, VIP},
    probe,
};

const PREFIX: &str = "bfail";
const PROBE_EVERY: Duration = Duration::from_millis(10);
const PROBE_TIMEOUT: Duration = Duration::from_millis(300);
/// Probing before the failure, so the table shows a healthy start.
const LEAD: Duration = Duration::from_secs(1);

struct Vrrp {
    version: VrrpVersion,
    advert_int: Duration,
    /// The table's VRRP column.
    label: &'static str,
    /// lb2's master-down interval: 3 × interval + (256 − 100) / 256 × interval.
    master_down: Duration,
}

const SETTINGS: [Vrrp; 3] = [
    Vrrp {
        version: VrrpVersion::V2,
        advert_int: Duration::from_secs(1),
        label: "v2 1 s",
        master_down: Duration::from_millis(3609),
    },
    Vrrp {
        version: VrrpVersion::V3,
        advert_int: Duration::from_millis(100),
        label: "v3 100 ms",
        master_down: Duration::from_millis(361),
    },
    Vrrp {
        version: VrrpVersion::V3,
        advert_int: super::soak::ADVERT_INT,
        label: "v3 20 ms",
        master_down: Duration::from_millis(72),
    },
];

struct Row {
    pair: Pair,
    vrrp: &'static str,
    failure: Failure,
    outage: Duration,
    failed: usize,
    total: usize,
}

fn measure(agent_bin: &std::path::Path, pair: Pair, vrrp: &Vrrp, failure: Failure) -> Result<Row> {
    let options = LabOptions {
        vrrp: vrrp.version,
        advert_int: vrrp.advert_int,
        ..pair_options(agent_bin, pair, PREFIX)
    };
    let lab = Lab::up_guarded(&options)?;
    // lb2 has heard the master and settled as backup.
    std::thread::sleep(Duration::from_secs(2));
    let duration = LEAD + vrrp.master_down * 2 + Duration::from_secs(2);
    let target = SocketAddrV4::new(VIP, HTTP_PORT).to_string();
    let prober = ClientTool::probe(&lab, &target, PROBE_EVERY, duration, PROBE_TIMEOUT);
    std::thread::sleep(LEAD);
    // Fail right after an advert reached lb2: every run then starts at the
    // same phase of lb2's master-down timer, so runs and pairs compare.
    lab.wait_advert(Node::Lb2, Node::Lb1)?;
    fail_master(&lab, pair, failure)?;
    let samples = probe::samples(&prober.lines()?);
    drop(lab);
    Ok(Row {
        pair,
        vrrp: vrrp.label,
        failure,
        outage: probe::outage(&samples),
        failed: samples.iter().filter(|s| !s.ok).count(),
        total: samples.len(),
    })
}

/// Runs every combination and prints the table.
pub(super) fn run(agent_bin: &std::path::Path) -> Result<()> {
    let mut rows = Vec::new();
    for vrrp in &SETTINGS {
        for failure in [Failure::Kill, Failure::Node] {
            for pair in [Pair::Agent, Pair::Classic] {
                eprintln!(
                    "xtask: failover: {} {}, {}...",
                    pair.label(),
                    vrrp.label,
                    failure.label()
                );
                rows.push(measure(agent_bin, pair, vrrp, failure)?);
            }
        }
    }
    println!(
        "  {:<22} {:<12} {:<18} {:>10} {:>14}",
        "pair", "VRRP", "master failure", "outage", "failed probes"
    );
    for row in &rows {
        println!(
            "  {:<22} {:<12} {:<18} {:>7} ms {:>8}/{}",
            row.pair.label(),
            row.vrrp,
            row.failure.label(),
            row.outage.as_millis(),
            row.failed,
            row.total
        );
    }
    for vrrp in &SETTINGS {
        println!(
            "  ({}: lb2's master-down interval is {} ms)",
            vrrp.label,
            vrrp.master_down.as_millis()
        );
    }
    println!(
        "  (a probe = a new TCP connection + HTTP GET every {} ms, failed after {} ms)",
        PROBE_EVERY.as_millis(),
        PROBE_TIMEOUT.as_millis()
    );
    Ok(())
}
