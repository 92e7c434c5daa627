//! Times the agent's reads of the flow table at 10k, 100k and 1M live
//! flows (the table filled through the map): one expiry pass (a slice of
//! the sweep), the passes a whole sweep takes, and the census behind
//! `stats`, `status`, `backends list` and metrics once a sweep is done.
//! Run by `cargo xtask bench`.

use std::time::Instant;

use integration_tests::{artifacts, table::PinnedTable};
use lb_agent::dataplane::maps::monotonic_ns;
use lb_common::Settings;

const MAX_FLOWS: u32 = 1 << 20;

fn main() {
    let Some(object) = artifacts::lb_object() else {
        eprintln!("flow-table-bench: object missing or not root; run `cargo xtask bench`");
        std::process::exit(2);
    };
    let object = std::fs::read(object).expect("read the XDP object");
    let mut table = PinnedTable::load(&object, "scale", MAX_FLOWS);
    let settings = Settings {
        tcp_established_ns: u64::MAX / 4,
        ready: 1,
        ..Settings::default()
    };
    table.tables.write_settings(settings).expect("settings");
    let now = monotonic_ns();
    let mut filled = 0u32;
    println!(
        "{:>10} {:>16} {:>14} {:>11} {:>14}",
        "flows", "expiry pass ms", "passes/sweep", "agent CPU", "census ms"
    );
    for target in [10_000u32, 100_000, 1_000_000] {
        while filled < target {
            table.insert_flow(filled, now);
            filled += 1;
        }
        // Finish the sweep under way, then time one whole sweep.
        while table.tables.sweep_in_progress() {
            table.tables.expire_flows(now);
        }
        let mut passes = 0;
        let mut slowest = 0f64;
        loop {
            let start = Instant::now();
            assert_eq!(table.tables.expire_flows(now), 0, "no flow is expired");
            slowest = slowest.max(start.elapsed().as_secs_f64());
            passes += 1;
            if !table.tables.sweep_in_progress() {
                break;
            }
        }
        let start = Instant::now();
        let census = table.tables.flow_census(&settings, now);
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
