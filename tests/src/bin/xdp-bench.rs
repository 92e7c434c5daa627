//! Measures ns/packet of the balancer through BPF_PROG_TEST_RUN for each
//! path (established, new flow, reply, non-VIP pass) against the trivial
//! MAC-swap program measured in the same run. Run by `cargo xtask bench`.
//!
//! The kernel's `repeat` runs the program again on the frame the previous
//! run left behind. A NAT rewrites that frame, so the benchmark arranges
//! flows whose rewrite is a fixed point: the NAT source is the client
//! itself and the backend is the VIP, so every run sees the same packet and
//! takes the same path through the same code (map lookups, checksum
//! updates, route lookup, counters), with caches as warm as under load.

use std::time::Duration;

use integration_tests::{
    artifacts,
    packet::{Frame, TCP_ACK, TCP_SYN},
    program::*,
};
use lb_common::{flow_state, FlowKey, FlowValue, Settings, PROTO_TCP};

const DEFAULT_REPEAT: u32 = 1_000_000;
const ROUNDS: usize = 3;
const CLIENT_PORT: u16 = 40000;

fn key(src: [u8; 4], sport: u16, dst: [u8; 4], dport: u16) -> FlowKey {
    FlowKey {
        src_addr: src,
        dst_addr: dst,
        src_port: sport,
        dst_port: dport,
        proto: PROTO_TCP,
        _pad: [0; 3],
    }
}

/// The clock `bpf_ktime_get_ns` reads.
fn monotonic_ns() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: valid out pointer.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

fn main() {
    let repeat: u32 = std::env::args()
        .nth(1)
        .and_then(|a| a.parse().ok())
        .unwrap_or(DEFAULT_REPEAT);
    let (Some(object), Some(trivial)) = (artifacts::lb_object(), artifacts::trivial_object())
    else {
        eprintln!("xdp-bench: objects missing or not root; run `cargo xtask bench`");
        std::process::exit(2);
    };
    // The lab's table size: one million new flows churn through it, so the
    // new-flow figure includes LRU eviction, as on a busy node.
    let mut h = Harness::with_capacity(&object, 20000, 60000, 65536);
    let mut settings = h.ebpf_settings();
    settings.lb_addr = CLIENT;
    // The fixed-point frames keep the MACs the route lookup writes, so
    // those are "ours": the MAC check runs and accepts them.
    settings.public_mac = VIP_MAC;
    settings.private_mac = CLIENT_MAC;
    h.set_settings(settings);
    h.add_service(0, VIP, 80, PROTO_TCP, &[(0, VIP, 80)]);
    let client = key(CLIENT, CLIENT_PORT, VIP, 80);
    h.insert_flow(
        client,
        FlowValue {
            backend_addr: VIP,
            backend_port: 80,
            lb_port: CLIENT_PORT,
            backend_id: 0,
            service_id: 0,
            state: flow_state::TCP_ESTABLISHED,
            _pad: [0; 7],
            last_seen_ns: monotonic_ns(),
            to_backend: Default::default(),
            to_client: Default::default(),
        },
        key(VIP, 80, CLIENT, CLIENT_PORT),
    );

    let payload = [0u8; 64];
    // MACs as the route lookup sets them, so the frame stays the same.
    let established = Frame::tcp(CLIENT, CLIENT_PORT, VIP, 80, TCP_ACK)
        .macs(PUB_MAC, VIP_MAC)
        .payload(&payload)
        .build();
    let reply = Frame::tcp(VIP, 80, CLIENT, CLIENT_PORT, TCP_ACK)
        .macs(PUB_MAC, CLIENT_MAC)
        .payload(&payload)
        .build();
    let pass = Frame::tcp(CLIENT, 50000, LB_PUB, 22, TCP_ACK)
        .macs(CLIENT_MAC, VIP_MAC)
        .payload(&payload)
        .build();
    let syn = Frame::tcp(CLIENT, 39999, VIP, 80, TCP_SYN)
        .macs(PUB_MAC, VIP_MAC)
        .build();

    // Each path is first run once and must take the action it should and
    // leave the frame as it found it (but for the new-flow path, whose NAT
    // port changes), so the timed runs repeat exactly that path.
    let measure = |h: &Harness, frame: &[u8], action: u32, fixed_point: bool| {
        let rst_before = h.reason_count(lb_common::Reason::RstNoFlow);
        let (got, out) = h.run(h.pub_ifindex, frame);
        assert_eq!(
            h.reason_count(lb_common::Reason::RstNoFlow),
            rst_before,
            "benchmarked path answered with a RST"
        );
        assert_eq!(
            got, action,
            "benchmarked path returned an unexpected action"
        );
        if fixed_point {
            assert_eq!(out, frame, "benchmarked frame is not a fixed point");
        }
        (0..ROUNDS)
            .map(|_| {
                h.run_repeat(h.pub_ifindex, frame, repeat)
                    .unwrap_or_else(|e| panic!("test run: {e:?}"))
                    .2
            })
            .min()
            .unwrap_or_default()
    };
    let t_established = measure(&h, &established, XDP_TX, true);
    let t_reply = measure(&h, &reply, XDP_TX, true);
    let t_pass = measure(&h, &pass, XDP_PASS, true);
    let established_packets = h.service_counters(0).packets;

    // New flow: with zero timeouts every SYN finds any earlier entry
    // expired and takes the whole new-connection path (schedule, port
    // allocation, two conntrack inserts, route lookup).
    // XDP_BENCH_SKIP_NEW=1 leaves the new-flow path out (for experiments
    // that change how flows expire).
    let t_new = if std::env::var_os("XDP_BENCH_SKIP_NEW").is_some() {
        Duration::ZERO
    } else {
        new_flow_time(&mut h, &syn, repeat)
    };
    assert!(
        established_packets > u64::from(repeat),
        "established benchmark forwarded only {established_packets} packets"
    );

    let trivial_h = Harness::with_program(&trivial, "trivial");
    let t_trivial = (0..ROUNDS)
        .map(|_| {
            let (action, _, t) = trivial_h
                .run_repeat(trivial_h.pub_ifindex, &established, repeat)
                .unwrap_or_else(|e| panic!("trivial test run: {e:?}"));
            assert_eq!(action, XDP_TX);
            t
        })
        .min()
        .unwrap_or_default();

    let ns = |d: Duration| d.as_nanos() as f64;
    let base = ns(t_trivial).max(1.0);
    println!("XDP program cost, BPF_PROG_TEST_RUN repeat {repeat}, best of {ROUNDS}, same run:");
    println!("{:<28} {:>10} {:>10}", "path", "ns/packet", "x trivial");
    for (name, t) in [
        ("trivial MAC swap (XDP_TX)", t_trivial),
        ("established flow", t_established),
        ("new flow", t_new),
        ("reply direction", t_reply),
        ("non-VIP pass", t_pass),
    ] {
        println!("{:<28} {:>10.1} {:>10.2}", name, ns(t), ns(t) / base);
    }
    let established_ratio = ns(t_established) / base;
    let new_ratio = ns(t_new) / base;
    println!(
        "targets: established <= 3x ({}), new flow <= 6x ({})",
        if established_ratio <= 3.0 {
            "met"
        } else {
            "MISSED"
        },
        if new_ratio <= 6.0 { "met" } else { "MISSED" }
    );
}

/// Time per new flow: with zero timeouts every SYN finds any earlier entry
/// expired and takes the whole new-connection path (schedule, port
/// allocation, two conntrack inserts, route lookup).
fn new_flow_time(h: &mut Harness, syn: &[u8], repeat: u32) -> Duration {
    let flows_before = h.service_counters(0).new_flows;
    let mut zero: Settings = h.ebpf_settings();
    zero.tcp_handshake_ns = 0;
    zero.tcp_established_ns = 0;
    zero.tcp_closing_ns = 0;
    h.set_settings(zero);
    let t_new = {
        let (got, _) = h.run(h.pub_ifindex, syn);
        assert_eq!(got, XDP_TX, "new-flow path returned an unexpected action");
        h.run_repeat(h.pub_ifindex, syn, repeat)
            .unwrap_or_else(|e| panic!("test run: {e:?}"))
            .2
    };
    let new_flows = h.service_counters(0).new_flows - flows_before;
    assert!(
        new_flows > u64::from(repeat),
        "new-flow benchmark created only {new_flows} flows in {repeat} runs"
    );

    t_new
}
