//! A pair whose CPUs are saturated (busy loops on both LB nodes, a bounded
//! new-flow load through the VIP) makes no VRRP transition at 20 ms
//! adverts. The soak here is short; `cargo xtask bench --only soak` runs
//! the ten-minute one.

use std::time::Duration;

use integration_tests::e2e::*;
use xtask::{
    failover_bench::soak::{saturate, ADVERT_INT},
    lab::Node,
};

const SOAK: Duration = Duration::from_secs(20);

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
