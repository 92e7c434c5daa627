//! The one list of the program's maps: name, kind, layout, size and what an
//! upgrade does with a pinned copy of another shape. The loader pins and
//! checks by it, and the program tests check the built object against it.

use core::mem::size_of;

use crate::{
    liveness, map_names::*, BackendValue, Counters, FlowCacheEntry, FlowKey, FlowValue,
    HalfOpenCursor, HalfOpenEntry, NextHop, PoolCacheEntry, PoolKey, PortPool, Reason, ReplyValue,
    ServiceKey, ServiceValue, Settings, DEFAULT_MAX_FLOWS, FLOW_CACHE_SLOTS, FLOW_EVENTS_BYTES,
    FLOW_GENERATIONS_SLOTS, HALF_OPEN_SLOTS, MAX_BACKENDS, MAX_NEIGH_MISSES, MAX_SERVICES,
    MAX_TX_PORTS, POOL_CACHE_SLOTS, RING_SLOTS,
};

/// The kernel map type a map is declared with.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MapKind {
    Hash,
    LruHash,
    Array,
    PerCpuArray,
    DevMapHash,
    ArrayOfMaps,
    RingBuf,
    Queue,
}

#[cfg(feature = "user")]
impl MapKind {
    /// The kind of a kernel map type, if the program declares that kind.
    pub fn of(map_type: aya::maps::MapType) -> Option<Self> {
        use aya::maps::MapType;
        Some(match map_type {
            MapType::Hash => Self::Hash,
            MapType::LruHash => Self::LruHash,
            MapType::Array => Self::Array,
            MapType::PerCpuArray => Self::PerCpuArray,
            MapType::DevMapHash => Self::DevMapHash,
            MapType::ArrayOfMaps => Self::ArrayOfMaps,
            MapType::RingBuf => Self::RingBuf,
            MapType::Queue => Self::Queue,
            _ => return None,
        })
    }
}

/// What the agent does at start with a pinned map of another kind, layout
/// or size than this build's.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum OnMismatch {
    /// Replace the pin: the agent writes the map whole after every load, or
    /// its contents may be lost on an upgrade (counters, the half-open ring).
    Replace,
    /// Refuse to start: the map holds state that must not be lost silently.
    Refuse,
}

/// The maps an array of maps holds. The agent makes each one (with a size
/// of its own), so the pin check reads their layout from one it finds: the
/// outer map's own layout (4-byte ids) says nothing about them.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct InnerSpec {
    pub kind: MapKind,
    pub key_size: u32,
    pub value_size: u32,
}

/// One map of the program.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MapSpec {
    pub name: &'static str,
    pub kind: MapKind,
    pub key_size: u32,
    pub value_size: u32,
    /// As the program declares it; the agent resizes the flow tables at
    /// load (`resized_at_load`).
    pub max_entries: u32,
    /// Sized by `conntrack.max_flows` when loaded.
    pub resized_at_load: bool,
    pub on_mismatch: OnMismatch,
    /// For an array of maps, the maps it holds.
    pub inner: Option<InnerSpec>,
}

const fn spec(
    name: &'static str,
    kind: MapKind,
    key_size: usize,
    value_size: usize,
    max_entries: u32,
    on_mismatch: OnMismatch,
) -> MapSpec {
    MapSpec {
        name,
        kind,
        key_size: key_size as u32,
        value_size: value_size as u32,
        max_entries,
        resized_at_load: false,
        on_mismatch,
        inner: None,
    }
}

/// An array of maps (indexed by port pool id) of `kind` maps; the entries
/// they hold are state, so a pin of another layout is refused.
const fn of_maps(name: &'static str, kind: MapKind, key_size: usize, value_size: usize) -> MapSpec {
    MapSpec {
        inner: Some(InnerSpec {
            kind,
            key_size: key_size as u32,
            value_size: value_size as u32,
        }),
        ..spec(
            name,
            MapKind::ArrayOfMaps,
            4,
            4,
            MAX_BACKENDS,
            OnMismatch::Refuse,
        )
    }
}

const fn flow_table(name: &'static str, value_size: usize) -> MapSpec {
    MapSpec {
        resized_at_load: true,
        ..spec(
            name,
            MapKind::Hash,
            size_of::<FlowKey>(),
            value_size,
            DEFAULT_MAX_FLOWS,
            OnMismatch::Refuse,
        )
    }
}

use MapKind::*;
use OnMismatch::*;

/// Every map the program declares, in a stable order.
pub const MAPS: [MapSpec; 27] = [
    spec(
        SERVICES,
        Hash,
        size_of::<ServiceKey>(),
        size_of::<ServiceValue>(),
        MAX_SERVICES,
        Refuse,
    ),
    spec(
        BACKENDS,
        Array,
        4,
        size_of::<BackendValue>(),
        MAX_BACKENDS,
        Refuse,
    ),
    spec(RINGS, Array, 4, 4, RING_SLOTS, Replace),
    spec(RR_CURSORS, PerCpuArray, 4, 4, MAX_SERVICES, Refuse),
    flow_table(FLOWS, size_of::<FlowValue>()),
    spec(SETTINGS, Array, 4, size_of::<Settings>(), 1, Replace),
    spec(TX_PORTS, DevMapHash, 4, 8, MAX_TX_PORTS, Refuse),
    spec(
        SERVICE_STATS,
        PerCpuArray,
        4,
        size_of::<Counters>(),
        MAX_SERVICES,
        Refuse,
    ),
    spec(
        BACKEND_STATS,
        PerCpuArray,
        4,
        size_of::<Counters>(),
        MAX_BACKENDS,
        Refuse,
    ),
    spec(REASONS, PerCpuArray, 4, 8, Reason::COUNT, Replace),
    spec(VIPS, Hash, 4, 4, MAX_SERVICES, Refuse),
    spec(NEIGH_MISSES, LruHash, 4, 8, MAX_NEIGH_MISSES, Refuse),
    // Queues of `port_slot`s (no keys), as long as the pool's capacity.
    of_maps(PORT_QUEUES, Queue, 0, 4),
    // Arrays of `ReplyValue` with `reply_table_len` entries.
    of_maps(REPLY_TABLES, Array, 4, size_of::<ReplyValue>()),
    // Written whole from the pools' records at every start.
    spec(
        POOL_IDS,
        Hash,
        size_of::<PoolKey>(),
        4,
        MAX_BACKENDS,
        Replace,
    ),
    spec(
        PORT_POOLS,
        Array,
        4,
        size_of::<PortPool>(),
        MAX_BACKENDS,
        Refuse,
    ),
    spec(PORT_TAKEN, PerCpuArray, 4, 8, MAX_BACKENDS, Refuse),
    spec(
        BACKEND_HOPS,
        PerCpuArray,
        4,
        size_of::<NextHop>(),
        MAX_BACKENDS,
        Refuse,
    ),
    // The flows a ring names still expire through the agent: losing the
    // ring costs them only their place in it.
    spec(
        HALF_OPEN,
        PerCpuArray,
        4,
        size_of::<HalfOpenEntry>(),
        HALF_OPEN_SLOTS,
        Replace,
    ),
    spec(
        HALF_OPEN_CURSORS,
        PerCpuArray,
        4,
        size_of::<HalfOpenCursor>(),
        1,
        Replace,
    ),
    // Events not yet read when the agent stops are lost either way: the
    // peer's full transfer at the next start covers them.
    spec(FLOW_EVENTS, RingBuf, 0, 0, FLOW_EVENTS_BYTES, Replace),
    spec(FLOW_EVENTS_LOST, PerCpuArray, 4, 8, 1, Replace),
    // The flow cache holds copies only: a new one is as good as the old,
    // and the agent moves the epoch on at every start, which ends any
    // copy of a kept cache whose flows changed while no agent ran.
    spec(
        FLOW_CACHE,
        PerCpuArray,
        4,
        size_of::<FlowCacheEntry>(),
        FLOW_CACHE_SLOTS,
        Replace,
    ),
    spec(
        FLOW_GENERATIONS,
        Array,
        4,
        4,
        FLOW_GENERATIONS_SLOTS,
        Replace,
    ),
    spec(FLOW_CACHE_EPOCH, Array, 4, 4, 1, Replace),
    // A heartbeat rewritten every advert interval and a peer's advert
    // time: nothing lasting.
    spec(AGENT_LIVENESS, Array, 4, 8, liveness::ENTRIES, Replace),
    // Copies checked against `port_pools` at every use.
    spec(
        POOL_CACHE,
        PerCpuArray,
        4,
        size_of::<PoolCacheEntry>(),
        POOL_CACHE_SLOTS,
        Replace,
    ),
];

/// The spec of the map called `name`.
pub fn find(name: &str) -> Option<&'static MapSpec> {
    MAPS.iter().find(|m| m.name == name)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_map_is_listed_once() {
        for (index, map) in MAPS.iter().enumerate() {
            assert!(
                MAPS[..index].iter().all(|m| m.name != map.name),
                "{} listed twice",
                map.name
            );
            assert_eq!(find(map.name), Some(map));
        }
    }
}
