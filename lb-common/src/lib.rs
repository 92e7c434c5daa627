//! Map key/value layouts and checksum math shared by the XDP program and the agent.
//!
//! This crate is the single source of truth for everything that crosses the
//! kernel/user boundary: every struct is `#[repr(C)]` with explicit padding so
//! that both sides (and `bpftool map dump`, through BTF) agree on the bytes.
//! Addresses are stored as `[u8; 4]` in network order (so bpftool prints
//! `[10,100,0,100]`), ports as host-order `u16` (so bpftool prints `80`).
#![no_std]

pub mod checksum;
pub mod maps;

/// Names of the maps, as the XDP program declares them and as they are pinned
/// under `/sys/fs/bpf/<instance>/`.
pub mod map_names {
    /// `ServiceKey` -> `ServiceValue`: the configured services.
    pub const SERVICES: &str = "services";
    /// Backend id -> `BackendValue`: address and port of each backend.
    pub const BACKENDS: &str = "backends";
    /// `(service_id * 2 + ring_half) * RING_SIZE + slot` -> backend id: the
    /// weighted schedule, double-buffered per service.
    pub const RINGS: &str = "rings";
    /// Per-CPU cursor into each service's ring (index = service id).
    pub const RR_CURSORS: &str = "rr_cursors";
    /// Client-side `FlowKey` -> `FlowValue`: forward connection tracking.
    pub const FLOWS: &str = "flows";
    /// Port pool id -> the pool's reply table: an array of `ReplyValue`s
    /// indexed by `port_slot` (SNAT address index, port), `live` while a
    /// flow holds that NAT source: reverse connection tracking.
    pub const REPLY_TABLES: &str = "reply_tables";
    /// `PoolKey` (backend address, port, protocol) -> port pool id: the
    /// reply table a backend's packets are looked up in.
    pub const POOL_IDS: &str = "pool_ids";
    /// Before reply tables: backend-side `FlowKey` -> `ReplyValue`. Only
    /// read once, to carry an older agent's flows over (`dataplane`).
    pub const LEGACY_REPLIES: &str = "replies";
    /// Index 0 -> `Settings`: node-wide settings written by the agent.
    pub const SETTINGS: &str = "settings";
    /// ifindex -> ifindex: interfaces the program may redirect to.
    pub const TX_PORTS: &str = "tx_ports";
    /// Per-CPU `Counters` per service id.
    pub const SERVICE_STATS: &str = "service_stats";
    /// Per-CPU `Counters` per backend id.
    pub const BACKEND_STATS: &str = "backend_stats";
    /// Per-CPU packet count per `Reason`.
    pub const REASONS: &str = "reasons";
    /// VIP address -> number of services on it: recognises packets for a VIP
    /// that cannot be matched to a service port (fragments, IP options, truncated).
    pub const VIPS: &str = "vips";
    /// Next-hop address -> time of a route lookup that found no neighbour
    /// (MAC): the agent asks the kernel to resolve these at once.
    pub const NEIGH_MISSES: &str = "neigh_misses";
    /// Port pool id -> a queue of free `port_slot`s towards one backend
    /// endpoint (address, port, protocol), in the order they were released.
    pub const PORT_QUEUES: &str = "port_queues";
    /// Port pool id -> `PortPool`: the agent's record of each queue.
    pub const PORT_POOLS: &str = "port_pools";
    /// Per-CPU count of slots the program took from each pool's queue.
    pub const PORT_TAKEN: &str = "port_taken";
    /// Per-CPU `NextHop` towards each backend id: new flows start from it
    /// instead of a route lookup.
    pub const BACKEND_HOPS: &str = "backend_hops";
    /// Per-CPU ring of `HalfOpenEntry`: the flows each CPU opened, oldest
    /// at the cursor, so that half-open ones give way to new flows.
    pub const HALF_OPEN: &str = "half_open";
    /// Per-CPU `HalfOpenCursor` at index 0: where each CPU's ring goes on.
    pub const HALF_OPEN_CURSORS: &str = "half_open_cursors";
    /// Ring buffer of `FlowEvent`s (new flows and state changes) for the
    /// agent's flow sync, written while `Settings::sync_events` is set.
    pub const FLOW_EVENTS: &str = "flow_events";
    /// Per-CPU count at index 0 of `FlowEvent`s lost to a full ring.
    pub const FLOW_EVENTS_LOST: &str = "flow_events_lost";
    /// Per-CPU `FlowCacheEntry` per `flow_cache_slots` index: copies of
    /// established flows, so that their packets skip the `flows` hash.
    pub const FLOW_CACHE: &str = "flow_cache";
    /// Generation per `flow_cache_slots` generation index, moved on by
    /// every change of a flow that cached copies must not outlive.
    pub const FLOW_GENERATIONS: &str = "flow_generations";
    /// Index 0 -> the agent's epoch of the flow cache: moved on whenever
    /// the agent removes or rewrites flows, which ends every cached copy.
    pub const FLOW_CACHE_EPOCH: &str = "flow_cache_epoch";
    /// Index `liveness::AGENT` -> the agent's last heartbeat, index
    /// `liveness::PEER_MASTER` -> when the program last saw the VRRP peer
    /// advertise as master (both on the program's clock, in ns).
    pub const AGENT_LIVENESS: &str = "agent_liveness";
    /// Per-CPU `PoolCacheEntry` per `pool_cache_slot`: copies of `pool_ids`
    /// entries, so that replies skip that hash.
    pub const POOL_CACHE: &str = "pool_cache";
}

/// Most services one node can hold (service ids are `0..MAX_SERVICES`).
pub const MAX_SERVICES: u32 = 256;
/// Most backends one node can hold across all services (backend ids are `0..MAX_BACKENDS`).
pub const MAX_BACKENDS: u32 = 4096;
/// Slots in each service's schedule ring. Weights are scaled to fit; as many
/// as the node has backends, so that any service keeps a slot for each of
/// its backends.
pub const RING_SIZE: u32 = MAX_BACKENDS;
/// Entries of the `rings` map: two halves of `RING_SIZE` per service.
pub const RING_SLOTS: u32 = MAX_SERVICES * 2 * RING_SIZE;
/// Default size of each connection-tracking map.
pub const DEFAULT_MAX_FLOWS: u32 = 1 << 20;
/// Redirect targets (interfaces) the program can send to.
pub const MAX_TX_PORTS: u32 = 64;
/// Next hops without a neighbour the program remembers for the agent.
pub const MAX_NEIGH_MISSES: u32 = 1024;
/// How many slots the program takes from a pool's queue for one new flow
/// before it counts port exhaustion. A slot is only skipped when a live
/// flow already holds it: one that flow sync installed while the slot sat
/// in the queue (`reply_claim::OWN_QUEUED`), which the agent takes out of
/// the queues before this node leads, so only stragglers remain.
pub const PORT_CLAIM_TRIES: u32 = 8;
/// Most source addresses in the SNAT pool (`Settings::snat_addrs`).
pub const MAX_SNAT_ADDRESSES: usize = 16;
/// Entries a reply table has per SNAT address: one per port, so that a
/// `port_slot` is its own index.
pub const REPLY_SLOTS_PER_ADDRESS: u32 = 1 << 16;
/// `BPF_F_INNER_MAP`: reply tables of different sizes can stand in one
/// outer map (the kernel then checks each lookup against the table's own size).
pub const INNER_MAP_FLAG: u32 = 1 << 12;

/// Entries of the reply table of a pool whose SNAT layout has `addresses` addresses.
pub const fn reply_table_len(addresses: u32) -> u32 {
    addresses * REPLY_SLOTS_PER_ADDRESS
}
/// Slots of each CPU's flow cache (`flow_cache`), a power of two.
pub const FLOW_CACHE_SLOTS: u32 = 8192;
/// Entries of `flow_generations`, a power of two.
pub const FLOW_GENERATIONS_SLOTS: u32 = 65536;
/// Longest a cached flow copy serves packets before its packet goes to the
/// `flows` hash again (refreshing the entry's `last_seen_ns` there and the
/// copy); see `flow_cache_ttl_ns`.
pub const FLOW_CACHE_MAX_TTL_NS: u64 = 250_000_000;

/// The flow cache's validity for a node whose established flows idle out
/// after `established_ns`: short against that timeout, because hits do not
/// refresh the flow's `last_seen_ns` in `flows` (only the hash lookups
/// every this often do), and the agent expires by it.
pub const fn flow_cache_ttl_ns(established_ns: u64) -> u64 {
    let quarter = established_ns / 4;
    if quarter < FLOW_CACHE_MAX_TTL_NS {
        quarter
    } else {
        FLOW_CACHE_MAX_TTL_NS
    }
}

/// Where `key` lives in the flow cache: (slot in each CPU's cache, index
/// in `flow_generations`). A multiplicative hash of the folded tuple: cheap
/// enough to inline, and a collision (even a crafted one) only costs the
/// colliding flows their hash lookup.
#[inline(always)]
pub fn flow_cache_slots(key: &FlowKey) -> (u32, u32) {
    let ports = (u32::from(key.src_port) << 16) | u32::from(key.dst_port);
    let folded = u32::from_ne_bytes(key.src_addr)
        ^ u32::from_ne_bytes(key.dst_addr).rotate_left(16)
        ^ ports
        ^ u32::from(key.proto);
    let hash = u64::from(folded).wrapping_mul(0x9E37_79B9_7F4A_7C15);
    let slot = (hash >> (64 - FLOW_CACHE_SLOTS.trailing_zeros())) as u32;
    let generation = (hash >> 24) as u32 & (FLOW_GENERATIONS_SLOTS - 1);
    (slot, generation)
}

/// A copy of an established flow in a CPU's flow cache. It serves that
/// CPU's packets of the flow while `flow.last_seen_ns` (the time it was
/// copied) is younger than `Settings::flow_cache_ttl_ns`, its `generation`
/// is the one in `flow_generations` and its `epoch` the agent's.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct FlowCacheEntry {
    pub key: FlowKey,
    pub flow: FlowValue,
    pub generation: u32,
    pub epoch: u32,
}

/// Slots of each CPU's copies of `pool_ids` entries (`pool_cache`), a
/// power of two.
pub const POOL_CACHE_SLOTS: u32 = 1024;

/// Where the copy of the pool id of backend endpoint `key` lives in each
/// CPU's `pool_cache`.
#[inline(always)]
pub fn pool_cache_slot(key: &PoolKey) -> u32 {
    let folded = u32::from_ne_bytes(key.addr)
        ^ ((u32::from(key.port) << 16) | u32::from(key.proto)).rotate_left(8);
    let hash = u64::from(folded).wrapping_mul(0x9E37_79B9_7F4A_7C15);
    (hash >> (64 - POOL_CACHE_SLOTS.trailing_zeros())) as u32
}

/// A CPU's copy of a `pool_ids` entry. It is only believed while the
/// pool's record in `port_pools` is live and names the same endpoint: the
/// agent writes the record whenever it gives a pool id to an endpoint or
/// takes it away, so no copy outlives the assignment it was made from.
/// An empty slot (protocol 0) matches no packet.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct PoolCacheEntry {
    pub endpoint: PoolKey,
    pub pool: u32,
}

/// Slots of each CPU's half-open ring: the most half-open flows one CPU
/// keeps (`Settings::half_open_per_cpu` may ask for fewer).
pub const HALF_OPEN_SLOTS: u32 = 16384;

/// Bytes of the `flow_events` ring buffer: room for about 80,000 events
/// (40 bytes and an 8-byte header each), several seconds of a heavy
/// new-flow load should the agent fall behind.
pub const FLOW_EVENTS_BYTES: u32 = 4 << 20;

/// The share of the flow table that half-open flows may take, as a divisor.
pub const HALF_OPEN_SHARE: u32 = 8;

/// Ring slots per CPU: half-open flows may take an eighth of a flow table
/// of `max_flows` and half of one backend's `pool_capacity` NAT sources
/// (so that they never leave a backend without ports for real clients),
/// split over `cpus`, within the ring's size.
pub fn half_open_per_cpu(max_flows: u32, pool_capacity: u32, cpus: u32) -> u32 {
    let total = (max_flows / HALF_OPEN_SHARE).min(pool_capacity / 2);
    (total / cpus.max(1)).clamp(1, HALF_OPEN_SLOTS)
}

/// One slot of a CPU's half-open ring: a flow that CPU opened, named by its
/// client key and its NAT source (which tell it from a later flow of the
/// same client ports).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct HalfOpenEntry {
    pub client: FlowKey,
    pub lb_port: u16,
    pub snat_index: u8,
    pub _pad: u8,
    pub port_pool: u32,
}

/// A CPU's position in its half-open ring, and how many half-open flows
/// gave way there.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct HalfOpenCursor {
    /// The slot the next flow opened takes (below the ring's length).
    pub next: u32,
    pub _pad: u32,
    /// Half-open flows ended to make room for new ones.
    pub evicted: u64,
}

/// A NAT source (address, port) as the port queues hold it, independent of
/// the address family: the index of the address in the SNAT pool and the
/// port.
#[inline(always)]
pub const fn port_slot(address_index: u8, port: u16) -> u32 {
    ((address_index as u32) << 16) | port as u32
}

/// The SNAT pool index of a `port_slot`.
#[inline(always)]
pub const fn slot_address_index(slot: u32) -> u8 {
    (slot >> 16) as u8
}

/// The port of a `port_slot`.
#[inline(always)]
pub const fn slot_port(slot: u32) -> u16 {
    slot as u16
}

/// The agent's record of one port pool (one queue per backend endpoint),
/// pinned with the queues so that a restarted agent carries on where the
/// last one stopped.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct PortPool {
    /// The endpoint whose NAT sources this pool hands out.
    pub backend_addr: [u8; 4],
    pub backend_port: u16,
    pub proto: u8,
    /// 1 while the pool is in use.
    pub live: u8,
    /// Fingerprint of the SNAT addresses and port ranges the slots were
    /// made from; another layout means the queue is rebuilt.
    pub layout: u64,
    /// Slots in the pool: addresses x usable ports.
    pub capacity: u32,
    /// Slots `0..fresh_next` (in the layout's order) have been queued at
    /// least once; the agent queues the rest as the queue runs low.
    pub fresh_next: u32,
    /// Slots the agent gave back after their flow ended.
    pub released: u64,
}

/// IP protocol numbers as stored in `ServiceKey::proto` and `FlowKey::proto`.
pub const PROTO_TCP: u8 = 6;
pub const PROTO_UDP: u8 = 17;

/// Identifies a service: the VIP, the L4 protocol and the service port.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default)]
pub struct ServiceKey {
    pub vip: [u8; 4],
    pub port: u16,
    pub proto: u8,
    pub _pad: u8,
}

/// What the program needs to schedule a new connection of a service.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct ServiceValue {
    /// Index into `rings`, `rr_cursors` and `service_stats`.
    pub id: u32,
    /// Number of used slots in this service's ring; 0 means no backend takes
    /// new connections (TCP SYNs are answered with RST, UDP is dropped).
    pub ring_len: u32,
    /// Which of the service's two rings is live (0 or 1). The agent writes
    /// the other one and then flips this value in one map update, so the
    /// program never sees a half-written schedule.
    pub ring_half: u32,
    pub _pad: u32,
}

/// First slot in `rings` of half `ring_half` of service `service_id`'s ring.
#[inline(always)]
pub const fn ring_base(service_id: u32, ring_half: u32) -> u32 {
    (service_id * 2 + (ring_half & 1)) * RING_SIZE
}

/// A backend as the program rewrites packets towards it.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct BackendValue {
    pub addr: [u8; 4],
    pub port: u16,
    pub _pad: u16,
    /// The service this backend id belongs to (ids are never shared).
    pub service_id: u32,
    /// The port pool (index into `port_queues`) of this backend's endpoint.
    /// Backends of several services at the same address, port and protocol
    /// share one pool: their flows share the backend's port space.
    pub port_pool: u32,
}

/// Connection 5-tuple, as seen on the wire in one direction.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default)]
pub struct FlowKey {
    pub src_addr: [u8; 4],
    pub dst_addr: [u8; 4],
    pub src_port: u16,
    pub dst_port: u16,
    pub proto: u8,
    pub _pad: [u8; 3],
}

/// Life-cycle of a tracked flow; picks its idle timeout.
pub mod flow_state {
    /// TCP: SYN seen, no reply from the backend yet.
    pub const TCP_HANDSHAKE: u8 = 1;
    /// TCP: the client completed the handshake (its ACK of the backend's
    /// SYN-ACK): only now does the long established timeout apply, so a
    /// spoofed SYN, which the backend answers but no client ever
    /// acknowledges, lasts only the handshake timeout.
    pub const TCP_ESTABLISHED: u8 = 2;
    /// TCP: FIN seen from both sides, or a RST: only stragglers remain.
    pub const TCP_CLOSING: u8 = 3;
    /// UDP: any datagram.
    pub const UDP: u8 = 4;
    /// TCP: the client sent FIN; the backend may still send (half-close).
    pub const TCP_FIN_FROM_CLIENT: u8 = 5;
    /// TCP: the backend sent FIN; the client may still send (half-close).
    pub const TCP_FIN_FROM_BACKEND: u8 = 6;
    /// TCP: the backend answered the SYN; the client has not acknowledged it.
    pub const TCP_SYN_ACKED: u8 = 7;
    /// UDP: the backend has answered.
    pub const UDP_REPLIED: u8 = 8;

    /// Whether a flow in `state` has not been answered (UDP) or its
    /// handshake not completed (TCP): such flows give way to new ones when
    /// the half-open share of the table is used up, so that a flood of
    /// spoofed sources never displaces connections that are real.
    #[inline(always)]
    pub fn is_half_open(state: u8) -> bool {
        state == TCP_HANDSHAKE || state == TCP_SYN_ACKED || state == UDP
    }

    /// Whether the backend has not answered a flow in `state` at all: flow
    /// sync leaves such flows to the node that has them (a failover costs
    /// them only the client's retransmission).
    #[inline(always)]
    pub fn is_unanswered(state: u8) -> bool {
        state == TCP_HANDSHAKE || state == UDP
    }
}

/// TCP flag bits as in the header's flags byte.
pub mod tcp_flags {
    pub const FIN: u8 = 0x01;
    pub const SYN: u8 = 0x02;
    pub const RST: u8 = 0x04;
    pub const ACK: u8 = 0x10;
}

/// A TCP flow's state after a segment with `flags` (from the backend or
/// the client). One FIN only half-closes: the other side may go on sending
/// for as long as an established connection, so the short closing timeout
/// starts once both sides have sent FIN, or at a RST.
#[inline(always)]
pub fn next_state(current: u8, flags: u8, from_backend: bool) -> u8 {
    use flow_state::*;
    if current == UDP {
        return if from_backend { UDP_REPLIED } else { UDP };
    }
    if current == UDP_REPLIED || current == TCP_CLOSING {
        return current;
    }
    if flags & tcp_flags::RST != 0 {
        return TCP_CLOSING;
    }
    if flags & tcp_flags::FIN != 0 {
        let other_side_done = if from_backend {
            current == TCP_FIN_FROM_CLIENT
        } else {
            current == TCP_FIN_FROM_BACKEND
        };
        return if other_side_done {
            TCP_CLOSING
        } else if from_backend {
            TCP_FIN_FROM_BACKEND
        } else {
            TCP_FIN_FROM_CLIENT
        };
    }
    if from_backend && current == TCP_HANDSHAKE && flags & tcp_flags::SYN != 0 {
        return TCP_SYN_ACKED;
    }
    let client_ack = flags & (tcp_flags::SYN | tcp_flags::ACK) == tcp_flags::ACK;
    if !from_backend && current == TCP_SYN_ACKED && client_ack {
        return TCP_ESTABLISHED;
    }
    current
}

/// Forward connection-tracking entry (client side), keyed by the client's
/// `FlowKey` (client -> VIP).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct FlowValue {
    pub backend_addr: [u8; 4],
    pub backend_port: u16,
    /// Source port the LB allocated towards the backend.
    pub lb_port: u16,
    pub backend_id: u32,
    pub service_id: u32,
    /// One of `flow_state::*`.
    pub state: u8,
    /// Index of the flow's source address in `Settings::snat_addrs`.
    pub snat_index: u8,
    pub _pad: u16,
    /// The port pool the flow's NAT source came from; it goes back there
    /// when the flow ends.
    pub port_pool: u32,
    /// `bpf_ktime_get_ns()` of the last packet in either direction.
    pub last_seen_ns: u64,
    /// Route lookup result towards the backend, reused while fresh.
    pub to_backend: NextHop,
    /// Added to the client's TCP timestamps (TSval) towards the backend and
    /// taken off the backend's echoes (TSecr), so that every connection a
    /// backend sees from one NAT source carries timestamps from one clock
    /// that only moves forward, as from a single host: a backend then
    /// accepts a new SYN from a source still in its TIME_WAIT (RFC 7323
    /// PAWS would refuse the client's own, unrelated timestamps).
    pub ts_delta: u32,
    pub _pad_ts: u32,
}

/// The balancer's TCP timestamp clock (1 kHz, as RFC 7323 allows and
/// Linux uses) at `now_ns`: a new flow's timestamps start there.
#[inline(always)]
pub fn ts_clock_ms(now_ns: u64) -> u32 {
    (now_ns / 1_000_000) as u32
}

/// How long a flow reuses a route lookup before asking the kernel again, so
/// a changed neighbour (MAC) or route reaches live flows within this time.
pub const NEXT_HOP_TTL_NS: u64 = 1_000_000_000;

/// A cached `bpf_fib_lookup` answer: egress interface and MACs.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct NextHop {
    /// Egress ifindex; 0 = not looked up yet.
    pub ifindex: u32,
    pub src_mac: [u8; 6],
    pub dst_mac: [u8; 6],
    /// When the lookup was made (`bpf_ktime_get_ns()`).
    pub looked_up_ns: u64,
}

/// Reverse connection-tracking entry: the one of a NAT source (SNAT
/// address, port) in the reply table of the backend's port pool. It holds what a reply needs to reach the client,
/// so most replies take one lookup; the forward entry, which it names,
/// holds the flow's state and freshness and is visited by the replies that
/// change them (SYN, FIN, RST; every UDP datagram).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct ReplyValue {
    /// The forward entry's key: client address/port and VIP/port.
    pub client: FlowKey,
    /// Route lookup result towards the client, reused while fresh.
    pub to_client: NextHop,
    /// The flow's `FlowValue::ts_delta`.
    pub ts_delta: u32,
    pub service_id: u32,
    pub backend_id: u32,
    pub _pad: u32,
    /// `reply_claim`: a flow claims the entry's NAT source and gives it
    /// back by flipping this word (atomically in the program; 64 bits, the
    /// width of the BPF compare-and-swap).
    pub live: u64,
}

/// `ReplyValue::live`: whether a flow holds the entry's NAT source, and
/// where the source goes when the flow ends.
pub mod reply_claim {
    pub const FREE: u64 = 0;
    /// Held; the source goes back to this node's pool.
    pub const OWN: u64 = 1;
    /// Held by a flow the HA peer opened from its own port slice: never
    /// queued here.
    pub const PEER: u64 = 2;
    /// Held by a flow of this node's slice whose source still sits in the
    /// pool's queue: a flow that flow sync brought while the source was
    /// free here. The pop that meets it takes the source out of the queue
    /// (it becomes `OWN`); the flow's end frees it without queueing it
    /// again, so a source is never in its queue twice.
    pub const OWN_QUEUED: u64 = 3;
}

/// Which pool's reply table a backend's packet is looked up in: the
/// backend endpoint a pool belongs to.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default)]
pub struct PoolKey {
    pub addr: [u8; 4],
    pub port: u16,
    pub proto: u8,
    pub _pad: u8,
}

impl ReplyValue {
    /// The (live) reply entry of the flow `flow` of client key `client`.
    #[inline(always)]
    pub fn of(client: FlowKey, flow: &FlowValue) -> Self {
        Self {
            client,
            to_client: NextHop::default(),
            ts_delta: flow.ts_delta,
            service_id: flow.service_id,
            backend_id: flow.backend_id,
            _pad: 0,
            live: reply_claim::OWN,
        }
    }
}

/// A flow the program opened or whose state it changed, as the agent's
/// flow sync reads it from `flow_events`: everything the peer needs to
/// carry the flow on, so the agent never looks the flow up.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct FlowEvent {
    /// The forward entry's key (client -> VIP).
    pub client: FlowKey,
    pub backend_addr: [u8; 4],
    pub backend_port: u16,
    pub lb_port: u16,
    pub ts_delta: u32,
    /// One of `flow_state::*`, after the change.
    pub state: u8,
    /// Index of the flow's source address in `Settings::snat_addrs`.
    pub snat_index: u8,
    pub _pad: u16,
    /// The program's clock at the change: the flow's last packet.
    pub at_ns: u64,
}

impl FlowEvent {
    #[inline(always)]
    pub fn of(client: &FlowKey, flow: &FlowValue) -> Self {
        Self {
            client: *client,
            backend_addr: flow.backend_addr,
            backend_port: flow.backend_port,
            lb_port: flow.lb_port,
            ts_delta: flow.ts_delta,
            state: flow.state,
            snat_index: flow.snat_index,
            _pad: 0,
            at_ns: flow.last_seen_ns,
        }
    }
}

/// Entries of `agent_liveness`.
pub mod liveness {
    /// Written by the agent's VRRP thread every advert interval.
    pub const AGENT: u32 = 0;
    /// Written by the program on every VRRP advert of the peer.
    pub const PEER_MASTER: u32 = 1;
    pub const ENTRIES: u32 = 2;
}

/// Whether the agent of this node has gone silent while a peer advertises
/// itself as master, `now` on the program's clock: then this node must not
/// answer ARP for the floating addresses. Without a guard (`settings`), a
/// heartbeat, or a peer heard within the silence, nothing changes.
#[inline(always)]
pub fn floating_addresses_lost(
    settings: &Settings,
    agent_heartbeat_ns: u64,
    peer_master_ns: u64,
    now: u64,
) -> bool {
    let silence = settings.agent_silence_ns;
    silence != 0
        && agent_heartbeat_ns != 0
        && peer_master_ns != 0
        && now.saturating_sub(agent_heartbeat_ns) > silence
        && now.saturating_sub(peer_master_ns) <= silence
}

/// Node-wide settings, written by the agent at index 0 of `settings`.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct Settings {
    /// The SNAT pool: source addresses towards backends (the first
    /// `snat_count`); flows record an index into it.
    pub snat_addrs: [[u8; 4]; MAX_SNAT_ADDRESSES],
    pub snat_count: u32,
    /// Inclusive range that holds every NAT port: a packet to a pool
    /// address and a port in it may be a backend's reply.
    pub port_min: u16,
    pub port_max: u16,
    /// Idle timeouts in nanoseconds.
    pub tcp_handshake_ns: u64,
    pub tcp_established_ns: u64,
    pub tcp_closing_ns: u64,
    pub udp_ns: u64,
    /// 1 once the agent has written the settings; until then the program passes everything.
    pub ready: u32,
    /// Length of each CPU's half-open ring (`half_open_per_cpu`); 0 or
    /// more than `HALF_OPEN_SLOTS`: the whole ring.
    pub half_open_per_cpu: u32,
    /// MAC addresses of the interfaces the program is attached to. Frames
    /// to any other unicast MAC are not ours (a switch floods them when it
    /// has forgotten where a MAC lives): passed, so that a backup node never
    /// forwards a copy of the master's traffic. All zero: no check.
    pub public_mac: [u8; 6],
    pub private_mac: [u8; 6],
    pub _pad_mac: [u8; 4],
    /// The program's clock, `now = jiffies * tick_ns + tick_offset_ns`
    /// (wrapping), calibrated by the agent against CLOCK_MONOTONIC so that
    /// every timestamp in the maps reads like a `bpf_ktime_get_ns` one.
    /// The verifier inlines the jiffies read, while a clock helper call
    /// costs a fifth of an established packet's time on CPUs with return
    /// mitigations. 0 = not calibrated: the program calls
    /// `bpf_ktime_get_coarse_ns` instead.
    pub tick_ns: u64,
    pub tick_offset_ns: u64,
    /// 1: report new flows and state changes in `flow_events` (flow sync
    /// with a peer is on); 0: the program spends nothing on it.
    pub sync_events: u32,
    pub _pad_sync: u32,
    /// How long a flow cache copy serves (`flow_cache_ttl_ns`); 0: the
    /// cache is off and every packet looks its flow up in `flows`.
    pub flow_cache_ttl_ns: u64,
    /// The guard of a node whose agent died (`agent_liveness`): once the
    /// agent's heartbeat is older than this while the peer advertises
    /// itself as master (VRRP adverts of `vrrp_vrid` arriving), ARP
    /// requests for the floating addresses (the VIPs, and the SNAT pool
    /// when `snat_floating`) are dropped, so only the master answers for
    /// them. 0: no guard (no VRRP).
    pub agent_silence_ns: u64,
    pub vrrp_vrid: u32,
    pub snat_floating: u32,
}

impl Settings {
    /// The pool address with index `index` (masked into the array, so the
    /// verifier sees a bounded offset).
    #[inline(always)]
    pub fn snat_addr(&self, index: u8) -> [u8; 4] {
        self.snat_addrs[index as usize & (MAX_SNAT_ADDRESSES - 1)]
    }

    /// Whether `addr` is one of the pool's addresses.
    #[inline(always)]
    pub fn is_snat_addr(&self, addr: [u8; 4]) -> bool {
        self.snat_index_of(addr).is_some()
    }

    /// The index of `addr` in the pool. Unrolled compares: cheaper than a
    /// map lookup, and only packets to a NAT port pay them.
    #[inline(always)]
    pub fn snat_index_of(&self, addr: [u8; 4]) -> Option<u8> {
        let mut index = 0;
        while index < MAX_SNAT_ADDRESSES {
            if (index as u32) < self.snat_count && self.snat_addrs[index] == addr {
                return Some(index as u8);
            }
            index += 1;
        }
        None
    }

    /// Now in nanoseconds of CLOCK_MONOTONIC, from a jiffies reading, when
    /// the clock is calibrated (see `tick_ns`).
    #[inline(always)]
    pub fn ticks_to_ns(&self, jiffies: u64) -> Option<u64> {
        if self.tick_ns == 0 {
            return None;
        }
        Some(
            jiffies
                .wrapping_mul(self.tick_ns)
                .wrapping_add(self.tick_offset_ns),
        )
    }

    /// Whether a frame to `dst` is for this node: one of its MACs, a
    /// group (broadcast/multicast) address, or no MACs configured.
    #[inline(always)]
    pub fn accepts_mac(&self, dst: &[u8; 6]) -> bool {
        let unset = self.public_mac == [0; 6] && self.private_mac == [0; 6];
        unset || dst[0] & 1 == 1 || *dst == self.public_mac || *dst == self.private_mac
    }
}

/// Traffic counters, per CPU, for a service or a backend.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct Counters {
    pub packets: u64,
    pub bytes: u64,
    /// Connections scheduled (services) or handed to this backend (backends).
    pub new_flows: u64,
    /// New connections refused because no backend was up (services only):
    /// TCP answered with RST, UDP dropped.
    pub rejected: u64,
}

/// Why the program passed, dropped or answered a packet itself; index into `reasons`.
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Reason {
    /// Forwarded client -> backend.
    ForwardedToBackend = 0,
    /// Forwarded backend -> client.
    ForwardedToClient = 1,
    /// Not IPv4 (ARP, IPv6, ...): passed.
    PassNotIpv4 = 2,
    /// IPv4 but not for a configured service nor a tracked reply: passed.
    PassNotService = 3,
    /// Too short to tell where it goes: passed for the stack to judge.
    PassTruncated = 4,
    /// For a VIP but its L4 header is cut short: dropped.
    DropTruncated = 5,
    /// An IP fragment for a VIP (cannot be balanced by ports): dropped.
    DropFragment = 6,
    /// IP options on a packet for a VIP: dropped.
    DropIpOptions = 7,
    /// New TCP connection to a service with no backend: answered with RST.
    RstNoBackend = 8,
    /// New UDP flow to a service with no backend: dropped.
    DropNoBackend = 9,
    /// No free source port towards the chosen backend: dropped.
    DropPortExhausted = 10,
    /// Next hop has no resolved neighbour yet: dropped (the agent resolves it).
    DropFibNoNeigh = 11,
    /// Route lookup failed (no route, blackhole, unreachable, ...): dropped.
    DropFibFailed = 12,
    /// Redirect target not in `tx_ports`: dropped.
    DropNoTxPort = 13,
    /// TCP segment without SYN and without a tracked flow: answered with RST.
    RstNoFlow = 14,
    /// A reply to an LB port whose flow has expired or was removed: passed.
    PassReplyNoFlow = 15,
    /// Settings not written yet (agent starting): passed.
    PassNotReady = 16,
    /// Flow table insert failed: dropped.
    DropFlowInsert = 17,
    /// Unicast frame to another node's MAC (flooded by a switch): passed.
    PassOtherHost = 18,
    /// For a VIP, but a length field (IPv4 total length, TCP data offset,
    /// UDP length) disagrees with the frame or the headers: dropped.
    DropBadLength = 19,
    /// Not for a VIP and a length field disagrees: passed for the stack to drop.
    PassBadLength = 20,
    /// An ARP request for a floating address while this node's agent is
    /// gone and the peer is master (`floating_addresses_lost`): dropped,
    /// so neighbours learn only the master's MAC.
    DropArpFloatingLost = 21,
}

impl Reason {
    /// Number of reasons; the size of the `reasons` map.
    pub const COUNT: u32 = 22;

    /// Every reason, index order.
    pub const ALL: [Reason; Self::COUNT as usize] = [
        Reason::ForwardedToBackend,
        Reason::ForwardedToClient,
        Reason::PassNotIpv4,
        Reason::PassNotService,
        Reason::PassTruncated,
        Reason::DropTruncated,
        Reason::DropFragment,
        Reason::DropIpOptions,
        Reason::RstNoBackend,
        Reason::DropNoBackend,
        Reason::DropPortExhausted,
        Reason::DropFibNoNeigh,
        Reason::DropFibFailed,
        Reason::DropNoTxPort,
        Reason::RstNoFlow,
        Reason::PassReplyNoFlow,
        Reason::PassNotReady,
        Reason::DropFlowInsert,
        Reason::PassOtherHost,
        Reason::DropBadLength,
        Reason::PassBadLength,
        Reason::DropArpFloatingLost,
    ];

    /// Stable snake_case name for CLI output and metrics labels.
    pub const fn name(self) -> &'static str {
        match self {
            Reason::ForwardedToBackend => "forwarded_to_backend",
            Reason::ForwardedToClient => "forwarded_to_client",
            Reason::PassNotIpv4 => "pass_not_ipv4",
            Reason::PassNotService => "pass_not_service",
            Reason::PassTruncated => "pass_truncated",
            Reason::DropTruncated => "drop_truncated",
            Reason::DropFragment => "drop_fragment",
            Reason::DropIpOptions => "drop_ip_options",
            Reason::RstNoBackend => "rst_no_backend",
            Reason::DropNoBackend => "drop_no_backend",
            Reason::DropPortExhausted => "drop_port_exhausted",
            Reason::DropFibNoNeigh => "drop_fib_no_neigh",
            Reason::DropFibFailed => "drop_fib_failed",
            Reason::DropNoTxPort => "drop_no_tx_port",
            Reason::RstNoFlow => "rst_no_flow",
            Reason::PassReplyNoFlow => "pass_reply_no_flow",
            Reason::PassNotReady => "pass_not_ready",
            Reason::DropFlowInsert => "drop_flow_insert",
            Reason::PassOtherHost => "pass_other_host",
            Reason::DropBadLength => "drop_bad_length",
            Reason::PassBadLength => "pass_bad_length",
            Reason::DropArpFloatingLost => "drop_arp_floating_lost",
        }
    }
}

/// Idle timeout of a flow in `state` under `settings`.
///
/// All four timeouts are read first and then selected by value: selecting a
/// field by a runtime index compiles to pointer arithmetic the BPF verifier
/// cannot bound.
#[inline(always)]
pub fn flow_timeout_ns(settings: &Settings, state: u8) -> u64 {
    let handshake = settings.tcp_handshake_ns;
    let established = settings.tcp_established_ns;
    let closing = settings.tcp_closing_ns;
    let udp = settings.udp_ns;
    if state == flow_state::TCP_ESTABLISHED
        || state == flow_state::TCP_FIN_FROM_CLIENT
        || state == flow_state::TCP_FIN_FROM_BACKEND
    {
        established
    } else if state == flow_state::TCP_HANDSHAKE || state == flow_state::TCP_SYN_ACKED {
        handshake
    } else if state == flow_state::TCP_CLOSING {
        closing
    } else {
        udp
    }
}

/// Whether a flow last seen at `last_seen_ns` is expired at `now_ns`.
/// A zero timeout expires a flow at once, even within one clock tick.
#[inline(always)]
pub fn flow_expired(settings: &Settings, flow: &FlowValue, now_ns: u64) -> bool {
    now_ns.saturating_sub(flow.last_seen_ns) >= flow_timeout_ns(settings, flow.state)
}

#[cfg(feature = "user")]
mod pod {
    // SAFETY: every type is repr(C), Copy, made of integers and byte arrays
    // with explicit padding fields, so any bit pattern is valid.
    unsafe impl aya::Pod for super::ServiceKey {}
    unsafe impl aya::Pod for super::ServiceValue {}
    unsafe impl aya::Pod for super::BackendValue {}
    unsafe impl aya::Pod for super::FlowKey {}
    unsafe impl aya::Pod for super::FlowValue {}
    unsafe impl aya::Pod for super::NextHop {}
    unsafe impl aya::Pod for super::ReplyValue {}
    unsafe impl aya::Pod for super::Settings {}
    unsafe impl aya::Pod for super::Counters {}
    unsafe impl aya::Pod for super::PortPool {}
    unsafe impl aya::Pod for super::PoolKey {}
    unsafe impl aya::Pod for super::HalfOpenEntry {}
    unsafe impl aya::Pod for super::HalfOpenCursor {}
    unsafe impl aya::Pod for super::FlowCacheEntry {}
    unsafe impl aya::Pod for super::PoolCacheEntry {}
}

#[cfg(test)]
mod tests {
    use super::*;
    use core::mem::size_of;

    #[test]
    fn layouts_have_no_implicit_padding() {
        assert_eq!(size_of::<ServiceKey>(), 8);
        assert_eq!(size_of::<ServiceValue>(), 16);
        assert_eq!(size_of::<BackendValue>(), 16);
        assert_eq!(size_of::<FlowKey>(), 16);
        assert_eq!(size_of::<FlowValue>(), 64);
        assert_eq!(size_of::<NextHop>(), 24);
        assert_eq!(size_of::<ReplyValue>(), 64);
        assert_eq!(size_of::<PoolKey>(), 8);
        assert_eq!(size_of::<Settings>(), 176);
        assert_eq!(size_of::<FlowCacheEntry>(), 88);
        assert_eq!(size_of::<PoolCacheEntry>(), 12);
        assert_eq!(size_of::<FlowEvent>(), 40);
        assert_eq!(size_of::<PortPool>(), 32);
        assert_eq!(size_of::<Counters>(), 32);
        assert_eq!(size_of::<HalfOpenEntry>(), 24);
        assert_eq!(size_of::<HalfOpenCursor>(), 16);
    }

    #[test]
    fn floating_addresses_are_lost_only_to_a_silent_agent_while_a_peer_leads() {
        const S: u64 = 1_000_000_000;
        let settings = Settings {
            agent_silence_ns: 4 * S,
            ..Settings::default()
        };
        let now = 100 * S;
        assert!(floating_addresses_lost(
            &settings,
            now - 5 * S,
            now - S,
            now
        ));
        assert!(
            !floating_addresses_lost(&settings, now - 3 * S, now - S, now),
            "alive"
        );
        assert!(
            !floating_addresses_lost(&settings, now - 5 * S, now - 5 * S, now),
            "no master lately"
        );
        assert!(
            !floating_addresses_lost(&settings, now - 5 * S, 0, now),
            "no master ever"
        );
        assert!(
            !floating_addresses_lost(&settings, 0, now - S, now),
            "never started"
        );
        assert!(
            !floating_addresses_lost(&Settings::default(), now - 5 * S, now - S, now),
            "no guard"
        );
    }

    #[test]
    fn flow_cache_copies_live_a_quarter_of_the_established_timeout_at_most() {
        assert_eq!(flow_cache_ttl_ns(900_000_000_000), FLOW_CACHE_MAX_TTL_NS);
        assert_eq!(flow_cache_ttl_ns(400_000_000), 100_000_000);
        assert_eq!(flow_cache_ttl_ns(3), 0, "too short to cache at all");
    }

    #[test]
    fn flow_cache_slots_spread_neighbouring_ports_within_bounds() {
        let mut key = FlowKey {
            src_addr: [10, 100, 0, 10],
            dst_addr: [10, 100, 0, 100],
            src_port: 0,
            dst_port: 80,
            proto: PROTO_TCP,
            _pad: [0; 3],
        };
        let mut slots = [false; FLOW_CACHE_SLOTS as usize];
        let mut generations = [false; FLOW_GENERATIONS_SLOTS as usize];
        for port in 40_000..40_000 + FLOW_CACHE_SLOTS / 2 {
            key.src_port = port as u16;
            let (slot, generation) = flow_cache_slots(&key);
            slots[slot as usize] = true;
            generations[generation as usize] = true;
        }
        // A run of client ports (one client's connections) must not pile
        // onto a few slots: most land on slots of their own.
        let used = slots.iter().filter(|used| **used).count() as u32;
        assert!(used > FLOW_CACHE_SLOTS / 2 * 3 / 4, "{used} slots used");
        let used = generations.iter().filter(|used| **used).count() as u32;
        assert!(
            used > FLOW_CACHE_SLOTS / 2 * 3 / 4,
            "{used} generations used"
        );
    }

    #[test]
    fn pool_cache_slots_spread_a_subnet_of_backends() {
        let mut used = [false; POOL_CACHE_SLOTS as usize];
        for host in 1..=254u8 {
            for port in [80u16, 443, 8080] {
                let key = PoolKey {
                    addr: [10, 200, 0, host],
                    port,
                    proto: PROTO_TCP,
                    _pad: 0,
                };
                used[pool_cache_slot(&key) as usize] = true;
            }
        }
        let used = used.iter().filter(|u| **u).count();
        assert!(used > 254 * 3 * 3 / 4, "{used} slots used");
    }

    #[test]
    fn half_open_share_is_split_over_cpus_within_the_ring() {
        assert_eq!(half_open_per_cpu(65536, 113_840, 2), 4096);
        assert_eq!(half_open_per_cpu(1 << 20, 1 << 22, 2), HALF_OPEN_SLOTS);
        assert_eq!(
            half_open_per_cpu(1 << 20, 32_000, 2),
            8000,
            "half of one backend's NAT sources"
        );
        assert_eq!(half_open_per_cpu(1024, 1 << 20, 256), 1, "never zero");
        assert_eq!(half_open_per_cpu(65536, 1 << 20, 0), 8192);
    }

    #[test]
    fn port_slots_pack_address_index_and_port() {
        let slot = port_slot(3, 65535);
        assert_eq!((slot_address_index(slot), slot_port(slot)), (3, 65535));
        assert_eq!(port_slot(0, 1024), 1024);
    }

    #[test]
    fn pool_addresses_are_recognised_up_to_the_count() {
        let mut settings = Settings {
            snat_count: 2,
            ..Settings::default()
        };
        settings.snat_addrs[0] = [10, 200, 0, 11];
        settings.snat_addrs[1] = [10, 200, 0, 111];
        settings.snat_addrs[2] = [10, 200, 0, 112];
        assert!(settings.is_snat_addr([10, 200, 0, 111]));
        assert!(!settings.is_snat_addr([10, 200, 0, 112]), "past the count");
        assert_eq!(settings.snat_addr(1), [10, 200, 0, 111]);
        assert_eq!(settings.snat_addr(17), [10, 200, 0, 111], "masked");
    }

    #[test]
    fn frames_to_other_macs_are_not_ours() {
        let mine = [2, 0, 0, 0, 0, 1];
        let settings = Settings {
            public_mac: mine,
            private_mac: [2, 0, 0, 0, 0, 2],
            ..Settings::default()
        };
        assert!(settings.accepts_mac(&mine));
        assert!(settings.accepts_mac(&[2, 0, 0, 0, 0, 2]));
        assert!(settings.accepts_mac(&[0xff; 6]), "broadcast");
        assert!(!settings.accepts_mac(&[2, 0, 0, 0, 0, 3]));
        assert!(
            Settings::default().accepts_mac(&[2, 0, 0, 0, 0, 3]),
            "no MACs set: no check"
        );
    }

    #[test]
    fn tick_clock_maps_jiffies_onto_monotonic_nanoseconds() {
        assert_eq!(Settings::default().ticks_to_ns(123), None, "uncalibrated");
        // HZ=250 (4 ms ticks); jiffies start near 2^32, so the offset that
        // lines them up with a monotonic clock near zero is "negative".
        let settings = Settings {
            tick_ns: 4_000_000,
            tick_offset_ns: 5_000_000_000u64.wrapping_sub((1u64 << 32) * 4_000_000),
            ..Settings::default()
        };
        assert_eq!(settings.ticks_to_ns(1 << 32), Some(5_000_000_000));
        assert_eq!(settings.ticks_to_ns((1 << 32) + 250), Some(6_000_000_000));
    }

    #[test]
    fn reason_table_matches_discriminants() {
        for (index, reason) in Reason::ALL.iter().enumerate() {
            assert_eq!(*reason as usize, index, "{}", reason.name());
        }
    }

    #[test]
    fn tcp_state_machine() {
        use flow_state::*;
        use tcp_flags::*;
        // Established only once the client acknowledged the backend's SYN-ACK.
        let syn_acked = next_state(TCP_HANDSHAKE, SYN | ACK, true);
        assert_eq!(syn_acked, TCP_SYN_ACKED);
        assert_eq!(next_state(TCP_HANDSHAKE, ACK, false), TCP_HANDSHAKE);
        assert_eq!(next_state(TCP_HANDSHAKE, ACK, true), TCP_HANDSHAKE);
        assert_eq!(
            next_state(syn_acked, SYN, false),
            TCP_SYN_ACKED,
            "SYN again"
        );
        assert_eq!(next_state(syn_acked, SYN | ACK, true), TCP_SYN_ACKED);
        assert_eq!(next_state(syn_acked, ACK, false), TCP_ESTABLISHED);
        assert_eq!(next_state(syn_acked, RST, false), TCP_CLOSING);
        // Half-close keeps the flow alive in the other direction.
        let half = next_state(TCP_ESTABLISHED, FIN | ACK, false);
        assert_eq!(half, TCP_FIN_FROM_CLIENT);
        assert_eq!(next_state(half, ACK, true), TCP_FIN_FROM_CLIENT);
        assert_eq!(
            next_state(half, FIN | ACK, false),
            TCP_FIN_FROM_CLIENT,
            "retransmitted FIN"
        );
        assert_eq!(next_state(half, FIN | ACK, true), TCP_CLOSING);
        let half = next_state(TCP_ESTABLISHED, FIN | ACK, true);
        assert_eq!(half, TCP_FIN_FROM_BACKEND);
        assert_eq!(next_state(half, FIN | ACK, false), TCP_CLOSING);
        assert_eq!(next_state(TCP_ESTABLISHED, RST, true), TCP_CLOSING);
        assert_eq!(next_state(TCP_CLOSING, SYN, false), TCP_CLOSING);
        assert_eq!(next_state(UDP, FIN, false), UDP);
        assert_eq!(next_state(UDP, 0, true), UDP_REPLIED, "answered");
        assert_eq!(next_state(UDP_REPLIED, 0, false), UDP_REPLIED);
        assert!(is_half_open(TCP_SYN_ACKED) && is_half_open(UDP));
        assert!(!is_half_open(TCP_ESTABLISHED) && !is_half_open(UDP_REPLIED));
        let settings = Settings {
            tcp_established_ns: 900,
            tcp_closing_ns: 10,
            ..Settings::default()
        };
        assert_eq!(flow_timeout_ns(&settings, TCP_FIN_FROM_CLIENT), 900);
        assert_eq!(flow_timeout_ns(&settings, TCP_CLOSING), 10);
    }

    #[test]
    fn timeouts_follow_state() {
        let settings = Settings {
            tcp_handshake_ns: 1,
            tcp_established_ns: 2,
            tcp_closing_ns: 3,
            udp_ns: 4,
            ..Settings::default()
        };
        let mut flow = FlowValue {
            state: flow_state::TCP_ESTABLISHED,
            last_seen_ns: 10,
            ..FlowValue::default()
        };
        assert!(!flow_expired(&settings, &flow, 11));
        assert!(flow_expired(&settings, &flow, 12));
        // Answered by the backend, not yet acknowledged by the client:
        // still the handshake's timeout.
        flow.state = flow_state::TCP_SYN_ACKED;
        assert!(flow_expired(&settings, &flow, 11));
        flow.state = flow_state::UDP;
        assert!(!flow_expired(&settings, &flow, 13));
        flow.state = flow_state::UDP_REPLIED;
        assert!(!flow_expired(&settings, &flow, 13));
        assert!(flow_expired(&settings, &flow, 14));
        // A clock that went backwards never expires a flow.
        assert!(!flow_expired(&settings, &flow, 0));
    }
}
