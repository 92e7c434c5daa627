//! Floating IP providers end to end: failover through the `digitalocean`
//! provider and the stand-in API, and the `local` provider reconciling
//! while master (an address deleted by hand, a healed partition).

use std::time::Duration;

use integration_tests::e2e::*;
use xtask::lab::{Lab, Node};

const DO_MOCK: &str = env!("CARGO_BIN_EXE_do-api-mock");

#[test]
fn digitalocean_provider_moves_the_reserved_ip_on_failover_and_back() {
    let Some(lab) = lab_digitalocean("pvdo", DO_MOCK) else {
        return;
    };
    assert_eq!(
        lab.vip_holder(),
        Some(Node::Lb1),
        "assigned to lb1's droplet"
    );
    assert_eq!(vrrp_field(&lab, Node::Lb1, "provider"), "digitalocean");
    assert_eq!(
        vrrp_field(&lab, Node::Lb1, "holds"),
        serde_json::json!(["10.100.0.100"])
    );
    let requests = ClientLoop::start(&lab, Duration::from_millis(100), 300);
    std::thread::sleep(Duration::from_millis(500));

    lab.kill_agent(Node::Lb1, libc::SIGKILL)
        .expect("kill -9 lb1's agent");
    assert!(
        wait_for(Duration::from_secs(10), || lab.vip_holder()
            == Some(Node::Lb2)),
        "lb2 became master and assigned the reserved IP to itself"
    );
    assert_eq!(vrrp_state(&lab, Node::Lb2), "MASTER");
    std::thread::sleep(Duration::from_secs(1));

    lab.start_agent(Node::Lb1).expect("lb1's agent again");
    assert!(
        wait_for(Duration::from_secs(10), || lab.vip_holder()
            == Some(Node::Lb1)),
        "lb1 preempts and takes the reserved IP back"
    );
    std::thread::sleep(Duration::from_secs(1));
    let seen = requests.finish();
    let (ok, failed) = (seen.ok(), seen.failed);
    assert!(ok > 20, "the loop ran");
    assert!(failed.is_empty(), "requests lost: {failed:?}");
    let lb1_log = std::fs::read_to_string(lab.agent_log_path(Node::Lb1)).unwrap_or_default();
    assert_eq!(
        vrrp_field(&lab, Node::Lb1, "provider_errors"),
        0,
        "{:?}\n{lb1_log}",
        vrrp_field(&lab, Node::Lb1, "provider_last_error")
    );
    let calls = vrrp_field(&lab, Node::Lb1, "provider_calls")
        .as_u64()
        .unwrap_or(0);
    assert!(calls >= 2, "metadata + assign at least: {calls}");
    let log = std::fs::read_to_string(lab.run_dir().join("cloud.log")).expect("cloud log");
    assert!(
        log.contains("-> droplet 1002") && log.contains("-> droplet 1001"),
        "{log}"
    );
    let agent_log = std::fs::read_to_string(lab.agent_log_path(Node::Lb1)).expect("log");
    assert!(
        !agent_log.contains("dop_v1_lab"),
        "the token never shows in logs"
    );
}

#[test]
fn a_floating_address_deleted_by_hand_comes_back() {
    let Some(lab) = lab_ha("pvrec") else { return };
    assert_eq!(lab.vip_holder(), Some(Node::Lb1));
    lab.exec_ok(
        Node::Lb1,
        &["ip", "addr", "del", "10.100.0.100/32", "dev", "pub0"],
    )
    .expect("delete the VIP");
    assert_eq!(lab.vip_holder(), None);
    assert!(
        wait_for(Duration::from_secs(6), || lab.vip_holder()
            == Some(Node::Lb1)),
        "the master's reconcile puts it back"
    );
    let body = lab.http_get(Node::Client, VIP_URL).expect("served");
    assert!(body.starts_with("web"), "{body}");
    let log = std::fs::read_to_string(lab.agent_log_path(Node::Lb1)).expect("log");
    assert!(log.contains("went missing"), "{log}");
}

fn client_vip_mac(lab: &Lab) -> String {
    lab.exec_ok(Node::Client, &["ip", "neigh", "show", "10.100.0.100"])
        .unwrap_or_default()
}

fn mac_of(lab: &Lab, node: Node) -> String {
    lab.exec_ok(node, &["cat", "/sys/class/net/pub0/address"])
        .map(|m| m.trim().to_string())
        .unwrap_or_default()
}

#[test]
fn a_healed_partition_ends_with_one_holder_announced_again() {
    let Some(lab) = lab_ha("pvsplit") else { return };
    assert_eq!(lab.vip_holder(), Some(Node::Lb1));
    // The client has talked to the VIP: gratuitous ARPs update its entry.
    lab.http_get(Node::Client, VIP_URL).expect("served before");
    // lb2 stops hearing lb1 (everything from lb1 on the private net is
    // dropped on lb2's side): both become master.
    // The local table's rule comes first (priority 0); move it behind the
    // blackhole rule so the rule sees packets addressed to lb2 itself.
    for rule in [
        &["ip", "rule", "add", "priority", "1000", "lookup", "local"][..],
        &["ip", "rule", "del", "priority", "0", "lookup", "local"],
        &[
            "ip",
            "rule",
            "add",
            "from",
            "10.200.0.11",
            "iif",
            "priv0",
            "blackhole",
            "priority",
            "100",
        ],
    ] {
        lab.exec_ok(Node::Lb2, rule).expect("partition");
    }
    assert!(
        wait_for(Duration::from_secs(8), || vrrp_state(&lab, Node::Lb2)
            == "MASTER"),
        "split brain: lb2 takes over too"
    );
    assert_eq!(vrrp_state(&lab, Node::Lb1), "MASTER");
    assert_eq!(
        lab.vip_holder(),
        None,
        "both hold the VIP during the partition"
    );

    let heal = ["ip", "rule", "del", "priority", "100"];
    lab.exec_ok(Node::Lb2, &heal).expect("heal");
    assert!(
        wait_for(Duration::from_secs(6), || vrrp_state(&lab, Node::Lb2)
            == "BACKUP"
            && lab.vip_holder() == Some(Node::Lb1)),
        "one master, one holder: lb2 {} holder {:?}",
        vrrp_state(&lab, Node::Lb2),
        lab.vip_holder()
    );
    // lb1 heard lb2's lower-priority adverts while master and announced
    // the VIP again: the client reaches it at lb1's MAC.
    let lb1 = mac_of(&lab, Node::Lb1);
    assert!(
        wait_for(Duration::from_secs(5), || client_vip_mac(&lab)
            .contains(&lb1)),
        "client's entry {} points at lb1 {lb1}",
        client_vip_mac(&lab)
    );
    let body = lab.http_get(Node::Client, VIP_URL).expect("served");
    assert!(body.starts_with("web"), "{body}");
    // Two advert intervals after lb2's last claim.
    if let Err(log) = wait_for_agent_log(
        &lab,
        Node::Lb1,
        "the peer stopped claiming mastership",
        Duration::from_secs(6),
    ) {
        panic!("lb1 announced the VIP again once the split brain ended:\n{log}");
    }
}

#[test]
fn a_downed_interface_faults_and_a_flapped_link_is_announced_again() {
    let Some(lab) = lab_ha("pvlink") else { return };
    lab.http_get(Node::Client, VIP_URL).expect("served before");
    // A tracked interface (default: both) going down puts lb1 in FAULT.
    lab.exec_ok(Node::Lb1, &["ip", "link", "set", "pub0", "down"])
        .expect("pub0 down");
    assert!(
        wait_for(Duration::from_secs(5), || vrrp_state(&lab, Node::Lb1)
            == "FAULT"),
        "lb1 faults with pub0 down"
    );
    let reason = vrrp_field(&lab, Node::Lb1, "last_transition_reason");
    assert!(
        reason.as_str().unwrap_or("").contains("pub0 is down"),
        "{reason}"
    );
    assert!(wait_for(Duration::from_secs(6), || lab.vip_holder()
        == Some(Node::Lb2)));
    lab.exec_ok(Node::Lb1, &["ip", "link", "set", "pub0", "up"])
        .expect("pub0 up");
    assert!(
        wait_for(Duration::from_secs(10), || lab.vip_holder()
            == Some(Node::Lb1)),
        "lb1 recovers and preempts"
    );

    // Untracked, the public link flaps under a master that keeps the VIP:
    // it announces it again when the link is back.
    lab.stop_agent(Node::Lb1).expect("stop lb1");
    let mut model = lab.default_agent_model(Node::Lb1).expect("model");
    model.vrrp.as_mut().expect("[vrrp]").track_interfaces = Some(vec!["priv0".into()]);
    lab.start_agent_with_model(Node::Lb1, &model)
        .expect("lb1 again");
    assert!(wait_for(Duration::from_secs(10), || lab.vip_holder()
        == Some(Node::Lb1)));
    lab.exec_ok(Node::Lb1, &["ip", "link", "set", "pub0", "down"])
        .expect("pub0 down");
    std::thread::sleep(Duration::from_secs(3));
    assert_eq!(
        vrrp_state(&lab, Node::Lb1),
        "MASTER",
        "pub0 is not tracked now"
    );
    lab.exec_ok(Node::Lb1, &["ip", "link", "set", "pub0", "up"])
        .expect("pub0 up");
    let log = lab.agent_log_path(Node::Lb1);
    assert!(
        wait_for(Duration::from_secs(6), || std::fs::read_to_string(&log)
            .unwrap_or_default()
            .contains("link up again: announcing")),
        "a gratuitous ARP round after the flap"
    );
    let body = lab
        .http_get(Node::Client, VIP_URL)
        .expect("served after the flap");
    assert!(body.starts_with("web"), "{body}");
}
