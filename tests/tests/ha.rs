//! High availability end to end: VRRP between the agents on lb1 (priority
//! 200) and lb2 (100), keepalived's lab settings. Failover on kill -9 and
//! on graceful stop, preemption back, one VIP holder, forged adverts.

use std::{
    net::Ipv4Addr,
    os::fd::{AsRawFd, FromRawFd, OwnedFd},
    time::{Duration, Instant},
};

use integration_tests::{arp::who_has, e2e::*, netns::NetNs};
use lb_agent::vrrp::packet::{Advert, Auth, Version};
use lb_common::checksum;
use xtask::lab::{Lab, Node, FLOATING_SNAT};

const LB1: Ipv4Addr = Ipv4Addr::new(10, 200, 0, 11);
const LB2: Ipv4Addr = Ipv4Addr::new(10, 200, 0, 12);
const VIP: Ipv4Addr = Ipv4Addr::new(10, 100, 0, 100);
/// lb2's master-down interval at advert_int 1 s: 3 s + (256-100)/256 s.
const LB2_MASTER_DOWN: Duration = Duration::from_millis(3610);

#[test]
fn kill_9_of_the_master_fails_over_without_losing_requests() {
    let Some(lab) = lab_ha("hakill") else { return };
    assert_eq!(lab.vip_holder(), Some(Node::Lb1));
    assert_eq!(vrrp_state(&lab, Node::Lb2), "BACKUP");
    let requests = ClientLoop::start(&lab, Duration::from_millis(100), 300);
    std::thread::sleep(Duration::from_millis(500));
    let killed = Instant::now();
    lab.kill_agent(Node::Lb1, libc::SIGKILL)
        .expect("kill -9 lb1's agent");
    assert!(
        wait_for(Duration::from_secs(10), || vrrp_state(&lab, Node::Lb2)
            == "MASTER"),
        "lb2 takes over"
    );
    let took = killed.elapsed();
    // The timer, not a speed target: master-down interval plus slack for
    // the polling and a loaded machine.
    assert!(
        took < LB2_MASTER_DOWN + Duration::from_secs(2),
        "lb2 became master after {took:?}"
    );
    std::thread::sleep(Duration::from_secs(1));
    let seen = requests.finish();
    let (ok, failed) = (seen.ok(), seen.failed);
    assert!(ok > 10, "the loop ran");
    assert!(
        failed.is_empty(),
        "requests lost in the failover: {failed:?}"
    );
    let holds = vrrp_field(&lab, Node::Lb2, "holds");
    assert_eq!(
        holds,
        serde_json::json!(["10.100.0.100"]),
        "lb2 holds the VIP"
    );
}

#[test]
fn graceful_stop_hands_over_and_preemption_takes_it_back() {
    let Some(lab) = lab_ha("hastop") else { return };
    lab.stop_agent(Node::Lb1).expect("SIGTERM lb1's agent");
    assert!(
        wait_for(Duration::from_secs(3), || vrrp_state(&lab, Node::Lb2)
            == "MASTER"),
        "priority 0 lets lb2 take over after its skew time, well before the master-down interval"
    );
    assert_eq!(
        lab.vip_holder(),
        Some(Node::Lb2),
        "lb1 released the VIP, lb2 took it"
    );
    let body = lab
        .http_get(Node::Client, VIP_URL)
        .expect("served through lb2");
    assert!(body.starts_with("web"), "{body}");

    lab.start_agent(Node::Lb1).expect("lb1 back");
    assert!(
        wait_for(Duration::from_secs(10), || lab.vip_holder()
            == Some(Node::Lb1)),
        "lb1 preempts with its higher priority"
    );
    assert!(wait_for(Duration::from_secs(3), || vrrp_state(
        &lab,
        Node::Lb2
    ) == "BACKUP"));
    let log = std::fs::read_to_string(lab.agent_log_path(Node::Lb2)).expect("lb2 log");
    assert!(log.contains("VRRP transition"), "{log}");
}

#[test]
fn exactly_one_node_answers_arp_for_the_vip() {
    let Some(lab) = lab_ha("haarp") else { return };
    assert_eq!(lab.vip_holder(), Some(Node::Lb1));
    lab.http_get(Node::Client, VIP_URL).expect("request");
    let neigh = lab
        .exec_ok(Node::Client, &["ip", "neigh", "show", "10.100.0.100"])
        .expect("client neighbours");
    let lb1_link = lab
        .exec_ok(Node::Lb1, &["ip", "link", "show", "pub0"])
        .expect("lb1 link");
    let mac = lb1_link
        .split_whitespace()
        .skip_while(|w| *w != "link/ether")
        .nth(1)
        .expect("lb1 MAC")
        .to_string();
    assert!(
        neigh.contains(&mac),
        "the client reaches the VIP at lb1's MAC {mac}: {neigh}"
    );
    assert_eq!(vrrp_state(&lab, Node::Lb2), "BACKUP");
    assert_eq!(vrrp_field(&lab, Node::Lb2, "holds"), serde_json::json!([]));

    // Ask on the wire, before and after a failover: one answer each time.
    let client = Node::Client.public_address().expect("client address");
    let ask = || {
        who_has(
            &lab.ns(Node::Client),
            "eth0",
            client,
            VIP,
            Duration::from_millis(500),
        )
    };
    let answers = ask();
    assert_eq!(
        answers.len(),
        1,
        "one node answers ARP for the VIP: {answers:?}"
    );
    assert_eq!(
        answers.iter().next().map(mac_text),
        Some(mac.clone()),
        "lb1 answers"
    );
    lab.stop_agent(Node::Lb1).expect("graceful stop of lb1");
    assert!(wait_for(Duration::from_secs(3), || vrrp_state(
        &lab,
        Node::Lb2
    ) == "MASTER"));
    let answers = ask();
    assert_eq!(answers.len(), 1, "after the failover too: {answers:?}");
    assert_ne!(
        answers.iter().next().map(mac_text),
        Some(mac),
        "now lb2 answers"
    );
}

fn mac_text(mac: &[u8; 6]) -> String {
    mac.iter()
        .map(|b| format!("{b:02x}"))
        .collect::<Vec<_>>()
        .join(":")
}

/// Sends a hand-made IPv4 packet (protocol 112) from inside `ns`.
fn send_raw(ns: &str, src: Ipv4Addr, dst: Ipv4Addr, ttl: u8, payload: &[u8]) {
    let ns = NetNs::existing(ns);
    let (payload, ns_name) = (payload.to_vec(), ns);
    std::thread::spawn(move || {
        ns_name.enter_current_thread();
        let mut packet = vec![0u8; 20];
        packet[0] = 0x45;
        packet[2..4].copy_from_slice(&((20 + payload.len()) as u16).to_be_bytes());
        packet[8] = ttl;
        packet[9] = 112;
        packet[12..16].copy_from_slice(&src.octets());
        packet[16..20].copy_from_slice(&dst.octets());
        let check = checksum::ipv4_header(&packet);
        packet[10..12].copy_from_slice(&check.to_be_bytes());
        packet.extend_from_slice(&payload);
        // SAFETY: plain socket(2); IPPROTO_RAW means we give the IP header.
        let raw = unsafe { libc::socket(libc::AF_INET, libc::SOCK_RAW, libc::IPPROTO_RAW) };
        assert!(raw >= 0, "raw socket: {}", std::io::Error::last_os_error());
        // SAFETY: fresh fd we own.
        let fd = unsafe { OwnedFd::from_raw_fd(raw) };
        let addr = libc::sockaddr_in {
            sin_family: libc::AF_INET as libc::sa_family_t,
            sin_port: 0,
            sin_addr: libc::in_addr {
                s_addr: u32::from_ne_bytes(dst.octets()),
            },
            sin_zero: [0; 8],
        };
        // SAFETY: valid fd, buffer and address.
        let rc = unsafe {
            libc::sendto(
                fd.as_raw_fd(),
                packet.as_ptr().cast(),
                packet.len(),
                0,
                (&addr as *const libc::sockaddr_in).cast(),
                std::mem::size_of::<libc::sockaddr_in>() as libc::socklen_t,
            )
        };
        assert!(rc > 0, "sendto: {}", std::io::Error::last_os_error());
    })
    .join()
    .expect("sender thread");
}

#[test]
fn forged_adverts_change_nothing_and_are_counted() {
    let Some(lab) = lab_ha("haforge") else { return };
    let advert = |priority: u8, pass: &str| Advert {
        version: Version::V2,
        vrid: 33,
        priority,
        interval_cs: 100,
        addresses: vec![VIP],
        auth: Auth::simple(pass),
    };
    let web3 = lab.ns(Node::Web3);
    // Web3 pretends to be a better router, spoofing lb1's address in
    // various broken ways, and under its own (non-peer) address.
    let good = advert(254, "labpass").encode(LB1, LB2);
    send_raw(&web3, LB1, LB2, 64, &good);
    send_raw(&web3, LB1, LB2, 255, &advert(254, "wrong").encode(LB1, LB2));
    let mut bad_sum = good.clone();
    bad_sum[6] ^= 0xff;
    send_raw(&web3, LB1, LB2, 255, &bad_sum);
    let web3_addr = Ipv4Addr::new(10, 200, 0, 23);
    send_raw(
        &web3,
        web3_addr,
        LB2,
        255,
        &advert(254, "labpass").encode(web3_addr, LB2),
    );
    std::thread::sleep(Duration::from_millis(500));

    let rejected = vrrp_field(&lab, Node::Lb2, "adverts_rejected");
    for reason in ["ttl", "auth", "checksum", "not_a_peer"] {
        assert_eq!(rejected[reason], 1, "{reason} counted: {rejected}");
    }
    assert_eq!(vrrp_state(&lab, Node::Lb2), "BACKUP");
    assert_eq!(vrrp_state(&lab, Node::Lb1), "MASTER");
    assert_eq!(lab.vip_holder(), Some(Node::Lb1));
}

#[test]
fn vrrp_v3_at_100ms_fails_over_in_under_a_second() {
    let Some(lab) = lab_ha_v3("hav3", Duration::from_millis(100)) else {
        return;
    };
    assert_eq!(vrrp_field(&lab, Node::Lb1, "version"), 3);
    let requests = ClientLoop::start(&lab, Duration::from_millis(100), 300);
    std::thread::sleep(Duration::from_millis(300));
    lab.stop_agent(Node::Lb1).expect("graceful stop of lb1");
    let stopped = Instant::now();
    assert!(
        wait_for(Duration::from_secs(5), || lab.vip_holder()
            == Some(Node::Lb2)),
        "lb2 holds the VIP"
    );
    // lb2's skew at 0.1 s is 61 ms; checking takes a few polls.
    let took = stopped.elapsed();
    assert!(
        took < Duration::from_secs(1),
        "sub-second handover took {took:?}"
    );
    std::thread::sleep(Duration::from_millis(500));
    let seen = requests.finish();
    let (ok, failed) = (seen.ok(), seen.failed);
    assert!(ok > 3 && failed.is_empty(), "{ok} ok, failed: {failed:?}");
}

#[test]
fn failing_track_script_moves_mastership_and_back() {
    let Some(lab) = lab_ha("hatrack") else { return };
    lab.set_track_failing(Node::Lb1, true)
        .expect("fail lb1's track script");
    assert!(
        wait_for(Duration::from_secs(6), || vrrp_state(&lab, Node::Lb1)
            == "FAULT"),
        "lb1 in FAULT"
    );
    assert!(
        wait_for(Duration::from_secs(6), || lab.vip_holder()
            == Some(Node::Lb2)),
        "lb2 holds the VIP"
    );
    let reason = vrrp_field(&lab, Node::Lb1, "last_transition_reason");
    assert!(
        reason.as_str().unwrap_or("").contains("track script"),
        "{reason}"
    );
    lab.set_track_failing(Node::Lb1, false).expect("clear");
    assert!(
        wait_for(Duration::from_secs(10), || lab.vip_holder()
            == Some(Node::Lb1)),
        "lb1 preempts back once the script passes"
    );
}

#[test]
fn no_healthy_backend_seen_from_lb1_moves_mastership() {
    let Some(lab) = lab_ha("hahealth") else {
        return;
    };
    // web1 and web2 stop answering lb1 only: lb1's health checks fail,
    // lb2's pass, so lb2 can still serve www.
    for web in [Node::Web1, Node::Web2] {
        lab.exec_ok(web, &["ip", "route", "add", "blackhole", "10.200.0.11/32"])
            .expect("blackhole towards lb1");
    }
    assert!(
        wait_for(Duration::from_secs(10), || lab.vip_holder()
            == Some(Node::Lb2)),
        "lb2 takes over when lb1 has no backend up"
    );
    assert_eq!(vrrp_state(&lab, Node::Lb1), "FAULT");
    let body = lab
        .http_get(Node::Client, VIP_URL)
        .expect("served through lb2");
    assert!(body.starts_with("web"), "{body}");
    for web in [Node::Web1, Node::Web2] {
        lab.exec_ok(web, &["ip", "route", "del", "blackhole", "10.200.0.11/32"])
            .expect("remove blackhole");
    }
    assert!(
        wait_for(Duration::from_secs(12), || lab.vip_holder()
            == Some(Node::Lb1)),
        "lb1 back once its checks pass again"
    );
}

/// `node`'s lab config with multicast VRRP (no unicast peers) and notify
/// hooks that log their arguments: starts its agent with it.
fn start_multicast_agent(lab: &Lab, node: Node, hook_log: &std::path::Path) {
    let mut model = lab.default_agent_model(node).expect("lab model");
    let vrrp = model.vrrp.as_mut().expect("[vrrp] in the HA lab");
    let log = hook_log.display();
    let peer = vrrp.unicast_peers.pop().expect("the lab's unicast peer");
    // The floating SNAT address needs a unicast peer to decide this
    // node's half of the NAT ports: without one the node sends from its own.
    vrrp.snat_address = None;
    vrrp.snat_pool.clear();
    vrrp.unicast_peers.clear();
    vrrp.notify = Some(format!("echo >> {log}"));
    vrrp.notify_master = Some(format!("echo {node}-master-hook >> {log}"));
    vrrp.notify_backup = Some("sleep 60".into());
    vrrp.notify_timeout = Duration::from_secs(1);
    // Without unicast peers flow sync needs to be told where the peer is.
    if let Some(sync) = model.sync.as_mut() {
        sync.peer = Some(peer);
    }
    lab.start_agent_with_model(node, &model)
        .expect("agent with multicast VRRP");
}

#[test]
fn multicast_election_runs_notify_hooks_without_blocking() {
    let Some(lab) = lab_ha("hamcast") else { return };
    lab.stop_agent(Node::Lb2).expect("stop lb2");
    lab.stop_agent(Node::Lb1).expect("stop lb1");
    let hook_log = lab.run_dir().join("hooks.log");
    start_multicast_agent(&lab, Node::Lb1, &hook_log);
    start_multicast_agent(&lab, Node::Lb2, &hook_log);
    let lb1_heard = |lab: &Lab| {
        vrrp_field(lab, Node::Lb2, "master") == serde_json::json!("10.200.0.11")
            && vrrp_state(lab, Node::Lb2) == "BACKUP"
    };
    assert!(
        wait_for(Duration::from_secs(10), || lb1_heard(&lab)),
        "lb2 hears lb1's multicast adverts: {} / {}",
        vrrp_state(&lab, Node::Lb2),
        vrrp_field(&lab, Node::Lb2, "master")
    );
    let groups = lab
        .exec_ok(Node::Lb2, &["ip", "maddr", "show", "dev", "priv0"])
        .expect("multicast groups");
    assert!(
        groups.contains("224.0.0.18"),
        "lb2 joined 224.0.0.18: {groups}"
    );
    assert!(wait_for(Duration::from_secs(5), || lab.vip_holder()
        == Some(Node::Lb1)));

    // lb2's notify_backup hook sleeps for a minute: the election must not
    // wait for it (it is killed after notify_timeout).
    lab.stop_agent(Node::Lb1).expect("graceful stop of lb1");
    assert!(
        wait_for(Duration::from_secs(3), || vrrp_state(&lab, Node::Lb2)
            == "MASTER"),
        "lb2 takes over on lb1's priority 0 despite a hanging hook"
    );
    let logged = |needle: &str| {
        std::fs::read_to_string(&hook_log)
            .unwrap_or_default()
            .lines()
            .any(|l| l.trim() == needle)
    };
    let lb2_instance = lab.instance(Node::Lb2);
    let lb1_instance = lab.instance(Node::Lb1);
    assert!(
        wait_for(Duration::from_secs(3), || logged(&format!(
            "INSTANCE {lb2_instance} MASTER 100"
        )) && logged("lb2-master-hook")
            && logged(&format!("INSTANCE {lb1_instance} STOP 200"))),
        "keepalived's notify convention (TYPE NAME STATE PRIORITY):\n{}",
        std::fs::read_to_string(&hook_log).unwrap_or_default()
    );
    // The hook is killed notify_timeout (1 s) after lb2 became BACKUP,
    // which may be just after it became MASTER: wait for the line.
    if let Err(log) = wait_for_agent_log(
        &lab,
        Node::Lb2,
        "notify hook timed out",
        Duration::from_secs(3),
    ) {
        panic!("lb2 logs the killed hook:\n{log}");
    }
}

#[test]
fn a_detached_program_moves_mastership_and_nopreempt_keeps_it_away() {
    let Some(lab) = lab_ha("hadetach") else {
        return;
    };
    let pin = format!("/sys/fs/bpf/{}/link_pub0", lab.instance(Node::Lb1));
    let out = std::process::Command::new("bpftool")
        .args(["link", "detach", "pinned", &pin])
        .output()
        .expect("bpftool");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        wait_for(Duration::from_secs(6), || vrrp_state(&lab, Node::Lb1)
            == "FAULT"),
        "lb1 notices its program is gone"
    );
    let reason = vrrp_field(&lab, Node::Lb1, "last_transition_reason");
    assert!(reason.as_str().unwrap_or("").contains("XDP"), "{reason}");
    assert!(wait_for(Duration::from_secs(6), || lab.vip_holder()
        == Some(Node::Lb2)));

    // Back with nopreempt: lb1 (priority 200) stays backup behind lb2.
    lab.stop_agent(Node::Lb1).expect("stop lb1");
    let mut model = lab.default_agent_model(Node::Lb1).expect("model");
    model.vrrp.as_mut().expect("[vrrp]").preempt = false;
    lab.start_agent_with_model(Node::Lb1, &model)
        .expect("lb1 with nopreempt");
    assert!(wait_for(Duration::from_secs(6), || vrrp_state(
        &lab,
        Node::Lb1
    ) == "BACKUP"));
    std::thread::sleep(Duration::from_secs(4));
    assert_eq!(vrrp_state(&lab, Node::Lb1), "BACKUP", "no preemption");
    assert_eq!(lab.vip_holder(), Some(Node::Lb2));
}

/// Whether `node` has `address` on its private interface.
fn holds_on_priv0(lab: &Lab, node: Node, address: Ipv4Addr) -> bool {
    lab.exec_ok(node, &["ip", "-4", "addr", "show", "dev", "priv0"])
        .is_ok_and(|out| out.contains(&format!("inet {address}/32")))
}

/// Whether `holder` alone has the floating SNAT address.
fn only_holder_of_snat(lab: &Lab, holder: Node) -> bool {
    Node::LBS
        .iter()
        .all(|&n| holds_on_priv0(lab, n, FLOATING_SNAT) == (n == holder))
}

/// The clients nginx on `web` logged for pages through the VIP (`GET /`),
/// leaving out the agents' health checks (`/health`, sent from each node's
/// own address).
fn page_clients(lab: &Lab, web: Node) -> Vec<String> {
    access_log(lab, web)
        .lines()
        .filter(|line| line.contains("\"GET / HTTP"))
        .filter_map(|line| line.split_whitespace().next())
        .map(str::to_owned)
        .collect()
}

#[test]
fn the_floating_snat_address_follows_the_master_and_backends_see_only_it() {
    let Some(lab) = lab_ha("hsnat") else { return };
    assert_eq!(lab.vip_holder(), Some(Node::Lb1));
    assert!(
        wait_for(Duration::from_secs(5), || only_holder_of_snat(
            &lab,
            Node::Lb1
        )),
        "the master lb1 holds {FLOATING_SNAT} on priv0, the backup lb2 does not"
    );
    // The status shows the provider's view within a few hundred ms.
    let holds = |node| vrrp_field(&lab, node, "snat_holds");
    let held = serde_json::json!([FLOATING_SNAT.to_string()]);
    assert!(
        wait_for(Duration::from_secs(3), || holds(Node::Lb1) == held),
        "lb1's status shows {held}: {}",
        holds(Node::Lb1)
    );
    assert_eq!(holds(Node::Lb2), serde_json::json!([]));
    // Each node its own half of the NAT ports, lb1 (the lower address) the lower.
    let snat = |node| status_field(&lab, node, "snat");
    let (lb1, lb2) = (snat(Node::Lb1), snat(Node::Lb2));
    assert_eq!(
        lb1["addresses"],
        serde_json::json!([FLOATING_SNAT.to_string()])
    );
    assert_eq!(
        (&lb1["floating"], &lb2["floating"]),
        (&serde_json::json!(true), &serde_json::json!(true))
    );
    assert_eq!(lb1["port_slice"], "lower", "{lb1}");
    assert_eq!(lb2["port_slice"], "upper", "{lb2}");
    assert_eq!(lb1["ports"], serde_json::json!([[1024, 19163]]), "{lb1}");
    let text = lab.agent_cli(Node::Lb1, &["status"]).expect("status");
    let text = String::from_utf8_lossy(&text.stdout);
    assert!(text.contains("held here: 10.200.0.10"), "{text}");

    let counts = http_round(&lab, 20);
    assert_eq!(
        counts.get("web1").copied().unwrap_or(0) + counts.get("web2").copied().unwrap_or(0),
        20,
        "every request answered: {counts:?}"
    );
    let floating = FLOATING_SNAT.to_string();
    let mut before = Vec::new();
    for web in [Node::Web1, Node::Web2] {
        let clients = page_clients(&lab, web);
        assert!(
            !clients.is_empty() && clients.iter().all(|c| *c == floating),
            "{web}: pages through the VIP come from {floating} only, saw {clients:?}"
        );
        before.push(clients.len());
    }

    let requests = ClientLoop::start(&lab, Duration::from_millis(100), 300);
    std::thread::sleep(Duration::from_millis(500));
    lab.stop_agent(Node::Lb1).expect("SIGTERM lb1's agent");
    assert!(
        wait_for(Duration::from_secs(5), || vrrp_state(&lab, Node::Lb2)
            == "MASTER"),
        "lb2 takes over"
    );
    assert!(
        wait_for(Duration::from_secs(5), || only_holder_of_snat(
            &lab,
            Node::Lb2
        )),
        "lb1 released {FLOATING_SNAT} on stopping, lb2 holds it"
    );
    std::thread::sleep(Duration::from_secs(2));
    let seen = requests.finish();
    assert!(
        seen.failed.is_empty(),
        "requests lost in the failover: {:?}",
        seen.failed
    );
    assert!(seen.ok() > 10, "the loop ran: {:?}", seen.answers);
    assert!(
        wait_for(Duration::from_secs(3), || holds(Node::Lb2) == held),
        "lb2's status shows {held}: {}",
        holds(Node::Lb2)
    );
    for (web, before) in [Node::Web1, Node::Web2].into_iter().zip(before) {
        let clients = page_clients(&lab, web);
        assert!(clients.len() > before, "{web}: served through lb2 too");
        assert!(
            clients.iter().all(|c| *c == floating),
            "{web}: through lb2 too, pages come from {floating} only, saw {clients:?}"
        );
    }
}
