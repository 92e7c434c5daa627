//! A spoofed SYN flood of several times the flow table, in the lab (prefix
//! `sf`): idle established keep-alive connections all survive it, at least
//! 90% of real new connections succeed during it and all of them after it,
//! and no NAT port is lost to the flood.

use std::{
    io::{Read, Write},
    net::{Ipv4Addr, SocketAddr, TcpStream},
    time::Duration,
};

use integration_tests::{arp::who_has, e2e::*, flood::SynFlood, netns::NetNs};
use xtask::lab::{Lab, Node};

/// The lab's `conntrack.max_flows`.
const TABLE: u32 = 65_536;
const IDLE_CONNECTIONS: usize = 16;
const VIP: Ipv4Addr = Ipv4Addr::new(10, 100, 0, 100);

/// Keep-alive connections to the VIP from the client namespace, each with
/// one request answered.
fn open_keep_alive(lab: &Lab, count: usize) -> Vec<TcpStream> {
    let client = lab.ns(Node::Client);
    std::thread::spawn(move || {
        NetNs::existing(&client).enter_current_thread();
        (0..count)
            .map(|n| {
                let mut stream = TcpStream::connect_timeout(
                    &SocketAddr::from((VIP, 80)),
                    Duration::from_secs(3),
                )
                .unwrap_or_else(|e| panic!("keep-alive connection {n}: {e}"));
                get(&mut stream).unwrap_or_else(|e| panic!("first request on {n}: {e}"));
                stream
            })
            .collect()
    })
    .join()
    .expect("keep-alive thread")
}

/// One request on a kept-alive connection; the body (a web server's name).
fn get(stream: &mut TcpStream) -> std::io::Result<String> {
    stream.set_read_timeout(Some(Duration::from_secs(3)))?;
    stream.write_all(b"GET / HTTP/1.1\r\nHost: 10.100.0.100\r\n\r\n")?;
    let mut answer = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        let n = stream.read(&mut buf)?;
        if n == 0 {
            return Err(std::io::Error::other("closed by the peer"));
        }
        answer.extend_from_slice(&buf[..n]);
        let text = String::from_utf8_lossy(&answer);
        if let Some((head, body)) = text.split_once("\r\n\r\n") {
            let length = head
                .lines()
                .find_map(|l| l.strip_prefix("Content-Length: "))
                .and_then(|v| v.trim().parse::<usize>().ok())
                .ok_or_else(|| std::io::Error::other(format!("no length in {head:?}")))?;
            if body.len() >= length {
                return Ok(body[..length].trim().to_string());
            }
        }
    }
}

fn status(lab: &Lab) -> serde_json::Value {
    serde_json::from_str(&agent(lab, &["status", "--json"])).expect("status JSON")
}

fn reason(status: &serde_json::Value, name: &str) -> u64 {
    status["reasons"]
        .as_array()
        .and_then(|all| all.iter().find(|r| r["reason"] == name))
        .and_then(|r| r["packets"].as_u64())
        .unwrap_or(0)
}

#[test]
fn a_syn_flood_of_several_tables_costs_no_real_connection() {
    let Some(lab) = lab("sf") else { return };
    let client = lab.ns(Node::Client);
    let macs = who_has(
        &client,
        "eth0",
        Ipv4Addr::new(10, 100, 0, 10),
        VIP,
        Duration::from_secs(1),
    );
    let to_mac = *macs.iter().next().expect("the VIP's MAC");
    let mut idle = open_keep_alive(&lab, IDLE_CONNECTIONS);

    let during = ClientLoop::start(&lab, Duration::from_millis(50), 400);
    let flood = SynFlood {
        namespace: client.clone(),
        interface: "eth0".into(),
        to_mac,
        vip: VIP,
        port: 80,
        // Not a node's address: nothing answers the backends' SYN-ACKs.
        source_prefix: [10, 100, 0],
        source_low: 128,
        source_high: 250,
        frames: 3 * TABLE,
        per_second: 60_000,
        deadline: Duration::from_secs(10),
    }
    .run();
    let during = during.finish();
    let after = status(&lab);
    println!(
        "flood: {} SYNs in {:.1} s ({:.0}/s); half-open flows displaced: {}; \
         real connections during it: {} of {}",
        flood.sent,
        flood.elapsed.as_secs_f64(),
        flood.rate(),
        after["half_open_evicted"],
        during.ok(),
        during.ok() + during.failed.len(),
    );
    assert!(
        flood.sent >= 2 * TABLE,
        "the flood is several tables: {flood:?}"
    );
    let tried = during.ok() + during.failed.len();
    assert!(
        during.ok() * 10 >= tried * 9,
        "at least 90% of new connections during the flood: {} of {tried}; failures: {:?}",
        during.ok(),
        &during.failed[..during.failed.len().min(5)]
    );
    assert!(
        after["half_open_evicted"].as_u64().unwrap_or(0) > 0,
        "the flood went past the half-open share: {after}"
    );
    assert_eq!(reason(&after, "drop_port_exhausted"), 0, "{after}");
    assert_eq!(reason(&after, "drop_flow_insert"), 0, "{after}");

    for (n, stream) in idle.iter_mut().enumerate() {
        let body =
            get(stream).unwrap_or_else(|e| panic!("idle connection {n} after the flood: {e}"));
        assert!(body.starts_with("web"), "answer on {n}: {body:?}");
    }
    let right_after = http_round(&lab, 20);
    assert!(
        right_after.keys().all(|body| body.starts_with("web")),
        "every new connection right after the flood: {right_after:?}"
    );
}
