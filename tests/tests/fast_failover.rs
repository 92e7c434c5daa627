//! Fast failover: with VRRPv3 adverts every 20 ms, new connections fail
//! for less than 100 ms when the master's node is lost, and a pair whose
//! CPUs are saturated (busy loops on both, a bounded new-flow load
//! through the VIP) makes no transition at all. The soak here is short;
//! `cargo xtask bench --only failover` runs the ten-minute one.

use std::time::Duration;

use integration_tests::e2e::*;
use xtask::{
    failover_bench::soak::{saturate, ADVERT_INT},
    lab::{ClientTool, Node, HTTP_PORT, VIP},
    probe,
};

const OUTAGE_BOUND: Duration = Duration::from_millis(100);
const SOAK: Duration = Duration::from_secs(20);

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
    lab.wait_advert(Node::Lb2, Node::Lb1)
        .expect("an advert from lb1");
    lab.lose_node(Node::Lb1).expect("lb1's node lost");
    let samples = probe::samples(&prober.lines().expect("the probes"));
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
