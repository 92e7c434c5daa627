//! The agent's expiry sweep and census on a flow table larger than one
//! sweep slice (filled through the map): expired flows are all found over
//! the passes of one sweep, live ones stay, and the census of a large
//! table is the last sweep's count (before the first sweep, one walk's).

use integration_tests::{artifacts, table::PinnedTable};
use lb_agent::dataplane::maps::monotonic_ns;
use lb_common::Settings;

/// Above one slice (131,072) and above the census's live-walk limit (25,000).
const LIVE: u32 = 120_000;
const EXPIRED: u32 = 80_000;
/// Written after the first census.
const ADDED: u32 = 10;

#[test]
fn a_large_table_is_swept_in_slices_and_counted_from_the_sweep() {
    let Some(object) = artifacts::lb_object() else {
        return;
    };
    let object = std::fs::read(object).expect("read the XDP object");
    let mut table = PinnedTable::load(&object, "sweep", 1 << 18);
    let timeout_ns = 1_000_000_000;
    let settings = Settings {
        tcp_established_ns: timeout_ns,
        ready: 1,
        ..Settings::default()
    };
    table.tables.write_settings(settings).expect("settings");
    let now = monotonic_ns();
    for index in 0..LIVE + EXPIRED {
        let last_seen = if index < LIVE {
            now
        } else {
            now.saturating_sub(5 * timeout_ns)
        };
        table.insert_flow(index, last_seen);
    }
    assert!(now > 5 * timeout_ns, "the test needs 5 s of uptime");

    // Before any sweep has seen the table this large, one census walks it
    // and stands in for the sweep's: flows added since are not walked for.
    let walked = table.tables.flow_census(&settings, now);
    assert_eq!(
        (walked.active, walked.expired),
        (u64::from(LIVE), u64::from(EXPIRED))
    );
    for index in LIVE + EXPIRED..LIVE + EXPIRED + ADDED {
        table.insert_flow(index, now);
    }
    let again = table.tables.flow_census(&settings, now);
    assert_eq!(again.active, u64::from(LIVE), "the walk's count stands in");

    let mut passes = 0;
    let mut expired = 0;
    loop {
        expired += table.tables.expire_flows(now);
        passes += 1;
        if !table.tables.sweep_in_progress() || passes > 100 {
            break;
        }
    }
    assert_eq!(expired, EXPIRED as usize, "every expired flow found once");
    assert!(
        passes >= 2,
        "200,000 entries take more than one slice ({passes})"
    );
    assert!(!table.tables.sweep_in_progress(), "the sweep ends");

    // The census of a table this large is the sweep's own count (taken as
    // it went, before the expired entries were deleted).
    let census = table.tables.flow_census(&settings, now);
    assert_eq!(census.active, u64::from(LIVE + ADDED));
    assert_eq!(census.expired, u64::from(EXPIRED));

    // A second sweep finds only the live flows, still more than the
    // live-walk limit: the census is that sweep's count.
    loop {
        assert_eq!(table.tables.expire_flows(now), 0, "nothing left to expire");
        if !table.tables.sweep_in_progress() {
            break;
        }
    }
    let census = table.tables.flow_census(&settings, now);
    assert_eq!(
        (census.active, census.expired),
        (u64::from(LIVE + ADDED), 0)
    );
}
