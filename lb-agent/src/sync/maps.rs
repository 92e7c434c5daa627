//! Flow sync's own handles on the pinned maps: it reads events and the
//! flow table and installs the peer's flows without taking the agent's
//! lock (the program and the agent's sweep tolerate a writer beside them:
//! every entry is replaced whole).

use std::{
    path::Path,
    time::{Duration, Instant},
};

use aya::maps::{Array, HashMap, Map, MapData, PerCpuArray, RingBuf};
use lb_common::{
    map_names, BackendValue, FlowEvent, FlowKey, FlowValue, ReplyValue, ServiceKey, ServiceValue,
    Settings,
};
use lb_sync::FlowRecord;

use super::records::{entries_of, reply_key_of, Entries, LocalBackend, LocalView, Refusal};
use crate::dataplane::{batch, pins, port_pools::SlotLayout, DataplaneError};

/// How long the view of services and backends is trusted before a record
/// that names an unknown one makes it read again.
const VIEW_TTL: Duration = Duration::from_secs(1);

/// What installing a peer's record did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Installed {
    /// The flow is in both tables.
    Flow,
    /// A deletion removed the flow.
    Removed,
    /// Nothing to do: a deletion of a flow this node does not have, or a
    /// record older than what this node has seen of the flow itself.
    Unchanged,
}

pub(crate) struct SyncMaps {
    flows: HashMap<MapData, FlowKey, FlowValue>,
    replies: HashMap<MapData, FlowKey, ReplyValue>,
    services: HashMap<MapData, ServiceKey, ServiceValue>,
    backends: Array<MapData, BackendValue>,
    settings: Array<MapData, Settings>,
    lost: PerCpuArray<MapData, u64>,
    layout: SlotLayout,
    view: LocalView,
    view_read: Option<Instant>,
}

fn open(dir: &Path, name: &'static str) -> Result<Map, DataplaneError> {
    let data = MapData::from_pin(pins::map_pin(dir, name)).map_err(DataplaneError::map(name))?;
    Ok(match name {
        map_names::FLOW_EVENTS => Map::RingBuf(data),
        map_names::BACKENDS | map_names::SETTINGS => Map::Array(data),
        map_names::FLOW_EVENTS_LOST => Map::PerCpuArray(data),
        _ => Map::HashMap(data),
    })
}

macro_rules! typed {
    ($dir:expr, $name:expr) => {
        open($dir, $name)?
            .try_into()
            .map_err(DataplaneError::map($name))?
    };
}

/// The event ring of the instance pinned at `dir`.
pub(crate) fn event_ring(dir: &Path) -> Result<RingBuf<MapData>, DataplaneError> {
    Ok(typed!(dir, map_names::FLOW_EVENTS))
}

impl SyncMaps {
    /// Opens the maps pinned at `dir`; `layout`: this node's own NAT
    /// sources (its port slice).
    pub(crate) fn open(dir: &Path, layout: SlotLayout) -> Result<Self, DataplaneError> {
        use map_names::*;
        Ok(Self {
            flows: typed!(dir, FLOWS),
            replies: typed!(dir, REPLIES),
            services: typed!(dir, SERVICES),
            backends: typed!(dir, BACKENDS),
            settings: typed!(dir, SETTINGS),
            lost: typed!(dir, FLOW_EVENTS_LOST),
            layout,
            view: LocalView::default(),
            view_read: None,
        })
    }

    pub(crate) fn settings(&self) -> Settings {
        self.settings.get(&0, 0).unwrap_or_default()
    }

    /// Events the program could not write to a full ring, so far.
    pub(crate) fn events_lost(&self) -> u64 {
        self.lost
            .get(&0, 0)
            .map(|values| values.iter().fold(0u64, |sum, v| sum.wrapping_add(*v)))
            .unwrap_or(0)
    }

    /// Every flow of the table as the event that would describe it now:
    /// a full transfer's content. Batched reads (a million flows in a
    /// fraction of a second); key by key on kernels without them.
    pub(crate) fn table(&self) -> Vec<FlowEvent> {
        use aya::maps::IterableMap;
        let mut cursor = batch::Cursor::default();
        let entries: Vec<(FlowKey, FlowValue)> =
            match batch::read_some(self.flows.map(), &mut cursor, usize::MAX) {
                Ok((entries, _)) => entries,
                Err(_) => self.flows.iter().filter_map(Result::ok).collect(),
            };
        entries
            .iter()
            .map(|(key, flow)| FlowEvent::of(key, flow))
            .collect()
    }

    fn refresh_view(&mut self) {
        let mut view = LocalView::default();
        for (key, service) in self.services.iter().filter_map(Result::ok) {
            view.services
                .insert((key.vip, key.port, key.proto), service.id);
        }
        for id in 0..lb_common::MAX_BACKENDS {
            let Ok(backend) = self.backends.get(&id, 0) else {
                continue;
            };
            if backend.addr == [0; 4] {
                continue;
            }
            view.backends.insert(
                (backend.service_id, backend.addr, backend.port),
                LocalBackend {
                    id,
                    service_id: backend.service_id,
                    port_pool: backend.port_pool,
                },
            );
        }
        self.view = view;
        self.view_read = Some(Instant::now());
    }

    /// Installs (or removes) the peer's flow `record`.
    pub(crate) fn install(
        &mut self,
        record: &FlowRecord,
        now_ns: u64,
    ) -> Result<Installed, Refusal> {
        if self.view_read.is_none() {
            self.refresh_view();
        }
        let settings = self.settings();
        let entries = match self.entries(record, &settings, now_ns) {
            Err(Refusal::UnknownService | Refusal::UnknownBackend)
                if self.view_read.is_some_and(|at| at.elapsed() > VIEW_TTL) =>
            {
                // A service or backend added since the view was read.
                self.refresh_view();
                self.entries(record, &settings, now_ns)?
            }
            other => other?,
        };
        let current = self.flows.get(&entries.client, 0).ok();
        if record.kind == lb_sync::RecordKind::Delete {
            return Ok(self.remove(&entries.client, current, &entries.flow, &settings));
        }
        if let Some(current) = current {
            if current.last_seen_ns > entries.flow.last_seen_ns {
                // This node has seen the flow (or a newer one on these
                // client ports) more recently than the record: the peer's
                // older view, e.g. its refresh after this node took the
                // flows back, must not roll the state back.
                return Ok(Installed::Unchanged);
            }
            let old_reply = reply_key_of(&entries.client, &current, &settings);
            if old_reply != entries.reply_key {
                let _ = self.replies.remove(&old_reply);
            }
        }
        // Reply entry first: from the moment the forward entry exists the
        // program may forward, and the backend's answer needs the way back.
        self.replies
            .insert(entries.reply_key, entries.reply, 0)
            .map_err(|_| Refusal::TableFull)?;
        if self.flows.insert(entries.client, entries.flow, 0).is_err() {
            let _ = self.replies.remove(&entries.reply_key);
            return Err(Refusal::TableFull);
        }
        Ok(Installed::Flow)
    }

    fn entries(
        &self,
        record: &FlowRecord,
        settings: &Settings,
        now_ns: u64,
    ) -> Result<Entries, Refusal> {
        let own = |index: u8, port: u16| {
            let slot = lb_common::port_slot(index, port);
            self.layout.contains(slot).then_some(slot)
        };
        entries_of(record, &self.view, settings, now_ns, own)
    }

    fn remove(
        &mut self,
        client: &FlowKey,
        current: Option<FlowValue>,
        doomed: &FlowValue,
        settings: &Settings,
    ) -> Installed {
        let Some(current) = current.filter(|c| same(c, doomed)) else {
            return Installed::Unchanged;
        };
        let _ = self.flows.remove(client);
        let _ = self
            .replies
            .remove(&reply_key_of(client, &current, settings));
        Installed::Removed
    }
}

/// Whether two entries are one flow: same backend and NAT source.
fn same(a: &FlowValue, b: &FlowValue) -> bool {
    a.backend_addr == b.backend_addr
        && a.backend_port == b.backend_port
        && a.lb_port == b.lb_port
        && a.snat_index == b.snat_index
}
