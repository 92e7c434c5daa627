//! Fuzz tier: at least 100,000 frames per run through the real XDP object
//! (BPF_PROG_TEST_RUN in the program tests' namespace), each judged by the
//! reference model in `oracle/mod.rs` (etherparse and the
//! documented validity rules, never the program's parser).
//!
//! The frames are valid packets like the program tests' (SYN, data, FIN and
//! RST on tracked flows, segments without a flow, UDP, backend replies to
//! the NAT ports, non-service traffic, another node's MAC), every
//! truncation of each, interesting values of every length field (IHL, IP
//! total length, TCP data offset, UDP length), fragments, protocols,
//! Ethernet padding, random byte mutations, and random frames.
//!
//! `LB_FUZZ_SEED` (decimal or 0x-hex) replays a run; `LB_FUZZ_FRAMES` sets
//! the number of frames (default 100,000). Failures are collected over the
//! whole run and grouped by kind of frame, so one run shows every class
//! the program gets wrong; each group's first cases are printed in full.

use std::{
    collections::BTreeMap,
    time::{Duration, Instant},
};

use etherparse::checksum::Sum16BitWords;
mod oracle;

use integration_tests::{
    artifacts,
    packet::{Frame, L4, TCP_ACK, TCP_FIN, TCP_PSH, TCP_RST, TCP_SYN},
    program::*,
};
use lb_common::{FlowKey, PROTO_TCP, PROTO_UDP};
use oracle::{classify, Backend, Flow, Interface, Key, Model, Node, Parsed, State, Verdict};

const NAT_PORTS: std::ops::RangeInclusive<u16> = 20000..=23999;
/// Room for every flow a run makes (a few per scenario plus the random
/// SYNs), so the LRU maps never evict one the model still tracks.
const MAX_FLOWS: u32 = 65536;
const DEFAULT_FRAMES: usize = 100_000;
/// Full reports printed per group of failures.
const SHOWN_PER_GROUP: usize = 2;
/// Random mutations of each scenario's valid frame.
const RANDOM_MUTATIONS: usize = 80;
const LINUX_SYN_OPTIONS: &[u8] = &[2, 4, 5, 0xb4, 4, 2];

/// SplitMix64: small, seedable, and good enough to pick bytes.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }

    fn chance(&mut self, percent: u64) -> bool {
        self.next() % 100 < percent
    }

    fn byte(&mut self) -> u8 {
        self.next() as u8
    }

    fn bytes(&mut self, n: usize) -> Vec<u8> {
        (0..n).map(|_| self.byte()).collect()
    }

    fn pick<T: Copy>(&mut self, items: &[T]) -> T {
        items[self.below(items.len())]
    }
}

fn env_number(name: &str) -> Option<u64> {
    let value = std::env::var(name).ok()?;
    let parsed = match value.strip_prefix("0x") {
        Some(hex) => u64::from_str_radix(hex, 16),
        None => value.parse(),
    };
    Some(parsed.unwrap_or_else(|e| panic!("{name}={value}: {e}")))
}

fn hex(frame: &[u8]) -> String {
    frame.iter().map(|b| format!("{b:02x}")).collect()
}

fn monotonic_ms() -> u32 {
    lb_common::ts_clock_ms(lb_agent::dataplane::maps::monotonic_ns())
}

/// Recomputes the IPv4 header checksum and the TCP/UDP checksum over what
/// the length fields cover (as far as the frame has it), so that mutated
/// length fields also reach the program with otherwise valid checksums.
/// A UDP checksum of zero ("none") stays zero. (etherparse sums native
/// words: the result's native bytes are the wire bytes.)
fn fix_checksums(frame: &mut [u8]) {
    if frame.len() < 34 || frame[12..14] != [0x08, 0x00] {
        return;
    }
    frame[24..26].fill(0);
    let ip = Sum16BitWords::new()
        .add_slice(&frame[14..34])
        .ones_complement();
    frame[24..26].copy_from_slice(&ip.to_ne_bytes());
    let total = usize::from(u16::from_be_bytes([frame[16], frame[17]]));
    let end = (14 + total).min(frame.len());
    if end <= 34 {
        return;
    }
    let (src, dst, proto) = (
        [frame[26], frame[27], frame[28], frame[29]],
        [frame[30], frame[31], frame[32], frame[33]],
        frame[23],
    );
    let pseudo = |len: usize| {
        Sum16BitWords::new()
            .add_4bytes(src)
            .add_4bytes(dst)
            .add_2bytes([0, proto])
            .add_2bytes((len as u16).to_be_bytes())
    };
    let segment = &mut frame[34..end];
    match proto {
        6 if segment.len() >= 18 => {
            segment[16..18].fill(0);
            let check = pseudo(segment.len()).add_slice(segment).ones_complement();
            segment[16..18].copy_from_slice(&check.to_ne_bytes());
        }
        17 if segment.len() >= 8 && segment[6..8] != [0, 0] => {
            let len = usize::from(u16::from_be_bytes([segment[4], segment[5]])).min(segment.len());
            if len < 8 {
                return;
            }
            segment[6..8].fill(0);
            let check = pseudo(len)
                .add_slice(&segment[..len])
                .to_ones_complement_with_no_zero();
            segment[6..8].copy_from_slice(&check.to_ne_bytes());
        }
        _ => {}
    }
}

fn checksums_valid(frame: &[u8]) -> bool {
    matches!(classify(frame), Parsed::Valid(p)
        if p.ip_checksum_ok && p.l4_checksum != oracle::L4Checksum::Invalid)
}

/// A frame with `value` written at `at`, as mutated and with its
/// checksums recomputed.
fn set_field(base: &[u8], at: usize, value: &[u8]) -> [Vec<u8>; 2] {
    let mut raw = base.to_vec();
    raw[at..at + value.len()].copy_from_slice(value);
    let mut fixed = raw.clone();
    fix_checksums(&mut fixed);
    [raw, fixed]
}

/// Just below, at and just above `right`, and the extremes.
fn around(right: usize, extra: &[usize]) -> Vec<u16> {
    let mut values: Vec<usize> = vec![0, 1, 0x7fff, 0xfffe, 0xffff];
    values.extend([
        right.saturating_sub(2),
        right.saturating_sub(1),
        right,
        right + 1,
        right + 2,
    ]);
    values.extend_from_slice(extra);
    values.sort_unstable();
    values.dedup();
    values
        .into_iter()
        .filter_map(|v| u16::try_from(v).ok())
        .collect()
}

/// Every deterministic mutation of a valid frame: truncations, length
/// fields, fragment bits, protocol, Ethernet padding.
fn mutations(base: &[u8], rng: &mut Rng) -> Vec<(&'static str, Vec<u8>)> {
    let mut out: Vec<(&'static str, Vec<u8>)> = Vec::new();
    // The kernel refuses test frames shorter than an Ethernet header.
    for len in 14..base.len() {
        out.push(("truncation", base[..len].to_vec()));
    }
    if base.len() < 34 || base[12..14] != [0x08, 0x00] {
        return out;
    }
    for ihl in 0..16u8 {
        out.extend(set_field(base, 14, &[0x40 | ihl]).map(|f| ("IPv4 IHL", f)));
    }
    for version in [0u8, 6, 15] {
        out.extend(set_field(base, 14, &[version << 4 | 5]).map(|f| ("IP version", f)));
    }
    let total = base.len() - 14;
    let proto = base[23];
    let l4_min = if proto == PROTO_TCP { 20 } else { 8 };
    let tcp_header = if proto == PROTO_TCP && base.len() > 46 {
        usize::from(base[46] >> 4) * 4
    } else {
        l4_min
    };
    for value in around(
        total,
        &[
            19,
            20,
            20 + l4_min - 1,
            20 + l4_min,
            20 + tcp_header - 1,
            20 + tcp_header,
        ],
    ) {
        out.extend(set_field(base, 16, &value.to_be_bytes()).map(|f| ("IP total length", f)));
    }
    for frags in [
        0x2000u16, 0x0001, 0x1fff, 0x3fff, 0x2001, 0x4000, 0x8000, 0x6000,
    ] {
        out.extend(set_field(base, 20, &frags.to_be_bytes()).map(|f| ("IP fragment", f)));
    }
    for p in [0u8, 1, 6, 17, 41, 132, 255] {
        out.extend(set_field(base, 23, &[p]).map(|f| ("IP protocol", f)));
    }
    if proto == PROTO_TCP && base.len() >= 54 {
        for offset in 0..16u8 {
            let byte = offset << 4 | (base[46] & 0x0f);
            out.extend(set_field(base, 46, &[byte]).map(|f| ("TCP data offset", f)));
        }
    }
    if proto == PROTO_UDP && base.len() >= 42 {
        let right = total - 20;
        for value in around(right, &[7, 8, 9]) {
            out.extend(set_field(base, 38, &value.to_be_bytes()).map(|f| ("UDP length", f)));
        }
    }
    // Ethernet padding past the total length is not payload.
    let to_minimum = 60usize.saturating_sub(base.len());
    for pad in [1, 2, 3, 6, to_minimum.max(4), 1 + rng.below(40)] {
        let fill = if rng.chance(50) {
            vec![0; pad]
        } else {
            rng.bytes(pad)
        };
        let mut padded = base.to_vec();
        padded.extend_from_slice(&fill);
        out.push(("Ethernet padding", padded.clone()));
        // The same bytes claimed by the length fields instead.
        let claimed = (padded.len() - 14) as u16;
        let [mut raw, mut fixed] = set_field(&padded, 16, &claimed.to_be_bytes());
        if proto == PROTO_UDP {
            let udp = claimed - 20;
            raw[38..40].copy_from_slice(&udp.to_be_bytes());
            fixed[38..40].copy_from_slice(&udp.to_be_bytes());
            fix_checksums(&mut fixed);
        }
        out.push(("padding in the lengths", raw));
        out.push(("padding in the lengths", fixed));
    }
    out
}

/// A copy of `base` with a few random bytes changed (mostly in the
/// headers), sometimes with fixed checksums, cut or padded.
fn random_mutation(base: &[u8], rng: &mut Rng) -> Vec<u8> {
    let mut frame = base.to_vec();
    for _ in 0..1 + rng.below(4) {
        let span = if rng.chance(70) {
            frame.len().min(70)
        } else {
            frame.len()
        };
        let at = rng.below(span);
        frame[at] = match rng.below(4) {
            0 => rng.byte(),
            1 => frame[at] ^ (1 << rng.below(8)),
            2 => 0,
            _ => 0xff,
        };
    }
    if rng.chance(50) {
        fix_checksums(&mut frame);
    }
    if rng.chance(10) {
        frame.truncate(14 + rng.below(frame.len() - 13));
    } else if rng.chance(10) {
        let len = 1 + rng.below(32);
        let pad = rng.bytes(len);
        frame.extend_from_slice(&pad);
    }
    frame
}

/// A random frame: bytes alone, or headers that mostly look right.
fn random_frame(rng: &mut Rng) -> Vec<u8> {
    if rng.chance(30) {
        let len = 14 + rng.below(150);
        return rng.bytes(len);
    }
    let dst_mac = rng.pick(&[PUB_MAC, PRIV_MAC, [0xff; 6], [0x02, 0, 0, 0, 0x01, 0x12]]);
    let mut frame = Vec::new();
    frame.extend_from_slice(&dst_mac);
    frame.extend_from_slice(&rng.pick(&[CLIENT_MAC, WEB1_MAC]));
    frame.extend_from_slice(&rng.pick(&[[0x08, 0x00], [0x08, 0x00], [0x08, 0x00], [0x81, 0x00]]));
    let any = rng.byte();
    let proto = rng.pick(&[PROTO_TCP, PROTO_TCP, PROTO_UDP, PROTO_UDP, 1, any]);
    let l4_len = if proto == PROTO_UDP { 8 } else { 20 };
    let payload = rng.below(48);
    let mut ip = rng.bytes(20);
    ip[0] = if rng.chance(80) { 0x45 } else { rng.byte() };
    let total = 20 + l4_len + payload;
    if rng.chance(70) {
        ip[2..4].copy_from_slice(&(total as u16).to_be_bytes());
    }
    if rng.chance(80) {
        ip[6..8].copy_from_slice(&rng.pick(&[[0x40, 0], [0, 0]]));
    }
    ip[9] = proto;
    let any = [rng.byte(), 1, 2, 3];
    ip[12..16].copy_from_slice(&rng.pick(&[CLIENT, WEB1, WEB2, any]));
    let any = [rng.byte(), 9, 9, 9];
    ip[16..20].copy_from_slice(&rng.pick(&[VIP, VIP, LB_PRIV, LB_PUB, any]));
    frame.extend_from_slice(&ip);
    let mut l4 = rng.bytes(l4_len + payload);
    let nat_port = *NAT_PORTS.start() + rng.below(64) as u16;
    let any = rng.next() as u16;
    let dport = rng.pick(&[80u16, 443, 5353, 5300, 22, nat_port, any]);
    l4[2..4].copy_from_slice(&dport.to_be_bytes());
    if proto == PROTO_TCP && rng.chance(70) {
        l4[12] = 0x50 | (l4[12] & 0x0f);
    }
    if proto == PROTO_UDP && rng.chance(70) {
        l4[4..6].copy_from_slice(&((8 + payload) as u16).to_be_bytes());
    }
    frame.extend_from_slice(&l4);
    if rng.chance(60) {
        fix_checksums(&mut frame);
    }
    frame
}

/// A frame the program got wrong, with what it did.
struct Failure {
    index: usize,
    kind: &'static str,
    ingress: u32,
    input: Vec<u8>,
    action: u32,
    output: Vec<u8>,
    reading: String,
    expected: String,
}

struct Fuzz {
    h: Harness,
    model: Model,
    rng: Rng,
    seed: u64,
    target: usize,
    index: usize,
    verdicts: BTreeMap<Verdict, usize>,
    /// Kind of frame -> (frames, failures).
    kinds: BTreeMap<&'static str, (usize, usize)>,
    /// "kind: what the model read -> what it expected" -> failures.
    groups: BTreeMap<String, Vec<Failure>>,
    /// The client keys of the scenario being run, resynchronised from the
    /// program's flow table after a failure.
    scenario_keys: Vec<Key>,
    next_sport: u16,
    spent_in_kernel: Duration,
    forwarded_with_valid_checksums: usize,
}

fn flow_key(key: &Key) -> FlowKey {
    FlowKey {
        src_addr: key.src,
        dst_addr: key.dst,
        src_port: key.sport,
        dst_port: key.dport,
        proto: key.proto,
        _pad: [0; 3],
    }
}

/// The raw 5-tuple a frame would have, whatever its other fields say.
fn raw_key(frame: &[u8]) -> Option<Key> {
    if frame.len() < 38 || frame[12..14] != [0x08, 0x00] {
        return None;
    }
    Some(Key {
        src: [frame[26], frame[27], frame[28], frame[29]],
        dst: [frame[30], frame[31], frame[32], frame[33]],
        sport: u16::from_be_bytes([frame[34], frame[35]]),
        dport: u16::from_be_bytes([frame[36], frame[37]]),
        proto: frame[23],
    })
}

/// A short name of how the model read a frame, to group failures by.
fn reading_class(frame: &[u8]) -> String {
    match classify(frame) {
        Parsed::Other(why) => format!("other ({why})"),
        Parsed::Invalid { why, dst } if dst == VIP => format!("invalid to the VIP ({why})"),
        Parsed::Invalid { why, .. } => format!("invalid elsewhere ({why})"),
        Parsed::Valid(p) => format!(
            "valid {} to {}",
            if p.key.proto == PROTO_TCP {
                "TCP"
            } else {
                "UDP"
            },
            std::net::Ipv4Addr::from(p.key.dst)
        ),
    }
}

impl Fuzz {
    fn done(&self) -> bool {
        self.index >= self.target
    }

    fn sport(&mut self) -> u16 {
        self.next_sport = if self.next_sport >= 65000 {
            1024
        } else {
            self.next_sport + 1
        };
        self.next_sport
    }

    /// Runs one frame and judges it; returns the verdict if the program
    /// did what the model expects.
    fn run(&mut self, kind: &'static str, ingress: u32, frame: &[u8]) -> Option<Verdict> {
        if self.done() {
            return None;
        }
        let index = self.index;
        self.index += 1;
        let now_ms = monotonic_ms();
        let started = Instant::now();
        let (action, output) = self.h.run(ingress, frame);
        self.spent_in_kernel += started.elapsed();
        let stats = self.kinds.entry(kind).or_default();
        stats.0 += 1;
        match self.model.judge(ingress, frame, action, &output, now_ms) {
            Ok(verdict) => {
                *self.verdicts.entry(verdict).or_default() += 1;
                if verdict == Verdict::Forwarded && checksums_valid(frame) {
                    self.forwarded_with_valid_checksums += 1;
                }
                Some(verdict)
            }
            Err(mismatch) => {
                stats.1 += 1;
                let verdict = match action {
                    XDP_PASS => Verdict::Passed,
                    XDP_TX | XDP_REDIRECT => Verdict::Forwarded,
                    _ => Verdict::Dropped,
                };
                *self.verdicts.entry(verdict).or_default() += 1;
                let group = format!(
                    "{kind}: {} -> {}",
                    reading_class(frame),
                    mismatch.expected.split(';').next().unwrap_or_default()
                );
                self.groups.entry(group).or_default().push(Failure {
                    index,
                    kind,
                    ingress,
                    input: frame.to_vec(),
                    action,
                    output,
                    reading: mismatch.input,
                    expected: mismatch.expected,
                });
                self.resync(frame);
                None
            }
        }
    }

    /// After a failure, takes the program's view of the flows the frame
    /// may have touched, so that one wrong verdict is reported once.
    fn resync(&mut self, frame: &[u8]) {
        let mut keys = self.scenario_keys.clone();
        keys.extend(raw_key(frame));
        for key in keys {
            let flow = self.h.flow(&flow_key(&key)).and_then(|f| {
                Some(Flow {
                    backend: Backend {
                        addr: f.backend_addr,
                        port: f.backend_port,
                    },
                    lb_port: f.lb_port,
                    state: State::from_program(f.state)?,
                    ts_delta: f.ts_delta,
                })
            });
            self.model.adopt(key, flow);
        }
    }

    /// Runs a valid frame that a scenario needs to have its effect (the
    /// SYN that opens the flow a data segment then belongs to).
    fn setup(&mut self, ingress: u32, frame: &Frame) -> bool {
        self.run("setup", ingress, &frame.build()).is_some()
    }

    /// Notes that the scenario may open the client's flow from `sport`.
    fn track_client(&mut self, sport: u16, dport: u16, proto: u8) {
        self.scenario_keys.push(Key {
            src: CLIENT,
            dst: VIP,
            sport,
            dport,
            proto,
        });
    }

    fn client_tcp(&mut self, sport: u16, dport: u16, flags: u8) -> Frame {
        let mut frame = Frame::tcp(CLIENT, sport, VIP, dport, flags).macs(CLIENT_MAC, PUB_MAC);
        let seq = self.rng.next() as u32;
        let ack = if flags & TCP_ACK != 0 {
            self.rng.next() as u32
        } else {
            0
        };
        frame.l4 = L4::Tcp {
            sport,
            dport,
            seq,
            ack,
            flags,
        };
        frame
    }

    /// Opens a tracked TCP flow (SYN with timestamps, the backend's
    /// SYN-ACK); returns the client key, or None if the program failed.
    fn open_tcp(&mut self, sport: u16) -> Option<(Key, Flow)> {
        let tsval = self.rng.next() as u32;
        let syn = self
            .client_tcp(sport, 80, TCP_SYN)
            .timestamps(LINUX_SYN_OPTIONS, tsval, 0);
        let key = Key {
            src: CLIENT,
            dst: VIP,
            sport,
            dport: 80,
            proto: PROTO_TCP,
        };
        self.scenario_keys.push(key);
        if !self.setup(self.h.pub_ifindex, &syn) {
            return None;
        }
        let flow = *self.model.flow(&key)?;
        let synack = self.backend_frame(&flow, TCP_SYN | TCP_ACK).timestamps(
            LINUX_SYN_OPTIONS,
            self.rng.next() as u32,
            tsval.wrapping_add(flow.ts_delta),
        );
        if !self.setup(self.h.priv_ifindex, &synack) {
            return None;
        }
        Some((key, flow))
    }

    fn backend_frame(&mut self, flow: &Flow, flags: u8) -> Frame {
        let mac = if flow.backend.addr == WEB1 {
            WEB1_MAC
        } else {
            WEB2_MAC
        };
        let mut frame = Frame::tcp(
            flow.backend.addr,
            flow.backend.port,
            LB_PRIV,
            flow.lb_port,
            flags,
        )
        .macs(mac, PRIV_MAC);
        frame.l4 = L4::Tcp {
            sport: flow.backend.port,
            dport: flow.lb_port,
            seq: self.rng.next() as u32,
            ack: self.rng.next() as u32,
            flags,
        };
        frame
    }

    /// Sets up one scenario's state and returns its valid base frame and
    /// the interface it comes in on.
    fn scenario(&mut self, which: usize) -> Option<(&'static str, u32, Vec<u8>)> {
        self.scenario_keys.clear();
        let (public, private) = (self.h.pub_ifindex, self.h.priv_ifindex);
        let sport = self.sport();
        let payload = {
            let len = self.rng.below(64);
            self.rng.bytes(len)
        };
        let ts = self.rng.next() as u32;
        Some(match which {
            0 => {
                let syn = self
                    .client_tcp(sport, 80, TCP_SYN)
                    .timestamps(LINUX_SYN_OPTIONS, ts, 0);
                self.track_client(sport, 80, PROTO_TCP);
                ("SYN with timestamps (new flow)", public, syn.build())
            }
            1 => {
                let syn = self.client_tcp(sport, 80, TCP_SYN).payload(&payload);
                self.track_client(sport, 80, PROTO_TCP);
                ("bare SYN (new flow)", public, syn.build())
            }
            2..=4 => {
                self.open_tcp(sport)?;
                let (name, flags) = match which {
                    2 => ("data on a tracked flow", TCP_ACK | TCP_PSH),
                    3 => ("FIN on a tracked flow", TCP_FIN | TCP_ACK),
                    _ => ("RST on a tracked flow", TCP_RST | TCP_ACK),
                };
                let frame = self
                    .client_tcp(sport, 80, flags)
                    .timestamps(&[1, 1], ts, 0)
                    .payload(&payload);
                (name, public, frame.build())
            }
            5 => {
                let frame = self
                    .client_tcp(sport, 80, TCP_ACK | TCP_PSH)
                    .payload(&payload);
                ("segment without a flow (RST)", public, frame.build())
            }
            6 => {
                let frame = self.client_tcp(sport, 443, TCP_SYN);
                (
                    "SYN to a service without backends (RST)",
                    public,
                    frame.build(),
                )
            }
            7 | 8 => {
                let mut query = Frame::udp(CLIENT, sport, VIP, 5353)
                    .macs(CLIENT_MAC, PUB_MAC)
                    .payload(&payload);
                query.l4 = L4::Udp {
                    sport,
                    dport: 5353,
                    zero_checksum: which == 8,
                };
                self.track_client(sport, 5353, PROTO_UDP);
                let name = if which == 8 {
                    "UDP without checksum"
                } else {
                    "UDP to the service"
                };
                (name, public, query.build())
            }
            9 => {
                let query = Frame::udp(CLIENT, sport, VIP, 5300)
                    .macs(CLIENT_MAC, PUB_MAC)
                    .payload(&payload);
                ("UDP to a service without backends", public, query.build())
            }
            10 => {
                let (_, flow) = self.open_tcp(sport)?;
                let frame = self
                    .backend_frame(&flow, TCP_ACK | TCP_PSH)
                    .timestamps(&[1, 1], ts, ts.wrapping_add(flow.ts_delta))
                    .payload(&payload);
                ("backend reply (TCP)", private, frame.build())
            }
            11 => {
                let query = Frame::udp(CLIENT, sport, VIP, 5353).macs(CLIENT_MAC, PUB_MAC);
                let key = Key {
                    src: CLIENT,
                    dst: VIP,
                    sport,
                    dport: 5353,
                    proto: PROTO_UDP,
                };
                self.scenario_keys.push(key);
                if !self.setup(public, &query) {
                    return None;
                }
                let flow = *self.model.flow(&key)?;
                let mac = if flow.backend.addr == WEB1 {
                    WEB1_MAC
                } else {
                    WEB2_MAC
                };
                let answer = Frame::udp(flow.backend.addr, 5353, LB_PRIV, flow.lb_port)
                    .macs(mac, PRIV_MAC)
                    .payload(&payload);
                ("backend reply (UDP)", private, answer.build())
            }
            12 => {
                // The top of the range: the run's flows take it from the bottom.
                let port = *NAT_PORTS.end() - self.rng.below(16) as u16;
                let stray = Frame::tcp(WEB1, 80, LB_PRIV, port, TCP_SYN | TCP_ACK)
                    .macs(WEB1_MAC, PRIV_MAC)
                    .payload(&payload);
                ("reply to an untracked NAT port", private, stray.build())
            }
            13 => {
                let frame = match self.rng.below(5) {
                    0 => Frame::tcp(CLIENT, sport, LB_PUB, 22, TCP_ACK | TCP_PSH),
                    1 => Frame::tcp(CLIENT, sport, VIP, 8080, TCP_SYN),
                    2 => Frame::udp(CLIENT, sport, VIP, 5354),
                    3 => Frame::udp(CLIENT, sport, VIP, 80),
                    _ => Frame::tcp(CLIENT, sport, VIP, 5353, TCP_SYN),
                }
                .macs(CLIENT_MAC, PUB_MAC)
                .payload(&payload);
                ("not for a service", public, frame.build())
            }
            14 => {
                let mut icmp = Frame::tcp(CLIENT, sport, VIP, 80, TCP_SYN)
                    .macs(CLIENT_MAC, PUB_MAC)
                    .payload(&payload)
                    .build();
                icmp[23] = 1;
                fix_checksums(&mut icmp);
                ("ICMP to the VIP", public, icmp)
            }
            _ => {
                let frame = self
                    .client_tcp(sport, 80, TCP_SYN)
                    .macs(CLIENT_MAC, [0x02, 0, 0, 0, 0x01, 0x12]);
                ("SYN to another node's MAC", public, frame.build())
            }
        })
    }

    fn go(&mut self) {
        const SCENARIOS: usize = 16;
        let mut which = 0;
        while !self.done() {
            let scenario = self.scenario(which % SCENARIOS);
            which += 1;
            let Some((name, ingress, base)) = scenario else {
                continue;
            };
            self.run(name, ingress, &base);
            let mut frames = mutations(&base, &mut self.rng);
            for _ in 0..RANDOM_MUTATIONS {
                frames.push(("random mutation", random_mutation(&base, &mut self.rng)));
            }
            for (kind, frame) in frames {
                self.run(kind, ingress, &frame);
                if self.rng.chance(10) {
                    let random = random_frame(&mut self.rng);
                    let ingress = if self.rng.chance(50) {
                        self.h.pub_ifindex
                    } else {
                        self.h.priv_ifindex
                    };
                    self.run("random frame", ingress, &random);
                }
            }
        }
    }

    fn report(&self, took: Duration) -> Option<String> {
        let count = |v| self.verdicts.get(&v).copied().unwrap_or(0);
        println!(
            "fuzz: {} frames (seed {:#x}): {} forwarded ({} with valid checksums), {} rst, \
             {} passed, {} dropped ({:.1} s, {:.1} s of it in BPF_PROG_TEST_RUN)",
            self.index,
            self.seed,
            count(Verdict::Forwarded),
            self.forwarded_with_valid_checksums,
            count(Verdict::Rst),
            count(Verdict::Passed),
            count(Verdict::Dropped),
            took.as_secs_f64(),
            self.spent_in_kernel.as_secs_f64(),
        );
        for (kind, (frames, failures)) in &self.kinds {
            println!(
                "fuzz:   {frames:>6} {kind}{}",
                match failures {
                    0 => String::new(),
                    n => format!(" ({n} FAILED)"),
                }
            );
        }
        if self.groups.is_empty() {
            return None;
        }
        let total: usize = self.groups.values().map(Vec::len).sum();
        let mut text = format!(
            "fuzz: {total} of {} frames judged wrong (seed {:#x}; replay with \
             LB_FUZZ_SEED={:#x} LB_FUZZ_FRAMES={}), in {} groups:\n",
            self.index,
            self.seed,
            self.seed,
            self.target,
            self.groups.len()
        );
        for (group, failures) in &self.groups {
            let _ = std::fmt::Write::write_fmt(
                &mut text,
                format_args!("  {:>6} x {group}\n", failures.len()),
            );
        }
        for (group, failures) in &self.groups {
            println!("\nfuzz: FAILED group {group} ({} frames)", failures.len());
            for f in failures.iter().take(SHOWN_PER_GROUP) {
                let ingress = if f.ingress == self.h.pub_ifindex {
                    "pub0"
                } else {
                    "priv0"
                };
                println!(
                    "  frame #{} ({}, in on {ingress}), seed {:#x}\n    model read: {}\n    \
                     expected:   {}\n    got:        action {} ({} bytes)\n    input:  {}\n    \
                     output: {}",
                    f.index,
                    f.kind,
                    self.seed,
                    f.reading,
                    f.expected,
                    f.action,
                    f.output.len(),
                    hex(&f.input),
                    hex(&f.output)
                );
            }
        }
        Some(text)
    }
}

fn node(h: &Harness) -> Node {
    let public = Interface {
        ifindex: h.pub_ifindex,
        mac: PUB_MAC,
    };
    let private = Interface {
        ifindex: h.priv_ifindex,
        mac: PRIV_MAC,
    };
    let web = |port| vec![Backend { addr: WEB1, port }, Backend { addr: WEB2, port }];
    Node {
        services: [
            ((VIP, 80, PROTO_TCP), web(80)),
            ((VIP, 5353, PROTO_UDP), web(5353)),
            ((VIP, 443, PROTO_TCP), vec![]),
            ((VIP, 5300, PROTO_UDP), vec![]),
        ]
        .into_iter()
        .collect(),
        snat: LB_PRIV,
        nat_ports: NAT_PORTS,
        own_macs: vec![PUB_MAC, PRIV_MAC],
        neighbours: [
            (CLIENT, (public, CLIENT_MAC)),
            (VIP, (public, VIP_MAC)),
            (WEB1, (private, WEB1_MAC)),
            (WEB2, (private, WEB2_MAC)),
        ]
        .into_iter()
        .collect(),
    }
}

#[test]
fn fixed_checksums_are_valid() {
    let mut tcp = Frame::tcp(CLIENT, 1000, VIP, 80, TCP_ACK)
        .timestamps(&[1, 1], 5, 6)
        .payload(b"odd")
        .build();
    let mut udp = Frame::udp(CLIENT, 1000, VIP, 53).payload(b"odd").build();
    for frame in [&mut tcp, &mut udp] {
        frame[20] ^= 0x40;
        frame[40] ^= 0x55;
        assert!(!checksums_valid(frame));
        fix_checksums(frame);
        assert!(checksums_valid(frame), "{}", hex(frame));
    }
}

#[test]
fn random_and_mutated_frames_match_the_reference_model() {
    let Some(object) = artifacts::lb_object() else {
        return;
    };
    let seed = env_number("LB_FUZZ_SEED").unwrap_or_else(|| {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .expect("clock after 1970");
        now.as_nanos() as u64 ^ u64::from(std::process::id()) << 32
    });
    let target = env_number("LB_FUZZ_FRAMES").map_or(DEFAULT_FRAMES, |n| n as usize);
    println!("fuzz: seed {seed:#x}, {target} frames (LB_FUZZ_SEED / LB_FUZZ_FRAMES to change)");
    let started = Instant::now();
    let mut h = Harness::with_capacity(&object, *NAT_PORTS.start(), *NAT_PORTS.end(), MAX_FLOWS);
    h.add_service(0, VIP, 80, PROTO_TCP, &[(0, WEB1, 80), (1, WEB2, 80)]);
    h.add_service(1, VIP, 5353, PROTO_UDP, &[(2, WEB1, 5353), (3, WEB2, 5353)]);
    h.add_service(2, VIP, 443, PROTO_TCP, &[]);
    h.add_service(3, VIP, 5300, PROTO_UDP, &[]);
    let model = Model::new(node(&h));
    let mut fuzz = Fuzz {
        h,
        model,
        rng: Rng(seed),
        seed,
        target,
        index: 0,
        verdicts: BTreeMap::new(),
        kinds: BTreeMap::new(),
        groups: BTreeMap::new(),
        scenario_keys: Vec::new(),
        next_sport: 1024,
        spent_in_kernel: Duration::ZERO,
        forwarded_with_valid_checksums: 0,
    };
    let setup = started.elapsed();
    fuzz.go();
    println!("fuzz: harness set up in {:.1} s", setup.as_secs_f64());
    let tracked = (fuzz.h.flow_count(), fuzz.h.reply_count());
    let modelled = (fuzz.model.flow_count(), fuzz.model.reply_count());
    println!("fuzz: flows and reply entries: program {tracked:?}, model {modelled:?}");
    if let Some(failures) = fuzz.report(started.elapsed()) {
        panic!("{failures}");
    }
    // With every verdict right, the program tracks what the model does.
    assert_eq!(
        tracked, modelled,
        "flows and reply entries, program vs model"
    );
}
