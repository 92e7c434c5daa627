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
    collections::{HashMap, HashSet, VecDeque},
    hash::{Hash, Hasher},
    net::Ipv4Addr,
    sync::atomic::{AtomicU16, Ordering},
};

use aya::maps::{Array, ArrayOfMaps, MapData, MapError, PerCpuArray, Queue};
use lb_common::{
    map_names, port_slot, reply_claim, slot_address_index, slot_port, PortPool, MAX_BACKENDS,
};
use tracing::{debug, info, warn};

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

/// News for the pools' owner from another holder of the pins (flow sync),
/// which changes claims but leaves the queues' accounting to the agent.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PoolNote {
    /// A flow of this node's slice ended there (`OWN`): its source goes
    /// back to the tail of its queue.
    Released { pool: u32, slot: u32 },
    /// `count` sources left pool `pool`'s queue for the flows holding them
    /// (`take_held_out`).
    TakenOut { pool: u32, count: u64 },
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
    /// Of a pool made anew while still filling: the slots flows of an
    /// earlier run hold, which the filling leaves out (their flows give
    /// them back when they end).
    held_at_fill: HashMap<u32, HashSet<u32>>,
    /// Sources taken out of a queue for flows by another holder of the
    /// pins (flow sync's pass, `take_held_out`), not in the records yet.
    taken_elsewhere: HashMap<u32, u64>,
    /// Pushes a queue refused: a source lost to its pool until a restart.
    /// A queue holds every source of its pool once, so this is a fault;
    /// the first is logged, every one counted.
    push_failures: u64,
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
            held_at_fill: HashMap::new(),
            taken_elsewhere: HashMap::new(),
            push_failures: 0,
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
        self.held_at_fill.clear();
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
        // One place more than the pool has sources: room for the marker
        // of a pass through the queue (`take_held_out`).
        let queue = Queue::<MapData, u32>::create(capacity + 1, 0)
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
        self.taken_elsewhere.remove(&id);
        // A flow of an earlier run that holds a source keeps it out of the
        // queue (it comes back when the flow ends); a source flow sync
        // marks as still queued (`OWN_QUEUED`) is queued with the rest.
        let held: HashSet<u32> = if keep_claims {
            self.replies
                .claims(id)
                .into_iter()
                .filter(|(_, entry)| entry.live != reply_claim::OWN_QUEUED)
                .map(|(slot, _)| slot)
                .collect()
        } else {
            HashSet::new()
        };
        if !held.is_empty() {
            info!(
                pool = id,
                held = held.len(),
                "NAT sources held by live flows stay out of the pool made anew"
            );
            self.held_at_fill.insert(id, held);
        } else {
            self.held_at_fill.remove(&id);
        }
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
            self.held_at_fill.remove(&id);
            self.taken_elsewhere.remove(&id);
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
            Err(error) => count_push_failure(
                &mut self.push_failures,
                pool,
                &error,
                "a released NAT source",
            ),
        }
    }

    /// Applies what flow sync did to the claims of this node's sources.
    pub fn apply(&mut self, note: PoolNote) {
        match note {
            PoolNote::Released { pool, slot } => self.release(pool, slot),
            PoolNote::TakenOut { pool, count } => {
                if self.open.contains_key(&pool) {
                    *self.taken_elsewhere.entry(pool).or_default() += count;
                }
            }
        }
    }

    /// Pushes a queue refused so far (each a lost source: a fault).
    pub fn push_failures(&self) -> u64 {
        self.push_failures
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
            let released = self.unsaved.remove(&id).unwrap_or(0);
            // The record counts releases; a source taken out elsewhere
            // is one released less.
            let taken = self.taken_elsewhere.remove(&id).unwrap_or(0);
            if released != 0 || taken != 0 {
                record.released = record.released.wrapping_add(released).wrapping_sub(taken);
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
        let held = self.held_at_fill.get(&id);
        let mut next = record.fresh_next;
        while next < end {
            let Some(slot) = self.layout.slot(next) else {
                break;
            };
            if held.is_some_and(|held| held.contains(&slot)) {
                next += 1;
                continue;
            }
            if let Err(error) = queue.push(slot, 0) {
                // Tried again at the next upkeep.
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
        self.held_at_fill.remove(&id);
        for slot in self.resting.remove(&id).unwrap_or_default() {
            if let Err(error) = queue.push(slot, 0) {
                count_push_failure(&mut self.push_failures, id, &error, "a released NAT source");
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

/// Counts a push a queue refused; the first is logged as the fault it is.
fn count_push_failure(failures: &mut u64, pool: u32, error: &MapError, what: &str) {
    *failures += 1;
    if *failures == 1 {
        warn!(pool, %error, "{what} could not go back to its pool's queue and is lost to it until a restart; \
            this is a fault of the agent (later ones are counted in `status`, not logged)");
    } else {
        debug!(pool, %error, failures = *failures, "{what} could not go back to its pool's queue");
    }
}

/// Address index of the marker a pass through a queue pushes behind the
/// last entry: no SNAT address has it, so the program drops it unused.
const PASS_MARKER_INDEX: u8 = u8::MAX;

/// What `take_held_out` decides for a source it meets in a queue.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Held {
    /// Free after all: it stays in the queue, in its place.
    Free,
    /// A flow holds it and now owns it outright (`OWN_QUEUED` -> `OWN`).
    TakenOut,
    /// A copy a flow holds that should not be queued at all: dropped.
    Dropped,
}

/// One pass through a pool's queue: every source `claims` (slot -> the
/// `live` word read before the pass) names as held is put to `settle`,
/// which decides whether it leaves the queue; every other source goes
/// back to the tail in the order it had. Returns how many left for flows
/// (`Held::TakenOut`). A marker pushed behind the last entry ends the
/// pass; a queue too full for it, or an empty queue, is left as it is.
pub(crate) fn take_held_out(
    queue: &mut Queue<MapData, u32>,
    claims: &HashMap<u32, u64>,
    mut settle: impl FnMut(u32, u64) -> Held,
) -> Result<u64, MapError> {
    static PASSES: AtomicU16 = AtomicU16::new(0);
    let marker = port_slot(PASS_MARKER_INDEX, PASSES.fetch_add(1, Ordering::Relaxed));
    queue.push(marker, 0)?;
    let mut taken_out = 0;
    for _ in 0..=queue.capacity() {
        // Empty: the program popped the marker (and dropped it).
        let Ok(slot) = queue.pop(0) else { break };
        if slot == marker {
            break;
        }
        if slot_address_index(slot) == PASS_MARKER_INDEX {
            // The marker of a pass that did not finish.
            continue;
        }
        let decision = match claims.get(&slot) {
            None => Held::Free,
            Some(live) => settle(slot, *live),
        };
        match decision {
            Held::Free => queue.push(slot, 0)?,
            Held::TakenOut => taken_out += 1,
            Held::Dropped => {}
        }
    }
    Ok(taken_out)
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

    /// A queue of `slots`, in order (root only: a kernel map).
    fn queue_of(slots: &[u32], room: u32) -> Option<Queue<MapData, u32>> {
        if !nix::unistd::geteuid().is_root() {
            eprintln!("skipped: creating a BPF queue needs root");
            return None;
        }
        let mut queue = Queue::create(room, 0).expect("create a BPF queue");
        for slot in slots {
            queue.push(slot, 0).expect("push");
        }
        Some(queue)
    }

    fn drain(queue: &mut Queue<MapData, u32>) -> Vec<u32> {
        std::iter::from_fn(|| queue.pop(0).ok()).collect()
    }

    #[test]
    fn a_pass_takes_held_sources_out_and_keeps_the_order_of_the_rest() {
        let slots: Vec<u32> = (20000..20006).map(|port| port_slot(0, port)).collect();
        let stale_marker = port_slot(PASS_MARKER_INDEX, 7);
        let mut queued = slots.clone();
        queued.insert(3, stale_marker);
        let Some(mut queue) = queue_of(&queued, 8) else {
            return;
        };
        let claims: HashMap<u32, u64> = [
            (slots[0], reply_claim::OWN_QUEUED),
            (slots[2], reply_claim::OWN_QUEUED),
            (slots[4], reply_claim::OWN),
        ]
        .into();
        let mut asked = Vec::new();
        let taken = take_held_out(&mut queue, &claims, |slot, live| {
            asked.push(slot);
            match (slot == slots[2], live) {
                // Its flow ended since the claims were read.
                (true, _) => Held::Free,
                (false, reply_claim::OWN_QUEUED) => Held::TakenOut,
                _ => Held::Dropped,
            }
        })
        .expect("a pass");
        assert_eq!(taken, 1);
        assert_eq!(
            asked,
            vec![slots[0], slots[2], slots[4]],
            "only held ones are asked"
        );
        assert_eq!(
            drain(&mut queue),
            vec![slots[1], slots[2], slots[3], slots[5]],
            "the rest in their order, no marker left"
        );
    }

    #[test]
    fn a_pass_leaves_a_queue_without_room_for_its_marker_alone() {
        let slots: Vec<u32> = (20000..20003).map(|port| port_slot(0, port)).collect();
        let Some(mut queue) = queue_of(&slots, 3) else {
            return;
        };
        let claims: HashMap<u32, u64> = [(slots[0], reply_claim::OWN_QUEUED)].into();
        assert!(take_held_out(&mut queue, &claims, |_, _| Held::TakenOut).is_err());
        assert_eq!(drain(&mut queue), slots);
    }
}
