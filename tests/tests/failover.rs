//! Connections survive failover (issue #13): with flow sync on and the
//! pair's floating SNAT address, long downloads through lb1 go on through
//! lb2 when lb1's agent is killed, when lb1 stops gracefully, and when lb1
//! comes back and takes mastership again.

use std::time::Duration;

use integration_tests::{arp::who_has, e2e::*};
use xtask::lab::{Lab, Node, SLOW_BYTES, SLOW_RATE};

/// How long a download of `/slow` takes, with room for a loaded machine.
fn download_time() -> Duration {
    Duration::from_secs((SLOW_BYTES / SLOW_RATE) as u64 + 30)
}

/// A field of the `sync` object of `node`'s `lb-agent status --json`.
fn sync_field(lab: &Lab, node: Node, field: &str) -> serde_json::Value {
    status_field(lab, node, "sync")[field].clone()
}

fn in_sync(lab: &Lab, node: Node) -> bool {
    sync_field(lab, node, "state") == "in-sync"
}

/// Starts `count` downloads through the VIP and waits until lb2 holds a
/// copy of each (it installed at least as many flows from lb1).
fn downloads_known_to_lb2(lab: &Lab, count: usize) -> Vec<Download> {
    assert!(
        wait_for(Duration::from_secs(10), || in_sync(lab, Node::Lb2)),
        "lb2 holds lb1's flows before the test starts: {:?}",
        status_field(lab, Node::Lb2, "sync")
    );
    let before = sync_field(lab, Node::Lb2, "installed")
        .as_u64()
        .unwrap_or(0);
    let downloads: Vec<Download> = (0..count)
        .map(|n| Download::start(lab, &format!("survivor-{n}")).expect("start a download"))
        .collect();
    assert!(
        wait_for(Duration::from_secs(5), || downloads
            .iter()
            .all(|d| d.received() > 0)),
        "the downloads started"
    );
    assert!(
        wait_for(Duration::from_secs(5), || {
            let installed = sync_field(lab, Node::Lb2, "installed")
                .as_u64()
                .unwrap_or(0);
            installed >= before + count as u64
        }),
        "lb2 installed lb1's flows: {:?}",
        status_field(lab, Node::Lb2, "sync")
    );
    downloads
}

fn all_complete(downloads: &mut [Download]) {
    for (n, download) in downloads.iter_mut().enumerate() {
        download
            .completes(download_time())
            .unwrap_or_else(|why| panic!("download {n} did not survive the failover: {why}"));
    }
}

fn lb2_takes_over(lab: &Lab) {
    assert!(
        wait_for(Duration::from_secs(10), || vrrp_state(lab, Node::Lb2)
            == "MASTER"),
        "lb2 takes over"
    );
}

#[test]
fn downloads_survive_kill_9_of_the_masters_agent() {
    let Some(lab) = lab_ha("fskill") else { return };
    let mut downloads = downloads_known_to_lb2(&lab, 4);
    lab.kill_agent(Node::Lb1, libc::SIGKILL)
        .expect("kill -9 lb1's agent");
    lb2_takes_over(&lab);
    let refused = sync_field(&lab, Node::Lb2, "refused");
    assert_eq!(refused, serde_json::json!({}), "lb2 took every flow of lb1");
    all_complete(&mut downloads);
}

#[test]
fn downloads_survive_a_graceful_switchover_and_the_failback() {
    let Some(lab) = lab_ha("fsback") else { return };
    let mut downloads = downloads_known_to_lb2(&lab, 4);
    lab.stop_agent(Node::Lb1).expect("SIGTERM lb1's agent");
    lb2_takes_over(&lab);
    assert!(
        downloads.iter().all(|d| d.progresses()),
        "the downloads go on through lb2"
    );
    // lb1 comes back: it asks lb2 for its flows and takes mastership back
    // only once it has them.
    lab.start_agent(Node::Lb1).expect("lb1 back");
    assert!(
        wait_for(Duration::from_secs(20), || lab.vip_holder()
            == Some(Node::Lb1)),
        "lb1 preempts once in sync"
    );
    assert!(in_sync(&lab, Node::Lb1), "lb1 took over only in sync");
    assert!(
        downloads.iter().all(|d| d.progresses()),
        "the downloads go on through lb1 again"
    );
    all_complete(&mut downloads);
}

/// The lab's UDP service as the client reaches it.
const DNS: std::net::SocketAddrV4 =
    std::net::SocketAddrV4::new(std::net::Ipv4Addr::new(10, 100, 0, 100), 5353);
/// The client port of the test's one UDP flow.
const UDP_FLOW_PORT: u16 = 45_353;

fn udp_answer(lab: &Lab) -> String {
    lab.udp_query_from(Node::Client, UDP_FLOW_PORT, DNS, 1, Duration::from_secs(1))
        .expect("udp query")
        .into_iter()
        .next()
        .flatten()
        .unwrap_or_else(|| "no reply".into())
}

/// lb1's node is lost: its links go down and its agent dies. The
/// downloads, one of them started 200 ms before, and a UDP flow go on
/// through lb2 with the same backends.
#[test]
fn flows_survive_the_loss_of_the_masters_node() {
    let Some(lab) = lab_ha("fslost") else { return };
    let before = udp_answer(&lab);
    assert!(
        before.starts_with("web"),
        "the UDP flow is answered: {before}"
    );
    let mut downloads = downloads_known_to_lb2(&lab, 3);
    downloads.push(Download::start(&lab, "survivor-late").expect("start a download"));
    std::thread::sleep(Duration::from_millis(200));
    lab.lose_node(Node::Lb1).expect("lb1's node lost");
    lb2_takes_over(&lab);
    assert!(
        wait_for(Duration::from_secs(5), || udp_answer(&lab) == before),
        "the UDP flow keeps its backend ({before}) through lb2"
    );
    all_complete(&mut downloads);
}

/// Sync datagrams that are not the peer's own, fresh and authentic are
/// rejected, counted by reason, and change no map.
#[test]
fn forged_replayed_and_wrong_key_sync_messages_change_nothing() {
    let Some(lab) = lab_ha("fsforge") else { return };
    assert!(
        wait_for(Duration::from_secs(10), || in_sync(&lab, Node::Lb2)),
        "lb2 in sync"
    );
    let key = std::fs::read(lab.sync_key().expect("lab key")).expect("read key");
    let key = key.strip_suffix(b"\n").unwrap_or(&key).to_vec();
    let installed = sync_field(&lab, Node::Lb2, "installed");
    let flows = status_field(&lab, Node::Lb2, "flows");
    let record = lb_sync::FlowRecord {
        kind: lb_sync::RecordKind::Upsert,
        proto: 6,
        state: lb_common::flow_state::TCP_ESTABLISHED,
        client: "10.100.0.10:40404".parse().expect("addr"),
        vip: "10.100.0.100:80".parse().expect("addr"),
        backend: "10.200.0.21:80".parse().expect("addr"),
        snat: "10.200.0.10:20000".parse().expect("addr"),
        age_ms: 0,
        ts_delta: 0,
    };
    let message = lb_sync::Message::Flows {
        bulk: None,
        records: vec![record],
    };
    let wrong_key = lb_sync::SyncKey::from_bytes(&[7; 32]).expect("key");
    let forged = lb_sync::Sealer::new(wrong_key, u64::MAX).seal(&message).0;
    let right_key = lb_sync::SyncKey::from_bytes(&key).expect("lab key");
    let stale = lb_sync::Sealer::new(right_key, 1).seal(&message).0;
    let replayed = capture_sync_datagram(&lab);
    let garbage = vec![0x42u8; 100];
    send_as_lb1(&lab, &[forged, stale, replayed, garbage]);
    let rejected = |reason: &str| {
        sync_field(&lab, Node::Lb2, "rejected")[reason]
            .as_u64()
            .unwrap_or(0)
    };
    assert!(
        wait_for(Duration::from_secs(3), || rejected("bad_tag") >= 1
            && rejected("old_session") >= 1
            && rejected("replayed") >= 1
            && rejected("bad_magic") >= 1),
        "each rejected and counted: {:?}",
        status_field(&lab, Node::Lb2, "sync")
    );
    assert_eq!(sync_field(&lab, Node::Lb2, "installed"), installed);
    assert_eq!(
        status_field(&lab, Node::Lb2, "flows"),
        flows,
        "no map changed"
    );
    assert!(in_sync(&lab, Node::Lb2), "the real peer's stream goes on");
}

/// One sync datagram lb1 sent to lb2, as lb2's private interface saw it.
fn capture_sync_datagram(lab: &Lab) -> Vec<u8> {
    let ns = integration_tests::netns::NetNs::existing(&lab.ns(Node::Lb2));
    std::thread::spawn(move || {
        ns.enter_current_thread();
        // IP packets of every interface, without their link headers.
        let protocol = socket2::Protocol::from(i32::from((libc::ETH_P_IP as u16).to_be()));
        let socket = socket2::Socket::new(
            socket2::Domain::PACKET,
            socket2::Type::DGRAM,
            Some(protocol),
        )
        .expect("packet socket");
        socket
            .set_read_timeout(Some(Duration::from_secs(1)))
            .expect("receive timeout");
        let mut buf = [0u8; 2048];
        for _ in 0..200 {
            let Ok(n) = std::io::Read::read(&mut &socket, &mut buf) else {
                continue;
            };
            let packet = &buf[..n];
            let header = usize::from(packet.first().copied().unwrap_or(0) & 0x0f) * 4;
            let from_lb1 = packet.get(12..16) == Some(&[10, 200, 0, 11]);
            let udp = packet.get(9) == Some(&17);
            let to_sync = packet.get(header + 2..header + 4) == Some(&7411u16.to_be_bytes());
            if from_lb1 && udp && to_sync && packet.len() > header + 8 {
                return packet[header + 8..].to_vec();
            }
        }
        panic!("no sync datagram from lb1 seen on lb2");
    })
    .join()
    .expect("capture thread")
}

/// Sends `datagrams` to lb2's sync port from lb1's address.
fn send_as_lb1(lab: &Lab, datagrams: &[Vec<u8>]) {
    let ns = integration_tests::netns::NetNs::existing(&lab.ns(Node::Lb1));
    let datagrams = datagrams.to_vec();
    std::thread::spawn(move || {
        ns.enter_current_thread();
        let socket = std::net::UdpSocket::bind("10.200.0.11:0").expect("bind in lb1");
        for datagram in &datagrams {
            socket
                .send_to(datagram, "10.200.0.12:7411")
                .expect("send to lb2");
        }
    })
    .join()
    .expect("sender thread");
}

/// The NAT sources (SNAT address, port, backend address, backend port) of
/// the flows `node` tracks, from its pinned reply tables.
fn nat_sources(lab: &Lab, node: Node) -> std::collections::BTreeSet<([u8; 4], u16, [u8; 4], u16)> {
    use aya::maps::{Array, ArrayOfMaps, HashMap, Map, MapData};
    use lb_common::{map_names, reply_claim, slot_address_index, slot_port, PoolKey, ReplyValue};
    let pins = lab.pin_dir(node);
    let open = |name: &str| {
        let path = pins.join(name);
        MapData::from_pin(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
    };
    let settings: Array<_, lb_common::Settings> = Map::Array(open(map_names::SETTINGS))
        .try_into()
        .expect("settings map");
    let settings = settings.get(&0, 0).expect("settings");
    let pool_ids: HashMap<_, PoolKey, u32> = Map::HashMap(open(map_names::POOL_IDS))
        .try_into()
        .expect("pool ids map");
    let tables: ArrayOfMaps<_, Array<MapData, ReplyValue>> =
        Map::ArrayOfMaps(open(map_names::REPLY_TABLES))
            .try_into()
            .expect("reply tables map");
    let mut sources = std::collections::BTreeSet::new();
    for (backend, pool) in pool_ids.iter().filter_map(Result::ok) {
        let table = tables.get(&pool, 0).expect("reply table of a pool");
        for (slot, entry) in table.iter().enumerate() {
            let Ok(entry) = entry else { continue };
            if entry.live == reply_claim::FREE {
                continue;
            }
            let slot = u32::try_from(slot).expect("slot");
            let address = settings.snat_addrs[usize::from(slot_address_index(slot))];
            sources.insert((address, slot_port(slot), backend.addr, backend.port));
        }
    }
    sources
}

/// Drops (or lets through again) everything `node` receives from its peer
/// on the private network. The local table's rule comes first (priority
/// 0); it moves behind the blackhole rule so that the rule sees packets
/// addressed to the node itself.
fn cut_from_peer(lab: &Lab, node: Node, cut: bool) {
    let peer = if node == Node::Lb1 {
        "10.200.0.12"
    } else {
        "10.200.0.11"
    };
    let blackhole = ["from", peer, "iif", "priv0", "blackhole", "priority", "100"];
    let rules: Vec<Vec<&str>> = if cut {
        vec![
            vec!["add", "priority", "1000", "lookup", "local"],
            vec!["del", "priority", "0", "lookup", "local"],
            [&["add"][..], &blackhole].concat(),
        ]
    } else {
        vec![
            [&["del"][..], &blackhole].concat(),
            vec!["add", "priority", "0", "lookup", "local"],
            vec!["del", "priority", "1000", "lookup", "local"],
        ]
    };
    for rule in rules {
        let args = [&["ip", "rule"][..], &rule].concat();
        lab.exec_ok(node, &args).expect("partition rule");
    }
}

fn holds_snat(lab: &Lab, node: Node) -> bool {
    lab.exec_ok(node, &["ip", "-4", "addr", "show", "dev", "priv0"])
        .is_ok_and(|out| out.contains("inet 10.200.0.10/"))
}

/// VRRP and sync between the nodes are dropped both ways: both become
/// master and both open flows, and no two flows share a NAT source
/// towards a backend. Healed, one master holds the VIP and the SNAT
/// address.
#[test]
fn a_split_brain_never_shares_a_nat_source_and_heals_to_one_master() {
    let Some(lab) = lab_ha("fssplit") else { return };
    for node in Node::LBS {
        cut_from_peer(&lab, node, true);
    }
    assert!(
        wait_for(Duration::from_secs(10), || Node::LBS
            .iter()
            .all(|&n| vrrp_state(&lab, n) == "MASTER")),
        "both nodes master in the split brain"
    );
    // New connections through each node in turn: the client's neighbour
    // entry for the VIP names one node's MAC, then the other's.
    for node in Node::LBS {
        let mac = lab
            .exec_ok(node, &["cat", "/sys/class/net/pub0/address"])
            .expect("MAC");
        lab.exec_ok(
            Node::Client,
            &[
                "ip",
                "neigh",
                "replace",
                "10.100.0.100",
                "lladdr",
                mac.trim(),
                "dev",
                "eth0",
                "nud",
                "permanent",
            ],
        )
        .expect("neighbour entry");
        http_round(&lab, 20);
    }
    lab.exec_ok(
        Node::Client,
        &["ip", "neigh", "del", "10.100.0.100", "dev", "eth0"],
    )
    .expect("neighbour entry removed");
    let (lb1, lb2) = (nat_sources(&lab, Node::Lb1), nat_sources(&lab, Node::Lb2));
    // Closed flows end 10 s after their close: the earliest may be gone.
    assert!(
        lb1.len() >= 10 && lb2.len() >= 10,
        "both nodes opened flows: {} and {}",
        lb1.len(),
        lb2.len()
    );
    let shared: Vec<_> = lb1.intersection(&lb2).collect();
    assert!(
        shared.is_empty(),
        "NAT sources used by both nodes: {shared:?}"
    );
    for node in Node::LBS {
        cut_from_peer(&lab, node, false);
    }
    assert!(
        wait_for(Duration::from_secs(10), || {
            let masters = Node::LBS
                .iter()
                .filter(|&&n| vrrp_state(&lab, n) == "MASTER")
                .count();
            let snat_holders = Node::LBS.iter().filter(|&&n| holds_snat(&lab, n)).count();
            masters == 1 && snat_holders == 1 && lab.vip_holder().is_some()
        }),
        "healed: one master, one holder of the VIP and of 10.200.0.10"
    );
    assert_eq!(
        lab.vip_holder(),
        Some(Node::Lb1),
        "the higher priority wins"
    );
    assert!(holds_snat(&lab, Node::Lb1));
}

/// Whether a new connection through the VIP is answered.
fn new_connection_answered(lab: &Lab) -> bool {
    lab.http_get(Node::Client, "http://10.100.0.100/")
        .is_ok_and(|body| body.trim().starts_with("web"))
}

/// lb1's agent dies and lb2 takes over; a backend that still sends the
/// floating SNAT address's traffic to lb1 (forced here, as an unlucky
/// re-resolution would) fails every new connection until it learns lb2:
/// lb1 no longer answers for the address, and lb2 announces it again
/// every `garp_refresh`, so it heals within that bound. Then a node that
/// wrongly holds the address is found by lb2's check and counted.
#[test]
fn a_backend_bound_to_a_dead_agents_node_learns_the_master_again() {
    let Some(lab) = lab_ha("fsstale") else { return };
    lab.kill_agent(Node::Lb1, libc::SIGKILL)
        .expect("kill -9 lb1's agent");
    lb2_takes_over(&lab);
    assert!(
        wait_for(Duration::from_secs(5), || new_connection_answered(&lab)),
        "lb2 serves new connections"
    );
    let snat = xtask::lab::FLOATING_SNAT.to_string();
    let lb1_mac = mac_of(&lab, Node::Lb1, "priv0");
    for web in [Node::Web1, Node::Web2] {
        lab.exec_ok(
            web,
            &[
                "ip", "neigh", "replace", &snat, "lladdr", &lb1_mac, "dev", "eth0", "nud", "stale",
            ],
        )
        .expect("point the web server at lb1");
    }
    let stale_since = std::time::Instant::now();
    // The default garp_refresh (10 s), the provider's reconcile tick, and
    // room for a loaded machine.
    assert!(
        wait_for(Duration::from_secs(16), || new_connection_answered(&lab)),
        "new connections work again within the refresh"
    );
    let healed_after = stale_since.elapsed();
    assert!(
        (0..10).all(|_| new_connection_answered(&lab)),
        "and keep working (healed after {healed_after:?})"
    );
    let lb2_mac = mac_of(&lab, Node::Lb2, "priv0");
    for web in [Node::Web1, Node::Web2] {
        let neigh = lab
            .exec_ok(web, &["ip", "neigh", "show", &snat])
            .expect("neighbour");
        assert!(neigh.contains(&lb2_mac), "{web:?} learnt lb2: {neigh}");
    }

    // web3 wrongly holds the floating SNAT address: lb2's next check
    // finds it answering.
    lab.exec_ok(
        Node::Web3,
        &["ip", "addr", "add", &format!("{snat}/32"), "dev", "eth0"],
    )
    .expect("a second owner");
    assert!(
        wait_for(Duration::from_secs(16), || vrrp_field(
            &lab,
            Node::Lb2,
            "second_owners"
        )
        .as_u64()
            >= Some(1)),
        "lb2 finds the other owner: {}",
        status_field(&lab, Node::Lb2, "vrrp")
    );
}

/// `node`'s MAC on `interface`.
fn mac_of(lab: &Lab, node: Node, interface: &str) -> String {
    lab.exec_ok(
        node,
        &["cat", &format!("/sys/class/net/{interface}/address")],
    )
    .expect("MAC")
    .trim()
    .to_string()
}

/// The MACs that answer ARP for `target` asked from `from` (its `eth0`).
fn arp_owners(lab: &Lab, from: Node, target: std::net::Ipv4Addr) -> Vec<String> {
    let sender = from
        .public_address()
        .or(from.private_address())
        .expect("an address to ask from");
    who_has(
        &lab.ns(from),
        "eth0",
        sender,
        target,
        Duration::from_millis(300),
    )
    .iter()
    .map(|mac| {
        mac.iter()
            .map(|b| format!("{b:02x}"))
            .collect::<Vec<_>>()
            .join(":")
    })
    .collect()
}

/// Whether exactly `node` answers ARP for the VIP (asked by the client)
/// and for the floating SNAT address (asked by web1).
fn sole_owner(lab: &Lab, node: Node) -> bool {
    let snat = xtask::lab::FLOATING_SNAT;
    arp_owners(lab, Node::Client, xtask::lab::VIP) == [mac_of(lab, node, "pub0")]
        && arp_owners(lab, Node::Web1, snat) == [mac_of(lab, node, "priv0")]
}

/// After `kill -9` of lb1's agent its kernel keeps the floating addresses,
/// but its program stops answering ARP for them once lb2 advertises itself
/// as master: exactly one node answers. lb1's agent back: it leads again,
/// still one owner. Both agents dead: no master is heard, and lb1's data
/// path keeps answering and serving alone.
#[test]
fn after_kill_9_only_the_master_answers_for_the_floating_addresses() {
    let Some(lab) = lab_ha("fsarp") else { return };
    assert!(
        sole_owner(&lab, Node::Lb1),
        "lb1 owns the addresses at first"
    );
    lab.kill_agent(Node::Lb1, libc::SIGKILL)
        .expect("kill -9 lb1's agent");
    lb2_takes_over(&lab);
    // Four advert intervals (4 s in the lab) after lb1's last heartbeat.
    assert!(
        wait_for(Duration::from_secs(10), || sole_owner(&lab, Node::Lb2)),
        "only lb2 answers: VIP {:?}, SNAT {:?}",
        arp_owners(&lab, Node::Client, xtask::lab::VIP),
        arp_owners(&lab, Node::Web1, xtask::lab::FLOATING_SNAT)
    );
    assert!(new_connection_answered(&lab), "lb2 serves");

    lab.start_agent(Node::Lb1).expect("lb1's agent back");
    assert!(
        wait_for(Duration::from_secs(30), || lab.vip_holder()
            == Some(Node::Lb1)),
        "lb1 resyncs and leads again"
    );
    assert!(
        wait_for(Duration::from_secs(5), || sole_owner(&lab, Node::Lb1)),
        "only lb1 answers again"
    );

    lab.kill_agent(Node::Lb2, libc::SIGKILL)
        .expect("kill -9 lb2's agent");
    lab.kill_agent(Node::Lb1, libc::SIGKILL)
        .expect("kill -9 lb1's agent");
    std::thread::sleep(Duration::from_secs(5));
    assert!(
        sole_owner(&lab, Node::Lb1),
        "with no master heard, lb1's data path keeps its addresses"
    );
    assert!(
        new_connection_answered(&lab),
        "and serves new connections alone"
    );
}

/// Without a VRRP peer there is no one to give the addresses to: after
/// `kill -9` of its agent a lone node's data path keeps answering ARP for
/// the VIP and serving.
#[test]
fn a_lone_node_keeps_answering_for_the_vip_after_kill_9() {
    let Some(lab) = lab("fslone") else { return };
    lab.kill_agent(Node::Lb1, libc::SIGKILL)
        .expect("kill -9 lb1's agent");
    std::thread::sleep(Duration::from_secs(2));
    assert_eq!(
        arp_owners(&lab, Node::Client, xtask::lab::VIP),
        [mac_of(&lab, Node::Lb1, "pub0")],
        "lb1 still answers for the VIP"
    );
    assert!(new_connection_answered(&lab), "and serves");
}
