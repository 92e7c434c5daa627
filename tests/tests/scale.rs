//! lb1's agent at a million live flows (its table filled through the
//! map, then the agent observed): VRRP stays still on both nodes, `stats`
//! and `status` answer, the flows stay. How fast the reads are and how
//! much CPU the agent uses is printed here and measured by `cargo xtask
//! bench --only scale`, not asserted.

use std::time::Duration;

use integration_tests::scale::ScaleLab;
use xtask::lab::Node;

const FLOWS: u32 = 1_000_000;
/// How long the agent is watched at full table.
const WINDOW: Duration = Duration::from_secs(60);
/// Once settled (two sweeps after the fill), a large table's census is the
/// last complete sweep's: it must count every flow by then.
const CENSUS_LIMIT: Duration = Duration::from_secs(20);

#[test]
fn a_million_live_flows_leave_vrrp_still_and_reads_answering() {
    let Some(mut scale) = ScaleLab::up("sc") else {
        return;
    };
    let before = scale.transitions();
    let took = scale.fill_to(FLOWS);
    println!("filled lb1's flow table with {FLOWS} live flows in {took:.1?}");
    let cold = scale.settle(FLOWS);
    println!("first stats after the fill (the census walks the table): {cold:.1?}");
    assert!(
        scale.wait_for_census(u64::from(FLOWS), CENSUS_LIMIT),
        "lb1 counts the flows within {CENSUS_LIMIT:?}: {}",
        scale.flows()
    );
    let seen = scale.observe(WINDOW, Duration::from_secs(5));
    println!("{seen}");
    let after = scale.transitions();
    assert_eq!(
        after, before,
        "VRRP transitions of lb1 and lb2 (before the fill, after the window)"
    );
    assert!(
        seen.wrong_states.is_empty(),
        "lb1 stays MASTER and lb2 BACKUP: {:?}",
        seen.wrong_states
    );
    assert!(
        seen.failed.is_empty(),
        "every read answered: {:?}",
        seen.failed
    );
    assert!(
        seen.flows >= u64::from(FLOWS),
        "the flows are still there: {}",
        seen.flows
    );
    let body = scale
        .lab
        .http_get(Node::Client, integration_tests::e2e::VIP_URL)
        .expect("the VIP still serves");
    assert!(body.starts_with("web"), "{body}");
    // The CLI itself answers too (rendering a full table's stats).
    let out = scale
        .lab
        .agent_cli(Node::Lb1, &["stats"])
        .expect("lb-agent stats");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}
