//! Native XDP in the lab (`lab up --xdp native`): the agent attaches in
//! driver mode to lb1's veths, the lab's XDP_PASS program sits on their
//! switch-side ends, and TCP and UDP go through the VIP (XDP_TX and
//! XDP_REDIRECT between the veths, which veth only delivers in native mode
//! when the receiving end runs an XDP program).

use std::{net::SocketAddrV4, time::Duration};

use integration_tests::e2e::*;
use xtask::lab::Node;

/// `ip -d link show dev <dev>` in `node`'s namespace.
fn link_details(lab: &xtask::lab::Lab, node: Node, dev: &str) -> String {
    lab.exec_ok(node, &["ip", "-d", "link", "show", "dev", dev])
        .unwrap_or_else(|e| panic!("ip -d link show {dev} in {node}: {e:#}"))
}

#[test]
fn native_xdp_forwards_through_the_vip() {
    let Some(lab) = lab_native("h1native") else {
        return;
    };
    let config = std::fs::read_to_string(lab.agent_config_path(Node::Lb1)).expect("lb1 config");
    assert!(config.contains("xdp_mode = \"native\"\n"), "{config}");
    // iproute2 shows a driver-mode program as `xdp` / `prog/xdp` (what
    // `xdpdrv` attaches) and a generic one as `xdpgeneric`.
    for dev in ["pub0", "priv0"] {
        let details = link_details(&lab, Node::Lb1, dev);
        assert!(
            details.contains(" xdp qdisc")
                && details.contains("prog/xdp id ")
                && details.contains(" name lb "),
            "lb1 {dev}: the agent's program in driver mode:\n{details}"
        );
        assert!(!details.contains("xdpgeneric"), "lb1 {dev}:\n{details}");
    }
    for dev in ["lb1-pub", "lb1-priv", "lb2-pub", "lb2-priv"] {
        let details = link_details(&lab, Node::Sw, dev);
        assert!(
            details.contains("prog/xdp id ") && details.contains(" name pass "),
            "sw {dev}: the XDP_PASS program in driver mode:\n{details}"
        );
    }

    let counts = http_round(&lab, 40);
    let web1 = counts.get("web1").copied().unwrap_or(0);
    let web2 = counts.get("web2").copied().unwrap_or(0);
    assert_eq!(web1 + web2, 40, "every request answered: {counts:?}");
    assert!(web1 > 0 && web2 > 0, "both backends answer: {counts:?}");

    let vip = SocketAddrV4::new(xtask::lab::VIP, xtask::lab::UDP_PORT);
    let replies = lab
        .udp_query(Node::Client, vip, 4, Duration::from_secs(1))
        .expect("udp queries");
    assert!(
        replies
            .iter()
            .all(|r| matches!(r.as_deref(), Some("web1" | "web2"))),
        "every UDP query answered: {replies:?}"
    );
    let stats = agent(&lab, &["stats"]);
    assert!(stats.contains("forwarded_to_backend"), "{stats}");
    assert!(stats.contains("forwarded_to_client"), "{stats}");
}
