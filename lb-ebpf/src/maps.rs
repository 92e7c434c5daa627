//! Every map of the program. Key/value layouts live in `lb_common`; names,
//! kinds and sizes are listed in `lb_common::maps::MAPS` (the agent pins by
//! it under /sys/fs/bpf/<instance>/; the program tests check this object
//! against it).

use aya_ebpf::{
    btf_maps::{Array, ArrayOfMaps, DevMapHash, HashMap, LruHashMap, PerCpuArray, Queue, RingBuf},
    macros::btf_map,
};
use lb_common::{
    BackendValue, Counters, FlowCacheEntry, FlowEvent, FlowKey, FlowValue, HalfOpenCursor,
    HalfOpenEntry, NextHop, PoolCacheEntry, PoolKey, PortPool, Reason, ReplyValue, ServiceKey,
    ServiceValue, Settings, DEFAULT_MAX_FLOWS, FLOW_CACHE_SLOTS, FLOW_EVENTS_BYTES,
    FLOW_GENERATIONS_SLOTS, HALF_OPEN_SLOTS, INNER_MAP_FLAG, MAX_BACKENDS, MAX_NEIGH_MISSES,
    MAX_SERVICES, MAX_TX_PORTS, POOL_CACHE_SLOTS,
};

const SERVICES_MAX: usize = MAX_SERVICES as usize;
const BACKENDS_MAX: usize = MAX_BACKENDS as usize;
const RING_SLOTS: usize = lb_common::RING_SLOTS as usize;
const FLOWS_MAX: usize = DEFAULT_MAX_FLOWS as usize;
const REASONS_MAX: usize = Reason::COUNT as usize;
const HALF_OPEN_MAX: usize = HALF_OPEN_SLOTS as usize;

/// Configured services: (VIP, port, protocol) -> id and schedule length.
#[btf_map(name = "services")]
pub static SERVICES: HashMap<ServiceKey, ServiceValue, SERVICES_MAX> = HashMap::new();

/// VIP address -> number of services on it (for packets without usable ports).
#[btf_map(name = "vips")]
pub static VIPS: HashMap<[u8; 4], u32, SERVICES_MAX> = HashMap::new();

/// Backend id -> address and port.
#[btf_map(name = "backends")]
pub static BACKENDS: Array<BackendValue, BACKENDS_MAX> = Array::new();

/// Weighted schedule of each service, two halves per service (see `lb_common::ring_base`).
#[btf_map(name = "rings")]
pub static RINGS: Array<u32, RING_SLOTS> = Array::new();

/// Per-CPU position in each service's schedule.
#[btf_map(name = "rr_cursors")]
pub static RR_CURSORS: PerCpuArray<u32, SERVICES_MAX> = PerCpuArray::new();

/// Forward connection tracking, keyed by the client's 5-tuple. Not an LRU
/// map: the kernel would evict the least recently used entries, idle
/// established connections first, and never give their NAT ports back.
/// Entries end when the agent expires them or, while half-open, when the
/// half-open ring comes round (`half_open`).
#[btf_map(name = "flows")]
pub static FLOWS: HashMap<FlowKey, FlowValue, FLOWS_MAX> = HashMap::new();

/// Node-wide settings at index 0.
#[btf_map(name = "settings")]
pub static SETTINGS: Array<Settings, 1> = Array::new();

/// Interfaces the program may redirect to (ifindex -> ifindex).
#[btf_map(name = "tx_ports")]
pub static TX_PORTS: DevMapHash<{ MAX_TX_PORTS as usize }> = DevMapHash::new();

/// Per-CPU traffic per service id.
#[btf_map(name = "service_stats")]
pub static SERVICE_STATS: PerCpuArray<Counters, SERVICES_MAX> = PerCpuArray::new();

/// Per-CPU traffic per backend id.
#[btf_map(name = "backend_stats")]
pub static BACKEND_STATS: PerCpuArray<Counters, BACKENDS_MAX> = PerCpuArray::new();

/// Per-CPU packets per `Reason`.
#[btf_map(name = "reasons")]
pub static REASONS: PerCpuArray<u64, REASONS_MAX> = PerCpuArray::new();

/// Destinations whose route lookup found no neighbour, for the agent to resolve.
#[btf_map(name = "neigh_misses")]
pub static NEIGH_MISSES: LruHashMap<[u8; 4], u64, { MAX_NEIGH_MISSES as usize }> =
    LruHashMap::new();

/// The template of each pool's queue. The agent makes every real queue with
/// the pool's capacity: the kernel lets inner queues differ in size.
pub type PortQueue = Queue<u32, 1>;

/// Port pool id -> queue of free NAT `port_slot`s towards one backend
/// endpoint, least recently released first (refilled by the agent).
#[btf_map(name = "port_queues")]
pub static PORT_QUEUES: ArrayOfMaps<PortQueue, BACKENDS_MAX> = ArrayOfMaps::new();

/// The template of each pool's reply table. The agent makes every real
/// table with `reply_table_len` entries for the pool's SNAT addresses.
pub type ReplyTable = Array<ReplyValue, 1, { INNER_MAP_FLAG as usize }>;

/// Port pool id -> the pool's reply table, indexed by `port_slot`: reverse
/// connection tracking without hashing, so a new flow's claim and an
/// ended flow's release are each one word flipped in place.
#[btf_map(name = "reply_tables")]
pub static REPLY_TABLES: ArrayOfMaps<ReplyTable, BACKENDS_MAX> = ArrayOfMaps::new();

/// Backend endpoint -> port pool id, for the reply path.
#[btf_map(name = "pool_ids")]
pub static POOL_IDS: HashMap<PoolKey, u32, BACKENDS_MAX> = HashMap::new();

/// Port pool id -> the agent's record of the pool (the program only reads it).
#[btf_map(name = "port_pools")]
pub static PORT_POOLS: Array<PortPool, BACKENDS_MAX> = Array::new();

/// Per-CPU slots taken from each pool's queue and kept by a flow.
#[btf_map(name = "port_taken")]
pub static PORT_TAKEN: PerCpuArray<u64, BACKENDS_MAX> = PerCpuArray::new();

/// Per-CPU ring of the flows each CPU opened (see `half_open`).
#[btf_map(name = "half_open")]
pub static HALF_OPEN: PerCpuArray<HalfOpenEntry, HALF_OPEN_MAX> = PerCpuArray::new();

/// Per-CPU position in `HALF_OPEN` and its eviction count.
#[btf_map(name = "half_open_cursors")]
pub static HALF_OPEN_CURSORS: PerCpuArray<HalfOpenCursor, 1> = PerCpuArray::new();

/// Per-CPU route lookup result towards each backend id, reused by new flows
/// while fresh (`NEXT_HOP_TTL_NS`), like each flow's own cache.
#[btf_map(name = "backend_hops")]
pub static BACKEND_HOPS: PerCpuArray<NextHop, BACKENDS_MAX> = PerCpuArray::new();

/// New flows and state changes for the agent's flow sync.
#[btf_map(name = "flow_events")]
pub static FLOW_EVENTS: RingBuf<FlowEvent, { FLOW_EVENTS_BYTES as usize }> = RingBuf::new();

/// Per-CPU count of events lost to a full `FLOW_EVENTS`.
#[btf_map(name = "flow_events_lost")]
pub static FLOW_EVENTS_LOST: PerCpuArray<u64, 1> = PerCpuArray::new();

/// Each CPU's copies of established flows (see `flow_cache`).
#[btf_map(name = "flow_cache")]
pub static FLOW_CACHE: PerCpuArray<FlowCacheEntry, { FLOW_CACHE_SLOTS as usize }> =
    PerCpuArray::new();

/// Generations of the flows' cached copies (see `flow_cache`).
#[btf_map(name = "flow_generations")]
pub static FLOW_GENERATIONS: Array<u32, { FLOW_GENERATIONS_SLOTS as usize }> = Array::new();

/// The agent's epoch of the flow cache at index 0 (see `flow_cache`).
#[btf_map(name = "flow_cache_epoch")]
pub static FLOW_CACHE_EPOCH: Array<u32, 1> = Array::new();

/// Each CPU's copies of `pool_ids` entries (see `lookup::pool_of`).
#[btf_map(name = "pool_cache")]
pub static POOL_CACHE: PerCpuArray<PoolCacheEntry, { POOL_CACHE_SLOTS as usize }> =
    PerCpuArray::new();

/// The agent's heartbeat and the peer master's last advert
/// (`lb_common::liveness`).
#[btf_map(name = "agent_liveness")]
pub static AGENT_LIVENESS: Array<u64, { lb_common::liveness::ENTRIES as usize }> = Array::new();
