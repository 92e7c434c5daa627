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
//!
//! With `XDP_BENCH_JIT=FILE` it also writes the program's JIT image
//! for `cargo xtask bench --profile`.
//!
//! `xdp-bench sync` compares only the opening of a flow (SYN and the
//! backend's SYN-ACK) with flow sync events on and off (the failover
//! section of `cargo xtask bench`).

use std::time::Duration;

use integration_tests::{
    artifacts,
    packet::{Frame, TCP_ACK, TCP_SYN},
    program::*,
};
use lb_common::{flow_state, FlowKey, FlowValue, Settings, HALF_OPEN_SLOTS, PROTO_TCP};

const DEFAULT_REPEAT: u32 = 1_000_000;
const ROUNDS: usize = 5;
const CLIENT_PORT: u16 = 40000;
/// NAT port range and table size; `conntrack_floor` draws from the same range.
const PORT_MIN: u16 = 20000;
const PORT_MAX: u16 = 60000;
const MAX_FLOWS: u32 = 65536;

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
    let args: Vec<String> = std::env::args().skip(1).collect();
    let sync_only = args.iter().any(|a| a == "sync");
    let repeat: u32 = args
        .iter()
        .find_map(|a| a.parse().ok())
        .unwrap_or(DEFAULT_REPEAT);
    let (Some(object), Some(trivial)) = (artifacts::lb_object(), artifacts::trivial_object())
    else {
        eprintln!("xdp-bench: objects missing or not root; run `cargo xtask bench`");
        std::process::exit(2);
    };
    // The lab's table size. New flows draw random NAT ports, so after the
    // first runs each replaces a stale entry, as on a busy node.
    let mut h = Harness::with_capacity(&object, PORT_MIN, PORT_MAX, MAX_FLOWS);
    let mut settings = h.ebpf_settings();
    settings.snat_addrs[0] = CLIENT;
    // The fixed-point frames keep the MACs the route lookup writes, so
    // those are "ours": the MAC check runs and accepts them.
    settings.public_mac = VIP_MAC;
    settings.private_mac = CLIENT_MAC;
    // XDP_BENCH_RING=N: N half-open ring slots per CPU (default: the whole ring).
    if let Some(ring) = std::env::var("XDP_BENCH_RING")
        .ok()
        .and_then(|v| v.parse().ok())
    {
        settings.half_open_per_cpu = ring;
    }
    h.set_settings(settings);
    h.add_service(0, VIP, 80, PROTO_TCP, &[(0, VIP, 80)]);
    // XDP_BENCH_JIT=FILE: the program's machine code to FILE and its
    // profile symbol to FILE.symbol (`cargo xtask bench --profile`).
    if let Some(path) = std::env::var_os("XDP_BENCH_JIT") {
        let path = std::path::PathBuf::from(path);
        let (symbol, image) = h.jit_image().expect("reading the JIT image");
        std::fs::write(&path, image).expect("writing the JIT image");
        std::fs::write(path.with_extension("symbol"), symbol).expect("writing its symbol");
    }
    // Every run must see this CPU's half-open ring and counters.
    stay_on_this_cpu();
    let (mut ring_h, ring_settings) = ring_cycle_harness(&object);
    let ring_syn = Frame::tcp(CLIENT, RING_PORT_MAX, VIP, 80, TCP_SYN)
        .macs(PUB_MAC, VIP_MAC)
        .build();
    let trivial_h = Harness::with_program(&trivial, "trivial", MAX_FLOWS);
    let floor_h = Harness::with_program(&trivial, "conntrack_floor", MAX_FLOWS);

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
    if sync_only {
        sync_comparison(&mut h, settings, &trivial_h, &established);
        return;
    }
    // XDP_BENCH_SKIP_NEW=1 leaves the new-flow path out (for experiments
    // on the other paths).
    let skip_new = std::env::var_os("XDP_BENCH_SKIP_NEW").is_some();

    // Every round measures every path once, so that the machine's slow
    // spells (a shared VM's neighbours) hit all paths alike; each path's
    // best round counts.
    let mut best = [Duration::MAX; 8];
    for _ in 0..ROUNDS {
        // The established flow's packets without the flow cache: each
        // looks the flow up in the hash, as a flow the cache misses does.
        h.set_settings(Settings {
            flow_cache_ttl_ns: 0,
            ..settings
        });
        insert_established_flow(&mut h);
        let uncached = time_path(&h, &established, XDP_TX, true, repeat);
        h.set_settings(settings);
        // New flows may have taken over the established flow's NAT port.
        insert_established_flow(&mut h);
        let mut times = [
            time_path(&trivial_h, &established, XDP_TX, false, repeat),
            time_path(&h, &established, XDP_TX, true, repeat),
            Duration::ZERO,
            time_path(&h, &reply, XDP_TX, true, repeat),
            time_path(&h, &pass, XDP_PASS, true, repeat),
            Duration::ZERO,
            Duration::ZERO,
            uncached,
        ];
        if !skip_new {
            times[2] = ring_cycle_new_flow_time(&mut ring_h, ring_settings, &ring_syn, repeat);
            times[5] = time_path(&floor_h, &syn, XDP_TX, true, repeat);
            times[6] = new_flow_time(&mut h, settings, &syn, repeat);
        }
        for (best, time) in best.iter_mut().zip(times) {
            *best = (*best).min(time);
        }
    }

    let ns = |d: Duration| d.as_nanos() as f64;
    let base = ns(best[0]).max(1.0);
    println!("XDP program cost, BPF_PROG_TEST_RUN repeat {repeat}, best of {ROUNDS}, same run:");
    println!("{:<28} {:>10} {:>10}", "path", "ns/packet", "x trivial");
    let names = [
        "trivial MAC swap (XDP_TX)",
        "established flow",
        "new flow",
        "reply direction",
        "non-VIP pass",
        "conntrack floor (new flow)",
        "new flow, evicting half-open",
        "established, no flow cache",
    ];
    for (name, t) in names.iter().zip(best) {
        println!("{:<28} {:>10.1} {:>10.2}", name, ns(t), ns(t) / base);
    }
    let verdict = |ok: bool| if ok { "met" } else { "MISSED" };
    let established_ratio = ns(best[1]) / base;
    let reply_ratio = ns(best[3]) / base;
    let new_vs_floor = ns(best[2]) / ns(best[5]).max(1.0);
    println!(
        "targets: established <= 3x trivial ({}), reply <= 3.5x trivial ({}), new flow <= 1.5x conntrack floor ({:.2}x, {})",
        verdict(established_ratio <= 3.0),
        verdict(reply_ratio <= 3.5),
        new_vs_floor,
        verdict(new_vs_floor <= 1.5),
    );
    if !skip_new {
        println!(
            "a new flow's two conntrack inserts alone cost {:.1}x the trivial program",
            ns(best[5]) / base
        );
        println!(
            "a new flow that first ends a half-open one (a SYN flood's steady state) costs {:.2}x the conntrack floor",
            ns(best[6]) / ns(best[5]).max(1.0)
        );
    }
}

/// NAT ports of the ring-cycle harness: exactly one half-open ring's worth.
const RING_PORT_MIN: u16 = PORT_MIN;
const RING_PORT_MAX: u16 = PORT_MIN + (HALF_OPEN_SLOTS - 1) as u16;

/// A balancer whose new-flow runs never end a half-open flow, as on a
/// node that is not under a SYN flood. Each run's SYN comes from the NAT
/// port the previous run gave out (the rewrite leaves it so), and with as
/// many NAT ports as half-open ring slots the ports, the client keys and
/// the ring come round together: the slot a flow takes holds the flow it
/// replaces in place. Without that, each run's slot would hold another
/// still half-open flow of the loop, and every run would also end one.
fn ring_cycle_harness(object: &std::path::Path) -> (Harness, Settings) {
    let mut h = Harness::with_capacity(object, RING_PORT_MIN, RING_PORT_MAX, MAX_FLOWS);
    let mut settings = h.ebpf_settings();
    settings.snat_addrs[0] = CLIENT;
    settings.public_mac = VIP_MAC;
    settings.private_mac = CLIENT_MAC;
    settings.half_open_per_cpu = HALF_OPEN_SLOTS;
    h.set_settings(settings);
    h.add_service(0, VIP, 80, PROTO_TCP, &[(0, VIP, 80)]);
    (h, settings)
}

/// `new_flow_time` on the ring-cycle harness, checking that no run ended a
/// half-open flow or ran out of ports (either would time another path).
/// Each call starts from the same SYN, so each call's runs (the checked
/// one and the timed ones) must fill whole rounds of the ring: `repeat`
/// is rounded up to one less than a multiple of the ring's length.
fn ring_cycle_new_flow_time(
    h: &mut Harness,
    settings: Settings,
    syn: &[u8],
    repeat: u32,
) -> Duration {
    let repeat = (repeat + 1).div_ceil(HALF_OPEN_SLOTS) * HALF_OPEN_SLOTS - 1;
    let evicted = h.half_open_evicted();
    let exhausted = h.reason_count(lb_common::Reason::DropPortExhausted);
    let time = new_flow_time(h, settings, syn, repeat);
    assert_eq!(
        h.half_open_evicted(),
        evicted,
        "the ring-cycle new flows ended half-open flows"
    );
    assert_eq!(
        h.reason_count(lb_common::Reason::DropPortExhausted),
        exhausted,
        "the ring-cycle new flows ran out of NAT ports"
    );
    time
}

/// A tracked flow whose NAT rewrite is a fixed point (see the top).
fn insert_established_flow(h: &mut Harness) {
    h.insert_flow(
        key(CLIENT, CLIENT_PORT, VIP, 80),
        FlowValue {
            backend_addr: VIP,
            backend_port: 80,
            lb_port: CLIENT_PORT,
            backend_id: 0,
            service_id: 0,
            state: flow_state::TCP_ESTABLISHED,
            snat_index: 0,
            _pad: 0,
            port_pool: 0,
            last_seen_ns: monotonic_ns(),
            to_backend: Default::default(),
            ts_delta: 0,
            _pad_ts: 0,
        },
        key(VIP, 80, CLIENT, CLIENT_PORT),
    );
}

/// Mean time per run of `frame`, `repeat` runs. The path is first run once
/// and must take the action it should and (if `fixed_point`) leave the
/// frame as it found it, so the timed runs repeat exactly that path. On the
/// balancer (`h` with counters) no run may answer with a RST and every run
/// must be counted.
fn time_path(h: &Harness, frame: &[u8], action: u32, fixed_point: bool, repeat: u32) -> Duration {
    let counters = h.has_map(lb_common::map_names::REASONS);
    let counted = |reason: Option<lb_common::Reason>| -> u64 {
        if !counters {
            return 0;
        }
        match reason {
            Some(reason) => h.reason_count(reason),
            None => lb_common::Reason::ALL
                .iter()
                .map(|r| h.reason_count(*r))
                .sum(),
        }
    };
    let rst_before = counted(Some(lb_common::Reason::RstNoFlow));
    let (got, out) = h.run(h.pub_ifindex, frame);
    assert_eq!(
        counted(Some(lb_common::Reason::RstNoFlow)),
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
    let before = counted(None);
    // The timed runs go on from the frame the checked run left, as they go
    // on from each other's.
    let time = h
        .run_repeat(h.pub_ifindex, &out, repeat)
        .unwrap_or_else(|e| panic!("test run: {e:?}"))
        .2;
    if counters {
        assert!(
            counted(None) - before >= u64::from(repeat),
            "the program counted fewer packets than it ran"
        );
    }
    time
}

/// Time per new flow: with zero timeouts every SYN finds any earlier entry
/// expired and takes the whole new-connection path (schedule, port
/// allocation, two conntrack inserts, route lookup).
fn new_flow_time(h: &mut Harness, settings: Settings, syn: &[u8], repeat: u32) -> Duration {
    let flows_before = h.service_counters(0).new_flows;
    h.set_settings(Settings {
        tcp_handshake_ns: 0,
        tcp_established_ns: 0,
        tcp_closing_ns: 0,
        ..settings
    });
    let time = time_path(h, syn, XDP_TX, false, repeat);
    let new_flows = h.service_counters(0).new_flows - flows_before;
    assert!(
        new_flows > u64::from(repeat),
        "new-flow benchmark created only {new_flows} flows in {repeat} runs"
    );
    time
}

/// Flows per batch of the flow-opening comparison, from client ports
/// below the NAT range; the agent's way of ending them between batches
/// gives their NAT ports back, so every batch opens flows afresh.
const OPEN_BATCH: u16 = 2048;
const OPEN_CLIENT_PORT: u16 = 1024;
const OPEN_BATCHES_PER_ROUND: u32 = 4;

/// One run of `frame` (not repeated, since each packet of a handshake
/// changes the flow): the kernel's time for it and the frame it left.
fn single_run(h: &Harness, frame: &[u8]) -> (Duration, Vec<u8>) {
    let (action, out, time) = h
        .run_repeat(h.pub_ifindex, frame, 1)
        .unwrap_or_else(|e| panic!("test run: {e:?}"));
    assert_eq!(
        action, XDP_TX,
        "a packet of the handshake was not forwarded"
    );
    (time, out)
}

/// The kernel's time for one run of the trivial program, measured the same
/// way: what timing a single run adds to any program (the clock reads).
fn single_run_overhead(trivial: &Harness, frame: &[u8]) -> Duration {
    let runs = u32::from(OPEN_BATCH);
    let total: Duration = (0..runs).map(|_| single_run(trivial, frame).0).sum();
    total / runs
}

/// Opens `OPEN_BATCH` flows, each by the client's SYN and the backend's
/// SYN-ACK (its first answer): their total time and the sync events they
/// wrote. Then ends them as the agent does.
fn open_batch(h: &mut Harness, settings: Settings, sync_events: u32) -> (Duration, usize) {
    h.set_settings(Settings {
        sync_events,
        ..settings
    });
    let mut total = Duration::ZERO;
    let mut clients = Vec::with_capacity(usize::from(OPEN_BATCH));
    for client_port in OPEN_CLIENT_PORT..OPEN_CLIENT_PORT + OPEN_BATCH {
        let syn = Frame::tcp(CLIENT, client_port, VIP, 80, TCP_SYN)
            .macs(PUB_MAC, VIP_MAC)
            .build();
        let (time, towards_backend) = single_run(h, &syn);
        total += time;
        // Ethernet (14) and an IPv4 header without options (20): the
        // source port the program gave the flow.
        let nat_port = u16::from_be_bytes([towards_backend[34], towards_backend[35]]);
        let syn_ack = Frame::tcp(VIP, 80, CLIENT, nat_port, TCP_SYN | TCP_ACK)
            .macs(PUB_MAC, CLIENT_MAC)
            .build();
        total += single_run(h, &syn_ack).0;
        clients.push(key(CLIENT, client_port, VIP, 80));
    }
    for client in &clients {
        assert_eq!(
            h.flow(client).map(|flow| flow.state),
            Some(flow_state::TCP_SYN_ACKED),
            "the SYN-ACK did not reach the flow it answers"
        );
        h.remove_flow_as_agent(client);
    }
    (total, h.take_flow_events().len())
}

/// Opening a flow (SYN and first answer) with `sync_events` off and on,
/// alternating batches so that both see the same machine; each side's best
/// round counts. Times are above the trivial program timed the same way.
fn sync_comparison(h: &mut Harness, settings: Settings, trivial: &Harness, frame: &[u8]) {
    let overhead = single_run_overhead(trivial, frame);
    let flows_per_round = OPEN_BATCHES_PER_ROUND * u32::from(OPEN_BATCH);
    let mut best = [Duration::MAX; 2];
    let mut events = [0usize; 2];
    let lost_before = h.flow_events_lost();
    for _ in 0..ROUNDS {
        let mut total = [Duration::ZERO; 2];
        for _ in 0..OPEN_BATCHES_PER_ROUND {
            for (side, sync_events) in [0u32, 1].into_iter().enumerate() {
                let (time, written) = open_batch(h, settings, sync_events);
                total[side] += time.saturating_sub(overhead * 2 * u32::from(OPEN_BATCH));
                events[side] += written;
            }
        }
        for (best, total) in best.iter_mut().zip(total) {
            *best = (*best).min(total / flows_per_round);
        }
    }
    assert_eq!(
        h.flow_events_lost() - lost_before,
        0,
        "the event ring overflowed: the runs timed lost events"
    );
    let flows = (ROUNDS as u32 * flows_per_round) as f64;
    assert_eq!(events[0], 0, "sync off wrote events");
    assert!(
        events[1] as f64 >= flows,
        "sync on wrote {} events for {flows} flows",
        events[1]
    );
    let ns = |d: Duration| d.as_nanos() as f64;
    let (off, on) = (ns(best[0]), ns(best[1]));
    println!(
        "opening a flow (its SYN and the backend's SYN-ACK), BPF_PROG_TEST_RUN one run per packet, \
         {OPEN_BATCHES_PER_ROUND} x {OPEN_BATCH} flows per round, best of {ROUNDS}, same run:"
    );
    println!(
        "{:<28} {:>10} {:>12}",
        "flow sync events", "ns/flow", "events/flow"
    );
    for (name, time, written) in [("off", off, events[0]), ("on", on, events[1])] {
        println!("{name:<28} {time:>10.1} {:>12.2}", written as f64 / flows);
    }
    println!(
        "(each packet's time less {} ns, the trivial program's single run timed the same way)",
        overhead.as_nanos()
    );
    let extra = 100.0 * (on / off.max(1.0) - 1.0);
    println!(
        "target: sync on <= 10% above off ({extra:+.1}%, {})",
        if extra <= 10.0 { "met" } else { "MISSED" }
    );
}
