//! The flow sync's replication lag under a bounded new-flow load: UDP
//! datagrams through the VIP at a fixed rate, each from a new source port,
//! so each is a new flow on lb1 that the sync must bring to lb2. The lag
//! is what lb1's agent measures: from the program's event of a flow to the
//! peer's acknowledgement of the message carrying it (so it includes the
//! flush interval, the peer's installation and the way back).

use std::{net::SocketAddrV4, path::Path, time::Duration};

use anyhow::{bail, Result};

use super::{sync_count, sync_field};
use crate::lab::{Lab, Node, UDP_PORT, VIP};

const PREFIX: &str = "blag";
/// New flows per second: the target load.
const RATES: [u32; 2] = [1_000, 10_000];
/// Short enough that every flow keeps its NAT port within the node's half
/// of the lab's port range (about 32,000 per backend).
const LOAD: Duration = Duration::from_secs(2);
/// The target for the lag's 99th percentile at 10,000 new flows/s.
const TARGET_P99: Duration = Duration::from_millis(50);

struct Row {
    rate: u32,
    sent: u64,
    took: Duration,
    records_sent: u64,
    installed: u64,
    p50_us: Option<u64>,
    p99_us: Option<u64>,
    dropped: u64,
}

fn measure(lab: &Lab, rate: u32) -> Result<Row> {
    let sent_before = sync_count(lab, Node::Lb1, "records_sent");
    let installed_before = sync_count(lab, Node::Lb2, "installed");
    let dropped_before =
        sync_count(lab, Node::Lb1, "queue_dropped") + sync_count(lab, Node::Lb1, "events_lost");
    let to = SocketAddrV4::new(VIP, UDP_PORT).to_string();
    let rate_arg = rate.to_string();
    let load = format!("{}ms", LOAD.as_millis());
    let xtask = lab.xtask_bin().to_string_lossy().into_owned();
    let out = lab.exec_ok(
        Node::Client,
        &[
            &xtask,
            "udp-flood",
            "--to",
            &to,
            "--rate",
            &rate_arg,
            "--duration",
            &load,
        ],
    )?;
    let (sent, took) = parse_flooded(&out)?;
    // The last acknowledgements come back, and both agents publish their
    // status (with each heartbeat, once a second) after them.
    std::thread::sleep(Duration::from_millis(1500));
    Ok(Row {
        rate,
        sent,
        took,
        records_sent: sync_count(lab, Node::Lb1, "records_sent") - sent_before,
        installed: sync_count(lab, Node::Lb2, "installed") - installed_before,
        p50_us: sync_field(lab, Node::Lb1, "lag_p50_us").as_u64(),
        p99_us: sync_field(lab, Node::Lb1, "lag_p99_us").as_u64(),
        dropped: (sync_count(lab, Node::Lb1, "queue_dropped")
            + sync_count(lab, Node::Lb1, "events_lost"))
        .saturating_sub(dropped_before),
    })
}

/// `sent <n> in <s> s`, what `xtask udp-flood` prints.
fn parse_flooded(out: &str) -> Result<(u64, Duration)> {
    let words: Vec<&str> = out.split_whitespace().collect();
    match words.as_slice() {
        ["sent", n, "in", secs, "s"] => {
            Ok((n.parse()?, Duration::from_secs_f64(secs.parse::<f64>()?)))
        }
        _ => bail!("xtask udp-flood printed {out:?}"),
    }
}

fn ms(us: Option<u64>) -> String {
    us.map_or("-".into(), |us| format!("{:.1} ms", us as f64 / 1000.0))
}

pub(super) fn run(agent_bin: &Path) -> Result<()> {
    let mut rows = Vec::new();
    for rate in RATES {
        eprintln!("xtask: sync lag at {rate} new flows/s...");
        // A fresh pair for each rate: the lag samples are then this load's.
        let options = super::pair_options(agent_bin, super::Pair::Agent, PREFIX);
        let lab = Lab::up_guarded(&options)?;
        super::wait_lb2_in_sync(&lab)?;
        rows.push(measure(&lab, rate)?);
    }
    println!(
        "  {:>14} {:>14} {:>12} {:>12} {:>10} {:>10} {:>8}",
        "new flows/s", "flows offered", "sent to lb2", "installed", "lag p50", "lag p99", "dropped"
    );
    for row in &rows {
        println!(
            "  {:>14.0} {:>14} {:>12} {:>12} {:>10} {:>10} {:>8}",
            row.sent as f64 / row.took.as_secs_f64().max(0.001),
            row.sent,
            row.records_sent,
            row.installed,
            ms(row.p50_us),
            ms(row.p99_us),
            row.dropped
        );
    }
    if let Some(top) = rows.iter().find(|r| r.rate == 10_000) {
        let met = top
            .p99_us
            .is_some_and(|us| Duration::from_micros(us) < TARGET_P99);
        println!(
            "  target: lag p99 < {} ms at 10,000 new flows/s: {}",
            TARGET_P99.as_millis(),
            if met { "met" } else { "MISSED" }
        );
    }
    println!("  (lag: the program's event of a flow's first answer on lb1 -> lb1's agent -> lb2 installs it -> lb2's acknowledgement back at lb1; one UDP datagram per flow from the client, {} s per rate)", LOAD.as_secs());
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flood_summary_parses() {
        let (sent, took) = parse_flooded("sent 20000 in 2.00 s\n").unwrap();
        assert_eq!(sent, 20_000);
        assert_eq!(took, Duration::from_secs(2));
        assert!(parse_flooded("nothing").is_err());
    }
}
