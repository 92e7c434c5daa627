//! Program tests: the real XDP object run through BPF_PROG_TEST_RUN on
//! crafted frames, as a table of {name, input, expected action, expected
//! output} (after Katran's testing fixtures), plus stateful sequences.

use integration_tests::{
    artifacts,
    packet::{
        arp_request, assert_checksums_valid, ipv6_frame, Frame, L4, TCP_ACK, TCP_FIN, TCP_PSH,
        TCP_RST, TCP_SYN,
    },
    program::*,
};
use lb_agent::dataplane::port_pools::Endpoint;
use lb_common::{flow_state, reply_claim, FlowKey, Reason, Settings, PROTO_TCP, PROTO_UDP};

const NAT_PORT: u16 = 20000;

/// A harness with `www` (TCP 80 -> web1, web2), `dns` (UDP 5353 -> web1)
/// and `empty` (TCP 443, no backends), NAT range of one port so outputs are
/// exact.
fn lab_harness() -> Option<Harness> {
    lab_harness_with_ports(1)
}

/// The lab's services with `nat_ports` NAT ports per backend from `NAT_PORT` on.
fn lab_harness_with_ports(nat_ports: u16) -> Option<Harness> {
    let object = artifacts::lb_object()?;
    let mut h = Harness::new(&object, NAT_PORT, NAT_PORT + nat_ports - 1);
    h.add_service(0, VIP, 80, PROTO_TCP, &[(0, WEB1, 80), (1, WEB2, 80)]);
    h.add_service(1, VIP, 5353, PROTO_UDP, &[(2, WEB1, 5353)]);
    h.add_service(2, VIP, 443, PROTO_TCP, &[]);
    Some(h)
}

/// A harness with www (TCP 80) on web1 alone and NAT ports
/// `port_min..=port_max`.
fn web1_harness(port_min: u16, port_max: u16) -> Option<Harness> {
    let object = artifacts::lb_object()?;
    let mut h = Harness::new(&object, port_min, port_max);
    h.add_service(0, VIP, 80, PROTO_TCP, &[(0, WEB1, 80)]);
    Some(h)
}

/// The flow-table key of the client's connection from `sport` to www.
fn client_key(sport: u16) -> FlowKey {
    FlowKey {
        src_addr: CLIENT,
        dst_addr: VIP,
        src_port: sport,
        dst_port: 80,
        proto: PROTO_TCP,
        _pad: [0; 3],
    }
}

fn client_syn(sport: u16) -> Frame {
    Frame::tcp(CLIENT, sport, VIP, 80, TCP_SYN).macs(CLIENT_MAC, PUB_MAC)
}

struct Case {
    name: &'static str,
    input: Vec<u8>,
    ingress_public: bool,
    action: u32,
    /// `None`: the frame must come out unchanged.
    output: Option<Vec<u8>>,
    reason: Reason,
}

#[test]
fn stateless_table() {
    let Some(h) = lab_harness() else { return };
    let syn = client_syn(40000).build();
    let mut fragment = Frame::tcp(CLIENT, 40001, VIP, 80, TCP_SYN)
        .macs(CLIENT_MAC, PUB_MAC)
        .build();
    fragment[14 + 6] = 0x20; // more fragments
    let mut later_fragment = fragment.clone();
    later_fragment[14 + 6] = 0x00;
    later_fragment[14 + 7] = 0x10; // offset 16 * 8
    let mut fragment_elsewhere = Frame::tcp(CLIENT, 40001, LB_PUB, 80, TCP_SYN)
        .macs(CLIENT_MAC, PUB_MAC)
        .build();
    fragment_elsewhere[14 + 6] = 0x20;
    let mut options = syn.clone();
    options[14] = 0x46; // IHL 6: one word of options
    let arp = arp_request(CLIENT_MAC, CLIENT, LB_PUB);
    let ipv6 = ipv6_frame(CLIENT_MAC, PUB_MAC);
    let ssh = Frame::tcp(CLIENT, 50000, LB_PUB, 22, TCP_SYN)
        .macs(CLIENT_MAC, PUB_MAC)
        .build();
    let other_port = Frame::tcp(CLIENT, 50000, VIP, 8080, TCP_SYN)
        .macs(CLIENT_MAC, PUB_MAC)
        .build();
    let icmp = {
        let mut f = ssh.clone();
        f[14 + 9] = 1;
        f
    };
    let udp_no_service = Frame::udp(CLIENT, 5000, VIP, 5354)
        .macs(CLIENT_MAC, PUB_MAC)
        .build();
    let stray_reply = Frame::tcp(WEB1, 80, LB_PRIV, NAT_PORT, TCP_SYN | TCP_ACK)
        .macs(WEB1_MAC, PRIV_MAC)
        .build();

    // Length fields that disagree with the frame or the headers, each as
    // the kernel's ip_rcv / tcp_v4_rcv / udp_rcv would refuse it.
    let with_be16 = |frame: &[u8], at: usize, value: u16| {
        let mut f = frame.to_vec();
        f[at..at + 2].copy_from_slice(&value.to_be_bytes());
        f
    };
    let with_byte = |frame: &[u8], at: usize, value: u8| {
        let mut f = frame.to_vec();
        f[at] = value;
        f
    };
    const TOT_LEN: usize = 14 + 2;
    const TCP_DATA_OFFSET: usize = 34 + 12;
    const UDP_LEN: usize = 34 + 4;
    let syn_len = (syn.len() - 14) as u16;
    let udp = Frame::udp(CLIENT, 5000, VIP, 5353)
        .macs(CLIENT_MAC, PUB_MAC)
        .payload(b"query")
        .build();
    let udp_len = (udp.len() - 34) as u16;
    let udp_header_only = {
        // Cut right after the UDP header; both lengths still claim the payload.
        let mut f = udp.clone();
        f.truncate(42);
        f
    };
    let ssh_len = (ssh.len() - 14) as u16;
    let ssh_bad_length = with_be16(&ssh, TOT_LEN, ssh_len + 1);
    let bad_lengths = [
        (
            "IPv4 total length past the frame",
            with_be16(&syn, TOT_LEN, syn_len + 1),
        ),
        (
            "IPv4 total length shorter than IP + TCP headers",
            with_be16(&syn, TOT_LEN, 39),
        ),
        (
            "IPv4 total length shorter than the IP header",
            with_be16(&syn, TOT_LEN, 19),
        ),
        (
            "TCP data offset below 5",
            with_byte(&syn, TCP_DATA_OFFSET, 0x40),
        ),
        (
            "TCP data offset past the packet",
            with_byte(&syn, TCP_DATA_OFFSET, 0xf0),
        ),
        (
            "UDP length past the datagram",
            with_be16(&udp, UDP_LEN, udp_len + 1),
        ),
        ("UDP length below its header", with_be16(&udp, UDP_LEN, 7)),
        ("UDP datagram cut after its header", udp_header_only),
    ];

    // The master's MAC, flooded to this (backup) node by a switch.
    let flooded = Frame::tcp(CLIENT, 40002, VIP, 80, TCP_SYN)
        .macs(CLIENT_MAC, [0x02, 0, 0, 0, 0x01, 0x12])
        .build();

    let mut cases = vec![
        Case {
            name: "a SYN for the VIP to another node's MAC passes untouched",
            input: flooded,
            ingress_public: true,
            action: XDP_PASS,
            output: None,
            reason: Reason::PassOtherHost,
        },
        Case {
            name: "ARP passes untouched",
            input: arp,
            ingress_public: true,
            action: XDP_PASS,
            output: None,
            reason: Reason::PassNotIpv4,
        },
        Case {
            name: "IPv6 passes untouched",
            input: ipv6,
            ingress_public: true,
            action: XDP_PASS,
            output: None,
            reason: Reason::PassNotIpv4,
        },
        Case {
            name: "SSH to the node passes untouched",
            input: ssh,
            ingress_public: true,
            action: XDP_PASS,
            output: None,
            reason: Reason::PassNotService,
        },
        Case {
            name: "ICMP passes untouched",
            input: icmp,
            ingress_public: true,
            action: XDP_PASS,
            output: None,
            reason: Reason::PassNotService,
        },
        Case {
            name: "unknown TCP port on the VIP passes",
            input: other_port,
            ingress_public: true,
            action: XDP_PASS,
            output: None,
            reason: Reason::PassNotService,
        },
        Case {
            name: "unknown UDP port on the VIP passes",
            input: udp_no_service,
            ingress_public: true,
            action: XDP_PASS,
            output: None,
            reason: Reason::PassNotService,
        },
        Case {
            name: "first fragment to a VIP is dropped",
            input: fragment,
            ingress_public: true,
            action: XDP_DROP,
            output: None,
            reason: Reason::DropFragment,
        },
        Case {
            name: "later fragment to a VIP is dropped",
            input: later_fragment,
            ingress_public: true,
            action: XDP_DROP,
            output: None,
            reason: Reason::DropFragment,
        },
        Case {
            name: "fragment to another address passes",
            input: fragment_elsewhere,
            ingress_public: true,
            action: XDP_PASS,
            output: None,
            reason: Reason::PassNotService,
        },
        Case {
            name: "IP options to a VIP are dropped",
            input: options,
            ingress_public: true,
            action: XDP_DROP,
            output: None,
            reason: Reason::DropIpOptions,
        },
        Case {
            name: "reply to an untracked NAT port passes",
            input: stray_reply,
            ingress_public: false,
            action: XDP_PASS,
            output: None,
            reason: Reason::PassReplyNoFlow,
        },
    ];
    cases.push(Case {
        name: "a segment without a flow sent to the broadcast MAC gets no RST",
        input: Frame::tcp(CLIENT, 40003, VIP, 80, TCP_ACK)
            .macs(CLIENT_MAC, [0xff; 6])
            .build(),
        ingress_public: true,
        action: XDP_DROP,
        output: None,
        reason: Reason::RstNoFlow,
    });
    for (name, input) in bad_lengths {
        cases.push(Case {
            name,
            input,
            ingress_public: true,
            action: XDP_DROP,
            output: None,
            reason: Reason::DropBadLength,
        });
    }
    cases.push(Case {
        name: "a bad total length to another address passes untouched",
        input: ssh_bad_length,
        ingress_public: true,
        action: XDP_PASS,
        output: None,
        reason: Reason::PassBadLength,
    });
    for case in cases {
        let before = h.reason_count(case.reason);
        let ingress = if case.ingress_public {
            h.pub_ifindex
        } else {
            h.priv_ifindex
        };
        let (action, out) = h.run(ingress, &case.input);
        assert_eq!(action, case.action, "{}: action", case.name);
        let expected = case.output.as_ref().unwrap_or(&case.input);
        assert_eq!(&out, expected, "{}: output frame", case.name);
        assert_eq!(
            h.reason_count(case.reason),
            before + 1,
            "{}: reason {:?} counted",
            case.name,
            case.reason
        );
    }
}

#[test]
fn truncated_at_every_offset() {
    let Some(h) = lab_harness() else { return };
    let full = client_syn(40000).build();
    // The kernel refuses test frames shorter than an Ethernet header.
    for len in 14..full.len() {
        let cut = &full[..len];
        let (action, out) = h.run(h.pub_ifindex, cut);
        // Up to the end of the IPv4 header the destination is unknown: the
        // stack judges it. With the VIP visible but TCP cut short: dropped.
        let expected = if len < 34 { XDP_PASS } else { XDP_DROP };
        assert_eq!(action, expected, "frame cut at {len} bytes");
        assert_eq!(out, cut, "frame cut at {len} bytes must stay untouched");
    }
    assert_eq!(h.flow_count(), 0, "no flow from truncated frames");
}

#[test]
fn ethernet_padding_is_not_payload() {
    let Some(h) = lab_harness() else { return };
    // A SYN is 54 bytes; Ethernet pads it to 60 on the wire.
    let syn = client_syn(40000);
    let mut padded = syn.build();
    padded.extend_from_slice(&[0xee; 6]);
    let (action, out) = h.run(h.pub_ifindex, &padded);
    assert_eq!(action, XDP_REDIRECT, "a padded SYN is a valid SYN");
    let mut expected = syn
        .macs(PRIV_MAC, WEB1_MAC)
        .rewritten(LB_PRIV, NAT_PORT, WEB1, 80)
        .build();
    expected.extend_from_slice(&[0xee; 6]);
    assert_eq!(
        out, expected,
        "padding left as padding, outside the IP packet"
    );
    assert_checksums_valid(&out);
    assert_eq!(
        h.service_counters(0).bytes,
        54 - 14,
        "traffic counted by the IP total length"
    );
}

#[test]
fn new_flow_established_and_reply_are_full_nated() {
    let Some(h) = lab_harness() else { return };

    // New connection: client -> VIP becomes LB -> web1 from the NAT port.
    let syn = client_syn(40000);
    let (action, out) = h.run(h.pub_ifindex, &syn.build());
    assert_eq!(action, XDP_REDIRECT, "different egress interface: redirect");
    let expected = syn
        .clone()
        .macs(PRIV_MAC, WEB1_MAC)
        .rewritten(LB_PRIV, NAT_PORT, WEB1, 80)
        .build();
    assert_eq!(out, expected);
    assert_checksums_valid(&out);
    let key = client_key(40000);
    let flow = h.flow(&key).expect("flow tracked");
    assert_eq!(
        (flow.backend_addr, flow.backend_port, flow.lb_port),
        (WEB1, 80, NAT_PORT)
    );
    assert_eq!(flow.state, flow_state::TCP_HANDSHAKE);

    // Reply: web1 -> LB:NAT_PORT becomes VIP -> client.
    let synack =
        Frame::tcp(WEB1, 80, LB_PRIV, NAT_PORT, TCP_SYN | TCP_ACK).macs(WEB1_MAC, PRIV_MAC);
    let (action, out) = h.run(h.priv_ifindex, &synack.build());
    assert_eq!(action, XDP_REDIRECT);
    let expected = synack
        .macs(PUB_MAC, CLIENT_MAC)
        .rewritten(VIP, 80, CLIENT, 40000)
        .build();
    assert_eq!(out, expected);
    assert_checksums_valid(&out);
    // The backend answered; the client has not completed the handshake.
    assert_eq!(h.flow(&key).expect("flow").state, flow_state::TCP_SYN_ACKED);

    // The client's ACK (with its request): established, sticks to web1 and
    // keeps checksums right.
    let data = Frame::tcp(CLIENT, 40000, VIP, 80, TCP_ACK | TCP_PSH)
        .macs(CLIENT_MAC, PUB_MAC)
        .payload(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n");
    let (action, out) = h.run(h.pub_ifindex, &data.build());
    assert_eq!(action, XDP_REDIRECT);
    assert_eq!(
        out,
        data.macs(PRIV_MAC, WEB1_MAC)
            .rewritten(LB_PRIV, NAT_PORT, WEB1, 80)
            .build()
    );
    assert_checksums_valid(&out);
    assert_eq!(
        h.flow(&key).expect("flow").state,
        flow_state::TCP_ESTABLISHED
    );

    // The client's FIN half-closes; the backend's FIN closes.
    let fin = Frame::tcp(CLIENT, 40000, VIP, 80, TCP_FIN | TCP_ACK).macs(CLIENT_MAC, PUB_MAC);
    assert_eq!(h.run(h.pub_ifindex, &fin.build()).0, XDP_REDIRECT);
    assert_eq!(
        h.flow(&key).expect("flow").state,
        flow_state::TCP_FIN_FROM_CLIENT
    );
    let fin_back =
        Frame::tcp(WEB1, 80, LB_PRIV, NAT_PORT, TCP_FIN | TCP_ACK).macs(WEB1_MAC, PRIV_MAC);
    assert_eq!(h.run(h.priv_ifindex, &fin_back.build()).0, XDP_REDIRECT);
    assert_eq!(h.flow(&key).expect("flow").state, flow_state::TCP_CLOSING);

    let service = h.service_counters(0);
    assert_eq!(service.new_flows, 1);
    assert_eq!(service.packets, 5);
    assert_eq!(h.backend_counters(0).packets, 5);
    assert_eq!(h.backend_counters(1).packets, 0);
    assert_eq!(h.reason_count(Reason::ForwardedToBackend), 3);
    assert_eq!(h.reason_count(Reason::ForwardedToClient), 2);
}

#[test]
fn udp_with_and_without_checksum() {
    let Some(h) = lab_harness() else { return };
    let query = Frame::udp(CLIENT, 33333, VIP, 5353).macs(CLIENT_MAC, PUB_MAC);
    let (action, out) = h.run(h.pub_ifindex, &query.build());
    assert_eq!(action, XDP_REDIRECT);
    assert_eq!(
        out,
        query
            .macs(PRIV_MAC, WEB1_MAC)
            .rewritten(LB_PRIV, NAT_PORT, WEB1, 5353)
            .build()
    );
    assert_checksums_valid(&out);

    let answer = Frame::udp(WEB1, 5353, LB_PRIV, NAT_PORT)
        .macs(WEB1_MAC, PRIV_MAC)
        .payload(b"web1\n");
    let (action, out) = h.run(h.priv_ifindex, &answer.build());
    assert_eq!(action, XDP_REDIRECT);
    assert_eq!(
        out,
        answer
            .macs(PUB_MAC, CLIENT_MAC)
            .rewritten(VIP, 5353, CLIENT, 33333)
            .build()
    );
    assert_checksums_valid(&out);

    // A datagram without checksum keeps "no checksum" (zero) after NAT.
    let mut unchecked = Frame::udp(CLIENT, 33333, VIP, 5353).macs(CLIENT_MAC, PUB_MAC);
    unchecked.l4 = L4::Udp {
        sport: 33333,
        dport: 5353,
        zero_checksum: true,
    };
    let (action, out) = h.run(h.pub_ifindex, &unchecked.build());
    assert_eq!(action, XDP_REDIRECT);
    assert_eq!(
        &out[14 + 20 + 6..14 + 20 + 8],
        &[0, 0],
        "zero UDP checksum preserved"
    );
    assert_eq!(
        out,
        unchecked
            .macs(PRIV_MAC, WEB1_MAC)
            .rewritten(LB_PRIV, NAT_PORT, WEB1, 5353)
            .build()
    );
}

#[test]
fn no_backend_answers_syn_with_rst_and_drops_udp() {
    let Some(mut h) = lab_harness() else { return };
    let syn = Frame::tcp(CLIENT, 40000, VIP, 443, TCP_SYN).macs(CLIENT_MAC, PUB_MAC);
    let (action, out) = h.run(h.pub_ifindex, &syn.build());
    assert_eq!(action, XDP_TX, "RST goes back out of the ingress interface");
    let mut expected =
        Frame::tcp(VIP, 443, CLIENT, 40000, TCP_RST | TCP_ACK).macs(PUB_MAC, CLIENT_MAC);
    expected.l4 = L4::Tcp {
        sport: 443,
        dport: 40000,
        seq: 0,
        ack: 1001,
        flags: TCP_RST | TCP_ACK,
    };
    expected.ttl = 64;
    assert_checksums_valid(&out);
    // Compare everything but the IP id (ours is 0) and the window (ours is 0).
    let built = expected.build();
    assert_eq!(out.len(), built.len(), "RST frame length");
    assert_eq!(&out[..14], &built[..14], "MACs swapped");
    assert_eq!(
        &out[14 + 12..14 + 20],
        &built[14 + 12..14 + 20],
        "addresses swapped"
    );
    assert_eq!(
        &out[34..34 + 14],
        &built[34..34 + 14],
        "ports, seq, ack, flags"
    );
    assert_eq!(h.reason_count(Reason::RstNoBackend), 1);
    assert_eq!(h.service_counters(2).rejected, 1, "counted per service");

    // A SYN carrying data is answered with ack = seq + 1 + data length.
    let syn_data = syn.clone().payload(b"hello");
    let (action, out) = h.run(h.pub_ifindex, &syn_data.build());
    assert_eq!(action, XDP_TX);
    assert_eq!(
        u32::from_be_bytes([out[42], out[43], out[44], out[45]]),
        1000 + 1 + 5
    );
    assert_eq!(out.len(), 54, "payload trimmed from the RST");
    assert_checksums_valid(&out);

    // A RST is never answered.
    let rst = Frame::tcp(CLIENT, 40000, VIP, 443, TCP_RST)
        .macs(CLIENT_MAC, PUB_MAC)
        .build();
    assert_eq!(h.run(h.pub_ifindex, &rst).0, XDP_DROP);

    // UDP to a service without backends is dropped and counted.
    h.add_service(3, VIP, 5300, PROTO_UDP, &[]);
    let query = Frame::udp(CLIENT, 1000, VIP, 5300)
        .macs(CLIENT_MAC, PUB_MAC)
        .build();
    assert_eq!(h.run(h.pub_ifindex, &query).0, XDP_DROP);
    assert_eq!(h.reason_count(Reason::DropNoBackend), 1);
}

#[test]
fn untracked_mid_stream_segment_gets_rst() {
    let Some(h) = lab_harness() else { return };
    let ack = Frame::tcp(CLIENT, 41000, VIP, 80, TCP_ACK | TCP_PSH)
        .macs(CLIENT_MAC, PUB_MAC)
        .payload(b"data");
    let (action, out) = h.run(h.pub_ifindex, &ack.build());
    assert_eq!(action, XDP_TX);
    assert_checksums_valid(&out);
    assert_eq!(
        out[34 + 13],
        TCP_RST,
        "RST without ACK when the segment had ACK"
    );
    assert_eq!(
        u32::from_be_bytes([out[38], out[39], out[40], out[41]]),
        5000,
        "seq = segment's ack"
    );
    assert_eq!(h.reason_count(Reason::RstNoFlow), 1);
    assert_eq!(h.flow_count(), 0);
}

#[test]
fn round_robin_alternates_and_flows_stick() {
    let Some(object) = artifacts::lb_object() else {
        return;
    };
    let mut h = Harness::new(&object, 20000, 29999);
    h.add_service(0, VIP, 80, PROTO_TCP, &[(0, WEB1, 80), (1, WEB2, 80)]);
    let mut ports = std::collections::HashSet::new();
    let mut per_backend = [0u32; 2];
    for sport in 40000..40040u16 {
        let (action, out) = h.run(h.pub_ifindex, &client_syn(sport).build());
        assert_eq!(action, XDP_REDIRECT);
        assert_checksums_valid(&out);
        let dst = [out[30], out[31], out[32], out[33]];
        let nat_port = u16::from_be_bytes([out[34], out[35]]);
        assert!(
            (20000..=29999).contains(&nat_port),
            "NAT port {nat_port} in range"
        );
        // A NAT port may serve several backends, never two live flows to one.
        assert!(
            ports.insert((dst, nat_port)),
            "NAT port {nat_port} handed out twice towards {dst:?}"
        );
        per_backend[usize::from(dst == WEB2)] += 1;
        // The same connection's next segment goes to the same backend.
        let again = Frame::tcp(CLIENT, sport, VIP, 80, TCP_ACK).macs(CLIENT_MAC, PUB_MAC);
        let (_, out2) = h.run(h.pub_ifindex, &again.build());
        assert_eq!(
            &out2[30..36],
            &out[30..36],
            "flow sticks to its backend and port"
        );
    }
    // BPF_PROG_TEST_RUN runs on one CPU, so the per-CPU cursor alternates exactly.
    assert_eq!(per_backend, [20, 20]);
}

#[test]
fn services_with_more_backends_than_the_old_ring_serve_every_backend() {
    let Some(object) = artifacts::lb_object() else {
        return;
    };
    // 257 overflowed the 256-slot ring of before (every SYN got a RST);
    // MAX_BACKENDS is the most one service can have. The backends share
    // two endpoints (and so two port pools) to keep the set-up short; the
    // per-backend counters tell them apart.
    for count in [257u32, lb_common::MAX_BACKENDS] {
        let mut h = Harness::with_capacity(&object, 20000, 29999, 8192);
        let backends: Vec<(u32, [u8; 4], u16)> = (0..count)
            .map(|id| (id, WEB1, 8000 + (id % 2) as u16))
            .collect();
        h.add_service(0, VIP, 80, PROTO_TCP, &backends);
        for i in 0..count {
            let (action, _) = h.run(h.pub_ifindex, &client_syn(30000 + i as u16).build());
            assert_eq!(action, XDP_REDIRECT, "{count} backends: SYN {i}");
        }
        for id in 0..count {
            assert_eq!(
                h.backend_counters(id).new_flows,
                1,
                "{count} backends: backend {id} got one connection"
            );
        }
    }
}

#[test]
fn a_shortened_ring_is_walked_from_its_start() {
    let Some(mut h) = lab_harness_with_ports(4) else {
        return;
    };
    let three = [(0, WEB1, 80), (1, WEB2, 80), (3, WEB1, 81)];
    h.add_service(0, VIP, 80, PROTO_TCP, &three);
    let backend_of = |h: &Harness, sport: u16| {
        let (action, out) = h.run(h.pub_ifindex, &client_syn(sport).build());
        assert_eq!(action, XDP_REDIRECT, "SYN from {sport}");
        (
            [out[30], out[31], out[32], out[33]],
            u16::from_be_bytes([out[36], out[37]]),
        )
    };
    let picks = on_cpu(0, || {
        let before = [backend_of(&h, 41000), backend_of(&h, 41001)];
        // The third backend goes: the ring is two long now, while this
        // CPU's cursor stands at its old third slot, which still names it.
        h.add_service(0, VIP, 80, PROTO_TCP, &three[..2]);
        let after = [backend_of(&h, 41002), backend_of(&h, 41003)];
        (before, after)
    })
    .expect("CPU 0");
    assert_eq!(picks.0, [(WEB1, 80), (WEB2, 80)]);
    assert_eq!(
        picks.1,
        [(WEB1, 80), (WEB2, 80)],
        "never the removed backend"
    );
}

#[test]
fn port_exhaustion_is_counted_not_misforwarded() {
    let Some(h) = web1_harness(20000, 20001) else {
        return;
    };
    let mut used = Vec::new();
    for sport in [40000u16, 40001] {
        let (action, out) = h.run(h.pub_ifindex, &client_syn(sport).build());
        assert_eq!(action, XDP_REDIRECT);
        used.push(u16::from_be_bytes([out[34], out[35]]));
    }
    used.sort_unstable();
    assert_eq!(used, vec![20000, 20001]);
    let (action, _) = h.run(h.pub_ifindex, &client_syn(40002).build());
    assert_eq!(action, XDP_DROP);
    assert_eq!(h.reason_count(Reason::DropPortExhausted), 1);
}

#[test]
fn not_ready_passes_everything() {
    let Some(mut h) = web1_harness(20000, 20000) else {
        return;
    };
    h.set_settings(lb_common::Settings::default());
    let syn = client_syn(40000).build();
    let (action, out) = h.run(h.pub_ifindex, &syn);
    assert_eq!((action, out), (XDP_PASS, syn));
    assert_eq!(h.reason_count(Reason::PassNotReady), 1);
}

#[test]
fn flow_clock_reads_monotonic_time_calibrated_or_not() {
    use lb_agent::dataplane::maps::monotonic_ns;

    for calibrated in [true, false] {
        let Some(mut h) = lab_harness() else { return };
        let mut settings = h.ebpf_settings();
        assert_ne!(settings.tick_ns, 0, "the harness calibrates like the agent");
        if !calibrated {
            settings.tick_ns = 0;
            settings.tick_offset_ns = 0;
            h.set_settings(settings);
        }
        let key = client_key(40000);
        let before = monotonic_ns();
        h.run(h.pub_ifindex, &client_syn(40000).build());
        let after = monotonic_ns();
        let mut flow = h.flow(&key).expect("flow tracked");
        // Either clock lags by at most a tick (≤ 10 ms); the agent's
        // expiry and census compare these stamps with its own clock.
        let slack = 20_000_000;
        assert!(
            flow.last_seen_ns + slack >= before && flow.last_seen_ns <= after + slack,
            "calibrated={calibrated}: stamp {} outside [{before}, {after}]",
            flow.last_seen_ns
        );

        // Idle past the handshake timeout: the next segment finds no flow.
        flow.last_seen_ns = monotonic_ns() - settings.tcp_handshake_ns - 1_000_000_000;
        let reply = FlowKey {
            src_addr: WEB1,
            dst_addr: LB_PRIV,
            src_port: 80,
            dst_port: NAT_PORT,
            proto: PROTO_TCP,
            _pad: [0; 3],
        };
        h.insert_flow(key, flow, reply);
        let ack = Frame::tcp(CLIENT, 40000, VIP, 80, TCP_ACK).macs(CLIENT_MAC, PUB_MAC);
        h.run(h.pub_ifindex, &ack.build());
        assert_eq!(
            h.reason_count(Reason::RstNoFlow),
            1,
            "calibrated={calibrated}: an expired flow must not forward"
        );
    }
}

#[test]
fn benchmark_references_do_their_work() {
    let Some(object) = artifacts::trivial_object() else {
        return;
    };
    let syn = client_syn(40000).build();

    let trivial = Harness::with_program(&object, "trivial", 1024);
    let (action, out) = trivial.run(trivial.pub_ifindex, &syn);
    assert_eq!(action, XDP_TX);
    assert_eq!(
        (&out[..6], &out[6..12]),
        (&syn[6..12], &syn[..6]),
        "MACs swapped"
    );
    assert_eq!(out[12..], syn[12..]);

    // The floor inserts a forward and a reply entry per run, the reply on a
    // fresh NAT port: the flow table keeps one client, replies pile up.
    let floor = Harness::with_program(&object, "conntrack_floor", 1024);
    for _ in 0..3 {
        assert_eq!(floor.run(floor.pub_ifindex, &syn).0, XDP_TX);
    }
    assert_eq!(floor.flow_count(), 1);
    assert!(floor.reply_count() >= 2, "replies {}", floor.reply_count());
}

/// Runs `client -> VIP` SYN, the backend's SYN-ACK, FIN both ways: the flow
/// is closing. Returns the NAT port it had.
fn open_and_close(h: &Harness, sport: u16) -> u16 {
    let (action, out) = h.run(h.pub_ifindex, &client_syn(sport).build());
    assert_eq!(action, XDP_REDIRECT, "SYN from {sport} forwarded");
    let port = u16::from_be_bytes([out[34], out[35]]);
    let backend = [out[30], out[31], out[32], out[33]];
    let backend_mac = if backend == WEB1 { WEB1_MAC } else { WEB2_MAC };
    let from_backend = |flags| {
        Frame::tcp(backend, 80, LB_PRIV, port, flags)
            .macs(backend_mac, PRIV_MAC)
            .build()
    };
    assert_eq!(
        h.run(h.priv_ifindex, &from_backend(TCP_SYN | TCP_ACK)).0,
        XDP_REDIRECT
    );
    let fin = Frame::tcp(CLIENT, sport, VIP, 80, TCP_FIN | TCP_ACK).macs(CLIENT_MAC, PUB_MAC);
    assert_eq!(h.run(h.pub_ifindex, &fin.build()).0, XDP_REDIRECT);
    assert_eq!(
        h.run(h.priv_ifindex, &from_backend(TCP_FIN | TCP_ACK)).0,
        XDP_REDIRECT
    );
    assert_eq!(
        h.flow(&client_key(sport)).expect("flow").state,
        flow_state::TCP_CLOSING
    );
    port
}

#[test]
fn syn_reusing_a_closing_flows_ports_starts_a_new_flow_and_frees_the_old_source() {
    let Some(object) = artifacts::lb_object() else {
        return;
    };
    // One NAT port: the new flow can only get it if the old one gave it back.
    let mut h = Harness::new(&object, 20000, 20000);
    h.add_service(0, VIP, 80, PROTO_TCP, &[(0, WEB1, 80)]);
    assert_eq!(open_and_close(&h, 40000), 20000);
    let (action, out) = h.run(h.pub_ifindex, &client_syn(40000).build());
    assert_eq!(action, XDP_REDIRECT, "the reused ports start a new flow");
    assert_eq!(u16::from_be_bytes([out[34], out[35]]), 20000);
    assert_eq!(
        h.flow(&client_key(40000)).expect("flow").state,
        flow_state::TCP_HANDSHAKE,
        "tracked as a new handshake, not as the closing flow"
    );
    assert_eq!(h.reply_count(), 1, "the old reply entry is gone");
    assert_eq!(h.service_counters(0).new_flows, 2);
    // The port is held again: another client finds the pool empty.
    assert_eq!(h.run(h.pub_ifindex, &client_syn(40001).build()).0, XDP_DROP);
    assert_eq!(h.reason_count(Reason::DropPortExhausted), 1);
}

/// The client's plain ACK on the connection from `sport`.
fn client_ack(sport: u16) -> Vec<u8> {
    Frame::tcp(CLIENT, sport, VIP, 80, TCP_ACK)
        .macs(CLIENT_MAC, PUB_MAC)
        .build()
}

/// Opens the connection from `sport` up to established (SYN, the backend's
/// SYN-ACK, the client's ACK) and sends one more ACK, which leaves a copy
/// of the flow in the running CPU's cache. Returns the backend's address.
fn establish_and_cache(h: &Harness, sport: u16) -> [u8; 4] {
    let (action, out) = h.run(h.pub_ifindex, &client_syn(sport).build());
    assert_eq!(action, XDP_REDIRECT, "SYN from {sport} forwarded");
    let port = u16::from_be_bytes([out[34], out[35]]);
    let backend = [out[30], out[31], out[32], out[33]];
    let backend_mac = if backend == WEB1 { WEB1_MAC } else { WEB2_MAC };
    let synack = Frame::tcp(backend, 80, LB_PRIV, port, TCP_SYN | TCP_ACK)
        .macs(backend_mac, PRIV_MAC)
        .build();
    assert_eq!(h.run(h.priv_ifindex, &synack).0, XDP_REDIRECT);
    for _ in 0..2 {
        assert_eq!(h.run(h.pub_ifindex, &client_ack(sport)).0, XDP_REDIRECT);
    }
    assert_eq!(
        h.flow(&client_key(sport)).expect("flow").state,
        flow_state::TCP_ESTABLISHED
    );
    backend
}

/// Where the balancer sent a client's packet: (action, backend address).
fn sent_to(h: &Harness, frame: &[u8]) -> (u32, [u8; 4]) {
    let (action, out) = h.run(h.pub_ifindex, frame);
    (action, [out[30], out[31], out[32], out[33]])
}

#[test]
fn established_flows_are_served_from_the_cpus_cache_until_the_agent_ends_them() {
    let Some(mut h) = lab_harness() else { return };
    let served = on_cpu(0, || {
        let backend = establish_and_cache(&h, 40000);
        // Gone from `flows` behind the agent's back (no epoch moved on):
        // only this CPU's copy can still forward the next segment.
        h.remove_flow_as_agent(&client_key(40000));
        let copy = sent_to(&h, &client_ack(40000));
        h.end_flow_cache_copies();
        let ended = h.run(h.pub_ifindex, &client_ack(40000)).0;
        (backend, copy, ended)
    })
    .expect("CPU 0");
    let (backend, copy, ended) = served;
    assert_eq!(copy, (XDP_REDIRECT, backend), "served from the cache");
    assert_eq!(ended, XDP_TX, "the agent's epoch ended the copy: a RST");
    assert_eq!(h.reason_count(Reason::RstNoFlow), 1);
}

#[test]
fn a_flow_cache_copy_serves_only_its_time_to_live() {
    let Some(mut h) = lab_harness() else { return };
    let ttl_ns = 20_000_000;
    h.set_settings(Settings {
        flow_cache_ttl_ns: ttl_ns,
        ..h.ebpf_settings()
    });
    let ended = on_cpu(0, || {
        establish_and_cache(&h, 40000);
        h.remove_flow_as_agent(&client_key(40000));
        std::thread::sleep(std::time::Duration::from_nanos(3 * ttl_ns));
        h.run(h.pub_ifindex, &client_ack(40000)).0
    })
    .expect("CPU 0");
    assert_eq!(ended, XDP_TX, "an old copy is not used: the flow is gone");

    // Off: every packet looks its flow up.
    h.set_settings(Settings {
        flow_cache_ttl_ns: 0,
        ..h.ebpf_settings()
    });
    let ended = on_cpu(0, || {
        establish_and_cache(&h, 40001);
        h.remove_flow_as_agent(&client_key(40001));
        h.run(h.pub_ifindex, &client_ack(40001)).0
    })
    .expect("CPU 0");
    assert_eq!(ended, XDP_TX);
    assert_eq!(h.reason_count(Reason::RstNoFlow), 2);
}

#[test]
fn a_flow_replaced_on_another_cpu_ends_this_cpus_copy() {
    let Some(h) = lab_harness_with_ports(4) else {
        return;
    };
    // CPU 0 opens the connection from 40000 (to web1) and caches it.
    let first = on_cpu(0, || establish_and_cache(&h, 40000)).expect("CPU 0");
    assert_eq!(first, WEB1);
    // On CPU 1 the connection closes and the client opens a new one on the
    // same ports, which this CPU's schedule gives to web2 (its first pick,
    // web1, went to the connection from 40001).
    let Some(second) = on_cpu(1, || {
        let fin = Frame::tcp(CLIENT, 40000, VIP, 80, TCP_FIN | TCP_ACK).macs(CLIENT_MAC, PUB_MAC);
        assert_eq!(h.run(h.pub_ifindex, &fin.build()).0, XDP_REDIRECT);
        let fin_back =
            Frame::tcp(WEB1, 80, LB_PRIV, NAT_PORT, TCP_FIN | TCP_ACK).macs(WEB1_MAC, PRIV_MAC);
        assert_eq!(h.run(h.priv_ifindex, &fin_back.build()).0, XDP_REDIRECT);
        assert_eq!(sent_to(&h, &client_syn(40001).build()).1, WEB1);
        sent_to(&h, &client_syn(40000).build())
    }) else {
        eprintln!("SKIP: one CPU only, no other CPU to change the flow on");
        return;
    };
    assert_eq!(second, (XDP_REDIRECT, WEB2));
    // Back on CPU 0, the new connection's ACK follows the new flow, not
    // the copy of the old one.
    let next = on_cpu(0, || sent_to(&h, &client_ack(40000))).expect("CPU 0");
    assert_eq!(next, (XDP_REDIRECT, WEB2));
    assert_eq!(h.flow(&client_key(40000)).expect("flow").backend_addr, WEB2);
}

/// A plain ACK from web1 to NAT port `port`: (action, reason counted).
fn web1_ack(h: &Harness, port: u16) -> u32 {
    let ack = Frame::tcp(WEB1, 80, LB_PRIV, port, TCP_ACK).macs(WEB1_MAC, PRIV_MAC);
    h.run(h.priv_ifindex, &ack.build()).0
}

#[test]
fn a_backends_pool_is_found_through_the_cpus_copy_while_its_record_names_it() {
    let Some(mut h) = lab_harness() else { return };
    let web1 = Endpoint {
        addr: addr(WEB1),
        port: 80,
        proto: PROTO_TCP,
    };
    // CPU 0's SYN-ACK finds web1's pool through `pool_ids` and copies it.
    let backend = on_cpu(0, || {
        let (_, out) = h.run(h.pub_ifindex, &client_syn(40000).build());
        let synack = Frame::tcp(WEB1, 80, LB_PRIV, NAT_PORT, TCP_SYN | TCP_ACK)
            .macs(WEB1_MAC, PRIV_MAC)
            .build();
        assert_eq!(h.run(h.priv_ifindex, &synack).0, XDP_REDIRECT);
        [out[30], out[31], out[32], out[33]]
    })
    .expect("CPU 0");
    assert_eq!(backend, WEB1);

    // Without the hash entry only CPU 0's copy knows the pool.
    h.forget_pool_id(web1);
    let copy = on_cpu(0, || web1_ack(&h, NAT_PORT)).expect("CPU 0");
    assert_eq!(copy, XDP_REDIRECT, "CPU 0 found the pool in its copy");
    if let Some(elsewhere) = on_cpu(1, || web1_ack(&h, NAT_PORT)) {
        assert_eq!(elsewhere, XDP_PASS, "CPU 1 has no copy and no pool id");
    }

    // The pool is retired and its id given to another endpoint, whose
    // flow holds the same NAT source: web1's packets must not reach it
    // through the old copy.
    let pools = h.pools.as_mut().expect("the balancer's port pools");
    let pool = pools.pool_of(&web1).expect("web1's pool");
    pools.retain(&[]).expect("retire every pool");
    let heir = (1..=254u8)
        .map(|host| Endpoint {
            addr: std::net::Ipv4Addr::new(10, 200, 1, host),
            port: 80,
            proto: PROTO_TCP,
        })
        .find(|endpoint| pools.pool_for(*endpoint).expect("a new pool") == pool)
        .expect("an endpoint that takes web1's pool id");
    assert_ne!(heir, web1);
    let held = lb_common::ReplyValue {
        client: client_key(40001),
        live: reply_claim::OWN,
        ..Default::default()
    };
    pools
        .replies_mut()
        .set(pool, lb_common::port_slot(0, NAT_PORT), held)
        .expect("the heir's flow");
    let passes_before = h.reason_count(Reason::PassReplyNoFlow);
    let stale = on_cpu(0, || web1_ack(&h, NAT_PORT)).expect("CPU 0");
    assert_eq!(
        stale, XDP_PASS,
        "the copy no longer matches the pool's record"
    );
    assert_eq!(h.reason_count(Reason::PassReplyNoFlow), passes_before + 1);
}

#[test]
fn ports_are_reused_least_recently_released_first() {
    let Some(mut h) = web1_harness(20000, 20003) else {
        return;
    };
    // Four flows take the four ports in the pool's order.
    let ports: Vec<u16> = (40000..40004)
        .map(|sport| open_and_close(&h, sport))
        .collect();
    assert_eq!(ports, vec![20000, 20001, 20002, 20003]);
    assert_eq!(h.run(h.pub_ifindex, &client_syn(40010).build()).0, XDP_DROP);
    // The agent collects them in another order: 20002, then 20000.
    h.remove_flow_as_agent(&client_key(40002));
    h.remove_flow_as_agent(&client_key(40000));
    let next: Vec<u16> = [40011u16, 40012]
        .iter()
        .map(|sport| {
            let (action, out) = h.run(h.pub_ifindex, &client_syn(*sport).build());
            assert_eq!(action, XDP_REDIRECT);
            u16::from_be_bytes([out[34], out[35]])
        })
        .collect();
    assert_eq!(next, vec![20002, 20000], "first released, first reused");
    assert_eq!(h.run(h.pub_ifindex, &client_syn(40013).build()).0, XDP_DROP);
}

/// A SYN from `sport` to www: the NAT port it was given, or `None` when
/// it was dropped for want of one.
fn nat_port_of_syn(h: &Harness, sport: u16) -> Option<u16> {
    let (action, out) = h.run(h.pub_ifindex, &client_syn(sport).build());
    match action {
        XDP_REDIRECT => Some(u16::from_be_bytes([out[34], out[35]])),
        XDP_DROP => None,
        other => panic!("SYN from {sport}: action {other}"),
    }
}

/// The NAT ports new flows get until the pool is empty.
fn ports_until_exhausted(h: &Harness, first_sport: u16) -> Vec<u16> {
    (first_sport..first_sport + 16)
        .map_while(|sport| nat_port_of_syn(h, sport))
        .collect()
}

/// A flow of www from client port `sport` held on NAT port `port`
/// towards web1 in `state`, the way flow sync installs one (`live`: its
/// claim).
fn install_flow_on(h: &mut Harness, (sport, port): (u16, u16), state: u8, live: u64) {
    let flow = lb_common::FlowValue {
        backend_addr: WEB1,
        backend_port: 80,
        lb_port: port,
        state,
        last_seen_ns: lb_agent::dataplane::maps::monotonic_ns(),
        ..Default::default()
    };
    let reply = FlowKey {
        src_addr: WEB1,
        dst_addr: LB_PRIV,
        src_port: 80,
        dst_port: port,
        proto: PROTO_TCP,
        _pad: [0; 3],
    };
    h.insert_flow_holding(client_key(sport), flow, reply, live);
}

const WEB1_HTTP: Endpoint = Endpoint {
    addr: std::net::Ipv4Addr::new(10, 200, 0, 21),
    port: 80,
    proto: PROTO_TCP,
};

#[test]
fn a_source_a_synced_flow_holds_leaves_the_queue_when_met_and_is_queued_once() {
    let Some(mut h) = web1_harness(20000, 20003) else {
        return;
    };
    // Flow sync brings flows on the first three sources while all four
    // are still queued here.
    for (sport, port) in [(41000, 20000), (41001, 20001), (41002, 20002)] {
        install_flow_on(
            &mut h,
            (sport, port),
            flow_state::TCP_ESTABLISHED,
            reply_claim::OWN_QUEUED,
        );
    }
    // The one that ends before any new flow meets its source: freed where
    // it stands in the queue, not queued a second time.
    h.remove_flow_as_agent(&client_key(41002));
    // A new flow meets the two held sources, takes them out of the queue
    // for their flows and claims the first free one.
    assert_eq!(nat_port_of_syn(&h, 40000), Some(20002));
    for port in [20000, 20001] {
        let entry = h.reply_entry(WEB1_HTTP, 0, port).expect("still held");
        assert_eq!(
            entry.live,
            reply_claim::OWN,
            "port {port} is out of the queue"
        );
    }
    assert_eq!(nat_port_of_syn(&h, 40001), Some(20003));
    assert_eq!(
        nat_port_of_syn(&h, 40002),
        None,
        "every source is held once"
    );
    // Those flows end now: their sources go back, each once.
    h.remove_flow_as_agent(&client_key(41001));
    h.remove_flow_as_agent(&client_key(41000));
    assert_eq!(ports_until_exhausted(&h, 40010), vec![20001, 20000]);
    assert_eq!(h.reason_count(Reason::DropPortExhausted), 2);
}

#[test]
fn a_new_flow_replacing_a_synced_flow_still_queued_frees_its_source_in_place() {
    let Some(mut h) = web1_harness(20000, 20001) else {
        return;
    };
    install_flow_on(
        &mut h,
        (40000, 20000),
        flow_state::TCP_CLOSING,
        reply_claim::OWN_QUEUED,
    );
    // The client opens a new connection from the same ports: the program
    // ends the synced flow, whose source stays where it is in the queue,
    // and the new flow takes the first free source: that one.
    assert_eq!(nat_port_of_syn(&h, 40000), Some(20000));
    assert_eq!(nat_port_of_syn(&h, 40001), Some(20001));
    assert_eq!(
        nat_port_of_syn(&h, 40002),
        None,
        "no source was queued twice"
    );
}

#[test]
fn a_pool_made_anew_leaves_out_the_sources_live_flows_hold() {
    let Some(mut h) = web1_harness(20000, 20003) else {
        return;
    };
    assert_eq!(nat_port_of_syn(&h, 40000), Some(20000));
    assert_eq!(nat_port_of_syn(&h, 40001), Some(20001));
    // A restart with one NAT port more: the pool is made anew for the new
    // layout, around the claims of the two live flows.
    h.adopt_pools(20000, 20004);
    // One of them ends before any new flow: its source comes back once,
    // after every source that never served.
    h.remove_flow_as_agent(&client_key(40000));
    assert_eq!(
        ports_until_exhausted(&h, 40010),
        vec![20002, 20003, 20004, 20000]
    );
    assert_eq!(
        h.reason_count(Reason::DropPortExhausted),
        1,
        "no new flow met a held source and gave up"
    );
}

const SECOND: u64 = 1_000_000_000;
/// The lab's VRRP virtual router.
const VRID: u8 = 33;
const LB2_PRIV: [u8; 4] = [10, 200, 0, 12];
const LB2_MAC: [u8; 6] = [0x02, 0, 0, 0, 0x0b, 0x02];

/// A VRRPv2 advertisement of `vrid` at `priority` from lb2 to this node.
fn vrrp_advert(vrid: u8, priority: u8) -> Vec<u8> {
    let mut frame = Vec::new();
    frame.extend_from_slice(&PRIV_MAC);
    frame.extend_from_slice(&LB2_MAC);
    frame.extend_from_slice(&0x0800u16.to_be_bytes());
    let mut ip = [0u8; 20];
    ip[0] = 0x45;
    ip[2..4].copy_from_slice(&28u16.to_be_bytes());
    ip[8] = 255;
    ip[9] = 112;
    ip[12..16].copy_from_slice(&LB2_PRIV);
    ip[16..20].copy_from_slice(&LB_PRIV);
    frame.extend_from_slice(&ip);
    frame.extend_from_slice(&[0x21, vrid, priority, 1, 1, 1, 0, 0]);
    frame
}

/// A harness whose agent runs VRRP (silence 4 s) with the floating SNAT
/// address `LB_PRIV`; the agent's heartbeat `heartbeat_age` old.
fn guarded_harness(heartbeat_age: u64) -> Option<Harness> {
    let mut h = lab_harness()?;
    let mut settings = h.ebpf_settings();
    settings.agent_silence_ns = 4 * SECOND;
    settings.vrrp_vrid = u32::from(VRID);
    settings.snat_floating = 1;
    h.set_settings(settings);
    let now = lb_agent::dataplane::maps::monotonic_ns();
    h.set_liveness(lb_common::liveness::AGENT, now - heartbeat_age);
    Some(h)
}

/// What the program does with an ARP request for `target` from web1.
fn arp_for(h: &Harness, target: [u8; 4]) -> u32 {
    h.run(h.priv_ifindex, &arp_request(WEB1_MAC, WEB1, target))
        .0
}

#[test]
fn a_dead_agents_node_stops_answering_arp_for_floating_addresses_once_the_peer_leads() {
    let Some(h) = guarded_harness(10 * SECOND) else {
        return;
    };
    // No peer heard yet: a surviving data path keeps its addresses.
    assert_eq!(arp_for(&h, VIP), XDP_PASS);
    // lb2 advertises itself as master: the program notes it and passes it.
    assert_eq!(h.run(h.priv_ifindex, &vrrp_advert(VRID, 100)).0, XDP_PASS);
    assert_ne!(h.liveness(lb_common::liveness::PEER_MASTER), 0);
    assert_eq!(arp_for(&h, VIP), XDP_DROP, "the VIP");
    assert_eq!(arp_for(&h, LB_PRIV), XDP_DROP, "the floating SNAT address");
    assert_eq!(h.reason_count(Reason::DropArpFloatingLost), 2);
    // Only requests for floating addresses.
    assert_eq!(arp_for(&h, [10, 200, 0, 99]), XDP_PASS, "another address");
    let mut reply = arp_request(WEB1_MAC, WEB1, VIP);
    reply[21] = 2;
    assert_eq!(h.run(h.priv_ifindex, &reply).0, XDP_PASS, "an ARP reply");
}

#[test]
fn arp_for_floating_addresses_is_answered_while_the_agent_lives_or_no_peer_leads() {
    let now = || lb_agent::dataplane::maps::monotonic_ns();
    // A live agent, the peer heard.
    let Some(h) = guarded_harness(SECOND) else {
        return;
    };
    h.run(h.priv_ifindex, &vrrp_advert(VRID, 100));
    assert_eq!(
        arp_for(&h, VIP),
        XDP_PASS,
        "a live agent keeps its addresses"
    );

    // A dead agent, the peer last heard longer ago than the silence: it
    // is down too, and this data path serves alone.
    let Some(mut h) = guarded_harness(10 * SECOND) else {
        return;
    };
    h.set_liveness(lb_common::liveness::PEER_MASTER, now() - 5 * SECOND);
    assert_eq!(arp_for(&h, VIP), XDP_PASS, "no master heard lately");

    // A peer leaving (priority 0) or another virtual router is no master.
    h.set_liveness(lb_common::liveness::PEER_MASTER, 0);
    for advert in [vrrp_advert(VRID, 0), vrrp_advert(VRID + 1, 100)] {
        assert_eq!(h.run(h.priv_ifindex, &advert).0, XDP_PASS);
    }
    assert_eq!(h.liveness(lb_common::liveness::PEER_MASTER), 0);
    assert_eq!(arp_for(&h, VIP), XDP_PASS);

    // Without VRRP there is no guard.
    let mut settings = h.ebpf_settings();
    settings.agent_silence_ns = 0;
    h.set_settings(settings);
    h.run(h.priv_ifindex, &vrrp_advert(VRID, 100));
    assert_eq!(arp_for(&h, VIP), XDP_PASS, "no guard configured");
    assert_eq!(h.reason_count(Reason::DropArpFloatingLost), 0);
    // The agent restarted: its heartbeat ends the guard at once.
    let Some(mut h) = guarded_harness(10 * SECOND) else {
        return;
    };
    h.run(h.priv_ifindex, &vrrp_advert(VRID, 100));
    assert_eq!(arp_for(&h, VIP), XDP_DROP);
    h.set_liveness(lb_common::liveness::AGENT, now());
    assert_eq!(arp_for(&h, VIP), XDP_PASS, "a restarted agent");
}

/// TSval and TSecr of the timestamp option `before_len` option bytes into
/// the TCP header of `frame`.
fn timestamps_of(frame: &[u8], before_len: usize) -> (u32, u32) {
    let at = 14 + 20 + 20 + before_len;
    assert_eq!(&frame[at..at + 2], &[8, 10], "timestamp option in place");
    let word = |i: usize| u32::from_be_bytes([frame[i], frame[i + 1], frame[i + 2], frame[i + 3]]);
    (word(at + 2), word(at + 6))
}

#[test]
fn tcp_timestamps_move_onto_the_balancers_clock_and_back() {
    let Some(h) = lab_harness() else { return };
    // Linux's SYN layout (MSS, SACK permitted, timestamps, NOP, window scale).
    let syn_options: &[u8] = &[2, 4, 5, 0xb4, 4, 2];
    let client_ts = 0xfff0_0000u32;
    let syn = client_syn(40000).timestamps(syn_options, client_ts, 0);
    let (action, out) = h.run(h.pub_ifindex, &syn.build());
    assert_eq!(action, XDP_REDIRECT);
    assert_checksums_valid(&out);
    let flow = h.flow(&client_key(40000)).expect("flow");
    let (backend_tsval, tsecr) = timestamps_of(&out, syn_options.len());
    assert_eq!(backend_tsval, client_ts.wrapping_add(flow.ts_delta));
    assert_eq!(tsecr, 0);
    // The balancer's clock: monotonic milliseconds (read from jiffies, so
    // up to a tick either side of the monotonic clock).
    let now_ms = lb_common::ts_clock_ms(lb_agent::dataplane::maps::monotonic_ns());
    assert!(
        (i64::from(now_ms) - i64::from(backend_tsval)).abs() < 2_000,
        "{backend_tsval} vs {now_ms}"
    );

    // The backend echoes the balancer's value; the client gets its own back.
    let synack = Frame::tcp(WEB1, 80, LB_PRIV, NAT_PORT, TCP_SYN | TCP_ACK)
        .macs(WEB1_MAC, PRIV_MAC)
        .timestamps(syn_options, 777, backend_tsval);
    let (action, out) = h.run(h.priv_ifindex, &synack.build());
    assert_eq!(action, XDP_REDIRECT);
    assert_checksums_valid(&out);
    assert_eq!(timestamps_of(&out, syn_options.len()), (777, client_ts));

    // Data segments (NOP, NOP, timestamps) and an odd-offset layout
    // (window scale, timestamps) keep the same shift, checksums intact.
    for before in [&[1u8, 1][..], &[3, 3, 7][..]] {
        let data = Frame::tcp(CLIENT, 40000, VIP, 80, TCP_ACK | TCP_PSH)
            .macs(CLIENT_MAC, PUB_MAC)
            .timestamps(before, client_ts.wrapping_add(20), 777)
            .payload(b"GET / HTTP/1.1\r\n\r\n");
        let (action, out) = h.run(h.pub_ifindex, &data.build());
        assert_eq!(action, XDP_REDIRECT);
        assert_checksums_valid(&out);
        assert_eq!(
            timestamps_of(&out, before.len()),
            (backend_tsval.wrapping_add(20), 777),
            "layout {before:?}"
        );
    }
    // A segment without the option passes through unchanged otherwise.
    let bare = Frame::tcp(CLIENT, 40000, VIP, 80, TCP_ACK).macs(CLIENT_MAC, PUB_MAC);
    let (_, out) = h.run(h.pub_ifindex, &bare.build());
    assert_checksums_valid(&out);
}

#[test]
fn a_timestamp_option_past_the_header_is_left_alone() {
    let Some(h) = lab_harness() else { return };
    // Data offset says 6 words (4 option bytes: NOP NOP + half an option);
    // the timestamp bytes that follow are payload, not options.
    let frame = client_syn(40000)
        .tcp_options(&[1, 1, 8, 10])
        .payload(&[0, 0, 0, 1, 0, 0, 0, 0]);
    let (action, out) = h.run(h.pub_ifindex, &frame.build());
    assert_eq!(action, XDP_REDIRECT);
    assert_checksums_valid(&out);
    assert_eq!(
        &out[out.len() - 8..],
        &[0, 0, 0, 1, 0, 0, 0, 0],
        "payload untouched"
    );
}

/// Runs a client's whole handshake (SYN, the backend's SYN-ACK, the
/// client's ACK) from `client:sport`; returns the flow's NAT port and
/// backend.
fn handshake(h: &Harness, client: [u8; 4], sport: u16) -> (u16, [u8; 4]) {
    let syn = Frame::tcp(client, sport, VIP, 80, TCP_SYN).macs(CLIENT_MAC, PUB_MAC);
    let (action, out) = h.run(h.pub_ifindex, &syn.build());
    assert_eq!(action, XDP_REDIRECT, "SYN from {sport} forwarded");
    let port = u16::from_be_bytes([out[34], out[35]]);
    let backend = [out[30], out[31], out[32], out[33]];
    let backend_mac = if backend == WEB1 { WEB1_MAC } else { WEB2_MAC };
    let synack =
        Frame::tcp(backend, 80, LB_PRIV, port, TCP_SYN | TCP_ACK).macs(backend_mac, PRIV_MAC);
    h.run(h.priv_ifindex, &synack.build());
    let ack = Frame::tcp(client, sport, VIP, 80, TCP_ACK).macs(CLIENT_MAC, PUB_MAC);
    assert_eq!(h.run(h.pub_ifindex, &ack.build()).0, XDP_REDIRECT);
    (port, backend)
}

#[test]
fn a_half_open_ring_made_shorter_caps_at_its_new_length() {
    let Some(mut h) = lab_harness_with_ports(64) else {
        return;
    };
    let ring = |h: &mut Harness, len: u32| {
        h.set_settings(Settings {
            half_open_per_cpu: len,
            ..h.ebpf_settings()
        })
    };
    let syn = |h: &Harness, n: u16| {
        let source = [10, 100, 0, 128 + n as u8];
        let frame = Frame::tcp(source, 1024, VIP, 80, TCP_SYN).macs(CLIENT_MAC, PUB_MAC);
        assert_eq!(h.run(h.pub_ifindex, &frame.build()).0, XDP_REDIRECT);
    };
    ring(&mut h, 8);
    // Six half-open flows leave this CPU's cursor at slot 6 of 8.
    on_cpu(0, || (0..6).for_each(|n| syn(&h, n))).expect("CPU 0");
    assert_eq!(h.half_open_evicted(), 0, "the ring had room");
    // A reload shortens the ring to 4: the cursor stands past its end.
    ring(&mut h, 4);
    on_cpu(0, || (6..16).for_each(|n| syn(&h, n))).expect("CPU 0");
    assert_eq!(
        h.half_open_evicted(),
        10,
        "every later SYN displaced a half-open flow of the shorter ring"
    );
    // Four in the ring, and the two recorded past its new end, which only
    // the agent's expiry ends now.
    assert_eq!(h.flow_count(), 6);
}

#[test]
fn a_syn_flood_of_ten_tables_displaces_only_half_open_flows() {
    let Some(object) = artifacts::lb_object() else {
        return;
    };
    stay_on_this_cpu();
    const TABLE: u32 = 512;
    const RING: u32 = 16;
    const ESTABLISHED: u16 = 100;
    // 2 x 1000 NAT sources: fewer than the flood's SYNs, so sources that
    // half-open flows do not give back run out.
    let mut h = Harness::with_capacity(&object, 20000, 20999, TABLE);
    h.add_service(0, VIP, 80, PROTO_TCP, &[(0, WEB1, 80), (1, WEB2, 80)]);
    h.set_settings(Settings {
        half_open_per_cpu: RING,
        ..h.ebpf_settings()
    });
    let established: Vec<_> = (0..ESTABLISHED)
        .map(|n| (40000 + n, handshake(&h, CLIENT, 40000 + n)))
        .collect();

    // Spoofed sources all over the public net, each SYN never followed up.
    let flood = 10 * TABLE;
    let mut forwarded = 0;
    for n in 0..flood {
        let source = [10, 100, 0, 128 + (n % 120) as u8];
        let syn =
            Frame::tcp(source, 1024 + (n / 120) as u16, VIP, 80, TCP_SYN).macs(CLIENT_MAC, PUB_MAC);
        if h.run(h.pub_ifindex, &syn.build()).0 == XDP_REDIRECT {
            forwarded += 1;
        }
    }
    assert_eq!(forwarded, flood, "every SYN of the flood is served");
    assert_eq!(h.reason_count(Reason::DropPortExhausted), 0);
    assert_eq!(h.reason_count(Reason::DropFlowInsert), 0);
    assert_eq!(
        h.half_open_evicted(),
        u64::from(flood - RING),
        "each SYN past the ring's length displaced one half-open flow"
    );
    let live = ESTABLISHED as usize + RING as usize;
    assert_eq!((h.flow_count(), h.reply_count()), (live, live));

    // Every established connection is still tracked, with its NAT source.
    for (sport, (port, backend)) in &established {
        let data = Frame::tcp(CLIENT, *sport, VIP, 80, TCP_ACK | TCP_PSH)
            .macs(CLIENT_MAC, PUB_MAC)
            .payload(b"more");
        let (action, out) = h.run(h.pub_ifindex, &data.build());
        assert_eq!(action, XDP_REDIRECT, "established flow from {sport}");
        assert_eq!(u16::from_be_bytes([out[34], out[35]]), *port);
        assert_eq!(&out[30..34], backend);
    }
    assert_eq!(h.reason_count(Reason::RstNoFlow), 0);
    // A real client completes its handshake right after the flood.
    handshake(&h, CLIENT, 50000);
    assert_eq!(
        h.flow(&client_key(50000)).expect("flow").state,
        flow_state::TCP_ESTABLISHED
    );
}

#[test]
fn unanswered_udp_flows_give_way_and_answered_ones_stay() {
    let Some(object) = artifacts::lb_object() else {
        return;
    };
    stay_on_this_cpu();
    let mut h = Harness::new(&object, 20000, 20009);
    h.add_service(1, VIP, 5353, PROTO_UDP, &[(2, WEB1, 5353)]);
    h.set_settings(Settings {
        half_open_per_cpu: 4,
        ..h.ebpf_settings()
    });
    let datagram = |source: [u8; 4], sport| {
        Frame::udp(source, sport, VIP, 5353)
            .macs(CLIENT_MAC, PUB_MAC)
            .payload(b"q")
            .build()
    };
    let (action, out) = h.run(h.pub_ifindex, &datagram(CLIENT, 41000));
    assert_eq!(action, XDP_REDIRECT);
    let answer = Frame::udp(WEB1, 5353, LB_PRIV, u16::from_be_bytes([out[34], out[35]]))
        .macs(WEB1_MAC, PRIV_MAC)
        .payload(b"web1")
        .build();
    assert_eq!(h.run(h.priv_ifindex, &answer).0, XDP_REDIRECT);
    let answered = FlowKey {
        src_port: 41000,
        dst_port: 5353,
        proto: PROTO_UDP,
        ..client_key(0)
    };
    assert_eq!(
        h.flow(&answered).expect("flow").state,
        flow_state::UDP_REPLIED
    );
    // Ten NAT ports for 40 spoofed sources: each is served because the
    // unanswered flows before it give their ports back.
    for n in 0..40u8 {
        let action = h.run(h.pub_ifindex, &datagram([10, 100, 0, 128 + n], 53)).0;
        assert_eq!(action, XDP_REDIRECT, "spoofed datagram {n}");
    }
    assert!(h.flow(&answered).is_some(), "the answered flow stays");
    assert_eq!(h.flow_count(), 1 + 4, "the answered flow and the ring's 4");
    assert_eq!(h.half_open_evicted(), 36);
}

#[test]
fn a_client_reusing_its_ports_holds_one_entry_each_way() {
    let Some(object) = artifacts::lb_object() else {
        return;
    };
    let mut h = Harness::new(&object, 20000, 29999);
    h.add_service(0, VIP, 80, PROTO_TCP, &[(0, WEB1, 80), (1, WEB2, 80)]);
    // Zero timeouts: every SYN finds the flow before it expired and
    // replaces it, as the benchmark's new-flow path does.
    h.set_settings(Settings {
        tcp_handshake_ns: 0,
        tcp_established_ns: 0,
        tcp_closing_ns: 0,
        ..h.ebpf_settings()
    });
    let syn = client_syn(40000).build();
    for _ in 0..2_000 {
        assert_eq!(h.run(h.pub_ifindex, &syn).0, XDP_REDIRECT);
    }
    assert_eq!(h.service_counters(0).new_flows, 2_000);
    assert_eq!((h.flow_count(), h.reply_count()), (1, 1));
}

/// With sync on, a flow is reported from its first answer on, once per
/// state change, with what the peer needs to carry the flow on; its
/// unanswered first packets and plain data are not.
#[test]
fn flow_sync_events_report_answered_flows_and_state_changes() {
    // Ports for three TCP flows on either backend.
    let Some(mut h) = lab_harness_with_ports(3) else {
        return;
    };
    h.run(h.pub_ifindex, &client_syn(40100).build());
    assert!(h.take_flow_events().is_empty(), "sync off: no events");
    h.set_settings(Settings {
        sync_events: 1,
        ..h.ebpf_settings()
    });
    h.run(h.pub_ifindex, &client_syn(40150).build());
    assert!(
        h.take_flow_events().is_empty(),
        "an unanswered SYN is not reported"
    );
    let (port, backend) = handshake(&h, CLIENT, 40200);
    let data = Frame::tcp(CLIENT, 40200, VIP, 80, TCP_ACK | TCP_PSH).macs(CLIENT_MAC, PUB_MAC);
    assert_eq!(h.run(h.pub_ifindex, &data.build()).0, XDP_REDIRECT);
    let events = h.take_flow_events();
    let states: Vec<u8> = events.iter().map(|e| e.state).collect();
    assert_eq!(
        states,
        [flow_state::TCP_SYN_ACKED, flow_state::TCP_ESTABLISHED],
        "{events:#?}"
    );
    let flow = h.flow(&client_key(40200)).expect("flow");
    for event in &events {
        assert_eq!(event.client, client_key(40200));
        assert_eq!((event.backend_addr, event.backend_port), (backend, 80));
        assert_eq!((event.lb_port, event.snat_index), (port, 0));
        assert_eq!(event.ts_delta, flow.ts_delta);
    }
    assert!(events[0].at_ns <= events[1].at_ns && events[1].at_ns <= flow.last_seen_ns);
    let rst = Frame::tcp(CLIENT, 40200, VIP, 80, TCP_RST).macs(CLIENT_MAC, PUB_MAC);
    h.run(h.pub_ifindex, &rst.build());
    let closing: Vec<u8> = h.take_flow_events().iter().map(|e| e.state).collect();
    assert_eq!(closing, [flow_state::TCP_CLOSING]);
    let dns = Frame::udp(CLIENT, 40300, VIP, 5353).macs(CLIENT_MAC, PUB_MAC);
    let (action, out) = h.run(h.pub_ifindex, &dns.build());
    assert_eq!(action, XDP_REDIRECT);
    h.run(h.pub_ifindex, &dns.build());
    assert!(
        h.take_flow_events().is_empty(),
        "unanswered datagrams are not reported"
    );
    let backend = [out[30], out[31], out[32], out[33]];
    let backend_mac = if backend == WEB1 { WEB1_MAC } else { WEB2_MAC };
    let answer = Frame::udp(
        backend,
        5353,
        LB_PRIV,
        u16::from_be_bytes([out[34], out[35]]),
    )
    .macs(backend_mac, PRIV_MAC)
    .payload(b"answer")
    .build();
    assert_eq!(h.run(h.priv_ifindex, &answer).0, XDP_REDIRECT);
    let udp: Vec<u8> = h.take_flow_events().iter().map(|e| e.state).collect();
    assert_eq!(udp, [flow_state::UDP_REPLIED]);
}

/// An agent before reply tables kept reply entries in one hash; its first
/// start after the upgrade rebuilds them from the forward table, so the
/// backends' packets of live flows still reach their clients, and a flow
/// of the HA peer's slice stays out of this node's queues.
#[test]
fn flows_of_an_agent_before_reply_tables_keep_their_replies() {
    let Some(mut h) = web1_harness(20000, 20001) else {
        return;
    };
    let mut nat_ports = Vec::new();
    for sport in [40000, 40001] {
        let (action, out) = h.run(h.pub_ifindex, &client_syn(sport).build());
        assert_eq!(action, XDP_REDIRECT, "SYN from {sport} forwarded");
        nat_ports.push(u16::from_be_bytes([out[34], out[35]]));
    }
    h.forget_reply_entry(&client_key(40000), false);
    h.forget_reply_entry(&client_key(40001), true);
    let syn_ack = |port| {
        Frame::tcp(WEB1, 80, LB_PRIV, port, TCP_SYN | TCP_ACK)
            .macs(WEB1_MAC, PRIV_MAC)
            .build()
    };
    assert_eq!(
        h.run(h.priv_ifindex, &syn_ack(nat_ports[0])).0,
        XDP_PASS,
        "without its reply entry a flow's replies are not ours"
    );

    assert_eq!(h.restore_reply_entries(), 2);
    let web1 = Endpoint {
        addr: WEB1.into(),
        port: 80,
        proto: PROTO_TCP,
    };
    for (sport, port, claim) in [
        (40000, nat_ports[0], reply_claim::OWN),
        (40001, nat_ports[1], reply_claim::PEER),
    ] {
        let (action, out) = h.run(h.priv_ifindex, &syn_ack(port));
        assert_eq!(action, XDP_REDIRECT, "reply to NAT port {port} forwarded");
        assert_eq!(&out[30..34], &CLIENT, "to the client");
        assert_eq!(u16::from_be_bytes([out[36], out[37]]), sport);
        let entry = h.reply_entry(web1, 0, port).expect("reply entry");
        assert_eq!((entry.client, entry.live), (client_key(sport), claim));
        let flow = h.flow(&client_key(sport)).expect("flow");
        assert_ne!(flow.port_pool, u32::MAX, "every flow names its pool again");
    }
}
