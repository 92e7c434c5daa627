//! Times the agent's reads of the flow table at 10k, 100k and 1M live
//! flows (the table filled through the map): one expiry pass (a slice of
//! the sweep), the passes a whole sweep takes, and the census behind
//! `stats`, `status`, `backends list` and metrics once a sweep is done.
//! Run by `cargo xtask bench`.

use std::time::Instant;

use aya::maps::{HashMap, MapData};
use integration_tests::artifacts;
use lb_agent::dataplane::{maps::monotonic_ns, Dataplane, LoadOptions, XdpAttachMode};
use lb_common::{flow_state, map_names, FlowKey, FlowValue, Settings, PROTO_TCP};

const BPFFS: &str = "/sys/fs/bpf";
const MAX_FLOWS: u32 = 1 << 20;

fn main() {
    let Some(object) = artifacts::lb_object() else {
        eprintln!("flow-table-bench: object missing or not root; run `cargo xtask bench`");
        std::process::exit(2);
    };
    let object = std::fs::read(object).expect("read the XDP object");
    let instance = format!("lbt-scale-{}", std::process::id());
    let dir = std::path::Path::new(BPFFS).join(&instance);
    let _cleanup = PinDir(dir.clone());
    let options = LoadOptions {
        instance,
        interfaces: Vec::new(),
        mode: XdpAttachMode::Generic,
        max_flows: MAX_FLOWS,
        bpffs: BPFFS.into(),
    };
    let mut dataplane = Dataplane::load(&options, &object).expect("load");
    let mut tables = dataplane.tables().expect("tables");
    let settings = Settings {
        tcp_established_ns: u64::MAX / 4,
        ready: 1,
        ..Settings::default()
    };
    tables.write_settings(settings).expect("settings");
    let mut flows: HashMap<MapData, FlowKey, FlowValue> = HashMap::try_from(
        aya::maps::Map::HashMap(MapData::from_pin(dir.join(map_names::FLOWS)).expect("flows pin")),
    )
    .or_else(|_| {
        HashMap::try_from(aya::maps::Map::LruHashMap(
            MapData::from_pin(dir.join(map_names::FLOWS)).expect("flows pin"),
        ))
    })
    .expect("flows map");
    let now = monotonic_ns();
    let mut filled = 0u32;
    println!(
        "{:>10} {:>16} {:>14} {:>11} {:>14}",
        "flows", "expiry pass ms", "passes/sweep", "agent CPU", "census ms"
    );
    for target in [10_000u32, 100_000, 1_000_000] {
        while filled < target {
            let key = FlowKey {
                src_addr: (0x0a64_0000u32 + (filled >> 16)).to_be_bytes(),
                dst_addr: [10, 100, 0, 100],
                src_port: (filled & 0xffff) as u16,
                dst_port: 80,
                proto: PROTO_TCP,
                _pad: [0; 3],
            };
            let value = FlowValue {
                state: flow_state::TCP_ESTABLISHED,
                last_seen_ns: now,
                backend_id: filled % 7,
                ..FlowValue::default()
            };
            flows.insert(key, value, 0).expect("insert flow");
            filled += 1;
        }
        // Finish the sweep under way, then time one whole sweep.
        while tables.sweep_in_progress() {
            tables.expire_flows(now);
        }
        let mut passes = 0;
        let mut slowest = 0f64;
        loop {
            let start = Instant::now();
            assert_eq!(tables.expire_flows(now), 0, "no flow is expired");
            slowest = slowest.max(start.elapsed().as_secs_f64());
            passes += 1;
            if !tables.sweep_in_progress() {
                break;
            }
        }
        let start = Instant::now();
        let census = tables.flow_census(&settings, now);
        let took = start.elapsed();
        assert_eq!(census.active, u64::from(target));
        println!(
            "{:>10} {:>16.1} {:>14} {:>10.1}% {:>14.1}",
            target,
            slowest * 1e3,
            passes,
            // One pass per expiry interval (2 s).
            slowest / 2.0 * 100.0,
            took.as_secs_f64() * 1e3
        );
    }
}

struct PinDir(std::path::PathBuf);

impl Drop for PinDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}
