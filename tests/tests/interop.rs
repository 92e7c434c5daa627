//! The mixed pair: the agent on one LB node, keepalived 2.2 + HAProxy (the
//! classic config) on the other. The election converges and failover works
//! both ways, so an operator can replace one node of a pair at a time.

use std::time::Duration;

use integration_tests::e2e::*;
use xtask::lab::{Lab, Node, VrrpVersion};

/// lb2's master-down interval at 1 s adverts (3 s + skew) plus slack for
/// polling on a loaded machine; a bound, not a speed target.
const TAKEOVER_LIMIT: Duration = Duration::from_secs(6);

/// The body the VIP serves, from the client, or the error.
fn served(lab: &Lab) -> String {
    lab.http_get(Node::Client, VIP_URL)
        .unwrap_or_else(|e| format!("error: {e:#}"))
}

fn assert_served(lab: &Lab, through: &str) {
    for _ in 0..4 {
        let body = served(lab);
        assert!(
            body.starts_with("web1") || body.starts_with("web2"),
            "served through {through}: {body}"
        );
    }
}

fn rejected_adverts(lab: &Lab, node: Node) -> serde_json::Value {
    vrrp_field(lab, node, "adverts_rejected")
}

#[test]
fn agent_master_with_keepalived_backup_fails_over_both_ways() {
    let Some(lab) = lab_mixed(
        "kamix1",
        &[Node::Lb2],
        VrrpVersion::V2,
        Duration::from_secs(1),
    ) else {
        return;
    };
    assert_eq!(lab.vip_holder(), Some(Node::Lb1));
    assert_eq!(vrrp_state(&lab, Node::Lb1), "MASTER");
    assert!(
        wait_for(Duration::from_secs(3), || lab.classic_state(Node::Lb2)
            == "BACKUP"),
        "keepalived on lb2 accepts the agent's adverts and stays BACKUP: {}",
        lab.classic_state(Node::Lb2)
    );
    assert_served(&lab, "the agent on lb1");

    // Graceful stop: the agent resigns with priority 0, keepalived takes
    // over after its skew time.
    lab.stop_agent(Node::Lb1).expect("SIGTERM lb1's agent");
    assert!(
        wait_for(Duration::from_secs(3), || lab.classic_state(Node::Lb2)
            == "MASTER"),
        "keepalived takes over at once on priority 0: {}",
        lab.classic_state(Node::Lb2)
    );
    assert!(wait_for(Duration::from_secs(3), || lab.vip_holder()
        == Some(Node::Lb2)));
    assert_served(&lab, "HAProxy on lb2");

    // The agent comes back and preempts keepalived (200 > 100).
    lab.start_agent(Node::Lb1).expect("lb1's agent again");
    assert!(
        wait_for(TAKEOVER_LIMIT, || vrrp_state(&lab, Node::Lb1) == "MASTER"
            && lab.classic_state(Node::Lb2) == "BACKUP"),
        "lb1 preempts: agent {}, keepalived {}",
        vrrp_state(&lab, Node::Lb1),
        lab.classic_state(Node::Lb2)
    );
    assert!(wait_for(Duration::from_secs(3), || lab.vip_holder()
        == Some(Node::Lb1)));
    let received = vrrp_field(&lab, Node::Lb1, "adverts_received")
        .as_u64()
        .unwrap_or(0);
    assert!(received > 0, "the agent heard keepalived's adverts");
    assert_eq!(
        rejected_adverts(&lab, Node::Lb1),
        serde_json::json!({}),
        "keepalived's adverts pass every check"
    );
    assert_served(&lab, "the agent on lb1 again");

    // A crash of the agent: keepalived's master-down timer takes over.
    lab.kill_agent(Node::Lb1, libc::SIGKILL)
        .expect("kill -9 lb1's agent");
    assert!(
        wait_for(TAKEOVER_LIMIT, || lab.classic_state(Node::Lb2) == "MASTER"),
        "keepalived takes over after the master-down interval"
    );
    assert_served(&lab, "HAProxy on lb2 after the crash");
}

#[test]
fn keepalived_master_with_agent_backup_fails_over_both_ways() {
    let Some(lab) = lab_mixed(
        "kamix2",
        &[Node::Lb1],
        VrrpVersion::V2,
        Duration::from_secs(1),
    ) else {
        return;
    };
    assert_eq!(lab.vip_holder(), Some(Node::Lb1));
    assert_eq!(lab.classic_state(Node::Lb1), "MASTER");
    assert!(wait_for(Duration::from_secs(3), || {
        vrrp_field(&lab, Node::Lb2, "adverts_received")
            .as_u64()
            .unwrap_or(0)
            > 0
    }));
    assert_eq!(vrrp_state(&lab, Node::Lb2), "BACKUP");
    assert_eq!(
        vrrp_field(&lab, Node::Lb2, "master"),
        serde_json::json!("10.200.0.11")
    );
    assert_eq!(rejected_adverts(&lab, Node::Lb2), serde_json::json!({}));
    assert_served(&lab, "HAProxy on lb1");

    // keepalived stopping sends priority 0: the agent takes over at once.
    lab.stop_keepalived(Node::Lb1, libc::SIGTERM)
        .expect("stop keepalived on lb1");
    assert!(
        wait_for(Duration::from_secs(3), || vrrp_state(&lab, Node::Lb2)
            == "MASTER"),
        "the agent takes over on keepalived's priority 0"
    );
    assert!(wait_for(Duration::from_secs(3), || lab.vip_holder()
        == Some(Node::Lb2)));
    assert_served(&lab, "the agent on lb2");

    // keepalived back with priority 200 preempts the agent.
    lab.restart_keepalived(Node::Lb1).expect("keepalived again");
    assert!(
        wait_for(TAKEOVER_LIMIT, || lab.classic_state(Node::Lb1) == "MASTER"
            && vrrp_state(&lab, Node::Lb2) == "BACKUP"),
        "keepalived preempts: keepalived {}, agent {}",
        lab.classic_state(Node::Lb1),
        vrrp_state(&lab, Node::Lb2)
    );
    assert!(wait_for(Duration::from_secs(3), || lab.vip_holder()
        == Some(Node::Lb1)));
    assert_served(&lab, "HAProxy on lb1 again");
}

#[test]
fn vrrp_v3_mixed_pair_fails_over_in_under_a_second() {
    let Some(lab) = lab_mixed(
        "kamix3",
        &[Node::Lb1],
        VrrpVersion::V3,
        Duration::from_millis(100),
    ) else {
        return;
    };
    assert_eq!(lab.classic_state(Node::Lb1), "MASTER");
    assert!(wait_for(Duration::from_secs(2), || vrrp_state(
        &lab,
        Node::Lb2
    ) == "BACKUP"
        && vrrp_field(&lab, Node::Lb2, "adverts_received")
            .as_u64()
            .unwrap_or(0)
            > 5));
    assert_eq!(
        rejected_adverts(&lab, Node::Lb2),
        serde_json::json!({}),
        "keepalived's v3 adverts (pseudo-header checksum) pass"
    );
    // A crash: no priority 0, the agent's 3 × 100 ms + skew timer decides.
    lab.kill_haproxy(Node::Lb1).expect("kill -9 HAProxy");
    lab.stop_keepalived(Node::Lb1, libc::SIGKILL)
        .expect("kill -9 keepalived");
    let crashed = std::time::Instant::now();
    assert!(wait_for(Duration::from_secs(3), || vrrp_state(
        &lab,
        Node::Lb2
    ) == "MASTER"));
    let took = crashed.elapsed();
    assert!(
        took < Duration::from_secs(1),
        "master-down interval is 0.36 s; took {took:?}"
    );
    assert_served(&lab, "the agent on lb2");
}
