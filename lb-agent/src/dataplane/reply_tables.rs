//! Reverse connection tracking: one array per port pool, indexed by
//! `port_slot` (SNAT address index, port), of the `ReplyValue` of the flow
//! that holds that NAT source. An array instead of a hash table keyed by
//! the reply's 5-tuple, because a new flow then claims its source and an
//! ended flow gives it back by flipping one word in place (no hashing, no
//! bucket locks, no element allocation): the larger half of what a new
//! flow used to cost. The price is memory: every pool has an entry for
//! every port of every SNAT address (`reply_table_len`), 4 MiB per address
//! and backend endpoint.
//!
//! A backend's packet finds its pool through `pool_ids` (endpoint -> pool
//! id), which the agent writes as it makes and retires pools.

use std::collections::HashMap;

use aya::maps::{Array, ArrayOfMaps, HashMap as BpfHashMap, IterableMap, Map, MapData, MapError};
use lb_common::{
    map_names, reply_claim, reply_table_len, FlowKey, PoolKey, ReplyValue, INNER_MAP_FLAG,
};
use tracing::warn;

use super::{batch, port_pools::Endpoint, DataplaneError};

pub(crate) type ReplyTable = Array<MapData, ReplyValue>;
pub(crate) type Outer = ArrayOfMaps<MapData, ReplyTable>;

fn tables_error(error: MapError) -> DataplaneError {
    DataplaneError::map(map_names::REPLY_TABLES)(error)
}

/// The reply tables and the pool ids of one instance, as the agent (their
/// only creator) keeps them.
pub struct ReplyTables {
    outer: Outer,
    pool_ids: BpfHashMap<MapData, PoolKey, u32>,
    open: HashMap<u32, ReplyTable>,
}

impl ReplyTables {
    pub(crate) fn new(outer: Outer, pool_ids: BpfHashMap<MapData, PoolKey, u32>) -> Self {
        Self {
            outer,
            pool_ids,
            open: HashMap::new(),
        }
    }

    /// Forgets every pool id (a start adopts the live pools again).
    pub(crate) fn clear_ids(&mut self) -> Result<(), DataplaneError> {
        let keys: Vec<PoolKey> = self.pool_ids.keys().filter_map(Result::ok).collect();
        for key in keys {
            let _ = self.pool_ids.remove(&key);
        }
        self.open.clear();
        Ok(())
    }

    /// Gives pool `id` of `endpoint` a table for `addresses` SNAT addresses.
    /// With `keep`, the table an earlier run left is kept (its flows' claims
    /// stand), or copied into a table of the new size; without, a pool id
    /// taken over from a retired pool starts empty.
    pub(crate) fn ensure(
        &mut self,
        id: u32,
        endpoint: Endpoint,
        addresses: u32,
        keep: bool,
    ) -> Result<(), DataplaneError> {
        let len = reply_table_len(addresses);
        let earlier = if keep {
            self.outer.get(&id, 0).ok()
        } else {
            None
        };
        let table = match earlier {
            Some(table) if table.len() == len => table,
            earlier => {
                let mut table = ReplyTable::create(len, INNER_MAP_FLAG).map_err(tables_error)?;
                if let Some(earlier) = earlier {
                    copy_claims(&earlier, &mut table);
                }
                self.outer.set(id, &table, 0).map_err(tables_error)?;
                table
            }
        };
        self.open.insert(id, table);
        self.pool_ids
            .insert(endpoint.pool_key(), id, 0)
            .map_err(DataplaneError::map(map_names::POOL_IDS))
    }

    /// Drops the table of a pool no backend uses any more.
    pub(crate) fn retire(&mut self, id: u32, endpoint: Endpoint) {
        let _ = self.pool_ids.remove(&endpoint.pool_key());
        self.open.remove(&id);
        // A one-entry table in its place frees the memory (aya has no
        // delete for arrays of maps); the pool id no longer leads to it.
        match ReplyTable::create(1, INNER_MAP_FLAG) {
            Ok(empty) => {
                let _ = self.outer.set(id, &empty, 0);
            }
            Err(error) => warn!(pool = id, %error, "clearing a retired reply table"),
        }
    }

    /// Ends the claim of the flow of client key `client` on `slot` of pool
    /// `pool`, if it still holds it; the claim it had (`reply_claim::OWN`:
    /// the source goes back to the pool).
    pub(crate) fn end_claim(&mut self, pool: u32, slot: u32, client: &FlowKey) -> Option<u64> {
        let table = self.open.get_mut(&pool)?;
        end_claim_in(table, slot, client)
    }

    /// The entry for NAT source `slot` of pool `pool`.
    pub fn get(&self, pool: u32, slot: u32) -> Option<ReplyValue> {
        self.open.get(&pool)?.get(&slot, 0).ok()
    }

    /// Writes the entry for NAT source `slot` of pool `pool` (tests and
    /// tools that set up flows without the program).
    pub fn set(&mut self, pool: u32, slot: u32, value: ReplyValue) -> Result<(), DataplaneError> {
        let table = self
            .open
            .get_mut(&pool)
            .ok_or_else(|| DataplaneError::Missing(format!("reply table of pool {pool}")))?;
        table.set(slot, value, 0).map_err(tables_error)
    }

    /// The live claims of pool `pool`: (slot, entry).
    pub fn claims(&self, pool: u32) -> Vec<(u32, ReplyValue)> {
        self.open.get(&pool).map_or_else(Vec::new, live_claims)
    }
}

/// A table is hundreds of thousands of entries, nearly all free: read in
/// batches (one system call per several thousand), keeping only claims.
fn live_claims(table: &ReplyTable) -> Vec<(u32, ReplyValue)> {
    batch::read_all(
        table.map(),
        |(_, entry): &(u32, ReplyValue)| entry.live != reply_claim::FREE,
        || {
            table
                .iter()
                .enumerate()
                .filter_map(|(slot, entry)| Some((u32::try_from(slot).ok()?, entry.ok()?)))
                .collect()
        },
    )
}

/// Carries the claims of a table over into one of another size (a pool
/// whose SNAT address count changed); claims beyond the new size are of
/// addresses no longer in the pool, whose flows break either way.
fn copy_claims(from: &ReplyTable, to: &mut ReplyTable) {
    for (slot, entry) in live_claims(from) {
        if slot < to.len() {
            let _ = to.set(slot, entry, 0);
        }
    }
}

fn end_claim_in(table: &mut ReplyTable, slot: u32, client: &FlowKey) -> Option<u64> {
    let entry = table.get(&slot, 0).ok()?;
    if entry.live == reply_claim::FREE || entry.client != *client {
        return None;
    }
    table.set(slot, ReplyValue::default(), 0).ok()?;
    Some(entry.live)
}

/// Reply-table access for another holder of the pins (flow sync).
pub(crate) struct PinnedReplyTables {
    tables: PinnedInner<ReplyTable>,
}

impl PinnedReplyTables {
    /// `table_ids`: the pinned `reply_tables` opened as an array of ids.
    pub(crate) fn new(table_ids: Array<MapData, u32>) -> Self {
        Self {
            tables: PinnedInner::new(table_ids, Map::Array),
        }
    }

    /// The entry of NAT source `slot` of pool `pool`.
    pub(crate) fn get(&mut self, pool: u32, slot: u32) -> Option<ReplyValue> {
        self.tables.get(pool)?.get(&slot, 0).ok()
    }

    /// Writes `value` for NAT source `slot` of pool `pool`; false if the
    /// pool has no table or the slot is beyond it.
    pub(crate) fn write(&mut self, pool: u32, slot: u32, value: &ReplyValue) -> bool {
        self.tables
            .get(pool)
            .is_some_and(|table| table.set(slot, value, 0).is_ok())
    }

    /// Frees the entry of `slot` in pool `pool` if the flow of client key
    /// `client` holds it; the claim it had.
    pub(crate) fn end_claim(&mut self, pool: u32, slot: u32, client: &FlowKey) -> Option<u64> {
        end_claim_in(self.tables.get(pool)?, slot, client)
    }

    /// The live claims of pool `pool`: (slot, entry).
    pub(crate) fn claims(&mut self, pool: u32) -> Vec<(u32, ReplyValue)> {
        self.tables
            .get(pool)
            .map_or_else(Vec::new, |table| live_claims(table))
    }
}

/// The inner maps of a pinned array of maps, for another holder of the
/// pins (flow sync). The agent may replace a pool's inner map at any time
/// (a new size, a retired pool), so every use asks which map the pool has
/// now; the outer map read as an array answers with the map's id in one
/// lookup, and a map is opened (three system calls) only when that id
/// changed, not for every use.
pub(crate) struct PinnedInner<T> {
    ids: Array<MapData, u32>,
    kind: fn(MapData) -> Map,
    open: HashMap<u32, (u32, T)>,
}

impl<T: TryFrom<Map>> PinnedInner<T> {
    /// `ids`: the pinned outer map opened as an array of ids; `kind`: the
    /// inner maps' kind.
    pub(crate) fn new(ids: Array<MapData, u32>, kind: fn(MapData) -> Map) -> Self {
        Self {
            ids,
            kind,
            open: HashMap::new(),
        }
    }

    /// The map pool `pool` has now, if any.
    pub(crate) fn get(&mut self, pool: u32) -> Option<&mut T> {
        let Ok(id) = self.ids.get(&pool, 0) else {
            self.open.remove(&pool);
            return None;
        };
        if self.open.get(&pool).is_none_or(|(open, _)| *open != id) {
            let map = T::try_from((self.kind)(MapData::from_id(id).ok()?)).ok()?;
            self.open.insert(pool, (id, map));
        }
        self.open.get_mut(&pool).map(|(_, map)| map)
    }
}
