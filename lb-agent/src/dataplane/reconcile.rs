//! Turns the wanted services and backends into map contents, keeping ids
//! stable: a backend keeps its id while it exists (and while flows still use
//! it after removal), so counters and `remove --now` always mean the same
//! backend. Ids are recovered from the pinned maps after a restart.

use std::{
    collections::{BTreeMap, HashMap},
    net::Ipv4Addr,
};

use lb_common::{BackendValue, ServiceKey, ServiceValue, MAX_BACKENDS, MAX_SERVICES, RING_SIZE};
use tracing::info;

use super::{maps::FlowCensus, port_pools::Endpoint, DataplaneError, Tables};
use crate::schedule::build_ring;

/// A service as the config and run-time changes want it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WantedService {
    pub name: String,
    pub key: ServiceKey,
    pub backends: Vec<WantedBackend>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WantedBackend {
    pub addr: Ipv4Addr,
    pub port: u16,
    pub weight: u32,
    /// False while health checks say it is down: it keeps its id and its
    /// flows (as `on_down` says) but gets no new connections.
    pub healthy: bool,
    /// Drained by the operator: kept, no new connections.
    pub drained: bool,
}

/// Whether a backend takes new connections.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SlotState {
    Active,
    /// Removed: no new connections; existing ones finish. The id is freed
    /// once no flow uses it.
    Draining,
    /// Configured but failing its health checks: no new connections.
    Down,
    /// Drained by the operator: kept (not released), no new connections.
    Drained,
}

impl WantedBackend {
    fn state(&self) -> SlotState {
        if self.drained {
            SlotState::Drained
        } else if self.healthy {
            SlotState::Active
        } else {
            SlotState::Down
        }
    }
}

#[derive(Debug, Clone)]
pub struct BackendSlot {
    pub id: u32,
    pub service_id: u32,
    pub addr: Ipv4Addr,
    pub port: u16,
    pub weight: u32,
    pub state: SlotState,
}

#[derive(Debug, Clone)]
pub struct ServiceSlot {
    pub id: u32,
    pub name: String,
    pub key: ServiceKey,
    pub ring_half: u32,
    pub ring_len: u32,
}

/// The agent's view of ids in the maps.
#[derive(Debug, Default)]
pub struct Reconciler {
    services: BTreeMap<u32, ServiceSlot>,
    backends: BTreeMap<u32, BackendSlot>,
}

impl Reconciler {
    /// Recovers ids from maps left by an earlier run (empty maps: fresh start).
    pub fn adopt(tables: &Tables) -> Self {
        let mut me = Self::default();
        for (key, value) in tables.services() {
            me.services.insert(
                value.id,
                ServiceSlot {
                    id: value.id,
                    name: String::new(),
                    key,
                    ring_half: value.ring_half,
                    ring_len: value.ring_len,
                },
            );
        }
        for (id, backend) in tables.backends() {
            me.backends.insert(
                id,
                BackendSlot {
                    id,
                    service_id: backend.service_id,
                    addr: Ipv4Addr::from(backend.addr),
                    port: backend.port,
                    weight: 1,
                    // Until the wanted state says otherwise.
                    state: SlotState::Draining,
                },
            );
        }
        me
    }

    pub fn services(&self) -> impl Iterator<Item = &ServiceSlot> {
        self.services.values()
    }

    pub fn service_by_name(&self, name: &str) -> Option<&ServiceSlot> {
        self.services.values().find(|s| s.name == name)
    }

    pub fn backends_of(&self, service_id: u32) -> impl Iterator<Item = &BackendSlot> {
        self.backends
            .values()
            .filter(move |b| b.service_id == service_id)
    }

    pub fn find_backend(&self, service_id: u32, addr: Ipv4Addr, port: u16) -> Option<&BackendSlot> {
        self.backends_of(service_id)
            .find(|b| b.addr == addr && b.port == port)
    }

    fn free_id<T>(used: &BTreeMap<u32, T>, limit: u32) -> Option<u32> {
        (0..limit).find(|id| !used.contains_key(id))
    }

    /// Writes the maps so the program serves exactly `wanted`. Backends that
    /// disappear go to draining; services that disappear stop taking new
    /// connections at once (their flows run out).
    pub fn apply(
        &mut self,
        tables: &mut Tables,
        wanted: &[WantedService],
    ) -> Result<(), DataplaneError> {
        self.remove_unwanted_services(tables, wanted)?;
        for service in wanted {
            let id = self.claim_service(service)?;
            self.update_known_backends(id, service);
            self.add_new_backends(tables, id, service)?;
            self.write_schedule(tables, id, service.key)?;
        }
        let mut vips: HashMap<[u8; 4], u32> = HashMap::new();
        for service in wanted {
            *vips.entry(service.key.vip).or_default() += 1;
        }
        tables.set_vips(&vips)
    }

    /// Takes services gone from `wanted` out of the maps; their backends
    /// drain.
    fn remove_unwanted_services(
        &mut self,
        tables: &mut Tables,
        wanted: &[WantedService],
    ) -> Result<(), DataplaneError> {
        let gone: Vec<u32> = self
            .services
            .values()
            .filter(|slot| !wanted.iter().any(|w| w.key == slot.key))
            .map(|slot| slot.id)
            .collect();
        for id in gone {
            if let Some(slot) = self.services.remove(&id) {
                tables.remove_service(&slot.key)?;
                for backend in self.backends.values_mut().filter(|b| b.service_id == id) {
                    backend.state = SlotState::Draining;
                }
                info!(service = %slot.name, "service removed");
            }
        }
        Ok(())
    }

    /// The id of `service`'s slot: its own if known, else a free one.
    fn claim_service(&mut self, service: &WantedService) -> Result<u32, DataplaneError> {
        let id = match self.services.values().find(|s| s.key == service.key) {
            Some(slot) => slot.id,
            None => Self::free_id(&self.services, MAX_SERVICES).ok_or(DataplaneError::Full {
                what: "service",
                limit: MAX_SERVICES,
            })?,
        };
        let slot = self.services.entry(id).or_insert_with(|| ServiceSlot {
            id,
            name: service.name.clone(),
            key: service.key,
            ring_half: 1,
            ring_len: 0,
        });
        slot.name = service.name.clone();
        Ok(id)
    }

    /// Backends that stay keep their ids and take their wanted state;
    /// those that left drain.
    fn update_known_backends(&mut self, service_id: u32, service: &WantedService) {
        for backend in self
            .backends
            .values_mut()
            .filter(|b| b.service_id == service_id)
        {
            let still = service
                .backends
                .iter()
                .find(|w| w.addr == backend.addr && w.port == backend.port);
            match still {
                Some(w) => {
                    backend.state = w.state();
                    backend.weight = w.weight;
                }
                None => backend.state = SlotState::Draining,
            }
        }
    }

    fn add_new_backends(
        &mut self,
        tables: &mut Tables,
        service_id: u32,
        service: &WantedService,
    ) -> Result<(), DataplaneError> {
        for wanted in &service.backends {
            if self
                .find_backend(service_id, wanted.addr, wanted.port)
                .is_none()
            {
                self.add_backend(tables, service_id, service.key, wanted)?;
            }
        }
        Ok(())
    }

    /// Gives `wanted` a free id, its NAT port pool and fresh counters.
    fn add_backend(
        &mut self,
        tables: &mut Tables,
        service_id: u32,
        key: ServiceKey,
        wanted: &WantedBackend,
    ) -> Result<(), DataplaneError> {
        let id = Self::free_id(&self.backends, MAX_BACKENDS).ok_or(DataplaneError::Full {
            what: "backend",
            limit: MAX_BACKENDS,
        })?;
        let port_pool = tables.ports_mut().pool_for(Endpoint {
            addr: wanted.addr,
            port: wanted.port,
            proto: key.proto,
        })?;
        tables.write_backend(
            id,
            BackendValue {
                addr: wanted.addr.octets(),
                port: wanted.port,
                _pad: 0,
                service_id,
                port_pool,
            },
        )?;
        tables.reset_backend_counters(id)?;
        self.backends.insert(
            id,
            BackendSlot {
                id,
                service_id,
                addr: wanted.addr,
                port: wanted.port,
                weight: wanted.weight,
                state: wanted.state(),
            },
        );
        Ok(())
    }

    /// Writes the service's ring into its idle half, then flips to it in
    /// one update, so the program never reads a half-written ring.
    fn write_schedule(
        &mut self,
        tables: &mut Tables,
        service_id: u32,
        key: ServiceKey,
    ) -> Result<(), DataplaneError> {
        let active: Vec<(u32, u32)> = self
            .backends_of(service_id)
            .filter(|b| b.state == SlotState::Active)
            .map(|b| (b.id, b.weight))
            .collect();
        let ring = build_ring(&active, RING_SIZE as usize);
        let slot = self
            .services
            .get_mut(&service_id)
            .ok_or(DataplaneError::Full {
                what: "service",
                limit: MAX_SERVICES,
            })?;
        let half = slot.ring_half ^ 1;
        tables.write_ring(service_id, half, &ring)?;
        tables.write_service(
            key,
            ServiceValue {
                id: service_id,
                ring_len: ring.len() as u32,
                ring_half: half,
                _pad: 0,
            },
        )?;
        slot.ring_half = half;
        slot.ring_len = ring.len() as u32;
        Ok(())
    }

    /// Frees the ids of drained backends no flow uses any more.
    pub fn release_drained(
        &mut self,
        tables: &mut Tables,
        census: &FlowCensus,
    ) -> Result<Vec<BackendSlot>, DataplaneError> {
        let done: Vec<u32> = self
            .backends
            .values()
            .filter(|b| b.state == SlotState::Draining)
            .filter(|b| census.per_backend.get(&b.id).copied().unwrap_or(0) == 0)
            .map(|b| b.id)
            .collect();
        let mut released = Vec::new();
        for id in done {
            tables.write_backend(id, BackendValue::default())?;
            if let Some(slot) = self.backends.remove(&id) {
                released.push(slot);
            }
        }
        if !released.is_empty() {
            let used: Vec<Endpoint> = self
                .backends
                .values()
                .filter_map(|b| {
                    let proto = self.services.get(&b.service_id)?.key.proto;
                    Some(Endpoint {
                        addr: b.addr,
                        port: b.port,
                        proto,
                    })
                })
                .collect();
            tables.ports_mut().retain(&used)?;
        }
        Ok(released)
    }
}
