//! The share of established connections that survive the master's
//! failure: 200 keep-alive HTTP connections (a request on each every
//! 500 ms) and 4 long downloads through lb1, then lb1 fails (node lost,
//! kill -9, graceful stop). A keep-alive connection survives when every
//! request on it is answered until the end of the run; a download when
//! curl gets every byte.

use std::{
    net::SocketAddrV4,
    path::Path,
    time::{Duration, Instant},
};

use anyhow::{bail, Result};

use super::{
    fail_master, pair_options, sync_count, wait_lb2_in_sync, ClientTool, Failure, Pair, SYNC_WAIT,
};
use crate::{
    cmd,
    hold::Held,
    lab::{Download, Lab, LabOptions, Node, VrrpVersion, HTTP_PORT, SLOW_BYTES, SLOW_RATE, VIP},
};

const PREFIX: &str = "bsurv";
const CONNECTIONS: usize = 200;
const DOWNLOADS: usize = 4;
const REQUEST_EVERY: &str = "500ms";
/// Time for a request's answer: a node loss costs the retransmissions
/// until the backup has taken over (about 3.6 s with VRRPv2 at 1 s).
const REQUEST_TIMEOUT: &str = "15s";
/// How long the keep-alive connections are held; the master fails a few
/// seconds in, so most of it is after the failure.
const HOLD: Duration = Duration::from_secs(25);

/// VRRP as a row runs it: the lab's default (v2, 1 s adverts), or v3 at
/// the soak's 20 ms.
#[derive(Debug, Clone, Copy)]
struct Vrrp {
    label: &'static str,
    version: VrrpVersion,
    advert_int: Duration,
}

const V2_1S: Vrrp = Vrrp {
    label: "v2 1 s",
    version: VrrpVersion::V2,
    advert_int: Duration::from_secs(1),
};
const V3_20MS: Vrrp = Vrrp {
    label: "v3 20 ms",
    version: VrrpVersion::V3,
    advert_int: super::soak::ADVERT_INT,
};

struct Row {
    pair: Pair,
    vrrp: Vrrp,
    failure: Failure,
    held: usize,
    held_survived: usize,
    downloads_survived: usize,
    /// When the master failed, after the connections opened.
    failed_after: Duration,
    /// The first failure seen, for the reader of a bad result.
    first_failure: Option<String>,
}

fn measure(agent_bin: &Path, pair: Pair, vrrp: Vrrp, failure: Failure) -> Result<Row> {
    let options = LabOptions {
        vrrp: vrrp.version,
        advert_int: vrrp.advert_int,
        ..pair_options(agent_bin, pair, PREFIX)
    };
    let lab = Lab::up_guarded(&options)?;
    if pair == Pair::Agent {
        wait_lb2_in_sync(&lab)?;
    }
    // lb2 has heard the master and settled as backup.
    std::thread::sleep(Duration::from_secs(2));
    let installed_before = sync_count(&lab, Node::Lb2, "installed");

    let target = SocketAddrV4::new(VIP, HTTP_PORT).to_string();
    let hold = format!("{}ms", HOLD.as_millis());
    let connections = CONNECTIONS.to_string();
    let started = Instant::now();
    let holder = ClientTool::start(
        &lab,
        "hold",
        &[
            "--target",
            &target,
            "--connections",
            &connections,
            "--every",
            REQUEST_EVERY,
            "--duration",
            &hold,
            "--timeout",
            REQUEST_TIMEOUT,
        ],
    );
    let mut downloads = (0..DOWNLOADS)
        .map(|n| Download::start(&lab, &format!("survival-{n}")))
        .collect::<Result<Vec<_>>>()?;
    if !cmd::wait_until(Duration::from_secs(5), || {
        downloads.iter().all(|d| d.received() > 0)
    }) {
        bail!("the downloads did not start");
    }
    if pair == Pair::Agent {
        // lb2 holds a copy of every connection before lb1 fails.
        let wanted = installed_before + (CONNECTIONS + DOWNLOADS) as u64;
        if !cmd::wait_until(SYNC_WAIT, || {
            sync_count(&lab, Node::Lb2, "installed") >= wanted
        }) {
            bail!(
                "lb2 did not install lb1's new flows: {}",
                lab.status_json(Node::Lb2)["sync"]
            );
        }
    }
    std::thread::sleep(Duration::from_secs(1));
    let failed_after = started.elapsed();
    fail_master(&lab, pair, failure)?;

    let held: Vec<Held> = holder
        .lines()?
        .iter()
        .filter_map(|l| Held::parse(l))
        .collect();
    let download_limit = Duration::from_secs((SLOW_BYTES / SLOW_RATE) as u64 + 30);
    let mut first_failure = held.iter().find_map(|h| h.failure.clone());
    let mut downloads_survived = 0;
    for download in &mut downloads {
        match download.completes(download_limit) {
            Ok(()) => downloads_survived += 1,
            Err(why) => {
                first_failure.get_or_insert(format!("download: {why}"));
            }
        }
    }
    Ok(Row {
        pair,
        vrrp,
        failure,
        held: held.len(),
        held_survived: held.iter().filter(|h| h.survived()).count(),
        downloads_survived,
        failed_after,
        first_failure,
    })
}

fn share(part: usize, whole: usize) -> f64 {
    100.0 * part as f64 / whole.max(1) as f64
}

pub(super) fn run(agent_bin: &Path) -> Result<()> {
    let mut rows = Vec::new();
    let runs = [
        (V2_1S, Failure::Node),
        (V2_1S, Failure::Kill),
        (V2_1S, Failure::Graceful),
        (V3_20MS, Failure::Node),
    ];
    for (vrrp, failure) in runs {
        for pair in [Pair::Agent, Pair::Classic] {
            eprintln!(
                "xtask: survival: {}, {}, {}...",
                pair.label(),
                vrrp.label,
                failure.label()
            );
            rows.push(measure(agent_bin, pair, vrrp, failure)?);
        }
    }
    println!(
        "  {:<22} {:<10} {:<18} {:>22} {:>14} {:>9}",
        "pair", "VRRP", "master failure", "keep-alive survived", "downloads", "survived"
    );
    for row in &rows {
        let total = row.held + DOWNLOADS;
        let survived = row.held_survived + row.downloads_survived;
        println!(
            "  {:<22} {:<10} {:<18} {:>16}/{:<5} {:>12}/{} {:>8.0}%",
            row.pair.label(),
            row.vrrp.label,
            row.failure.label(),
            row.held_survived,
            row.held,
            row.downloads_survived,
            DOWNLOADS,
            share(survived, total)
        );
    }
    for row in rows.iter().filter(|r| r.first_failure.is_some()) {
        println!(
            "  ({}, {}, {}: first failure: {})",
            row.pair.label(),
            row.vrrp.label,
            row.failure.label(),
            row.first_failure.as_deref().unwrap_or("")
        );
    }
    let latest = rows
        .iter()
        .map(|r| r.failed_after)
        .max()
        .unwrap_or_default();
    println!(
        "  ({CONNECTIONS} keep-alive connections, a request on each every {REQUEST_EVERY}, held {} s, the master failing at most {:.1} s in; {DOWNLOADS} downloads of {} KiB at {} KiB/s)",
        HOLD.as_secs(),
        latest.as_secs_f64(),
        SLOW_BYTES / 1024,
        SLOW_RATE / 1024
    );
    Ok(())
}
