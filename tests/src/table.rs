//! A loaded balancer whose maps are pinned under a throw-away instance
//! directory, with the flow table filled through the map: the agent's
//! sweeps and census at table sizes no traffic in a test could reach.

use std::path::PathBuf;

use aya::maps::{HashMap, Map, MapData};
use lb_agent::dataplane::{Dataplane, LoadOptions, Tables, XdpAttachMode};
use lb_common::{flow_state, map_names, FlowKey, FlowValue, PROTO_TCP};

const BPFFS: &str = "/sys/fs/bpf";

/// The loaded program (kept for its pins), its tables and a handle on the
/// flow map to fill; the pins go when it is dropped.
pub struct PinnedTable {
    pub tables: Tables,
    flows: HashMap<MapData, FlowKey, FlowValue>,
    _dataplane: Dataplane,
    dir: PathBuf,
}

impl PinnedTable {
    /// Loads `object` with flow tables of `max_flows` entries.
    pub fn load(object: &[u8], name: &str, max_flows: u32) -> Self {
        let instance = format!("lbt-{name}-{}", std::process::id());
        let dir = PathBuf::from(BPFFS).join(&instance);
        let options = LoadOptions {
            instance,
            interfaces: Vec::new(),
            mode: XdpAttachMode::Generic,
            max_flows,
            bpffs: BPFFS.into(),
        };
        let mut dataplane = Dataplane::load(&options, object).expect("load the XDP object");
        let tables = dataplane.tables().expect("tables");
        let pin = dir.join(map_names::FLOWS);
        let data = MapData::from_pin(&pin).expect("flows pin");
        let flows = HashMap::try_from(Map::LruHashMap(data)).expect("flows is an LRU hash");
        Self {
            tables,
            flows,
            _dataplane: dataplane,
            dir,
        }
    }

    /// Inserts established flow number `index` (distinct keys for every
    /// index below 2^32), last seen at `last_seen_ns`.
    pub fn insert_flow(&mut self, index: u32, last_seen_ns: u64) {
        let key = FlowKey {
            src_addr: (0x0a64_0000u32 + (index >> 16)).to_be_bytes(),
            dst_addr: [10, 100, 0, 100],
            src_port: (index & 0xffff) as u16,
            dst_port: 80,
            proto: PROTO_TCP,
            _pad: [0; 3],
        };
        let value = FlowValue {
            state: flow_state::TCP_ESTABLISHED,
            last_seen_ns,
            backend_id: index % 7,
            ..FlowValue::default()
        };
        self.flows.insert(key, value, 0).expect("insert flow");
    }
}

impl Drop for PinnedTable {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
