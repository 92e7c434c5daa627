//! Connections survive failover (issue #13): with flow sync on and the
//! pair's floating SNAT address, long downloads through lb1 go on through
//! lb2 when lb1's agent is killed, when lb1 stops gracefully, and when lb1
//! comes back and takes mastership again.

use std::time::Duration;

use integration_tests::e2e::*;
use xtask::lab::{Lab, Node, SLOW_BYTES, SLOW_RATE};

/// How long a download of `/slow` takes, with room for a loaded machine.
fn download_time() -> Duration {
    Duration::from_secs((SLOW_BYTES / SLOW_RATE) as u64 + 30)
}

/// A field of the `sync` object of `node`'s `lb-agent status --json`.
fn sync_field(lab: &Lab, node: Node, field: &str) -> serde_json::Value {
    status_field(lab, node, "sync")[field].clone()
}

fn in_sync(lab: &Lab, node: Node) -> bool {
    sync_field(lab, node, "state") == "in-sync"
}

/// Starts `count` downloads through the VIP and waits until lb2 holds a
/// copy of each (it installed at least as many flows from lb1).
fn downloads_known_to_lb2(lab: &Lab, count: usize) -> Vec<Download> {
    assert!(
        wait_for(Duration::from_secs(10), || in_sync(lab, Node::Lb2)),
        "lb2 holds lb1's flows before the test starts: {:?}",
        status_field(lab, Node::Lb2, "sync")
    );
    let before = sync_field(lab, Node::Lb2, "installed")
        .as_u64()
        .unwrap_or(0);
    let downloads: Vec<Download> = (0..count)
        .map(|n| Download::start(lab, &format!("survivor-{n}")))
        .collect();
    assert!(
        wait_for(Duration::from_secs(5), || downloads
            .iter()
            .all(|d| d.received() > 0)),
        "the downloads started"
    );
    assert!(
        wait_for(Duration::from_secs(5), || {
            let installed = sync_field(lab, Node::Lb2, "installed")
                .as_u64()
                .unwrap_or(0);
            installed >= before + count as u64
        }),
        "lb2 installed lb1's flows: {:?}",
        status_field(lab, Node::Lb2, "sync")
    );
    downloads
}

fn all_complete(downloads: &mut [Download]) {
    for (n, download) in downloads.iter_mut().enumerate() {
        download
            .completes(download_time())
            .unwrap_or_else(|why| panic!("download {n} did not survive the failover: {why}"));
    }
}

fn lb2_takes_over(lab: &Lab) {
    assert!(
        wait_for(Duration::from_secs(10), || vrrp_state(lab, Node::Lb2)
            == "MASTER"),
        "lb2 takes over"
    );
}

#[test]
fn downloads_survive_kill_9_of_the_masters_agent() {
    let Some(lab) = lab_ha("fskill") else { return };
    let mut downloads = downloads_known_to_lb2(&lab, 4);
    lab.kill_agent(Node::Lb1, libc::SIGKILL)
        .expect("kill -9 lb1's agent");
    lb2_takes_over(&lab);
    let refused = sync_field(&lab, Node::Lb2, "refused");
    assert_eq!(refused, serde_json::json!({}), "lb2 took every flow of lb1");
    all_complete(&mut downloads);
}

#[test]
fn downloads_survive_a_graceful_switchover_and_the_failback() {
    let Some(lab) = lab_ha("fsback") else { return };
    let mut downloads = downloads_known_to_lb2(&lab, 4);
    lab.stop_agent(Node::Lb1).expect("SIGTERM lb1's agent");
    lb2_takes_over(&lab);
    assert!(
        downloads
            .iter()
            .all(|d| d.progresses(Duration::from_secs(2))),
        "the downloads go on through lb2"
    );
    // lb1 comes back: it asks lb2 for its flows and takes mastership back
    // only once it has them.
    lab.start_agent(Node::Lb1).expect("lb1 back");
    assert!(
        wait_for(Duration::from_secs(20), || lab.vip_holder()
            == Some(Node::Lb1)),
        "lb1 preempts once in sync"
    );
    assert!(in_sync(&lab, Node::Lb1), "lb1 took over only in sync");
    assert!(
        downloads
            .iter()
            .all(|d| d.progresses(Duration::from_secs(2))),
        "the downloads go on through lb1 again"
    );
    all_complete(&mut downloads);
}
