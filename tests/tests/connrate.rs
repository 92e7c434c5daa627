//! End to end: sustained connection-per-request load through the VIP.
//! Each request is a new connection that nginx closes first, so every
//! (SNAT address, NAT port) pair sits in the backend's TIME_WAIT after
//! use. A minute at this lab's rate hands each source out more than once
//! within a TIME_WAIT: the backend must take every new SYN (the balancer
//! keeps each source's TCP timestamps on one forward-moving clock; with
//! the client's own, PAWS turns some away, the backend answers with an
//! ACK instead of a SYN-ACK and the client retransmits its SYN a second
//! later), and the pools must never run dry.

use integration_tests::e2e::*;
use xtask::{
    bench::wrk_with,
    connrate::{parse_nstat, parse_reason_count, CLIENT_COUNTER, PORT_EXHAUSTED},
    lab::{Lab, Node, PORT_RANGE},
};

/// Long enough that a pool which hands out a source too early shows it.
const LOAD_SECONDS: u32 = 60;
const CONNECTIONS: u32 = 16;
/// Linux's ephemeral range, which the agent leaves out of `PORT_RANGE`.
const EPHEMERAL_PORTS: u32 = 60999 - 32768 + 1;

/// Why a backend may have refused SYNs, for the failure message.
fn backend_counters(lab: &Lab) -> String {
    const WHY: [&str; 4] = [
        "TcpExtPAWSTimewait",
        "TcpExtTW",
        "TcpExtListenOverflows",
        "TcpExtListenDrops",
    ];
    [Node::Web1, Node::Web2]
        .iter()
        .map(|web| {
            let mut args = vec!["nstat", "-asz"];
            args.extend(WHY);
            let out = lab.exec_ok(*web, &args).unwrap_or_default();
            format!("{web}: {:?}", parse_nstat(&out))
        })
        .collect::<Vec<_>>()
        .join("; ")
}

fn syn_retransmissions(lab: &Lab) -> u64 {
    let out = lab
        .exec_ok(Node::Client, &["nstat", "-asz", CLIENT_COUNTER])
        .expect("nstat on the client");
    parse_nstat(&out).get(CLIENT_COUNTER).copied().unwrap_or(0)
}

#[test]
fn a_minute_of_new_connections_fails_none_and_uses_the_whole_snat_pool() {
    let Some(lab) = lab("e2rate") else { return };
    let retransmitted_before = syn_retransmissions(&lab);

    let result =
        wrk_with(&lab, Node::Client, VIP_URL, true, LOAD_SECONDS, CONNECTIONS).expect("wrk");
    let rate = result.rate;
    assert!(rate > 0.0, "no request was answered: {result:?}");
    assert_eq!(
        result.errors.total(),
        0,
        "socket errors (connect/read/write/timeout) under load: {}",
        result.errors
    );
    assert_eq!(result.non_2xx, 0, "answers other than 2xx/3xx");

    // The test only means something if sources came round again.
    let ports = u32::from(PORT_RANGE.1) - u32::from(PORT_RANGE.0) + 1 - EPHEMERAL_PORTS;
    let sources = f64::from(ports) * Node::Lb1.snat_pool().len() as f64;
    let per_backend = rate * f64::from(LOAD_SECONDS) / 2.0;
    assert!(
        per_backend > sources,
        "{per_backend:.0} connections per backend did not reuse its {sources} NAT sources: load longer"
    );
    let stats = agent(&lab, &["stats"]);
    assert_eq!(
        parse_reason_count(&stats, PORT_EXHAUSTED).expect("stats"),
        0,
        "a port pool ran dry:\n{stats}"
    );
    // A SYN that a backend refused (a source still in its TIME_WAIT) or
    // that found no NAT source is retransmitted by the client after 1 s.
    assert_eq!(
        syn_retransmissions(&lab) - retransmitted_before,
        0,
        "the client had to retransmit SYNs (a stall of 1 s each) at {rate:.0} req/s; {}\n{stats}",
        backend_counters(&lab),
    );

    for web in [Node::Web1, Node::Web2] {
        let seen = access_log_clients(&lab, web);
        for address in lb1_snat_pool() {
            assert!(
                seen.contains(&address),
                "{web}: no connection from SNAT address {address}; saw {seen:?}"
            );
        }
    }
}
