//! Typed access to every map of the program (layouts from `lb_common`).

use std::collections::HashMap as StdHashMap;

use aya::{
    maps::{Array, DevMapHash, HashMap, Map, MapData, PerCpuArray},
    Ebpf,
};
use lb_common::{
    flow_expired, map_names, port_slot, reply_claim, ring_base, BackendValue, Counters, FlowEvent,
    FlowKey, FlowValue, HalfOpenCursor, NextHop, Reason, ReplyValue, ServiceKey, ServiceValue,
    Settings, MAX_BACKENDS, RING_SIZE,
};

use tracing::debug;

use super::{
    batch,
    port_pools::{Endpoint, PoolNote, PortPools},
    reply_tables::ReplyTables,
    DataplaneError,
};

/// The maps of one instance, owned (they stay shared with the kernel program).
pub struct Tables {
    services: HashMap<MapData, ServiceKey, ServiceValue>,
    vips: HashMap<MapData, [u8; 4], u32>,
    backends: Array<MapData, BackendValue>,
    rings: Array<MapData, u32>,
    flows: HashMap<MapData, FlowKey, FlowValue>,
    settings: Array<MapData, Settings>,
    tx_ports: DevMapHash<MapData>,
    service_stats: PerCpuArray<MapData, Counters>,
    backend_stats: PerCpuArray<MapData, Counters>,
    reasons: PerCpuArray<MapData, u64>,
    neigh_misses: HashMap<MapData, [u8; 4], u64>,
    backend_hops: PerCpuArray<MapData, NextHop>,
    half_open_cursors: PerCpuArray<MapData, HalfOpenCursor>,
    flow_cache_epoch: Array<MapData, u32>,
    ports: PortPools,
    sweep: FlowSweep,
    /// Flow sync's feed of flows the agent ends itself (`remove --now`,
    /// `shutdown-flows`, expiry), so the peer ends its copies too.
    removals: Option<tokio::sync::mpsc::Sender<FlowEvent>>,
    /// Flow sync's news of this node's NAT sources (`PoolNote`).
    pool_notes: Option<tokio::sync::mpsc::Receiver<PoolNote>>,
}

/// Entries the expiry pass reads at most per call: a table of a million
/// flows is swept in slices over several passes, so that no pass keeps the
/// agent (or the CPU it shares with the data path) busy for long.
pub const SWEEP_SLICE: usize = 131_072;

/// Up to this many entries a census walks the table itself (a few tens of
/// milliseconds); above it, the census of the last full sweep answers.
const LIVE_CENSUS_LIMIT: u64 = 25_000;

/// The expiry sweep's place in the flow table and what it counted.
#[derive(Debug, Default)]
struct FlowSweep {
    cursor: batch::Cursor,
    /// Counted so far in the sweep under way.
    partial: FlowCensus,
    /// The last complete sweep.
    last: Option<FlowCensus>,
    /// A census walk that found the table past the live-walk limit before
    /// a sweep had seen it so large: it answers until the next complete
    /// sweep, so that a table that grew is walked once, not on every read.
    stand_in: std::cell::RefCell<Option<FlowCensus>>,
}

/// Active flows per backend id, from one pass over the flow table.
#[derive(Debug, Default, Clone)]
pub struct FlowCensus {
    pub per_backend: StdHashMap<u32, u64>,
    pub per_service: StdHashMap<u32, u64>,
    pub active: u64,
    pub expired: u64,
}

impl FlowCensus {
    /// Entries counted, live or expired.
    fn size(&self) -> u64 {
        self.active + self.expired
    }

    fn count(&mut self, settings: &Settings, flow: &FlowValue, now_ns: u64) {
        if flow_expired(settings, flow, now_ns) {
            self.expired += 1;
            return;
        }
        self.active += 1;
        *self.per_backend.entry(flow.backend_id).or_default() += 1;
        *self.per_service.entry(flow.service_id).or_default() += 1;
    }
}

/// Now on the clock `bpf_ktime_get_ns` reads (CLOCK_MONOTONIC).
pub fn monotonic_ns() -> u64 {
    use nix::time::{clock_gettime, ClockId};
    // CLOCK_MONOTONIC cannot fail on Linux; 0 would read as "long ago".
    clock_gettime(ClockId::CLOCK_MONOTONIC).map_or(0, |ts| {
        ts.tv_sec() as u64 * 1_000_000_000 + ts.tv_nsec() as u64
    })
}

fn sum(values: &[Counters]) -> Counters {
    values.iter().fold(Counters::default(), |acc, c| Counters {
        packets: acc.packets + c.packets,
        bytes: acc.bytes + c.bytes,
        new_flows: acc.new_flows + c.new_flows,
        rejected: acc.rejected + c.rejected,
    })
}

macro_rules! typed {
    ($map:expr, $name:expr) => {
        $map.try_into().map_err(DataplaneError::map($name))?
    };
}

/// `T::default()` for every possible CPU, to reset a per-CPU map slot.
pub(crate) fn per_cpu_default<T: aya::Pod + Default>(
) -> Result<aya::maps::PerCpuValues<T>, DataplaneError> {
    let cpus = aya::util::nr_cpus().map_err(|(_, e)| DataplaneError::Io {
        action: "counting CPUs",
        path: "/sys/devices/system/cpu/possible".into(),
        source: e,
    })?;
    aya::maps::PerCpuValues::try_from(vec![T::default(); cpus]).map_err(|e| DataplaneError::Io {
        action: "building per-CPU values",
        path: String::new(),
        source: e,
    })
}

/// Whether two values of one flow-table entry belong to the same flow.
fn same_flow(a: &FlowValue, b: &FlowValue) -> bool {
    (
        a.backend_addr,
        a.backend_port,
        a.lb_port,
        a.snat_index,
        a.port_pool,
    ) == (
        b.backend_addr,
        b.backend_port,
        b.lb_port,
        b.snat_index,
        b.port_pool,
    )
}

/// Deletes one flow in both directions and gives its NAT source back to
/// its pool. Only the flow whose claim the reply entry is gives the source
/// back: a flow the program replaced has had its source released already.
pub fn end_flow<F>(
    flows: &mut HashMap<F, FlowKey, FlowValue>,
    ports: &mut PortPools,
    key: &FlowKey,
    flow: &FlowValue,
) where
    F: std::borrow::BorrowMut<MapData>,
{
    let _ = flows.remove(key);
    ports.end_claim(
        flow.port_pool,
        port_slot(flow.snat_index, flow.lb_port),
        key,
    );
}

/// What an agent before reply tables stored in `FlowValue::port_pool` for a
/// flow of the HA peer's port slice.
const LEGACY_NO_POOL: u32 = u32::MAX;

/// Gives every tracked flow its reply entry, in the table of its backend's
/// pool: an upgrade from the agent that kept reply entries in one hash
/// table (`map_names::LEGACY_REPLIES`). The forward entry holds all a
/// reply entry has, so nothing is read from the old table. Returns how
/// many flows were carried over.
pub fn restore_reply_entries<F>(
    flows: &mut HashMap<F, FlowKey, FlowValue>,
    ports: &mut PortPools,
) -> Result<usize, DataplaneError>
where
    F: std::borrow::BorrowMut<MapData>,
{
    let tracked: Vec<(FlowKey, FlowValue)> = flows.iter().filter_map(Result::ok).collect();
    for &(client, mut flow) in &tracked {
        let endpoint = Endpoint {
            addr: std::net::Ipv4Addr::from(flow.backend_addr),
            port: flow.backend_port,
            proto: client.proto,
        };
        let pool = ports.pool_for(endpoint)?;
        // The peer's sources must never join this node's queues.
        let live = if flow.port_pool == LEGACY_NO_POOL {
            reply_claim::PEER
        } else {
            reply_claim::OWN
        };
        if flow.port_pool != pool {
            flow.port_pool = pool;
            // BPF_EXIST: a flow the running program ended meanwhile stays ended.
            let _ = flows.insert(client, flow, BPF_EXIST);
        }
        let reply = ReplyValue {
            live,
            ..ReplyValue::of(client, &flow)
        };
        ports
            .replies_mut()
            .set(pool, port_slot(flow.snat_index, flow.lb_port), reply)?;
    }
    Ok(tracked.len())
}

/// Ends every copy in the CPUs' flow caches (the program's `flow_cache`):
/// called after the agent removed or rewrote flows, which the copies would
/// otherwise serve for up to `Settings::flow_cache_ttl_ns` more. Only
/// after the flows changed: the program reads the epoch before the flow,
/// so a copy that carries the new epoch was made from the changed flows.
pub fn end_flow_cache_copies<F>(epoch: &mut Array<F, u32>) -> Result<(), DataplaneError>
where
    F: std::borrow::BorrowMut<MapData>,
{
    let current = epoch
        .get(&0, 0)
        .map_err(DataplaneError::map(map_names::FLOW_CACHE_EPOCH))?;
    epoch
        .set(0, current.wrapping_add(1), 0)
        .map_err(DataplaneError::map(map_names::FLOW_CACHE_EPOCH))
}

/// `bpf_map_update_elem` flag: only replace an existing element.
const BPF_EXIST: u64 = 2;

impl Tables {
    /// Takes the maps out of a freshly loaded object.
    pub fn take(ebpf: &mut Ebpf) -> Result<Self, DataplaneError> {
        let mut take = |name: &'static str| {
            ebpf.take_map(name)
                .ok_or_else(|| DataplaneError::Missing(format!("map {name}")))
        };
        Self::from_maps(&mut take)
    }

    fn from_maps(
        get: &mut dyn FnMut(&'static str) -> Result<Map, DataplaneError>,
    ) -> Result<Self, DataplaneError> {
        use map_names::*;
        Ok(Self {
            services: typed!(get(SERVICES)?, SERVICES),
            vips: typed!(get(VIPS)?, VIPS),
            backends: typed!(get(BACKENDS)?, BACKENDS),
            rings: typed!(get(RINGS)?, RINGS),
            flows: typed!(get(FLOWS)?, FLOWS),
            settings: typed!(get(SETTINGS)?, SETTINGS),
            tx_ports: typed!(get(TX_PORTS)?, TX_PORTS),
            service_stats: typed!(get(SERVICE_STATS)?, SERVICE_STATS),
            backend_stats: typed!(get(BACKEND_STATS)?, BACKEND_STATS),
            reasons: typed!(get(REASONS)?, REASONS),
            neigh_misses: typed!(get(NEIGH_MISSES)?, NEIGH_MISSES),
            backend_hops: typed!(get(BACKEND_HOPS)?, BACKEND_HOPS),
            half_open_cursors: typed!(get(HALF_OPEN_CURSORS)?, HALF_OPEN_CURSORS),
            flow_cache_epoch: typed!(get(FLOW_CACHE_EPOCH)?, FLOW_CACHE_EPOCH),
            sweep: FlowSweep::default(),
            removals: None,
            pool_notes: None,
            ports: PortPools::new(
                typed!(get(PORT_QUEUES)?, PORT_QUEUES),
                typed!(get(PORT_POOLS)?, PORT_POOLS),
                typed!(get(PORT_TAKEN)?, PORT_TAKEN),
                ReplyTables::new(
                    typed!(get(REPLY_TABLES)?, REPLY_TABLES),
                    typed!(get(POOL_IDS)?, POOL_IDS),
                ),
            ),
        })
    }

    /// See `restore_reply_entries`.
    pub fn restore_reply_entries(&mut self) -> Result<usize, DataplaneError> {
        restore_reply_entries(&mut self.flows, &mut self.ports)
    }

    pub fn ports(&self) -> &PortPools {
        &self.ports
    }

    pub fn ports_mut(&mut self) -> &mut PortPools {
        &mut self.ports
    }

    pub fn settings(&self) -> Result<Settings, DataplaneError> {
        self.settings
            .get(&0, 0)
            .map_err(DataplaneError::map(map_names::SETTINGS))
    }

    pub fn write_settings(&mut self, settings: Settings) -> Result<(), DataplaneError> {
        self.settings
            .set(0, settings, 0)
            .map_err(DataplaneError::map(map_names::SETTINGS))
    }

    pub fn services(&self) -> Vec<(ServiceKey, ServiceValue)> {
        self.services.iter().filter_map(Result::ok).collect()
    }

    pub fn write_service(
        &mut self,
        key: ServiceKey,
        value: ServiceValue,
    ) -> Result<(), DataplaneError> {
        self.services
            .insert(key, value, 0)
            .map_err(DataplaneError::map(map_names::SERVICES))
    }

    pub fn remove_service(&mut self, key: &ServiceKey) -> Result<(), DataplaneError> {
        match self.services.remove(key) {
            Ok(()) | Err(aya::maps::MapError::KeyNotFound) => Ok(()),
            Err(e) => Err(DataplaneError::Map {
                map: map_names::SERVICES,
                source: e,
            }),
        }
    }

    /// Makes `vips` hold exactly `wanted` (address -> number of services).
    pub fn set_vips(&mut self, wanted: &StdHashMap<[u8; 4], u32>) -> Result<(), DataplaneError> {
        for (vip, count) in wanted {
            self.vips
                .insert(vip, count, 0)
                .map_err(DataplaneError::map(map_names::VIPS))?;
        }
        let stale: Vec<[u8; 4]> = self
            .vips
            .keys()
            .filter_map(Result::ok)
            .filter(|vip| !wanted.contains_key(vip))
            .collect();
        for vip in stale {
            let _ = self.vips.remove(&vip);
        }
        Ok(())
    }

    /// Every backend slot in use (a zero address marks a free slot).
    pub fn backends(&self) -> Vec<(u32, BackendValue)> {
        (0..MAX_BACKENDS)
            .filter_map(|id| self.backends.get(&id, 0).ok().map(|b| (id, b)))
            .filter(|(_, b)| b.addr != [0; 4])
            .collect()
    }

    pub fn write_backend(&mut self, id: u32, value: BackendValue) -> Result<(), DataplaneError> {
        self.backends
            .set(id, value, 0)
            .map_err(DataplaneError::map(map_names::BACKENDS))
    }

    /// Writes half `half` of a service's ring.
    pub fn write_ring(
        &mut self,
        service_id: u32,
        half: u32,
        ring: &[u32],
    ) -> Result<(), DataplaneError> {
        let base = ring_base(service_id, half);
        for (slot, backend_id) in ring.iter().take(RING_SIZE as usize).enumerate() {
            self.rings
                .set(base + slot as u32, backend_id, 0)
                .map_err(DataplaneError::map(map_names::RINGS))?;
        }
        Ok(())
    }

    /// Lets the program redirect to exactly these interfaces.
    pub fn set_tx_ports(&mut self, ifindexes: &[u32]) -> Result<(), DataplaneError> {
        for index in ifindexes {
            self.tx_ports
                .insert(*index, *index, None, 0)
                .map_err(|source| DataplaneError::DevMap { source })?;
        }
        let stale: Vec<u32> = self
            .tx_ports
            .keys()
            .filter_map(Result::ok)
            .filter(|k| !ifindexes.contains(k))
            .collect();
        for key in stale {
            let _ = self.tx_ports.remove(key);
        }
        Ok(())
    }

    pub fn service_counters(&self, id: u32) -> Counters {
        self.service_stats
            .get(&id, 0)
            .map(|v| sum(&v))
            .unwrap_or_default()
    }

    pub fn backend_counters(&self, id: u32) -> Counters {
        self.backend_stats
            .get(&id, 0)
            .map(|v| sum(&v))
            .unwrap_or_default()
    }

    /// Zeroes what the program keeps per backend id (counters, the cached
    /// next hop) when the id is handed to a new backend.
    pub fn reset_backend_counters(&mut self, id: u32) -> Result<(), DataplaneError> {
        self.backend_hops
            .set(id, per_cpu_default()?, 0)
            .map_err(DataplaneError::map(map_names::BACKEND_HOPS))?;
        self.backend_stats
            .set(id, per_cpu_default()?, 0)
            .map_err(DataplaneError::map(map_names::BACKEND_STATS))
    }

    pub fn reasons(&self) -> Vec<(Reason, u64)> {
        Reason::ALL
            .iter()
            .map(|r| {
                let count = self
                    .reasons
                    .get(&(*r as u32), 0)
                    .map(|v| v.iter().sum())
                    .unwrap_or(0);
                (*r, count)
            })
            .collect()
    }

    /// Half-open flows the program ended to make room for new ones (see
    /// the program's `half_open`), over all CPUs.
    pub fn half_open_evicted(&self) -> u64 {
        self.half_open_cursors
            .get(&0, 0)
            .map(|cpus| cpus.iter().fold(0u64, |sum, c| sum.wrapping_add(c.evicted)))
            .unwrap_or(0)
    }

    /// Every entry of the flow table: batched (a few system calls for the
    /// whole table), or key by key on a kernel without batch lookups.
    fn flow_table(&self) -> Vec<(FlowKey, FlowValue)> {
        let mut whole = batch::Cursor::default();
        self.read_flows(&mut whole, usize::MAX).0
    }

    /// The next slice of at least `limit` entries of the expiry sweep, and
    /// whether it ends the sweep.
    fn flow_table_slice(&mut self, limit: usize) -> (Vec<(FlowKey, FlowValue)>, bool) {
        let mut cursor = std::mem::take(&mut self.sweep.cursor);
        let read = self.read_flows(&mut cursor, limit);
        self.sweep.cursor = cursor;
        read
    }

    /// Reads from `cursor` on, batched; without batch lookups (older
    /// kernels) the whole table key by key.
    fn read_flows(
        &self,
        cursor: &mut batch::Cursor,
        limit: usize,
    ) -> (Vec<(FlowKey, FlowValue)>, bool) {
        use aya::maps::IterableMap;
        match batch::read_some(self.flows.map(), cursor, limit) {
            Ok(read) => read,
            Err(error) => {
                debug!(%error, "walking the flow table key by key");
                *cursor = batch::Cursor::default();
                (self.flows.iter().filter_map(Result::ok).collect(), true)
            }
        }
    }

    /// Counts live flows per backend and per service: by a walk of the
    /// table while it is small, from the last expiry sweep once it is large
    /// (then at most one sweep old, which is several expiry passes).
    pub fn flow_census(&self, settings: &Settings, now_ns: u64) -> FlowCensus {
        if let Some(last) = &self.sweep.last {
            if last.size() > LIVE_CENSUS_LIMIT {
                return last.clone();
            }
        }
        if let Some(stand_in) = self.sweep.stand_in.borrow().as_ref() {
            return stand_in.clone();
        }
        let mut census = FlowCensus::default();
        for (_, flow) in self.flow_table() {
            census.count(settings, &flow, now_ns);
        }
        if census.size() > LIVE_CENSUS_LIMIT {
            *self.sweep.stand_in.borrow_mut() = Some(census.clone());
        }
        census
    }

    /// Tells flow sync of the flows `remove_flows` and `expire_flows` end
    /// from now on; a full feed drops the news (the peer's copy then ends
    /// by its own expiry).
    pub fn feed_removals(&mut self, feed: tokio::sync::mpsc::Sender<FlowEvent>) {
        self.removals = Some(feed);
    }

    /// Takes flow sync's news of this node's NAT sources from now on
    /// (`apply_pool_notes`).
    pub fn take_pool_notes(&mut self, notes: tokio::sync::mpsc::Receiver<PoolNote>) {
        self.pool_notes = Some(notes);
    }

    /// Gives the port pools what flow sync did to their sources since the
    /// last call: sources back to their queues, sources taken out.
    pub fn apply_pool_notes(&mut self) {
        let Some(notes) = self.pool_notes.as_mut() else {
            return;
        };
        while let Ok(note) = notes.try_recv() {
            self.ports.apply(note);
        }
    }

    /// Deletes every flow (both directions) that `select` picks; returns
    /// their client-side keys.
    pub fn remove_flows(&mut self, mut select: impl FnMut(&FlowValue) -> bool) -> Vec<FlowKey> {
        let doomed: Vec<(FlowKey, FlowValue)> = self
            .flow_table()
            .into_iter()
            .filter(|(_, flow)| select(flow))
            .collect();
        let mut ended = Vec::with_capacity(doomed.len());
        for (key, flow) in doomed {
            if self.end_if_still(&key, &flow, &mut select) {
                ended.push(key);
            }
        }
        if !ended.is_empty() {
            self.end_flow_cache_copies();
        }
        ended
    }

    /// See `end_flow_cache_copies`. A failure is logged, not returned:
    /// the copies then end within `Settings::flow_cache_ttl_ns` anyway.
    pub fn end_flow_cache_copies(&mut self) {
        if let Err(error) = end_flow_cache_copies(&mut self.flow_cache_epoch) {
            tracing::warn!(%error, "could not end the flow cache's copies at once");
        }
    }

    /// Ends the flow `walked` saw at `key` if that entry still holds it and
    /// `select` still picks it: the program may have started a new flow in
    /// the entry since the walk (a client reusing its ports writes over it).
    /// Every flow the agent ends passes here, so this is where flow sync
    /// hears of it.
    fn end_if_still(
        &mut self,
        key: &FlowKey,
        walked: &FlowValue,
        select: &mut impl FnMut(&FlowValue) -> bool,
    ) -> bool {
        match self.flows.get(key, 0) {
            Ok(current) if same_flow(&current, walked) && select(&current) => {
                end_flow(&mut self.flows, &mut self.ports, key, &current);
                self.report_ended(key, &current);
                true
            }
            _ => false,
        }
    }

    /// Queues the deletion of an ended flow for the peer. The entry as last
    /// read, not as walked: its last packet is what lets the peer tell this
    /// news from an older view of the flow (see sync's `deletion_applies`).
    fn report_ended(&self, key: &FlowKey, flow: &FlowValue) {
        if let Some(feed) = &self.removals {
            let _ = feed.try_send(FlowEvent::of(key, flow));
        }
    }

    /// Whether an expiry sweep is part-way through the table.
    pub fn sweep_in_progress(&self) -> bool {
        self.sweep.cursor.started()
    }

    /// Deletes flows idle past their timeout, so their NAT ports and the
    /// ids of drained backends can be reused: one slice of the table per
    /// call (all of it while the table is small), counting as it goes.
    /// Flow sync replicates each as a deletion.
    pub fn expire_flows(&mut self, now_ns: u64) -> usize {
        let settings = match self.settings() {
            Ok(s) if s.ready != 0 => s,
            _ => return 0,
        };
        let (slice, done) = self.flow_table_slice(SWEEP_SLICE);
        let mut expired = 0;
        for (key, flow) in slice {
            self.sweep.partial.count(&settings, &flow, now_ns);
            if !flow_expired(&settings, &flow, now_ns) {
                continue;
            }
            let mut still_expired = |current: &FlowValue| flow_expired(&settings, current, now_ns);
            if self.end_if_still(&key, &flow, &mut still_expired) {
                expired += 1;
            }
        }
        if done {
            self.sweep.last = Some(std::mem::take(&mut self.sweep.partial));
            self.sweep.stand_in.take();
        }
        expired
    }

    /// Takes the destinations the program found no neighbour for.
    pub fn take_neigh_misses(&mut self) -> Vec<std::net::Ipv4Addr> {
        let keys: Vec<[u8; 4]> = self.neigh_misses.keys().filter_map(Result::ok).collect();
        for key in &keys {
            let _ = self.neigh_misses.remove(key);
        }
        keys.into_iter().map(std::net::Ipv4Addr::from).collect()
    }
}
