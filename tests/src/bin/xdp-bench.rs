//! Measures ns/packet of the balancer through BPF_PROG_TEST_RUN for each
//! path (established, new flow, reply, non-VIP pass) against the trivial
//! MAC-swap program measured in the same run. Run by `cargo xtask bench`.

use std::time::Duration;

use integration_tests::{
    artifacts,
    packet::{Frame, TCP_ACK, TCP_SYN},
    program::*,
};
use lb_common::{Settings, PROTO_TCP};

const DEFAULT_REPEAT: u32 = 1_000_000;
const ROUNDS: usize = 1;

fn best_of(rounds: usize, mut run: impl FnMut() -> Duration) -> Duration {
    (0..rounds).map(|_| run()).min().unwrap_or_default()
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
    let mut h = Harness::new(&object, 20000, 29999);
    h.add_service(0, VIP, 80, PROTO_TCP, &[(0, WEB1, 80), (1, WEB2, 80)]);

    let syn = Frame::tcp(CLIENT, 40000, VIP, 80, TCP_SYN).macs(CLIENT_MAC, PUB_MAC);
    let (_, out) = h.run(h.pub_ifindex, &syn.build());
    let nat_port = u16::from_be_bytes([out[34], out[35]]);
    let backend = [out[30], out[31], out[32], out[33]];
    let established = Frame::tcp(CLIENT, 40000, VIP, 80, TCP_ACK)
        .macs(CLIENT_MAC, PUB_MAC)
        .payload(&[0u8; 64])
        .build();
    let reply = Frame::tcp(backend, 80, LB_PRIV, nat_port, TCP_ACK)
        .macs(WEB1_MAC, PRIV_MAC)
        .payload(&[0u8; 64])
        .build();
    let pass = Frame::tcp(CLIENT, 50000, LB_PUB, 22, TCP_ACK)
        .macs(CLIENT_MAC, PUB_MAC)
        .payload(&[0u8; 64])
        .build();

    // Every run must start from the original frame: the kernel's own
    // `repeat` feeds each run the frame the previous run rewrote (no longer
    // for the VIP), and live-frames mode recycles rewritten pages too. So
    // the frame is submitted `repeat` times, one run per call, and the
    // kernel's per-run times are averaged. Each run's action is checked, so
    // a benchmark never times an early exit.
    let measure = |h: &Harness, ifindex: u32, frame: &[u8], action: u32| {
        best_of(ROUNDS, || {
            let mut total = Duration::ZERO;
            for _ in 0..repeat {
                let (got, _, t) = h
                    .run_repeat(ifindex, frame, 1)
                    .unwrap_or_else(|e| panic!("test run: {e:?}"));
                assert_eq!(
                    got, action,
                    "benchmarked path returned an unexpected action"
                );
                total += t;
            }
            total / repeat.max(1)
        })
    };
    let t_established = measure(&h, h.pub_ifindex, &established, XDP_REDIRECT);
    let t_reply = measure(&h, h.priv_ifindex, &reply, XDP_REDIRECT);
    let t_pass = measure(&h, h.pub_ifindex, &pass, XDP_PASS);

    // New flow: with zero timeouts every SYN finds its previous entry
    // expired and takes the whole new-connection path (schedule, port
    // allocation, two conntrack inserts).
    let mut settings: Settings = h.ebpf_settings();
    settings.tcp_handshake_ns = 0;
    settings.tcp_established_ns = 0;
    settings.tcp_closing_ns = 0;
    h.set_settings(settings);
    let flows_before = h.service_counters(0).new_flows;
    let t_new = measure(&h, h.pub_ifindex, &syn.build(), XDP_REDIRECT);
    let new_flows = h.service_counters(0).new_flows - flows_before;
    assert!(
        new_flows >= u64::from(repeat) * ROUNDS as u64,
        "new-flow benchmark created only {new_flows} flows"
    );

    let trivial_h = Harness::with_program(&trivial, "trivial");
    let t_trivial = measure(&trivial_h, trivial_h.pub_ifindex, &established, XDP_TX);

    let ns = |d: Duration| d.as_nanos() as f64;
    let base = ns(t_trivial).max(1.0);
    println!("XDP program cost, BPF_PROG_TEST_RUN live frames, repeat {repeat}, best of {ROUNDS}:");
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
