//! NAT sources for new flows: one pool per backend endpoint (address,
//! port, protocol), each a kernel queue of free (SNAT address, port) slots
//! that the XDP program pops in O(1).
//!
//! A slot goes back to the tail of its queue when its flow ends, so the
//! program always takes the least recently released one: a backend that
//! closed the connection first keeps the (address, port) pair in
//! TIME_WAIT (60 s on Linux) and would refuse or mistake a new SYN from
//! it, and the longest rest the pool allows is the best defence. A new
//! pool gets all its slots at once (a never-used slot has rested longest,
//! so none may come after a released one; about 1 s per million slots).
//! The queues and the pools' records are pinned with the other maps, so a
//! restarted agent carries on with them; a pool whose filling a restart
//! interrupted is made anew.

use std::{
    collections::{HashMap, VecDeque},
    hash::{Hash, Hasher},
    net::Ipv4Addr,
};

use aya::maps::{Array, ArrayOfMaps, MapData, MapError, PerCpuArray, Queue};
use lb_common::{map_names, port_slot, slot_address_index, slot_port, PortPool, MAX_BACKENDS};
use tracing::{info, warn};

use super::{maps::per_cpu_default, reply_tables::ReplyTables, DataplaneError};

/// Never-used slots a pool whose filling failed part way (a push error)
/// gets per upkeep until it has them all.
const FRESH_CHUNK: u32 = 65_536;

/// The NAT sources one pool can hand out: every usable port on every
/// SNAT address, enumerated port by port, each port on all addresses in
/// turn, so that consecutive new flows spread over the addresses.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct SlotLayout {
    addresses: Vec<Ipv4Addr>,
    ranges: Vec<(u16, u16)>,
}

impl SlotLayout {
    /// `ranges` are inclusive, sorted and disjoint (see `ports::usable_ranges`).
    pub fn new(addresses: Vec<Ipv4Addr>, ranges: Vec<(u16, u16)>) -> Self {
        Self { addresses, ranges }
    }

    pub fn addresses(&self) -> &[Ipv4Addr] {
        &self.addresses
    }

    pub fn ports(&self) -> u32 {
        self.ranges
            .iter()
            .map(|(low, high)| u32::from(*high) - u32::from(*low) + 1)
            .sum()
    }

    /// Slots of one pool: addresses x usable ports.
    pub fn capacity(&self) -> u32 {
        self.ports() * self.addresses.len() as u32
    }

    /// The `n`th slot in the layout's order (`n < capacity`).
    pub fn slot(&self, n: u32) -> Option<u32> {
        let count = self.addresses.len() as u32;
        if count == 0 {
            return None;
        }
        let address_index = (n % count) as u8;
        let mut port_offset = n / count;
        for (low, high) in &self.ranges {
            let len = u32::from(*high) - u32::from(*low) + 1;
            if port_offset < len {
                return Some(port_slot(address_index, *low + port_offset as u16));
            }
            port_offset -= len;
        }
        None
    }

    /// Whether `slot` belongs to this layout (a slot of an earlier layout
    /// is not given back).
    pub fn contains(&self, slot: u32) -> bool {
        let port = slot_port(slot);
        usize::from(slot_address_index(slot)) < self.addresses.len()
            && self
                .ranges
                .iter()
                .any(|(low, high)| (*low..=*high).contains(&port))
    }

    /// Identifies the layout in a pool's record (stable across builds:
    /// FNV-1a over the addresses and ranges).
    pub fn fingerprint(&self) -> u64 {
        let mut hasher = Fnv1a::default();
        for address in &self.addresses {
            address.octets().hash(&mut hasher);
        }
        for range in &self.ranges {
            range.hash(&mut hasher);
        }
        hasher.finish()
    }
}

struct Fnv1a(u64);

impl Default for Fnv1a {
    fn default() -> Self {
        Self(0xcbf2_9ce4_8422_2325)
    }
}

impl Hasher for Fnv1a {
    fn finish(&self) -> u64 {
        self.0
    }

    fn write(&mut self, bytes: &[u8]) {
        for byte in bytes {
            self.0 = (self.0 ^ u64::from(*byte)).wrapping_mul(0x0100_0000_01b3);
        }
    }
}

/// Where a pool's flows go: a backend's address, port and protocol.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Endpoint {
    pub addr: Ipv4Addr,
    pub port: u16,
    pub proto: u8,
}

impl Endpoint {
    /// The key of this endpoint in the program's `pool_ids`.
    pub fn pool_key(self) -> lb_common::PoolKey {
        lb_common::PoolKey {
            addr: self.addr.octets(),
            port: self.port,
            proto: self.proto,
            _pad: 0,
        }
    }
}

/// How full one pool is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct PoolUsage {
    /// NAT sources held by flows (taken and not given back yet).
    pub in_use: u64,
    pub capacity: u64,
}

/// The pools of one instance.
pub struct PortPools {
    queues: ArrayOfMaps<MapData, Queue<MapData, u32>>,
    records: Array<MapData, PortPool>,
    taken: PerCpuArray<MapData, u64>,
    replies: ReplyTables,
    layout: SlotLayout,
    /// Open handles of the live pools' queues, by pool id.
    open: HashMap<u32, Queue<MapData, u32>>,
    by_endpoint: HashMap<Endpoint, u32>,
    /// Releases not written to the records yet, by pool id.
    unsaved: HashMap<u32, u64>,
    /// Slots released while their pool is still being filled, oldest
    /// first: they go to the queue behind the last never-used slot.
    resting: HashMap<u32, VecDeque<u32>>,
}

fn map_error(name: &'static str) -> impl FnOnce(MapError) -> DataplaneError {
    DataplaneError::map(name)
}

impl PortPools {
    pub(crate) fn new(
        queues: ArrayOfMaps<MapData, Queue<MapData, u32>>,
        records: Array<MapData, PortPool>,
        taken: PerCpuArray<MapData, u64>,
        replies: ReplyTables,
    ) -> Self {
        Self {
            queues,
            records,
            taken,
            replies,
            layout: SlotLayout::default(),
            open: HashMap::new(),
            by_endpoint: HashMap::new(),
            unsaved: HashMap::new(),
            resting: HashMap::new(),
        }
    }

    /// Takes the pool maps out of a loaded object (program tests and tools
    /// that drive the program without an agent).
    pub fn take(ebpf: &mut aya::Ebpf) -> Result<Self, DataplaneError> {
        fn take_typed<T: TryFrom<aya::maps::Map, Error = MapError>>(
            ebpf: &mut aya::Ebpf,
            name: &'static str,
        ) -> Result<T, DataplaneError> {
            let map = ebpf
                .take_map(name)
                .ok_or_else(|| DataplaneError::Missing(format!("map {name}")))?;
            T::try_from(map).map_err(DataplaneError::map(name))
        }
        Ok(Self::new(
            take_typed(ebpf, map_names::PORT_QUEUES)?,
            take_typed(ebpf, map_names::PORT_POOLS)?,
            take_typed(ebpf, map_names::PORT_TAKEN)?,
            ReplyTables::new(
                take_typed(ebpf, map_names::REPLY_TABLES)?,
                take_typed(ebpf, map_names::POOL_IDS)?,
            ),
        ))
    }

    /// Sets the slots pools hand out and takes over the pools an earlier run
    /// left. A pool made for another layout (SNAT addresses or port range
    /// changed) is rebuilt; a slot its flows still hold is then skipped by
    /// the program until they give it back.
    pub fn adopt(&mut self, layout: SlotLayout) -> Result<(), DataplaneError> {
        self.layout = layout;
        self.open.clear();
        self.by_endpoint.clear();
        self.resting.clear();
        self.replies.clear_ids()?;
        for id in 0..MAX_BACKENDS {
            let record = self.record(id)?;
            if record.live == 0 {
                continue;
            }
            let endpoint = Endpoint {
                addr: Ipv4Addr::from(record.backend_addr),
                port: record.backend_port,
                proto: record.proto,
            };
            let complete = record.fresh_next >= record.capacity;
            let queue = match self.queues.get(&id, 0) {
                Ok(queue) if record.layout == self.layout.fingerprint() && complete => queue,
                _ => {
                    // Slots its flows hold are skipped by the program
                    // (their claims stand) until the flows give them back.
                    info!(pool = id, addr = %endpoint.addr, port = endpoint.port,
                        "NAT port pool made for another SNAT layout, or not filled when the agent stopped; making it anew");
                    self.create(id, endpoint, true)?;
                    continue;
                }
            };
            self.replies
                .ensure(id, endpoint, self.layout.addresses().len() as u32, true)?;
            self.open.insert(id, queue);
            self.by_endpoint.insert(endpoint, id);
        }
        Ok(())
    }

    fn record(&self, id: u32) -> Result<PortPool, DataplaneError> {
        self.records
            .get(&id, 0)
            .map_err(map_error(map_names::PORT_POOLS))
    }

    /// The pool of `endpoint`, made on first use.
    pub fn pool_for(&mut self, endpoint: Endpoint) -> Result<u32, DataplaneError> {
        if let Some(id) = self.by_endpoint.get(&endpoint) {
            return Ok(*id);
        }
        let id = (0..MAX_BACKENDS)
            .find(|id| !self.open.contains_key(id))
            .ok_or(DataplaneError::Full {
                what: "port pool",
                limit: MAX_BACKENDS,
            })?;
        self.create(id, endpoint, false)?;
        Ok(id)
    }

    /// Makes pool `id` anew; `keep_claims`: its reply table keeps the
    /// claims of the flows an earlier run left (a rebuilt pool), else it
    /// starts empty (a new pool).
    fn create(
        &mut self,
        id: u32,
        endpoint: Endpoint,
        keep_claims: bool,
    ) -> Result<(), DataplaneError> {
        let capacity = self.layout.capacity();
        if capacity == 0 {
            return Err(DataplaneError::Missing(
                "SNAT addresses or NAT ports for the port pools".into(),
            ));
        }
        let queue = Queue::<MapData, u32>::create(capacity, 0)
            .map_err(map_error(map_names::PORT_QUEUES))?;
        self.queues
            .set(id, &queue, 0)
            .map_err(map_error(map_names::PORT_QUEUES))?;
        self.taken
            .set(id, per_cpu_default::<u64>()?, 0)
            .map_err(map_error(map_names::PORT_TAKEN))?;
        self.replies.ensure(
            id,
            endpoint,
            self.layout.addresses().len() as u32,
            keep_claims,
        )?;
        let record = PortPool {
            backend_addr: endpoint.addr.octets(),
            backend_port: endpoint.port,
            proto: endpoint.proto,
            live: 1,
            layout: self.layout.fingerprint(),
            capacity,
            fresh_next: 0,
            released: 0,
        };
        self.records
            .set(id, record, 0)
            .map_err(map_error(map_names::PORT_POOLS))?;
        self.unsaved.remove(&id);
        self.resting.remove(&id);
        self.open.insert(id, queue);
        self.by_endpoint.insert(endpoint, id);
        // All at once: a slot the program gives back goes to the tail, and
        // must not get ahead of never-used ones still to be queued.
        self.queue_fresh(id, capacity)
    }

    /// Retires the pools no backend uses any more (their flows are gone:
    /// a backend id is released only once no flow uses it).
    pub fn retain(&mut self, used: &[Endpoint]) -> Result<(), DataplaneError> {
        let unused: Vec<(Endpoint, u32)> = self
            .by_endpoint
            .iter()
            .filter(|(endpoint, _)| !used.contains(endpoint))
            .map(|(endpoint, id)| (*endpoint, *id))
            .collect();
        for (endpoint, id) in unused {
            self.records
                .set(id, PortPool::default(), 0)
                .map_err(map_error(map_names::PORT_POOLS))?;
            self.open.remove(&id);
            self.unsaved.remove(&id);
            self.resting.remove(&id);
            self.by_endpoint.remove(&endpoint);
            self.replies.retire(id, endpoint);
        }
        Ok(())
    }

    /// The pool of `endpoint`, if it has one.
    pub fn pool_of(&self, endpoint: &Endpoint) -> Option<u32> {
        self.by_endpoint.get(endpoint).copied()
    }

    /// Live claims in all the pools' reply tables.
    pub fn reply_claims(&self) -> usize {
        self.open
            .keys()
            .map(|id| self.replies.claims(*id).len())
            .sum()
    }

    /// The pools' reply tables.
    pub fn replies(&self) -> &ReplyTables {
        &self.replies
    }

    pub fn replies_mut(&mut self) -> &mut ReplyTables {
        &mut self.replies
    }

    /// Ends the claim of the flow of client key `client` on `slot` of
    /// `pool` if it still holds it, and gives the source back if it is this
    /// node's.
    pub fn end_claim(&mut self, pool: u32, slot: u32, client: &lb_common::FlowKey) {
        if self.replies.end_claim(pool, slot, client) == Some(lb_common::reply_claim::OWN) {
            self.release(pool, slot);
        }
    }

    /// Gives a flow's NAT source back to the tail of its pool's queue.
    pub fn release(&mut self, pool: u32, slot: u32) {
        if !self.layout.contains(slot) {
            return;
        }
        if let Some(resting) = self.resting.get_mut(&pool) {
            resting.push_back(slot);
            *self.unsaved.entry(pool).or_default() += 1;
            return;
        }
        let Some(queue) = self.open.get_mut(&pool) else {
            return;
        };
        match queue.push(slot, 0) {
            Ok(()) => *self.unsaved.entry(pool).or_default() += 1,
            Err(error) => warn!(pool, %error, "giving a NAT port back to its pool"),
        }
    }

    fn taken(&self, id: u32) -> u64 {
        self.taken
            .get(&id, 0)
            .map(|values| values.iter().fold(0u64, |sum, v| sum.wrapping_add(*v)))
            .unwrap_or(0)
    }

    /// Saves the releases since the last call and goes on filling the
    /// pools that do not have all their slots yet.
    pub fn upkeep(&mut self) -> Result<(), DataplaneError> {
        let ids: Vec<u32> = self.open.keys().copied().collect();
        for id in ids {
            let mut record = self.record(id)?;
            if let Some(released) = self.unsaved.remove(&id) {
                record.released = record.released.wrapping_add(released);
                self.records
                    .set(id, record, 0)
                    .map_err(map_error(map_names::PORT_POOLS))?;
            }
            if record.fresh_next < record.capacity {
                self.queue_fresh(id, FRESH_CHUNK)?;
            }
        }
        Ok(())
    }

    /// Queues the next `count` never-used slots; once there are none left,
    /// the slots released meanwhile follow them.
    fn queue_fresh(&mut self, id: u32, count: u32) -> Result<(), DataplaneError> {
        let mut record = self.record(id)?;
        let Some(queue) = self.open.get_mut(&id) else {
            return Ok(());
        };
        let end = record.fresh_next.saturating_add(count).min(record.capacity);
        let mut next = record.fresh_next;
        while next < end {
            let Some(slot) = self.layout.slot(next) else {
                break;
            };
            if let Err(error) = queue.push(slot, 0) {
                warn!(pool = id, %error, "queueing fresh NAT ports");
                break;
            }
            next += 1;
        }
        record.fresh_next = next;
        self.records
            .set(id, record, 0)
            .map_err(map_error(map_names::PORT_POOLS))?;
        if next < record.capacity {
            self.resting.entry(id).or_default();
            return Ok(());
        }
        for slot in self.resting.remove(&id).unwrap_or_default() {
            if let Err(error) = queue.push(slot, 0) {
                warn!(pool = id, %error, "giving released NAT ports back to their pool");
            }
        }
        Ok(())
    }

    /// How full the pool of `endpoint` is.
    pub fn usage(&self, endpoint: &Endpoint) -> Option<PoolUsage> {
        let id = *self.by_endpoint.get(endpoint)?;
        let record = self.record(id).ok()?;
        let released = record
            .released
            .wrapping_add(self.unsaved.get(&id).copied().unwrap_or(0));
        Some(PoolUsage {
            in_use: self
                .taken(id)
                .wrapping_sub(released)
                .min(u64::from(record.capacity)),
            capacity: u64::from(record.capacity),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn layout() -> SlotLayout {
        SlotLayout::new(
            vec![
                Ipv4Addr::new(10, 200, 0, 11),
                Ipv4Addr::new(10, 200, 0, 111),
            ],
            vec![(1024, 1025), (61000, 61000)],
        )
    }

    #[test]
    fn capacity_is_addresses_times_ports() {
        assert_eq!(layout().ports(), 3);
        assert_eq!(layout().capacity(), 6);
        assert_eq!(SlotLayout::default().capacity(), 0);
    }

    #[test]
    fn consecutive_slots_spread_over_the_addresses() {
        let layout = layout();
        let slots: Vec<(u8, u16)> = (0..layout.capacity())
            .map(|n| layout.slot(n).expect("in range"))
            .map(|slot| (slot_address_index(slot), slot_port(slot)))
            .collect();
        assert_eq!(
            slots,
            vec![
                (0, 1024),
                (1, 1024),
                (0, 1025),
                (1, 1025),
                (0, 61000),
                (1, 61000)
            ]
        );
        assert_eq!(layout.slot(6), None);
    }

    #[test]
    fn only_slots_of_the_layout_are_given_back() {
        let layout = layout();
        assert!(layout.contains(port_slot(1, 61000)));
        assert!(!layout.contains(port_slot(2, 1024)), "no third address");
        assert!(!layout.contains(port_slot(0, 1026)), "outside the ranges");
    }

    #[test]
    fn fingerprint_follows_addresses_and_ranges() {
        let other = SlotLayout::new(layout().addresses().to_vec(), vec![(1024, 1025)]);
        assert_eq!(layout().fingerprint(), layout().fingerprint());
        assert_ne!(layout().fingerprint(), other.fingerprint());
    }
}
