//! A reference model of the balancer for the fuzz tier: it classifies a
//! frame with `etherparse` (never with the XDP program's own parser) and the
//! validity rules the program documents, keeps its own view of the tracked
//! flows, and judges what the program did with each frame: the action and
//! the exact output it must have produced.
//!
//! Checksums are not validity rules (the program does not verify them):
//! the model requires that a forwarded frame's checksums are valid exactly
//! when the input's were, since an incremental rewrite keeps a wrong
//! checksum wrong and the receiver then drops the frame.

use std::{collections::HashMap, fmt::Write as _, ops::RangeInclusive};

use etherparse::{
    checksum::Sum16BitWords, EtherType, Ethernet2HeaderSlice, Ipv4HeaderSlice, TcpHeaderSlice,
    UdpHeaderSlice,
};

use integration_tests::packet::Mac;

pub const PROTO_TCP: u8 = 6;
pub const PROTO_UDP: u8 = 17;

const FIN: u8 = 0x01;
const SYN: u8 = 0x02;
const RST: u8 = 0x04;
const ACK: u8 = 0x10;

const ETH_LEN: usize = 14;
const IP_LEN: usize = 20;
/// Where the TCP/UDP header starts in every frame the balancer may touch.
const L4_AT: usize = ETH_LEN + IP_LEN;

const XDP_DROP: u32 = 1;
const XDP_PASS: u32 = 2;
const XDP_TX: u32 = 3;
const XDP_REDIRECT: u32 = 4;

/// A 5-tuple in one direction, as on the wire.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Key {
    pub src: [u8; 4],
    pub dst: [u8; 4],
    pub sport: u16,
    pub dport: u16,
    pub proto: u8,
}

/// One backend of a service.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Backend {
    pub addr: [u8; 4],
    pub port: u16,
}

/// An interface of the node.
#[derive(Clone, Copy, Debug)]
pub struct Interface {
    pub ifindex: u32,
    pub mac: Mac,
}

/// What the node is configured with, as the harness set it up.
#[derive(Clone, Debug)]
pub struct Node {
    /// (VIP, port, protocol) -> backends (empty: the service has none).
    pub services: HashMap<([u8; 4], u16, u8), Vec<Backend>>,
    pub snat: [u8; 4],
    pub nat_ports: RangeInclusive<u16>,
    /// The MACs the program's settings accept besides multicast ones.
    pub own_macs: Vec<Mac>,
    /// Permanent neighbours: address -> (egress interface, MAC). Anything
    /// else has no route or no neighbour, so a packet to it is dropped.
    pub neighbours: HashMap<[u8; 4], (Interface, Mac)>,
}

impl Node {
    fn is_vip(&self, addr: [u8; 4]) -> bool {
        self.services.keys().any(|(vip, _, _)| *vip == addr)
    }

    /// Settings::accepts_mac as documented: the node's own MACs and any
    /// group (multicast/broadcast) address.
    fn accepts_mac(&self, dst: &Mac) -> bool {
        dst[0] & 1 == 1 || self.own_macs.contains(dst)
    }
}

/// How a frame looks to the balancer.
#[derive(Clone, Debug)]
pub enum Parsed {
    /// Not an IPv4 TCP/UDP packet whose destination the program can see:
    /// the stack's business, passed untouched.
    Other(&'static str),
    /// IPv4 TCP/UDP with a header or length the program must not rewrite.
    Invalid {
        dst: [u8; 4],
        why: &'static str,
    },
    Valid(Packet),
}

/// A well-formed IPv4 TCP/UDP packet.
#[derive(Clone, Debug)]
pub struct Packet {
    pub src_mac: Mac,
    pub dst_mac: Mac,
    pub key: Key,
    /// TCP flags byte (0 for UDP).
    pub flags: u8,
    pub seq: u32,
    pub ack: u32,
    /// TCP payload length by the length fields (not Ethernet padding).
    pub tcp_payload: u32,
    /// Frame offset of the first TCP timestamp option's TSval.
    pub tsval_at: Option<usize>,
    pub ip_checksum_ok: bool,
    pub l4_checksum: L4Checksum,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum L4Checksum {
    Valid,
    Invalid,
    /// UDP sent without checksum (zero).
    Absent,
}

impl Packet {
    fn is_tcp(&self) -> bool {
        self.key.proto == PROTO_TCP
    }

    /// A connection-opening segment: SYN without ACK.
    fn is_syn(&self) -> bool {
        self.is_tcp() && self.flags & (SYN | ACK) == SYN
    }
}

fn sum_ok(sum: Sum16BitWords) -> bool {
    sum.ones_complement() == 0
}

fn ipv4_checksum_ok(header: &[u8]) -> bool {
    sum_ok(Sum16BitWords::new().add_slice(header))
}

/// Validity of the L4 checksum of `segment` (the bytes it covers).
fn l4_checksum(src: [u8; 4], dst: [u8; 4], proto: u8, segment: &[u8]) -> L4Checksum {
    if proto == PROTO_UDP && segment[6..8] == [0, 0] {
        return L4Checksum::Absent;
    }
    let sum = Sum16BitWords::new()
        .add_4bytes(src)
        .add_4bytes(dst)
        .add_2bytes([0, proto])
        .add_2bytes((segment.len() as u16).to_be_bytes())
        .add_slice(segment);
    if sum_ok(sum) {
        L4Checksum::Valid
    } else {
        L4Checksum::Invalid
    }
}

/// The first timestamp option (kind 8, length 10) in `options`, walked as
/// Linux's tcp_parse_options does: END stops, NOP is one byte, any other
/// option needs a length of at least 2 that fits. Returns TSval's offset.
fn timestamp_in(options: &[u8]) -> Option<usize> {
    let mut at = 0;
    while at < options.len() {
        match options[at] {
            0 => return None,
            1 => at += 1,
            kind => {
                let len = usize::from(*options.get(at + 1)?);
                if len < 2 || at + len > options.len() {
                    return None;
                }
                if kind == 8 && len == 10 {
                    return Some(at + 2);
                }
                at += len;
            }
        }
    }
    None
}

/// Classifies `frame` by the validity rules of the data path.
pub fn classify(frame: &[u8]) -> Parsed {
    let Ok(eth) = Ethernet2HeaderSlice::from_slice(frame) else {
        return Parsed::Other("shorter than an Ethernet header");
    };
    if eth.ether_type() != EtherType::IPV4 {
        return Parsed::Other("not the IPv4 EtherType");
    }
    let l3 = &frame[ETH_LEN..];
    // Until the fixed IPv4 header is there, its destination is unknown.
    if l3.len() < IP_LEN {
        return Parsed::Other("IPv4 header cut short");
    }
    if l3[0] >> 4 != 4 {
        return Parsed::Other("IP version is not 4");
    }
    let proto = l3[9];
    if proto != PROTO_TCP && proto != PROTO_UDP {
        return Parsed::Other("neither TCP nor UDP");
    }
    // The destination sits at a fixed place whatever the rest says: it
    // decides between drop (a VIP) and pass for a broken packet.
    let dst = [l3[16], l3[17], l3[18], l3[19]];
    let invalid = |why| Parsed::Invalid { dst, why };
    let ip = match Ipv4HeaderSlice::from_slice(l3) {
        Ok(ip) => ip,
        Err(_) => return invalid("IHL below 5 or options cut short"),
    };
    if ip.ihl() != 5 {
        return invalid("IP options");
    }
    if ip.more_fragments() || ip.fragments_offset().value() != 0 {
        return invalid("IP fragment");
    }
    let total = usize::from(ip.total_len());
    if total > l3.len() {
        return invalid("IP total length beyond the frame");
    }
    if total < IP_LEN {
        return invalid("IP total length below the IP header");
    }
    let segment = &l3[IP_LEN..total];
    let (src, dst) = (ip.source(), ip.destination());
    let mut packet = Packet {
        src_mac: eth.source(),
        dst_mac: eth.destination(),
        key: Key {
            src,
            dst,
            sport: 0,
            dport: 0,
            proto,
        },
        flags: 0,
        seq: 0,
        ack: 0,
        tcp_payload: 0,
        tsval_at: None,
        ip_checksum_ok: ipv4_checksum_ok(ip.slice()),
        l4_checksum: L4Checksum::Absent,
    };
    if proto == PROTO_TCP {
        let tcp = match TcpHeaderSlice::from_slice(segment) {
            Ok(tcp) => tcp,
            Err(etherparse::err::tcp::HeaderSliceError::Content(_)) => {
                return invalid("TCP data offset below 5")
            }
            Err(etherparse::err::tcp::HeaderSliceError::Len(e)) => {
                return if e.required_len == 20 {
                    invalid("IP total length below IP + TCP header")
                } else {
                    invalid("TCP data offset beyond the IP total length")
                };
            }
        };
        packet.key.sport = tcp.source_port();
        packet.key.dport = tcp.destination_port();
        packet.flags = segment[13];
        packet.seq = tcp.sequence_number();
        packet.ack = tcp.acknowledgment_number();
        packet.tcp_payload = (segment.len() - tcp.slice().len()) as u32;
        packet.tsval_at = timestamp_in(tcp.options()).map(|at| L4_AT + 20 + at);
        packet.l4_checksum = l4_checksum(src, dst, proto, segment);
    } else {
        let Ok(udp) = UdpHeaderSlice::from_slice(segment) else {
            return invalid("IP total length below IP + UDP header");
        };
        let len = usize::from(udp.length());
        if len < 8 {
            return invalid("UDP length below 8");
        }
        if len > segment.len() {
            return invalid("UDP length beyond the IP total length");
        }
        packet.key.sport = udp.source_port();
        packet.key.dport = udp.destination_port();
        packet.l4_checksum = l4_checksum(src, dst, proto, &segment[..len]);
    }
    Parsed::Valid(packet)
}

/// Connection state as the README describes it: one FIN half-closes, FIN
/// from both sides or a RST closes (a SYN may then reuse the ports).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum State {
    Handshake,
    Established,
    FinFromClient,
    FinFromBackend,
    Closing,
    Udp,
}

impl State {
    fn after(self, flags: u8, from_backend: bool) -> Self {
        use State::*;
        match self {
            Udp | Closing => self,
            _ if flags & RST != 0 => Closing,
            FinFromClient if from_backend && flags & FIN != 0 => Closing,
            FinFromBackend if !from_backend && flags & FIN != 0 => Closing,
            _ if flags & FIN != 0 && from_backend => FinFromBackend,
            _ if flags & FIN != 0 => FinFromClient,
            Handshake if from_backend => Established,
            _ => self,
        }
    }

    /// The program's `flow_state` value.
    pub fn from_program(state: u8) -> Option<Self> {
        use lb_common::flow_state::*;
        Some(match state {
            TCP_HANDSHAKE => Self::Handshake,
            TCP_ESTABLISHED => Self::Established,
            TCP_FIN_FROM_CLIENT => Self::FinFromClient,
            TCP_FIN_FROM_BACKEND => Self::FinFromBackend,
            TCP_CLOSING => Self::Closing,
            UDP | UDP_REPLIED => Self::Udp,
            _ => return None,
        })
    }
}

/// A tracked flow in the model.
#[derive(Clone, Copy, Debug)]
pub struct Flow {
    pub backend: Backend,
    pub lb_port: u16,
    pub state: State,
    /// What the program adds to the client's TSval towards the backend.
    pub ts_delta: u32,
}

impl Flow {
    fn reply_key(&self, snat: [u8; 4], proto: u8) -> Key {
        Key {
            src: self.backend.addr,
            dst: snat,
            sport: self.backend.port,
            dport: self.lb_port,
            proto,
        }
    }
}

/// What the program did with a frame, in the four classes the fuzz
/// tier counts.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Verdict {
    Forwarded,
    Rst,
    Passed,
    Dropped,
}

/// The program did something the model does not allow.
#[derive(Clone, Debug)]
pub struct Mismatch {
    /// The model's reading of the input (e.g. "IP total length beyond the frame").
    pub input: String,
    /// What the model expected and what differed.
    pub expected: String,
}

/// The model's view of the tracked flows.
pub struct Model {
    pub node: Node,
    flows: HashMap<Key, Flow>,
    /// Reply key -> the client key of its flow.
    replies: HashMap<Key, Key>,
}

fn action_name(action: u32) -> &'static str {
    match action {
        0 => "XDP_ABORTED",
        XDP_DROP => "XDP_DROP",
        XDP_PASS => "XDP_PASS",
        XDP_TX => "XDP_TX",
        XDP_REDIRECT => "XDP_REDIRECT",
        _ => "unknown action",
    }
}

/// The rewrite a forwarded packet must show.
struct Rewrite {
    src_mac: Mac,
    dst_mac: Mac,
    src: [u8; 4],
    dst: [u8; 4],
    sport: u16,
    dport: u16,
    /// (frame offset, value added) of a timestamp field to shift.
    ts_shift: Option<(usize, u32)>,
}

fn word32(frame: &[u8], at: usize) -> u32 {
    u32::from_be_bytes([frame[at], frame[at + 1], frame[at + 2], frame[at + 3]])
}

fn describe(packet: &Packet) -> String {
    let k = &packet.key;
    let proto = if packet.is_tcp() { "TCP" } else { "UDP" };
    format!(
        "valid {proto} {}:{} -> {}:{} flags {:#04x}, IP checksum {}, L4 checksum {:?}",
        std::net::Ipv4Addr::from(k.src),
        k.sport,
        std::net::Ipv4Addr::from(k.dst),
        k.dport,
        packet.flags,
        if packet.ip_checksum_ok { "ok" } else { "bad" },
        packet.l4_checksum
    )
}

impl Model {
    pub fn new(node: Node) -> Self {
        Self {
            node,
            flows: HashMap::new(),
            replies: HashMap::new(),
        }
    }

    pub fn flow(&self, key: &Key) -> Option<&Flow> {
        self.flows.get(key)
    }

    pub fn flow_count(&self) -> usize {
        self.flows.len()
    }

    pub fn reply_count(&self) -> usize {
        self.replies.len()
    }

    /// Replaces the model's entry for `client` by what the program holds
    /// (after a mismatch, so that one wrong verdict is reported once, not
    /// again by every later frame of the same flow).
    pub fn adopt(&mut self, client: Key, flow: Option<Flow>) {
        if let Some(old) = self.flows.remove(&client) {
            self.replies
                .remove(&old.reply_key(self.node.snat, client.proto));
        }
        if let Some(flow) = flow {
            self.replies
                .insert(flow.reply_key(self.node.snat, client.proto), client);
            self.flows.insert(client, flow);
        }
    }

    /// Judges the program's `action` and `output` for `input`, which came
    /// in on `ingress`, and updates the model's flows as the program must
    /// have. `now_ms` is the balancer's timestamp clock when it ran.
    pub fn judge(
        &mut self,
        ingress: u32,
        input: &[u8],
        action: u32,
        output: &[u8],
        now_ms: u32,
    ) -> Result<Verdict, Mismatch> {
        let parsed = classify(input);
        let fail = |input: String, expected: String| Mismatch { input, expected };
        let packet = match parsed {
            Parsed::Other(why) => {
                return self.expect_pass(input, action, output, || {
                    format!("not for the balancer: {why}")
                })
            }
            Parsed::Invalid { dst, why } => {
                let reading = format!("invalid: {why} (to {})", std::net::Ipv4Addr::from(dst));
                if self.node.is_vip(dst) {
                    return if action == XDP_DROP {
                        Ok(Verdict::Dropped)
                    } else {
                        Err(fail(
                            reading,
                            format!(
                                "XDP_DROP (broken packet to a VIP), got {}",
                                action_name(action)
                            ),
                        ))
                    };
                }
                return self.expect_pass(input, action, output, || reading);
            }
            Parsed::Valid(packet) => packet,
        };
        let reading = describe(&packet);
        if !self.node.accepts_mac(&packet.dst_mac) {
            return self.expect_pass(input, action, output, || {
                format!("{reading}, to another node's MAC")
            });
        }
        let key = packet.key;
        if key.dst == self.node.snat && self.node.nat_ports.contains(&key.dport) {
            return self.reply_from_backend(ingress, input, &packet, action, output, reading);
        }
        let syn = packet.is_syn();
        if let Some(flow) = self.flows.get_mut(&key) {
            if !(syn && flow.state == State::Closing) {
                flow.state = flow.state.after(packet.flags, false);
                let flow = *flow;
                let reading = format!("{reading}, tracked flow {flow:?}");
                let Some(&(egress, mac)) = self.node.neighbours.get(&flow.backend.addr) else {
                    return self.expect_drop(action, reading, "no route to the backend");
                };
                let rewrite = Rewrite {
                    src_mac: egress.mac,
                    dst_mac: mac,
                    src: self.node.snat,
                    dst: flow.backend.addr,
                    sport: flow.lb_port,
                    dport: flow.backend.port,
                    ts_shift: packet.tsval_at.map(|at| (at, flow.ts_delta)),
                };
                return expect_forward(
                    &packet,
                    input,
                    &rewrite,
                    forward_action(ingress, egress),
                    action,
                    output,
                    reading,
                );
            }
        }
        let Some(backends) = self.node.services.get(&(key.dst, key.dport, key.proto)) else {
            return self.expect_pass(input, action, output, || {
                format!("{reading}, not a service")
            });
        };
        if packet.is_tcp() && !syn {
            return expect_rst(&self.node, &packet, action, output, reading, "no flow");
        }
        if backends.is_empty() {
            if packet.is_tcp() {
                return expect_rst(&self.node, &packet, action, output, reading, "no backend");
            }
            return self.expect_drop(action, reading, "UDP to a service without backends");
        }
        let backends = backends.clone();
        self.new_flow(
            ingress, input, &packet, &backends, action, output, now_ms, reading,
        )
    }

    fn expect_pass(
        &self,
        input: &[u8],
        action: u32,
        output: &[u8],
        reading: impl FnOnce() -> String,
    ) -> Result<Verdict, Mismatch> {
        if action != XDP_PASS {
            return Err(Mismatch {
                input: reading(),
                expected: format!("XDP_PASS, got {}", action_name(action)),
            });
        }
        if output != input {
            return Err(Mismatch {
                input: reading(),
                expected: format!(
                    "XDP_PASS with the frame untouched; differs at {}",
                    differences(input, output)
                ),
            });
        }
        Ok(Verdict::Passed)
    }

    fn expect_drop(&self, action: u32, reading: String, why: &str) -> Result<Verdict, Mismatch> {
        if action == XDP_DROP {
            Ok(Verdict::Dropped)
        } else {
            Err(Mismatch {
                input: reading,
                expected: format!("XDP_DROP ({why}), got {}", action_name(action)),
            })
        }
    }

    fn reply_from_backend(
        &mut self,
        ingress: u32,
        input: &[u8],
        packet: &Packet,
        action: u32,
        output: &[u8],
        reading: String,
    ) -> Result<Verdict, Mismatch> {
        let Some(&client) = self.replies.get(&packet.key) else {
            return self.expect_pass(input, action, output, || {
                format!("{reading}, to an untracked NAT port")
            });
        };
        let flow = self
            .flows
            .get_mut(&client)
            .expect("the model keeps a reply entry only with its flow");
        // Only segments that change the flow's state look at it (and UDP).
        if !packet.is_tcp() || packet.flags & (SYN | FIN | RST) != 0 {
            flow.state = flow.state.after(packet.flags, true);
        }
        let flow = *flow;
        let reading = format!("{reading}, reply of {client:?} {flow:?}");
        let Some(&(egress, mac)) = self.node.neighbours.get(&client.src) else {
            return self.expect_drop(action, reading, "no route or neighbour to the client");
        };
        let rewrite = Rewrite {
            src_mac: egress.mac,
            dst_mac: mac,
            src: client.dst,
            dst: client.src,
            sport: client.dport,
            dport: client.sport,
            ts_shift: packet
                .tsval_at
                .map(|at| (at + 4, flow.ts_delta.wrapping_neg())),
        };
        expect_forward(
            packet,
            input,
            &rewrite,
            forward_action(ingress, egress),
            action,
            output,
            reading,
        )
    }

    #[allow(clippy::too_many_arguments)]
    fn new_flow(
        &mut self,
        ingress: u32,
        input: &[u8],
        packet: &Packet,
        backends: &[Backend],
        action: u32,
        output: &[u8],
        now_ms: u32,
        reading: String,
    ) -> Result<Verdict, Mismatch> {
        let reading = format!("{reading}, new flow");
        let fail = |expected: String| {
            Err(Mismatch {
                input: reading.clone(),
                expected,
            })
        };
        if action != XDP_TX && action != XDP_REDIRECT {
            return fail(format!(
                "forwarded to one of {backends:?}, got {}",
                action_name(action)
            ));
        }
        if output.len() != input.len() {
            return fail(format!(
                "a new flow's packet keeps its length {}, got {}",
                input.len(),
                output.len()
            ));
        }
        let dst = [output[30], output[31], output[32], output[33]];
        let dport = u16::from_be_bytes([output[36], output[37]]);
        let lb_port = u16::from_be_bytes([output[34], output[35]]);
        let Some(&backend) = backends.iter().find(|b| b.addr == dst && b.port == dport) else {
            return fail(format!(
                "sent to one of {backends:?}, got {}:{dport}",
                std::net::Ipv4Addr::from(dst)
            ));
        };
        // A SYN on a closed flow's ports replaces it: its source is free again.
        let replaced = self.flows.get(&packet.key).copied();
        if let Some(old) = replaced {
            self.replies
                .remove(&old.reply_key(self.node.snat, packet.key.proto));
        }
        let mut flow = Flow {
            backend,
            lb_port,
            state: if packet.is_tcp() {
                State::Handshake
            } else {
                State::Udp
            },
            ts_delta: 0,
        };
        let reply = flow.reply_key(self.node.snat, packet.key.proto);
        let restore = |model: &mut Self| {
            if let Some(old) = replaced {
                model
                    .replies
                    .insert(old.reply_key(model.node.snat, packet.key.proto), packet.key);
            }
        };
        if !self.node.nat_ports.contains(&lb_port) {
            restore(self);
            return fail(format!(
                "a NAT port in {:?}, got {lb_port}",
                self.node.nat_ports
            ));
        }
        if let Some(holder) = self.replies.get(&reply) {
            let holder = *holder;
            restore(self);
            return fail(format!(
                "a NAT source no live flow holds; {lb_port} towards {backend:?} is {holder:?}'s"
            ));
        }
        if let Some(at) = packet.tsval_at {
            let sent = word32(output, at);
            // The balancer's clock: monotonic milliseconds, read from
            // jiffies (a tick either side), plus the time the run took.
            let off = sent.wrapping_sub(now_ms) as i32;
            if off.unsigned_abs() > 2_000 {
                restore(self);
                return fail(format!(
                    "TSval on the balancer's clock (~{now_ms} ms), got {sent}"
                ));
            }
            flow.ts_delta = sent.wrapping_sub(word32(input, at));
        }
        let Some(&(egress, mac)) = self.node.neighbours.get(&backend.addr) else {
            restore(self);
            return fail("a backend the model has no neighbour for".to_string());
        };
        let rewrite = Rewrite {
            src_mac: egress.mac,
            dst_mac: mac,
            src: self.node.snat,
            dst: backend.addr,
            sport: lb_port,
            dport: backend.port,
            ts_shift: packet.tsval_at.map(|at| (at, flow.ts_delta)),
        };
        let verdict = expect_forward(
            packet,
            input,
            &rewrite,
            forward_action(ingress, egress),
            action,
            output,
            reading.clone(),
        );
        if verdict.is_ok() {
            self.flows.insert(packet.key, flow);
            self.replies.insert(reply, packet.key);
        } else {
            restore(self);
        }
        verdict
    }
}

fn forward_action(ingress: u32, egress: Interface) -> u32 {
    if egress.ifindex == ingress {
        XDP_TX
    } else {
        XDP_REDIRECT
    }
}

/// Byte positions where two frames differ, for messages.
fn differences(expected: &[u8], got: &[u8]) -> String {
    let mut out = String::new();
    if expected.len() != got.len() {
        let _ = write!(out, "length {} vs {}; ", expected.len(), got.len());
    }
    let diffs: Vec<String> = expected
        .iter()
        .zip(got)
        .enumerate()
        .filter(|(_, (a, b))| a != b)
        .map(|(i, (a, b))| format!("[{i}] {a:02x}->{b:02x}"))
        .take(16)
        .collect();
    out.push_str(&diffs.join(" "));
    out
}

/// A forwarded frame: `input` with `rewrite` applied, everything else
/// (TTL, IP id, flags, sequence numbers, options, payload, Ethernet
/// padding) as it came, checksums valid exactly when the input's were.
fn expect_forward(
    packet: &Packet,
    input: &[u8],
    rewrite: &Rewrite,
    expected_action: u32,
    action: u32,
    output: &[u8],
    reading: String,
) -> Result<Verdict, Mismatch> {
    let fail = |expected: String| {
        Err(Mismatch {
            input: reading.clone(),
            expected,
        })
    };
    if action != expected_action {
        return fail(format!(
            "{} with the rewrite {}, got {}",
            action_name(expected_action),
            show_rewrite(rewrite),
            action_name(action)
        ));
    }
    let mut expected = input.to_vec();
    expected[0..6].copy_from_slice(&rewrite.dst_mac);
    expected[6..12].copy_from_slice(&rewrite.src_mac);
    expected[26..30].copy_from_slice(&rewrite.src);
    expected[30..34].copy_from_slice(&rewrite.dst);
    expected[34..36].copy_from_slice(&rewrite.sport.to_be_bytes());
    expected[36..38].copy_from_slice(&rewrite.dport.to_be_bytes());
    if let Some((at, add)) = rewrite.ts_shift {
        let value = word32(input, at).wrapping_add(add);
        expected[at..at + 4].copy_from_slice(&value.to_be_bytes());
    }
    let l4_check_at = L4_AT + if packet.is_tcp() { 16 } else { 6 };
    // The checksums are judged by validity below, not by value.
    let mut masked = output.to_vec();
    if masked.len() == expected.len() {
        for at in [24, 25, l4_check_at, l4_check_at + 1] {
            masked[at] = 0;
            expected[at] = 0;
        }
    }
    if masked != expected {
        return fail(format!(
            "the rewrite {}; differs at {}",
            show_rewrite(rewrite),
            differences(&expected, &masked)
        ));
    }
    let Parsed::Valid(out) = classify(output) else {
        return fail("a well-formed packet out".to_string());
    };
    if out.ip_checksum_ok != packet.ip_checksum_ok {
        return fail(format!(
            "IP checksum valid = {} as the input's, got {}",
            packet.ip_checksum_ok, out.ip_checksum_ok
        ));
    }
    if out.l4_checksum != packet.l4_checksum {
        return fail(format!(
            "L4 checksum {:?} as the input's, got {:?}",
            packet.l4_checksum, out.l4_checksum
        ));
    }
    Ok(Verdict::Forwarded)
}

fn show_rewrite(r: &Rewrite) -> String {
    format!(
        "{}:{} -> {}:{}{}",
        std::net::Ipv4Addr::from(r.src),
        r.sport,
        std::net::Ipv4Addr::from(r.dst),
        r.dport,
        match r.ts_shift {
            Some((at, add)) => format!(" (timestamp at {at} + {add:#x})"),
            None => String::new(),
        }
    )
}

/// A RST back to the sender (RFC 9293 section 3.10.7.1): out of the
/// ingress interface to the sender's MAC from one of the node's unicast
/// MACs, VIP:port -> client:port, `<SEQ=SEG.ACK><CTL=RST>` for a segment
/// with ACK, else `<SEQ=0><ACK=SEG.SEQ+SEG.LEN><CTL=RST,ACK>`; no payload;
/// valid checksums. A RST is never answered; a segment sent to a group MAC
/// may also be dropped.
fn expect_rst(
    node: &Node,
    packet: &Packet,
    action: u32,
    output: &[u8],
    reading: String,
    why: &str,
) -> Result<Verdict, Mismatch> {
    let reading = format!("{reading}, {why}");
    let fail = |expected: String| {
        Err(Mismatch {
            input: reading.clone(),
            expected,
        })
    };
    // A segment sent to a group MAC: Linux's tcp_v4_rcv discards it
    // unanswered, which is as good as a RST from a unicast MAC.
    let group_mac = packet.dst_mac[0] & 1 == 1;
    if packet.flags & RST != 0 || (group_mac && action == XDP_DROP) {
        return if action == XDP_DROP {
            Ok(Verdict::Dropped)
        } else {
            fail(format!(
                "XDP_DROP (a RST is not answered), got {}",
                action_name(action)
            ))
        };
    }
    if action != XDP_TX {
        return fail(format!(
            "XDP_TX of a RST ({why}), got {}",
            action_name(action)
        ));
    }
    if output.len() != 54 {
        return fail(format!("a 54-byte RST frame, got {} bytes", output.len()));
    }
    let Parsed::Valid(rst) = classify(output) else {
        return fail("a well-formed RST".to_string());
    };
    let (seq, ack, flags) = if packet.flags & ACK != 0 {
        (packet.ack, None, RST)
    } else {
        let len = packet.tcp_payload
            + u32::from(packet.flags & SYN != 0)
            + u32::from(packet.flags & FIN != 0);
        (0, Some(packet.seq.wrapping_add(len)), RST | ACK)
    };
    let mut problems = Vec::new();
    if rst.dst_mac != packet.src_mac {
        problems.push("destination MAC is not the sender's");
    }
    // A group address is never a valid source (IEEE 802.3 3.2.3; Linux
    // bridges drop such frames), so the RST cannot reuse a broadcast or
    // multicast destination as its source.
    if rst.src_mac[0] & 1 == 1 || !node.own_macs.contains(&rst.src_mac) {
        problems.push("source MAC is not one of the node's unicast MACs");
    }
    let k = &packet.key;
    if rst.key
        != (Key {
            src: k.dst,
            dst: k.src,
            sport: k.dport,
            dport: k.sport,
            proto: PROTO_TCP,
        })
    {
        problems.push("addresses/ports are not the segment's swapped");
    }
    if rst.flags != flags {
        problems.push("flags");
    }
    if rst.seq != seq {
        problems.push("sequence number");
    }
    if let Some(ack) = ack {
        if rst.ack != ack {
            problems.push("acknowledgment number");
        }
    }
    if rst.tcp_payload != 0 {
        problems.push("payload");
    }
    if output[ETH_LEN + 8] == 0 {
        problems.push("TTL 0");
    }
    if !rst.ip_checksum_ok {
        problems.push("IP checksum");
    }
    if rst.l4_checksum != L4Checksum::Valid {
        problems.push("TCP checksum");
    }
    if problems.is_empty() {
        Ok(Verdict::Rst)
    } else {
        fail(format!(
            "a correct RST (wrong: {}); seq {seq:#x}, ack {ack:x?}, flags {flags:#04x}",
            problems.join(", ")
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use integration_tests::packet::{Frame, TCP_ACK, TCP_SYN};

    const A: [u8; 4] = [10, 0, 0, 1];
    const B: [u8; 4] = [10, 0, 0, 2];

    fn invalid_why(frame: &[u8]) -> &'static str {
        match classify(frame) {
            Parsed::Invalid { why, .. } => why,
            other => panic!("expected invalid, got {other:?}"),
        }
    }

    #[test]
    fn valid_segments_and_datagrams() {
        let syn = Frame::tcp(A, 1000, B, 80, TCP_SYN)
            .timestamps(&[1, 1], 7, 0)
            .payload(b"abc")
            .build();
        let Parsed::Valid(p) = classify(&syn) else {
            panic!("valid SYN")
        };
        assert_eq!(p.tcp_payload, 3);
        assert_eq!(p.tsval_at, Some(34 + 20 + 4));
        assert_eq!(word32(&syn, 34 + 24), 7);
        assert!(p.ip_checksum_ok);
        assert_eq!(p.l4_checksum, L4Checksum::Valid);
        let mut padded = syn.clone();
        padded.extend_from_slice(&[0xaa; 6]);
        assert!(matches!(classify(&padded), Parsed::Valid(_)), "padding");
        let mut bad = syn.clone();
        bad[60] ^= 1;
        let Parsed::Valid(p) = classify(&bad) else {
            panic!("a bad checksum is no validity rule")
        };
        assert_eq!(p.l4_checksum, L4Checksum::Invalid);

        let udp = Frame::udp(A, 1000, B, 53).build();
        assert!(matches!(classify(&udp), Parsed::Valid(_)));
    }

    #[test]
    fn length_fields_are_checked() {
        let ack = Frame::tcp(A, 1000, B, 80, TCP_ACK).payload(b"abcd").build();
        let total = ack.len() - 14;
        let with = |at: usize, value: &[u8]| {
            let mut f = ack.clone();
            f[at..at + value.len()].copy_from_slice(value);
            f
        };
        assert_eq!(
            invalid_why(&with(16, &((total + 1) as u16).to_be_bytes())),
            "IP total length beyond the frame"
        );
        assert_eq!(
            invalid_why(&with(16, &19u16.to_be_bytes())),
            "IP total length below the IP header"
        );
        assert_eq!(
            invalid_why(&with(16, &39u16.to_be_bytes())),
            "IP total length below IP + TCP header"
        );
        assert!(matches!(
            classify(&with(16, &40u16.to_be_bytes())),
            Parsed::Valid(_)
        ));
        assert_eq!(invalid_why(&with(46, &[0x40])), "TCP data offset below 5");
        assert_eq!(
            invalid_why(&with(46, &[0x70])),
            "TCP data offset beyond the IP total length"
        );
        assert!(matches!(classify(&with(46, &[0x60])), Parsed::Valid(_)));
        assert_eq!(invalid_why(&with(14, &[0x46])), "IP options");
        assert_eq!(
            invalid_why(&with(14, &[0x44])),
            "IHL below 5 or options cut short"
        );
        assert_eq!(invalid_why(&with(20, &[0x20])), "IP fragment");
        assert!(matches!(classify(&ack[..33]), Parsed::Other(_)));

        let udp = Frame::udp(A, 1000, B, 53).build();
        let mut short = udp.clone();
        short[38..40].copy_from_slice(&7u16.to_be_bytes());
        assert_eq!(invalid_why(&short), "UDP length below 8");
        let mut long = udp.clone();
        long[38..40].copy_from_slice(&((udp.len() - 33) as u16).to_be_bytes());
        assert_eq!(invalid_why(&long), "UDP length beyond the IP total length");
    }

    #[test]
    fn timestamp_walk_follows_linux() {
        assert_eq!(
            timestamp_in(&[1, 1, 8, 10, 0, 0, 0, 1, 0, 0, 0, 0]),
            Some(4)
        );
        assert_eq!(
            timestamp_in(&[3, 3, 7, 8, 10, 0, 0, 0, 1, 0, 0, 0, 0]),
            Some(5)
        );
        assert_eq!(
            timestamp_in(&[0, 8, 10, 0, 0, 0, 1, 0, 0, 0, 0]),
            None,
            "END"
        );
        assert_eq!(timestamp_in(&[1, 1, 8, 10, 0, 0]), None, "cut short");
        assert_eq!(
            timestamp_in(&[2, 1, 8, 10, 0, 0, 0, 1, 0, 0, 0, 0]),
            None,
            "length 1"
        );
        assert_eq!(
            timestamp_in(&[8, 6, 0, 0, 0, 0, 8, 10, 0, 0, 0, 1, 0, 0, 0, 0]),
            Some(8),
            "a timestamp of the wrong size is skipped"
        );
    }

    #[test]
    fn a_rst_never_leaves_from_a_group_mac() {
        let own: Mac = [2, 0, 0, 0, 0, 0x11];
        let node = Node {
            services: HashMap::new(),
            snat: B,
            nat_ports: 1..=2,
            own_macs: vec![own],
            neighbours: HashMap::new(),
        };
        let segment = Frame::tcp(A, 1000, B, 80, TCP_ACK)
            .macs([2, 0, 0, 0, 0, 1], [0xff; 6])
            .build();
        let Parsed::Valid(packet) = classify(&segment) else {
            panic!("valid segment")
        };
        let rst = |src_mac: Mac| {
            let mut rst = Frame::tcp(B, 80, A, 1000, RST)
                .macs(src_mac, [2, 0, 0, 0, 0, 1])
                .build();
            rst[38..42].copy_from_slice(&5000u32.to_be_bytes());
            crate::fix_checksums(&mut rst);
            rst
        };
        let judge = |action, output: &[u8]| {
            expect_rst(&node, &packet, action, output, String::new(), "no flow")
        };
        let answered = judge(XDP_TX, &rst(own));
        assert!(matches!(answered, Ok(Verdict::Rst)), "{answered:?}");
        assert_eq!(judge(XDP_DROP, &[]).ok(), Some(Verdict::Dropped));
        let broadcast = judge(XDP_TX, &rst([0xff; 6])).expect_err("broadcast source");
        assert!(broadcast.expected.contains("source MAC"), "{broadcast:?}");
    }

    #[test]
    fn state_follows_fins_and_rsts() {
        use State::*;
        assert_eq!(Handshake.after(SYN | ACK, true), Established);
        assert_eq!(Established.after(FIN | ACK, false), FinFromClient);
        assert_eq!(FinFromClient.after(FIN | ACK, true), Closing);
        assert_eq!(FinFromClient.after(FIN | ACK, false), FinFromClient);
        assert_eq!(Established.after(RST, true), Closing);
        assert_eq!(Closing.after(SYN, false), Closing);
        assert_eq!(Udp.after(RST, false), Udp);
    }
}
