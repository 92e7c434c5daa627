//! Flow tables filled through the map: the agent's sweeps and census at
//! table sizes no traffic in a test could reach. `PinnedTable` is a loaded
//! balancer of its own under a throw-away instance directory; `FlowFiller`
//! fills any pinned flow table, e.g. a lab agent's.

use std::path::{Path, PathBuf};

use aya::maps::{HashMap, Map, MapData};
use lb_agent::dataplane::{Dataplane, LoadOptions, Tables, XdpAttachMode};
use lb_common::{flow_state, map_names, FlowKey, FlowValue, PROTO_TCP};

const BPFFS: &str = "/sys/fs/bpf";

/// Sources of the filled flows: 10.77.0.0/16, no lab address, so no real
/// connection of a test ever meets one of them.
const SOURCE_BASE: u32 = 0x0a4d_0000;

/// Established flow number `index` (distinct keys for every index below
/// 2^32), last seen at `last_seen_ns`, to the lab's VIP:80.
pub fn live_flow(index: u32, last_seen_ns: u64) -> (FlowKey, FlowValue) {
    let key = FlowKey {
        src_addr: (SOURCE_BASE + (index >> 16)).to_be_bytes(),
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
    (key, value)
}

/// A handle on the pinned flow table of an instance.
pub struct FlowFiller {
    flows: HashMap<MapData, FlowKey, FlowValue>,
}

impl FlowFiller {
    /// The flow table pinned in `pin_dir` (`/sys/fs/bpf/<instance>`).
    pub fn open(pin_dir: &Path) -> std::io::Result<Self> {
        let pin = pin_dir.join(map_names::FLOWS);
        let data = MapData::from_pin(&pin)
            .map_err(|e| std::io::Error::other(format!("{}: {e}", pin.display())))?;
        let flows = HashMap::try_from(Map::LruHashMap(data))
            .map_err(|e| std::io::Error::other(format!("{}: {e}", pin.display())))?;
        Ok(Self { flows })
    }

    /// Inserts `live_flow(index, last_seen_ns)`.
    pub fn insert_flow(&mut self, index: u32, last_seen_ns: u64) {
        let (key, value) = live_flow(index, last_seen_ns);
        self.flows.insert(key, value, 0).expect("insert flow");
    }
}

/// The loaded program (kept for its pins), its tables and a filler of its
/// flow map; the pins go when it is dropped.
pub struct PinnedTable {
    pub tables: Tables,
    flows: FlowFiller,
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
        let flows = FlowFiller::open(&dir).expect("flows pin");
        Self {
            tables,
            flows,
            _dataplane: dataplane,
            dir,
        }
    }

    /// Inserts established flow number `index`, last seen at
    /// `last_seen_ns` (see `live_flow`).
    pub fn insert_flow(&mut self, index: u32, last_seen_ns: u64) {
        self.flows.insert_flow(index, last_seen_ns);
    }
}

impl Drop for PinnedTable {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
