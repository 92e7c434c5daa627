//! lb1's agent in the HA lab at 10k, 100k and 1M live flows (its table
//! filled through the map): `stats` and `status` times on its control
//! socket, its CPU use and both nodes' VRRP transitions over a window at
//! each size. Run by `cargo xtask bench --only scale [--prefix P]`;
//! `LB_SCALE_LONG_SECS=600` watches the largest size that long instead
//! (issue #11 asks for no VRRP transition over 10 minutes at 1M flows).

use std::time::Duration;

use integration_tests::scale::{ScaleLab, MAX_FLOWS};

const SIZES: [u32; 3] = [10_000, 100_000, 1_000_000];
const WINDOW: Duration = Duration::from_secs(30);
const EVERY: Duration = Duration::from_secs(2);
const CENSUS_LIMIT: Duration = Duration::from_secs(20);

fn main() {
    let prefix = std::env::args().nth(1).unwrap_or_else(|| "bench".into());
    xtask::cmd::catch_interrupts();
    let Some(mut scale) = ScaleLab::up(&prefix) else {
        eprintln!("scale-bench: artifacts missing or not root; run `cargo xtask bench`");
        std::process::exit(2);
    };
    println!(
        "  lab `{prefix}`, lb1 max_flows {MAX_FLOWS}; CPU: {}; a stats and a status every {EVERY:?} over {WINDOW:?} per size",
        xtask::bench::cpu_model()
    );
    println!(
        "  {:>10} {:>7} {:>14} {:>16} {:>17} {:>11} {:>12} {:>12}",
        "flows",
        "fill s",
        "first stats ms",
        "stats ms med/max",
        "status ms med/max",
        "agent CPU",
        "VRRP thread",
        "transitions"
    );
    let long = std::env::var("LB_SCALE_LONG_SECS")
        .ok()
        .and_then(|v| v.parse::<u64>().ok())
        .map(Duration::from_secs);
    let before = scale.transitions();
    for size in SIZES {
        if xtask::cmd::interrupted() {
            break;
        }
        let fill = scale.fill_to(size);
        let cold = scale.settle(size);
        if !scale.wait_for_census(u64::from(size), CENSUS_LIMIT) {
            eprintln!(
                "scale-bench: lb1 counts {} flows, not {size}, after {CENSUS_LIMIT:?}",
                scale.flows()
            );
            std::process::exit(1);
        }
        let window = match long {
            Some(long) if size == SIZES[SIZES.len() - 1] => long,
            _ => WINDOW,
        };
        let seen = scale.observe(window, EVERY);
        let after = scale.transitions();
        let transitions = after[0].wrapping_sub(before[0]) + after[1].wrapping_sub(before[1]);
        println!(
            "  {:>10} {:>7.1} {:>14.0} {:>16} {:>17} {:>10.1}% {:>11.2}% {:>12}",
            size,
            fill.as_secs_f64(),
            cold.as_secs_f64() * 1e3,
            format!("{:.1}/{:.1}", seen.stats_median(), seen.stats_max()),
            format!("{:.1}/{:.1}", seen.status_median(), seen.status_max()),
            seen.agent_cpu,
            seen.vrrp_thread_cpu,
            transitions
        );
        if !seen.failed.is_empty() || !seen.wrong_states.is_empty() {
            println!(
                "    failed reads {:?}, states {:?}",
                seen.failed, seen.wrong_states
            );
        }
    }
    println!(
        "  (first stats: the first read after growing the table, whose census walks all of it until an expiry sweep has; \
         then the steady state: medians and maxima of the reads in the window, CPU of lb1's agent over it; \
         transitions of both nodes since the start)"
    );
}
