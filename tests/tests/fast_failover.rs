//! Fast failover: with VRRPv3 adverts every 20 ms, new connections fail
//! for less than 100 ms when the master's node is lost. (That such short
//! intervals make no spurious transition under load is `vrrp_soak.rs`,
//! a test binary of its own so that its load never overlaps this
//! measurement.)

use std::time::Duration;

use integration_tests::e2e::*;
use xtask::{
    failover_bench::soak::ADVERT_INT,
    lab::{ClientTool, Node, HTTP_PORT, VIP},
    probe,
};

const OUTAGE_BOUND: Duration = Duration::from_millis(100);

#[test]
fn losing_the_masters_node_at_20ms_adverts_costs_new_connections_under_100ms() {
    let Some(lab) = lab_ha_v3("ffloss", ADVERT_INT) else {
        return;
    };
    let target = format!("{VIP}:{HTTP_PORT}");
    let prober = ClientTool::probe(
        &lab,
        &target,
        Duration::from_millis(10),
        Duration::from_secs(3),
        Duration::from_millis(300),
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
