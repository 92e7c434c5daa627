//! Fast failover: with VRRPv3 adverts every 20 ms, new connections fail
//! for less than 100 ms when the master's node is lost, and a pair whose
//! CPUs are saturated (busy loops on both, a bounded new-flow load
//! through the VIP) makes no transition at all. The soak here is short;
//! `cargo xtask bench --only failover` runs the ten-minute one.

use std::time::Duration;

use integration_tests::e2e::*;
use xtask::{
    failover_bench::soak::{saturate, ADVERT_INT},
    lab::{ClientTool, Lab, Node, HTTP_PORT, VIP},
    probe::{self, Sample},
};

const OUTAGE_BOUND: Duration = Duration::from_millis(100);
const SOAK: Duration = Duration::from_secs(20);

/// Waits for a VRRP advert from lb1 to reach lb2, so that the failure
/// comes at the same phase of lb2's timer in every run.
fn after_an_advert(lab: &Lab) {
    let lb1 = Node::Lb1
        .private_address()
        .expect("lb1's address")
        .to_string();
    lab.exec_ok(
        Node::Lb2,
        &[
            &lab.xtask_bin().to_string_lossy(),
            "wait-advert",
            "--from",
            &lb1,
        ],
    )
    .expect("an advert from lb1");
}

#[test]
fn losing_the_masters_node_at_20ms_adverts_costs_new_connections_under_100ms() {
    let Some(lab) = lab_ha_v3("ffloss", ADVERT_INT) else {
        return;
    };
    let target = format!("{VIP}:{HTTP_PORT}");
    let prober = ClientTool::start(
        &lab,
        "probe",
        &[
            "--target",
            &target,
            "--every",
            "10ms",
            "--duration",
            "3s",
            "--timeout",
            "300ms",
        ],
    );
    std::thread::sleep(Duration::from_secs(1));
    after_an_advert(&lab);
    lab.kill_agent(Node::Lb1, libc::SIGKILL)
        .expect("kill -9 lb1's agent");
    for link in ["pub0", "priv0"] {
        lab.exec_ok(Node::Lb1, &["ip", "link", "set", link, "down"])
            .expect("lb1's link down");
    }
    let samples: Vec<Sample> = prober
        .lines()
        .expect("the probes")
        .iter()
        .filter_map(|line| Sample::parse(line))
        .collect();
    let outage = probe::outage(&samples);
    let failed = samples.iter().filter(|s| !s.ok).count();
    eprintln!(
        "outage {outage:?}, {failed} of {} probes failed",
        samples.len()
    );
    assert!(
        outage < OUTAGE_BOUND,
        "new connections failed for {outage:?} ({failed} of {} probes)",
        samples.len()
    );
    assert_eq!(vrrp_state(&lab, Node::Lb2), "MASTER");
}

#[test]
fn a_saturated_pair_at_20ms_adverts_makes_no_transition() {
    let Some(lab) = lab_ha_v3("ffsoak", ADVERT_INT) else {
        return;
    };
    assert!(
        wait_for(Duration::from_secs(5), || vrrp_state(&lab, Node::Lb2)
            == "BACKUP"),
        "lb2 settled as backup"
    );
    let soak = saturate(&lab, SOAK).expect("the soak");
    eprintln!("{soak:?}");
    assert_eq!(
        soak.transitions,
        (0, 0),
        "no VRRP transition under load: {soak:?}"
    );
    assert_eq!(vrrp_state(&lab, Node::Lb1), "MASTER");
}
